"""The ``colmap`` calibration backend: SIFT structure from motion through pycolmap, no weights.

1. SIFT features on every distinct frame (pycolmap's CPU extractor).
2. A pair graph from the tree (:func:`pair_graph`): neighbours within each clip, the tail of every
   parent clip against the head of each child, and, initialised from the commanded cameras, each
   frame's nearest commanded neighbours (position and viewing direction): clips of the tree that
   revisit a place (``U/Round-RI_90`` and ``Round-RI_90/U``) then share matches, which closes loops
   that a chain of clips cannot. Geometric verification discards pairs that do not overlap, so a
   loosely obeyed command costs time, not accuracy.
3. Incremental mapping with one shared pinhole camera set from the nominal K (focal refined on request).
4. Dense depth. pycolmap's patch-match stereo needs CUDA, so on a CPU build the depth of a frame is its
   triangulated points densified **piecewise-planarly**: a Delaunay triangulation of the points it
   observes, in the image, with inverse depth interpolated linearly inside each triangle (linear in
   inverse depth across the image is exactly a plane in 3-D). Confidence per point falls with its
   reprojection error and rises with its track length; per pixel it is the barycentric blend of its
   triangle's corners, cut where the triangle spans a depth discontinuity (likely an occlusion edge) or
   is large (little support). Pixels outside the points' hull have no depth.
5. Fused cloud: every frame's confident dense depth, unprojected with its colours, subsampled.

Frames that fail to register are named by ``(clip_id, t)`` in a :class:`Lift3DError`; with
``allow_unregistered`` they are listed in :attr:`Calibration.info`, marked in ``registered`` and given
the commanded pose mapped into the calibrated frame, with no depth. Never silently dropped.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lift3d_core.errors import Lift3DError


@dataclass(frozen=True)
class ColmapConfig:
    """The ``calibrate.colmap`` section.

    sequential_overlap: each frame is matched with the next this many frames of its clip.
    link_overlap: last frames of a parent clip matched with the first frames of each child.
    commanded_neighbors: extra pairs per frame, its nearest commanded cameras (0: off).
    peak_threshold: SIFT's DoG peak threshold (COLMAP's default 0.0067 finds too few features on small frames).
    max_features: SIFT features kept per frame.
    min_inliers: 2-D/3-D inliers a frame needs to register (COLMAP's default 30 is for large photographs).
    refine_focal: refine the shared focal length in bundle adjustment (False: the nominal K is trusted).
    min_confidence: dense pixels below this confidence (in [0, 1]) get no depth and enter no cloud.
    discontinuity: a triangle whose corners' inverse depths differ by more than this ratio is an edge.
    allow_unregistered: keep frames that fail to register (commanded pose, no depth) instead of failing.
    """

    sequential_overlap: int = 3
    link_overlap: int = 3
    commanded_neighbors: int = 10
    peak_threshold: float = 0.004
    max_features: int = 8192
    min_inliers: int = 15
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


# -- the pair graph ---------------------------------------------------------------------------------


def pair_graph(layout, c2w_commanded: np.ndarray, cfg: ColmapConfig) -> list[tuple[int, int]]:
    """Image pairs to match, as sorted ``(i, j)`` distinct-frame indices with ``i < j``.

    layout: :class:`lift3d_core.calibrate.FrameLayout`; c2w_commanded: ``[F, 4, 4]`` OpenCV.
    """
    pairs: set[tuple[int, int]] = set()

    def add(i: int, j: int) -> None:
        if i != j:
            pairs.add((min(i, j), max(i, j)))

    clips = layout.clip_frames()
    for clip_id, seq in clips.items():
        for a in range(len(seq)):
            for b in range(a + 1, min(len(seq), a + 1 + cfg.sequential_overlap)):
                add(seq[a], seq[b])
        parent = layout.parents[clip_id]
        if parent is not None:
            for i in clips[parent][-cfg.link_overlap:]:
                for j in seq[: cfg.link_overlap + 1]:
                    add(i, j)
    k = min(cfg.commanded_neighbors, len(c2w_commanded) - 1)
    if k > 0:
        centres, forward = c2w_commanded[:, :3, 3], c2w_commanded[:, :3, 2]
        spread = float(np.sqrt(((centres - centres.mean(0)) ** 2).sum(1).mean())) or 1.0
        angle = np.degrees(np.arccos(np.clip(forward @ forward.T, -1.0, 1.0)))
        # 30 degrees of turn weigh as much as the rig's RMS spread of travel; beyond 60 degrees views rarely overlap
        dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1) / spread + angle / 30.0
        dist[angle > 60.0] = np.inf
        np.fill_diagonal(dist, np.inf)
        for i in range(len(dist)):
            for j in np.argsort(dist[i])[:k]:
                if np.isfinite(dist[i, j]):
                    add(i, int(j))
    return sorted(pairs)


# -- structure from motion ---------------------------------------------------------------------------


@dataclass
class SparseModel:
    """What incremental mapping recovered, in COLMAP's world.

    c2w: ``[F, 4, 4]`` float64 OpenCV (identity where not registered). registered: ``[F]`` bool.
    K: ``[3, 3]`` the shared camera after mapping. points: ``[P, 3]`` float64; point_confidence: ``[P]`` in [0, 1].
    observations: per frame, ``(uv [n, 2] pixels, point index [n])`` of the points it sees.
    """

    c2w: np.ndarray
    registered: np.ndarray
    K: np.ndarray
    points: np.ndarray
    point_confidence: np.ndarray
    observations: list[tuple[np.ndarray, np.ndarray]]
    num_pairs: int
    seconds: dict[str, float]


def _threads() -> int:
    return max(1, os.cpu_count() or 1)


def run_sfm(frames: np.ndarray, K: np.ndarray, pairs: list[tuple[int, int]], cfg: ColmapConfig, seed: int) -> SparseModel:
    """SIFT, matching of ``pairs`` and incremental mapping of ``frames uint8 [F, H, W, 3]`` with nominal ``K [3, 3]``."""
    import pycolmap
    from PIL import Image

    pycolmap.logging.minloglevel = 2  # COLMAP's INFO lines are per image and per BA iteration
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lift3d-colmap-") as tmp:
        work = Path(tmp)
        image_dir = work / "images"
        image_dir.mkdir()
        names = [f"{i:05d}.png" for i in range(len(frames))]
        for name, frame in zip(names, frames, strict=True):
            Image.fromarray(frame).save(image_dir / name, compress_level=1)
        database = work / "database.db"

        t0 = time.perf_counter()
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        reader.camera_params = ",".join(repr(float(v)) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = _threads()
        extraction.use_gpu = False
        extraction.sift.peak_threshold = cfg.peak_threshold
        extraction.sift.max_num_features = cfg.max_features
        pycolmap.extract_features(database, image_dir, image_names=names, camera_mode=pycolmap.CameraMode.SINGLE,
                                  reader_options=reader, extraction_options=extraction, device=pycolmap.Device.cpu)
        seconds["features"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        (work / "pairs.txt").write_text("\n".join(f"{names[i]} {names[j]}" for i, j in pairs) + "\n")
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = _threads()
        matching.use_gpu = False
        pairing = pycolmap.ImportedPairingOptions()
        pairing.match_list_path = work / "pairs.txt"
        pycolmap.match_image_pairs(database, matching_options=matching, pairing_options=pairing,
                                   device=pycolmap.Device.cpu)
        seconds["matching"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        pycolmap.set_random_seed(seed)
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = _threads()
        options.random_seed = seed
        options.ba_refine_focal_length = cfg.refine_focal
        options.ba_refine_principal_point = False
        options.ba_refine_extra_params = False
        options.min_model_size = 3
        options.mapper.abs_pose_min_num_inliers = cfg.min_inliers
        options.mapper.abs_pose_min_inlier_ratio = 0.1
        options.mapper.abs_pose_refine_focal_length = cfg.refine_focal
        options.mapper.init_min_num_inliers = max(4 * cfg.min_inliers, 30)
        models = pycolmap.incremental_mapping(database, image_dir, work / "sparse", options=options)
        seconds["mapping"] = time.perf_counter() - t0
    if not models:
        raise Lift3DError(f"COLMAP could not start a reconstruction from {len(frames)} frames ({len(pairs)} pairs "
                          "matched): too few features or too little parallax; try larger frames or another backend")
    rec = max(models.values(), key=lambda r: r.num_reg_images())
    model = _sparse_model(rec, names, len(frames))
    model.num_pairs, model.seconds = len(pairs), seconds
    return model


def _sparse_model(rec, names: list[str], num_frames: int) -> SparseModel:
    index = {name: i for i, name in enumerate(names)}
    point_ids = sorted(rec.points3D)
    row = {pid: k for k, pid in enumerate(point_ids)}
    points = np.array([rec.points3D[p].xyz for p in point_ids], dtype=np.float64).reshape(-1, 3)
    error = np.array([rec.points3D[p].error for p in point_ids], dtype=np.float64)
    track = np.array([rec.points3D[p].track.length() for p in point_ids], dtype=np.float64)
    # a point seen twice at 1 px has confidence ~0.37; ten times at 0.3 px ~0.95
    point_confidence = (1.0 - 0.5 ** (track - 1.0)) * np.exp(-0.5 * error**2)

    c2w = np.tile(np.eye(4), (num_frames, 1, 1))
    registered = np.zeros(num_frames, bool)
    observations = [(np.zeros((0, 2)), np.zeros(0, np.int64)) for _ in range(num_frames)]
    for image in rec.images.values():
        if not image.has_pose:
            continue
        f = index[image.name]
        c2w[f, :3, :4] = image.cam_from_world().inverse().matrix()
        registered[f] = True
        seen = [(p.xy, row[p.point3D_id]) for p in image.points2D if p.has_point3D()]
        if seen:
            observations[f] = (np.array([s[0] for s in seen], np.float64), np.array([s[1] for s in seen], np.int64))
    cam = next(iter(rec.cameras.values()))
    fx, fy, cx, cy = cam.params[:4]
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return SparseModel(c2w, registered, K, points, point_confidence.astype(np.float64), observations, 0, {})


# -- densification -----------------------------------------------------------------------------------


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


def dense_depth(model: SparseModel, height: int, width: int, cfg: ColmapConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every registered frame's densified depth and confidence, ``float32 [F, H, W]`` each, COLMAP units."""
    n = len(model.c2w)
    depth = np.zeros((n, height, width), np.float32)
    conf = np.zeros((n, height, width), np.float32)
    for f in np.flatnonzero(model.registered):
        uv, idx = model.observations[f]
        if len(idx) < 3:
            continue
        w2c = np.linalg.inv(model.c2w[f])
        z = model.points[idx] @ w2c[2, :3] + w2c[2, 3]
        depth[f], conf[f] = densify_depth(uv, z, model.point_confidence[idx], height, width, cfg.discontinuity)
    keep = conf >= cfg.min_confidence
    return np.where(keep, depth, 0.0).astype(np.float32), np.where(keep, conf, 0.0).astype(np.float32)


# -- the backend ------------------------------------------------------------------------------------


def calibrate_colmap(frames, c2w_commanded, K, cfg, layout, depth_hint):
    """See :func:`lift3d_core.calibrate.calibrate`; ``cfg.colmap`` holds this backend's settings. ``depth_hint``
    is ignored: the geometry comes from the images alone."""
    from lift3d_core.calibrate import Calibration
    from lift3d_core.calibrate.contract import fit_to_commanded
    from lift3d_core.calibrate.fusion import apply_similarity, fuse_depth, normalization

    del depth_hint
    section: ColmapConfig = cfg.colmap
    n, height, width = frames.shape[:3]
    K0 = np.asarray(K, np.float64).reshape(-1, 3, 3)[0]
    pairs = pair_graph(layout, c2w_commanded, section)
    model = run_sfm(frames, K0, pairs, section, cfg.seed)
    missing = [layout.frame_ids[i] for i in np.flatnonzero(~model.registered)]
    if missing and not section.allow_unregistered:
        raise Lift3DError(
            f"COLMAP registered {int(model.registered.sum())} of {n} frames; unregistered (clip_id, t): "
            f"{_name_frames(missing)}. Larger frames help; calibrate.colmap.allow_unregistered=true keeps them "
            "at their commanded poses without depth"
        )
    if model.registered.sum() < 3:
        raise Lift3DError(f"COLMAP registered only {int(model.registered.sum())} of {n} frames; cannot calibrate")
    t0 = time.perf_counter()
    depth_raw, conf = dense_depth(model, height, width, section)
    Ks = np.broadcast_to(model.K, (n, 3, 3)).copy()
    points, colors = fuse_depth(frames, depth_raw, model.c2w, Ks, cfg.max_points, cfg.seed)
    center, scale = normalization(points, cfg.normalize_extent)
    c2w = apply_similarity(model.c2w, center, scale)
    to_commanded = fit_to_commanded(c2w, c2w_commanded, model.registered)
    if missing:
        c2w[~model.registered] = to_commanded.inverse().apply_c2w(c2w_commanded[~model.registered])
    seconds = {**model.seconds, "densify": time.perf_counter() - t0}
    return Calibration(
        c2w=c2w, K=Ks, depth=depth_raw * np.float32(scale), confidence=conf,
        points=((points - center) * scale).astype(np.float32), colors=colors, center=center, scale=scale,
        to_commanded=to_commanded, registered=model.registered.copy(),
        info={"unregistered": [[c, int(t)] for c, t in missing], "num_pairs": len(pairs),
              "num_sparse_points": len(model.points), "focal_px": float(model.K[0, 0]),
              "seconds": {k: round(v, 3) for k, v in seconds.items()}},
    )


def _name_frames(ids: list[tuple[str, int]], limit: int = 24) -> str:
    shown = ", ".join(f"({c}, {t})" for c, t in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
