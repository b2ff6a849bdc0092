"""params.yaml mapping and input validation at the boundary."""

import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from lift3d_core.config import apply_overrides, build_config
from lift3d_core.errors import Lift3DError
from lift3d_core.image import IngestConfig, fit_image, ingest_image, input_digest, load_image


@dataclass(frozen=True)
class _Cfg:
    iterations: int = 10
    lr: float = 0.1
    presets: tuple[str, ...] = ("U", "D")
    flag: bool = False

    def __post_init__(self):
        if self.iterations <= 0:
            raise Lift3DError(f"iterations must be > 0, got {self.iterations}")


def test_build_config_types_and_defaults():
    cfg = build_config(_Cfg, {"iterations": 5, "lr": 1, "presets": ["L"]})
    assert cfg == _Cfg(iterations=5, lr=1.0, presets=("L",))
    assert isinstance(cfg.lr, float)


@pytest.mark.parametrize(
    "section, message",
    [
        ({"iteration": 5}, "unknown parameter"),
        ({"iterations": "many"}, "expected an integer"),
        ({"iterations": -3}, "must be > 0"),
        ({"flag": "yes"}, "true/false"),
        ({"presets": "U"}, "expected a list"),
    ],
)
def test_build_config_rejects_bad_sections(section, message):
    with pytest.raises(Lift3DError, match=message):
        build_config(_Cfg, section)


def test_overrides_parse_yaml_and_reject_unknown_keys():
    params = {"train": {"iterations": 10, "sub": {"a": 1}}}
    out = apply_overrides(params, ["train.iterations=500", "train.sub.a=[1, 2]"])
    assert out["train"]["iterations"] == 500 and out["train"]["sub"]["a"] == [1, 2]
    assert params["train"]["iterations"] == 10  # the input is not mutated
    for bad in ("train.iterationz=3", "trian.iterations=3", "train=3", "iterations"):
        with pytest.raises(Lift3DError):
            apply_overrides(params, [bad])


def _png_bytes(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", **kw)
    return buf.getvalue()


def test_load_image_errors(tmp_path):
    with pytest.raises(Lift3DError, match="not found"):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "notes.txt").write_text("hello, not an image")
    with pytest.raises(Lift3DError, match="not an image"):
        load_image(str(tmp_path / "notes.txt"))
    data = _png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(Lift3DError, match="corrupt or truncated"):
        load_image(str(tmp_path / "trunc.png"))
    (tmp_path / "tiny.png").write_bytes(_png_bytes(np.zeros((4, 4, 3), np.uint8)))
    with pytest.raises(Lift3DError, match="at least 16x16"):
        load_image(str(tmp_path / "tiny.png"))
    with pytest.raises(Lift3DError, match="bundled photo"):
        load_image("skimage:nonexistent")


def test_exif_orientation_and_rgb_conversion(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20] = 255  # left half white
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif, quality=95)
    out = load_image(str(path))
    assert out.shape == (40, 20, 3)  # displayed upright: portrait
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # white half ends up on top
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((32, 32), 77, np.uint8)).save(gray)
    assert load_image(str(gray)).shape == (32, 32, 3)


def test_fit_image_crop_and_pad():
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[:, 50:150] = 200  # a central band
    crop = fit_image(rgb, 64, 64, "crop")
    assert crop.shape == (64, 64, 3) and crop.mean() > 190  # the centre square is all band
    pad = fit_image(rgb, 64, 64, "pad")
    assert pad.shape == (64, 64, 3) and pad[:10].max() == 0  # letterboxed
    assert ingest_image("skimage:astronaut", IngestConfig(width=48, height=32)).shape == (32, 48, 3)


def test_input_digest_is_content_addressed(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    img = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    a.write_bytes(_png_bytes(img))
    b.write_bytes(_png_bytes(img))
    assert input_digest(str(a)) == input_digest(str(b))  # same bytes, different name
    img[0, 0] ^= 1
    b.write_bytes(_png_bytes(img))
    assert input_digest(str(a)) != input_digest(str(b))


def test_every_model_section_takes_one_dtype_spelling():
    from lift3d_core.calibrate.mast3r.config import Mast3rConfig
    from lift3d_core.depth import DepthAnythingV2Config
    from lift3d_core.generate import MotionCtrlSVDConfig

    for cls in (MotionCtrlSVDConfig, Mast3rConfig, DepthAnythingV2Config):
        assert cls(dtype="bf16").dtype == cls(dtype="bfloat16").dtype == "bfloat16"  # one key for both spellings
        assert cls(dtype="fp32").dtype == "float32"
        with pytest.raises(Lift3DError, match="dtype must be one of float32, bfloat16, float16"):
            cls(dtype="half")
