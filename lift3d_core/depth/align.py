"""Aligning a monocular relative disparity to the calibrated (metric up to the scene's scale) disparity.

A monocular estimator's disparity is only known up to a scale and a shift per frame: ``d_metric ~ s * d_mono + t``.
Two fits, chosen by ``depth.depth_anything_v2.align``:

- ``median``: the reference's rule (LiftImage3D), a median of centred ratios for ``s`` and a median for ``t``.
- ``robust_lsq``: least squares with Tukey's biweight (IRLS), started from the median rule; it uses every inlier
  instead of one order statistic, so it is less noisy when the two disparities agree up to noise.

Both take ``valid`` pixels only: where calibration has a confident depth.
"""

from __future__ import annotations

import numpy as np

from lift3d_core.errors import Lift3DError

ALIGN_METHODS = ("median", "robust_lsq")

# 4.685: Tukey's tuning constant, 95% efficiency under Gaussian noise; 1.4826 turns a MAD into a Gaussian sigma
TUKEY_C = 4.685
MAD_TO_SIGMA = 1.4826


def fit_median(mono: np.ndarray, metric: np.ndarray, eps: float = 1e-6) -> tuple[float, float] | None:
    """The reference's scale and shift from paired samples ``mono [N]``, ``metric [N]``; None if degenerate.

    ``scale = median((d_metric - med d_metric) / (d_mono - med d_mono))`` over samples whose centred monocular
    disparity is not ~0 (above ``eps`` times its largest), ``shift = median(d_metric - scale * d_mono)``.
    """
    m, d = np.asarray(mono, np.float64), np.asarray(metric, np.float64)
    if m.size < 2:
        return None
    dm, dd = m - np.median(m), d - np.median(d)
    usable = np.abs(dm) > eps * np.abs(dm).max()  # relative: a monocular disparity comes in any units
    if not usable.any():
        return None
    scale = float(np.median(dd[usable] / dm[usable]))
    return scale, float(np.median(d - scale * m))


def fit_robust_lsq(
    mono: np.ndarray, metric: np.ndarray, iterations: int = 20, eps: float = 1e-6
) -> tuple[float, float] | None:
    """Scale and shift minimising Tukey's biweight of ``metric - (scale * mono + shift)``; None if degenerate.

    Iteratively reweighted least squares from the median rule's estimate; the residual scale is re-estimated each
    iteration from the median absolute residual (floored at ``eps`` relative to the metric's spread, so that exact
    data converge instead of dividing by zero).
    """
    start = fit_median(mono, metric, eps)
    if start is None:
        return None
    m, d = np.asarray(mono, np.float64), np.asarray(metric, np.float64)
    scale, shift = start
    floor = eps * max(float(np.median(np.abs(d - np.median(d)))), eps)
    for _ in range(iterations):
        r = d - (scale * m + shift)
        sigma = max(MAD_TO_SIGMA * float(np.median(np.abs(r - np.median(r)))), floor)
        u = r / (TUKEY_C * sigma)
        w = np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)
        sw = w.sum()
        if sw <= 0:
            break
        mw, dw = (w * m).sum() / sw, (w * d).sum() / sw
        var = (w * (m - mw) ** 2).sum()
        if var <= eps * eps * sw:
            break
        new_scale = float((w * (m - mw) * (d - dw)).sum() / var)
        new_shift = float(dw - new_scale * mw)
        converged = abs(new_scale - scale) <= 1e-9 * max(abs(scale), 1e-12) and abs(new_shift - shift) <= 1e-9 * (
            abs(shift) + abs(scale) * float(np.abs(m).max()) + 1e-12
        )
        scale, shift = new_scale, new_shift
        if converged:
            break
    return scale, shift


def fit_scale_shift(mono: np.ndarray, metric: np.ndarray, method: str) -> tuple[float, float] | None:
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
