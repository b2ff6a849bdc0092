"""The distortion field's MLP as one fused GPU kernel forward and one backward (Triton), for ``params.yaml``'s small
field: a single position head on a one-layer feature net.

:meth:`DistortionField.decode` for that shape is, per query row ``x [F]`` (``F = features_per_plane x levels``)::

    h1 = act(W1 x + b1)          # feature_net (one Linear, F -> W) and the activation decode applies after it
    h2 = act(W2 h1 + b2)         # the position head's first Linear (W -> W) and activation
    o  = W3 h2 + b3              # its last Linear (W -> 3)
    d  = m tanh(o / m)           # max_offset's bound (identity without one)

Run by PyTorch that is about a dozen kernels forward and twenty backward, or a ``torch.compile`` graph that costs
tens of seconds to compile and ~1 ms of host time per call each way; the fine step is bound by its host
(``bench/RESULTS.md``, session 14). Here a block of rows goes through all three layers in registers, on tensor
cores; the backward recomputes the forward and accumulates the weights' gradients per program (a fixed number
of programs looping over row blocks), summed once at the end: no atomics, no intermediate in memory.

``bf16``: the products take bfloat16 operands with float32 accumulation and each layer's output is rounded to
bfloat16, as ``torch.autocast`` runs the MLP on CUDA (``field_mlp_dtype: auto``); otherwise float32 (IEEE
products: Triton's interpreter, which cannot multiply bfloat16, checks this path on the CPU). Inner sizes are
padded to 16 (the tensor cores' minimum) with zeros, which change nothing.
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

_BLOCK_M = 64  # rows per block
_MAX_PROGRAMS = 1024  # backward programs (each sums its blocks' weight gradients)


def supports(field) -> bool:
    """Whether ``field`` (a :class:`~lift3d_core.splat.distortion.DistortionField`) has the shape these kernels
    compute: only the position head, a one-layer feature net, widths powers of two up to 64 (features up to 16),
    ReLU or SiLU; and they can run on its device."""
    cfg = field.cfg

    def pow2(v: int) -> bool:
        return v >= 1 and v & (v - 1) == 0

    return (list(field.heads) == ["position"] and cfg.net_depth == 1 and cfg.activation in ("relu", "silu")
            and pow2(cfg.net_width) and 16 <= cfg.net_width <= 64 and cfg.feature_dim <= 16
            and field_triton.available(field.bounds_lo.device))


if triton is not None:

    @triton.jit
    def _sigmoid(a):
        # from exp(-|a|) (no overflow), as PyTorch's SiLU
        e = tl.exp(-tl.abs(a))
        return tl.where(a >= 0.0, 1.0 / (1.0 + e), e / (1.0 + e))

    @triton.jit
    def _act(a, SILU: tl.constexpr):
        if SILU:
            return a * _sigmoid(a)
        return tl.maximum(a, 0.0)

    @triton.jit
    def _act_grad(a, SILU: tl.constexpr):
        if SILU:
            s = _sigmoid(a)
            return s * (1.0 + a * (1.0 - s))
        return tl.where(a > 0.0, 1.0, 0.0)

    @triton.jit
    def _tanh(y):
        # tanh from exp(-2|y|): no overflow, and accurate near 0 (where 2 sigmoid(2y) - 1 cancels)
        e = tl.exp(-2.0 * tl.abs(y))
        t = (1.0 - e) / (1.0 + e)
        return tl.where(y < 0.0, -t, t)

    @triton.jit
    def _mm(a, b, BF16: tl.constexpr):
        if BF16:
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
        return tl.dot(a, b, input_precision="ieee")

    @triton.jit
    def _round(a, BF16: tl.constexpr):
        # a layer's output as autocast stores it
        if BF16:
            return a.to(tl.bfloat16).to(tl.float32)
        return a

    @triton.jit
    def _load_weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, F, FP: tl.constexpr, W: tl.constexpr,
                      OP: tl.constexpr, BF16: tl.constexpr):
        # the layers transposed for row-vector products and padded with zeros: w1 [FP, W], w2 [W, W], w3 [W, OP]
        fi = tl.arange(0, FP)
        wi = tl.arange(0, W)
        oi = tl.arange(0, OP)
        w1 = tl.load(w1_ptr + wi[None, :] * F + fi[:, None], mask=(fi < F)[:, None], other=0.0)
        w2 = tl.load(w2_ptr + wi[None, :] * W + wi[:, None])
        w3 = tl.load(w3_ptr + oi[None, :] * W + wi[:, None], mask=(oi < 3)[None, :], other=0.0)
        b1 = tl.load(b1_ptr + wi)
        b2 = tl.load(b2_ptr + wi)
        b3 = tl.load(b3_ptr + oi, mask=oi < 3, other=0.0)
        # autocast casts a Linear's bias to bfloat16 too (the weights are cast at the products)
        return w1, _round(b1, BF16), w2, _round(b2, BF16), w3, _round(b3, BF16)

    @triton.jit
    def _forward_rows(x, w1, b1, w2, b2, w3, b3, SILU: tl.constexpr, BF16: tl.constexpr):
        a1 = _round(_mm(x, w1, BF16) + b1[None, :], BF16)
        h1 = _round(_act(a1, SILU), BF16)
        a2 = _round(_mm(h1, w2, BF16) + b2[None, :], BF16)
        h2 = _round(_act(a2, SILU), BF16)
        o = _round(_mm(h2, w3, BF16) + b3[None, :], BF16)
        return a1, h1, a2, h2, o

    @triton.jit
    def _load_rows(x_ptr, rows, q, F, sx0, sx1, FP: tl.constexpr):
        fi = tl.arange(0, FP)
        return tl.load(x_ptr + rows[:, None] * sx0 + fi[None, :] * sx1, mask=(rows < q)[:, None] & (fi < F)[None, :],
                       other=0.0)

    @triton.jit(do_not_specialize=["q", "sx0", "sx1"])
    def _mlp_forward(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, out_ptr, q, F, sx0, sx1, bound,
                     FP: tl.constexpr, W: tl.constexpr, OP: tl.constexpr, BM: tl.constexpr, SILU: tl.constexpr,
                     BF16: tl.constexpr, BOUND: tl.constexpr):
        rows = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
        w1, b1, w2, b2, w3, b3 = _load_weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, F, FP, W, OP, BF16)
        x = _load_rows(x_ptr, rows, q, F, sx0, sx1, FP)
        _, _, _, _, o = _forward_rows(x, w1, b1, w2, b2, w3, b3, SILU, BF16)
        if BOUND:
            o = bound * _tanh(o / bound)
        oi = tl.arange(0, OP)
        tl.store(out_ptr + rows[:, None] * 3 + oi[None, :], o, mask=(rows < q)[:, None] & (oi < 3)[None, :])

    @triton.jit(do_not_specialize=["q", "sx0", "sx1", "nblocks"])
    def _mlp_backward(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, g_ptr, gx_ptr, part_ptr, q, F, sx0,
                      sx1, bound, nblocks, FP: tl.constexpr, W: tl.constexpr, OP: tl.constexpr, BM: tl.constexpr,
                      SILU: tl.constexpr, BF16: tl.constexpr, BOUND: tl.constexpr):
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        w1, b1, w2, b2, w3, b3 = _load_weights(w1_ptr, b1_ptr, w2_ptr, b2_ptr, w3_ptr, b3_ptr, F, FP, W, OP, BF16)
        fi = tl.arange(0, FP)
        wi = tl.arange(0, W)
        oi = tl.arange(0, OP)
        gw1 = tl.zeros((FP, W), tl.float32)
        gw2 = tl.zeros((W, W), tl.float32)
        gw3 = tl.zeros((W, OP), tl.float32)
        gb1 = tl.zeros((W,), tl.float32)
        gb2 = tl.zeros((W,), tl.float32)
        gb3 = tl.zeros((OP,), tl.float32)
        for blk in tl.range(pid, nblocks, nprog):
            rows = (blk * BM + tl.arange(0, BM)).to(tl.int64)
            valid = rows < q
            x = _load_rows(x_ptr, rows, q, F, sx0, sx1, FP)
            a1, h1, a2, h2, o = _forward_rows(x, w1, b1, w2, b2, w3, b3, SILU, BF16)
            g3 = tl.load(g_ptr + rows[:, None] * 3 + oi[None, :], mask=valid[:, None] & (oi < 3)[None, :], other=0.0)
            if BOUND:
                t = _tanh(o / bound)
                g3 = g3 * (1.0 - t * t)
            gw3 += _mm(tl.trans(h2), g3, BF16)
            gb3 += tl.sum(g3, axis=0)
            g2 = _mm(g3, tl.trans(w3), BF16) * _act_grad(a2, SILU)
            gw2 += _mm(tl.trans(h1), g2, BF16)
            gb2 += tl.sum(g2, axis=0)
            g1 = _mm(g2, tl.trans(w2), BF16) * _act_grad(a1, SILU)
            gw1 += _mm(tl.trans(x), g1, BF16)
            gb1 += tl.sum(g1, axis=0)
            gx = _mm(g1, tl.trans(w1), BF16)
            tl.store(gx_ptr + rows[:, None] * FP + fi[None, :], gx, mask=valid[:, None])
        # this program's sums: w1 [FP, W], b1 [W], w2 [W, W], b2 [W], w3 [W, OP], b3 [OP], one row of the partials
        base = part_ptr + pid.to(tl.int64) * (FP * W + W + W * W + W + W * OP + OP)
        tl.store(base + fi[:, None] * W + wi[None, :], gw1)
        base += FP * W
        tl.store(base + wi, gb1)
        base += W
        tl.store(base + wi[:, None] * W + wi[None, :], gw2)
        base += W * W
        tl.store(base + wi, gb2)
        base += W
        tl.store(base + wi[:, None] * OP + oi[None, :], gw3)
        base += W * OP
        tl.store(base + oi, gb3)


def _sizes(feats: torch.Tensor, width: int) -> tuple[int, int, int, int]:
    f = feats.shape[1]
    return f, 16, width, 16  # F, FP, W, OP


class _FusedMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feats, w1, b1, w2, b2, w3, b3, bound, silu, bf16):
        q = feats.shape[0]
        f, fp, width, op = _sizes(feats, w2.shape[0])
        params = [t.detach().float().contiguous() for t in (w1, b1, w2, b2, w3, b3)]
        out = feats.new_empty((q, 3), dtype=torch.float32)
        if q:
            _mlp_forward[(triton.cdiv(q, _BLOCK_M),)](feats, *params, out, q, f, feats.stride(0), feats.stride(1),
                                                      float(bound or 1.0), FP=fp, W=width, OP=op, BM=_BLOCK_M,
                                                      SILU=silu, BF16=bf16, BOUND=bound is not None, num_warps=4)
        ctx.save_for_backward(feats, *params)
        ctx.settings = (bound, silu, bf16)
        return out

    @staticmethod
    def backward(ctx, grad):
        feats, *params = ctx.saved_tensors
        bound, silu, bf16 = ctx.settings
        q = feats.shape[0]
        f, fp, width, op = _sizes(feats, params[2].shape[0])
        nblocks = triton.cdiv(q, _BLOCK_M)
        programs = max(1, min(nblocks, _MAX_PROGRAMS))
        size = fp * width + width + width * width + width + width * op + op
        parts = feats.new_empty((programs, size), dtype=torch.float32)  # every program writes its whole row
        gx = feats.new_empty((q, fp), dtype=torch.float32)
        if q:
            _mlp_backward[(programs,)](feats, *params, grad.float().contiguous(), gx, parts, q, f, feats.stride(0),
                                       feats.stride(1), float(bound or 1.0), nblocks, FP=fp, W=width, OP=op,
                                       BM=_BLOCK_M, SILU=silu, BF16=bf16, BOUND=bound is not None, num_warps=4)
        total = parts.sum(0)
        pieces = total.split([fp * width, width, width * width, width, width * op, op])
        g_w1 = pieces[0].view(fp, width)[:f].t()  # [W, F] as the Linear stores it
        g_w2 = pieces[2].view(width, width).t()
        g_w3 = pieces[4].view(width, op)[:, :3].t()
        g_b3 = pieces[5][:3]
        g_x = gx[:, :f] if ctx.needs_input_grad[0] else None
        return g_x, g_w1, pieces[1], g_w2, pieces[3], g_w3, g_b3, None, None, None


def decode_position(field, feats: torch.Tensor) -> torch.Tensor:
    """``[M, 3]`` position offsets of features ``feats [M, feature_dim]`` through ``field``'s MLP and position head
    (the module docstring's computation, bounded by ``max_offset``), forward and backward in one kernel each.
    ``field`` must satisfy :func:`supports`; ``field.mlp_dtype`` bfloat16 selects the bfloat16 products."""
    lin1 = field.feature_net[0]
    if feats.dim() != 2 or feats.shape[1] != lin1.in_features:
        raise ValueError(f"fused MLP: features must be [M, {lin1.in_features}], got {tuple(feats.shape)}")
    head = field.heads["position"]
    lin2, lin3 = head[1], head[3]
    bf16 = field.mlp_dtype == torch.bfloat16
    return _FusedMLP.apply(feats.float(), lin1.weight, lin1.bias, lin2.weight, lin2.bias, lin3.weight, lin3.bias,
                           field.cfg.max_offset, field.cfg.activation == "silu", bf16)


__all__ = ["decode_position", "supports"]
