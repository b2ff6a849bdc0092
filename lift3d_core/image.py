"""Input images: validation at the boundary, EXIF orientation, fit to the generator's size.

An input is a path to an image file, or ``skimage:NAME`` for one of the photographs
bundled with scikit-image (the demo uses ``skimage:astronaut``; no download).
Everything a hostile or broken file can do is answered here by one :class:`Lift3DError`: a file name that is not
UTF-8, a truncated or corrupt file, a decompression bomb (:data:`MAX_INPUT_PIXELS`), a float image.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from lift3d_core.errors import Lift3DError

SKIMAGE_PREFIX = "skimage:"
# Photographs that scikit-image ships inside its wheel (no pooch download).
SKIMAGE_BUNDLED = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera")
# A 108-MP phone photograph fits (12000 x 9000); a file declaring more is refused before its pixels are decoded.
# PIL's own check (a warning above its limit, an error above twice it) is set to the same number, explicitly.
MAX_INPUT_PIXELS = 120_000_000
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
# what a transparent pixel becomes: the photo as an image viewer shows it on a white page
TRANSPARENT_BACKGROUND = (255, 255, 255)


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
    check_file_name(source)
    path = Path(source)
    if not path.exists():
        raise Lift3DError(f"input image not found: {path}")
    if not path.is_file():
        raise Lift3DError(f"input image is not a file: {path}")
    return path.read_bytes()


def check_file_name(source: str) -> None:
    """An input path must be text: a name that is not UTF-8 (Python holds its bytes as surrogates) or holds a NUL
    would reach run names, logs and artifact attributes, which are UTF-8 JSON. A relative path with ``..`` is an
    ordinary path to a file and fine: nothing is ever written under an input's name."""
    try:
        source.encode("utf-8")
    except UnicodeEncodeError:
        shown = source.encode("utf-8", "backslashreplace").decode()
        raise Lift3DError(f"input file name {shown!r} is not valid UTF-8; rename the file") from None
    if "\x00" in source:
        raise Lift3DError(f"input file name {source!r} holds a NUL character")


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

    Converted, as a user expects, rather than refused (:func:`to_rgb`): grayscale and bilevel, palette, CMYK
    (PIL undoes Adobe's inverted CMYK JPEGs), YCbCr/LAB/HSV, 16-bit (scaled, not clipped) and images with
    transparency (composited over white). The first frame of an animation or a multi-page file.
    Raises :class:`Lift3DError` for a missing file, a name that is not UTF-8, a non-image, a truncated or
    corrupt image, a decompression bomb (more than :data:`MAX_INPUT_PIXELS` declared), a floating-point image,
    or one too small to use.
    """
    if source.startswith(SKIMAGE_PREFIX):
        return _skimage_photo(source)
    data = _read_bytes(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > MAX_INPUT_PIXELS:
                    raise Image.DecompressionBombError(f"{w}x{h} = {w * h / 1e6:.0f} MP")
                im.load()  # forces a full decode: a truncated file fails here, not later
                rgb = to_rgb(ImageOps.exif_transpose(im), source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Lift3DError(f"{source}: more pixels than the {MAX_INPUT_PIXELS / 1e6:.0f} MP an input may have, "
                          f"refused before decoding (a decompression bomb?): {str(exc)[:120]}") from None
    except UnidentifiedImageError:
        raise Lift3DError(f"{source}: not an image file PIL can read") from None
    except Lift3DError:
        raise
    except Exception as exc:  # any failure to decode an untrusted file is a corrupt file, said in one line
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise Lift3DError(f"{source}: corrupt or truncated image ({detail})") from None
    if rgb.shape[0] < 16 or rgb.shape[1] < 16:
        raise Lift3DError(f"{source}: image is {rgb.shape[1]}x{rgb.shape[0]} px; need at least 16x16")
    return rgb


def to_rgb(im: Image.Image, source: str = "image") -> np.ndarray:
    """``uint8 [H, W, 3]`` of a decoded PIL image of any mode.

    - 16-bit and 32-bit integer grayscale (``I;16*``, ``I``): 0..65535 scaled to 0..255 (PIL's own conversion
      clips at 255, which turns a 16-bit photo white).
    - transparency (``RGBA``, ``LA``, ``PA``, a palette with a transparent index, premultiplied modes):
      composited over :data:`TRANSPARENT_BACKGROUND`.
    - every other mode (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``): PIL's conversion to RGB.
    - floating point (``F``): refused, its range is unknown.
    """
    if im.mode == "F":
        raise Lift3DError(f"{source}: a floating-point image (mode F) has no known range; save it as an 8- or "
                          "16-bit PNG, JPEG or TIFF")
    if im.mode.startswith("I"):
        gray = np.asarray(im).astype(np.float64)
        sixteen = im.mode.startswith("I;16") or gray.max(initial=0) > 255  # a dark 16-bit photo is still 16-bit
        gray = np.clip(gray / 257.0 if sixteen else gray, 0, 255)
        return np.repeat(np.round(gray).astype(np.uint8)[..., None], 3, axis=-1)
    if im.mode in ("La", "RGBa"):  # premultiplied alpha: PIL unpremultiplies to RGBA
        im = im.convert("RGBA") if im.mode == "RGBa" else im.convert("LA")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


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
