"""The field's output: :class:`Offsets` of the pre-activation Gaussian parameters, and arithmetic on them."""

from __future__ import annotations

from typing import NamedTuple

import torch

from lift3d_core.splat.gaussians import Gaussians


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


def _minus_rows(out: Offsets, m: int, rows: torch.Tensor) -> Offsets:
    """``out``'s first ``m`` rows minus its rows ``m + rows`` (``rows [m]``): each query's offsets measured from its
    centre's at the anchor code (the anchor segment, one row per centre, follows the queries)."""
    return Offsets(*(None if t is None else t[:m] - t[m:].index_select(0, rows) for t in out))


def _split_offsets(off, sizes: list[int]) -> list:
    """``off`` (an :class:`Offsets` of ``sum(sizes)`` rows) cut into consecutive :class:`Offsets` of ``sizes`` rows."""
    pieces = [[None] * len(sizes) if t is None else t.split(sizes) for t in off]
    return [type(off)(*(p[q] for p in pieces)) for q in range(len(sizes))]
