"""The ``calibrate.colmap`` section."""

from __future__ import annotations

from dataclasses import dataclass

from lift3d_core.errors import Lift3DError


@dataclass(frozen=True)
class ColmapConfig:
    """The ``calibrate.colmap`` section.

    sequential_overlap: each frame is matched with the next this many frames of its clip.
    link_overlap: last frames of a parent clip matched with the first frames of each child.
    commanded_neighbors: extra pairs per frame, its nearest commanded cameras (0: off).
    peak_threshold: SIFT's DoG peak threshold. COLMAP's 0.0067 is for photographs; the blurred, far surfaces of
        generated frames give 23 to 60 features a frame at 128x96 with 0.004, 55 to 150 with 0.001.
    max_features: SIFT features kept per frame.
    min_inliers: 2-D/3-D inliers a frame needs to register (COLMAP's default 30 is for large photographs; with 15,
        the tree's level-2 orbits at 256x192 form a second model instead of joining the first).
    refine_focal: refine the shared focal length in bundle adjustment (False: the nominal K is trusted).
    min_confidence: dense pixels below this confidence (in [0, 1]) get no depth and enter no cloud.
    discontinuity: a triangle whose corners' inverse depths differ by more than this ratio is an edge.
    allow_unregistered: keep frames that fail to register (commanded pose, no depth) instead of failing.
    """

    sequential_overlap: int = 3
    link_overlap: int = 3
    commanded_neighbors: int = 10
    peak_threshold: float = 0.001
    max_features: int = 8192
    min_inliers: int = 10
    refine_focal: bool = False
    min_confidence: float = 0.3
    discontinuity: float = 0.15
    allow_unregistered: bool = False

    def __post_init__(self):
        if self.sequential_overlap < 1 or self.link_overlap < 1:
            raise Lift3DError("calibrate.colmap.sequential_overlap and link_overlap must be >= 1")
        if self.commanded_neighbors < 0:
            raise Lift3DError(f"calibrate.colmap.commanded_neighbors must be >= 0, got {self.commanded_neighbors}")
        if not 0 < self.peak_threshold < 1:
            raise Lift3DError(f"calibrate.colmap.peak_threshold must be in (0, 1), got {self.peak_threshold}")
        if self.max_features < 64 or self.min_inliers < 6:
            raise Lift3DError("calibrate.colmap.max_features must be >= 64 and min_inliers >= 6")
        if not 0 <= self.min_confidence < 1 or not self.discontinuity > 0:
            raise Lift3DError("calibrate.colmap.min_confidence must be in [0, 1) and discontinuity > 0")
