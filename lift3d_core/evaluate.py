"""evaluate: held-out-view quality of the canonical Gaussians against ground truth.

Ground truth exists when the generator knows the scene (the synthetic backend):
held-out cameras that are not on the tree are rendered from the *undistorted*
scene and compared with the canonical Gaussians seen from the same cameras
(moved into the calibrated, normalised frame). Otherwise only the fit to the
generated frames is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lift3d_core import metrics, synthetic
from lift3d_core.calibrate import apply_similarity
from lift3d_core.errors import Lift3DError
from lift3d_core.export import render_views
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.trajectory import CameraTree


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate`` section. views: held-out cameras; train_views: generated frames re-rendered."""

    views: int = 8
    train_views: int = 8
    seed: int = 0
    backend: str = "auto"

    def __post_init__(self):
        if not 1 <= self.views <= 256 or not 0 <= self.train_views <= 256:
            raise Lift3DError("evaluate.views must be within 1..256 and evaluate.train_views within 0..256")


@dataclass
class Evaluation:
    """metrics: ``{"psnr", "ssim", ...}``; renders/targets: ``uint8 [N, H, W, 3]`` of the held-out views."""

    metrics: dict[str, float]
    renders: np.ndarray
    targets: np.ndarray


def heldout_views(
    image: np.ndarray, tree: CameraTree, scene_cfg: synthetic.SyntheticConfig, cfg: EvaluateConfig
) -> tuple[np.ndarray, np.ndarray]:
    """The held-out cameras and what the undistorted synthetic scene looks like from them (the ground truth).

    image: ``uint8 [H, W, 3]`` conditioning image. Returns ``c2w [V, 4, 4]`` float64 OpenCV in the scene's
    frame and ``targets uint8 [V, H, W, 3]``, V = ``cfg.views``. They depend on generation, not on training,
    so a caller may keep them for later runs.
    """
    scene = synthetic.build_scene(image, scene_cfg)
    c2w_raw, _ = synthetic.eval_cameras(tree, n=cfg.views, seed=cfg.seed)
    targets, _ = synthetic.render_views(scene, c2w_raw)
    return c2w_raw, targets


def evaluate_synthetic(
    gaussians: Gaussians,
    c2w_raw: np.ndarray,
    targets: np.ndarray,
    center: np.ndarray,
    scale: float,
    K: np.ndarray,
    cfg: EvaluateConfig,
) -> Evaluation:
    """Held-out PSNR/SSIM of ``gaussians`` (normalised frame) against the synthetic scene's ground truth.

    c2w_raw, targets: :func:`heldout_views`; center/scale: the calibration's normalisation;
    K: ``[3, 3]`` intrinsics of the frames.
    """
    c2w = apply_similarity(c2w_raw, center, scale)
    Ks = np.broadcast_to(K, (len(c2w), 3, 3))
    renders = render_views(gaussians, c2w, Ks, targets.shape[2], targets.shape[1], cfg.backend)
    per_view = [metrics.psnr(r, t) for r, t in zip(renders, targets, strict=True)]
    result = {
        "psnr": metrics.psnr(renders, targets),
        "ssim": metrics.ssim(renders, targets),
        "psnr_min_view": float(min(per_view)),
    }
    return Evaluation(result, renders, targets)


def fit_to_frames(
    gaussians: Gaussians, frames: np.ndarray, c2w: np.ndarray, K: np.ndarray, cfg: EvaluateConfig
) -> dict[str, float]:
    """PSNR/SSIM of the canonical Gaussians against generated frames ``uint8 [F, H, W, 3]`` (a fit, not held out)."""
    idx = np.unique(np.linspace(0, len(frames) - 1, cfg.train_views).round().astype(int))
    renders = render_views(gaussians, c2w[idx], K[idx], frames.shape[2], frames.shape[1], cfg.backend)
    return {"train_psnr": metrics.psnr(renders, frames[idx]), "train_ssim": metrics.ssim(renders, frames[idx])}
