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

Modules: :mod:`~lift3d_core.splat.distortion.config` (axes, plane table, :class:`DistortionFieldConfig`),
:mod:`~lift3d_core.splat.distortion.offsets` (:class:`Offsets`, :func:`apply_offsets`),
:mod:`~lift3d_core.splat.distortion.sampling` (``grid_sample`` sampling of planes and lines),
:mod:`~lift3d_core.splat.distortion.lines` (a frame's lines, their compiled graph),
:mod:`~lift3d_core.splat.distortion.compiled` (:func:`compile_once`),
:mod:`~lift3d_core.splat.distortion.levels` (one resolution level's plane groups),
:mod:`~lift3d_core.splat.distortion.field` (:class:`DistortionField`) and
:mod:`~lift3d_core.splat.distortion.persistence` (:func:`load_field`).
"""

from lift3d_core.splat.distortion.compiled import compile_once
from lift3d_core.splat.distortion.config import (
    ACTIVATIONS,
    AXES,
    FRAME_PLANES,
    INPUT_VIEW_CODE,
    NUM_SPATIAL_AXES,
    PLANE_PAIRS,
    SPATIAL_PLANES,
    DistortionFieldConfig,
    plane_name,
)
from lift3d_core.splat.distortion.field import DistortionField
from lift3d_core.splat.distortion.levels import GROUPS
from lift3d_core.splat.distortion.lines import frame_lines, kernel_lines
from lift3d_core.splat.distortion.offsets import Offsets, apply_offsets
from lift3d_core.splat.distortion.persistence import load_field
from lift3d_core.splat.distortion.sampling import line_grid, sample_batched, sample_plane, spatial_grid

__all__ = [
    "ACTIVATIONS",
    "AXES",
    "FRAME_PLANES",
    "GROUPS",
    "INPUT_VIEW_CODE",
    "NUM_SPATIAL_AXES",
    "PLANE_PAIRS",
    "SPATIAL_PLANES",
    "DistortionField",
    "DistortionFieldConfig",
    "Offsets",
    "apply_offsets",
    "compile_once",
    "frame_lines",
    "kernel_lines",
    "line_grid",
    "load_field",
    "plane_name",
    "sample_batched",
    "sample_plane",
    "spatial_grid",
]
