"""Training losses of 3DGS: L1 + D-SSIM photometric loss and an inverse-depth L1."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# SSIM constants of Wang et al. 2004 for a data range of 1, used unchanged by 3DGS.
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _gaussian_kernel_1d(window: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(window, device=device, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype)


def _blur(x: torch.Tensor, kernel: torch.Tensor, padding: str) -> torch.Tensor:
    """Separable Gaussian filter of ``x [B, 1, H, W]``; the 2-D window is the outer product of ``kernel``."""
    pad = kernel.numel() // 2 if padding == "zeros" else 0
    x = F.conv2d(x, kernel.view(1, 1, 1, -1), padding=(0, pad))
    return F.conv2d(x, kernel.view(1, 1, -1, 1), padding=(pad, 0))


def ssim_map(
    img_a: torch.Tensor,
    img_b: torch.Tensor,
    *,
    window: int = 11,
    sigma: float = 1.5,
    padding: str = "valid",
) -> torch.Tensor:
    """Per-pixel SSIM of two float images ``[..., H, W, 3]`` in [0, 1].

    Gaussian window ``window x window`` with std ``sigma`` (11 and 1.5 as in 3DGS and Wang et al.), population
    (not sample) covariances. ``padding="valid"`` keeps only windows fully inside the image (the map is
    ``[..., H - window + 1, W - window + 1, 3]``), which is what ``skimage.metrics.structural_similarity`` averages;
    ``padding="zeros"`` zero-pads to ``[..., H, W, 3]``, exactly the 3DGS training loss.
    """
    if padding not in ("valid", "zeros"):
        raise ValueError(f"padding must be 'valid' or 'zeros', got {padding!r}")
    if img_a.shape != img_b.shape or img_a.shape[-1] != 3:
        shapes = f"{tuple(img_a.shape)}, {tuple(img_b.shape)}"
        raise ValueError(f"ssim expects two [..., H, W, 3] images of equal shape, got {shapes}")
    lead = img_a.shape[:-3]
    h, w = img_a.shape[-3], img_a.shape[-2]
    if padding == "valid" and (h < window or w < window):
        raise ValueError(f"ssim with padding='valid' needs images of at least {window}x{window}, got {h}x{w}")
    # [..., H, W, 3] -> [B*3, 1, H, W]: channels filtered independently.
    a = img_a.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    b = img_b.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w)
    kernel = _gaussian_kernel_1d(window, sigma, a.device, a.dtype)
    mu_a, mu_b = _blur(a, kernel, padding), _blur(b, kernel, padding)
    var_a = _blur(a * a, kernel, padding) - mu_a**2
    var_b = _blur(b * b, kernel, padding) - mu_b**2
    cov_ab = _blur(a * b, kernel, padding) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + SSIM_C1) * (2.0 * cov_ab + SSIM_C2)
    den = (mu_a**2 + mu_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    out = num / den  # [B*3, 1, h', w']
    hh, ww = out.shape[-2:]
    return out.reshape(-1, 3, hh, ww).permute(0, 2, 3, 1).reshape(*lead, hh, ww, 3)


def ssim(img_a: torch.Tensor, img_b: torch.Tensor, *, padding: str = "valid") -> torch.Tensor:
    """Mean SSIM (scalar) of two float images ``[..., H, W, 3]`` in [0, 1]; see :func:`ssim_map`."""
    return ssim_map(img_a, img_b, padding=padding).mean()


def photometric_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    lambda_dssim: float = 0.2,
    *,
    padding: str = "zeros",
) -> torch.Tensor:
    """3DGS image loss ``(1 - lambda) * L1 + lambda * (1 - SSIM)`` of float images ``[..., H, W, 3]``.

    0.2 is the D-SSIM weight of the original 3DGS. Zero padding (the 3DGS choice) lets the SSIM term reach
    the border pixels of small images too.
    """
    l1 = (pred - target).abs().mean()
    if lambda_dssim == 0.0:
        return l1
    return (1.0 - lambda_dssim) * l1 + lambda_dssim * (1.0 - ssim(pred, target, padding=padding))


def rendered_inverse_depth(depth: torch.Tensor, alpha: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Inverse depth of a render: ``alpha / depth`` (0 where ``depth <= eps``).

    ``depth`` is the expected z-depth of the covered part of the pixel and ``alpha`` its coverage, so this is the
    alpha-blended inverse depth of 3DGS's depth regularisation with the uncovered part at infinity (inverse depth 0).
    Shapes ``[..., H, W]`` or ``[..., H, W, 1]`` (both the same).
    """
    safe = torch.where(depth > eps, depth, torch.ones_like(depth))
    return torch.where(depth > eps, alpha / safe, torch.zeros_like(depth))


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Least-squares ``s * pred + t`` fitted to ``target`` over ``mask``, per leading index.

    Shapes ``[F, H, W]``; returns the aligned ``pred`` ``[F, H, W]``. Frames with fewer than 2 valid pixels or a
    constant prediction are returned shifted only (``s = 1``).
    """
    m = mask.to(pred.dtype)
    n = m.sum(dim=(-2, -1)).clamp_min(1.0)
    mean_p = (pred * m).sum(dim=(-2, -1)) / n
    mean_t = (target * m).sum(dim=(-2, -1)) / n
    dp = (pred - mean_p[:, None, None]) * m
    dt = (target - mean_t[:, None, None]) * m
    var_p = (dp * dp).sum(dim=(-2, -1))
    cov = (dp * dt).sum(dim=(-2, -1))
    scale = torch.where(var_p > 1e-12, cov / var_p.clamp_min(1e-12), torch.ones_like(var_p))
    shift = mean_t - scale * mean_p
    return scale[:, None, None] * pred + shift[:, None, None]


def inverse_depth_loss(
    pred_depth: torch.Tensor,
    alpha: torch.Tensor,
    target_inv_depth: torch.Tensor,
    valid_mask: torch.Tensor,
    *,
    scale_invariant: bool = False,
) -> torch.Tensor:
    """Mean L1 between the rendered inverse depth and ``target_inv_depth`` over valid pixels.

    Args:
        pred_depth: ``[F, H, W, 1]`` or ``[F, H, W]`` rendered expected z-depth (0 where empty).
        alpha: same shape, rendered coverage.
        target_inv_depth: ``[F, H, W]`` target inverse depth (e.g. aligned Depth Anything disparity).
        valid_mask: ``[F, H, W]`` bool, pixels where the target is trusted.
        scale_invariant: first align the rendered inverse depth to the target by a per-frame least-squares
            scale and shift (for targets only known up to an affine map).

    Returns:
        scalar; 0 (with a graph) when no pixel is valid.
    """
    if pred_depth.shape[-1] == 1 and pred_depth.ndim == target_inv_depth.ndim + 1:
        pred_depth, alpha = pred_depth[..., 0], alpha[..., 0]
    pred_inv = rendered_inverse_depth(pred_depth, alpha)
    if scale_invariant:
        pred_inv = align_scale_shift(pred_inv, target_inv_depth, valid_mask)
    m = valid_mask.to(pred_inv.dtype)
    return ((pred_inv - target_inv_depth).abs() * m).sum() / m.sum().clamp_min(1.0)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of float images in [0, 1] (a training log, not the evaluation metric of ``metrics.py``)."""
    mse = float(((pred - target) ** 2).mean())
    return float("inf") if mse == 0.0 else -10.0 * math.log10(mse)
