"""MotionCtrl camera poses: the preprocessing MotionCtrl-SVD is conditioned on, and pose files.

A clip's pose rows (:attr:`Clip.motionctrl_rows`) are MotionCtrl's pose-file rows: ``[T, 12]``,
a row-major world-to-camera ``[R | t]`` per frame (OpenCV axes), as in the 16x12 JSON files
MotionCtrl ships. The generator sees them preprocessed as the reference does (``get_RT`` of
``motionctrl_cmcm_run.py``): translations times ``axis_scale * speed`` (``(3, 1, 4) * 1.6``), then
relative to frame 0 (``R_rel = R_t R_0^T``, ``t_rel = t_t - R_rel t_0``). That step belongs to this
backend, so ``generate.motionctrl_svd.speed`` re-keys MotionCtrl generation only; the trajectory
stage keeps the commanded cameras (``Clip.c2w``, OpenCV c2w) and the raw rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from lift3d_core.errors import Lift3DError
from lift3d_core.trajectory import (
    CameraTree,
    load_motionctrl_json,
    motionctrl_conditioning,
    save_motionctrl_json,
    tree_from_motionctrl,
)

__all__ = ["clip_conditioning", "export_pose_files", "import_pose_files", "tree_conditioning"]


def clip_conditioning(tree: CameraTree, clip_id: str, speed: float) -> np.ndarray:
    """The 12 numbers per frame MotionCtrl-SVD is conditioned on for a clip: ``[T, 12]`` float64 (frame 0 is
    ``[I | 0]``).

    A clip with pose-file rows (a preset's or a user's JSON) gets MotionCtrl's preprocessing: translations x
    the tree's ``motionctrl_axis_scale`` (the weights its cameras were shaped with) x ``speed``, then relative to
    frame 0. A clip built from camera geometry alone already is in the
    conditioning's units (the commanded cameras are what the model is asked for), so it is only made relative.
    """
    rows = np.asarray(tree.motionctrl_rows(clip_id), dtype=np.float64)
    if tree.clip(clip_id).motionctrl_rows is None:
        return motionctrl_conditioning(rows, 1.0, (1.0, 1.0, 1.0))
    return motionctrl_conditioning(rows, speed, tree.motionctrl_axis_scale)


def tree_conditioning(tree: CameraTree, speed: float) -> dict[str, np.ndarray]:
    """clip_id -> ``[T, 12]`` conditioning of every clip of ``tree``."""
    return {c.clip_id: clip_conditioning(tree, c.clip_id, speed) for c in tree.clips}


def _file_stem(clip_id: str) -> str:
    return "test_camera_" + re.sub(r"[^A-Za-z0-9_.-]", "+", clip_id)


def export_pose_files(tree: CameraTree, directory) -> dict[str, Path]:
    """Write every clip's pose rows as a MotionCtrl JSON (``test_camera_<clip id, '/' as '+'>.json``).

    The files are what MotionCtrl's own scripts read (``--pose_dir``); ``clips.json`` beside them keeps the
    tree's clip order, so :func:`import_pose_files` turns the folder back into the same tree.
    Returns clip_id -> path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for clip in tree.clips:
        path = directory / f"{_file_stem(clip.clip_id)}.json"
        save_motionctrl_json(tree.motionctrl_rows(clip.clip_id), path)
        out[clip.clip_id] = path
    (directory / "clips.json").write_text(json.dumps(list(out)))
    return out


def import_pose_files(files, **tree_kwargs) -> CameraTree:
    """A camera tree from MotionCtrl pose JSON files: ``files`` maps clip_id (a tree path) -> path or rows.

    A single directory written by :func:`export_pose_files` is accepted too. ``tree_kwargs`` as
    :func:`lift3d_core.trajectory.tree_from_motionctrl`.
    """
    if isinstance(files, (str, Path)):
        directory = Path(files)
        paths = sorted(directory.glob("test_camera_*.json"))
        if not paths:
            raise Lift3DError(f"{directory}: no test_camera_*.json pose files")
        files = {p.stem.removeprefix("test_camera_").replace("+", "/"): p for p in paths}
        order_file = directory / "clips.json"
        if order_file.is_file():
            order = json.loads(order_file.read_text())
            files = {cid: files[cid] for cid in order if cid in files} | files
    rows = {cid: (load_motionctrl_json(f) if isinstance(f, (str, Path)) else f) for cid, f in files.items()}
    return tree_from_motionctrl(rows, **tree_kwargs)
