"""Bilinear sampling of the field's planes and lines with ``grid_sample`` (the PyTorch path; the fused kernels are
:mod:`lift3d_core.splat.field_triton`): sample points of the spatial planes and of the stacked frame lines."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


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
