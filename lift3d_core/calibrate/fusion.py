"""Geometry every calibration backend shares: depth fusion and the method's normalisation."""

from __future__ import annotations

import numpy as np

from lift3d_core.camera import unproject_depth
from lift3d_core.errors import Lift3DError


def fuse_depth(
    frames: np.ndarray, depth: np.ndarray, c2w: np.ndarray, K: np.ndarray, max_points: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unproject every frame's valid depth and subsample ``max_points`` uniformly.

    frames ``uint8 [F, H, W, 3]``, depth ``[F, H, W]`` (0 = invalid), c2w ``[F, 4, 4]``, K ``[F, 3, 3]``.
    Returns ``points float64 [P, 3]`` world, ``colors uint8 [P, 3]``.
    """
    valid = depth > 0
    total = int(valid.sum())
    if total == 0:
        raise Lift3DError("calibration found no valid depth in any frame")
    rng = np.random.default_rng(seed)
    keep = np.zeros(total, dtype=bool)
    keep[rng.choice(total, size=min(max_points, total), replace=False)] = True
    pts, cols, offset = [], [], 0
    for f in range(frames.shape[0]):
        m = valid[f]
        k = int(m.sum())
        sel = keep[offset : offset + k]
        offset += k
        if not sel.any():
            continue
        xyz = unproject_depth(depth[f].astype(np.float64), c2w[f], K[f])[m][sel]
        pts.append(xyz)
        cols.append(frames[f][m][sel])
    return np.concatenate(pts), np.concatenate(cols).astype(np.uint8)


def normalization(points: np.ndarray, extent: float) -> tuple[np.ndarray, float]:
    """The method's normalisation: centre on the mean, largest |coordinate| becomes ``extent``."""
    center = points.mean(axis=0)
    radius = float(np.abs(points - center).max())
    if not np.isfinite(radius) or radius <= 0:
        raise Lift3DError("calibration point cloud is degenerate (all points equal)")
    return center, extent / radius


def apply_similarity(c2w: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """Move cameras ``c2w [..., 4, 4]`` into the normalised frame ``x -> scale * (x - center)``."""
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, 3] = (out[..., :3, 3] - center) * scale
    return out
