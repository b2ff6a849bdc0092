"""``lift3d render RUN``: MP4 videos of a run's canonical Gaussians (its train artifact), along the camera tree
and around the input view, written into the run folder.

The tree's commanded cameras are moved into the Gaussians' (calibrated) frame by the calibration's similarity,
so the fly-through follows the trajectory the generator was asked for, without the calibration's noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lift3d_core.calibrate.contract import Similarity
from lift3d_core.flythrough import (
    iter_renders,
    orbit_path,
    pivot_depth,
    resample_path,
    scale_intrinsics,
    tree_walk,
    video_size,
    write_mp4,
)
from lift3d_core.train import gaussians_from_arrays, resolve_backend
from lift3d_core.trajectory import CameraTree
from tasks.progress import stage_progress
from tasks.report import VIDEOS, load_summary, run_artifacts

CPU_MAX_WIDTH = 320  # the torch rasterizer: ~0.1-0.5 s a frame at this size with ~50k Gaussians on 2 cores


@dataclass(frozen=True)
class Video:
    path: Path
    frames: int
    width: int
    height: int


def render_run(run_dir: Path, *, fly_frames: int | None = None, orbit_frames: int = 96, fps: float = 24.0,
               max_width: int | None = None, orbit_degrees: float = 12.0, backend: str = "auto") -> list[Video]:
    """Write ``flythrough.mp4`` (the tree walked depth first from the input view and back, ``fly_frames``
    frames, default one per step between the tree's cameras) and ``orbit.mp4`` (``orbit_frames`` around the
    input view) into ``run_dir``. ``max_width``: default the frames' own size on a GPU, at most
    ``CPU_MAX_WIDTH`` on the CPU."""
    summary = load_summary(run_dir)
    store, keys = run_artifacts(summary)
    tree = CameraTree.from_dict(store.read("trajectory", keys["trajectory"]).attrs["tree"])
    train = store.read("train", keys["train"])
    gaussians = gaussians_from_arrays({n: train.array(n) for n in train.names if n.startswith("gaussians/")})
    cal = store.read("calibrate", keys["calibrate"])
    to_calibrated = Similarity.from_arrays({n: cal.array(n) for n in cal.names if n.startswith("to_commanded/")})
    to_calibrated = to_calibrated.inverse()
    K0 = cal.array("K")[0]
    h, w = cal.zarr_array("depth").shape[1:]

    name, device = resolve_backend(backend)
    if max_width is None and device == "cpu":
        max_width = CPU_MAX_WIDTH
    width, height = video_size(w, h, max_width)
    K = scale_intrinsics(K0, w, h, width, height)

    walk = tree_walk(tree)
    fly = to_calibrated.apply_c2w(resample_path(walk, fly_frames or len(walk)))
    start = to_calibrated.apply_c2w(np.eye(4))  # the input view, in the Gaussians' frame
    # the point the tree's orbits turn about (trajectory.pivot_depth, commanded units) is where the generated views
    # agree best; a tree without one turns about the middle of what the input view sees
    pivot = store.read("trajectory", keys["trajectory"]).key_doc["params"].get("pivot_depth")
    depth = pivot / to_calibrated.inverse().scale if pivot else pivot_depth(gaussians.means.numpy(), start)
    orbit = orbit_path(start, depth, orbit_frames, orbit_degrees)

    videos = []
    for label, path_c2w in (("fly-through video", fly), ("orbit video", orbit)):
        path = Path(run_dir) / VIDEOS[label]
        with stage_progress(label.split()[0], len(path_c2w)) as advance:
            count = write_mp4(iter_renders(gaussians, path_c2w, K, width, height, name), path, width, height, fps,
                              progress=advance)
        videos.append(Video(path, count, width, height))
    return videos
