"""Dense depth from a sparse model on a CPU: piecewise-planar interpolation of each frame's triangulated points."""

from __future__ import annotations

import numpy as np

from lift3d_core.calibrate.colmap.config import ColmapConfig
from lift3d_core.calibrate.colmap.sfm import SparseModel
from lift3d_core.progress import Progress, report


def densify_depth(uv: np.ndarray, z: np.ndarray, point_confidence: np.ndarray, height: int, width: int,
                  discontinuity: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-planar dense depth from sparse observations of one frame.

    uv: ``[n, 2]`` pixel coordinates (corner convention: pixel (0, 0) covers [0, 1)^2); z: ``[n]`` z-depth > 0;
    point_confidence: ``[n]`` in [0, 1]. Returns ``depth float32 [H, W]`` (0 outside the points' hull) and
    ``confidence float32 [H, W]`` in [0, 1].
    """
    from scipy.spatial import Delaunay, QhullError

    depth = np.zeros((height, width), np.float32)
    conf = np.zeros((height, width), np.float32)
    ok = (z > 0) & np.isfinite(z)
    uv, inv, pc = uv[ok], 1.0 / z[ok], point_confidence[ok]
    if len(uv) < 3:
        return depth, conf
    try:
        tri = Delaunay(uv)
    except QhullError:  # all points on one line
        return depth, conf
    gx, gy = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([gx.ravel(), gy.ravel()], 1)
    simplex = tri.find_simplex(pix)
    inside = simplex >= 0
    s = simplex[inside]
    T = tri.transform[s]
    b = np.einsum("nij,nj->ni", T[:, :2], pix[inside] - T[:, 2])
    bary = np.concatenate([b, 1.0 - b.sum(1, keepdims=True)], 1)
    corners = tri.simplices[s]
    inv_pix = (bary * inv[corners]).sum(1)
    conf_pix = (bary * pc[corners]).sum(1)
    # Support: a triangle whose corners disagree in depth straddles an occlusion edge; a large one is a guess.
    tri_inv = inv[tri.simplices]
    jump = tri_inv.max(1) / np.maximum(tri_inv.min(1), 1e-12) - 1.0
    edge = np.linalg.norm(uv[tri.simplices] - uv[np.roll(tri.simplices, 1, axis=1)], axis=-1).max(1)
    reach = 0.25 * np.hypot(width, height)
    support = np.where(jump > discontinuity, 0.1, 1.0) * np.exp(-((edge / reach) ** 2))
    conf_pix *= support[s]
    depth.ravel()[np.flatnonzero(inside)] = (1.0 / np.maximum(inv_pix, 1e-12)).astype(np.float32)
    conf.ravel()[np.flatnonzero(inside)] = np.clip(conf_pix, 0.0, 1.0).astype(np.float32)
    return depth, conf


def dense_depth(model: SparseModel, frames: np.ndarray, cfg: ColmapConfig,
                progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every registered frame's dense depth and confidence, ``float32 [F, H, W]`` each, COLMAP units.

    frames: ``uint8 [F, H, W, 3]``. ``cfg.densify`` picks plane-sweep stereo ("mvs") or the piecewise-planar
    interpolation of each frame's triangulated points ("planar"); pixels below ``cfg.min_confidence`` get none.
    progress: phases ``plane sweep`` (or ``interpolation``) and ``filling holes``, in registered frames.
    """
    n, height, width = frames.shape[:3]
    todo = np.flatnonzero(model.registered)
    if cfg.densify == "mvs":
        from lift3d_core.calibrate.colmap.mvs import mvs_depth, select_sources

        sources = select_sources(model.c2w, model.points, model.observations, model.registered, cfg.mvs_sources,
                                 cfg.mvs_min_angle)
        depth, conf = mvs_depth(frames, model.c2w, model.K, sources, sparse_depth_ranges(model), cfg, progress=progress)
    else:
        depth = np.zeros((n, height, width), np.float32)
        conf = np.zeros((n, height, width), np.float32)
        for k, f in enumerate(todo):
            uv, z, pc = _frame_points(model, f)
            if len(z) >= 3:
                depth[f], conf[f] = densify_depth(uv, z, pc, height, width, cfg.discontinuity)
            report(progress, k + 1, len(todo), "interpolation")
    depth, conf = _confident(depth, conf, cfg.min_confidence)
    if cfg.densify == "mvs" and cfg.mvs_fill != "none":
        for k, f in enumerate(todo):
            sparse = _frame_points(model, f) if cfg.mvs_fill == "sparse" else None
            depth[f], conf[f] = fill_depth(depth[f], conf[f], sparse, cfg.discontinuity, cfg.min_confidence,
                                           use_dense=cfg.mvs_fill == "dense")
            report(progress, k + 1, len(todo), "filling holes")
        # a filled pixel's confidence is FILL_WEIGHT x its interpolation's: it stays where that clears the bar too
        depth, conf = _confident(depth, conf, cfg.min_confidence)
    return depth, conf


def behind_steps(depth: np.ndarray, margin: int, step: float) -> np.ndarray:
    """The far surface continued behind the near side of each depth step, ``float32 [F, H, W]`` (0: none).

    depth: ``[F, H, W]`` (0: none). A pixel within ``margin`` px (square) of one more than ``1 + step`` times as far
    gets the farthest depth within that margin: the background the near surface hides there, or the background that
    the correlation window hid under the object's depth (its fattened halo). These go into the cloud beside the
    pixels' own depths (``mvs_behind``): with the background's depth at the halo's pixels, COLMAP's depth trains to
    within 0.15 dB of the true depth on the tabletop preset (bench/RESULTS.md).
    """
    from scipy.ndimage import maximum_filter

    farthest = maximum_filter(depth, size=(1, 2 * margin + 1, 2 * margin + 1), mode="constant", cval=0.0)
    near_side = (depth > 0) & (farthest > (1.0 + step) * depth)
    return np.where(near_side, farthest, 0.0).astype(np.float32)


def _confident(depth: np.ndarray, conf: np.ndarray, min_confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """``depth`` and ``conf`` (``[..., H, W]``) zeroed where the confidence is below ``min_confidence``, float32."""
    keep = conf >= min_confidence
    return np.where(keep, depth, 0.0).astype(np.float32), np.where(keep, conf, 0.0).astype(np.float32)


FILL_WEIGHT = 0.5  # a filled pixel's confidence: its interpolation's, times this (it is a guess, not a match)


def fill_depth(depth: np.ndarray, conf: np.ndarray, sparse: tuple | None, discontinuity: float, min_confidence: float,
               use_dense: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One frame's stereo depth with its holes filled piecewise-planarly (:func:`densify_depth`).

    depth, conf: ``float32 [H, W]`` (0: no depth); sparse: ``(uv [n, 2], z [n], confidence [n])`` the frame's
    triangulated points, or None. The vertices of the triangulation are the pixels with a depth (``use_dense``, at
    their pixel centres with their confidence) and the sparse points; a pixel without depth takes the interpolated
    depth where the interpolation's confidence is at least ``min_confidence`` (triangles across a depth
    discontinuity or spanning a large hole fall below it), with that confidence times :data:`FILL_WEIGHT`. Pixels
    with a depth keep theirs.
    """
    H, W = depth.shape
    uv, z, pc = [np.zeros((0, 2))], [np.zeros(0)], [np.zeros(0)]
    if use_dense:
        ys, xs = np.nonzero(depth > 0)
        uv.append(np.c_[xs + 0.5, ys + 0.5])
        z.append(depth[ys, xs].astype(np.float64))
        pc.append(conf[ys, xs].astype(np.float64))
    if sparse is not None:
        uv.append(sparse[0])
        z.append(sparse[1])
        pc.append(sparse[2])
    fill, fill_conf = densify_depth(np.concatenate(uv), np.concatenate(z), np.concatenate(pc), H, W, discontinuity)
    hole = (depth <= 0) & (fill > 0) & (fill_conf >= min_confidence)
    return (np.where(hole, fill, depth).astype(np.float32),
            np.where(hole, fill_conf * FILL_WEIGHT, conf).astype(np.float32))


def _frame_points(model: SparseModel, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``f``'s observations of the sparse points: ``(uv [n, 2], z-depth [n], point confidence [n])``."""
    uv, idx = model.observations[f]
    w2c = np.linalg.inv(model.c2w[f])
    return uv, model.points[idx] @ w2c[2, :3] + w2c[2, 3], model.point_confidence[idx]


def sparse_depth_ranges(model: SparseModel, widen: float = 1.3) -> list[tuple[float, float] | None]:
    """Per frame, the z-depth range ``(near, far)`` of the points it observes (2nd to 98th percentile, widened by
    ``widen`` each way), or None for a frame with fewer than 8 (unregistered ones included)."""
    out: list[tuple[float, float] | None] = []
    for f in range(len(model.c2w)):
        _, idx = model.observations[f]
        if not model.registered[f] or len(idx) < 8:
            out.append(None)
            continue
        w2c = np.linalg.inv(model.c2w[f])
        z = model.points[idx] @ w2c[2, :3] + w2c[2, 3]
        z = z[z > 0]
        if len(z) < 8:
            out.append(None)
            continue
        lo, hi = np.quantile(z, [0.02, 0.98])
        out.append((float(lo / widen), float(hi * widen)))
    return out
