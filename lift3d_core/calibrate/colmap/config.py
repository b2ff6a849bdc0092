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
    feature_width: SIFT runs on the frames upsampled (bicubic) to at least this width (0: as they are): at 128x96
        the features of frames upsampled 3x fix the cameras to 0.14-0.19 degrees (mean) against 0.28-0.44 as they
        are, from 2.5x the points (bench/RESULTS.md); cameras and keypoints are scaled back.
    peak_threshold: SIFT's DoG peak threshold. COLMAP's 0.0067 is for photographs; the blurred, far surfaces of
        generated frames give 23 to 60 features a frame at 128x96 with 0.004, 55 to 150 with 0.001.
    max_features: SIFT features kept per frame.
    min_inliers: 2-D/3-D inliers a frame needs to register (COLMAP's default 30 is for large photographs; with 15,
        the tree's level-2 orbits at 256x192 form a second model instead of joining the first).
    refine_focal: refine the shared focal length in bundle adjustment (False: the nominal K is trusted).
    densify: how the dense depth is made: "mvs" (plane-sweep stereo between the registered frames,
        :mod:`~lift3d_core.calibrate.colmap.mvs`) or "planar" (each frame's triangulated points interpolated
        piecewise-planarly, :func:`~lift3d_core.calibrate.colmap.densify.densify_depth`).
    mvs_sources: source frames per reference frame.
    mvs_planes: depth planes of the sweep (evenly spaced in inverse depth over the frame's sparse range).
    mvs_window: side in pixels of the correlation window.
    mvs_min_angle: least median triangulation angle (degrees) of the points a source shares with the reference.
    mvs_min_consistent: sources whose depth must agree for a pixel to keep its depth.
    mvs_depth_tolerance: relative depth difference within which two frames agree.
    mvs_shift: 0 for correlation windows centred on their pixel; else shiftable windows, each pixel's cost the least
        of its window's and those moved by this many pixels along x, y or both: less fattening of objects.
    mvs_average: a kept pixel's depth is the mean of its own and the agreeing sources' depths carried back into the
        frame (``mvs`` step 6) instead of its own.
    mvs_edge_margin: stereo pixels within this many pixels of a depth step (a neighbour more than ``1 +
        discontinuity`` times as far), on its near side, get no depth (0: off): a window straddling an object's
        silhouette gives the background beside it the object's depth (``mvs`` step 6).
    mvs_behind: the fused cloud also gets, at the pixels within this many px of a depth step on its near side, the
        step's far depth (:func:`~lift3d_core.calibrate.colmap.densify.behind_steps`; 0: off): the background beside
        an object, which the correlation window gives the object's depth. At 2 px: COLMAP + pose refinement's held-out
        PSNR +0.42 / -0.32 dB on tabletop (two training seeds, one sparse model), +0.03 on room: within the training's
        spread, so off (bench/RESULTS.md).
    mvs_photo_tolerance: None (off) or a per-pixel photometric check in the plane sweep: a plane is photo-consistent
        at a pixel where the median over the sources of the mean absolute RGB difference (colours in [0, 1]) between
        the pixel and the bilinear sample, in the source, of its point at the plane's depth is at most this (single
        pixels, no window; Lambertian scenes). A correct depth lands on the same surface point in every source; a
        background pixel beside an object given the object's depth (the window straddling the silhouette) lands on
        a different background point in each, which disagrees where the background is textured. At 0.02 (with the
        retry) the floaters fall from 8.2 to 3.1 % of tabletop's pixels, mostly dropped, not corrected; COLMAP + pose
        refinement +0.34 to +0.47 dB on tabletop (three training seeds, one sparse model), -0.03 / -0.10 on room: off
        (bench/RESULTS.md).
    mvs_photo_retry: with ``mvs_photo_tolerance``, a pixel whose cheapest plane fails the check takes the cheapest
        plane that passes (True) or no depth (False).
    mvs_fill: what fills the pixels plane-sweep stereo leaves without depth ("mvs" only): "none"; "sparse" (the
        frame's triangulated points) or "dense" (its stereo depth itself, every pixel with a depth a vertex)
        interpolated piecewise-planarly as ``densify: planar`` does
        (:func:`~lift3d_core.calibrate.colmap.densify.fill_depth`). Rule: a hole pixel takes the interpolated depth
        at half the interpolation's confidence, and keeps it where that half still clears ``min_confidence``
        (triangles across a depth step or over a large hole do not); pixels with a stereo depth keep theirs. Default "dense": at the
        demo profile it raises the pixels with depth from 77 / 72 % to 83 / 78 % (room / tabletop) and the held-out
        PSNR of COLMAP + pose refinement by 0.74 dB (room) and 0.36 / 1.50 dB (tabletop, two runs) against "none"
        on the same cameras (bench/RESULTS.md).
    min_confidence: dense pixels below this confidence (in [0, 1]; "mvs": the correlation) get no depth and
        enter no cloud.
    discontinuity: a triangle whose corners' inverse depths differ by more than this ratio is an edge ("planar" and
        ``mvs_fill``); a larger depth ratio between neighbours is a depth step for ``mvs_edge_margin``.
    allow_unregistered: keep frames that fail to register (commanded pose, no depth) instead of failing.
    """

    sequential_overlap: int = 3
    link_overlap: int = 3
    commanded_neighbors: int = 10
    feature_width: int = 384
    peak_threshold: float = 0.001
    max_features: int = 8192
    min_inliers: int = 10
    refine_focal: bool = False
    densify: str = "mvs"
    mvs_sources: int = 4
    mvs_planes: int = 64
    mvs_window: int = 5
    mvs_min_angle: float = 2.0
    mvs_min_consistent: int = 1
    mvs_depth_tolerance: float = 0.05
    mvs_shift: int = 0
    mvs_average: bool = False
    mvs_behind: int = 0
    mvs_edge_margin: int = 0
    mvs_photo_tolerance: float | None = None
    mvs_photo_retry: bool = True
    mvs_fill: str = "dense"
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
        if self.feature_width < 0:
            raise Lift3DError(f"calibrate.colmap.feature_width must be >= 0, got {self.feature_width}")
        if self.max_features < 64 or self.min_inliers < 6:
            raise Lift3DError("calibrate.colmap.max_features must be >= 64 and min_inliers >= 6")
        if self.densify not in ("mvs", "planar"):
            raise Lift3DError(f"calibrate.colmap.densify must be 'mvs' or 'planar', got {self.densify!r}")
        if self.mvs_fill not in ("none", "sparse", "dense"):
            raise Lift3DError(f"calibrate.colmap.mvs_fill must be 'none', 'sparse' or 'dense', got {self.mvs_fill!r}")
        if self.mvs_behind < 0:
            raise Lift3DError(f"calibrate.colmap.mvs_behind must be >= 0, got {self.mvs_behind}")
        if self.mvs_shift < 0:
            raise Lift3DError(f"calibrate.colmap.mvs_shift must be >= 0, got {self.mvs_shift}")
        if self.mvs_edge_margin < 0:
            raise Lift3DError(f"calibrate.colmap.mvs_edge_margin must be >= 0, got {self.mvs_edge_margin}")
        if self.mvs_photo_tolerance is not None and not self.mvs_photo_tolerance > 0:
            raise Lift3DError(f"calibrate.colmap.mvs_photo_tolerance must be > 0 or null, got {self.mvs_photo_tolerance}")
        if self.mvs_sources < 1 or self.mvs_planes < 2 or self.mvs_window < 1 or self.mvs_window % 2 == 0:
            raise Lift3DError("calibrate.colmap.mvs_sources must be >= 1, mvs_planes >= 2 and mvs_window odd")
        if not (0 <= self.mvs_min_angle < 90 and self.mvs_min_consistent >= 1 and self.mvs_depth_tolerance > 0):
            raise Lift3DError("calibrate.colmap.mvs_min_angle must be in [0, 90), mvs_min_consistent >= 1 and "
                              "mvs_depth_tolerance > 0")
        if not 0 <= self.min_confidence < 1 or not self.discontinuity > 0:
            raise Lift3DError("calibrate.colmap.min_confidence must be in [0, 1) and discontinuity > 0")
