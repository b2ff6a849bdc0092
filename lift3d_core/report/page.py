"""The run report: one self-contained HTML page (every image inline, no script, no external URL), and a batch index.

:func:`run_report_html` turns a :class:`RunReport` (arrays and numbers a caller read from the store and the run's
``summary.json``) into the page, plus the same plots as standalone files (``assets``) for MLflow.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np

from lift3d_core.report.images import (
    colorize_inverse_depth,
    data_uri,
    png_bytes,
    strip,
    thumbnail,
)
from lift3d_core.report.svg import Series, binned, line_chart

# The page's sections, in order: (id, heading). Tests and the batch index link to these ids.
SECTIONS = (
    ("input", "Input"),
    ("frames", "Generated frames"),
    ("cameras", "Camera trees"),
    ("depth", "Depth"),
    ("training", "Training"),
    ("evaluation", "Held-out evaluation"),
    ("stages", "Stages and cache"),
    ("files", "Files"),
)

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
figure{margin:8px 0 16px}figcaption{font-size:12px;color:#555}img{max-width:100%;image-rendering:auto}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.hit{color:#2a7a2a}.miss{color:#a06000}.note{color:#666;font-size:13px}
nav a{margin-right:12px}code{background:#f4f4f4;padding:0 3px}
"""


@dataclass
class RunReport:
    """Everything the report shows, already read.

    image: ``uint8 [H, W, 3]`` conditioning frame; frames: ``uint8 [C, K, H, W, 3]``, frames ``frame_ts [K]`` of
    each clip (``clip_ids [C]``, ``clip_length`` frames each); commanded_plot / calibrated_plot: PNG bytes of the
    camera trees; depth_frames ``uint8 [K', H, W, 3]``, inv_depth ``float [K', H, W]`` and depth_valid
    ``bool [K', H, W]`` of the distinct frames ``depth_index [K']`` (of ``num_distinct``); loss_curve
    ``[S, 2]`` (step, loss); psnr_curve / gaussians_curve ``[K, 2]`` or None; metrics: the run summary's;
    heldout_targets / heldout_renders: ``uint8 [V, H, W, 3]`` or None (no ground truth); stages: the summary's
    ``{stage: {key, hit, seconds, reason}}``; files: label -> relative link, None for a file not written (with
    ``file_hints[label]`` saying how to make it).
    """

    run: str
    source: str
    image: np.ndarray
    clip_ids: list[str]
    frames: np.ndarray
    frame_ts: list[int]
    clip_length: int
    commanded_plot: bytes | None
    calibrated_plot: bytes | None
    depth_index: list[int]
    num_distinct: int
    depth_frames: np.ndarray
    inv_depth: np.ndarray
    depth_valid: np.ndarray
    loss_curve: np.ndarray
    psnr_curve: np.ndarray | None
    gaussians_curve: np.ndarray | None
    metrics: dict[str, float]
    heldout_targets: np.ndarray | None
    heldout_renders: np.ndarray | None
    stages: dict[str, dict[str, Any]]
    wall_seconds: float
    files: dict[str, str | None] = field(default_factory=dict)
    file_hints: dict[str, str] = field(default_factory=dict)


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{data_uri(png)}" alt="{escape(alt)}">'


def _figure(png: bytes, caption: str) -> str:
    return f"<figure>{_img(png, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (escape text before)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e12:  # counts (Gaussians) arrive as floats from the metrics
            return f"{int(v):,}"
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return escape(str(v))


def _rows(strips: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Strips of one width stacked with a white gap."""
    white = np.full((gap, strips[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for s in strips for part in (s, white)][:-1])


def _asset_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def training_charts(r: RunReport) -> dict[str, str]:
    """Loss (per step, binned, log axis) and, when recorded, training PSNR and the Gaussian count: one SVG each,
    by file name."""
    charts = {}
    if len(r.loss_curve):
        x, y = binned(r.loss_curve[:, 0], r.loss_curve[:, 1])
        charts["training_loss.svg"] = line_chart([Series("loss (mean per bin)", x, y)], "Training loss", "step",
                                                 "loss", log_y=True)
    if r.psnr_curve is not None and len(r.psnr_curve):
        charts["training_psnr.svg"] = line_chart(
            [Series("PSNR of the training batch", r.psnr_curve[:, 0], r.psnr_curve[:, 1])], "Training PSNR", "step",
            "dB")
    if r.gaussians_curve is not None and len(r.gaussians_curve):
        charts["training_gaussians.svg"] = line_chart(
            [Series("Gaussians", r.gaussians_curve[:, 0], r.gaussians_curve[:, 1])], "Gaussians", "step", "count")
    return charts


def run_report_html(r: RunReport, *, thumb_width: int = 128, image_width: int = 640) -> tuple[str, dict[str, bytes]]:
    """The report page of one run, and its plots as files (``name -> bytes``: PNG and SVG) for MLflow."""
    assets: dict[str, bytes] = {}
    body: dict[str, str] = {}

    input_png = png_bytes(thumbnail(r.image, image_width))
    assets["input.png"] = input_png
    h, w = r.image.shape[:2]
    body["input"] = (f"<p>Source <code>{escape(r.source)}</code>, conditioning frame {w}x{h}.</p>"
                     + _figure(input_png, "the input view (distinct frame 0 of every clip)"))

    parts = []
    for clip_id, clip in zip(r.clip_ids, r.frames):
        png = png_bytes(strip([thumbnail(f, thumb_width) for f in clip]))
        assets[f"frames_{_asset_name(clip_id)}.png"] = png
        parts.append(_figure(png, f"clip {clip_id}: frames t = {', '.join(map(str, r.frame_ts))} of {r.clip_length}"))
    body["frames"] = f"<p>{len(r.clip_ids)} clips of {r.clip_length} frames.</p>" + "".join(parts)

    parts = []
    for name, png, caption in (("cameras_commanded.png", r.commanded_plot, "commanded camera tree (the trajectory)"),
                               ("cameras_calibrated.png", r.calibrated_plot,
                                "calibrated cameras (red) over the commanded ones (grey), in the commanded frame")):
        if png is not None:
            assets[name] = png
            parts.append(_figure(png, caption))
    body["cameras"] = "".join(parts) or '<p class="note">no camera plot was written for this run</p>'

    depth_png = png_bytes(_rows([strip([thumbnail(f, thumb_width) for f in r.depth_frames]),
                                 strip([thumbnail(colorize_inverse_depth(d, v), thumb_width)
                                        for d, v in zip(r.inv_depth, r.depth_valid)])]))
    assets["depth.png"] = depth_png
    body["depth"] = _figure(depth_png, f"distinct frames {', '.join(map(str, r.depth_index))} of {r.num_distinct} "
                                       "(top) and their inverse-depth targets (bottom; red near, blue far, grey: none)")

    charts = training_charts(r)
    assets.update({name: svg.encode() for name, svg in charts.items()})
    chart = "\n".join(charts.values())
    note = "" if r.psnr_curve is not None else ('<p class="note">this train artifact holds no PSNR curve '
                                                "(it predates recording one); the loss is per step</p>")
    stats = [[escape(k), _fmt(r.metrics[k])] for k in ("num_gaussians", "train_psnr", "train_ssim") if k in r.metrics]
    body["training"] = (chart or '<p class="note">no training curve recorded</p>') + note + (
        _table(["measure", "value"], stats) if stats else "")

    held = {k: v for k, v in r.metrics.items() if k in ("psnr", "ssim", "psnr_min_view") or k.startswith("pose.")}
    if r.heldout_targets is not None and r.heldout_renders is not None and len(r.heldout_targets):
        png = png_bytes(_rows([strip([thumbnail(t, 2 * thumb_width) for t in r.heldout_targets]),
                               strip([thumbnail(t, 2 * thumb_width) for t in r.heldout_renders])]))
        assets["heldout.png"] = png
        figure = _figure(png, "held-out views: ground truth of the undistorted scene (top), the canonical Gaussians "
                              "from the same cameras (bottom)")
        body["evaluation"] = _table(["metric", "value"], [[escape(k), _fmt(v)] for k, v in sorted(held.items())]) + figure
    else:
        body["evaluation"] = ('<p class="note">no ground truth for this generator: only the fit to the generated '
                              "frames is measured (Training section)</p>")
        if held:
            body["evaluation"] += _table(["metric", "value"], [[escape(k), _fmt(v)] for k, v in sorted(held.items())])

    rows = []
    for name, s in r.stages.items():
        state = '<span class="hit">hit</span>' if s["hit"] else '<span class="miss">computed</span>'
        why = "" if s["hit"] else escape("; ".join(s.get("reason", [])))
        rows.append([escape(name), state, f"{s['seconds']:.2f}", f"<code>{escape(s['key'][:12])}</code>", why])
    total = sum(s["seconds"] for s in r.stages.values())
    body["stages"] = (_table(["stage", "cache", "seconds", "key", "why it ran"], rows)
                      + f'<p class="note">stages {total:.1f} s, whole run {r.wall_seconds:.1f} s</p>')

    rows = []
    for label, href in r.files.items():
        if href is None:
            rows.append([escape(label), f'<span class="note">not written: {escape(r.file_hints.get(label, ""))}</span>'])
        else:
            rows.append([escape(label), f'<a href="{escape(href)}">{escape(href)}</a>'])
    body["files"] = _table(["file", "link"], rows) if rows else '<p class="note">no files</p>'

    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{escape(title)}</h2>{body[sid]}</section>' for sid, title in SECTIONS)
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>lift3d run {escape(r.run)}</title>'
            f"<style>{_CSS}</style></head><body><h1>lift3d run {escape(r.run)}</h1><nav>{nav}</nav>"
            f"{sections}</body></html>\n")
    return page, assets


@dataclass
class BatchRow:
    """One image of a batch: its run name, ``report`` (link relative to the index, None if not written),
    ``thumbnail`` (PNG bytes or None), the summary (None: the run did not finish) and an ``error`` line."""

    run: str
    report: str | None
    thumbnail: bytes | None
    summary: dict[str, Any] | None
    error: str | None = None


def batch_index_html(title: str, rows: list[BatchRow]) -> str:
    """The batch's index page: one row per image with its thumbnail, quality, cost and a link to its report."""
    out = []
    for row in rows:
        s = row.summary or {}
        m = s.get("metrics", {})
        stages = s.get("stages", {})
        name = (f'<a href="{escape(row.report)}">{escape(row.run)}</a>' if row.report else escape(row.run))
        quality = (f"{m['psnr']:.2f} dB / {m.get('ssim', float('nan')):.3f} held out" if "psnr" in m
                   else f"{m['train_psnr']:.2f} dB fit" if "train_psnr" in m else "")
        status = escape(row.error) if row.error else ("finished" if row.summary else "no summary")
        out.append([
            _img(row.thumbnail, row.run) if row.thumbnail else "",
            name,
            f"<code>{escape(str(s.get('source', '')))}</code>",
            quality,
            _fmt(m["num_gaussians"]) if "num_gaussians" in m else "",
            f"{s['wall_seconds']:.1f}" if "wall_seconds" in s else "",
            f"{sum(not v['hit'] for v in stages.values())} / {len(stages)}" if stages else "",
            status,
        ])
    table = _table(["input", "run", "source", "PSNR / SSIM", "Gaussians", "seconds", "stages computed", "status"], out)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>"
            f'<section id="runs"><h2>{len(rows)} images</h2>{table}</section></body></html>\n')
