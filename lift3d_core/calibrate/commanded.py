"""The ``commanded`` backend: trust the trajectory's cameras, fuse the depth the generator vouches for."""

from __future__ import annotations

import numpy as np

from lift3d_core.calibrate.contract import Similarity
from lift3d_core.calibrate.fusion import apply_similarity, fuse_depth, normalization
from lift3d_core.errors import Lift3DError


def calibrate_commanded(frames, c2w_commanded, K, cfg, layout, depth_hint, progress=None):
    """See :func:`lift3d_core.calibrate.calibrate`. The calibrated frame is the commanded one, normalised,
    so the similarity back to it is the inverse normalisation, exact (no fit)."""
    from lift3d_core.calibrate import Calibration

    if depth_hint is None:
        raise Lift3DError(
            "calibrate.backend=commanded fuses the generator's own depth, and this generator provides none; "
            "use a generator that does (generate.backend=synthetic) or a calibrating backend (colmap, mast3r)"
        )
    n = frames.shape[0]
    Ks = np.broadcast_to(np.asarray(K, dtype=np.float64), (n, 3, 3)).copy()
    depth = np.asarray(depth_hint, dtype=np.float32)
    points, colors = fuse_depth(frames, depth, c2w_commanded, Ks, cfg.max_points, cfg.seed)
    center, scale = normalization(points, cfg.normalize_extent)
    return Calibration(
        c2w=apply_similarity(c2w_commanded, center, scale),
        K=Ks,
        depth=depth * np.float32(scale),
        confidence=(depth > 0).astype(np.float32),
        points=((points - center) * scale).astype(np.float32),
        colors=colors,
        center=center,
        scale=scale,
        to_commanded=Similarity(1.0 / scale, np.eye(3), np.asarray(center, np.float64)),
        registered=np.ones(n, bool),
    )
