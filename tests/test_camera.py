import numpy as np
import pytest

from lift3d_core.camera import (
    c2w_to_motionctrl_rows,
    crop_intrinsics,
    fov_from_intrinsics,
    interpolate_poses,
    intrinsics_from_fov,
    invert_rigid,
    look_at,
    motionctrl_rows_to_c2w,
    opencv_to_opengl,
    opengl_to_opencv,
    project_points,
    quat_to_rotmat,
    relative_c2w,
    resize_intrinsics,
    rotation_angle,
    rotmat_to_quat,
    scale_intrinsics,
    unproject_depth,
)
from lift3d_core.errors import Lift3DError


def random_rotations(rng, n):
    q = rng.normal(size=(n, 4))
    return quat_to_rotmat(q)


def random_c2w(rng, n):
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = random_rotations(rng, n)
    c2w[:, :3, 3] = rng.normal(size=(n, 3)) * 3
    return c2w


def axis_angle(axis, angle):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def test_rotations_are_proper():
    R = random_rotations(np.random.default_rng(0), 50)
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)


def test_opencv_opengl_round_trip_and_axes():
    c2w = random_c2w(np.random.default_rng(1), 20)
    gl = opencv_to_opengl(c2w)
    np.testing.assert_allclose(opengl_to_opencv(gl), c2w, atol=1e-12)
    # Same centre; OpenGL looks along its -z, which is OpenCV's +z; its +y is OpenCV's -y (up).
    np.testing.assert_array_equal(gl[:, :3, 3], c2w[:, :3, 3])
    np.testing.assert_allclose(-gl[:, :3, 2], c2w[:, :3, 2], atol=0)
    np.testing.assert_allclose(-gl[:, :3, 1], c2w[:, :3, 1], atol=0)
    np.testing.assert_allclose(gl[:, :3, 0], c2w[:, :3, 0], atol=0)


def test_invert_rigid_matches_inverse():
    c2w = random_c2w(np.random.default_rng(2), 20)
    inv = invert_rigid(c2w)
    np.testing.assert_allclose(inv @ c2w, np.broadcast_to(np.eye(4), c2w.shape), atol=1e-12)
    np.testing.assert_allclose(invert_rigid(inv), c2w, atol=1e-12)
    np.testing.assert_allclose(inv, np.linalg.inv(c2w), atol=1e-12)
    np.testing.assert_allclose(relative_c2w(c2w, c2w[3])[3], np.eye(4), atol=1e-12)


def test_quaternion_round_trip_including_half_turns():
    rng = np.random.default_rng(3)
    R = np.concatenate([
        random_rotations(rng, 200),
        np.stack([axis_angle(a, np.pi) for a in rng.normal(size=(20, 3))]),  # w = 0
        np.stack([axis_angle(a, np.pi - 1e-7) for a in rng.normal(size=(5, 3))]),
        np.eye(3)[None],
    ])
    q = rotmat_to_quat(R)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-12)
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(quat_to_rotmat(q), R, atol=1e-9)
    np.testing.assert_allclose(rotmat_to_quat(np.eye(3)), [1, 0, 0, 0], atol=0)
    # wxyz: a rotation of a about z has q = (cos a/2, 0, 0, sin a/2)
    np.testing.assert_allclose(rotmat_to_quat(axis_angle([0, 0, 1], 0.6)), [np.cos(0.3), 0, 0, np.sin(0.3)], atol=1e-12)


def test_rotation_angle_small_and_large():
    for a in (1e-9, 1e-4, 0.3, 2.0, np.pi - 1e-6):
        assert rotation_angle(axis_angle([1, 2, 3], a)) == pytest.approx(a, rel=1e-6, abs=1e-15)


def test_look_at_puts_target_on_optical_axis():
    rng = np.random.default_rng(4)
    K = intrinsics_from_fov(60.0, 64, 48)
    for _ in range(20):
        eye, target = rng.normal(size=3) * 2, rng.normal(size=3) * 2
        c2w = look_at(eye, target)
        R = c2w[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
        assert np.linalg.det(R) == pytest.approx(1.0)
        uv, z = project_points(target[None], c2w, K)
        np.testing.assert_allclose(uv[0], [32.0, 24.0], atol=1e-9)
        assert z[0] == pytest.approx(np.linalg.norm(target - eye))
        # image "down" (+y) points away from world up (-y): the picture is upright
        assert R[:, 1] @ np.array([0.0, -1.0, 0.0]) <= 1e-12
    # Looking straight ahead from the origin is the input camera.
    np.testing.assert_allclose(look_at([0, 0, 0], [0, 0, 5]), np.eye(4), atol=1e-15)
    with pytest.raises(Lift3DError):
        look_at([0, 0, 0], [0, 3, 0])  # parallel to up


def test_intrinsics_from_fov_and_projection_at_the_edge():
    K = intrinsics_from_fov(90.0, 200, 100)
    np.testing.assert_allclose(K, [[100, 0, 100], [0, 100, 50], [0, 0, 1]], atol=1e-12)
    fx, fy = fov_from_intrinsics(K, 200, 100)
    assert fx == pytest.approx(90.0) and fy == pytest.approx(np.rad2deg(2 * np.arctan(0.5)))
    # A point at the edge of the 90-degree field of view lands on the image border x = W.
    uv, _ = project_points(np.array([[1.0, 0.0, 1.0]]), np.eye(4), K)
    np.testing.assert_allclose(uv[0], [200.0, 50.0], atol=1e-12)
    with pytest.raises(Lift3DError):
        intrinsics_from_fov(180.0, 10, 10)


def test_intrinsics_scaling_cropping_consistent_with_projection():
    rng = np.random.default_rng(5)
    K = intrinsics_from_fov(50.0, 640, 480)
    c2w = random_c2w(rng, 1)[0]
    xyz = c2w[:3, 3] + (rng.normal(size=(30, 3)) * 0.3 + [0, 0, 4]) @ c2w[:3, :3].T
    uv, z = project_points(xyz, c2w, K)
    assert (z > 0).all()
    uv_s, _ = project_points(xyz, c2w, scale_intrinsics(K, 0.5, 0.25))
    np.testing.assert_allclose(uv_s, uv * [0.5, 0.25], atol=1e-9)
    uv_c, _ = project_points(xyz, c2w, crop_intrinsics(K, 17, 5))
    np.testing.assert_allclose(uv_c, uv - [17, 5], atol=1e-9)
    np.testing.assert_allclose(resize_intrinsics(K, (640, 480), (320, 120)), scale_intrinsics(K, 0.5, 0.25))
    # Pixel-corner convention: the centre of pixel 0 of a 2x-downsampled image (0.5) sits on
    # the boundary between full-resolution pixels 0 and 1 (1.0).
    K2 = resize_intrinsics(K, (640, 480), (320, 240))
    p_small = unproject_depth(np.ones((240, 320)), np.eye(4), K2)[0, 0]
    uv_big, _ = project_points(p_small[None], np.eye(4), K)
    np.testing.assert_allclose(uv_big[0], [1.0, 1.0], atol=1e-9)
    # Batched intrinsics.
    Kb = scale_intrinsics(np.stack([K, K]), 2.0, 2.0)
    assert Kb.shape == (2, 3, 3) and Kb[1, 0, 2] == 640.0


def test_project_unproject_round_trip():
    rng = np.random.default_rng(6)
    H, W = 12, 16
    K = intrinsics_from_fov(70.0, W, H)
    c2w = random_c2w(rng, 1)[0]
    depth = rng.uniform(0.5, 5.0, size=(H, W))
    xyz = unproject_depth(depth, c2w, K)
    assert xyz.shape == (H, W, 3)
    uv, z = project_points(xyz.reshape(-1, 3), c2w, K)
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    np.testing.assert_allclose(uv, np.stack([u, v], -1).reshape(-1, 2), atol=1e-9)
    np.testing.assert_allclose(z, depth.reshape(-1), atol=1e-12)
    # A world point that projects to a pixel centre comes back from its depth.
    X = xyz[3, 7]
    uvX, zX = project_points(X[None], c2w, K)
    assert np.floor(uvX[0]).astype(int).tolist() == [7, 3]
    d = np.zeros((H, W))
    d[3, 7] = zX[0]
    np.testing.assert_allclose(unproject_depth(d, c2w, K)[3, 7], X, atol=1e-12)
    # Input camera: pixel centre of the principal point row/col maps onto the axis.
    np.testing.assert_allclose(unproject_depth(np.full((2, 2), 3.0), np.eye(4), intrinsics_from_fov(90, 2, 2))[0, 0],
                               [-1.5, -1.5, 3.0], atol=1e-12)


def test_interpolate_poses_endpoints_and_half_angle():
    rng = np.random.default_rng(7)
    a = random_c2w(rng, 1)[0]
    axis = rng.normal(size=3)
    b = a.copy()
    b[:3, :3] = axis_angle(axis, 1.2) @ a[:3, :3]
    b[:3, 3] = a[:3, 3] + [1.0, -2.0, 0.5]
    t = np.array([0.0, 0.25, 0.5, 1.0])
    out = interpolate_poses(a, b, t)
    assert out.shape == (4, 4, 4)
    np.testing.assert_array_equal(out[0], a)
    np.testing.assert_array_equal(out[-1], b)
    np.testing.assert_allclose(out[2][:3, :3], axis_angle(axis, 0.6) @ a[:3, :3], atol=1e-12)
    np.testing.assert_allclose(out[2][:3, 3], a[:3, 3] + [0.5, -1.0, 0.25], atol=1e-12)
    np.testing.assert_allclose(rotation_angle(a[:3, :3], out[1][:3, :3]), 0.3, atol=1e-12)
    np.testing.assert_allclose(out[:, 3], np.broadcast_to([0, 0, 0, 1.0], (4, 4)))


def test_interpolate_poses_shorter_arc_and_identical():
    # 170 and -170 degrees about z are 20 degrees apart through 180: their quaternions have
    # opposite-signed dot products, slerp must flip one and pass through 180, not 0.
    a, b = np.eye(4), np.eye(4)
    a[:3, :3] = axis_angle([0, 0, 1], np.deg2rad(170))
    b[:3, :3] = axis_angle([0, 0, 1], np.deg2rad(-170))
    mid = interpolate_poses(a, b, [0.5])[0]
    np.testing.assert_allclose(mid[:3, :3], axis_angle([0, 0, 1], np.pi), atol=1e-12)
    steps = interpolate_poses(a, b, np.linspace(0, 1, 5))
    np.testing.assert_allclose(rotation_angle(a[:3, :3], steps[:, :3, :3]), np.deg2rad([0, 5, 10, 15, 20]), atol=1e-12)
    # Nearly identical rotations: no NaN, stays on the (tiny) arc.
    c = a.copy()
    c[:3, :3] = axis_angle([0, 1, 0], 1e-12) @ a[:3, :3]
    out = interpolate_poses(a, c, np.linspace(0, 1, 7))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[:, :3, :3], np.broadcast_to(a[:3, :3], (7, 3, 3)), atol=1e-11)
    out_same = interpolate_poses(a, a, [0.3])
    np.testing.assert_allclose(out_same[0], a, atol=1e-15)


def test_motionctrl_rows_round_trip_and_convention():
    c2w = random_c2w(np.random.default_rng(8), 16)
    rows = c2w_to_motionctrl_rows(c2w)
    assert rows.shape == (16, 12)
    np.testing.assert_allclose(motionctrl_rows_to_c2w(rows), c2w, atol=1e-12)
    np.testing.assert_allclose(c2w_to_motionctrl_rows(motionctrl_rows_to_c2w(rows)), rows, atol=1e-12)
    # Rows are world-to-camera: R of the row is c2w's R transposed; t = -R^T C.
    np.testing.assert_allclose(rows[0].reshape(3, 4)[:, :3], c2w[0, :3, :3].T, atol=1e-15)
    # MotionCtrl "U": identity rotation and t_y > 0 -> the camera centre goes to -y (up in OpenCV).
    up_row = np.array([1, 0, 0, 0, 0, 1, 0, 0.5, 0, 0, 1, 0.0])
    np.testing.assert_allclose(motionctrl_rows_to_c2w(up_row)[0, :3, 3], [0, -0.5, 0])
    # "I": t_z < 0 -> forward (+z).
    in_row = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, -0.5])
    np.testing.assert_allclose(motionctrl_rows_to_c2w(in_row)[0, :3, 3], [0, 0, 0.5])
