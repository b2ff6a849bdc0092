"""Input images: validation at the boundary, EXIF orientation, fit to the generator's size.

An input is a path to an image file, or ``skimage:NAME`` for one of the photographs
bundled with scikit-image (the demo uses ``skimage:astronaut``; no download).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lift3d_core.errors import Lift3DError

SKIMAGE_PREFIX = "skimage:"
# Photographs that scikit-image ships inside its wheel (no pooch download).
SKIMAGE_BUNDLED = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera")


@dataclass(frozen=True)
class IngestConfig:
    """How an input photograph becomes the generator's conditioning frame.

    width, height: the generator's frame size in pixels (the synthetic demo uses
    128x96; MotionCtrl-SVD 1024x576).
    fit: ``crop`` scales to cover then centre-crops (no borders, the reference's
    behaviour); ``pad`` scales to fit and pads with black.
    """

    width: int = 128
    height: int = 96
    fit: Literal["crop", "pad"] = "crop"

    def __post_init__(self):
        if not (8 <= self.width <= 8192 and 8 <= self.height <= 8192):
            raise Lift3DError(f"ingest: width/height must be within 8..8192, got {self.width}x{self.height}")
        if self.fit not in ("crop", "pad"):
            raise Lift3DError(f"ingest.fit must be 'crop' or 'pad', got {self.fit!r}")


def input_digest(source: str) -> str:
    """Content digest of an input: ``sha256:`` of the file bytes (or of a bundled photo's pixels)."""
    return "sha256:" + hashlib.sha256(_read_bytes(source)).hexdigest()


def _read_bytes(source: str) -> bytes:
    if source.startswith(SKIMAGE_PREFIX):
        rgb = _skimage_photo(source)
        return np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()
    path = Path(source)
    if not path.exists():
        raise Lift3DError(f"input image not found: {path}")
    if not path.is_file():
        raise Lift3DError(f"input image is not a file: {path}")
    return path.read_bytes()


def _skimage_photo(source: str) -> np.ndarray:
    name = source[len(SKIMAGE_PREFIX) :]
    if name not in SKIMAGE_BUNDLED:
        raise Lift3DError(f"unknown bundled photo {source!r}; choose one of skimage:{{{','.join(SKIMAGE_BUNDLED)}}}")
    import skimage.data

    rgb = getattr(skimage.data, name)()
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    return np.ascontiguousarray(rgb[..., :3].astype(np.uint8))


def load_image(source: str) -> np.ndarray:
    """Decode an input into ``uint8 [H, W, 3]`` RGB, applying its EXIF orientation.

    Raises :class:`Lift3DError` for a missing file, a non-image, a truncated or
    corrupt image, or one too small to use.
    """
    if source.startswith(SKIMAGE_PREFIX):
        return _skimage_photo(source)
    data = _read_bytes(source)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # forces a full decode: a truncated file fails here, not later
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise Lift3DError(f"{source}: not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise Lift3DError(f"{source}: corrupt or truncated image ({exc})") from None
    if rgb.shape[0] < 16 or rgb.shape[1] < 16:
        raise Lift3DError(f"{source}: image is {rgb.shape[1]}x{rgb.shape[0]} px; need at least 16x16")
    return rgb


def fit_image(rgb: np.ndarray, width: int, height: int, fit: str = "crop") -> np.ndarray:
    """Resize ``rgb [H, W, 3] uint8`` to ``[height, width, 3]`` keeping its aspect ratio.

    ``crop`` covers the target and centre-crops; ``pad`` fits inside and pads black.
    Lanczos resampling (antialiased downscale).
    """
    h0, w0 = rgb.shape[:2]
    scale = max(width / w0, height / h0) if fit == "crop" else min(width / w0, height / h0)
    w1, h1 = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    resized = np.asarray(Image.fromarray(rgb).resize((w1, h1), Image.Resampling.LANCZOS))
    out = np.zeros((height, width, 3), dtype=np.uint8)
    if fit == "crop":
        y0, x0 = (h1 - height) // 2, (w1 - width) // 2
        out[:] = resized[y0 : y0 + height, x0 : x0 + width]
    else:
        y0, x0 = (height - h1) // 2, (width - w1) // 2
        out[y0 : y0 + h1, x0 : x0 + w1] = resized
    return out


def ingest_image(source: str, cfg: IngestConfig) -> np.ndarray:
    """Load, validate and fit one input: ``uint8 [cfg.height, cfg.width, 3]``."""
    return fit_image(load_image(source), cfg.width, cfg.height, cfg.fit)
