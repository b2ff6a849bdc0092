"""A frame's lines: the frame planes interpolated at one frame code (the PyTorch reference of what the fused
kernels read), and their ``torch.compile`` graph for the fused path."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lift3d_core.splat import lines_triton
from lift3d_core.splat.distortion.compiled import compile_once
from lift3d_core.splat.distortion.config import NUM_SPATIAL_AXES
from lift3d_core.splat.speed import SWITCHES

if TYPE_CHECKING:
    from lift3d_core.splat.distortion.field import DistortionField


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


def kernel_lines(field: DistortionField, codes: torch.Tensor, compiled: bool = False) -> list[torch.Tensor]:
    """:func:`_kernel_lines` of ``field``'s levels; ``compiled``: as one ``torch.compile`` graph (forward and
    backward), a few kernels instead of ~40 small ones per level and step. Recompiled once if the number of codes
    changes (then with that size dynamic)."""
    frames, uvs = [level.frame for level in field.levels], [level.uv for level in field.levels]
    if SWITCHES.lines == "triton" and all(lines_triton.supports(f) for f in frames):
        return [lines_triton.kernel_lines(f, uv, codes) for f, uv in zip(frames, uvs)]
    if not (compiled and "lines" in SWITCHES.compiled_parts):
        return _kernel_lines(frames, uvs, codes)
    return compile_once(_kernel_lines, None)(frames, uvs, codes)
