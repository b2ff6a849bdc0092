"""Fused GPU kernels (Triton) for the distortion field's plane sampling: forward and backward in one launch per level.

:meth:`DistortionField.segment_features` computes, per resolution level and for every query point ``q`` (a
Gaussian's centre ``p(q)`` at the code of segment ``j(q)``)::

    feat[q, c] = xy[c](x, y) * xz[c](x, z) * yz[c](y, z) * xu_j[c](x) * xv_j[c](x) * yu_j[c](y) * ... * zv_j[c](z)

three bilinear samples of the spatial planes and six linear samples of segment ``j``'s frame lines (see
``_Level.frame_lines``). In PyTorch that is a dozen ``grid_sample`` calls and their products per level, and
their backward passes scatter every sample's gradient into a few thousand plane cells with atomic adds that
serialise (a 64-sample line receives the gradients of ~10^5 points per frame). Here one kernel per level
computes the whole product, and one kernel its gradients:

* larger spatial planes: atomic adds of each point's four corners, channel-last (``[3, R, R, C]``), coalesced over
  the channels;
* frame lines: a block of points of one segment accumulates its gradient over the line's ``R`` cells as a
  matrix product (``one_hot_weights [R, points] @ grads [points, C]``, on tensor cores, in three-pass TF32
  that keeps float32 accuracy), then adds ``R x C`` values instead of ``2 x points x C`` (lines of at most
  ``LINE_DOT_MAX_R`` cells; longer ones take plain atomic adds; with fewer than 16 channels the u and v lines
  share one product of ``2C`` columns, with ``speed.SWITCHES.small_plane_products``);
* with that switch, small spatial planes (at most ``SPATIAL_DOT_MAX_CELLS`` cells) the same way, with the
  four corners' bilinear weights in the one-hot matrix;
* coordinates: the derivative of every sample with respect to the point's normalised coordinates, summed over
  channels and levels, is written per query (no atomics); the caller adds the queries of one point.

Semantics equal ``grid_sample(..., mode="bilinear", padding_mode="border", align_corners=True)`` on
coordinates already clamped to ``[-1, 1]``, including a zero coordinate gradient on the border itself.

Layout of a call (:class:`QueryLayout`): queries are grouped by segment and each segment is padded to a multiple
of ``BLOCK`` queries, so every program (block) belongs to one segment; per block, the segment, the first output
row and the number of real queries.

Triton is optional: :func:`available` says whether these kernels can run (a CUDA device and ``triton``); the
field falls back to ``grid_sample`` otherwise. With ``TRITON_INTERPRET=1`` set before import, the kernels run
on the CPU in Triton's interpreter (how the CPU tests check them against ``grid_sample``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from lift3d_core.splat.speed import SWITCHES

try:  # optional dependency: the CPU-only install may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

BLOCK = 64  # queries per program: the K of the lines' one-hot matrix product (tensor cores need >= 16)
R_CHUNK = 64  # rows of the one-hot matrix per product (bounds its registers)


def interpreted() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device | str) -> bool:
    """Whether the fused kernels can run for tensors on ``device``: Triton importable, and the device is CUDA
    (or the CPU under Triton's interpreter)."""
    if triton is None:
        return False
    kind = torch.device(device).type
    return kind == "cuda" or (kind == "cpu" and interpreted())


# The per-block table depends only on the segment sizes, which repeat from step to step when the field is
# evaluated for every Gaussian (the sizes then change only with densification): kept on the device, so such a
# step copies nothing from the host (a host-to-device copy from pageable memory waits for the device, and
# pinning memory every step costs more than the copy).
_BLOCKS_CACHE: dict[tuple, torch.Tensor] = {}
_BLOCKS_CACHE_SIZE = 8
# Whole layouts of segments given as ranges (the trainer's: every segment a contiguous block of rows), by their
# ranges: such a step builds nothing.
_LAYOUT_CACHE: dict[tuple, QueryLayout] = {}
_LAYOUT_CACHE_SIZE = 2  # a step's layout and one more: each holds ~4 bytes a query (tens of MB at 10^6 Gaussians)


@dataclass
class QueryLayout:
    """Queries grouped by segment, each segment padded to a multiple of ``BLOCK`` rows.

    Attributes:
        points: ``[Q]`` int32 row of the point array for each padded query (``-1`` on padding).
        blocks: ``[3, Q / BLOCK]`` int32: per block its segment, its first output row and its real query count.
        num_out: the number of real queries (output rows), ``sum(counts)``.
        num_segments: S, the rows of the line images.
    """

    points: torch.Tensor
    blocks: torch.Tensor
    num_out: int
    num_segments: int

    @classmethod
    def build(cls, segments: list[torch.Tensor | range | None], counts: list[int], num_points: int,
              device: torch.device) -> QueryLayout:
        """From the segments of :meth:`DistortionField.segment_features` (``[M_j]`` row indices, a ``range`` of
        rows, or None for all ``num_points`` rows) and their host-side sizes ``counts``. One device concatenation,
        and a small host-to-device copy of the block table when these sizes were not seen recently; when every
        segment is a range or None (the trainer's), the whole layout is reused from a recent identical call."""
        key = None
        if all(seg is None or isinstance(seg, range) for seg in segments):
            key = ("ranges", str(device), num_points,
                   tuple(None if seg is None else (seg.start, seg.stop, seg.step) for seg in segments))
            hit = _LAYOUT_CACHE.pop(key, None)
            if hit is not None:
                _LAYOUT_CACHE[key] = hit  # most recent last
                return hit
        layout = cls._build(segments, counts, num_points, device)
        if key is not None:
            _LAYOUT_CACHE[key] = layout
            while len(_LAYOUT_CACHE) > _LAYOUT_CACHE_SIZE:
                _LAYOUT_CACHE.pop(next(iter(_LAYOUT_CACHE)))
        return layout

    @classmethod
    def _build(cls, segments: list, counts: list[int], num_points: int, device: torch.device) -> QueryLayout:
        parts, seg_ids, firsts, sizes = [], [], [], []
        out0 = 0
        pad_pool = None
        for j, (seg, n) in enumerate(zip(segments, counts)):
            if seg is None:
                seg = torch.arange(num_points, device=device, dtype=torch.int32)
            elif isinstance(seg, range):
                seg = torch.arange(seg.start, seg.stop, seg.step, device=device, dtype=torch.int32)
            parts.append(seg.to(torch.int32))
            pad = (-n) % BLOCK
            if pad:
                if pad_pool is None:
                    pad_pool = torch.full((BLOCK,), -1, dtype=torch.int32, device=device)
                parts.append(pad_pool[:pad])
            nblocks = (n + pad) // BLOCK
            seg_ids.append(np.full(nblocks, j, dtype=np.int32))
            starts = np.arange(nblocks, dtype=np.int64) * BLOCK
            firsts.append(out0 + starts)
            sizes.append(np.minimum(n - starts, BLOCK))
            out0 += n
        if not parts or out0 == 0:
            return cls(torch.empty(0, dtype=torch.int32, device=device),
                       torch.empty(3, 0, dtype=torch.int32, device=device), 0, len(segments))
        key = (str(device), tuple(counts))
        blocks = _BLOCKS_CACHE.pop(key, None)
        if blocks is None:
            host = np.stack([np.concatenate(seg_ids), np.concatenate(firsts), np.concatenate(sizes)]).astype(np.int32)
            blocks = torch.from_numpy(host).to(device)
        _BLOCKS_CACHE[key] = blocks  # most recent last
        while len(_BLOCKS_CACHE) > _BLOCKS_CACHE_SIZE:
            _BLOCKS_CACHE.pop(next(iter(_BLOCKS_CACHE)))
        points = torch.cat(parts) if len(parts) > 1 else parts[0]
        return cls(points.contiguous(), blocks, out0, len(segments))

    @property
    def num_blocks(self) -> int:
        return int(self.blocks.shape[1])


# Lines whose resolution is at most this accumulate their gradient by the one-hot matrix product (fewer, less
# contended atomic adds); longer lines by plain atomic adds (a block of BLOCK queries touches at most 2 BLOCK of
# their cells, fewer than the product would add). Module-level so that benchmarks can compare the two.
LINE_DOT_MAX_R = 128
# Spatial planes of at most this many cells (R x R) accumulate their gradient by a one-hot matrix product too, in
# chunks of 64 cells: with few cells every query's four corner adds contend for the same addresses (an 8 x 8 plane
# takes ~10^5 queries' adds per cell), and the product replaces a block's 4 x BLOCK adds per channel by one per
# cell. Larger planes keep plain atomic adds (a block touches a few of their cells). 0 turns the product off.
SPATIAL_DOT_MAX_CELLS = 256


if triton is not None:

    @triton.jit
    def _axis(g, R: tl.constexpr):
        # align_corners lattice: index f = (g + 1) / 2 * (R - 1); cell i0 in [0, R - 2], weight w = f - i0;
        # d f / d g = (R - 1) / 2 strictly inside, 0 on the border (grid_sample's border clamp)
        f = (g + 1.0) * (0.5 * (R - 1))
        f = tl.minimum(tl.maximum(f, 0.0), R - 1.0)
        i0 = tl.minimum(tl.maximum(tl.floor(f), 0.0), R - 2.0)
        w = f - i0
        inside = (f > 0.0) & (f < R - 1.0)
        dg = tl.where(inside, 0.5 * (R - 1), 0.0)
        return i0.to(tl.int32), w, dg

    @triton.jit
    def _plane_offsets(ia, ib, c, R: tl.constexpr, C: tl.constexpr):
        # a plane channel-last [R_b, R_a, C]: value (a, b, c) at (b * R + a) * C + c
        return ((ib * R + ia) * C)[:, None] + c[None, :]

    @triton.jit
    def _plane_sample(ptr, o00, R: tl.constexpr, C: tl.constexpr, m, wa, wb):
        v00 = tl.load(ptr + o00, mask=m, other=0.0)
        v10 = tl.load(ptr + o00 + C, mask=m, other=0.0)
        v01 = tl.load(ptr + o00 + R * C, mask=m, other=0.0)
        v11 = tl.load(ptr + o00 + R * C + C, mask=m, other=0.0)
        a = wa[:, None]
        b = wb[:, None]
        value = (1.0 - a) * (1.0 - b) * v00 + a * (1.0 - b) * v10 + (1.0 - a) * b * v01 + a * b * v11
        d_a = (1.0 - b) * (v10 - v00) + b * (v11 - v01)  # d value / d (index along a)
        d_b = (1.0 - a) * (v01 - v00) + a * (v11 - v10)
        return value, d_a, d_b

    @triton.jit
    def _line_offsets(a: tl.constexpr, seg, nseg, i0, c, R: tl.constexpr, C: tl.constexpr):
        # lines channel-last [3, S, R, 2C]: axis a, segment seg, cell i0: u half at +c, v half at +C+c
        base = (a * nseg + seg).to(tl.int64) * (R * 2 * C)
        return base + (i0 * (2 * C))[:, None] + c[None, :]

    @triton.jit
    def _line_sample(ptr, o0, C: tl.constexpr, m, w):
        u0 = tl.load(ptr + o0, mask=m, other=0.0)
        v0 = tl.load(ptr + o0 + C, mask=m, other=0.0)
        u1 = tl.load(ptr + o0 + 2 * C, mask=m, other=0.0)
        v1 = tl.load(ptr + o0 + 3 * C, mask=m, other=0.0)
        t = w[:, None]
        return u0 + t * (u1 - u0), v0 + t * (v1 - v0), u1 - u0, v1 - v0

    @triton.jit
    def _load_query(xyz_ptr, pts_ptr, blocks_ptr, nblocks, pid, BLOCK_Q: tl.constexpr):
        lane = tl.arange(0, BLOCK_Q)
        seg = tl.load(blocks_ptr + pid)
        out0 = tl.load(blocks_ptr + nblocks + pid)
        count = tl.load(blocks_ptr + 2 * nblocks + pid)
        valid = lane < count
        pt = tl.load(pts_ptr + pid * BLOCK_Q + lane)
        pt = tl.where(valid, pt, 0).to(tl.int64)
        x = tl.load(xyz_ptr + pt * 3, mask=valid, other=0.0)
        y = tl.load(xyz_ptr + pt * 3 + 1, mask=valid, other=0.0)
        z = tl.load(xyz_ptr + pt * 3 + 2, mask=valid, other=0.0)
        return lane, seg, out0, valid, x, y, z

    # The sizes are not specialised: Triton would otherwise compile a kernel variant the first time the block count
    # turns divisible by 16 (or not), i.e. again in the middle of training as densification changes it.
    @triton.jit(do_not_specialize=["nblocks", "nseg"])
    def _forward_kernel(xyz_ptr, pts_ptr, blocks_ptr, sp_ptr, ln_ptr, out_ptr, nblocks, nseg, out_stride, col0,
                        R: tl.constexpr, C: tl.constexpr, BLOCK_Q: tl.constexpr):
        pid = tl.program_id(0)
        lane, seg, out0, valid, x, y, z = _load_query(xyz_ptr, pts_ptr, blocks_ptr, nblocks, pid, BLOCK_Q)
        c = tl.arange(0, C)
        m = valid[:, None]
        ix, wx, _ = _axis(x, R)
        iy, wy, _ = _axis(y, R)
        iz, wz, _ = _axis(z, R)
        plane = R * R * C
        feat, _, _ = _plane_sample(sp_ptr, _plane_offsets(ix, iy, c, R, C), R, C, m, wx, wy)
        s, _, _ = _plane_sample(sp_ptr + plane, _plane_offsets(ix, iz, c, R, C), R, C, m, wx, wz)
        feat *= s
        s, _, _ = _plane_sample(sp_ptr + 2 * plane, _plane_offsets(iy, iz, c, R, C), R, C, m, wy, wz)
        feat *= s
        lu, lv, _, _ = _line_sample(ln_ptr, _line_offsets(0, seg, nseg, ix, c, R, C), C, m, wx)
        feat *= lu * lv
        lu, lv, _, _ = _line_sample(ln_ptr, _line_offsets(1, seg, nseg, iy, c, R, C), C, m, wy)
        feat *= lu * lv
        lu, lv, _, _ = _line_sample(ln_ptr, _line_offsets(2, seg, nseg, iz, c, R, C), C, m, wz)
        feat *= lu * lv
        rows = (out0 + lane).to(tl.int64)
        tl.store(out_ptr + (rows * out_stride + col0)[:, None] + c[None, :], feat, mask=m)

    @triton.jit
    def _scatter_plane(gptr, o00, ia, ib, c, R: tl.constexpr, C: tl.constexpr, m, d, wa, wb,
                       BLOCK_Q: tl.constexpr, DOT: tl.constexpr):
        if DOT:
            # a small plane: the block's gradient per cell as one-hot corner weights [RC, BLOCK_Q] (cell k = b R + a)
            # times the queries' gradients, then one add per cell and channel instead of 4 per query and channel
            k0 = (ib * R + ia)[None, :]
            a = wa[None, :]
            b = wb[None, :]
            if C >= 16:
                dd = d
            else:  # padded to 16 channels with zeros (column 2c: channel c) for the tensor cores
                dd = tl.reshape(tl.join(d, tl.zeros_like(d)), (BLOCK_Q, 2 * C))
            for k_start in tl.static_range(0, R * R, 64):
                k = k_start + tl.arange(0, 64)
                kk = k[:, None]
                onehot = (tl.where(kk == k0, (1.0 - a) * (1.0 - b), 0.0) + tl.where(kk == k0 + 1, a * (1.0 - b), 0.0)
                          + tl.where(kk == k0 + R, (1.0 - a) * b, 0.0) + tl.where(kk == k0 + R + 1, a * b, 0.0))
                g = tl.dot(onehot, dd, input_precision="tf32x3")
                if C >= 16:
                    tl.atomic_add(gptr + (k * C)[:, None] + c[None, :], g, mask=(k < R * R)[:, None], sem="relaxed")
                else:
                    j = tl.arange(0, 2 * C)
                    tl.atomic_add(gptr + (k * C)[:, None] + (j // 2)[None, :], g,
                                  mask=(k < R * R)[:, None] & (j % 2 == 0)[None, :], sem="relaxed")
        else:
            a = wa[:, None]
            b = wb[:, None]
            tl.atomic_add(gptr + o00, d * ((1.0 - a) * (1.0 - b)), mask=m, sem="relaxed")
            tl.atomic_add(gptr + o00 + C, d * (a * (1.0 - b)), mask=m, sem="relaxed")
            tl.atomic_add(gptr + o00 + R * C, d * ((1.0 - a) * b), mask=m, sem="relaxed")
            tl.atomic_add(gptr + o00 + R * C + C, d * (a * b), mask=m, sem="relaxed")

    @triton.jit
    def _scatter_line(gptr, a: tl.constexpr, seg, nseg, i0, w, c, du, dv, m,
                      R: tl.constexpr, C: tl.constexpr, BLOCK_Q: tl.constexpr, RC: tl.constexpr, DOT: tl.constexpr):
        if DOT:
            # one-hot weights [RC, BLOCK_Q] of a chunk of the line's cells times the queries' gradients
            base = (a * nseg + seg).to(tl.int64) * (R * 2 * C)
            cell0 = i0[None, :]
            t = w[None, :]
            for r0 in tl.static_range(0, R, RC):
                r = r0 + tl.arange(0, RC)
                onehot = tl.where(r[:, None] == cell0, 1.0 - t, 0.0) + tl.where(r[:, None] == cell0 + 1, t, 0.0)
                rm = (r < R)[:, None]
                if C >= 16:
                    gu = tl.dot(onehot, du, input_precision="tf32x3")
                    gv = tl.dot(onehot, dv, input_precision="tf32x3")
                    off = base + (r * (2 * C))[:, None] + c[None, :]
                    tl.atomic_add(gptr + off, gu, mask=rm, sem="relaxed")
                    tl.atomic_add(gptr + off + C, gv, mask=rm, sem="relaxed")
                else:
                    # fewer than 16 channels: u and v side by side ([BLOCK_Q, 2C], column 2c + half) make one
                    # product wide enough for the tensor cores
                    guv = tl.dot(onehot, tl.reshape(tl.join(du, dv), (BLOCK_Q, 2 * C)), input_precision="tf32x3")
                    j = tl.arange(0, 2 * C)
                    off = base + (r * (2 * C))[:, None] + ((j % 2) * C + j // 2)[None, :]
                    tl.atomic_add(gptr + off, guv, mask=rm, sem="relaxed")
        else:
            o0 = _line_offsets(a, seg, nseg, i0, c, R, C)
            t = w[:, None]
            tl.atomic_add(gptr + o0, du * (1.0 - t), mask=m, sem="relaxed")
            tl.atomic_add(gptr + o0 + C, dv * (1.0 - t), mask=m, sem="relaxed")
            tl.atomic_add(gptr + o0 + 2 * C, du * t, mask=m, sem="relaxed")
            tl.atomic_add(gptr + o0 + 3 * C, dv * t, mask=m, sem="relaxed")

    @triton.jit(do_not_specialize=["nblocks", "nseg"])
    def _backward_kernel(xyz_ptr, pts_ptr, blocks_ptr, sp_ptr, ln_ptr, gout_ptr, gsp_ptr, gln_ptr, gq_ptr,
                         nblocks, nseg, gout_stride, col0,
                         ACCUM: tl.constexpr, R: tl.constexpr, C: tl.constexpr, BLOCK_Q: tl.constexpr,
                         RC: tl.constexpr, LINE_DOT: tl.constexpr, SPATIAL_DOT: tl.constexpr):
        pid = tl.program_id(0)
        lane, seg, out0, valid, x, y, z = _load_query(xyz_ptr, pts_ptr, blocks_ptr, nblocks, pid, BLOCK_Q)
        c = tl.arange(0, C)
        m = valid[:, None]
        ix, wx, gx = _axis(x, R)
        iy, wy, gy = _axis(y, R)
        iz, wz, gz = _axis(z, R)
        rows = (out0 + lane).to(tl.int64)
        g = tl.load(gout_ptr + (rows * gout_stride + col0)[:, None] + c[None, :], mask=m, other=0.0)
        plane = R * R * C
        o_xy = _plane_offsets(ix, iy, c, R, C)
        o_xz = _plane_offsets(ix, iz, c, R, C)
        o_yz = _plane_offsets(iy, iz, c, R, C)
        s0, s0_x, s0_y = _plane_sample(sp_ptr, o_xy, R, C, m, wx, wy)
        s1, s1_x, s1_z = _plane_sample(sp_ptr + plane, o_xz, R, C, m, wx, wz)
        s2, s2_y, s2_z = _plane_sample(sp_ptr + 2 * plane, o_yz, R, C, m, wy, wz)
        o_x = _line_offsets(0, seg, nseg, ix, c, R, C)
        o_y = _line_offsets(1, seg, nseg, iy, c, R, C)
        o_z = _line_offsets(2, seg, nseg, iz, c, R, C)
        ux, vx, ux_x, vx_x = _line_sample(ln_ptr, o_x, C, m, wx)
        uy, vy, uy_y, vy_y = _line_sample(ln_ptr, o_y, C, m, wy)
        uz, vz, uz_z, vz_z = _line_sample(ln_ptr, o_z, C, m, wz)
        # d feat / d factor = product of the other eight factors (prefix x suffix products: no division)
        p1 = s0
        p2 = p1 * s1
        p3 = p2 * s2
        p4 = p3 * ux
        p5 = p4 * vx
        p6 = p5 * uy
        p7 = p6 * vy
        p8 = p7 * uz
        q7 = vz
        q6 = uz * q7
        q5 = vy * q6
        q4 = uy * q5
        q3 = vx * q4
        q2 = ux * q3
        q1 = s2 * q2
        q0 = s1 * q1
        d_s0 = g * q0
        d_s1 = g * (p1 * q1)
        d_s2 = g * (p2 * q2)
        d_ux = g * (p3 * q3)
        d_vx = g * (p4 * q4)
        d_uy = g * (p5 * q5)
        d_vy = g * (p6 * q6)
        d_uz = g * (p7 * q7)
        d_vz = g * p8
        # coordinates: chain rule through every sample that depends on the axis
        gqx = tl.sum(d_s0 * s0_x + d_s1 * s1_x + d_ux * ux_x + d_vx * vx_x, axis=1) * gx
        gqy = tl.sum(d_s0 * s0_y + d_s2 * s2_y + d_uy * uy_y + d_vy * vy_y, axis=1) * gy
        gqz = tl.sum(d_s1 * s1_z + d_s2 * s2_z + d_uz * uz_z + d_vz * vz_z, axis=1) * gz
        q = (pid * BLOCK_Q + lane).to(tl.int64) * 3
        if ACCUM:
            gqx += tl.load(gq_ptr + q)
            gqy += tl.load(gq_ptr + q + 1)
            gqz += tl.load(gq_ptr + q + 2)
        tl.store(gq_ptr + q, gqx)
        tl.store(gq_ptr + q + 1, gqy)
        tl.store(gq_ptr + q + 2, gqz)
        # planes
        _scatter_plane(gsp_ptr, o_xy, ix, iy, c, R, C, m, d_s0, wx, wy, BLOCK_Q, SPATIAL_DOT)
        _scatter_plane(gsp_ptr + plane, o_xz, ix, iz, c, R, C, m, d_s1, wx, wz, BLOCK_Q, SPATIAL_DOT)
        _scatter_plane(gsp_ptr + 2 * plane, o_yz, iy, iz, c, R, C, m, d_s2, wy, wz, BLOCK_Q, SPATIAL_DOT)
        _scatter_line(gln_ptr, 0, seg, nseg, ix, wx, c, d_ux, d_vx, m, R, C, BLOCK_Q, RC, LINE_DOT)
        _scatter_line(gln_ptr, 1, seg, nseg, iy, wy, c, d_uy, d_vy, m, R, C, BLOCK_Q, RC, LINE_DOT)
        _scatter_line(gln_ptr, 2, seg, nseg, iz, wz, c, d_uz, d_vz, m, R, C, BLOCK_Q, RC, LINE_DOT)


def _check(xyz: torch.Tensor, spatial: list[torch.Tensor], lines: list[torch.Tensor], layout: QueryLayout) -> None:
    if xyz.dtype != torch.float32 or xyz.dim() != 2 or xyz.shape[1] != 3:
        raise ValueError(f"fused field: xyz must be float32 [N, 3], got {xyz.dtype} {tuple(xyz.shape)}")
    for sp, ln in zip(spatial, lines):
        r, c = sp.shape[1], sp.shape[3]
        if sp.shape != (3, r, r, c) or ln.shape != (3, layout.num_segments, r, 2 * c):
            raise ValueError(f"fused field: spatial [3, R, R, C] and lines [3, S, R, 2C] expected, got "
                             f"{tuple(sp.shape)} and {tuple(ln.shape)} (S = {layout.num_segments})")
        if not supports(c):
            raise ValueError(f"fused field: features per plane must be a power of two, got {c}")


def supports(features_per_plane: int) -> bool:
    """Whether the kernels take planes of this many channels (a power of two: Triton's tile sizes)."""
    c = int(features_per_plane)
    return c >= 1 and c & (c - 1) == 0


def next_pow2(v: int) -> int:
    """The smallest power of two >= ``v`` (at least 1): a Triton tile's side for ``v`` masked elements."""
    return 1 << max(0, (int(v) - 1).bit_length())


def _chunk(r: int) -> int:
    # rows of the one-hot product per step: a power of two in [16, R_CHUNK] (tensor-core tiles; masked past R)
    return max(16, min(R_CHUNK, 1 << (r - 1).bit_length()))


class _FusedFeatures(torch.autograd.Function):
    @staticmethod
    def forward(ctx, xyz, layout, *planes):
        levels = len(planes) // 2
        spatial, lines = planes[:levels], planes[levels:]
        c = spatial[0].shape[3]
        out = xyz.new_empty((layout.num_out, levels * c))
        nb = layout.num_blocks
        if nb:
            for level, (sp, ln) in enumerate(zip(spatial, lines)):
                _forward_kernel[(nb,)](xyz, layout.points, layout.blocks, sp, ln, out, nb, layout.num_segments,
                                       out.stride(0), level * c, R=sp.shape[1], C=c, BLOCK_Q=BLOCK, num_warps=4)
        ctx.layout = layout
        ctx.save_for_backward(xyz, *planes)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xyz, *planes = ctx.saved_tensors
        layout = ctx.layout
        levels = len(planes) // 2
        spatial, lines = planes[:levels], planes[levels:]
        c = spatial[0].shape[3]
        grad_out = grad_out.contiguous()
        g_sp = [torch.zeros_like(sp) for sp in spatial]
        g_ln = [torch.zeros_like(ln) for ln in lines]
        nb = layout.num_blocks
        g_xyz = torch.zeros_like(xyz)
        if nb:
            g_query = xyz.new_empty((nb * BLOCK, 3))
            for level, (sp, ln) in enumerate(zip(spatial, lines)):
                r = sp.shape[1]
                _backward_kernel[(nb,)](xyz, layout.points, layout.blocks, sp, ln, grad_out, g_sp[level],
                                        g_ln[level], g_query, nb, layout.num_segments, grad_out.stride(0), level * c,
                                        ACCUM=level > 0, R=r, C=c, BLOCK_Q=BLOCK, RC=_chunk(r),
                                        LINE_DOT=r <= LINE_DOT_MAX_R and (c >= 16 or (SWITCHES.small_plane_products and 2 * c >= 16)),
                                        SPATIAL_DOT=SWITCHES.small_plane_products and r * r <= SPATIAL_DOT_MAX_CELLS and 2 * c >= 16,
                                        num_warps=4)
            g_xyz.index_add_(0, layout.points.clamp_min(0).long(), g_query)  # padding rows carry zeros
        return (g_xyz, None, *g_sp, *g_ln)


def fused_features(xyz: torch.Tensor, layout: QueryLayout, spatial: list[torch.Tensor],
                   lines: list[torch.Tensor]) -> torch.Tensor:
    """``[num_out, levels * C]``: every query's per-level product of 3 spatial and 6 line samples (module doc).

    Args:
        xyz: ``[N, 3]`` float32 grid coordinates in ``[-1, 1]`` (differentiable).
        layout: :class:`QueryLayout` of the queries (rows of ``xyz`` and their segments).
        spatial: per level ``[3, R, R, C]`` channel-last planes xy, xz, yz (plane (a, b) as ``[R_b, R_a, C]``).
        lines: per level ``[3, S, R, 2C]`` channel-last lines over x, y, z of each segment, the u line in channels
            ``[:C]`` and the v line in ``[C:]`` (the u-v plane's value folded in, as ``_Level.frame_lines``).
    """
    spatial = [t.contiguous() for t in spatial]
    lines = [t.contiguous() for t in lines]
    _check(xyz, spatial, lines, layout)
    return _FusedFeatures.apply(xyz.contiguous(), layout, *spatial, *lines)
