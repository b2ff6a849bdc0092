"""``lift3d view RUN``: a finished run as a :class:`~lift3d_core.viewer.ViewerScene`, read from its
``summary.json`` and the artifacts its keys name: the train artifact's canonical Gaussians and distortion field,
the calibrate artifact's cameras, the generate artifact's frames (decoded one at a time, when the page asks).

Not a Prefect task: it runs on a finished run, on any machine that reaches the run's store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lift3d_core.errors import Lift3DError
from lift3d_core.store import ArtifactStore
from lift3d_core.train import field_state_from_artifact, gaussians_from_arrays
from lift3d_core.trajectory import CameraTree
from lift3d_core.viewer import FrameCamera, ViewerScene
from tasks.report import load_summary

NEEDED = ("trajectory", "generate", "calibrate", "train")


def load_run_scene(run_dir: Path) -> ViewerScene:
    """The run in ``run_dir``: cameras are the tree's distinct frames, in its order (camera 0 the input view)."""
    summary = load_summary(run_dir)
    store = ArtifactStore(summary["store"])
    keys = {name: summary["stages"][name]["key"] for name in NEEDED if name in summary["stages"]}
    missing = [name for name in NEEDED if name not in keys or not store.exists(name, keys[name])]
    if missing:
        raise Lift3DError(f"run {summary['run']}: the {', '.join(missing)} artifact(s) are not in {store.url} "
                          f"(removed, or the store moved); `lift3d view {Path(run_dir) / 'scene.ply'}` shows the "
                          "Gaussians alone")
    tree = CameraTree.from_dict(store.read("trajectory", keys["trajectory"]).attrs["tree"])
    train = store.read("train", keys["train"])
    arrays = {n: train.array(n) for n in train.names if n.startswith(("gaussians/", "field/"))}
    cal = store.read("calibrate", keys["calibrate"])
    c2w, K, registered = cal.array("c2w"), cal.array("K"), cal.array("registered").astype(bool)
    height, width = cal.zarr_array("depth").shape[1:]
    frames = store.read("generate", keys["generate"]).zarr_array("frames")  # [clips, T, H, W, 3], read per frame
    clip_index = {clip.clip_id: i for i, clip in enumerate(tree.clips)}
    ids = tree.distinct_frame_ids()
    codes = tree.distinct_frame_codes()

    def frame_image(i: int) -> np.ndarray:
        clip_id, t = ids[i]
        return np.asarray(frames[clip_index[clip_id], t])

    cameras = [FrameCamera(label=f"{clip_id} t={t}", c2w=c2w[i].astype(np.float64), K=K[i].astype(np.float64),
                           width=int(width), height=int(height), code=(float(codes[i][0]), float(codes[i][1])),
                           registered=bool(registered[i]))
               for i, (clip_id, t) in enumerate(ids)]
    return ViewerScene(title=f"run {summary['run']}", gaussians=gaussians_from_arrays(arrays), cameras=cameras,
                       frame_image=frame_image, field_state=field_state_from_artifact(arrays, train.attrs))
