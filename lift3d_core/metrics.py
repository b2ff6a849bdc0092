"""Image and pose metrics for evaluating a lift against ground truth.

Images: ``uint8 [..., H, W, 3]`` (scaled by 1/255) or float in ``[0, 1]``, numpy or
torch; every image metric returns a python ``float``, the mean over the leading
(batch) dimensions of the per-image value.

Poses: ``c2w [N, 4, 4]`` float64 camera-to-world, OpenCV axes (x right, y down,
z forward). Estimated poses live in an arbitrary similarity frame (calibration
fixes neither scale nor origin), so :func:`pose_errors` first aligns them to the
ground truth with :func:`align_poses`: the rotation from the camera rotations,
scale and shift from the centres (:func:`umeyama_sim3` on the centres alone is the
other choice; its rotation inherits the bending of the rig's shape: on COLMAP's
61-camera tree at 128x96 it added 0.2-0.3 degrees to the mean error).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lift3d_core.errors import Lift3DError

# -- images ----------------------------------------------------------------------------------


def _as_float_images(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 torch tensors in [0, 1], shape ``[B, H, W, 3]``."""
    out = []
    for img in (a, b):
        t = img.detach().cpu() if isinstance(img, torch.Tensor) else torch.from_numpy(np.asarray(img))
        t = t.to(torch.float64) / 255.0 if t.dtype == torch.uint8 else t.to(torch.float64)
        if t.ndim < 3 or t.shape[-1] != 3:
            raise Lift3DError(f"expected images [..., H, W, 3], got shape {tuple(t.shape)}")
        out.append(t.reshape(-1, *t.shape[-3:]))
    if out[0].shape != out[1].shape:
        raise Lift3DError(f"image shapes differ: {tuple(out[0].shape)} vs {tuple(out[1].shape)}")
    return out[0], out[1]


def psnr(pred, gt) -> float:
    """Peak signal-to-noise ratio in dB, data range 1 (255 for uint8).

    Args:
        pred, gt: ``[..., H, W, 3]`` uint8 or float in [0, 1], numpy or torch.

    Returns:
        mean over images of ``10 log10(1 / MSE_image)``; ``inf`` if every image matches exactly.
    """
    a, b = _as_float_images(pred, gt)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    if bool((mse == 0).any()):
        return math.inf
    return float((10.0 * torch.log10(1.0 / mse)).mean())


def _gaussian_taps(sigma: float = 1.5, radius: int = 5) -> torch.Tensor:
    # radius 5 = int(3.5 * 1.5 + 0.5): the truncation skimage's gaussian filter uses (window 11).
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(pred, gt) -> float:
    """Structural similarity, Gaussian window 11x11 with sigma 1.5, data range 1.

    Matches ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)`` per image: skimage
    filters with reflected borders, then averages only over pixels at least 5 from
    the border, where the padding never enters; a 'valid' convolution gives exactly
    those pixels. Images must be at least 11x11.

    Args:
        pred, gt: ``[..., H, W, 3]`` uint8 or float in [0, 1], numpy or torch.

    Returns:
        mean SSIM over images (each the mean over channels and valid pixels).
    """
    a, b = _as_float_images(pred, gt)
    if min(a.shape[1], a.shape[2]) < 11:
        raise Lift3DError(f"ssim needs images of at least 11x11 pixels, got {tuple(a.shape[1:3])}")
    taps = _gaussian_taps()
    c1, c2 = 0.01**2, 0.03**2  # K1 = 0.01, K2 = 0.03 of Wang et al. 2004, data range 1

    def blur(x: torch.Tensor) -> torch.Tensor:
        # [B, H, W, 3] -> [B*3, 1, H-10, W-10], separable Gaussian
        x = x.permute(0, 3, 1, 2).reshape(-1, 1, x.shape[1], x.shape[2])
        x = torch.nn.functional.conv2d(x, taps.view(1, 1, -1, 1))
        return torch.nn.functional.conv2d(x, taps.view(1, 1, 1, -1))

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    per_image = s.reshape(a.shape[0], -1).mean(dim=1)
    return float(per_image.mean())


# -- LPIPS (optional, never downloads) ----------------------------------------------------------

# torchvision's ImageNet AlexNet, the backbone of LPIPS(net="alex"); the linear heads ship inside
# the lpips package itself.
_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
_lpips_model = None


def _alexnet_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / _ALEXNET_FILE


def lpips_available() -> bool:
    """True when the ``lpips`` package is importable and the AlexNet weights are on disk."""
    try:
        import lpips as _  # noqa: F401
    except ImportError:
        return False
    return _alexnet_path().is_file()


def lpips(pred, gt) -> float:
    """LPIPS (AlexNet, v0.1) distance, mean over images; lower is better.

    Uses only local files: the ``lpips`` package (``pip install lpips``) and torchvision's
    AlexNet weights at ``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``.

    Args:
        pred, gt: ``[..., H, W, 3]`` uint8 or float in [0, 1], numpy or torch.
    """
    global _lpips_model
    if not lpips_available():
        raise Lift3DError(
            "LPIPS needs the 'lpips' package (pip install lpips) and the AlexNet weights file "
            f"{_ALEXNET_FILE} at {_alexnet_path()} (torchvision's ImageNet AlexNet; set TORCH_HOME to "
            "change the folder); lift3d never downloads weights"
        )
    if _lpips_model is None:
        import lpips as lpips_pkg

        # pnet_rand=True: build the backbone without torchvision fetching anything, then load the local file.
        model = lpips_pkg.LPIPS(net="alex", pnet_rand=True, verbose=False)
        state = torch.load(_alexnet_path(), map_location="cpu", weights_only=True)
        slice_of = {0: 1, 1: 1, 2: 2, 3: 2, 4: 2, 5: 3, 6: 3, 7: 3, 8: 4, 9: 4, 10: 5, 11: 5}
        backbone = {
            f"slice{slice_of[int(k.split('.')[1])]}.{k.split('.', 1)[1]}": v
            for k, v in state.items()
            if k.startswith("features.")
        }
        model.net.load_state_dict(backbone)
        _lpips_model = model.eval()
    a, b = _as_float_images(pred, gt)
    with torch.no_grad():
        d = _lpips_model(
            (a.permute(0, 3, 1, 2).float() * 2 - 1),
            (b.permute(0, 3, 1, 2).float() * 2 - 1),
        )
    return float(d.mean())


# -- poses ------------------------------------------------------------------------------------


def umeyama_sim3(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s * R @ src + t`` (Umeyama 1991).

    Args:
        src, dst: ``[N, 3]`` corresponding points, N >= 3, not all collinear.

    Returns:
        ``(s, R [3, 3], t [3])`` float64, ``R`` a proper rotation (det +1).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or src.shape[0] < 3:
        raise Lift3DError(f"umeyama_sim3 needs two [N, 3] arrays with N >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum() / len(src)
    if var_s <= 1e-24:
        raise Lift3DError("umeyama_sim3: source points all coincide; the similarity is undetermined")
    cov = xd.T @ xs / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2, 2] = -1.0  # reflection -> nearest proper rotation
    R = U @ S @ Vt
    s = float(np.trace(np.diag(D) @ S) / var_s)
    t = mu_d - s * R @ mu_s
    return s, R, t


def align_poses(c2w_src: np.ndarray, c2w_dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity ``x_dst ~ s * R @ x_src + t`` between two sets of cameras, fitted on the whole poses.

    ``R`` is the chordal mean of ``R_dst R_src^T`` over the cameras (the rotation nearest their sum), so every
    camera's rotation votes, not only the shape its centres draw; ``s`` and ``t`` are then the least-squares
    fit of the centres. Structure from motion bends a rig's shape by a few percent (scale drift along a path)
    while each rotation stays good to a fraction of a degree: a 3 % bend turns a fit on the centres by a third
    of a degree (tests/test_evaluate_alignment.py), which every camera mapped by it inherits.

    Args:
        c2w_src, c2w_dst: ``[N, 4, 4]`` OpenCV camera-to-world, N >= 1 (N >= 2 with distinct centres for ``s``).

    Returns:
        ``(s, R [3, 3], t [3])`` float64, ``R`` proper; ``s = 1`` when the centres coincide.
    """
    src = np.asarray(c2w_src, dtype=np.float64)
    dst = np.asarray(c2w_dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 3 or src.shape[1:] != (4, 4) or len(src) < 1:
        raise Lift3DError(f"align_poses needs two [N, 4, 4] arrays with N >= 1, got {src.shape} and {dst.shape}")
    U, _, Vt = np.linalg.svd((dst[:, :3, :3] @ np.swapaxes(src[:, :3, :3], 1, 2)).sum(0))
    R = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    xs = src[:, :3, 3] @ R.T
    xs_c, xd_c = xs - xs.mean(0), dst[:, :3, 3] - dst[:, :3, 3].mean(0)
    var = float((xs_c**2).sum())
    s = float((xs_c * xd_c).sum() / var) if var > 1e-24 * max(float((xd_c**2).sum()), 1e-300) else 1.0
    return s, R, dst[:, :3, 3].mean(0) - s * xs.mean(0)


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations ``[..., 3, 3]`` in degrees, ``[...]``."""
    rel = np.swapaxes(R_a, -1, -2) @ R_b
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    # atan2(sin, cos) instead of arccos(cos): arccos loses half the digits near 0 degrees
    axis = np.stack(
        [rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], -1
    )
    sin = np.linalg.norm(axis, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))


def pose_errors(c2w_est: np.ndarray, c2w_gt: np.ndarray, align: str = "poses") -> dict[str, float]:
    """Camera pose errors after a Sim(3) alignment of the estimated cameras onto the true ones.

    The similarity ``(s, R, t)`` maps estimated cameras onto ground-truth ones: fitted on the whole poses
    (``align="poses"``, :func:`align_poses`) or on the centres alone (``"centres"``, :func:`umeyama_sim3`);
    estimated rotations become ``R @ R_est``. Rotation error is
    the geodesic angle to ``R_gt`` in degrees. Translation error is the distance
    between aligned and ground-truth centres divided by the ground-truth scene scale,
    the RMS distance of the ground-truth centres from their mean (so 0.01 = 1 % of
    the camera rig's spread, whatever the units).

    Args:
        c2w_est, c2w_gt: ``[N, 4, 4]`` float64, OpenCV camera-to-world, N >= 3 with
            non-collinear centres.
        align: ``"poses"`` or ``"centres"``.

    Returns:
        dict with ``rot_deg_mean``, ``rot_deg_median``, ``rot_deg_max``,
        ``trans_rel_mean``, ``trans_rel_median`` and ``scale`` (the alignment's ``s``).
    """
    est = np.asarray(c2w_est, dtype=np.float64)
    gt = np.asarray(c2w_gt, dtype=np.float64)
    if est.shape != gt.shape or est.ndim != 3 or est.shape[1:] != (4, 4):
        raise Lift3DError(f"pose_errors needs two [N, 4, 4] arrays, got {est.shape} and {gt.shape}")
    if align not in ("poses", "centres"):
        raise Lift3DError(f"pose_errors: align must be 'poses' or 'centres', got {align!r}")
    fit = align_poses(est, gt) if align == "poses" else umeyama_sim3(est[:, :3, 3], gt[:, :3, 3])
    s, R, t = fit
    centres = s * est[:, :3, 3] @ R.T + t
    rot = rotation_angle_deg(R @ est[:, :3, :3], gt[:, :3, :3])
    gt_centres = gt[:, :3, 3]
    scene_scale = float(np.sqrt(((gt_centres - gt_centres.mean(0)) ** 2).sum(1).mean()))
    trans = np.linalg.norm(centres - gt_centres, axis=1) / scene_scale
    return {
        "rot_deg_mean": float(rot.mean()),
        "rot_deg_median": float(np.median(rot)),
        "rot_deg_max": float(rot.max()),
        "trans_rel_mean": float(trans.mean()),
        "trans_rel_median": float(np.median(trans)),
        "scale": float(s),
    }
