"""Line charts as inline SVG text: crisp at any zoom, a few kilobytes, no plotting library, no external file."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@dataclass(frozen=True)
class Series:
    """One line: ``x``, ``y`` ``[N]`` (non-finite points dropped); ``width`` its stroke, ``opacity`` its alpha."""

    name: str
    x: np.ndarray
    y: np.ndarray
    width: float = 1.5
    opacity: float = 1.0


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2 or 5 x 10^k apart) covering ``[lo, hi]``."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log10 axis spanning ``[lo, hi]`` (in log10 units) at 1, 2 and 5 x 10^k where they fit,
    as log10 values; round linear ticks of the same range when fewer than two fit (a range within one octave)."""
    candidates = [(m, math.log10(m) + k) for k in range(math.floor(lo), math.ceil(hi) + 1) for m in (1, 2, 5)]
    inside = [t for m, t in candidates if lo <= t <= hi]
    if len(inside) > 5:  # several decades: the powers of ten alone
        inside = [t for m, t in candidates if lo <= t <= hi and m == 1]
    if len(inside) >= 2:
        return inside
    return [math.log10(v) for v in nice_ticks(10**lo, 10**hi, 4) if v > 0]


def _label(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.2g}"


def binned(x: np.ndarray, y: np.ndarray, bins: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """The mean of ``y`` over at most ``bins`` equal runs of consecutive points: a long curve (17,000 training
    steps) drawn with a few hundred vertices and its noise averaged out."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) <= bins:
        return x, y
    edges = np.linspace(0, len(x), bins + 1).astype(int)
    return (np.array([x[a:b].mean() for a, b in itertools.pairwise(edges)]),
            np.array([y[a:b].mean() for a, b in itertools.pairwise(edges)]))


def line_chart(series: list[Series], title: str, xlabel: str, ylabel: str, *, log_y: bool = False,
               width: int = 560, height: int = 260) -> str:
    """An ``<svg>`` element plotting ``series`` on shared axes (``log_y``: a log10 y axis), legend on top."""
    left, right, top, bottom = 62, 12, 44, 40
    pts = []
    for s in series:
        x, y = np.asarray(s.x, np.float64), np.asarray(s.y, np.float64)
        keep = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        pts.append((x[keep], np.log10(y[keep]) if log_y else y[keep]))
    xs = np.concatenate([p[0] for p in pts]) if pts else np.zeros(0)
    ys = np.concatenate([p[1] for p in pts]) if pts else np.zeros(0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>']
    if xs.size == 0:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" font-size="12">no data</text></svg>')
        return "".join(out)
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = float(ys.min()), float(ys.max())
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    pad = 0.05 * (y1 - y0) or 0.5
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def px(v):
        return left + (v - x0) / (x1 - x0) * pw

    def py(v):
        return top + ph - (v - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888" stroke-width="0.8"/>')
    for t in nice_ticks(x0, x1):
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" stroke="#ddd"/>'
                   f'<text x="{px(t):.1f}" y="{top + ph + 14}" text-anchor="middle" font-size="10">{_label(t)}</text>')
    for t in log_ticks(y0, y1) if log_y else nice_ticks(y0, y1, 4):
        label = _label(10**t) if log_y else _label(t)
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 4}" y="{py(t) + 3:.1f}" text-anchor="end" font-size="10">{label}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" font-size="11">{escape(xlabel)}</text>'
               f'<text x="12" y="{top + ph / 2}" text-anchor="middle" font-size="11" '
               f'transform="rotate(-90 12 {top + ph / 2})">{escape(ylabel)}{" (log)" if log_y else ""}</text>')
    for i, (s, (x, y)) in enumerate(zip(series, pts)):
        colour = PALETTE[i % len(PALETTE)]
        if len(x) == 1:
            out.append(f'<circle cx="{px(x[0]):.1f}" cy="{py(y[0]):.1f}" r="3" fill="{colour}"/>')
        elif len(x):
            path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, y))
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{s.width}" '
                       f'stroke-opacity="{s.opacity}" points="{path}"/>')
        lx = left + 8 + 150 * i
        out.append(f'<rect x="{lx}" y="26" width="12" height="3" fill="{colour}"/>'
                   f'<text x="{lx + 16}" y="31" font-size="10">{escape(s.name)}</text>')
    out.append("</svg>")
    return "".join(out)
