"""The articulated camera tree: its config (:class:`TrajectoryConfig`), clips, the tree and its distinct frames
(:class:`CameraTree`), and the tree of the presets (:func:`articulated_tree`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from lift3d_core.camera import c2w_to_motionctrl_rows, relative_c2w
from lift3d_core.errors import Lift3DError
from lift3d_core.trajectory.presets import (
    GEOMETRIES,
    MOTIONCTRL_AXIS_SCALE,
    PRESETS,
    _clip_geometry,
    motionctrl_conditioning,
)

_TREE_FORMAT = "lift3d.camera_tree/1"


@dataclass(frozen=True)
class TrajectoryConfig:
    """Parameters of the articulated camera tree (the ``trajectory`` stage).

    presets: preset names run at every level, in order (see ``PRESETS``).
    levels: tree depth; level 1 starts at the input camera.
    frames_per_clip: T, frames per clip including its first (shared) frame.
    skip_undo: do not generate a child that retraces its parent (U after D, ...).
    motionctrl_axis_scale: per-axis translation weights of the conditioning (reference: 3, 1, 4).
    geometry: "conditioning" (the motion MotionCtrl-SVD is commanded) or "json" (the
        preset files' shapes, pure orbits); see :mod:`lift3d_core.trajectory`.
    pivot_depth: world units from an orbit clip's first camera to the point it turns
        about; sets the scale of ``Clip.c2w`` (commanded poses have none).
    """

    presets: tuple[str, ...] = ("U", "D", "Round-RI_90", "Round-RI_f90")
    levels: int = 2
    frames_per_clip: int = 16
    skip_undo: bool = True
    motionctrl_axis_scale: tuple[float, float, float] = MOTIONCTRL_AXIS_SCALE
    geometry: str = "conditioning"
    pivot_depth: float = 1.7

    def __post_init__(self):
        presets = (self.presets,) if isinstance(self.presets, str) else tuple(self.presets)
        object.__setattr__(self, "presets", presets)
        object.__setattr__(self, "motionctrl_axis_scale", tuple(float(a) for a in self.motionctrl_axis_scale))
        valid = ", ".join(PRESETS)
        if not presets:
            raise Lift3DError(f"trajectory.presets is empty; choose from: {valid}")
        unknown = [p for p in presets if p not in PRESETS]
        if unknown:
            raise Lift3DError(f"trajectory.presets: unknown preset(s) {unknown}; valid presets: {valid}")
        if len(set(presets)) != len(presets):
            raise Lift3DError(f"trajectory.presets lists a preset twice: {list(presets)}")
        if int(self.levels) != self.levels or self.levels < 1:
            raise Lift3DError(f"trajectory.levels must be an integer >= 1, got {self.levels}")
        if int(self.frames_per_clip) != self.frames_per_clip or self.frames_per_clip < 2:
            raise Lift3DError(f"trajectory.frames_per_clip must be an integer >= 2, got {self.frames_per_clip}")
        if len(self.motionctrl_axis_scale) != 3 or not all(a > 0 for a in self.motionctrl_axis_scale):
            raise Lift3DError("trajectory.motionctrl_axis_scale must be 3 positive numbers (x, y, z)")
        if self.geometry not in GEOMETRIES:
            raise Lift3DError(f"trajectory.geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if not self.pivot_depth > 0:
            raise Lift3DError(f"trajectory.pivot_depth must be > 0, got {self.pivot_depth}")


def _frozen_array(a, shape_tail: tuple[int, ...], name: str) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    if a.ndim != 1 + len(shape_tail) or a.shape[1:] != shape_tail:
        raise Lift3DError(f"{name} must have shape [T, {', '.join(map(str, shape_tail))}], got {a.shape}")
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Clip:
    """One generated clip of the tree.

    clip_id: tree path of preset names ("U", "U/Round-RI_90"); parent: the parent's id or None (level 1).
    preset: name of the motion (a ``PRESETS`` key, or a custom name).
    c2w: [T, 4, 4] float64, OpenCV, in the world of the input camera (identity).
    frame_code: [T, 2] float64 normalised (u, v) frame codes in [0, 1].
    motionctrl_rows: [T, 12] float64 MotionCtrl pose-file rows (world-to-camera, OpenCV, as in the
        preset JSON; not preprocessed: the generator applies speed and per-axis weights), or None
        (then derived from ``c2w``).
    Arrays are stored as read-only float64 copies.
    """

    clip_id: str
    parent: str | None
    preset: str
    level: int
    c2w: np.ndarray
    frame_code: np.ndarray
    motionctrl_rows: np.ndarray | None = None

    def __post_init__(self):
        c2w = _frozen_array(self.c2w, (4, 4), f"clip {self.clip_id!r} c2w")
        code = _frozen_array(self.frame_code, (2,), f"clip {self.clip_id!r} frame_code")
        if len(code) != len(c2w):
            raise Lift3DError(f"clip {self.clip_id!r}: {len(c2w)} poses but {len(code)} frame codes")
        object.__setattr__(self, "c2w", c2w)
        object.__setattr__(self, "frame_code", code)
        if self.motionctrl_rows is not None:
            rows = _frozen_array(self.motionctrl_rows, (12,), f"clip {self.clip_id!r} motionctrl_rows")
            if len(rows) != len(c2w):
                raise Lift3DError(f"clip {self.clip_id!r}: {len(c2w)} poses but {len(rows)} MotionCtrl rows")
            object.__setattr__(self, "motionctrl_rows", rows)

    @property
    def num_frames(self) -> int:
        return len(self.c2w)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Clip):
            return NotImplemented
        same_rows = (self.motionctrl_rows is None and other.motionctrl_rows is None) or (
            self.motionctrl_rows is not None
            and other.motionctrl_rows is not None
            and np.array_equal(self.motionctrl_rows, other.motionctrl_rows)
        )
        return (
            (self.clip_id, self.parent, self.preset, self.level)
            == (other.clip_id, other.parent, other.preset, other.level)
            and np.array_equal(self.c2w, other.c2w)
            and np.array_equal(self.frame_code, other.frame_code)
            and same_rows
        )

    __hash__ = None

    def to_dict(self) -> dict:
        return {
            "clip_id": self.clip_id,
            "parent": self.parent,
            "preset": self.preset,
            "level": int(self.level),
            "c2w": self.c2w.tolist(),
            "frame_code": self.frame_code.tolist(),
            "motionctrl_rows": None if self.motionctrl_rows is None else self.motionctrl_rows.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Clip:
        return cls(
            clip_id=d["clip_id"],
            parent=d["parent"],
            preset=d["preset"],
            level=int(d["level"]),
            c2w=d["c2w"],
            frame_code=d["frame_code"],
            motionctrl_rows=d.get("motionctrl_rows"),
        )


@dataclass(frozen=True, eq=False)
class CameraTree:
    """All clips of a trajectory tree; parents come before their children.

    Frames are identified by ``(clip_id, t)``. Frame 0 of a clip is the same
    camera as its parent's last frame (or, at level 1, the input camera): such
    frames share one *distinct* frame (:meth:`distinct_frame_index`).
    """

    clips: tuple[Clip, ...]
    # per-axis weights of MotionCtrl's pose preprocessing that shaped these clips' cameras; the generator conditions
    # with the same ones (one setting: trajectory.motionctrl_axis_scale)
    motionctrl_axis_scale: tuple[float, float, float] = MOTIONCTRL_AXIS_SCALE
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        clips = tuple(self.clips)
        object.__setattr__(self, "clips", clips)
        object.__setattr__(self, "motionctrl_axis_scale", tuple(float(a) for a in self.motionctrl_axis_scale))
        if not clips:
            raise Lift3DError("a camera tree needs at least one clip")
        index: dict[str, int] = {}
        for clip in clips:
            if clip.clip_id in index:
                raise Lift3DError(f"camera tree: clip id {clip.clip_id!r} appears twice")
            if clip.parent is None:
                start = np.eye(4)
            elif clip.parent not in index:
                raise Lift3DError(f"camera tree: parent {clip.parent!r} of {clip.clip_id!r} must come before it")
            else:
                start = clips[index[clip.parent]].c2w[-1]
            if not np.allclose(clip.c2w[0], start, atol=1e-9):
                raise Lift3DError(
                    f"camera tree: frame 0 of {clip.clip_id!r} must equal "
                    + ("the input camera (identity)" if clip.parent is None else f"the last frame of {clip.parent!r}")
                )
            index[clip.clip_id] = len(index)
        object.__setattr__(self, "_index", index)

    # ---- access
    def __len__(self) -> int:
        return len(self.clips)

    def __iter__(self):
        return iter(self.clips)

    def clip(self, clip_id: str) -> Clip:
        if clip_id not in self._index:
            raise Lift3DError(f"no clip {clip_id!r} in the camera tree; clips: {list(self._index)}")
        return self.clips[self._index[clip_id]]

    def clip_ids(self) -> list[str]:
        return [c.clip_id for c in self.clips]

    def children(self, clip_id: str | None) -> list[Clip]:
        """Clips whose parent is ``clip_id`` (None: the level-1 clips)."""
        return [c for c in self.clips if c.parent == clip_id]

    def frame_ids(self) -> list[tuple[str, int]]:
        """Every frame of every clip as (clip_id, t), clip order then t."""
        return [(c.clip_id, t) for c in self.clips for t in range(c.num_frames)]

    def c2w(self) -> np.ndarray:
        """[F, 4, 4] float64 OpenCV c2w of every frame, in :meth:`frame_ids` order."""
        return np.concatenate([c.c2w for c in self.clips], axis=0)

    def frame_codes(self) -> np.ndarray:
        """[F, 2] float64 normalised frame codes, in :meth:`frame_ids` order."""
        return np.concatenate([c.frame_code for c in self.clips], axis=0)

    # ---- distinct frames
    def distinct_frame_index(self) -> np.ndarray:
        """[F] int64: for each (clip, t) of :meth:`frame_ids`, the index of its distinct frame.

        Distinct frame 0 is the input view (t = 0 of every level-1 clip); then each
        clip's frames t >= 1 in clip order. A child's t = 0 maps to its parent's last frame.
        """
        first: dict[str, int] = {}  # clip id -> distinct index of its frame 1
        out = []
        n = 1
        for c in self.clips:
            if c.parent is None:
                out.append(0)
            else:
                p = self.clip(c.parent)
                out.append(first[p.clip_id] + p.num_frames - 2)
            first[c.clip_id] = n
            out.extend(range(n, n + c.num_frames - 1))
            n += c.num_frames - 1
        return np.asarray(out, dtype=np.int64)

    @property
    def num_distinct_frames(self) -> int:
        return 1 + sum(c.num_frames - 1 for c in self.clips)

    def distinct_frame_ids(self) -> list[tuple[str, int]]:
        """(clip_id, t) naming each distinct frame: its first occurrence in :meth:`frame_ids` order."""
        ids = self.frame_ids()
        out: list[tuple[str, int] | None] = [None] * self.num_distinct_frames
        for fid, d in zip(ids, self.distinct_frame_index()):
            if out[d] is None:
                out[d] = fid
        return out  # type: ignore[return-value]

    def distinct_c2w(self) -> np.ndarray:
        """[D, 4, 4] c2w of the distinct frames."""
        return self.c2w()[self._first_occurrence()]

    def distinct_frame_codes(self) -> np.ndarray:
        """[D, 2] frame codes of the distinct frames."""
        return self.frame_codes()[self._first_occurrence()]

    def _first_occurrence(self) -> np.ndarray:
        idx = self.distinct_frame_index()
        first = np.full(self.num_distinct_frames, -1, dtype=np.int64)
        for f in range(len(idx) - 1, -1, -1):
            first[idx[f]] = f
        return first

    # ---- MotionCtrl
    def motionctrl_rows(self, clip_id: str) -> np.ndarray:
        """[T, 12] MotionCtrl pose-file rows of this clip (world-to-camera, OpenCV).

        The clip's stored rows (the preset's or user's JSON), or, for a clip built without
        them, its geometry relative to frame 0 as world-to-camera rows, in world units.
        The generator preprocesses them (``lift3d_core.generate.motionctrl_svd.pose``).
        """
        clip = self.clip(clip_id)
        if clip.motionctrl_rows is not None:
            return np.array(clip.motionctrl_rows)
        return c2w_to_motionctrl_rows(relative_c2w(clip.c2w, clip.c2w[0]))

    # ---- serialisation
    def to_dict(self) -> dict:
        """JSON-able dict (floats written by ``json`` as shortest repr: exact round trip)."""
        return {"format": _TREE_FORMAT, "clips": [c.to_dict() for c in self.clips],
                "motionctrl_axis_scale": list(self.motionctrl_axis_scale)}

    @classmethod
    def from_dict(cls, d: Mapping) -> CameraTree:
        if d.get("format") != _TREE_FORMAT:
            raise Lift3DError(f"not a lift3d camera tree (format {d.get('format')!r}, expected {_TREE_FORMAT!r})")
        return cls(tuple(Clip.from_dict(c) for c in d["clips"]),
                   tuple(d.get("motionctrl_axis_scale", MOTIONCTRL_AXIS_SCALE)))

    def __eq__(self, other) -> bool:
        if not isinstance(other, CameraTree):
            return NotImplemented
        return (len(self.clips) == len(other.clips) and all(a == b for a, b in zip(self.clips, other.clips))
                and self.motionctrl_axis_scale == other.motionctrl_axis_scale)

    __hash__ = None


def _normalise_codes(steps: np.ndarray, levels: int, num_frames: int) -> np.ndarray:
    # levels * (T - 1) is the farthest a frame can get from the input along one axis.
    half = levels * (num_frames - 1)
    return (steps + half) / (2.0 * half)


def articulated_tree(cfg: TrajectoryConfig) -> CameraTree:
    """The articulated camera tree of ``cfg``.

    Level 1: every preset from the input camera (identity). Level k: every preset
    from the last frame of every level-(k-1) clip, skipping a preset that undoes
    the parent's when ``cfg.skip_undo``. Clips are ordered level by level, then by
    parent, then by ``cfg.presets`` order. Default: 4 + 12 = 16 clips, 241 distinct frames.
    """
    T = cfg.frames_per_clip
    rows = {p: PRESETS[p].json_rows(T) for p in cfg.presets}
    # The commanded shape does not depend on speed (it scales every translation alike): built at speed 1.
    rel = {
        p: _clip_geometry(rows[p], motionctrl_conditioning(rows[p], 1.0, cfg.motionctrl_axis_scale), 1.0,
                          cfg.motionctrl_axis_scale, cfg.geometry, cfg.pivot_depth)
        for p in cfg.presets
    }
    t = np.arange(T, dtype=np.float64)

    # (clip_id, parent_id, preset, level, c2w, code steps)
    built: list[tuple[str, str | None, str, int, np.ndarray, np.ndarray]] = []
    frontier: list[tuple[str | None, str | None, np.ndarray, np.ndarray]] = [(None, None, np.eye(4), np.zeros(2))]
    for level in range(1, cfg.levels + 1):
        next_frontier = []
        for parent_id, parent_preset, start_c2w, start_steps in frontier:
            for name in cfg.presets:
                preset = PRESETS[name]
                if cfg.skip_undo and parent_preset is not None and PRESETS[parent_preset].undo == name:
                    continue
                clip_id = name if parent_id is None else f"{parent_id}/{name}"
                c2w = start_c2w @ rel[name]
                c2w[0] = start_c2w  # bit-exact shared frame
                steps = np.tile(start_steps, (T, 1))
                steps[:, preset.code_axis] += preset.code_sign * t
                built.append((clip_id, parent_id, name, level, c2w, steps))
                next_frontier.append((clip_id, name, c2w[-1], steps[-1]))
        frontier = next_frontier

    clips = tuple(
        Clip(cid, pid, name, level, c2w, _normalise_codes(steps, cfg.levels, T), rows[name])
        for cid, pid, name, level, c2w, steps in built
    )
    return CameraTree(clips, cfg.motionctrl_axis_scale)
