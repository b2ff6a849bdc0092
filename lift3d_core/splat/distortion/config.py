"""The distortion field's axes, plane table and :class:`DistortionFieldConfig` (the table and conventions are in
the package docstring, :mod:`lift3d_core.splat.distortion`)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import nn

from lift3d_core.errors import Lift3DError

AXES = ("x", "y", "z", "u", "v")
NUM_SPATIAL_AXES = 3
PLANE_PAIRS: tuple[tuple[int, int], ...] = tuple(itertools.combinations(range(len(AXES)), 2))
FRAME_PLANES: tuple[int, ...] = tuple(i for i, (a, b) in enumerate(PLANE_PAIRS) if b >= NUM_SPATIAL_AXES)
SPATIAL_PLANES: tuple[int, ...] = tuple(i for i in range(len(PLANE_PAIRS)) if i not in FRAME_PLANES)
INPUT_VIEW_CODE = (0.5, 0.5)


def plane_name(index: int) -> str:
    """``"xu"`` for plane 2, and so on (see the module table)."""
    a, b = PLANE_PAIRS[index]
    return AXES[a] + AXES[b]


# The MLP's nonlinearities (DistortionFieldConfig.activation): module and function of each.
ACTIVATIONS = {"relu": (nn.ReLU, F.relu), "silu": (nn.SiLU, F.silu)}


@dataclass(frozen=True)
class DistortionFieldConfig:
    """Shape of the distortion field. Defaults are LiftImage3D's (``distort-3dgs/arguments``).

    Attributes:
        bounds: ``((x0, y0, z0), (x1, y1, z1))`` world box mapped onto the spatial axes of the
            grid; positions outside are clamped to its faces. The reference uses the
            initial point cloud's min / max.
        features_per_plane: channels of every plane (reference ``output_coordinate_dim`` 16).
        spatial_resolution: base resolution of x, y, z (reference 64).
        frame_resolution: resolution of u, v (reference 64; note that the reference feeds
            codes in ``[0, 1]`` to a ``[-1, 1]`` lattice and so uses only its upper half;
            here codes cover the whole axis).
        multires: resolution multipliers, one level each, features concatenated
            (reference ``[1, 2, 4]``); they scale the spatial axes only, as in 4DGS.
        net_width, net_depth: the shared MLP (reference ``net_width`` 128, ``defor_depth`` 1).
        activation: the MLP's nonlinearity, one of ``ACTIVATIONS``: ``"relu"`` (the reference's) or ``"silu"``.
            Under Adam a ReLU field can die: when the photometric signal on the offsets is weak and the anchor
            and frame-mean penalties pull them to zero, every step moves the hidden biases by about the learning
            rate whatever the gradient's size, every unit can end inactive on every input, and the field is a
            constant for the rest of training (the likely cause of the fields with no frame-varying offsets at all
            in 1-2 of 16 GPU ablation runs). SiLU has no inactive region, so a unit that was pushed down still gets
            gradient and recovers (bench/RESULTS.md).
        deform_*: which heads exist (reference: position, scale, rotation on; opacity, SH off).
        spatial_init: uniform range of the spatial planes at initialisation (k-planes 0.1..0.5).
        frame_init: constant value of the frame planes at initialisation (1: multiplicative
            identity, so the field starts frame-independent, as 4DGS's time planes; LiftImage3D's
            copy tests ``in_dim == 4`` and so starts all its 5-D planes uniform).
        max_offset: bound of every position-offset component, world units: the head's output ``o`` becomes
            ``max_offset * tanh(o / max_offset)`` (identity near 0). None: unbounded (the reference).
        seed: seeds every random initial value.
        anchor_code: ``(u, v)`` or None. With a code, every offset is measured from that code's: the field returns
            ``F(x, c) - F(x, anchor_code)``, exactly zero at the anchor code (the input view) for any parameters, a
            hard anchor in place of a penalty. One more evaluation of every queried centre per call.
    """

    bounds: tuple[tuple[float, float, float], tuple[float, float, float]]
    features_per_plane: int = 16
    spatial_resolution: int = 64
    frame_resolution: int = 64
    multires: tuple[int, ...] = (1, 2, 4)
    net_width: int = 128
    net_depth: int = 1
    activation: str = "relu"
    deform_position: bool = True
    deform_scale: bool = True
    deform_rotation: bool = True
    deform_opacity: bool = False
    deform_sh: bool = False
    spatial_init: tuple[float, float] = (0.1, 0.5)
    frame_init: float = 1.0
    max_offset: float | None = None
    seed: int = 0
    anchor_code: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        try:
            lo, hi = (tuple(float(c) for c in corner) for corner in self.bounds)
        except (TypeError, ValueError) as exc:
            raise Lift3DError(f"DistortionFieldConfig.bounds must be ((x0,y0,z0),(x1,y1,z1)), got {self.bounds!r}") from exc
        if len(lo) != 3 or len(hi) != 3 or not all(a < b for a, b in zip(lo, hi)):
            raise Lift3DError(f"DistortionFieldConfig.bounds must be ((x0,y0,z0),(x1,y1,z1)) with x0<x1 etc., got {self.bounds!r}")
        if not all(abs(c) < float("inf") for c in lo + hi):
            raise Lift3DError(f"DistortionFieldConfig.bounds must be finite, got {self.bounds!r}")
        object.__setattr__(self, "bounds", (lo, hi))
        object.__setattr__(self, "multires", tuple(int(m) for m in self.multires))
        object.__setattr__(self, "spatial_init", tuple(float(s) for s in self.spatial_init))
        for name in ("features_per_plane", "net_width", "net_depth"):
            if int(getattr(self, name)) < 1:
                raise Lift3DError(f"DistortionFieldConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("spatial_resolution", "frame_resolution"):
            if int(getattr(self, name)) < 2:
                raise Lift3DError(f"DistortionFieldConfig.{name} must be >= 2 (a plane needs two samples per axis), got {getattr(self, name)}")
        if not self.multires or min(self.multires) < 1:
            raise Lift3DError(f"DistortionFieldConfig.multires must be non-empty positive integers, got {self.multires}")
        if not (self.deform_position or self.deform_scale or self.deform_rotation or self.deform_opacity or self.deform_sh):
            raise Lift3DError("DistortionFieldConfig: at least one deform_* head must be on")
        if self.activation not in ACTIVATIONS:
            raise Lift3DError(f"DistortionFieldConfig.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.max_offset is not None and not float(self.max_offset) > 0:
            raise Lift3DError(f"DistortionFieldConfig.max_offset must be > 0 or None, got {self.max_offset}")
        if len(self.spatial_init) != 2 or not self.spatial_init[0] <= self.spatial_init[1]:
            raise Lift3DError(f"DistortionFieldConfig.spatial_init must be (low, high) with low <= high, got {self.spatial_init}")

    def to_dict(self) -> dict:
        """JSON-able dict; ``DistortionFieldConfig.from_dict`` inverts it exactly."""
        d = asdict(self)
        d["bounds"] = [list(c) for c in self.bounds]
        d["multires"] = list(self.multires)
        d["spatial_init"] = list(self.spatial_init)
        if self.anchor_code is None:
            del d["anchor_code"]  # states written before the setting existed stay byte-identical
        else:
            d["anchor_code"] = list(self.anchor_code)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DistortionFieldConfig:
        d = dict(d)
        d.setdefault("activation", "relu")  # fields stored before the setting existed were ReLU fields
        d["bounds"] = tuple(tuple(c) for c in d["bounds"])
        d["multires"] = tuple(d["multires"])
        d["spatial_init"] = tuple(d["spatial_init"])
        if d.get("anchor_code") is not None:
            d["anchor_code"] = tuple(float(c) for c in d["anchor_code"])
        return cls(**d)

    def plane_shape(self, level: int, plane: int) -> tuple[int, int, int, int]:
        """``[1, C, R_b, R_a]`` of ``plane`` (index into ``PLANE_PAIRS``) at ``level``."""
        res = self.axis_resolutions(level)
        a, b = PLANE_PAIRS[plane]
        return (1, self.features_per_plane, res[b], res[a])

    def axis_resolutions(self, level: int) -> tuple[int, ...]:
        m = self.multires[level]
        return (self.spatial_resolution * m,) * NUM_SPATIAL_AXES + (self.frame_resolution,) * (len(AXES) - NUM_SPATIAL_AXES)

    @property
    def feature_dim(self) -> int:
        return self.features_per_plane * len(self.multires)
