"""Every camera convention of lift3d, written once.

Conventions (fixed for the whole project):

* Camera axes are OpenCV: x right, y down, z forward (the camera looks along +z).
  OpenGL / Blender cameras flip y and z (y up, looking along -z).
* Extrinsics are camera-to-world ``c2w [..., 4, 4]`` float64; the rotation's
  columns are the camera axes in world coordinates, the last column the centre.
* The world frame of a lift is the input camera: its ``c2w`` is the identity,
  so world "up" is -y and "ahead" is +z.
* Intrinsics ``K [3, 3]`` are in pixels of the stored frame. Pixel ``(u, v)``
  (integer column, row) covers ``[u, u + 1) x [v, v + 1)``: a point with
  continuous coordinate ``x = fx * X / Z + cx`` lands in pixel ``floor(x)``, and
  the centre of pixel ``u`` is at ``u + 0.5`` (the gsplat / 3DGS convention).
  With this convention resizing an image scales ``K`` by the size ratio exactly,
  with no half-pixel correction.
* Quaternions are ``wxyz`` (as in :mod:`lift3d_core.splat.gaussians`).

MotionCtrl camera-pose JSON (fact established from the public code, see
:func:`motionctrl_rows_to_c2w`): each frame is a row of 12 numbers, a row-major
3x4 world-to-camera ``[R | t]`` with OpenCV camera axes.

All functions are numpy float64; shapes are in the docstrings.
"""

from __future__ import annotations

import numpy as np

from lift3d_core.errors import Lift3DError

__all__ = [
    "c2w_to_motionctrl_rows",
    "crop_intrinsics",
    "fov_from_intrinsics",
    "interpolate_poses",
    "intrinsics_from_fov",
    "invert_rigid",
    "look_at",
    "motionctrl_rows_to_c2w",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "project_points",
    "quat_to_rotmat",
    "relative_c2w",
    "resize_intrinsics",
    "rotation_angle",
    "rotmat_to_quat",
    "scale_intrinsics",
    "unproject_depth",
]

# Right-multiplying a c2w by this flips the camera's y and z axes: OpenCV <-> OpenGL.
_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def _as_f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


# --------------------------------------------------------------------------- axes


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    """OpenCV camera axes -> OpenGL / Blender camera axes (y up, looking along -z).

    c2w: [..., 4, 4] float64 camera-to-world, OpenCV. Returns [..., 4, 4], OpenGL.
    Only the camera's own axes change (world frame and camera centre are kept),
    so the same flip is its own inverse.
    """
    return _as_f64(c2w) @ _FLIP_YZ


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """OpenGL / Blender camera axes -> OpenCV. c2w: [..., 4, 4] float64 -> [..., 4, 4]."""
    return _as_f64(c2w) @ _FLIP_YZ


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms ``[R | t]`` using ``R^T`` (no general matrix inverse).

    T: [..., 4, 4] float64 (c2w or w2c). Returns [..., 4, 4] float64 with last row (0, 0, 0, 1).
    """
    T = _as_f64(T)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Rt = np.swapaxes(R, -1, -2)
    out = np.zeros_like(T)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def relative_c2w(c2w: np.ndarray, c2w_ref: np.ndarray) -> np.ndarray:
    """Poses expressed in the camera frame of ``c2w_ref``: ``inv(c2w_ref) @ c2w``.

    c2w: [..., 4, 4], c2w_ref: [4, 4] (OpenCV). Returns [..., 4, 4]; ``c2w_ref`` itself maps to identity.
    """
    return invert_rigid(c2w_ref) @ _as_f64(c2w)


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """Camera at ``eye`` looking at ``target``.

    eye, target, up: [3] world coordinates; ``up`` is the world's up direction
    (default -y, the input camera's up in the OpenCV world of a lift).
    Returns c2w [4, 4] float64, OpenCV: +z through ``target``, image y pointing
    down along ``-up`` projected, image x = right.
    """
    eye, target, up = _as_f64(eye), _as_f64(target), _as_f64(up)
    z = target - eye
    nz = np.linalg.norm(z)
    if nz < 1e-12:
        raise Lift3DError("look_at: eye and target coincide; give a target distinct from the eye")
    z = z / nz
    x = np.cross(z, up)
    nx = np.linalg.norm(x)
    if nx < 1e-9 * max(np.linalg.norm(up), 1e-300):
        raise Lift3DError("look_at: viewing direction is parallel to `up`; pass a different up vector")
    x = x / nx
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


# --------------------------------------------------------------------------- intrinsics


def intrinsics_from_fov(fov_x_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole K [3, 3] float64 from a horizontal field of view, square pixels.

    The principal point is the image centre ``(W / 2, H / 2)`` in the pixel-corner
    convention above (the centre of the middle pixel of an odd width).
    """
    if not 0.0 < fov_x_deg < 180.0:
        raise Lift3DError(f"fov_x_deg must be in (0, 180), got {fov_x_deg}")
    f = 0.5 * width / np.tan(0.5 * np.deg2rad(fov_x_deg))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def fov_from_intrinsics(K: np.ndarray, width: int, height: int) -> tuple[float, float]:
    """(fov_x_deg, fov_y_deg) of K [3, 3] for an image of ``width x height`` (centred principal point)."""
    K = _as_f64(K)
    return (
        float(np.rad2deg(2.0 * np.arctan(0.5 * width / K[0, 0]))),
        float(np.rad2deg(2.0 * np.arctan(0.5 * height / K[1, 1]))),
    )


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """K for an image scaled by ``sx`` horizontally and ``sy`` vertically.

    K: [..., 3, 3]. Continuous pixel coordinates (corner at 0) scale linearly, so
    fx, cx scale by sx and fy, cy by sy; skew scales by sx.
    """
    K = _as_f64(K).copy()
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def crop_intrinsics(K: np.ndarray, x0: float, y0: float) -> np.ndarray:
    """K for the crop whose top-left pixel is ``(x0, y0)`` of the original. K: [..., 3, 3]."""
    K = _as_f64(K).copy()
    K[..., 0, 2] -= x0
    K[..., 1, 2] -= y0
    return K


def resize_intrinsics(K: np.ndarray, size_from: tuple[int, int], size_to: tuple[int, int]) -> np.ndarray:
    """K for an image resized from ``(W0, H0)`` to ``(W1, H1)`` (whole image, no crop). K: [..., 3, 3]."""
    (w0, h0), (w1, h1) = size_from, size_to
    return scale_intrinsics(K, w1 / w0, h1 / h0)


# --------------------------------------------------------------------------- rotations


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] wxyz with w >= 0.

    Uses the largest of the four candidate pivots (Shepperd) so it is accurate
    for every rotation, including 180 degrees.
    """
    R = _as_f64(R)
    m = R.reshape(-1, 3, 3)
    r00, r11, r22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    # 4 * (component)^2 for w, x, y, z; pivot on the largest for accuracy.
    sq = np.stack([1 + r00 + r11 + r22, 1 + r00 - r11 - r22, 1 - r00 + r11 - r22, 1 - r00 - r11 + r22], axis=1)
    k = np.argmax(sq, axis=1)
    s = 2.0 * np.sqrt(np.maximum(sq[np.arange(len(k)), k], 1e-300))  # 4 * |pivot component|
    d21, d02, d10 = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]
    s01, s02, s12 = m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1]
    cands = np.stack(
        [
            np.stack([0.25 * s, d21 / s, d02 / s, d10 / s], 1),
            np.stack([d21 / s, 0.25 * s, s01 / s, s02 / s], 1),
            np.stack([d02 / s, s01 / s, 0.25 * s, s12 / s], 1),
            np.stack([d10 / s, s02 / s, s12 / s, 0.25 * s], 1),
        ],
        axis=1,
    )
    q = cands[np.arange(len(k)), k]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 0] < 0] *= -1.0
    return q.reshape((*R.shape[:-2], 4))


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Quaternions [..., 4] wxyz (normalised here) -> rotation matrices [..., 3, 3]."""
    q = _as_f64(q)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    R = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        axis=-1,
    )
    return R.reshape((*q.shape[:-1], 3, 3))


def rotation_angle(R_a: np.ndarray, R_b: np.ndarray | None = None) -> np.ndarray:
    """Geodesic angle in radians of ``R_a`` (or of ``R_a^T R_b``). R: [..., 3, 3] -> [...].

    Computed with atan2 of the axis part and the trace so small angles stay accurate.
    """
    R = _as_f64(R_a) if R_b is None else np.swapaxes(_as_f64(R_a), -1, -2) @ _as_f64(R_b)
    cos_part = np.trace(R, axis1=-2, axis2=-1) - 1.0
    sin_vec = np.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], -1)
    return np.arctan2(np.linalg.norm(sin_vec, axis=-1), cos_part)


def interpolate_poses(c2w_a: np.ndarray, c2w_b: np.ndarray, t) -> np.ndarray:
    """Poses between two cameras: rotation by quaternion slerp, centre by linear interpolation.

    c2w_a, c2w_b: [4, 4] float64 (any consistent convention). t: [T] in [0, 1]
    (0 -> c2w_a exactly, 1 -> c2w_b exactly). Returns [T, 4, 4].
    Slerp takes the shorter arc (q and -q are the same rotation: b's sign is
    flipped when the dot product is negative) and falls back to normalised lerp
    when the rotations are (numerically) identical, where 1/sin(theta) blows up.
    """
    a, b = _as_f64(c2w_a), _as_f64(c2w_b)
    t = np.atleast_1d(_as_f64(t))
    qa, qb = rotmat_to_quat(a[:3, :3]), rotmat_to_quat(b[:3, :3])
    if float(np.dot(qa, qb)) < 0.0:
        qb = -qb
    # Angle between the quaternions via atan2: accurate where arccos(dot) is not (dot ~ 1).
    theta = 2.0 * np.arctan2(np.linalg.norm(qa - qb), np.linalg.norm(qa + qb))
    if theta < 1e-9:
        q = (1.0 - t)[:, None] * qa + t[:, None] * qb
    else:
        q = (np.sin((1.0 - t) * theta)[:, None] * qa + np.sin(t * theta)[:, None] * qb) / np.sin(theta)
    out = np.zeros((t.shape[0], 4, 4))
    out[:, :3, :3] = quat_to_rotmat(q)
    out[:, :3, 3] = (1.0 - t)[:, None] * a[:3, 3] + t[:, None] * b[:3, 3]
    out[:, 3, 3] = 1.0
    # Endpoints exact (bit for bit), not merely to rounding of the quaternion round trip.
    out[t == 0.0] = a
    out[t == 1.0] = b
    return out


# --------------------------------------------------------------------------- MotionCtrl rows


def motionctrl_rows_to_c2w(rows: np.ndarray) -> np.ndarray:
    """MotionCtrl camera-pose rows -> c2w [N, 4, 4] float64, OpenCV.

    rows: [N, 12], each a row-major 3x4 **world-to-camera** ``[R | t]`` with
    **OpenCV camera axes** (x right, y down, z forward).

    Source of that fact (TencentARC/MotionCtrl, read for conventions only):
    ``app.py`` and ``gradio_utils/utils.py`` label the basic translation vectors
    as "W2C": +x = camera moves left, -x right, +y up, -y down, +z zoom out,
    -z zoom in; ``calc_cam_cone_pts_3d`` there computes the camera centre as
    ``-R^-1 t`` and draws the frustum towards camera +z. The numbers of the
    shipped JSON agree (``examples/camera_poses/test_camera_U.json``: t_y grows
    positive, so the centre ``-t`` goes to -y = up in OpenCV; ``..._L.json`` t_x
    positive = left; ``..._I.json`` t_z negative = forward). Only this reading
    makes all three names right: an OpenGL c2w reading would turn "L" right.
    """
    rows = _as_f64(rows).reshape(-1, 12)
    w2c = np.zeros((rows.shape[0], 4, 4))
    w2c[:, :3, :] = rows.reshape(-1, 3, 4)
    w2c[:, 3, 3] = 1.0
    return invert_rigid(w2c)


def c2w_to_motionctrl_rows(c2w: np.ndarray) -> np.ndarray:
    """c2w [N, 4, 4] (or [4, 4]) OpenCV -> MotionCtrl rows [N, 12] (row-major 3x4 world-to-camera)."""
    c2w = _as_f64(c2w).reshape(-1, 4, 4)
    return invert_rigid(c2w)[:, :3, :].reshape(-1, 12)


# --------------------------------------------------------------------------- projection


def project_points(xyz: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World points to continuous pixel coordinates.

    xyz: [P, 3] world; c2w: [4, 4] OpenCV; K: [3, 3].
    Returns uv [P, 2] (pixel ``floor(uv)`` contains the point; centre of pixel u is u + 0.5)
    and z [P] camera-space depth (points behind the camera get z <= 0 and meaningless uv).
    """
    xyz, c2w, K = _as_f64(xyz), _as_f64(c2w), _as_f64(K)
    R, t = c2w[:3, :3], c2w[:3, 3]
    cam = (xyz - t) @ R  # R^T (x - t) for row vectors
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        pix = cam @ K.T
        uv = pix[:, :2] / pix[:, 2:3]
    return uv, z


def unproject_depth(depth: np.ndarray, c2w: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Lift a z-depth map to world points through the pixel centres.

    depth: [H, W] z-depth (not ray length); c2w: [4, 4] OpenCV; K: [3, 3].
    Returns xyz [H, W, 3] float64 world; pixel (u, v) is taken at (u + 0.5, v + 0.5).
    """
    depth, c2w, K = _as_f64(depth), _as_f64(c2w), _as_f64(K)
    H, W = depth.shape
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    rays = pix @ np.linalg.inv(K).T  # z component is 1
    cam = rays * depth[..., None]
    return cam @ c2w[:3, :3].T + c2w[:3, 3]
