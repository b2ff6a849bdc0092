"""What the distortion-aware trainer charges the field for: the planes' regularisers (4DGS's) and the offset
penalties (LiftImage3D's anchor, and the same form on any offsets).

The regularisers read the field's plane groups (``DistortionField.grid_parameters()``: per level the spatial, frame
and u-v groups, ``[P, C, R_b, R_a]`` each); the penalties read :class:`~lift3d_core.splat.distortion.Offsets`.
"""

from __future__ import annotations

import torch

from lift3d_core.splat import field_triton, regularisers_triton
from lift3d_core.splat.distortion import INPUT_VIEW_CODE, DistortionField, Offsets, compile_once
from lift3d_core.splat.speed import SWITCHES


def offset_penalty(off: Offsets) -> torch.Tensor:
    """Mean squared position offset plus mean absolute offsets of the other heads (the anchor's form)."""
    ref = next(t for t in off if t is not None)
    total = ref.new_zeros(())
    if off.d_means is not None:
        total = total + off.d_means.square().mean()
    for t in (off.d_log_scales, off.d_quats, off.d_opacity, off.d_sh0):
        if t is not None:
            total = total + t.abs().mean()
    return total


def _frame_mean_of(off, k: int, m: int) -> torch.Tensor:
    """The frame-mean penalty (see ``frame_mean_weight``): :func:`offset_penalty` of code-major offsets of ``m``
    centres at ``k`` codes, averaged over the codes."""
    return offset_penalty(type(off)(*(None if t is None else t.reshape(k, m, *t.shape[1:]).mean(dim=0) for t in off)))


# Each is a sum over planes of a per-plane mean; the planes of a group have one shape, so a group's sum is its
# plane count times the mean over the group tensor (a few large ops instead of one small op per plane).
def _group_mean(group: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return values.mean() * group.shape[0]


# The functions below take the field's plane groups (``grid_parameters()``: per level spatial, frame, u-v), so a
# compiled graph of them depends on the groups' shapes only, not on which field they belong to.
def _tv(groups: list[torch.Tensor]) -> torch.Tensor:
    total = groups[0].new_zeros(())
    for group in groups:
        total = total + _group_mean(group, (group[..., 1:, :] - group[..., :-1, :]).square())
        total = total + _group_mean(group, (group[..., :, 1:] - group[..., :, :-1]).square())
    return total


def _second_difference_sq(group: torch.Tensor, dim: int) -> torch.Tensor:
    n = group.shape[dim]
    if n < 3:
        return group.new_zeros(())
    d2 = group.narrow(dim, 2, n - 2) - 2.0 * group.narrow(dim, 1, n - 2) + group.narrow(dim, 0, n - 2)
    return _group_mean(group, d2.square())


def _smoothness(groups: list[torch.Tensor]) -> torch.Tensor:
    total = groups[0].new_zeros(())
    for frame, uv in zip(groups[1::3], groups[2::3]):
        total = total + _second_difference_sq(frame, 2)  # the height axis is the frame axis
        total = total + _second_difference_sq(uv, 2) + _second_difference_sq(uv, 3)
    return total


def _frame_l1(groups: list[torch.Tensor]) -> torch.Tensor:
    total = groups[0].new_zeros(())
    for group in groups[1::3] + groups[2::3]:
        total = total + _group_mean(group, (1.0 - group).abs())
    return total


def plane_tv(field: DistortionField) -> torch.Tensor:
    """Total variation of every plane: mean squared first difference along each axis, summed
    over planes and levels (k-planes' PlaneTV). Zero for constant planes."""
    return _tv(field.grid_parameters())


def frame_smoothness(field: DistortionField) -> torch.Tensor:
    """Mean squared second difference along the frame axes (u, v) of the frame planes, summed
    over planes and levels (4DGS's time smoothness). Zero for planes affine along u and v."""
    return _smoothness(field.grid_parameters())


def frame_planes_l1(field: DistortionField) -> torch.Tensor:
    """Mean ``|1 - plane|`` of the frame planes summed over planes and levels (4DGS's L1 on the
    time planes): pulls them to the multiplicative identity, i.e. to a frame-independent field."""
    return _frame_l1(field.grid_parameters())


def _all_regularisers(groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _tv(groups), _smoothness(groups), _frame_l1(groups)


def field_regularisers(field: DistortionField, compiled: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(:func:`plane_tv`, :func:`frame_smoothness`, :func:`frame_planes_l1`) of ``field`` in one call.

    ``compiled``: run the three (forward and backward) as one ``torch.compile`` graph. Eagerly they are ~300 small
    kernels per training step (a difference, a square, a mean per plane group and axis, and their backward),
    which on a GPU cost more in launches than in arithmetic; the planes' shapes never change, so the graph
    compiles once per field shape (tens of seconds) and is reused, by any field of that shape. The values are
    the same sums.
    """
    groups = field.grid_parameters()
    if not (compiled and "regularisers" in SWITCHES.compiled_parts):
        if SWITCHES.regularisers == "triton" and torch.is_grad_enabled() and field_triton.available(groups[0].device):
            return regularisers_triton.regularisers(groups)
        return _all_regularisers(groups)
    return compile_once(_all_regularisers, False)(groups)


def anchor_loss(field: DistortionField, means: torch.Tensor, code: tuple[float, float] = INPUT_VIEW_CODE) -> torch.Tensor:
    """Pins the offsets to zero at the input view's code: mean squared position offset plus mean
    absolute scale and rotation offsets (LiftImage3D's ``loss_zerocanonical``), plus mean absolute
    opacity / SH offsets when those heads are on.

    Args:
        means: ``[N, 3]`` canonical centres where the field is evaluated.
    """
    return offset_penalty(field(means, torch.tensor(code, dtype=means.dtype, device=means.device)))
