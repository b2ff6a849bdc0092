"""One resolution level of the field: its planes grouped into three tensors (:data:`GROUPS`) and their samples."""

from __future__ import annotations

import torch
from torch import nn

from lift3d_core.splat.distortion.config import (
    FRAME_PLANES,
    NUM_SPATIAL_AXES,
    PLANE_PAIRS,
    SPATIAL_PLANES,
    DistortionFieldConfig,
)
from lift3d_core.splat.distortion.lines import frame_lines
from lift3d_core.splat.distortion.sampling import sample_batched

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
