"""The ``colmap`` calibration backend: SIFT structure from motion through pycolmap, no weights.

1. SIFT features on every distinct frame (pycolmap's CPU extractor), on the frames upsampled (bicubic) to
   ``feature_width`` when narrower: at 128x96 that halves the cameras' error (bench/RESULTS.md).
2. A pair graph from the tree (:func:`pair_graph`): neighbours within each clip, the tail of every
   parent clip against the head of each child, and, initialised from the commanded cameras, each
   frame's nearest commanded neighbours (position and viewing direction): clips of the tree that
   revisit a place (``U/Round-RI_90`` and ``Round-RI_90/U``) then share matches, which closes loops
   that a chain of clips cannot. Geometric verification discards pairs that do not overlap, so a
   loosely obeyed command costs time, not accuracy.
3. Incremental mapping with one shared pinhole camera set from the nominal K (focal refined on request).
4. Dense depth. pycolmap's patch-match stereo needs CUDA, so the depth is plane-sweep stereo between the
   registered frames in torch (``densify: mvs``, :mod:`~lift3d_core.calibrate.colmap.mvs`): per frame, its
   four best-connected sources, NCC over a window, the pixel's cheapest plane, kept where a source's own depth
   agrees; the pixels it leaves empty are filled piecewise-planarly from its own depth where that is trusted
   (``mvs_fill``). ``densify: planar`` instead interpolates each frame's triangulated points **piecewise-planarly**:
   a Delaunay triangulation of the points it observes, in the image, with inverse depth interpolated linearly
   inside each triangle (linear in inverse depth across the image is exactly a plane in 3-D); confidence per
   point falls with its reprojection error and rises with its track length, per pixel it is the barycentric
   blend of its triangle's corners, cut where the triangle spans a depth discontinuity or is large. Pixels
   without a trusted depth have none.
5. Fused cloud: every frame's confident dense depth, unprojected with its colours, and with ``mvs_behind`` the far
   side of each depth step continued a few pixels behind its near side, subsampled.

Frames that fail to register are named by ``(clip_id, t)`` in a :class:`Lift3DError`; with
``allow_unregistered`` they are listed in :attr:`Calibration.info`, marked in ``registered`` and given
the commanded pose mapped into the calibrated frame, with no depth. Never silently dropped.
"""

from __future__ import annotations

import time

import numpy as np

from lift3d_core.calibrate.colmap.config import ColmapConfig
from lift3d_core.calibrate.colmap.densify import behind_steps, dense_depth, densify_depth
from lift3d_core.calibrate.colmap.pairs import pair_graph
from lift3d_core.calibrate.colmap.sfm import SparseModel, run_sfm
from lift3d_core.errors import Lift3DError

__all__ = ["ColmapConfig", "SparseModel", "calibrate_colmap", "calibrate_from_model", "dense_depth", "densify_depth",
           "pair_graph", "run_sfm"]


def calibrate_colmap(frames, c2w_commanded, K, cfg, layout, depth_hint, progress=None):
    """See :func:`lift3d_core.calibrate.calibrate`; ``cfg.colmap`` holds this backend's settings. ``depth_hint``
    is ignored: the geometry comes from the images alone."""
    del depth_hint
    section: ColmapConfig = cfg.colmap
    n = len(frames)
    K0 = np.asarray(K, np.float64).reshape(-1, 3, 3)[0]
    pairs = pair_graph(layout, c2w_commanded, section)
    model = run_sfm(frames, K0, pairs, section, cfg.seed, progress=progress)
    missing = [layout.frame_ids[i] for i in np.flatnonzero(~model.registered)]
    if missing and not section.allow_unregistered:
        raise Lift3DError(
            f"COLMAP registered {int(model.registered.sum())} of {n} frames; unregistered (clip_id, t): "
            f"{_name_frames(missing)}. Larger frames help; calibrate.colmap.allow_unregistered=true keeps them "
            "at their commanded poses without depth"
        )
    if model.registered.sum() < 3:
        raise Lift3DError(f"COLMAP registered only {int(model.registered.sum())} of {n} frames; cannot calibrate")
    return calibrate_from_model(model, frames, c2w_commanded, cfg, missing, {"num_pairs": len(pairs)}, progress)


def calibrate_from_model(model: SparseModel, frames, c2w_commanded, cfg, missing=(), info=None, progress=None):
    """Steps 4-5 on a sparse model: dense depth, fused cloud, normalisation, the similarity to the commanded frame.

    model: :func:`run_sfm`'s; frames: ``uint8 [F, H, W, 3]``; c2w_commanded: ``[F, 4, 4]``; cfg: the calibrate
    section (``cfg.colmap`` this backend's); missing: ``(clip_id, t)`` of the unregistered frames; progress: see
    :mod:`lift3d_core.progress`.
    """
    from lift3d_core.calibrate import Calibration
    from lift3d_core.calibrate.contract import fit_to_commanded
    from lift3d_core.calibrate.fusion import apply_similarity, fuse_depth, normalization

    n = len(frames)
    t0 = time.perf_counter()
    depth_raw, conf = dense_depth(model, frames, cfg.colmap, progress)
    Ks = np.broadcast_to(model.K, (n, 3, 3)).copy()
    if cfg.colmap.mvs_behind > 0:  # the cloud also gets the background continued behind the depth steps
        behind = behind_steps(depth_raw, cfg.colmap.mvs_behind, cfg.colmap.discontinuity)
        points, colors = fuse_depth(np.concatenate([frames, frames]), np.concatenate([depth_raw, behind]),
                                    np.concatenate([model.c2w, model.c2w]), np.concatenate([Ks, Ks]),
                                    cfg.max_points, cfg.seed)
    else:
        points, colors = fuse_depth(frames, depth_raw, model.c2w, Ks, cfg.max_points, cfg.seed)
    center, scale = normalization(points, cfg.normalize_extent)
    c2w = apply_similarity(model.c2w, center, scale)
    to_commanded = fit_to_commanded(c2w, c2w_commanded, model.registered)
    if missing:
        c2w[~model.registered] = to_commanded.inverse().apply_c2w(c2w_commanded[~model.registered])
    seconds = {**model.seconds, "densify": time.perf_counter() - t0}
    return Calibration(
        c2w=c2w, K=Ks, depth=depth_raw * np.float32(scale), confidence=conf,
        points=((points - center) * scale).astype(np.float32), colors=colors, center=center, scale=scale,
        to_commanded=to_commanded, registered=model.registered.copy(),
        info={"unregistered": [[c, int(t)] for c, t in missing], **(info or {}),
              "num_sparse_points": len(model.points), "focal_px": float(model.K[0, 0]),
              "seconds": {k: round(v, 3) for k, v in seconds.items()}},
    )


def _name_frames(ids: list[tuple[str, int]], limit: int = 24) -> str:
    shown = ", ".join(f"({c}, {t})" for c, t in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
