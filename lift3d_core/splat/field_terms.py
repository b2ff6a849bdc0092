"""Image-space pieces of the distortion-aware trainer's terms, pure functions of tensors.

- the resolution rules of the field's own term (:func:`field_downscale`, :func:`pyramid_depth`) and the image a
  camera sees at a lower resolution (:func:`area_downscale`, :func:`scale_intrinsics`,
  :func:`area_preserving_opacity`);
- the pooled L1 comparison of a render and a frame (:func:`pyramid_l1`);
- how many pixels a Gaussian's offset moves it in a frame (:func:`projected_offset_px`), the
  ``offset_image_weight`` price (divided by the image's shorter side), and which centres a frame's offsets apply
  to (:func:`visible_in_frames`); :mod:`~lift3d_core.splat.image_motion_triton` has both as fused GPU kernels.

Images are ``[B, H, W, C]`` floats; cameras are OpenCV (``viewmat`` world-to-camera, +z forward), ``K`` in pixels
with pixel centres at half-integers.
"""

from __future__ import annotations

import numpy as np
import torch

from lift3d_core.splat.gaussians import Gaussians


def projected_offset_px(means: torch.Tensor, d_means: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                        eps: float = 1e-2) -> torch.Tensor:
    """``[B, N]``: how many pixels of frame ``b`` the offset ``d_means[b, i]`` moves Gaussian ``i``'s centre by, to first
    order: ``|J_b(x_i) d|`` with ``J`` the 2x3 Jacobian of the pinhole projection at the centre, smoothed as
    ``sqrt(|.|^2 + eps^2) - eps`` (0 at no offset, differentiable there).

    Args: ``means [N, 3]`` canonical centres (world), ``d_means [B, N, 3]`` world offsets, ``viewmats [B, 4, 4]``
    world-to-camera (OpenCV: +z forward), ``Ks [B, 3, 3]`` pixels. Centres at or behind the camera count 0.
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    cam = torch.einsum("bij,nj->bni", R, means) + t[:, None]  # [B, N, 3]
    dc = torch.einsum("bij,bnj->bni", R, d_means)  # the offset in camera axes
    z = cam[..., 2]
    front = z > 1e-3
    zi = torch.where(front, 1.0 / z.clamp_min(1e-3), torch.zeros_like(z))
    du = Ks[:, None, 0, 0] * zi * (dc[..., 0] - cam[..., 0] * zi * dc[..., 2])
    dv = Ks[:, None, 1, 1] * zi * (dc[..., 1] - cam[..., 1] * zi * dc[..., 2])
    return (du.square() + dv.square() + eps * eps).sqrt() - eps


def visible_in_frames(means: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                      margin: float) -> torch.Tensor:
    """``[B, N]`` bool: centres ``means [N, 3]`` in front of each camera (``viewmats [B, 4, 4]`` world-to-camera,
    ``Ks [B, 3, 3]``; z > 1e-3) projecting inside its ``width x height`` image enlarged by ``margin`` of its size on
    every side (the centres whose offsets ``field_cull_margin`` keeps)."""
    cam = torch.einsum("bij,nj->bni", viewmats[:, :3, :3], means.detach().float()) + viewmats[:, None, :3, 3]
    z = cam[..., 2].clamp_min(1e-6)
    u = Ks[:, None, 0, 0] * cam[..., 0] / z + Ks[:, None, 0, 2]
    v = Ks[:, None, 1, 1] * cam[..., 1] / z + Ks[:, None, 1, 2]
    mu, mv = margin * width, margin * height
    return (cam[..., 2] > 1e-3) & (u > -mu) & (u < width + mu) & (v > -mv) & (v < height + mv)


def field_downscale(height: int, width: int, size: int) -> int:
    """The power of two ``f >= 1`` that brings the shorter side of a ``height x width`` image closest to ``size``
    pixels (log scale): 1 at 128x96 and size 72, 4 at 512x288, 8 at 1024x576."""
    short = max(min(height, width), 1)
    return 2 ** max(0, int(np.round(np.log2(short / size))))


def area_downscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    """``[B, H, W, C]`` averaged over ``factor x factor`` blocks -> ``[B, H // f, W // f, C]`` (the image a camera of
    ``scale_intrinsics(K, 1 / f)`` sees; a partial last block is dropped)."""
    if factor == 1:
        return images
    b, h, w, c = images.shape
    h2, w2 = h // factor, w // factor
    x = images[:, : h2 * factor, : w2 * factor].reshape(b, h2, factor, w2, factor, c)
    return x.mean(dim=(2, 4))


def scale_intrinsics(K: torch.Tensor, s: float) -> torch.Tensor:
    """``K [..., 3, 3]`` of the same camera on an image scaled by ``s`` (pixel centres at half-integers, so the
    principal point scales with the focal lengths)."""
    out = K.clone()
    out[..., :2, :] *= s
    return out


def area_preserving_opacity(gaussians: Gaussians, viewmat: torch.Tensor, K: torch.Tensor, eps2d: float = 0.3) -> Gaussians:
    """``gaussians`` with opacities scaled so that each covers the image area it would without the rasterizer's
    ``eps2d`` px^2 dilation (3DGS's; gsplat's "antialiased" mode applies the same factor inside its kernel).

    Rendered ``viewmat [4, 4]`` (world-to-camera), ``K [3, 3]`` at a low resolution, Gaussians trained at full
    resolution are sub-pixel: dilated to a pixel at full opacity they would cover several times their footprint
    (a brighter, more occluding image than the full one area-averaged). The factor
    ``s1 s2 / sqrt((s1^2 + eps2d)(s2^2 + eps2d))`` uses the two largest axes projected at the centre's depth
    (``s_i = fx * scale_i / z`` px): exact for a disc facing the camera, an approximation otherwise. No gradient
    flows through the factor.
    """
    with torch.no_grad():
        z = (gaussians.means @ viewmat[:3, :3].T + viewmat[:3, 3])[:, 2].clamp_min(1e-6)
        top2 = gaussians.log_scales.exp().topk(2, dim=-1).values * (K[0, 0] / z)[:, None]  # [N, 2] px
        factor = (top2.prod(-1) / ((top2.square() + eps2d).prod(-1)).sqrt()).clamp(1e-4, 1.0)
    opacity = torch.sigmoid(gaussians.opacity_logits) * factor
    out = Gaussians(**gaussians.tensors())
    out.opacity_logits = torch.logit(opacity.clamp(1e-6, 1 - 1e-6))
    return out


def pyramid_depth(height: int, width: int, min_side: int = 24) -> int:
    """Pooling levels (factors 2, 4, ...) that bring the shorter image side down to about ``min_side`` px (at
    least 1): 2 at 128x96, 3 at 512x288, 4 at 1024x576."""
    return max(1, int(np.floor(np.log2(max(min(height, width), 1) / min_side))))


def pyramid_l1(pred: torch.Tensor, target: torch.Tensor, levels: int) -> torch.Tensor:
    """Sum over ``k = 1..levels`` of the mean absolute difference of ``pred`` and ``target`` (``[B, H, W, 3]``)
    average-pooled by ``2**k`` (a pooled image is not shorter than 2 pixels on either side)."""
    p, t = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    total = pred.new_zeros(())
    for k in range(1, levels + 1):
        f = 2**k
        if min(p.shape[-2:]) // f < 2:
            break
        total = total + (torch.nn.functional.avg_pool2d(p, f) - torch.nn.functional.avg_pool2d(t, f)).abs().mean()
    return total


__all__ = [
    "area_downscale",
    "area_preserving_opacity",
    "field_downscale",
    "projected_offset_px",
    "pyramid_depth",
    "pyramid_l1",
    "scale_intrinsics",
    "visible_in_frames",
]
