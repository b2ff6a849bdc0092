"""MotionCtrl's camera presets, parametrised to reproduce the reference's pose files, and the conditioning
MotionCtrl-SVD is given (:func:`motionctrl_conditioning`); see :mod:`lift3d_core.trajectory` for the numbers
and the units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lift3d_core.camera import invert_rigid, motionctrl_rows_to_c2w, relative_c2w

# Per-axis translation weights the reference applies to MotionCtrl JSON poses before
# conditioning MotionCtrl-SVD (motionctrl_cmcm_run.py, get_RT).
MOTIONCTRL_AXIS_SCALE: tuple[float, float, float] = (3.0, 1.0, 4.0)

# What Clip.c2w holds: the commanded (conditioning) motion or the preset files' shapes.
GEOMETRIES = ("conditioning", "json")


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
