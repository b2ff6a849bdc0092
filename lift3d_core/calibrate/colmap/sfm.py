"""SIFT features, matching and incremental mapping through pycolmap: a :class:`SparseModel`."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lift3d_core.calibrate.colmap.config import ColmapConfig
from lift3d_core.errors import Lift3DError
from lift3d_core.progress import Progress, report


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


def upsampled(frames: np.ndarray, K: np.ndarray, min_width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames resized (bicubic) to at least ``min_width`` pixels wide, with their intrinsics: ``(frames, K, factor)``,
    ``factor [2]`` the new size over the old along x and y (1, 1: unchanged). Pixel edges map onto pixel edges, so a
    point at ``(u, v)`` lands at ``factor * (u, v)``."""
    h, w = frames.shape[1:3]
    if min_width <= w:
        return frames, np.asarray(K, np.float64), np.ones(2)
    new_w, new_h = int(min_width), round(h * min_width / w)
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(new_h, new_w), mode="bicubic", align_corners=False)
    out = t.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    factor = np.array([new_w / w, new_h / h])
    K2 = np.asarray(K, np.float64).copy()
    K2[0] *= factor[0]
    K2[1] *= factor[1]
    return out, K2, factor


def run_sfm(frames: np.ndarray, K: np.ndarray, pairs: list[tuple[int, int]], cfg: ColmapConfig, seed: int,
            progress: Progress | None = None) -> SparseModel:
    """SIFT, matching of ``pairs`` and incremental mapping of ``frames uint8 [F, H, W, 3]`` with nominal ``K [3, 3]``.

    SIFT sees the frames upsampled to ``cfg.feature_width`` when they are narrower (:func:`upsampled`); the model
    returned is at the frames' own size (its K and keypoints scaled back). ``progress``: phases ``features`` and
    ``matching`` (pycolmap reports neither inside, so 0 then all) and ``mapping`` (frames registered, one call each;
    registrations of a discarded start or a second model count too, so it is an upper bound that can reach all
    frames before the last bundle adjustment ends).
    """
    import pycolmap
    from PIL import Image

    pycolmap.logging.minloglevel = 2  # COLMAP's INFO lines are per image and per BA iteration
    frames, K, factor = upsampled(frames, K, cfg.feature_width)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lift3d-colmap-") as tmp:
        work = Path(tmp)
        image_dir = work / "images"
        image_dir.mkdir()
        names = [f"{i:05d}.png" for i in range(len(frames))]
        for name, frame in zip(names, frames, strict=True):
            Image.fromarray(frame).save(image_dir / name, compress_level=1)
        database = work / "database.db"
        n = len(frames)
        report(progress, 0, n, "features")

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
        report(progress, n, n, "features")
        report(progress, 0, len(pairs), "matching")

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
        report(progress, len(pairs), len(pairs), "matching")

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
        registered = 0

        def registering(count: int):  # COLMAP's callbacks: the initial pair (2 frames), then each further frame
            def call():
                nonlocal registered
                registered = min(registered + count, n)  # a second model, if any, saturates
                report(progress, registered, n, "mapping")
            return call if progress is not None else None

        report(progress, 0, n, "mapping")
        models = pycolmap.incremental_mapping(database, image_dir, work / "sparse", options=options,
                                              initial_image_pair_callback=registering(2),
                                              next_image_callback=registering(1))
        seconds["mapping"] = time.perf_counter() - t0
    if not models:
        raise Lift3DError(f"COLMAP could not start a reconstruction from {len(frames)} frames ({len(pairs)} pairs "
                          "matched): too few features or too little parallax; try larger frames or another backend")
    rec = max(models.values(), key=lambda r: r.num_reg_images())
    report(progress, n, n, "mapping")
    model = _sparse_model(rec, names, len(frames))
    model.num_pairs, model.seconds = len(pairs), seconds
    if (factor != 1).any():
        model.K[0] /= factor[0]
        model.K[1] /= factor[1]
        model.observations = [(uv / factor, idx) for uv, idx in model.observations]
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
