"""Depth interface: per-frame inverse depth, and where it holds, that supervises 3DGS training.

Backends (``depth.backend``), each a registry entry with its own ``params.yaml`` sub-section:

- ``calibrated``: the calibration's own depth, inverted.
- ``depth_anything_v2``: Depth Anything V2 ViT-L's relative disparity per frame, aligned to the calibrated
  disparity (:mod:`lift3d_core.depth.align`) on confidently calibrated pixels.

Every backend returns a :class:`DepthEstimate`: inverse depth ``float32 [F, H, W]`` at the frames' size plus a
validity mask ``bool [F, H, W]`` that gates the depth loss in training. Only the active backend's section enters the
store key (:meth:`DepthConfig.key_params`); a backend's checkpoints, whose digests enter the key too, are named by
:meth:`DepthConfig.models`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lift3d_core.config import canonical_dtype, config_to_dict
from lift3d_core.depth.align import ALIGN_METHODS, align_disparity
from lift3d_core.errors import Lift3DError
from lift3d_core.registry import Backend, active_section, check_backend, checkpoint_digests, section_key


@dataclass(frozen=True)
class CalibratedDepthConfig:
    """``depth.calibrated``: use the calibration's depth.

    min_confidence: calibrated pixels below this confidence are invalid; a weight in [0, 1] (the depth task maps each
    calibration backend's scale onto it with ``calibrate.confidence_weight``: MASt3R's c in [1, inf) becomes
    1 - 1/c); 0 keeps every pixel with a depth.
    """

    min_confidence: float = 0.0

    def __post_init__(self):
        if not np.isfinite(self.min_confidence):
            raise Lift3DError(f"depth.calibrated.min_confidence must be finite, got {self.min_confidence}")


@dataclass(frozen=True)
class DepthAnythingV2Config:
    """``depth.depth_anything_v2``: Depth Anything V2 aligned to the calibrated disparity.

    checkpoint: the official ``depth_anything_v2_vitl.pth`` (see checkpoints/README.md).
    variant: ``vitl`` (the official model) or ``tiny`` (random-init size for tests and CPU benchmarks).
    input_size: the frames are resized (aspect kept) so that their shorter side is at least this, both sides
        multiples of 14; 518 is Depth Anything V2's own default (LiftImage3D passes 512, which gives 518 rows too).
    align: ``median`` (the reference's rule) or ``robust_lsq`` (Tukey IRLS, see :mod:`lift3d_core.depth.align`).
    min_confidence: only calibrated pixels at or above this confidence weight (in [0, 1], see above) enter the fit.
    min_fit_pixels: a frame with fewer usable pixels is left unaligned (all invalid) and counted in the stats.
    batch_size: frames per forward pass (speed only, not hashed).
    dtype: the network's compute dtype (``float32``, ``bfloat16``, ``float16``).
    """

    checkpoint: str = "checkpoints/depth_anything_v2_vitl.pth"
    variant: str = "vitl"
    input_size: int = 518
    align: str = "median"
    min_confidence: float = 0.0
    min_fit_pixels: int = 64
    batch_size: int = 8
    dtype: str = "float32"

    def __post_init__(self):
        if self.variant not in ("vitl", "tiny"):
            raise Lift3DError(f"depth.depth_anything_v2.variant must be vitl or tiny, got {self.variant!r}")
        if self.input_size < 14:
            raise Lift3DError(f"depth.depth_anything_v2.input_size must be >= 14 (one patch), got {self.input_size}")
        if self.align not in ALIGN_METHODS:
            raise Lift3DError(f"depth.depth_anything_v2.align must be one of {list(ALIGN_METHODS)}, got {self.align!r}")
        if not np.isfinite(self.min_confidence):
            raise Lift3DError(f"depth.depth_anything_v2.min_confidence must be finite, got {self.min_confidence}")
        if self.min_fit_pixels < 2:
            raise Lift3DError(f"depth.depth_anything_v2.min_fit_pixels must be >= 2, got {self.min_fit_pixels}")
        if self.batch_size < 1:
            raise Lift3DError(f"depth.depth_anything_v2.batch_size must be >= 1, got {self.batch_size}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype, "depth.depth_anything_v2.dtype"))

    def key_params(self) -> dict[str, Any]:
        """Every field but the speed-only ``batch_size`` and the file's path (its digest is hashed instead)."""
        return {k: v for k, v in config_to_dict(self).items() if k not in ("batch_size", "checkpoint")}


BACKENDS: dict[str, Backend] = {
    "calibrated": Backend("lift3d_core.depth.calibrated:estimate", "calibrated"),
    "depth_anything_v2": Backend("lift3d_core.depth.depth_anything_v2:estimate", "depth_anything_v2", extra="depth",
                                 checkpoints={"depth_anything_v2": "checkpoint"}),
}


@dataclass(frozen=True)
class DepthConfig:
    """The ``depth`` section of params.yaml: the backend's name, shared settings and one sub-section per backend.

    min_depth: depths at or below this (normalised units) are invalid, for the calibrated depth and for the
        aligned estimate alike.
    """

    backend: str = "calibrated"
    min_depth: float = 1e-3
    calibrated: CalibratedDepthConfig = field(default_factory=CalibratedDepthConfig)
    depth_anything_v2: DepthAnythingV2Config = field(default_factory=DepthAnythingV2Config)

    def __post_init__(self):
        check_backend("depth", self.backend, BACKENDS)
        if self.min_depth <= 0:
            raise Lift3DError(f"depth.min_depth must be > 0, got {self.min_depth}")

    @property
    def section(self) -> Any:
        """The active backend's sub-section."""
        return active_section(self, BACKENDS)

    def models(self) -> dict[str, str]:
        """Checkpoint name -> SHA-256 digest of what the active backend reads (``pipeline.plan`` puts it in the
        depth key, so new weights recompute depth); a missing file raises one Lift3DError naming it and its source."""
        return checkpoint_digests(self, BACKENDS)

    def key_params(self) -> dict[str, Any]:
        """What the depth key hashes: the backend, the shared settings and the active backend's section only,
        without the settings that change only the speed."""
        return {"backend": self.backend, "min_depth": self.min_depth, self.backend: section_key(self.section)}


@dataclass
class DepthEstimate:
    """A depth stage's output.

    inv_depth: ``float32 [F, H, W]`` inverse z-depth in the calibrated (normalised) units; 0 where invalid.
    valid: ``bool [F, H, W]``: pixels whose target training may trust; the depth loss sees these only.
    per_frame: extra ``[F]`` arrays worth keeping (the fitted ``align_scale`` / ``align_shift`` of a monocular
        backend), stored beside the two above.
    stats: scalar summaries (``valid_fraction``, ``frames_unaligned``...), kept as artifact attributes.
    seconds: wall time of the network part, reported, not stored (it varies from run to run).
    """

    inv_depth: np.ndarray
    valid: np.ndarray
    per_frame: dict[str, np.ndarray] = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"inv_depth": self.inv_depth, "valid": self.valid, **self.per_frame}


def estimate_inverse_depth(
    frames: np.ndarray, calibrated_depth: np.ndarray, cfg: DepthConfig, *, confidence: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DepthEstimate:
    """Inverse-depth targets and their validity for ``frames uint8 [F, H, W, 3]``.

    calibrated_depth: ``[F, h, w]`` z-depth from calibration (normalised units, 0 = unknown), at the frames' size or
        the calibration's own (resampled to the frames' size, nearest).
    confidence: ``[F, h, w]`` calibration confidence in its backend's scale, or None (every pixel with a depth).
    progress: called as ``progress(done, F)`` by a backend that runs a network over the frames.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise Lift3DError(f"depth: frames must be uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    calibrated_depth = np.asarray(calibrated_depth, np.float32)
    if calibrated_depth.ndim != 3 or calibrated_depth.shape[0] != frames.shape[0]:
        raise Lift3DError(f"depth: calibrated depth must be [F, h, w] with F = {frames.shape[0]}, "
                          f"got {calibrated_depth.shape}")
    if confidence is None:
        confidence = np.ones_like(calibrated_depth)
    confidence = np.asarray(confidence, np.float32)
    if confidence.shape != calibrated_depth.shape:
        raise Lift3DError(f"depth: confidence {confidence.shape} must match the calibrated depth "
                          f"{calibrated_depth.shape}")
    size = frames.shape[1:3]
    out = BACKENDS[cfg.backend].load("depth", cfg.backend)(frames, resample_nearest(calibrated_depth, size),
                                        resample_nearest(confidence, size), cfg, progress=progress)
    out.stats.setdefault("valid_fraction", float(out.valid.mean()))
    return out


def resample_nearest(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[F, h, w]`` -> ``[F, H, W]`` by nearest neighbour (never mixes a valid depth with an unknown 0)."""
    if tuple(maps.shape[1:]) == tuple(size):
        return maps
    t = torch.from_numpy(np.ascontiguousarray(maps))[:, None]
    return torch.nn.functional.interpolate(t, size=tuple(size), mode="nearest-exact")[:, 0].numpy()


def inverse_depth(depth: np.ndarray, min_depth: float) -> np.ndarray:
    """``1 / depth`` where ``depth > min_depth``, else 0; float32."""
    depth = np.asarray(depth, dtype=np.float32)
    valid = depth > min_depth
    out = np.zeros_like(depth)
    out[valid] = 1.0 / depth[valid]
    return out


__all__ = [
    "BACKENDS",
    "CalibratedDepthConfig",
    "DepthAnythingV2Config",
    "DepthConfig",
    "DepthEstimate",
    "align_disparity",
    "estimate_inverse_depth",
    "inverse_depth",
]
