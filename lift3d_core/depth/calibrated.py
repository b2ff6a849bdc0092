"""``depth.backend: calibrated``: the calibration's own depth, inverted, where it is known and confident."""

from __future__ import annotations

import numpy as np

from lift3d_core.depth import DepthConfig, DepthEstimate, inverse_depth


def estimate(frames: np.ndarray, calibrated_depth: np.ndarray, confidence: np.ndarray, cfg: DepthConfig,
             progress=None) -> DepthEstimate:
    """Inverse depth of ``calibrated_depth [F, H, W]`` where it exceeds ``min_depth`` and ``confidence [F, H, W]``
    reaches ``depth.calibrated.min_confidence``; ``frames`` only fix the size (the interface's other backends read
    them)."""
    valid = (calibrated_depth > cfg.min_depth) & (confidence >= cfg.calibrated.min_confidence)
    inv = inverse_depth(calibrated_depth, cfg.min_depth)
    inv[~valid] = 0.0
    return DepthEstimate(inv_depth=inv, valid=valid)
