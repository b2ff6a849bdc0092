"""The field's plane regularisers with their gradients as one GPU kernel per plane group (Triton): what
:func:`lift3d_core.splat.field_penalties.field_regularisers` computes (by autograd: ~20 small kernels per group
forward and as many backward, or a ``torch.compile`` graph), with the gradients written out.

A group ``[P, C, H, W]`` (per level: spatial, frame, u-v, in ``GROUPS`` order) contributes, with ``n`` the element
count of the difference taken:

* total variation: ``P * mean(d^2)`` of its first differences along H and along W;
* smoothness (frame and u-v groups): ``P * mean(d2^2)`` of its second differences along H (frame) or H and W (u-v);
* L1 to one (frame and u-v groups): ``P * mean(|1 - x|)``.

One program per ``(p, c)`` slice holds the ``[H, W]`` tile, adds its share of the three values into a 3-float
output (atomic adds) and writes the three gradients of its elements, ``[3, P, C, H, W]`` (a difference's adjoint
is a shifted difference, as in the closed form).
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


if triton is not None:

    @triton.jit
    def _at(ptr, base, i, j, H: tl.constexpr, W: tl.constexpr):
        # the slice's element (i, j), 0 outside the slice
        m = (i >= 0) & (i < H) & (j >= 0) & (j < W)
        return tl.load(ptr + base + i * W + j, mask=m, other=0.0)

    @triton.jit
    def _regularisers_kernel(x_ptr, out_ptr, grad_ptr, numel, p_count, n_th, n_tw, n_sh, n_sw, KIND: tl.constexpr,
                             H: tl.constexpr, W: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
        sl = tl.program_id(0)
        base = sl * (H * W)
        i = tl.arange(0, HP)[:, None]
        j = tl.arange(0, WP)[None, :]
        inside = (i < H) & (j < W)
        x = _at(x_ptr, base, i, j, H, W)
        # total variation along H: d[i] = x[i + 1] - x[i] for i < H - 1; gradient 2 P / n (d[i - 1] - d[i])
        dh = tl.where((i < H - 1) & (j < W), _at(x_ptr, base, i + 1, j, H, W) - x, 0.0)
        dh_prev = tl.where((i >= 1) & (i < H) & (j < W), x - _at(x_ptr, base, i - 1, j, H, W), 0.0)
        dw = tl.where((j < W - 1) & (i < H), _at(x_ptr, base, i, j + 1, H, W) - x, 0.0)
        dw_prev = tl.where((j >= 1) & (j < W) & (i < H), x - _at(x_ptr, base, i, j - 1, H, W), 0.0)
        tv = p_count * (tl.sum(dh * dh) / n_th + tl.sum(dw * dw) / n_tw)
        g_tv = 2.0 * p_count * ((dh_prev - dh) / n_th + (dw_prev - dw) / n_tw)
        tl.atomic_add(out_ptr, tv, sem="relaxed")
        g_sm = tl.zeros((HP, WP), tl.float32)
        g_l1 = tl.zeros((HP, WP), tl.float32)
        if KIND > 0:
            # second differences d2[i] = x[i + 2] - 2 x[i + 1] + x[i] (i < H - 2); the adjoint at element i gathers
            # d2[i - 2] - 2 d2[i - 1] + d2[i]
            sm = 0.0
            if H >= 3:
                d2 = _at(x_ptr, base, i + 2, j, H, W) - 2.0 * _at(x_ptr, base, i + 1, j, H, W) + x
                d2 = tl.where((i < H - 2) & (j < W), d2, 0.0)
                sm += tl.sum(d2 * d2) / n_sh
                g_sm += _second_adjoint_h(x_ptr, base, i, j, H, W) * (2.0 * p_count / n_sh)
            if KIND == 2 and W >= 3:
                d2w = _at(x_ptr, base, i, j + 2, H, W) - 2.0 * _at(x_ptr, base, i, j + 1, H, W) + x
                d2w = tl.where((j < W - 2) & (i < H), d2w, 0.0)
                sm += tl.sum(d2w * d2w) / n_sw
                g_sm += _second_adjoint_w(x_ptr, base, i, j, H, W) * (2.0 * p_count / n_sw)
            tl.atomic_add(out_ptr + 1, p_count * sm, sem="relaxed")
            r = tl.where(inside, 1.0 - x, 0.0)
            tl.atomic_add(out_ptr + 2, p_count * tl.sum(tl.abs(r)) / numel, sem="relaxed")
            g_l1 = tl.where(r > 0.0, -1.0, tl.where(r < 0.0, 1.0, 0.0)) * (p_count / numel)
        offs = base + i * W + j
        tl.store(grad_ptr + offs, g_tv, mask=inside)
        tl.store(grad_ptr + numel + offs, g_sm, mask=inside)
        tl.store(grad_ptr + 2 * numel + offs, g_l1, mask=inside)

    @triton.jit
    def _d2h(x_ptr, base, i, j, H: tl.constexpr, W: tl.constexpr):
        # the second difference along H starting at row i (0 where it does not exist)
        v = _at(x_ptr, base, i + 2, j, H, W) - 2.0 * _at(x_ptr, base, i + 1, j, H, W) + _at(x_ptr, base, i, j, H, W)
        return tl.where((i >= 0) & (i < H - 2) & (j >= 0) & (j < W), v, 0.0)

    @triton.jit
    def _d2w(x_ptr, base, i, j, H: tl.constexpr, W: tl.constexpr):
        v = _at(x_ptr, base, i, j + 2, H, W) - 2.0 * _at(x_ptr, base, i, j + 1, H, W) + _at(x_ptr, base, i, j, H, W)
        return tl.where((j >= 0) & (j < W - 2) & (i >= 0) & (i < H), v, 0.0)

    @triton.jit
    def _second_adjoint_h(x_ptr, base, i, j, H: tl.constexpr, W: tl.constexpr):
        return _d2h(x_ptr, base, i - 2, j, H, W) - 2.0 * _d2h(x_ptr, base, i - 1, j, H, W) + _d2h(x_ptr, base, i, j, H, W)

    @triton.jit
    def _second_adjoint_w(x_ptr, base, i, j, H: tl.constexpr, W: tl.constexpr):
        return _d2w(x_ptr, base, i, j - 2, H, W) - 2.0 * _d2w(x_ptr, base, i, j - 1, H, W) + _d2w(x_ptr, base, i, j, H, W)


def _group(group: torch.Tensor, kind: int, out: torch.Tensor) -> torch.Tensor:
    """Adds the group's three values into ``out [3]`` and returns its gradients ``[3, P, C, H, W]``."""
    p, c, h, w = group.shape
    x = group.detach().float().contiguous()
    grads = torch.empty((3, *x.shape), dtype=torch.float32, device=x.device)
    count = p * c

    def n(k: int, axis: str) -> float:
        size = (h - k) * w if axis == "h" else h * (w - k)
        return float(max(count * size, 1))

    _regularisers_kernel[(count,)](x, out, grads, x.numel(), float(p), n(1, "h"), n(1, "w"), n(2, "h"), n(2, "w"),
                                   KIND=kind, H=h, W=w, HP=field_triton.next_pow2(h), WP=field_triton.next_pow2(w), num_warps=1)
    return grads


class _Regularisers(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *groups):
        out = torch.zeros(3, dtype=torch.float32, device=groups[0].device)
        ctx.grads = [_group(g, k % 3, out) for k, g in enumerate(groups)]
        return out[0], out[1], out[2]

    @staticmethod
    def backward(ctx, g_tv, g_sm, g_l1):
        weights = torch.stack([g_tv, g_sm, g_l1]).view(3, 1, 1, 1, 1)
        return tuple((grads * weights).sum(0) for grads in ctx.grads)


def regularisers(groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tv, smoothness, frame_l1) of the field's plane groups (``DistortionField.grid_parameters()``: per level
    spatial, frame, u-v), differentiable; the values and gradients of ``field_penalties._all_regularisers``."""
    return _Regularisers.apply(*groups)


__all__ = ["regularisers"]
