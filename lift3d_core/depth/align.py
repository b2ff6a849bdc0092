"""Aligning a monocular relative disparity to the calibrated (metric up to the scene's scale) disparity.

A monocular estimator's disparity is only known up to a scale and a shift per frame: ``d_metric ~ s * d_mono + t``.
Two fits, chosen by ``depth.depth_anything_v2.align``:

- ``median``: the reference's rule (LiftImage3D), a median of centred ratios for ``s`` and a median for ``t``.
- ``robust_lsq``: least squares with Tukey's biweight (IRLS), started from the median rule. The medians that centre
  the reference's ratios move with one-sided outliers (20% of them put its scale ~9% off in the tests); the
  biweight gives outliers zero weight and recovers scale and shift to 1% there.

Both take ``valid`` pixels only: where calibration has a confident depth.
"""

from __future__ import annotations

import numpy as np
import torch

from lift3d_core.errors import Lift3DError

ALIGN_METHODS = ("median", "robust_lsq")

# 4.685: Tukey's tuning constant, 95% efficiency under Gaussian noise; 1.4826 turns a MAD into a Gaussian sigma
TUKEY_C = 4.685
MAD_TO_SIGMA = 1.4826


Samples = np.ndarray | torch.Tensor


def _float64(x: Samples, device: torch.device | None = None) -> torch.Tensor:
    return torch.as_tensor(x, device=device).to(torch.float64).reshape(-1)


def median(x: torch.Tensor) -> torch.Tensor:
    """``np.median``'s median (the mean of the two middle values for an even count), on ``x``'s device."""
    if x.numel() <= 1 << 24:  # torch.quantile's size limit; it selects instead of sorting (4-6x faster on a CPU)
        return torch.quantile(x, 0.5)
    s = x.sort().values
    return 0.5 * (s[(s.numel() - 1) // 2] + s[s.numel() // 2])


def fit_median(mono: Samples, metric: Samples, eps: float = 1e-6) -> tuple[float, float] | None:
    """The reference's scale and shift from paired samples ``mono [N]``, ``metric [N]``; None if degenerate.

    ``scale = median((d_metric - med d_metric) / (d_mono - med d_mono))`` over samples whose centred monocular
    disparity is not ~0 (above ``eps`` times its largest), ``shift = median(d_metric - scale * d_mono)``.
    Runs where ``mono`` lives (a GPU tensor stays on the GPU), in float64.
    """
    m = _float64(mono)
    d = _float64(metric, m.device)
    if m.numel() < 2:
        return None
    dm, dd = m - median(m), d - median(d)
    usable = dm.abs() > eps * dm.abs().max()  # relative: a monocular disparity comes in any units
    if not bool(usable.any()):
        return None
    scale = median(dd[usable] / dm[usable])
    return float(scale), float(median(d - scale * m))


def fit_robust_lsq(mono: Samples, metric: Samples, iterations: int = 20, eps: float = 1e-6) -> tuple[float, float] | None:
    """Scale and shift minimising Tukey's biweight of ``metric - (scale * mono + shift)``; None if degenerate.

    Iteratively reweighted least squares from the median rule's estimate; the residual scale is re-estimated each
    iteration from the median absolute residual (floored at ``eps`` relative to the metric's spread, so that exact
    data converge instead of dividing by zero). Runs where ``mono`` lives, in float64.
    """
    start = fit_median(mono, metric, eps)
    if start is None:
        return None
    m = _float64(mono)
    d = _float64(metric, m.device)
    scale, shift = start
    floor = eps * max(float(median((d - median(d)).abs())), eps)
    for _ in range(iterations):
        r = d - (scale * m + shift)
        sigma = max(MAD_TO_SIGMA * float(median((r - median(r)).abs())), floor)
        u = r / (TUKEY_C * sigma)
        w = torch.where(u.abs() < 1.0, (1.0 - u * u) ** 2, torch.zeros_like(u))
        sw = w.sum()
        mw, dw = (w * m).sum() / sw, (w * d).sum() / sw
        var = (w * (m - mw) ** 2).sum()
        if not float(sw) > 0 or not float(var) > eps * eps * float(sw):
            break
        new_scale = float((w * (m - mw) * (d - dw)).sum() / var)
        new_shift = float(dw - new_scale * mw)
        step = abs(new_scale - scale) * float(m.abs().max()) + abs(new_shift - shift)
        scale, shift = new_scale, new_shift
        if step <= 1e-12 * (abs(shift) + abs(scale) * float(m.abs().max()) + 1e-12):
            break
    return scale, shift


def fit_scale_shift(mono: Samples, metric: Samples, method: str) -> tuple[float, float] | None:
    """``(scale, shift)`` with ``metric ~ scale * mono + shift`` by ``method`` (see :data:`ALIGN_METHODS`)."""
    if method == "median":
        return fit_median(mono, metric)
    if method == "robust_lsq":
        return fit_robust_lsq(mono, metric)
    raise Lift3DError(f"depth alignment method {method!r} is unknown; available: {', '.join(ALIGN_METHODS)}")


def align_disparity(
    mono: np.ndarray, metric: np.ndarray, valid: np.ndarray, eps: float = 1e-6, method: str = "median"
) -> np.ndarray:
    """Align relative disparity ``mono [H, W]`` to ``metric [H, W]`` disparity, fitted on ``valid [H, W]``.

    Returns ``float32 [H, W]`` ``scale * mono + shift``; aligned values below ``eps`` are invalidated (0), as the
    reference does.
    """
    fit = fit_scale_shift(mono[valid], metric[valid], method)
    if fit is None:
        raise Lift3DError("depth alignment needs at least two valid pixels with a non-constant monocular disparity")
    scale, shift = fit
    aligned = (scale * np.asarray(mono, np.float64) + shift).astype(np.float32)
    aligned[aligned < eps] = 0.0
    return aligned
