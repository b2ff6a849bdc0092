"""Pose calibration interface: generated frames -> cameras, depth and a fused point cloud.

All backends return a :class:`Calibration` in the *normalised* scene frame of the
method: the fused point cloud is centred on its mean and scaled so its largest
absolute coordinate is ``cfg.normalize_extent`` (10 in the reference); cameras and
depths get the same similarity transform (``x_norm = scale * (x - center)``).

Backends: ``commanded`` trusts the trajectory's cameras and fuses the depth the
generator vouches for. The MASt3R and COLMAP backends plug in here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lift3d_core.camera import unproject_depth
from lift3d_core.errors import Lift3DError

BACKENDS = ("commanded",)


@dataclass(frozen=True)
class CalibrateConfig:
    """The ``calibrate`` section of params.yaml.

    max_points: size of the fused point cloud (uniform subsample over frames).
    normalize_extent: largest absolute coordinate of the normalised point cloud.
    """

    backend: str = "commanded"
    max_points: int = 60_000
    normalize_extent: float = 10.0
    seed: int = 0

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise Lift3DError(f"calibrate.backend {self.backend!r} is unknown; available: {', '.join(BACKENDS)}")
        if self.max_points < 100:
            raise Lift3DError(f"calibrate.max_points must be >= 100, got {self.max_points}")
        if self.normalize_extent <= 0:
            raise Lift3DError(f"calibrate.normalize_extent must be > 0, got {self.normalize_extent}")


@dataclass
class Calibration:
    """Cameras and geometry of the distinct generated frames, normalised scene frame.

    c2w: ``[F, 4, 4]`` float64 OpenCV camera-to-world. K: ``[F, 3, 3]`` float64 pixels.
    depth: ``[F, H, W]`` float32 z-depth (0 = unknown). confidence: ``[F, H, W]`` float32 in [0, 1].
    points: ``[P, 3]`` float32 fused cloud. colors: ``[P, 3]`` uint8.
    center, scale: the normalisation, ``x_norm = scale * (x_raw - center)``.
    """

    c2w: np.ndarray
    K: np.ndarray
    depth: np.ndarray
    confidence: np.ndarray
    points: np.ndarray
    colors: np.ndarray
    center: np.ndarray
    scale: float


def calibrate(
    frames: np.ndarray,
    c2w_commanded: np.ndarray,
    K: np.ndarray,
    cfg: CalibrateConfig,
    *,
    depth_hint: np.ndarray | None = None,
) -> Calibration:
    """Calibrate distinct frames ``uint8 [F, H, W, 3]``.

    c2w_commanded: ``[F, 4, 4]`` the trajectory's cameras (OpenCV, input camera = identity).
    K: ``[3, 3]`` or ``[F, 3, 3]`` nominal intrinsics. depth_hint: ``[F, H, W]`` z-depth or None.
    """
    if cfg.backend == "commanded":
        return _calibrate_commanded(frames, c2w_commanded, K, cfg, depth_hint)
    raise Lift3DError(f"calibrate.backend {cfg.backend!r} is unknown; available: {', '.join(BACKENDS)}")


def _calibrate_commanded(frames, c2w, K, cfg: CalibrateConfig, depth_hint) -> Calibration:
    if depth_hint is None:
        raise Lift3DError(
            "calibrate.backend=commanded fuses the generator's own depth, and this generator provides none; "
            "use a generator that does (generate.backend=synthetic)"
        )
    n = frames.shape[0]
    Ks = np.broadcast_to(np.asarray(K, dtype=np.float64), (n, 3, 3)).copy()
    depth = np.asarray(depth_hint, dtype=np.float32)
    points, colors = fuse_depth(frames, depth, c2w, Ks, cfg.max_points, cfg.seed)
    center, scale = normalization(points, cfg.normalize_extent)
    c2w_n = apply_similarity(c2w, center, scale)
    return Calibration(
        c2w=c2w_n,
        K=Ks,
        depth=depth * np.float32(scale),
        confidence=(depth > 0).astype(np.float32),
        points=((points - center) * scale).astype(np.float32),
        colors=colors,
        center=center,
        scale=scale,
    )


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
