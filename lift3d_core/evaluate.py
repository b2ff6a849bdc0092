"""evaluate: held-out-view quality of the canonical Gaussians against ground truth.

Ground truth exists when the generator knows the scene (the synthetic backend):
held-out cameras that are not on the tree are rendered from the *undistorted*
scene and compared with the canonical Gaussians seen from the same cameras,
moved into the calibrated frame (:func:`heldout_in_calibrated_frame`), so the
numbers mean the same for every calibration backend. A held-out camera is placed
among the calibrated cameras nearest it: the similarity fitted on the poses of
its ``align_neighbors`` nearest training cameras (true -> calibrated). One
similarity for the whole tree (``align_neighbors: 0``, the calibration's
:mod:`~lift3d_core.calibrate.contract` similarity) also charges a held-out view
with the calibration's slow drift across the tree, which a model trained on those
cameras renders consistently (several dB on COLMAP's trees). Both are
reported (``psnr`` and ``psnr_global_alignment``). The generator's true cameras are
then known too, and :func:`pose_report` measures the calibrated ones against
them. Otherwise only the fit to the generated frames is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lift3d_core import metrics, synthetic
from lift3d_core.calibrate.contract import Similarity
from lift3d_core.errors import Lift3DError
from lift3d_core.export import render_views
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.trajectory import CameraTree


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate`` section. views: held-out cameras; train_views: generated frames re-rendered;
    align_neighbors: training cameras a held-out camera is registered by (0: the calibration's one similarity)."""

    views: int = 8
    train_views: int = 8
    seed: int = 0
    backend: str = "auto"
    align_neighbors: int = 12

    def __post_init__(self):
        if not 1 <= self.views <= 256 or not 0 <= self.train_views <= 256:
            raise Lift3DError("evaluate.views must be within 1..256 and evaluate.train_views within 0..256")
        if self.align_neighbors < 0 or 0 < self.align_neighbors < 2:
            raise Lift3DError(f"evaluate.align_neighbors must be 0 or >= 2, got {self.align_neighbors}")


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


def heldout_in_calibrated_frame(
    c2w_heldout: np.ndarray,
    to_commanded: Similarity,
    neighbors: int = 0,
    c2w_calibrated: np.ndarray | None = None,
    c2w_commanded: np.ndarray | None = None,
    registered: np.ndarray | None = None,
) -> np.ndarray:
    """Held-out cameras ``c2w_heldout [V, 4, 4]`` (commanded frame) moved into the calibrated frame.

    neighbors = 0 (or no calibrated cameras given): ``to_commanded.inverse()``. Else each held-out camera by the
    similarity fitted (:func:`lift3d_core.metrics.align_poses`, commanded -> calibrated) on the ``neighbors``
    registered training cameras nearest it: distance between centres over the commanded rig's RMS spread, plus
    the angle between viewing directions over 30 degrees (the weighing of the COLMAP pair graph).
    c2w_calibrated, c2w_commanded: ``[F, 4, 4]`` the distinct frames' cameras; registered: ``[F]`` bool or None.
    For an exact similarity (the commanded backend) both give the same cameras.
    """
    c2w_heldout = np.asarray(c2w_heldout, np.float64).reshape(-1, 4, 4)
    if neighbors == 0 or c2w_calibrated is None or c2w_commanded is None:
        return to_commanded.inverse().apply_c2w(c2w_heldout)
    reg = np.ones(len(c2w_commanded), bool) if registered is None else np.asarray(registered, bool)
    cmd, cal = np.asarray(c2w_commanded, np.float64)[reg], np.asarray(c2w_calibrated, np.float64)[reg]
    if len(cmd) < 2:
        return to_commanded.inverse().apply_c2w(c2w_heldout)
    centres = cmd[:, :3, 3]
    spread = float(np.sqrt(((centres - centres.mean(0)) ** 2).sum(1).mean())) or 1.0
    out = np.empty_like(c2w_heldout)
    for v, cam in enumerate(c2w_heldout):
        angle = np.degrees(np.arccos(np.clip(cmd[:, :3, 2] @ cam[:3, 2], -1.0, 1.0)))
        dist = np.linalg.norm(centres - cam[:3, 3], axis=1) / spread + angle / 30.0
        near = np.argsort(dist, kind="stable")[: min(neighbors, len(cmd))]
        s, R, t = metrics.align_poses(cmd[near], cal[near])
        out[v] = Similarity(s, R, t).apply_c2w(cam)
    return out


def evaluate_synthetic(
    gaussians: Gaussians,
    c2w_raw: np.ndarray,
    targets: np.ndarray,
    to_commanded: Similarity,
    K: np.ndarray,
    cfg: EvaluateConfig,
    *,
    c2w_calibrated: np.ndarray | None = None,
    c2w_commanded: np.ndarray | None = None,
    registered: np.ndarray | None = None,
) -> Evaluation:
    """Held-out PSNR/SSIM of ``gaussians`` (calibrated frame) against the synthetic scene's ground truth.

    c2w_raw, targets: :func:`heldout_views` (cameras in the scene's frame, which is the commanded one);
    to_commanded: the calibration's similarity to the commanded frame; K: ``[3, 3]`` calibrated intrinsics;
    c2w_calibrated, c2w_commanded, registered: the training cameras, for ``cfg.align_neighbors``
    (:func:`heldout_in_calibrated_frame`; without them, the one similarity). ``psnr_global_alignment`` is the PSNR
    with the one similarity, whatever ``cfg.align_neighbors``.
    """
    Ks = np.broadcast_to(K, (len(c2w_raw), 3, 3))
    h, w = targets.shape[1:3]
    c2w_global = heldout_in_calibrated_frame(c2w_raw, to_commanded)
    c2w = heldout_in_calibrated_frame(c2w_raw, to_commanded, cfg.align_neighbors, c2w_calibrated, c2w_commanded,
                                      registered)
    renders = render_views(gaussians, c2w, Ks, w, h, cfg.backend)
    per_view = [metrics.psnr(r, t) for r, t in zip(renders, targets, strict=True)]
    result = {
        "psnr": metrics.psnr(renders, targets),
        "ssim": metrics.ssim(renders, targets),
        "psnr_min_view": float(min(per_view)),
    }
    if np.allclose(c2w, c2w_global, rtol=0.0, atol=1e-9):
        result["psnr_global_alignment"] = result["psnr"]
    else:
        result["psnr_global_alignment"] = metrics.psnr(render_views(gaussians, c2w_global, Ks, w, h, cfg.backend),
                                                       targets)
    return Evaluation(result, renders, targets)


def fit_to_frames(
    gaussians: Gaussians, frames: np.ndarray, c2w: np.ndarray, K: np.ndarray, cfg: EvaluateConfig
) -> dict[str, float]:
    """PSNR/SSIM of the canonical Gaussians against generated frames ``uint8 [F, H, W, 3]`` (a fit, not held out)."""
    idx = np.unique(np.linspace(0, len(frames) - 1, cfg.train_views).round().astype(int))
    renders = render_views(gaussians, c2w[idx], K[idx], frames.shape[2], frames.shape[1], cfg.backend)
    return {"train_psnr": metrics.psnr(renders, frames[idx]), "train_ssim": metrics.ssim(renders, frames[idx])}


def pose_report(c2w_calibrated: np.ndarray, c2w_true: np.ndarray, registered: np.ndarray) -> dict[str, float]:
    """Pose errors of the registered calibrated cameras against the true ones, after a Sim(3) fit on the centres.

    c2w_calibrated, c2w_true: ``[F, 4, 4]`` OpenCV; registered: ``[F]`` bool. Translation errors are relative to
    the true camera centres' RMS spread (:func:`lift3d_core.metrics.pose_errors`), a stricter yardstick than the
    scene's extent, which the rig sits inside.
    """
    reg = np.asarray(registered, bool)
    out = {"pose.registered_fraction": float(reg.mean())}
    if reg.sum() >= 3:
        errors = metrics.pose_errors(c2w_calibrated[reg], c2w_true[reg])
        out.update({f"pose.{k}": v for k, v in errors.items() if k != "scale"})
    return out


def plot_calibrated_tree(tree: CameraTree, c2w_in_commanded: np.ndarray, registered: np.ndarray, path_png) -> None:
    """Top (x-z) and side (z-y) views of the recovered cameras over the commanded tree, saved as PNG.

    c2w_in_commanded: ``[F, 4, 4]`` calibrated cameras of the distinct frames mapped into the commanded frame
    (``Calibration.to_commanded``); registered: ``[F]`` bool (unregistered frames drawn as crosses).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    commanded = tree.distinct_c2w()
    reg = np.asarray(registered, bool)
    fig = Figure(figsize=(11, 5), dpi=110)
    FigureCanvasAgg(fig)
    spread = float(np.ptp(commanded[:, :3, 3], axis=0).max()) or 1.0
    for ax, (i, j, title) in zip(fig.subplots(1, 2), ((0, 2, "top view (x-z)"), (2, 1, "side view (z-y, y down)")),
                                 strict=True):
        for c2w, colour, label in ((commanded, "0.6", "commanded"), (c2w_in_commanded, "tab:red", "calibrated")):
            pos, fwd = c2w[:, :3, 3], c2w[:, :3, 2]
            ax.scatter(pos[:, i], pos[:, j], s=8, color=colour, label=label)
            ax.quiver(pos[:, i], pos[:, j], fwd[:, i], fwd[:, j], color=colour, angles="xy", scale_units="xy",
                      scale=1.0 / (0.06 * spread), width=0.002)
        if (~reg).any():
            ax.scatter(c2w_in_commanded[~reg, :3, 3][:, i], c2w_in_commanded[~reg, :3, 3][:, j], marker="x", s=30,
                       color="k", label="unregistered")
        ax.set_title(title)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(True, lw=0.3)
        if j == 1:
            ax.invert_yaxis()
    fig.axes[0].legend(fontsize=7)
    fig.savefig(str(path_png), dpi=110)
