"""Pictures for the run report, as arrays and PNG bytes: thumbnails, contact sheets, coloured depth."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray) -> bytes:
    """``uint8 [H, W, 3]`` (or ``[H, W]``) as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,...``: an image inside the page, so the report opens offline and alone."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(image: np.ndarray, max_width: int) -> np.ndarray:
    """``uint8 [H, W, 3]`` scaled down (never up) to at most ``max_width`` pixels wide, aspect kept."""
    h, w = image.shape[:2]
    if w <= max_width:
        return image
    size = (max_width, max(1, round(h * max_width / w)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def pick(count: int, most: int) -> np.ndarray:
    """At most ``most`` indices of ``range(count)``, evenly spread, first and last included."""
    return np.unique(np.linspace(0, count - 1, min(count, most)).round().astype(int))


def strip(images: list[np.ndarray] | np.ndarray, gap: int = 2) -> np.ndarray:
    """Images of one height side by side on white: ``uint8 [H, sum(W) + gaps, 3]``."""
    h = images[0].shape[0]
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    out = np.full((h, width, 3), 255, np.uint8)
    x = 0
    for im in images:
        out[:, x : x + im.shape[1]] = im
        x += im.shape[1] + gap
    return out


def colorize_inverse_depth(inv_depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``float [H, W]`` inverse depth as ``uint8 [H, W, 3]`` (matplotlib's turbo: near is red, far is blue),
    normalised between the 2nd and 98th percentiles of the valid pixels; invalid pixels grey."""
    from matplotlib import colormaps

    inv = np.asarray(inv_depth, np.float64)
    ok = np.isfinite(inv) & (inv > 0) if valid is None else np.asarray(valid, bool) & np.isfinite(inv)
    out = np.full((*inv.shape, 3), 128, np.uint8)
    if ok.any():
        lo, hi = np.percentile(inv[ok], [2, 98])
        t = np.clip((inv - lo) / max(hi - lo, 1e-12), 0, 1)
        rgb = (colormaps["turbo"](t)[..., :3] * 255 + 0.5).astype(np.uint8)
        out[ok] = rgb[ok]
    return out
