"""The per-frame distortion field of distortion-aware 3DGS (LiftImage3D, METHOD.md section 3).

Generated video frames are not 3D-consistent. Each training frame is rendered
from *canonical* Gaussians moved by a small, frame-dependent offset
``field(means, frame_code)``; the frame's inconsistency lands in the field and
the exported canonical Gaussians stay sharp.

The field is a k-planes / HexPlane grid over the 5-D input ``(x, y, z, u, v)``:
``(x, y, z)`` a Gaussian's canonical centre, ``(u, v)`` the frame code in
``[0, 1]^2`` (the frame's position on the articulated camera tree, *not* time;
the input view is ``(0.5, 0.5)``). One 2-D plane per pair of axes, 10 planes:

====  =====  ==============================
idx   pair   kind
====  =====  ==============================
0     x-y    spatial
1     x-z    spatial
2     x-u    frame
3     x-v    frame
4     y-z    spatial
5     y-u    frame
6     y-v    frame
7     z-u    frame
8     z-v    frame
9     u-v    frame (both axes frame axes)
====  =====  ==============================

(4DGS's HexPlane is the same construction over ``(x, y, z, t)``: 6 planes.) A
point's feature at one resolution level is the *product* of its bilinear
samples on the 10 planes (``features_per_plane`` channels each); the levels'
features are concatenated. Spatial planes start uniform in ``[0.1, 0.5]``,
frame planes start at 1, so at initialisation the features do not depend on
the frame code (4DGS's multiplicative identity). An MLP (``net_depth`` linear
layers of ``net_width``) and one two-layer head per deformed attribute decode
the features into offsets, added to the *pre-activation* parameters as 4DGS
does: ``means + d_means``, ``log_scales + d_log_scales``, ``quats + d_quats``
(then normalised by the rasterizer), ``opacity_logits + d_opacity``,
``sh0 + d_sh0``. The heads' last layers start at zero, so training starts from
the canonical scene exactly.

Reference notes (read in ``AbrahamYabo/LiftImage3D`` ``distort-3dgs/scene/{hexplane,regulation,gaussian_model}.py``
and ``hustvl/4DGaussians``): the regularisers there pick planes by hard-coded 4-D indices (spatial [0, 1, 3],
time [2, 4, 5]), which on 10 planes select xy, xz, xv and xu, yz, yu; here planes are chosen by their axes.
Their "plane TV" term is a second difference over the spatial planes; here ``field_penalties.plane_tv`` is k-planes' first
difference over every plane and ``field_penalties.frame_smoothness`` the second difference along u and v.

Plane tensor layout: the plane of pair ``(a, b)`` is ``[1, C, R_b, R_a]``, axis
``a`` along the width (grid_sample's x) and ``b`` along the height (its y).
Coordinates: positions are mapped by the bounds to ``[-1, 1]`` (outside the
bounds clamped to the border), frame codes by ``2 c - 1``; samples sit on an
``align_corners=True`` lattice, so index ``i`` of an axis of resolution ``R``
is at ``-1 + 2 i / (R - 1)``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lift3d_core.errors import Lift3DError
from lift3d_core.splat import field_triton
from lift3d_core.splat.gaussians import Gaussians

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


class Offsets(NamedTuple):
    """Per-Gaussian offsets of the pre-activation parameters; ``None`` where the head is off.

    ``d_means [N, 3]``, ``d_log_scales [N, 3]``, ``d_quats [N, 4]`` (w, x, y, z),
    ``d_opacity [N]`` (logit), ``d_sh0 [N, 1, 3]``.
    """

    d_means: torch.Tensor | None
    d_log_scales: torch.Tensor | None
    d_quats: torch.Tensor | None
    d_opacity: torch.Tensor | None
    d_sh0: torch.Tensor | None


def apply_offsets(gaussians: Gaussians, off: Offsets) -> Gaussians:
    """``gaussians`` moved by ``off`` (pre-activation sums, as 4DGS); ``None`` offsets leave a tensor as is."""
    return Gaussians(
        means=gaussians.means if off.d_means is None else gaussians.means + off.d_means,
        log_scales=gaussians.log_scales if off.d_log_scales is None else gaussians.log_scales + off.d_log_scales,
        quats=gaussians.quats if off.d_quats is None else gaussians.quats + off.d_quats,
        opacity_logits=gaussians.opacity_logits if off.d_opacity is None else gaussians.opacity_logits + off.d_opacity,
        sh0=gaussians.sh0 if off.d_sh0 is None else gaussians.sh0 + off.d_sh0,
        shN=gaussians.shN,
    )


def sample_plane(plane: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of one plane.

    Args:
        plane: ``[1, C, H, W]`` (or ``[C, H, W]``) values on an ``align_corners=True`` lattice.
        coords: ``[N, 2]`` in ``[-1, 1]``: column 0 along W, column 1 along H; outside is
            clamped to the border.

    Returns:
        ``[N, C]``.
    """
    if plane.dim() == 3:
        plane = plane[None]
    out = F.grid_sample(plane, coords[None, None], mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0, :].transpose(0, 1)


# The MLP's nonlinearities (DistortionFieldConfig.activation): module and function of each.
ACTIVATIONS = {"relu": (nn.ReLU, F.relu), "silu": (nn.SiLU, F.silu)}


def _head(width: int, out_dim: int, activation: str) -> nn.Sequential:
    # Two layers per head as in 4DGS; the last starts at zero so offsets start at zero.
    last = nn.Linear(width, out_dim)
    last.zero_init = True
    act = ACTIVATIONS[activation][0]
    return nn.Sequential(act(), nn.Linear(width, width), act(), last)


# Plane groups of one level, each stored as one tensor so that a group is sampled by one batched grid_sample:
# the three spatial planes ``[3, C, R, R]``, the six (spatial, frame) planes ``[6, C, R_frame, R]`` and the
# u-v plane ``[1, C, R_frame, R_frame]``. ``GROUPS[name]`` lists the planes (indices into ``PLANE_PAIRS``).
GROUPS: dict[str, tuple[int, ...]] = {
    "spatial": SPATIAL_PLANES,
    "frame": tuple(p for p in FRAME_PLANES if PLANE_PAIRS[p][0] < NUM_SPATIAL_AXES),
    "uv": tuple(p for p in FRAME_PLANES if PLANE_PAIRS[p][0] >= NUM_SPATIAL_AXES),
}
_PLANE_SLOT = {p: (name, i) for name, planes in GROUPS.items() for i, p in enumerate(planes)}
# _Level.frame_lines relies on this order of the (spatial, frame) planes: xu, xv, yu, yv, zu, zv
assert [PLANE_PAIRS[p] for p in GROUPS["frame"]] == [(a, b) for a in range(NUM_SPATIAL_AXES) for b in (3, 4)]


def frame_lines(frame: torch.Tensor, uv: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[S, 3, 2C, R]``: for each of S frame codes (``[S, 2]`` in [-1, 1]), the frame planes ``frame [6, C, Rf,
    R]`` (xu, xv, yu, yv, zu, zv) interpolated at the code, i.e. lines over x, x, y, y, z, z, the two lines of one
    axis stacked along the channels (``[:, a, :C]`` the a-u line, ``[:, a, C:]`` the a-v line), and the u-v plane
    ``uv [1, C, Rf, Rf]``'s value at the code folded into the x-u line (a constant factor commutes with
    interpolation)."""
    six, c, rf, r = frame.shape
    # the planes' frame axes are u, v, u, v, u, v (asserted with GROUPS): the codes repeated, no host copy
    t = ((codes.repeat(1, NUM_SPATIAL_AXES).clamp(-1.0, 1.0) + 1.0) * 0.5 * (rf - 1))  # [S, 6] row index
    i0 = t.detach().floor().clamp(0, rf - 2).long()
    w = (t - i0)[..., None, None]
    # rows i0 and i0 + 1 of every (frame, plane) by one index_select of the planes as [6 Rf, C, R] rows (its
    # backward is one index_add; advanced indexing planes[p, :, i0] back-propagates by a sorting scatter)
    flat = frame.transpose(1, 2).reshape(six * rf, c, r)
    at = (torch.arange(six, device=codes.device) * rf)[None, :] + i0  # [S, 6]
    ends = flat.index_select(0, torch.cat([at.flatten(), at.flatten() + 1])).view(2, *at.shape, c, r)
    rows = ends[0] * (1.0 - w) + ends[1] * w  # [S, 6, C, R]
    uv = F.grid_sample(uv, codes[None, None], mode="bilinear", padding_mode="border", align_corners=True)
    uv = uv[0, :, 0, :].transpose(0, 1)  # [S, C]
    rows = torch.cat([rows[:, :1] * uv[:, None, :, None], rows[:, 1:]], dim=1)
    return rows.reshape(rows.shape[0], NUM_SPATIAL_AXES, 2 * c, r)


def _kernel_lines(frames: list[torch.Tensor], uvs: list[torch.Tensor], codes: torch.Tensor) -> list[torch.Tensor]:
    """Every level's :func:`frame_lines` at ``codes``, laid out as the fused kernels read them: ``[3, S, R, 2C]``."""
    return [frame_lines(f, uv, codes).permute(1, 0, 3, 2) for f, uv in zip(frames, uvs)]


@functools.cache
def compile_once(fn, dynamic: bool | None):
    """``torch.compile(fn)`` made once per function (its graphs are then reused by every field of one shape)."""
    return torch.compile(fn, fullgraph=True, dynamic=dynamic)


def kernel_lines(field: DistortionField, codes: torch.Tensor, compiled: bool = False) -> list[torch.Tensor]:
    """:func:`_kernel_lines` of ``field``'s levels; ``compiled``: as one ``torch.compile`` graph (forward and
    backward), a few kernels instead of ~40 small ones per level and step. Recompiled once if the number of codes
    changes (then with that size dynamic)."""
    frames, uvs = [level.frame for level in field.levels], [level.uv for level in field.levels]
    if not compiled:
        return _kernel_lines(frames, uvs, codes)
    return compile_once(_kernel_lines, None)(frames, uvs, codes)


class _Level(nn.Module):
    """The planes of one resolution level, grouped as in ``GROUPS`` (parameters ``spatial``, ``frame``, ``uv``)."""

    def __init__(self, cfg: DistortionFieldConfig, level: int, gen: torch.Generator) -> None:
        super().__init__()
        lo, hi = cfg.spatial_init
        for name, planes in GROUPS.items():
            shape = (len(planes), *cfg.plane_shape(level, planes[0])[1:])
            if name == "spatial":
                value = lo + (hi - lo) * torch.rand(shape, generator=gen)
            else:
                value = torch.full(shape, float(cfg.frame_init))
            setattr(self, name, nn.Parameter(value))

    def planes(self) -> list[torch.Tensor]:
        """The 10 planes in ``PLANE_PAIRS`` order, each a ``[1, C, R_b, R_a]`` view of its group tensor
        (in-place edits under ``torch.no_grad()`` change the field)."""
        out = []
        for p in range(len(PLANE_PAIRS)):
            name, i = _PLANE_SLOT[p]
            out.append(getattr(self, name)[i : i + 1])
        return out

    # A frame's code is one point of the u-v square, so for that frame every frame plane (a, u) reduces to a
    # line over axis a (its rows interpolated at u) and the u-v plane to one value. Features = spatial product
    # (frame-independent: once per step) x the frame's 6 lines sampled at the point (1-D) x the u-v value.
    # Bilinear sampling is separable, so this equals the product of the 10 bilinear plane samples exactly, at a
    # fraction of the cost (and of grid_sample's atomic adds in the backward pass, which dominate on a GPU).
    def spatial_features(self, grid: torch.Tensor) -> torch.Tensor:
        """``[C, M]``: product of the 3 spatial plane samples at ``grid [3, M, 2]`` (see :func:`spatial_grid`)."""
        xy, xz, yz = sample_batched(self.spatial, grid).unbind(0)  # [C, M] each; unbind: one backward op
        return xy * xz * yz

    def frame_lines(self, codes: torch.Tensor) -> torch.Tensor:
        """``[S, 3, 2C, R]``: :func:`frame_lines` of this level's planes at ``codes [S, 2]`` (in [-1, 1])."""
        return frame_lines(self.frame, self.uv, codes)

    @staticmethod
    def line_features(grid: torch.Tensor, lines: torch.Tensor) -> torch.Tensor:
        """``[C, M]``: product of the 6 lines of each point's frame, sampled linearly.

        Args:
            grid: ``[3, M, 2]`` (see :func:`line_grid`): column 0 the point's x, y or z, column 1 its frame's row.
            lines: ``[3, 2C, H, R]``: :meth:`frame_lines` of S frames with the frames stacked as rows (the
                lines of one axis form an image whose row j is frame j's line, H >= S rows, see
                :func:`_exact_rows`; a point on row j samples only it).
        """
        # unbind and chunk are views whose backward is one stack / cat (indexing s[0], s[0, :c] instead would
        # back-propagate six zero-filled copies of the whole [3, 2C, M] sample)
        x, y, z = sample_batched(lines, grid).unbind(0)  # [2C, M] each
        xu, xv = x.chunk(2)
        yu, yv = y.chunk(2)
        zu, zv = z.chunk(2)
        return xu * xv * yu * yv * zu * zv


# grid_sample's backward pass adds every sample's gradient into the plane with atomic adds; when hundreds of
# thousands of points land in a few thousand cells (a 64-sample line, a 64x64 plane) the adds to one address
# serialise. ``sample_batched`` spreads the points over ``copies`` replicas of the planes (each replica receives
# a share of the points' gradients; autograd sums the replicas), which cuts that contention on a GPU at the cost
# of the replicas' memory: at most ``_COPY_BYTES`` of replicas, one per ``_COPY_POINTS`` points, ``_COPY_MAX`` in
# all (measured on an H100 at 350k points: bench/RESULTS.md). The values and gradients are the same sums.
_COPY_POINTS = 4096
_COPY_MAX = 64
_COPY_BYTES = 32 << 20


def _copies(images: torch.Tensor, points: int) -> int:
    if images.device.type != "cuda" or not torch.is_grad_enabled():
        return 1
    by_memory = _COPY_BYTES // max(images.numel() * images.element_size(), 1)
    return int(max(1, min(_COPY_MAX, points // _COPY_POINTS, by_memory)))


def sample_batched(images: torch.Tensor, grid: torch.Tensor, copies: int | None = None) -> torch.Tensor:
    """Bilinear samples of P images, each at its own points (``align_corners=True``, border clamp).

    Args:
        images: ``[P, C, H, W]``.
        grid: ``[P, M, 2]`` in ``[-1, 1]``: column 0 along W, column 1 along H.
        copies: replicas of ``images`` over which the points are spread in the backward pass (None: chosen
            by size on CUDA, 1 elsewhere; any value gives the same result up to float summation order).

    Returns:
        ``[P, C, M]``.
    """
    p, c, h, w = images.shape
    m = grid.shape[1]
    k = _copies(images, m) if copies is None else max(int(copies), 1)
    if k == 1:
        out = F.grid_sample(images, grid[:, None], mode="bilinear", padding_mode="border", align_corners=True)
        return out[:, :, 0, :]
    chunk = -(-m // k)
    grid = F.pad(grid, (0, 0, 0, chunk * k - m)).reshape(p, k, chunk, 2).transpose(0, 1).reshape(k * p, 1, chunk, 2)
    replicas = images[None].expand(k, p, c, h, w).reshape(k * p, c, h, w)
    out = F.grid_sample(replicas, grid, mode="bilinear", padding_mode="border", align_corners=True)  # [kP, C, 1, chunk]
    return out.reshape(k, p, c, chunk).permute(1, 2, 0, 3).reshape(p, c, k * chunk)[..., :m]


def spatial_grid(xyz: torch.Tensor) -> torch.Tensor:
    """``[3, M, 2]``: the sample points of the spatial planes xy, xz, yz for grid coordinates ``xyz [M, 3]``."""
    x, y, z = xyz.unbind(1)
    return torch.stack([torch.stack(pair, dim=-1) for pair in ((x, y), (x, z), (y, z))])


def line_grid(xyz: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``[3, M, 2]``: the sample points of the lines over x, y, z for grid coordinates ``xyz [M, 3]`` whose frames'
    lines sit on rows ``rows [M]`` (in [-1, 1]) of the stacked line images (see ``_Level.line_features``)."""
    t = xyz.t()
    return torch.stack([t, rows.expand_as(t)], dim=-1)


def _exact_rows(num_frames: int) -> int:
    """Rows of the image that stacks ``num_frames`` frames' lines: ``2^k + 1 >= num_frames`` (1 for one frame),
    so that every row's ``align_corners`` coordinate ``-1 + 2 j / (rows - 1)`` and grid_sample's way back to
    ``j`` are exact in float32 and a point samples its own row with weight exactly 1 (any other row count can
    leave a weight of ~1e-5 on the neighbouring frame's row)."""
    if num_frames <= 1:
        return 1
    return 2 ** math.ceil(math.log2(num_frames - 1)) + 1


def _row_coordinates(num_rows: int, counts: list[int], like: torch.Tensor) -> torch.Tensor:
    """``[sum counts]``: row ``j``'s ``align_corners`` coordinate in an image of ``num_rows`` rows (see
    :func:`_exact_rows`), ``counts[j]`` times each (built on the device without a host-to-device copy)."""
    step = 2.0 / (num_rows - 1) if num_rows > 1 else 0.0  # one row: grid_sample maps any coordinate to it
    parts = [like.new_full((n,), -1.0 + step * j) for j, n in enumerate(counts)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class DistortionField(nn.Module):
    """k-planes field over ``(x, y, z, u, v)`` decoded into per-Gaussian offsets.

    Attributes:
        levels: ``ModuleList`` of :class:`_Level` (the grouped planes of each resolution level).
        grids: per level, the 10 planes in ``PLANE_PAIRS`` order as ``[1, C, R_b, R_a]`` views.
        feature_net: shared MLP ``feature_dim -> net_width``.
        heads: ``ModuleDict`` with keys among ``position, scale, rotation, opacity, sh``.
        kernels: how the planes are sampled: ``"auto"`` (the fused Triton kernels of
            :mod:`lift3d_core.splat.field_triton` where they can run, ``grid_sample`` elsewhere), ``"triton"``
            (the kernels or an error), ``"torch"`` (``grid_sample``). Same values up to float rounding.
        mlp_dtype: dtype of the MLP's matrix products (None: float32). ``torch.bfloat16`` on CUDA is several
            times faster for the large per-Gaussian batches of training; the planes, their samples and the
            offsets stay float32.
        compiled: while gradients are on, run the MLP (:meth:`decode`) and, with the fused kernels, the frame
            lines of every level (:func:`kernel_lines`) as ``torch.compile`` graphs, forward and backward: a few
            kernels instead of ~100 small ones a step (the trainer sets it on CUDA). Same values.
    """

    def __init__(self, cfg: DistortionFieldConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mlp_dtype: torch.dtype | None = None
        self.kernels = "auto"
        self.compiled = False
        gen = torch.Generator().manual_seed(cfg.seed)
        self.levels = nn.ModuleList(_Level(cfg, level, gen) for level in range(len(cfg.multires)))
        layers: list[nn.Module] = [nn.Linear(cfg.feature_dim, cfg.net_width)]
        for _ in range(cfg.net_depth - 1):
            layers += [ACTIVATIONS[cfg.activation][0](), nn.Linear(cfg.net_width, cfg.net_width)]
        self.feature_net = nn.Sequential(*layers)
        heads = {}
        for name, on, dim in (
            ("position", cfg.deform_position, 3),
            ("scale", cfg.deform_scale, 3),
            ("rotation", cfg.deform_rotation, 4),
            ("opacity", cfg.deform_opacity, 1),
            ("sh", cfg.deform_sh, 3),
        ):
            if on:
                heads[name] = _head(cfg.net_width, dim, cfg.activation)
        self.heads = nn.ModuleDict(heads)
        self._init_linear(gen)
        self.register_buffer("bounds_lo", torch.tensor(cfg.bounds[0], dtype=torch.float32), persistent=False)
        self.register_buffer("bounds_hi", torch.tensor(cfg.bounds[1], dtype=torch.float32), persistent=False)

    @property
    def grids(self) -> list[list[torch.Tensor]]:
        return [level.planes() for level in self.levels]

    def _init_linear(self, gen: torch.Generator) -> None:
        # Deterministic from cfg.seed (torch's default init draws from the global RNG).
        for module in self.modules():
            if not isinstance(module, nn.Linear):
                continue
            with torch.no_grad():
                module.bias.zero_()
                if getattr(module, "zero_init", False):
                    module.weight.zero_()
                else:
                    bound = (6.0 / (module.in_features + module.out_features)) ** 0.5  # Xavier, as 4DGS
                    module.weight.copy_((torch.rand(module.weight.shape, generator=gen) * 2 - 1) * bound)

    # -- parameter groups (4DGS gives grids and MLP different learning rates) --------
    def grid_parameters(self) -> list[nn.Parameter]:
        """The plane-group tensors (3 per level)."""
        return [getattr(level, name) for level in self.levels for name in GROUPS]

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.feature_net.parameters()) + list(self.heads.parameters())

    # -- evaluation -------------------------------------------------------------
    def normalise(self, means: torch.Tensor, frame_code: torch.Tensor) -> torch.Tensor:
        """``[N, 5]`` grid coordinates in ``[-1, 1]`` of ``means [N, 3]`` and ``frame_code [2] | [N, 2]``."""
        lo = self.bounds_lo.to(means)
        hi = self.bounds_hi.to(means)
        xyz = ((means - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)
        code = torch.as_tensor(frame_code, dtype=means.dtype, device=means.device)
        code = code.expand(means.shape[0], 2) if code.dim() == 1 else code
        return torch.cat([xyz, code * 2.0 - 1.0], dim=-1)

    def normalise_xyz(self, means: torch.Tensor) -> torch.Tensor:
        """``[N, 3]``: ``means`` mapped by the bounds to ``[-1, 1]`` (outside clamped)."""
        lo, hi = self.bounds_lo.to(means), self.bounds_hi.to(means)
        return ((means - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)

    def uses_fused_kernels(self, like: torch.Tensor) -> bool:
        """Whether :meth:`segment_features` runs the fused kernels for tensors like ``like`` (see ``kernels``)."""
        if self.kernels == "torch":
            return False
        ok = field_triton.available(like.device) and field_triton.supports(self.cfg.features_per_plane)
        if self.kernels == "triton" and not ok:
            raise Lift3DError(f"distortion field: kernels='triton' but the fused kernels cannot run on {like.device} "
                              f"(needs CUDA and the triton package, and a power-of-two features_per_plane)")
        if self.kernels not in ("auto", "triton"):
            raise Lift3DError(f"distortion field: kernels must be auto, triton or torch, got {self.kernels!r}")
        return ok

    def segment_features(self, means: torch.Tensor, codes: torch.Tensor, segments: list) -> torch.Tensor:
        """Features of several groups of points, each at one frame code.

        Args:
            means: ``[N, 3]`` canonical centres (the spatial planes are sampled once for all of them).
            codes: ``[S, 2]`` frame codes in ``[0, 1]``.
            segments: S entries, each a ``[M_j]`` long tensor of rows of ``means`` or None for all rows.

        Returns:
            ``[sum M_j, feature_dim]``, segment after segment (a transposed view: column-major memory).
        """
        xyz = self.normalise_xyz(means)
        c = torch.as_tensor(codes, dtype=means.dtype, device=means.device).reshape(-1, 2) * 2.0 - 1.0
        n = xyz.shape[0]
        counts = [n if seg is None else int(seg.shape[0]) for seg in segments]
        if self.uses_fused_kernels(xyz):
            layout = field_triton.QueryLayout.build(segments, counts, n, xyz.device)
            spatial = [level.spatial.permute(0, 2, 3, 1) for level in self.levels]  # [3, R, R, C]
            lines = kernel_lines(self, c, compiled=self.compiled and torch.is_grad_enabled())  # [3, S, R, 2C]
            return field_triton.fused_features(xyz, layout, spatial, lines)
        rows = None
        if not (len(segments) == 1 and segments[0] is None):
            rows = torch.cat([torch.arange(n, device=means.device) if seg is None else seg for seg in segments])
        # every segment's lines in one sample per level: frame j's lines are row j of one image per axis
        s = c.shape[0]
        num_rows = _exact_rows(s)
        lgrid = line_grid(xyz if rows is None else xyz.index_select(0, rows), _row_coordinates(num_rows, counts, xyz))
        sgrid = spatial_grid(xyz)
        per_level = []
        for level in self.levels:
            sp = level.spatial_features(sgrid)  # [C, N]: frame-independent, once for all segments
            lines = F.pad(level.frame_lines(c).permute(1, 2, 0, 3), (0, 0, 0, num_rows - s))  # [3, 2C, rows, R]
            per_level.append((sp if rows is None else sp.index_select(1, rows)) * level.line_features(lgrid, lines))
        return torch.cat(per_level, dim=0).t()  # a transposed view of [feature_dim, sum M_j]

    def _group_by_code(self, means: torch.Tensor, frame_code) -> tuple[torch.Tensor, list, torch.Tensor | None]:
        code = torch.as_tensor(frame_code, dtype=means.dtype, device=means.device)
        if code.dim() == 1:
            return code[None], [None], None
        uniq, inverse = torch.unique(code, dim=0, return_inverse=True)
        segments = [torch.nonzero(inverse == j).flatten() for j in range(uniq.shape[0])]
        return uniq, segments, torch.cat(segments)

    def features(self, means: torch.Tensor, frame_code: torch.Tensor) -> torch.Tensor:
        """``[N, features_per_plane * levels]``: per level, the product of the 10 plane samples."""
        codes, segments, order = self._group_by_code(means, frame_code)
        feats = self.segment_features(means, codes, segments)
        return feats if order is None else torch.empty_like(feats).index_copy(0, order, feats)

    def _run_mlp(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        # The heads run as one wide layer (their first layers stacked) and one block-diagonal layer (their last
        # layers): two matrix products for all heads instead of two per head; the same function of the same
        # parameters (each head's gradient is its block's).
        act = ACTIVATIONS[self.cfg.activation][1]
        hidden = act(self.feature_net(feats))
        heads = list(self.heads.values())
        if len(heads) == 1:
            return {name: head[1:](hidden) for name, head in self.heads.items()}
        wide = act(F.linear(hidden, torch.cat([h[1].weight for h in heads]), torch.cat([h[1].bias for h in heads])))
        out = F.linear(wide, torch.block_diag(*[h[3].weight for h in heads]), torch.cat([h[3].bias for h in heads]))
        return dict(zip(self.heads, out.split([h[3].out_features for h in heads], dim=-1)))

    def decode(self, feats: torch.Tensor) -> Offsets:
        """Offsets of features ``[M, feature_dim]`` (the MLP and heads); one compiled graph when ``compiled``
        and gradients are on (its row count dynamic: one graph for every size)."""
        if self.compiled and torch.is_grad_enabled():
            return compile_once(_decode, True)(self, feats)
        return _decode(self, feats)

    def evaluate(self, means: torch.Tensor, codes: torch.Tensor, segments: list) -> Offsets:
        """Offsets of several groups of points, each at one code (see :meth:`segment_features`), rows segment
        after segment: one pass over the planes and one MLP call for all of them."""
        anchor = self.cfg.anchor_code
        if anchor is None:
            return self.decode(self.segment_features(means, codes, segments))
        codes = torch.cat([torch.as_tensor(codes, dtype=means.dtype, device=means.device).reshape(-1, 2),
                           torch.tensor([anchor], dtype=means.dtype, device=means.device)])
        n = means.shape[0]
        out = self.decode(self.segment_features(means, codes, [*segments, None]))
        rows = torch.cat([torch.arange(n, device=means.device) if seg is None else seg for seg in segments])
        return _minus_rows(out, rows.shape[0], rows)

    def forward(self, means: torch.Tensor, frame_code: torch.Tensor) -> Offsets:
        """Offsets of N Gaussians at one frame, or each at its own frame (from the anchor code's, with one).

        Args:
            means: ``[N, 3]`` canonical centres, world frame.
            frame_code: ``[2]`` (one frame) or ``[N, 2]`` frame codes in ``[0, 1]``.
        """
        out = self.decode(self.features(means, frame_code))
        if self.cfg.anchor_code is None:
            return out
        base = self.decode(self.features(means, torch.tensor(self.cfg.anchor_code, dtype=means.dtype, device=means.device)))
        return Offsets(*(None if a is None else a - b for a, b in zip(out, base)))

    def apply(self, gaussians: Gaussians, frame_code: torch.Tensor) -> Gaussians:
        """The Gaussians seen by frame ``frame_code``: canonical plus offsets (a new object; differentiable)."""
        return apply_offsets(gaussians, self(gaussians.means, frame_code))

    # -- persistence ------------------------------------------------------------
    def state(self) -> dict:
        """``{"config": dict, "state_dict": {name: tensor}}``: everything :func:`load_field` needs."""
        return {"config": self.cfg.to_dict(), "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}


def _minus_rows(out: Offsets, m: int, rows: torch.Tensor) -> Offsets:
    """``out``'s first ``m`` rows minus its rows ``m + rows`` (``rows [m]``): each query's offsets measured from its
    centre's at the anchor code (the anchor segment, one row per centre, follows the queries)."""
    return Offsets(*(None if t is None else t[:m] - t[m:].index_select(0, rows) for t in out))


def _decode(field: DistortionField, feats: torch.Tensor) -> Offsets:
    dtype = field.mlp_dtype
    if dtype is not None and dtype != feats.dtype:
        with torch.autocast(device_type=feats.device.type, dtype=dtype):
            out = {name: t.float() for name, t in field._run_mlp(feats).items()}
    else:
        out = field._run_mlp(feats)
    m = field.cfg.max_offset
    if m is not None and "position" in out:
        out["position"] = m * torch.tanh(out["position"] / m)
    return Offsets(
        d_means=out.get("position"),
        d_log_scales=out.get("scale"),
        d_quats=out.get("rotation"),
        d_opacity=out["opacity"][:, 0] if "opacity" in out else None,
        d_sh0=out["sh"][:, None, :] if "sh" in out else None,
    )


def load_field(field_state: dict, device: torch.device | str = "cpu") -> DistortionField:
    """Rebuild a :class:`DistortionField` from :meth:`DistortionField.state` (exact round trip)."""
    try:
        cfg = DistortionFieldConfig.from_dict(field_state["config"])
    except (KeyError, TypeError) as exc:
        raise Lift3DError(f"not a distortion field state (needs 'config' and 'state_dict'): {exc}") from exc
    field = DistortionField(cfg)
    field.load_state_dict(field_state["state_dict"])
    return field.to(device)
