"""Fused GPU kernels (Triton) for the distortion-aware step's per-(frame, Gaussian) camera arithmetic: which centres
a frame's field offsets apply to (:func:`visible_mask`) and how many pixels an offset moves its centre
(:func:`projected_offset_px`, the ``offset_image_weight`` price).

In PyTorch each is a chain of ~15-25 element-wise kernels over ``[B, N]`` (and ~35 more for the price's backward,
one autograd node each); on a GPU the step launches them faster than they run only if the host keeps up, and it
does not (``bench/RESULTS.md``, session 14: the fine step is bound by the host). Here each is one kernel, and the
price's backward one more. Values equal :func:`lift3d_core.splat.field_terms.projected_offset_px` and
``DistortionTrainer._visible_batch``'s reference up to float rounding (``tests/test_image_motion_triton.py`` runs
the kernels in Triton's CPU interpreter).

Conventions: centres ``means [N, 3]`` (world, no gradient), cameras ``viewmats [B, 4, 4]`` world-to-camera (OpenCV:
+z forward), ``Ks [B, 3, 3]`` in pixels; outputs are ``[B, N]``, frame-major.
"""

from __future__ import annotations

import torch

try:  # optional dependency: the CPU-only install may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

_BLOCK = 1024


def _cameras(viewmats: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """``[B, 16]`` float32 per frame: R row-major (9), t (3), fx, fy, cx, cy."""
    R = viewmats[:, :3, :3].reshape(-1, 9)
    t = viewmats[:, :3, 3]
    k = torch.stack([Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]], dim=1)
    return torch.cat([R, t, k], dim=1).float().contiguous()


if triton is not None:

    @triton.jit
    def _camera_point(cam_ptr, b, mx, my, mz, mask):
        # the centre in camera axes, and the frame's rotation (rows) and focal lengths
        base = cam_ptr + b * 16
        r00 = tl.load(base + 0, mask=mask, other=1.0)
        r01 = tl.load(base + 1, mask=mask, other=0.0)
        r02 = tl.load(base + 2, mask=mask, other=0.0)
        r10 = tl.load(base + 3, mask=mask, other=0.0)
        r11 = tl.load(base + 4, mask=mask, other=1.0)
        r12 = tl.load(base + 5, mask=mask, other=0.0)
        r20 = tl.load(base + 6, mask=mask, other=0.0)
        r21 = tl.load(base + 7, mask=mask, other=0.0)
        r22 = tl.load(base + 8, mask=mask, other=1.0)
        cx = r00 * mx + r01 * my + r02 * mz + tl.load(base + 9, mask=mask, other=0.0)
        cy = r10 * mx + r11 * my + r12 * mz + tl.load(base + 10, mask=mask, other=0.0)
        cz = r20 * mx + r21 * my + r22 * mz + tl.load(base + 11, mask=mask, other=1.0)
        return cx, cy, cz, r00, r01, r02, r10, r11, r12, r20, r21, r22

    @triton.jit
    def _load_centres(means_ptr, n, total, BLOCK: tl.constexpr):
        # this program's (frame, centre) pairs, frame-major (pair i = frame b, centre i - b n): frame and centre
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = i < total
        b = i // n
        p = i - b * n
        mx = tl.load(means_ptr + p * 3, mask=mask, other=0.0)
        my = tl.load(means_ptr + p * 3 + 1, mask=mask, other=0.0)
        mz = tl.load(means_ptr + p * 3 + 2, mask=mask, other=0.0)
        return i, mask, b, mx, my, mz

    @triton.jit(do_not_specialize=["n", "total"])
    def _mask_kernel(means_ptr, cam_ptr, out_ptr, n, total, width, height, mu, mv, BLOCK: tl.constexpr):
        i, mask, b, mx, my, mz = _load_centres(means_ptr, n, total, BLOCK)
        cx, cy, cz, _, _, _, _, _, _, _, _, _ = _camera_point(cam_ptr, b, mx, my, mz, mask)
        fx = tl.load(cam_ptr + b * 16 + 12, mask=mask, other=1.0)
        fy = tl.load(cam_ptr + b * 16 + 13, mask=mask, other=1.0)
        px = tl.load(cam_ptr + b * 16 + 14, mask=mask, other=0.0)
        py = tl.load(cam_ptr + b * 16 + 15, mask=mask, other=0.0)
        z = tl.maximum(cz, 1e-6)
        u = fx * cx / z + px
        v = fy * cy / z + py
        ok = (cz > 1e-3) & (u > -mu) & (u < width + mu) & (v > -mv) & (v < height + mv)
        tl.store(out_ptr + i, ok.to(tl.int8), mask=mask)

    @triton.jit
    def _motion(cam_ptr, b, mx, my, mz, dx, dy, dz, mask):
        cx, cy, cz, r00, r01, r02, r10, r11, r12, r20, r21, r22 = _camera_point(cam_ptr, b, mx, my, mz, mask)
        fx = tl.load(cam_ptr + b * 16 + 12, mask=mask, other=1.0)
        fy = tl.load(cam_ptr + b * 16 + 13, mask=mask, other=1.0)
        ex = r00 * dx + r01 * dy + r02 * dz
        ey = r10 * dx + r11 * dy + r12 * dz
        ez = r20 * dx + r21 * dy + r22 * dz
        zi = tl.where(cz > 1e-3, 1.0 / tl.maximum(cz, 1e-3), 0.0)
        du = fx * zi * (ex - cx * zi * ez)
        dv = fy * zi * (ey - cy * zi * ez)
        return du, dv, cx, cy, zi, fx, fy, r00, r01, r02, r10, r11, r12, r20, r21, r22

    @triton.jit
    def _load_offsets(means_ptr, d_ptr, n, total, BLOCK: tl.constexpr):
        # this program's (frame, centre) pairs with their offsets
        i, mask, b, mx, my, mz = _load_centres(means_ptr, n, total, BLOCK)
        dx = tl.load(d_ptr + i * 3, mask=mask, other=0.0)
        dy = tl.load(d_ptr + i * 3 + 1, mask=mask, other=0.0)
        dz = tl.load(d_ptr + i * 3 + 2, mask=mask, other=0.0)
        return i, mask, b, mx, my, mz, dx, dy, dz

    @triton.jit(do_not_specialize=["n", "total"])
    def _price_forward(means_ptr, d_ptr, cam_ptr, out_ptr, n, total, eps, BLOCK: tl.constexpr):
        i, mask, b, mx, my, mz, dx, dy, dz = _load_offsets(means_ptr, d_ptr, n, total, BLOCK)
        du, dv, _, _, _, _, _, _, _, _, _, _, _, _, _, _ = _motion(cam_ptr, b, mx, my, mz, dx, dy, dz, mask)
        tl.store(out_ptr + i, tl.sqrt(du * du + dv * dv + eps * eps) - eps, mask=mask)

    @triton.jit(do_not_specialize=["n", "total"])
    def _price_backward(means_ptr, d_ptr, cam_ptr, g_ptr, gd_ptr, n, total, eps, BLOCK: tl.constexpr):
        i, mask, b, mx, my, mz, dx, dy, dz = _load_offsets(means_ptr, d_ptr, n, total, BLOCK)
        du, dv, cx, cy, zi, fx, fy, r00, r01, r02, r10, r11, r12, r20, r21, r22 = _motion(
            cam_ptr, b, mx, my, mz, dx, dy, dz, mask)
        g = tl.load(g_ptr + i, mask=mask, other=0.0) / tl.sqrt(du * du + dv * dv + eps * eps)
        gu = g * du * fx * zi  # d price / d (camera-axis offset), through du and dv
        gv = g * dv * fy * zi
        gex = gu
        gey = gv
        gez = -(gu * cx + gv * cy) * zi
        tl.store(gd_ptr + i * 3, r00 * gex + r10 * gey + r20 * gez, mask=mask)  # R^T
        tl.store(gd_ptr + i * 3 + 1, r01 * gex + r11 * gey + r21 * gez, mask=mask)
        tl.store(gd_ptr + i * 3 + 2, r02 * gex + r12 * gey + r22 * gez, mask=mask)


def visible_mask(means: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                 margin: float) -> torch.Tensor:
    """``[B, N]`` bool: centres ``means [N, 3]`` in front of each camera (z > 1e-3) projecting inside its
    ``width x height`` image enlarged by ``margin`` of its size on every side. One kernel."""
    means = means.detach().float().contiguous()
    b, n = viewmats.shape[0], means.shape[0]
    out = torch.empty(b * n, dtype=torch.int8, device=means.device)
    if b * n:
        _mask_kernel[(triton.cdiv(b * n, _BLOCK),)](means, _cameras(viewmats, Ks), out, n, b * n, float(width),
                                                   float(height), float(margin * width), float(margin * height),
                                                   BLOCK=_BLOCK)
    return out.view(b, n).bool()


class _Price(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, d_means, cams, eps):
        b, n = cams.shape[0], means.shape[0]
        d = d_means.detach().float().contiguous()
        out = torch.empty(b * n, dtype=torch.float32, device=means.device)
        if b * n:
            _price_forward[(triton.cdiv(b * n, _BLOCK),)](means, d, cams, out, n, b * n, float(eps), BLOCK=_BLOCK)
        ctx.save_for_backward(means, d, cams)
        ctx.eps = eps
        return out.view(b, n)

    @staticmethod
    def backward(ctx, grad):
        means, d, cams = ctx.saved_tensors
        b, n = cams.shape[0], means.shape[0]
        g_d = torch.empty_like(d)
        if b * n:
            _price_backward[(triton.cdiv(b * n, _BLOCK),)](means, d, cams, grad.float().contiguous(), g_d, n, b * n,
                                                         float(ctx.eps), BLOCK=_BLOCK)
        return None, g_d, None, None


def projected_offset_px(means: torch.Tensor, d_means: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                        eps: float = 1e-2) -> torch.Tensor:
    """:func:`lift3d_core.splat.field_terms.projected_offset_px` as one kernel forward and one backward:
    ``[B, N]`` pixels each offset ``d_means [B, N, 3]`` moves centre ``means [N, 3]`` by in frame ``b``, smoothed
    as ``sqrt(|.|^2 + eps^2) - eps``. Differentiable with respect to ``d_means`` only (the centres and cameras
    are constants here, as the trainer passes them)."""
    if means.requires_grad or viewmats.requires_grad or Ks.requires_grad:
        raise ValueError("image_motion_triton.projected_offset_px: means and cameras must not require grad (pass them "
                         "detached; with trained cameras use field_terms.projected_offset_px)")
    b, n = viewmats.shape[0], means.shape[0]
    if d_means.shape != (b, n, 3):
        raise ValueError(f"d_means must be [B, N, 3] = [{b}, {n}, 3], got {tuple(d_means.shape)}")
    return _Price.apply(means.float().contiguous(), d_means.reshape(b * n, 3), _cameras(viewmats, Ks), eps)


__all__ = ["projected_offset_px", "visible_mask"]
