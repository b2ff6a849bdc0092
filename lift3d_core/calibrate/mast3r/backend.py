"""``calibrate.backend: mast3r``: MASt3R pairwise pointmaps + global alignment -> a :class:`Calibration`.

Pipeline: frames -> network views (:mod:`.inference`, 512 px longest side) -> the pair graph
(:mod:`.pairs`: every frame against the input view, symmetrised, plus neighbours within a clip)
-> batched pairwise inference -> global alignment (:mod:`.align`: per-frame c2w, dense depth, one
focal, the input view at the origin, the commanded cameras as initialisation) -> depth,
confidence and intrinsics mapped back to the frame size -> a fused point cloud of the confident
pixels -> the method's normalisation (:func:`lift3d_core.calibrate.normalization`).

Contract of this backend:

* resolution: the network runs at :func:`network_resolution` (1024x576 frames: 512x288); the
  returned depth, confidence and K are at the frame size (nearest view pixel; depth 0 and
  confidence 0 in the few frame pixels outside the patch-multiple crop);
* confidence: MASt3R's own scale, [1, inf) (:data:`CONFIDENCE_RANGE`), per pixel the largest any
  pair gave it; 0 only outside the crop. ``min_conf_thr`` (3, DUSt3R's default) selects the
  points that are fused;
* world: the alignment's (input camera = identity), normalised; the similarity to the commanded
  frame is fitted by the calibrate package's contract, not here.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from lift3d_core.calibrate import Calibration, FrameLayout, apply_similarity, fuse_depth, normalization
from lift3d_core.calibrate.contract import fit_to_commanded
from lift3d_core.calibrate.mast3r.align import global_alignment
from lift3d_core.calibrate.mast3r.checkpoint import load_mast3r
from lift3d_core.calibrate.mast3r.config import Mast3rConfig
from lift3d_core.calibrate.mast3r.inference import network_view, pairwise_inference, prepare_images
from lift3d_core.calibrate.mast3r.pairs import make_pairs
from lift3d_core.checkpoints import resolve_device
from lift3d_core.errors import Lift3DError
from lift3d_core.progress import Progress

CONFIDENCE_RANGE = (1.0, math.inf)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def network_resolution(frame_hw: tuple[int, int], image_size: int = 512) -> tuple[int, int]:
    """``(h, w)`` of the network views for frames of ``(H, W)``."""
    return network_view(frame_hw, image_size).net_hw


def calibrate_mast3r(
    frames: np.ndarray,
    c2w_commanded: np.ndarray,
    K: np.ndarray,
    clip_of_frame: np.ndarray,
    cfg: Mast3rConfig,
    *,
    checkpoint_path: str | Path,
    device: str | torch.device | None = None,
    max_points: int = 60_000,
    normalize_extent: float = 10.0,
    seed: int = 0,
    progress: Progress | None = None,
) -> Calibration:
    """Calibrate distinct frames with MASt3R.

    frames: uint8 ``[F, H, W, 3]``, distinct frame 0 is the input view. c2w_commanded: ``[F, 4, 4]``
    OpenCV c2w of the trajectory (initialisation only). K: ``[3, 3]`` or ``[F, 3, 3]`` nominal
    intrinsics, unused: MASt3R estimates one focal for all frames. clip_of_frame: ``int [F]``.
    max_points, normalize_extent, seed: the ``calibrate`` section's fusion and normalisation.
    progress: phases ``pairs`` and ``alignment`` (:mod:`lift3d_core.progress`).

    Returns a :class:`Calibration` in the normalised frame: c2w ``[F, 4, 4]``, K ``[F, 3, 3]`` (one
    focal), depth ``[F, H, W]`` (0 = unknown), confidence ``[F, H, W]`` on MASt3R's [1, inf) scale
    (0 = no prediction), the fused cloud of pixels with confidence > ``min_conf_thr``.
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise Lift3DError(f"MASt3R calibration expects uint8 [F >= 2, H, W, 3] frames, got {frames.dtype} "
                          f"{frames.shape}")
    n = len(frames)
    c2w_commanded = np.asarray(c2w_commanded, dtype=np.float64)
    if c2w_commanded.shape != (n, 4, 4) or np.shape(clip_of_frame) != (n,):
        raise Lift3DError(f"MASt3R calibration: {n} frames need c2w [F, 4, 4] and clip_of_frame [F], got "
                          f"{c2w_commanded.shape} and {np.shape(clip_of_frame)}")
    del K  # nominal intrinsics are not used: the focal is estimated
    dev = resolve_device(device if device is not None else cfg.device)
    model = load_mast3r(checkpoint_path, dev)
    view = network_view(frames.shape[1:3], cfg.image_size, model.cfg.patch_size)
    edges = make_pairs(clip_of_frame, neighbours=cfg.neighbours)
    pw = pairwise_inference(model, prepare_images(frames, view), edges,
                            batch_size=cfg.batch_size, dtype=DTYPES[cfg.dtype], progress=progress)
    al = global_alignment(pw, iterations=cfg.iterations, lr=cfg.lr, schedule=cfg.schedule, init=cfg.init,
                          c2w_commanded=c2w_commanded, progress=progress)
    del pw
    Ks = np.broadcast_to(view.intrinsics(al.focal), (n, 3, 3)).copy()
    depth = view.to_frame(al.depth)
    confidence = view.to_frame(al.confidence)
    confident = np.where(confidence > cfg.min_conf_thr, depth, 0.0)
    if not (confident > 0).any():
        raise Lift3DError(f"MASt3R calibration: no pixel has confidence above calibrate.mast3r.min_conf_thr="
                          f"{cfg.min_conf_thr} (largest {float(confidence.max()):.3g}); the checkpoint may be wrong")
    points, colors = fuse_depth(frames, confident, al.c2w, Ks, max_points, seed)
    center, scale = normalization(points, normalize_extent)
    return Calibration(
        c2w=apply_similarity(al.c2w, center, scale),
        K=Ks,
        depth=(depth * np.float32(scale)).astype(np.float32),
        confidence=confidence.astype(np.float32),
        points=((points - center) * scale).astype(np.float32),
        colors=colors,
        center=center,
        scale=scale,
    )


def calibrate_from_layout(frames, c2w_commanded, K, cfg, layout: FrameLayout, depth_hint=None,
                          progress=None) -> Calibration:
    """The calibrate package's backend signature: ``cfg`` the whole ``calibrate`` section, ``layout`` the frames'
    clips; the generator's depth, if any, is not used (MASt3R measures its own). Adds the similarity to the
    commanded frame (the contract's Umeyama on the camera centres)."""
    from lift3d_core.checkpoints import checkpoint_path

    clip_ids = list(layout.parents)
    clip_of_frame = np.array([clip_ids.index(c) if t > 0 else 0 for c, t in layout.frame_ids], dtype=np.int64)
    m = cfg.mast3r
    cal = calibrate_mast3r(frames, c2w_commanded, K, clip_of_frame, m,
                           checkpoint_path=checkpoint_path("mast3r", m.checkpoint),
                           max_points=cfg.max_points, normalize_extent=cfg.normalize_extent, seed=cfg.seed,
                           progress=progress)
    cal.to_commanded = fit_to_commanded(cal.c2w, np.asarray(c2w_commanded, np.float64), cal.registered)
    return cal
