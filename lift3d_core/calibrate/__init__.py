"""Pose calibration interface: generated frames -> cameras, depth and a fused point cloud.

Every backend returns a :class:`Calibration` in its own world, *normalised* by the
method's rule: the fused point cloud is centred on its mean and scaled so its
largest absolute coordinate is ``cfg.normalize_extent`` (10 in the reference);
cameras and depths get the same transform (``x_norm = scale * (x_raw - center)``).
The similarity back to the commanded cameras' frame travels with it
(:mod:`lift3d_core.calibrate.contract`), so callers never branch on the backend.

Backends (:data:`BACKENDS`, each imported on first use):
``commanded`` trusts the trajectory's cameras and fuses the depth the generator
vouches for; ``colmap`` runs SIFT structure from motion with pycolmap and
densifies its triangulated points (:mod:`lift3d_core.calibrate.colmap`);
``mast3r`` runs the MASt3R network and its global alignment
(``lift3d_core.calibrate.mast3r``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from lift3d_core.calibrate.colmap import ColmapConfig
from lift3d_core.calibrate.contract import CONTRACTS, Similarity, confidence_weight, fit_to_commanded, run_resolution
from lift3d_core.calibrate.fusion import apply_similarity, fuse_depth, normalization
from lift3d_core.calibrate.mast3r.config import Mast3rConfig
from lift3d_core.errors import Lift3DError
from lift3d_core.progress import Progress
from lift3d_core.registry import Backend, active_section, check_backend, checkpoint_digests, section_key

BACKENDS: dict[str, Backend] = {
    "commanded": Backend("lift3d_core.calibrate.commanded:calibrate_commanded"),
    "colmap": Backend("lift3d_core.calibrate.colmap:calibrate_colmap", "colmap"),
    "mast3r": Backend("lift3d_core.calibrate.mast3r.backend:calibrate_from_layout", "mast3r",
                      checkpoints={"mast3r": "checkpoint"}),
}


@dataclass(frozen=True)
class CalibrateConfig:
    """The ``calibrate`` section of params.yaml.

    max_points: size of the fused point cloud (uniform subsample over frames).
    normalize_extent: largest absolute coordinate of the normalised point cloud.
    colmap: the ``calibrate.colmap`` section (read only when ``backend: colmap``).
    mast3r: the ``calibrate.mast3r`` section (read only when ``backend: mast3r``).
    """

    backend: str = "commanded"
    max_points: int = 60_000
    normalize_extent: float = 10.0
    seed: int = 0
    colmap: ColmapConfig = field(default_factory=ColmapConfig)
    mast3r: Mast3rConfig = field(default_factory=Mast3rConfig)

    def __post_init__(self):
        check_backend("calibrate", self.backend, BACKENDS)
        if self.max_points < 100:
            raise Lift3DError(f"calibrate.max_points must be >= 100, got {self.max_points}")
        if self.normalize_extent <= 0:
            raise Lift3DError(f"calibrate.normalize_extent must be > 0, got {self.normalize_extent}")

    def section(self):
        """The active backend's own settings, or None."""
        return active_section(self, BACKENDS)

    def models(self) -> dict[str, str]:
        """Checkpoint name -> SHA-256 digest of what the active backend reads (for the store key); a missing file
        raises one Lift3DError naming it and where to get it."""
        return checkpoint_digests(self, BACKENDS)

    def key_params(self) -> dict:
        """What the store key hashes: the shared settings and only the active backend's section."""
        out = {"backend": self.backend, "max_points": self.max_points, "normalize_extent": self.normalize_extent,
               "seed": self.seed}
        sec = self.section()
        if sec is not None:
            out[self.backend] = section_key(sec)
        return out


@dataclass(frozen=True)
class FrameLayout:
    """Which clip each distinct frame belongs to: what pair graphs are built from.

    frame_ids: ``(clip_id, t)`` naming each distinct frame (:meth:`CameraTree.distinct_frame_ids`).
    parents: clip id -> parent clip id (None: starts at the input view), parents listed before children.
    """

    frame_ids: tuple[tuple[str, int], ...]
    parents: Mapping[str, str | None]

    @classmethod
    def from_tree(cls, tree) -> FrameLayout:
        """The layout of a :class:`lift3d_core.trajectory.CameraTree`'s distinct frames."""
        return cls(tuple((c, int(t)) for c, t in tree.distinct_frame_ids()), {c.clip_id: c.parent for c in tree.clips})

    @classmethod
    def single_clip(cls, num_frames: int) -> FrameLayout:
        """Frames of one sequence (no tree)."""
        return cls(tuple(("clip", t) for t in range(num_frames)), {"clip": None})

    def clip_frames(self) -> dict[str, list[int]]:
        """Clip id -> distinct-frame indices of its frames ``t = 0 .. T-1`` (t = 0: the input view or the parent's
        last frame)."""
        own: dict[str, list[tuple[int, int]]] = {c: [] for c in self.parents}
        for i, (c, t) in enumerate(self.frame_ids):
            if t >= 1:
                own[c].append((t, i))
        out: dict[str, list[int]] = {}
        for c, parent in self.parents.items():
            start = 0 if parent is None else out[parent][-1]
            out[c] = [start] + [i for _, i in sorted(own[c])]
        return out


@dataclass
class Calibration:
    """Cameras and geometry of the distinct generated frames, in the backend's normalised frame.

    c2w: ``[F, 4, 4]`` float64 OpenCV camera-to-world. K: ``[F, 3, 3]`` float64 pixels of the frames.
    depth: ``[F, H, W]`` float32 z-depth (0 = unknown), frame size whatever the backend ran at.
    confidence: ``[F, H, W]`` float32 on the backend's scale (``contract.CONTRACTS``).
    points: ``[P, 3]`` float32 fused cloud. colors: ``[P, 3]`` uint8.
    center, scale: the normalisation, ``x_norm = scale * (x_raw - center)``.
    to_commanded: similarity mapping this (normalised) frame onto the commanded cameras' frame.
    registered: ``[F]`` bool; False = the images could not place the frame, its pose is the commanded one
        mapped by ``to_commanded.inverse()`` and its depth is empty (only with a backend's explicit consent).
    info: small JSON-able facts for the artifact (unregistered frame ids, sparse counts, seconds).
    """

    c2w: np.ndarray
    K: np.ndarray
    depth: np.ndarray
    confidence: np.ndarray
    points: np.ndarray
    colors: np.ndarray
    center: np.ndarray
    scale: float
    to_commanded: Similarity = field(default_factory=Similarity.identity)
    registered: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.registered is None:
            self.registered = np.ones(len(self.c2w), bool)


def calibrate(
    frames: np.ndarray,
    c2w_commanded: np.ndarray,
    K: np.ndarray,
    cfg: CalibrateConfig,
    *,
    layout: FrameLayout | None = None,
    depth_hint: np.ndarray | None = None,
    progress: Progress | None = None,
) -> Calibration:
    """Calibrate distinct frames ``uint8 [F, H, W, 3]`` with ``cfg.backend``.

    c2w_commanded: ``[F, 4, 4]`` the trajectory's cameras (OpenCV, input camera = identity).
    K: ``[3, 3]`` or ``[F, 3, 3]`` nominal intrinsics. layout: clip membership (default: one sequence).
    depth_hint: ``[F, H, W]`` z-depth the generator vouches for, or None.
    progress: called as ``progress(done, total, phase)`` as the backend's phases advance (COLMAP: features,
        matching, mapping, plane sweep, filling holes; MASt3R: pairs, alignment); ``done`` counts within a phase.
    """
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise Lift3DError(f"calibrate expects frames uint8 [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if len(c2w_commanded) != len(frames):
        raise Lift3DError(f"calibrate got {len(frames)} frames but {len(c2w_commanded)} commanded cameras")
    layout = layout or FrameLayout.single_clip(len(frames))
    if len(layout.frame_ids) != len(frames):
        raise Lift3DError(f"calibrate got {len(frames)} frames but a layout of {len(layout.frame_ids)}")
    backend = BACKENDS[cfg.backend].load("calibrate", cfg.backend)
    return backend(frames, np.asarray(c2w_commanded, np.float64), K, cfg, layout, depth_hint, progress=progress)


__all__ = [
    "BACKENDS", "CONTRACTS", "Backend", "CalibrateConfig", "Calibration", "ColmapConfig", "FrameLayout", "Similarity",
    "apply_similarity", "calibrate", "confidence_weight", "fit_to_commanded", "fuse_depth", "normalization",
    "run_resolution",
]

