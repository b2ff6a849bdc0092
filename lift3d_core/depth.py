"""Depth interface: per-frame inverse depth that supervises 3DGS training.

Backends: ``calibrated`` uses the calibration's own depth. A monocular estimator
(Depth Anything V2) plugs in here; its relative disparity is aligned to the
calibrated disparity with :func:`align_disparity`, the reference's median rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lift3d_core.errors import Lift3DError

BACKENDS = ("calibrated",)


@dataclass(frozen=True)
class DepthConfig:
    """The ``depth`` section of params.yaml.

    min_depth: depths at or below this (normalised units) are invalid.
    """

    backend: str = "calibrated"
    min_depth: float = 1e-3

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise Lift3DError(f"depth.backend {self.backend!r} is unknown; available: {', '.join(BACKENDS)}")
        if self.min_depth <= 0:
            raise Lift3DError(f"depth.min_depth must be > 0, got {self.min_depth}")


def estimate_inverse_depth(frames: np.ndarray, calibrated_depth: np.ndarray, cfg: DepthConfig) -> np.ndarray:
    """Inverse-depth targets ``float32 [F, H, W]`` (0 = invalid) for frames ``uint8 [F, H, W, 3]``.

    calibrated_depth: ``[F, H, W]`` z-depth from calibration (normalised units, 0 = unknown).
    """
    if cfg.backend == "calibrated":
        return inverse_depth(calibrated_depth, cfg.min_depth)
    raise Lift3DError(f"depth.backend {cfg.backend!r} is unknown; available: {', '.join(BACKENDS)}")


def inverse_depth(depth: np.ndarray, min_depth: float) -> np.ndarray:
    """``1 / depth`` where ``depth > min_depth``, else 0; float32."""
    depth = np.asarray(depth, dtype=np.float32)
    valid = depth > min_depth
    out = np.zeros_like(depth)
    out[valid] = 1.0 / depth[valid]
    return out


def align_disparity(mono: np.ndarray, metric: np.ndarray, valid: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Align relative disparity ``mono [H, W]`` to ``metric [H, W]`` disparity on ``valid [H, W]``.

    The reference's robust rule: ``scale = median((d_metric - med d_metric) / (d_mono - med d_mono))``
    and ``shift = median(d_metric - scale * d_mono)``; aligned values below ``eps`` are invalidated (0).
    """
    m, d = mono[valid].astype(np.float64), metric[valid].astype(np.float64)
    if m.size < 2:
        raise Lift3DError("depth alignment needs at least two valid pixels")
    dm, dd = m - np.median(m), d - np.median(d)
    usable = np.abs(dm) > eps
    if not usable.any():
        raise Lift3DError("depth alignment: the monocular disparity is constant")
    scale = float(np.median(dd[usable] / dm[usable]))
    shift = float(np.median(d - scale * m))
    aligned = (scale * mono + shift).astype(np.float32)
    aligned[aligned < eps] = 0.0
    return aligned
