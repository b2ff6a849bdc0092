"""Fast forms of the 3DGS photometric loss that the trainer runs (:func:`lift3d_core.splat.loss.photometric_loss`
with zero padding is the reference; these equal it up to float round-off, and the tests hold them so).

Images are float ``[..., H, W, 3]`` in [0, 1]. SSIM's separable 11-tap, sigma 1.5 Gaussian blur of the five maps
a, b, a², b², ab (stacked as ``[5 B', H, W]``, each image's channels as B') runs

* in :func:`fast_photometric_loss` as banded ``[H, H]`` and ``[W, W]`` matrix products on a CPU, and as two cuDNN
  convolutions of the stacked maps on CUDA (the trainer's eager path);
* in :func:`photometric_loss_shifted` as sums of shifted copies, the form that ``torch.compile`` fuses into one graph
  (the trainer's compiled path, ``compile_loss``).
"""

from __future__ import annotations

import functools

import torch

from lift3d_core.splat.loss import SSIM_C1, SSIM_C2, _blur, _gaussian_kernel_1d


@functools.lru_cache(maxsize=8)
def _blur_matrix(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[size, size]`` matrix of the 11-tap, sigma 1.5 SSIM Gaussian filter along one axis with zero padding."""
    kernel = _gaussian_kernel_1d(11, 1.5, device, dtype)
    radius = kernel.numel() // 2
    offset = torch.arange(size, device=device)[None, :] - torch.arange(size, device=device)[:, None]
    inside = offset.abs() <= radius
    return torch.where(inside, kernel[(offset + radius).clamp(0, 2 * radius)], torch.zeros((), dtype=dtype, device=device))


# The SSIM window's 11 taps (sigma 1.5) as Python numbers, so that a compiled graph holds them as constants.
_SSIM_TAPS = tuple(float(t) for t in _gaussian_kernel_1d(11, 1.5, "cpu", torch.float64))


def _shifted_blur(x: torch.Tensor) -> torch.Tensor:
    """The zero-padded separable SSIM filter of ``x [N, H, W]`` as sums of shifted copies (elementwise work that
    ``torch.compile`` fuses into a few kernels; eagerly it is slow)."""
    r = len(_SSIM_TAPS) // 2
    h, w = x.shape[-2:]
    xp = torch.nn.functional.pad(x, (r, r))
    x = sum(t * xp[..., i : i + w] for i, t in enumerate(_SSIM_TAPS))
    xp = torch.nn.functional.pad(x, (0, 0, r, r))
    return sum(t * xp[..., i : i + h, :] for i, t in enumerate(_SSIM_TAPS))


def _ssim_maps(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[5 B', H, W]``: the maps a, b, a², b², ab that SSIM blurs, of ``[..., H, W, 3]`` images (channels as B')."""
    h, w = pred.shape[-3], pred.shape[-2]
    a = pred.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, h, w)
    b = target.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, h, w).to(a.dtype)
    return torch.cat([a, b, a * a, b * b, a * b])


def _mix(l1: torch.Tensor, blurred: torch.Tensor, lambda_dssim: float) -> torch.Tensor:
    """``(1 - lambda) L1 + lambda (1 - mean SSIM)`` from the blurred maps ``[5 B', H, W]`` (a, b, a², b², ab)."""
    mu_a, mu_b, aa, bb, ab = blurred.chunk(5)
    var_a, var_b, cov_ab = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + SSIM_C1) * (2.0 * cov_ab + SSIM_C2)
    den = (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2)
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - (num / den).mean())


def photometric_loss_shifted(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """:func:`fast_photometric_loss` with the blur as shifted sums: the form the trainer compiles on a GPU (one
    fused graph, forward and backward, instead of ~70 kernels a step). Equal up to float round-off."""
    l1 = (pred - target).abs().mean()
    if lambda_dssim == 0.0:
        return l1
    return _mix(l1, _shifted_blur(_ssim_maps(pred, target)), lambda_dssim)


def fast_photometric_loss(pred: torch.Tensor, target: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """``loss.photometric_loss`` (zero padding, the 3DGS training loss) of ``[..., H, W, 3]`` images, faster on a CPU.

    The separable SSIM blur of the five maps (a, b, a², b², ab) runs as two batched products with banded
    ``[H, H]`` and ``[W, W]`` matrices instead of ten single-channel convolutions: at 128x96, forward and backward
    take ~10 ms instead of ~32 ms on one core. On CUDA it convolves the stacked maps (two cuDNN calls). Equal to
    the reference up to float round-off (tests hold them so).
    """
    l1 = (pred - target).abs().mean()
    if lambda_dssim == 0.0:
        return l1
    maps = _ssim_maps(pred, target)
    h, w = maps.shape[-2:]
    if maps.is_cuda:
        # on a GPU the banded products are the slow way (~60 GFLOP a step at 1024x576): cuDNN's two 11-tap
        # convolutions of the stacked maps compute the same zero-padded separable filter
        blurred = _blur(maps[:, None], _gaussian_kernel_1d(11, 1.5, maps.device, maps.dtype), "zeros")[:, 0]
    else:
        blur_h, blur_w = _blur_matrix(h, maps.device, maps.dtype), _blur_matrix(w, maps.device, maps.dtype)
        blurred = torch.matmul(blur_h, (maps.reshape(-1, w) @ blur_w.T).view(-1, h, w))
    return _mix(l1, blurred, lambda_dssim)
