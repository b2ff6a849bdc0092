"""The articulated camera tree of LiftImage3D, as data.

Instead of one long camera move, the method chains short clips in a tree:
level 1 runs every preset motion from the input camera; level k restarts every
preset from the last frame of every level-(k-1) clip (``child c2w =
parent_last_c2w @ preset_relative_c2w``). Clip ids are tree paths of preset
names (``"U"``, ``"U/Round-RI_90"``); frame ``t = 0`` of a child is its
parent's last frame, and of a level-1 clip the input view.

Geometry (``Clip.c2w``) is in the world of the lift: the input camera is the
identity, OpenCV axes (x right, y down, z forward), see :mod:`lift3d_core.camera`.

MotionCtrl presets. The reference (AbrahamYabo/LiftImage3D, folder
``motionctrlsvd/examples/camera_poses``, files ``test_camera_{U,D,L,R,I,O,
Round-RI_90,Round-RI_f90}.json``; all but Round-RI_f90 are identical to
TencentARC/MotionCtrl ``examples/camera_poses``) ships 16 rows of world-to-camera
``[R | t]`` (OpenCV axes) per preset. Their numbers, read there and generated
here parametrically (:meth:`Preset.json_rows`; for 16 frames they equal the
files' numbers to float rounding, max abs difference 3e-15):

* translations ``U D L R I O``: ``R = I``, ``t_i = -(0.2 + 1.4 * i / 16) * d``
  with ``d`` the camera's direction of motion (U: -y, D: +y, L: -x, R: +x,
  I: +z, O: -z). The camera moves 1.4 / 16 = 0.0875 per frame, 1.3125 by frame 15.
  The 0.2 start offset cancels once poses are made relative to frame 0.
* orbits ``Round-RI_90`` (camera moves right) / ``Round-RI_f90`` (left):
  ``R_i = Ry(+-theta_i)``, ``theta_i = 90 deg * i / 16`` (so frame 15 is at
  84.375 deg, not 90: the files sample [0, 90) deg), ``t_i = R_i (0, 0, 0.9) +
  (0, 0, 0.8)``. The point 0.8 ahead of the first camera stays on every
  frame's optical axis at distance 0.8: an orbit of radius 0.8 about a pivot
  0.8 ahead (MotionCtrl's own ``app.py`` uses ``look_at = (0, 0, 0.8)``). The
  files' world origin, 1.7 = 0.8 + 0.9 ahead of the first camera, is *not*
  the orbit centre; the 0.9 only matters for the conditioning below.

Conditioning, geometry, speed and units. The reference multiplies the JSON
translations per axis by ``(3, 1, 4) * speed`` (speed 1.6) and only then makes
them relative to frame 0 (``motionctrlsvd/main/inference/motionctrl_cmcm_run.py``,
``get_RT``); those 12 numbers per frame are all MotionCtrl-SVD ever sees
(:func:`motionctrl_conditioning`, applied by the MotionCtrl-SVD generator to the
pose-file rows each clip keeps in ``Clip.motionctrl_rows``; ``speed`` is
``generate.motionctrl_svd.speed``, so changing it re-keys generation only).
Because the scaling comes before the relativisation, the file's 0.9 origin
offset enters the orbit: the commanded orbit still keeps one point (the pivot)
on every optical axis, at ``(4 * 0.8 + (4 - 3) * 0.9) = 4.1`` (times speed)
at the start and ``3.2 + 0.9 cos theta`` later (3.29 at frame 15: a 20 %
spiral in), while U / D move 1.3125 per clip (a third of the pivot distance),
L / R three and I / O four times that. ``TrajectoryConfig.geometry`` picks
what ``Clip.c2w`` holds:

* ``"conditioning"`` (default): the camera motion MotionCtrl-SVD is commanded,
  i.e. the conditioning rows read as relative world-to-camera poses: the
  reference's actual command, and coherent with a scene near the pivot (a U
  clip moves a third of the pivot depth, the orbits keep the pivot in view).
* ``"json"``: the files' shapes (pure orbit about a pivot at the orbit radius,
  84.375 degrees; translations 1.3125 / 0.8 = 1.64 pivot depths per clip, so a
  scene at the pivot leaves the view in a U clip).

Commanded poses have no absolute scale, and ``speed`` multiplies every
conditioning translation uniformly, so the commanded *shape* does not depend
on it. The world unit of the geometry is therefore fixed by
``TrajectoryConfig.pivot_depth`` (default 1.7, METHOD.md's "point about 1.7
units ahead" and the synthetic scene's layout): the distance from an orbit
clip's first camera to its pivot. ``speed`` acts on the conditioning only
(how far MotionCtrl is asked to move relative to the scene it imagines);
custom JSON trees use the same unit, so a custom copy of a preset file gives
the preset's geometry. The generated video's real motion is measured by
calibration in any case.

Frame codes (METHOD.md section 3). Each frame gets ``(u, v)`` steps on the
trajectory grid: a clip adds ``t`` (0..T-1) steps along its preset's axis to
its parent's last frame's steps. Signs follow the reference's dataset reader
(``distort-3dgs/scene/dataset_readers.py``): ``u`` grows for L and the left
orbit (Round-RI_f90), falls for R and the right orbit; ``v`` grows for U, falls
for D. I/O share ``v`` with U/D (I as U, O as D): the reference never uses them.
Normalised as ``(step + L (T - 1)) / (2 L (T - 1))`` with ``L = levels`` (the
reference's ``(step + 2 * 15) / (4 * 15)`` for L = 2, T = 16), so the input view
is ``(0.5, 0.5)`` and every code lies in [0, 1].
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lift3d_core.camera import (
    c2w_to_motionctrl_rows,
    invert_rigid,
    motionctrl_rows_to_c2w,
    relative_c2w,
)
from lift3d_core.errors import Lift3DError

__all__ = [
    "GEOMETRIES",
    "MOTIONCTRL_AXIS_SCALE",
    "PRESETS",
    "CameraTree",
    "Clip",
    "Preset",
    "TrajectoryConfig",
    "articulated_tree",
    "load_motionctrl_json",
    "motionctrl_conditioning",
    "plot_tree",
    "preset_relative_c2w",
    "save_motionctrl_json",
    "tree_from_motionctrl",
]

# Per-axis translation weights the reference applies to MotionCtrl JSON poses before
# conditioning MotionCtrl-SVD (motionctrl_cmcm_run.py, get_RT).
MOTIONCTRL_AXIS_SCALE: tuple[float, float, float] = (3.0, 1.0, 4.0)

# What Clip.c2w holds: the commanded (conditioning) motion or the preset files' shapes.
GEOMETRIES = ("conditioning", "json")

_TREE_FORMAT = "lift3d.camera_tree/1"


# --------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """One MotionCtrl camera motion, parametrised to reproduce the reference's JSON.

    kind: "translate" or "orbit".
    direction: translate only, unit direction the camera moves, in the OpenCV axes of its first frame.
    length: translate only, distance over ``T`` frame steps (frame ``i`` at ``length * i / T``).
    start: translate only, offset of the JSON rows (cancels in relative poses).
    angle_deg: orbit only, signed angle over ``T`` steps; + = the camera moves right (+x).
    radius: orbit only, distance of the pivot ahead of the first frame = orbit radius.
    origin_offset: orbit only, how far beyond the pivot the JSON's world origin lies.
    code_axis, code_sign: frame-code axis (0 = u, 1 = v) and sign of one step.
    undo: the preset that retraces this one (skipped as a child when ``skip_undo``).
    """

    name: str
    kind: str
    code_axis: int
    code_sign: int
    undo: str
    direction: tuple[float, float, float] = (0.0, 0.0, 0.0)
    length: float = 1.4
    start: float = 0.2
    angle_deg: float = 0.0
    radius: float = 0.8
    origin_offset: float = 0.9

    def json_rows(self, num_frames: int = 16) -> np.ndarray:
        """MotionCtrl JSON rows [T, 12] float64 (world-to-camera, OpenCV), the reference's shape.

        T = 16 gives the files' numbers. Other T keep the per-clip extent (step = magnitude / T);
        the reference instead takes the middle T rows of its 16 for a shorter clip.
        """
        i = np.arange(num_frames, dtype=np.float64)
        w2c = np.zeros((num_frames, 3, 4))
        if self.kind == "translate":
            w2c[:, :, :3] = np.eye(3)
            w2c[:, :, 3] = -(self.start + self.length * i / num_frames)[:, None] * np.asarray(self.direction)
        else:
            theta = np.deg2rad(self.angle_deg) * i / num_frames
            c, s = np.cos(theta), np.sin(theta)
            w2c[:, 0, 0], w2c[:, 0, 2], w2c[:, 1, 1] = c, s, 1.0
            w2c[:, 2, 0], w2c[:, 2, 2] = -s, c
            # t = Ry(theta) (0, 0, origin_offset) + (0, 0, radius): the pivot stays at (0, 0, radius) in camera.
            w2c[:, 0, 3] = self.origin_offset * s
            w2c[:, 2, 3] = self.radius + self.origin_offset * c
        return w2c.reshape(num_frames, 12)


def _translate(name, direction, code_axis, code_sign, undo) -> Preset:
    return Preset(name, "translate", code_axis, code_sign, undo, direction=direction)


def _orbit(name, angle_deg, code_sign, undo) -> Preset:
    return Preset(name, "orbit", 0, code_sign, undo, angle_deg=angle_deg)


# Directions are camera motion in OpenCV axes (up is -y); code signs follow the reference reader.
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _translate("U", (0.0, -1.0, 0.0), 1, +1, "D"),
        _translate("D", (0.0, 1.0, 0.0), 1, -1, "U"),
        _translate("L", (-1.0, 0.0, 0.0), 0, +1, "R"),
        _translate("R", (1.0, 0.0, 0.0), 0, -1, "L"),
        _translate("I", (0.0, 0.0, 1.0), 1, +1, "O"),
        _translate("O", (0.0, 0.0, -1.0), 1, -1, "I"),
        _orbit("Round-RI_90", 90.0, -1, "Round-RI_f90"),
        _orbit("Round-RI_f90", -90.0, +1, "Round-RI_90"),
    )
}


def preset_relative_c2w(rows: np.ndarray, speed: float = 1.0) -> np.ndarray:
    """Geometric trajectory of MotionCtrl JSON rows, relative to its first frame.

    rows: [T, 12] MotionCtrl rows (world-to-camera, OpenCV). Returns c2w [T, 4, 4]
    float64 in the camera frame of frame 0 (frame 0 is exactly the identity),
    camera centres scaled by ``speed``.
    """
    c2w = motionctrl_rows_to_c2w(rows)
    rel = relative_c2w(c2w, c2w[0])
    rel[:, :3, 3] *= speed
    rel[0] = np.eye(4)
    return rel


def _commanded_pivot(speed: float, axis_scale, geometry: str) -> float:
    """Pivot distance of the reference orbit preset, in the raw units of ``geometry``."""
    orbit = PRESETS["Round-RI_90"]
    if geometry == "json":
        return orbit.radius * speed
    # Scaled rows: t = (ax * o * sin, 0, az * (r + o * cos)); the point q = (0, 0, -ax * o) maps to
    # (0, 0, az * r + (az - ax) * o * cos) in every camera, so it stays on the optical axis.
    ax, _, az = (a * speed for a in axis_scale)
    return az * orbit.radius + (az - ax) * orbit.origin_offset


def _clip_geometry(
    json_rows: np.ndarray, conditioning: np.ndarray, speed: float, axis_scale, geometry: str, pivot_depth: float
) -> np.ndarray:
    """Relative c2w [T, 4, 4] of a clip in world units (frame 0 exactly identity)."""
    if geometry == "json":
        rel = preset_relative_c2w(json_rows, speed)
    else:
        rel = motionctrl_rows_to_c2w(conditioning)
    rel[:, :3, 3] *= pivot_depth / _commanded_pivot(speed, axis_scale, geometry)
    rel[0] = np.eye(4)
    return rel


def motionctrl_conditioning(
    rows: np.ndarray, speed: float, axis_scale=MOTIONCTRL_AXIS_SCALE
) -> np.ndarray:
    """The 12 numbers per frame MotionCtrl-SVD is conditioned on, computed as the reference does.

    rows: [T, 12] MotionCtrl JSON rows (as in the files, not yet relative).
    Translations are multiplied per axis by ``axis_scale * speed``, then poses are
    made relative to frame 0 (``R_rel = R_t R_0^T``, ``t_rel = t_t - R_rel t_0``).
    Returns [T, 12] float64 (row-major 3x4; frame 0 is ``[I | 0]``).
    """
    w2c = np.zeros((len(rows), 4, 4))
    w2c[:, :3, :] = np.asarray(rows, dtype=np.float64).reshape(-1, 3, 4)
    w2c[:, 3, 3] = 1.0
    w2c[:, :3, 3] *= np.asarray(axis_scale, dtype=np.float64) * speed
    rel = w2c @ invert_rigid(w2c[0])
    return rel[:, :3, :].reshape(-1, 12)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TrajectoryConfig:
    """Parameters of the articulated camera tree (the ``trajectory`` stage).

    presets: preset names run at every level, in order (see ``PRESETS``).
    levels: tree depth; level 1 starts at the input camera.
    frames_per_clip: T, frames per clip including its first (shared) frame.
    skip_undo: do not generate a child that retraces its parent (U after D, ...).
    motionctrl_axis_scale: per-axis translation weights of the conditioning (reference: 3, 1, 4).
    geometry: "conditioning" (the motion MotionCtrl-SVD is commanded) or "json" (the
        preset files' shapes, pure orbits); see the module docstring.
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


# --------------------------------------------------------------------------- tree


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


# --------------------------------------------------------------------------- MotionCtrl files


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


# --------------------------------------------------------------------------- plot


def plot_tree(tree: CameraTree, path_png, *, arrows_per_clip: int = 2) -> None:
    """Top view (x-z) and side view (z-y, y down as OpenCV) of a camera tree, saved as PNG.

    Camera centres are dots coloured by clip; short arrows show the viewing direction
    (+z) of ``arrows_per_clip`` frames of each clip (always its last); the input camera is a star.
    Uses matplotlib's Agg canvas directly (no pyplot, no global backend change).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    centres = tree.c2w()[:, :3, 3]

    fig = Figure(figsize=(12, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax_top, ax_side = fig.subplots(1, 2)
    cmap = colormaps["tab20"]
    views = ((ax_top, 0, 2, "x (right)", "z (forward)", "top view (x-z)"),
             (ax_side, 2, 1, "z (forward)", "y (down)", "side view (z-y, y down)"))
    # Arrow length: a small fraction of each view's extent, so both views read alike.
    arrow = {id(ax): 0.07 * max(float(np.ptp(centres[:, [i, j]], axis=0).max()), 1e-3) for ax, i, j, *_ in views}

    def draw_arrow(ax, x, y, dx, dy, colour):
        a = arrow[id(ax)]
        ax.arrow(x, y, a * dx, a * dy, color=colour, width=0.0, head_width=0.25 * a, head_length=0.3 * a,
                 length_includes_head=True)

    for k, clip in enumerate(tree.clips):
        colour = cmap(k % 20)
        pos = clip.c2w[:, :3, 3]
        fwd = clip.c2w[:, :3, 2]
        pick = np.unique(np.linspace(0, clip.num_frames - 1, arrows_per_clip + 1).round().astype(int)[1:])
        for ax, i, j, *_ in views:
            ax.plot(pos[:, i], pos[:, j], "-", color=colour, lw=0.8, alpha=0.6)
            ax.scatter(pos[1:, i], pos[1:, j], s=9, color=colour, label=clip.clip_id if ax is ax_top else None)
            for f in pick:
                draw_arrow(ax, pos[f, i], pos[f, j], fwd[f, i], fwd[f, j], colour)
    for ax, i, j, xl, yl, title in views:
        ax.scatter([0.0], [0.0], marker="*", s=120, color="k", zorder=5, label="input" if ax is ax_top else None)
        draw_arrow(ax, 0.0, 0.0, float(i == 2), float(j == 2), "k")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.set_aspect("equal", adjustable="datalim")
        ax.grid(True, lw=0.3)
    ax_side.invert_yaxis()  # OpenCV y points down: up (-y) at the top of the plot
    fig.legend(loc="center right", fontsize=7, ncol=1, frameon=False)
    fig.subplots_adjust(left=0.06, right=0.82, wspace=0.25)
    fig.savefig(str(path_png), dpi=110)
