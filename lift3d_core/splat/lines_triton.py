"""A level's frame lines as one fused GPU kernel forward and one backward (Triton): what
:func:`lift3d_core.splat.distortion.lines.frame_lines` computes, in the layout the fused field kernels read.

For S frame codes ``(u, v)`` in ``[-1, 1]``, the frame planes ``frame [6, C, Rf, R]`` (xu, xv, yu, yv, zu, zv: row
axis the code's u or v, column axis x, y or z) interpolated at the code give six lines over the spatial axes; the
u-v plane ``uv [1, C, Rf, Rf]``'s bilinear value at ``(u, v)`` multiplies the x-u line. Output ``[3, S, R, 2C]``:
axis a, code s, cell r, channels ``[:C]`` the a-u line, ``[C:]`` the a-v line (``field_triton``'s ``lines``).

In PyTorch that is ~20 small kernels forward and ~25 backward per level, or a ``torch.compile`` graph (compile
time, and host time per call); here one program per (axis, code) computes its ``[R, 2C]`` tile, and the backward
adds each tile's gradient into the two planes' rows and the u-v plane's four corners (atomic adds; S is a handful).
Sampling follows ``grid_sample(align_corners=True, padding_mode="border")`` on codes clamped to ``[-1, 1]``.
"""

from __future__ import annotations

import torch

from lift3d_core.splat import field_triton

try:  # optional dependency: the CPU-only install may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None


def supports(frame: torch.Tensor) -> bool:
    """Whether the kernels can run for planes like ``frame [6, C, Rf, R]`` (any sizes; tiles are padded to powers of
    two and masked) on its device."""
    return frame.shape[2] >= 2 and field_triton.available(frame.device)



if triton is not None:

    @triton.jit
    def _row(t, RF: tl.constexpr):
        # align_corners lattice along the code axis: first row i0 in [0, RF - 2] and the weight of the next
        f = (tl.minimum(tl.maximum(t, -1.0), 1.0) + 1.0) * (0.5 * (RF - 1))
        i0 = tl.minimum(tl.maximum(tl.floor(f), 0.0), RF - 2.0)
        return i0.to(tl.int32), f - i0

    @triton.jit
    def _setup(codes_ptr, s, RF: tl.constexpr):
        u = tl.load(codes_ptr + s * 2)
        v = tl.load(codes_ptr + s * 2 + 1)
        iu, wu = _row(u, RF)
        iv, wv = _row(v, RF)
        return iu, wu, iv, wv

    @triton.jit
    def _plane_rows(frame_ptr, p, i0, w, cc, rr, C: tl.constexpr, RF: tl.constexpr, R: tl.constexpr):
        # plane p's rows i0 and i0 + 1 as [R, C] tiles (element (r, c) at ((p C + c) RF + i) R + r), and their lerp
        base = frame_ptr + (p * C + cc[None, :]) * (RF * R) + rr[:, None]
        m = (rr < R)[:, None] & (cc < C)[None, :]
        r0 = tl.load(base + i0 * R, mask=m, other=0.0)
        r1 = tl.load(base + (i0 + 1) * R, mask=m, other=0.0)
        return r0 + w * (r1 - r0)

    @triton.jit
    def _uv_value(uv_ptr, iu, wu, iv, wv, cc, C: tl.constexpr, RF: tl.constexpr):
        # the u-v plane [C, RF (v), RF (u)] at (u, v), bilinear: [C]
        base = uv_ptr + cc * (RF * RF)
        m = cc < C
        v00 = tl.load(base + iv * RF + iu, mask=m, other=0.0)
        v10 = tl.load(base + iv * RF + iu + 1, mask=m, other=0.0)
        v01 = tl.load(base + (iv + 1) * RF + iu, mask=m, other=0.0)
        v11 = tl.load(base + (iv + 1) * RF + iu + 1, mask=m, other=0.0)
        return (1.0 - wu) * (1.0 - wv) * v00 + wu * (1.0 - wv) * v10 + (1.0 - wu) * wv * v01 + wu * wv * v11

    @triton.jit
    def _program(codes_ptr, S, C: tl.constexpr, RF: tl.constexpr, R: tl.constexpr, CP: tl.constexpr,
                 RP: tl.constexpr):
        # this program's axis a (and code s), its [RP, CP] tile (indices, mask, offsets into [3, S, R, 2C]) and rows
        a = tl.program_id(0)
        s = tl.program_id(1)
        cc = tl.arange(0, CP)
        rr = tl.arange(0, RP)
        m = (rr < R)[:, None] & (cc < C)[None, :]
        tile = ((a * S + s) * R + rr[:, None]) * (2 * C) + cc[None, :]
        iu, wu, iv, wv = _setup(codes_ptr, s, RF)
        return a, cc, rr, m, tile, iu, wu, iv, wv

    @triton.jit
    def _lines_forward(frame_ptr, uv_ptr, codes_ptr, out_ptr, S, C: tl.constexpr, RF: tl.constexpr,
                       R: tl.constexpr, CP: tl.constexpr, RP: tl.constexpr):
        a, cc, rr, m, tile, iu, wu, iv, wv = _program(codes_ptr, S, C, RF, R, CP, RP)
        lu = _plane_rows(frame_ptr, 2 * a, iu, wu, cc, rr, C, RF, R)
        lv = _plane_rows(frame_ptr, 2 * a + 1, iv, wv, cc, rr, C, RF, R)
        if a == 0:
            lu = lu * _uv_value(uv_ptr, iu, wu, iv, wv, cc, C, RF)[None, :]
        out = out_ptr + tile
        tl.store(out, lu, mask=m)
        tl.store(out + C, lv, mask=m)

    @triton.jit
    def _add_rows(gframe_ptr, p, i0, w, g, cc, rr, C: tl.constexpr, RF: tl.constexpr, R: tl.constexpr):
        base = gframe_ptr + (p * C + cc[None, :]) * (RF * R) + rr[:, None]
        m = (rr < R)[:, None] & (cc < C)[None, :]
        tl.atomic_add(base + i0 * R, (1.0 - w) * g, mask=m, sem="relaxed")
        tl.atomic_add(base + (i0 + 1) * R, w * g, mask=m, sem="relaxed")

    @triton.jit
    def _lines_backward(frame_ptr, uv_ptr, codes_ptr, g_ptr, gframe_ptr, guv_ptr, S, C: tl.constexpr,
                        RF: tl.constexpr, R: tl.constexpr, CP: tl.constexpr, RP: tl.constexpr):
        a, cc, rr, m, tile, iu, wu, iv, wv = _program(codes_ptr, S, C, RF, R, CP, RP)
        g = g_ptr + tile
        gu = tl.load(g, mask=m, other=0.0)
        gv = tl.load(g + C, mask=m, other=0.0)
        if a == 0:
            value = _uv_value(uv_ptr, iu, wu, iv, wv, cc, C, RF)
            # the u-v value's gradient: the x-u line's gradient times the line before the factor, summed over cells
            lu = _plane_rows(frame_ptr, 0, iu, wu, cc, rr, C, RF, R)
            gval = tl.sum(gu * lu, axis=0)  # [C]
            base = guv_ptr + cc * (RF * RF)
            mc = cc < C
            tl.atomic_add(base + iv * RF + iu, (1.0 - wu) * (1.0 - wv) * gval, mask=mc, sem="relaxed")
            tl.atomic_add(base + iv * RF + iu + 1, wu * (1.0 - wv) * gval, mask=mc, sem="relaxed")
            tl.atomic_add(base + (iv + 1) * RF + iu, (1.0 - wu) * wv * gval, mask=mc, sem="relaxed")
            tl.atomic_add(base + (iv + 1) * RF + iu + 1, wu * wv * gval, mask=mc, sem="relaxed")
            gu = gu * value[None, :]
        _add_rows(gframe_ptr, 2 * a, iu, wu, gu, cc, rr, C, RF, R)
        _add_rows(gframe_ptr, 2 * a + 1, iv, wv, gv, cc, rr, C, RF, R)


class _Lines(torch.autograd.Function):
    @staticmethod
    def forward(ctx, frame, uv, codes):
        _, c, rf, r = frame.shape
        s = codes.shape[0]
        frame, uv = frame.detach().contiguous(), uv.detach().contiguous()
        codes = codes.detach().float().contiguous()
        out = frame.new_empty((3, s, r, 2 * c))
        if s:
            _lines_forward[(3, s)](frame, uv, codes, out, s, C=c, RF=rf, R=r, CP=field_triton.next_pow2(c),
                                   RP=field_triton.next_pow2(r), num_warps=1)
        ctx.save_for_backward(frame, uv, codes)
        return out

    @staticmethod
    def backward(ctx, grad):
        frame, uv, codes = ctx.saved_tensors
        _, c, rf, r = frame.shape
        s = codes.shape[0]
        g_frame = torch.zeros_like(frame)
        g_uv = torch.zeros_like(uv)
        if s:
            _lines_backward[(3, s)](frame, uv, codes, grad.contiguous(), g_frame, g_uv, s, C=c, RF=rf, R=r,
                                    CP=field_triton.next_pow2(c), RP=field_triton.next_pow2(r), num_warps=1)
        return g_frame, g_uv, None


def kernel_lines(frame: torch.Tensor, uv: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``[3, S, R, 2C]``: the frame planes ``frame [6, C, Rf, R]`` and the u-v plane ``uv [1, C, Rf, Rf]`` at
    ``codes [S, 2]`` (in [-1, 1], constants), as ``distortion.lines._kernel_lines`` lays one level out; differentiable
    with respect to both planes."""
    return _Lines.apply(frame, uv, codes)


__all__ = ["kernel_lines", "supports"]
