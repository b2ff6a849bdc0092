"""MotionCtrl camera-pose JSON files: reading and writing them, and a custom camera tree built from them
(:func:`tree_from_motionctrl`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from lift3d_core.errors import Lift3DError
from lift3d_core.trajectory.presets import (
    GEOMETRIES,
    MOTIONCTRL_AXIS_SCALE,
    PRESETS,
    _clip_geometry,
    motionctrl_conditioning,
)
from lift3d_core.trajectory.tree import CameraTree, Clip, _normalise_codes


def load_motionctrl_json(path) -> np.ndarray:
    """Read a MotionCtrl camera-pose JSON (a list of rows of 12 numbers). Returns [N, 12] float64."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise Lift3DError(f"cannot read MotionCtrl pose file {path}: {e}") from e
    rows = np.asarray(data, dtype=np.float64)
    if rows.ndim == 3 and rows.shape[1:] == (3, 4):
        rows = rows.reshape(-1, 12)
    if rows.ndim != 2 or rows.shape[1] != 12 or len(rows) < 2:
        raise Lift3DError(
            f"{path}: expected a JSON list of >= 2 rows of 12 numbers (row-major 3x4 world-to-camera), "
            f"got shape {rows.shape}"
        )
    return rows


def save_motionctrl_json(rows: np.ndarray, path) -> None:
    """Write rows [N, 12] as a MotionCtrl camera-pose JSON (exact floats, the reference's layout)."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 12)
    Path(path).write_text(json.dumps(rows.tolist(), indent=4))


def _code_of_rows(rel_c2w: np.ndarray) -> tuple[int, int]:
    """Frame-code (axis, sign) of a custom clip, from where its last frame went.

    rel_c2w: [T, 4, 4] relative to frame 0. Horizontal (u) when the camera turns about
    its y axis by more than 1 degree or its sideways travel dominates; else vertical (v)
    for up/down or forward/backward travel. Signs as the presets: left, up and forward are +1.
    """
    dx, dy, dz = rel_c2w[-1, :3, 3]
    fwd = rel_c2w[-1, :3, 2]
    yaw = np.arctan2(fwd[0], fwd[2])  # > 0: turned right
    if abs(yaw) > np.deg2rad(1.0) or (abs(dx) >= abs(dy) and abs(dx) >= abs(dz)):
        rightward = dx if abs(dx) > 1e-12 else yaw
        return 0, (-1 if rightward > 0 else 1)
    if abs(dy) >= abs(dz):
        return 1, (1 if dy < 0 else -1)
    return 1, (1 if dz > 0 else -1)


def tree_from_motionctrl(
    files: Mapping[str, object],
    parents: Mapping[str, str | None] | None = None,
    *,
    axis_scale=MOTIONCTRL_AXIS_SCALE,
    geometry: str = "conditioning",
    pivot_depth: float = 1.7,
) -> CameraTree:
    """Build a custom tree from user MotionCtrl pose JSON files.

    files: clip_id -> path of a MotionCtrl JSON, or rows [T, 12] (array or nested list). Clip ids are
        tree paths ("U", "U/my_move"): the parent defaults to the path minus its last part
        (a single-part id starts at the input camera), the preset name to the last part.
    parents: optional explicit clip_id -> parent id (None = from the input camera).
    axis_scale, geometry, pivot_depth: as :class:`TrajectoryConfig` (geometry in the presets' world unit;
        the clips keep the files' rows, which the generator preprocesses).
    Frame-code axes come from ``PRESETS`` when the preset name is a known one, else from
    the clip's motion (:func:`_code_of_rows`). Codes are normalised with L = deepest level
    and T = the longest clip. Clips are ordered parents first, then as given.
    """
    if geometry not in GEOMETRIES:
        raise Lift3DError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
    parents = dict(parents or {})
    rows = {cid: (load_motionctrl_json(f) if isinstance(f, (str, Path)) else np.asarray(f, dtype=np.float64))
            for cid, f in files.items()}
    for cid, r in rows.items():
        if r.ndim != 2 or r.shape[1] != 12 or len(r) < 2:
            raise Lift3DError(f"clip {cid!r}: MotionCtrl rows must be [T >= 2, 12], got {r.shape}")
    parent_of = {cid: parents.get(cid, cid.rsplit("/", 1)[0] if "/" in cid else None) for cid in rows}
    for cid, pid in parent_of.items():
        if pid is not None and pid not in rows:
            raise Lift3DError(f"clip {cid!r}: parent {pid!r} is not among the given clips {list(rows)}")

    order: list[str] = []
    level: dict[str, int] = {}

    def visit(cid: str, stack: tuple[str, ...] = ()) -> None:
        if cid in level:
            return
        if cid in stack:
            raise Lift3DError(f"clip parents form a cycle: {' -> '.join((*stack, cid))}")
        pid = parent_of[cid]
        if pid is not None:
            visit(pid, (*stack, cid))
        level[cid] = 1 if pid is None else level[pid] + 1
        order.append(cid)

    for cid in rows:
        visit(cid)

    levels = max(level.values())
    t_max = max(len(r) for r in rows.values())
    c2w: dict[str, np.ndarray] = {}
    steps: dict[str, np.ndarray] = {}
    clips_raw = []
    for cid in order:
        pid = parent_of[cid]
        name = cid.rsplit("/", 1)[-1]
        cond = motionctrl_conditioning(rows[cid], 1.0, axis_scale)
        rel = _clip_geometry(rows[cid], cond, 1.0, axis_scale, geometry, pivot_depth)
        start = np.eye(4) if pid is None else c2w[pid][-1]
        start_steps = np.zeros(2) if pid is None else steps[pid][-1]
        c = start @ rel
        c[0] = start
        axis, sign = (PRESETS[name].code_axis, PRESETS[name].code_sign) if name in PRESETS else _code_of_rows(rel)
        s = np.tile(start_steps, (len(c), 1))
        s[:, axis] += sign * np.arange(len(c))
        c2w[cid], steps[cid] = c, s
        clips_raw.append((cid, pid, name, level[cid], c, s, rows[cid]))
    return CameraTree(
        tuple(Clip(cid, pid, name, lv, c, _normalise_codes(s, levels, t_max), cond)
              for cid, pid, name, lv, c, s, cond in clips_raw),
        tuple(axis_scale),
    )
