"""Hostile input through the CLI: one line on stderr, exit code 2, no traceback, nothing in the store.

Broken and hostile images, file and run names that would leave their folder, settings of the wrong type or out
of range, unknown backends, checkpoints with the wrong digest or shapes and a pickle that would run code; and
images a user expects to work (CMYK, 16-bit, grayscale, transparency, palettes, EXIF rotations), converted.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from lift3d_core.errors import Lift3DError
from lift3d_core.image import MAX_INPUT_PIXELS, load_image
from lift3d_core.store import ArtifactStore, artifact_key
from tests.conftest import tiny_params
from tests.test_pipeline import _cli


@pytest.fixture
def quiet_cli(monkeypatch):
    """The CLI without its temporary Prefect server: every case here fails before a flow would start."""
    import flows.cli

    monkeypatch.setattr(flows.cli, "boot_prefect_in_background", lambda: (lambda: None))
    monkeypatch.setattr(flows.cli, "stop_prefect_server", lambda: None)


def _photo(h: int = 48, w: int = 64) -> np.ndarray:
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2, : w // 2] = (220, 30, 30)  # a red top-left quadrant: shows any rotation or flip
    rgb[h // 2 :, :, 2] = 200
    return rgb


def _save(rgb_or_image, path: Path, **kw) -> Path:
    im = rgb_or_image if isinstance(rgb_or_image, Image.Image) else Image.fromarray(rgb_or_image)
    im.save(path, **kw)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(side: int) -> bytes:
    """A valid PNG header declaring ``side`` x ``side`` gray pixels, with one tiny compressed row: what a
    decompression bomb looks like before its pixels are inflated."""
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1))) + _png_chunk(b"IEND", b""))


def _store_files(project: Path) -> list[Path]:
    root = project / "data" / "artifacts"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _one_line_error(code, out) -> str:
    assert code == 2, (code, out.err[-2000:])
    assert "Traceback" not in out.err + out.out
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lift3d: error:"), out.err
    return lines[0]


def _image_case(case: str, d: Path) -> tuple[list[str], str]:
    """(CLI arguments, a phrase the one-line error must hold) for one hostile image or name."""
    png = _save(_photo(), d / "photo.png")
    if case == "truncated_png":
        (d / "t.png").write_bytes(png.read_bytes()[: len(png.read_bytes()) * 2 // 3])
        return ["lift", str(d / "t.png")], "corrupt or truncated"
    if case == "truncated_jpeg":
        jpg = _save(_photo(), d / "p.jpg", quality=90).read_bytes()
        (d / "t.jpg").write_bytes(jpg[: len(jpg) // 2])
        return ["lift", str(d / "t.jpg")], "corrupt or truncated"
    if case == "broken_png_crc":
        data = bytearray(png.read_bytes())
        data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
        (d / "crc.png").write_bytes(bytes(data))
        return ["lift", str(d / "crc.png")], "crc.png"
    if case == "not_an_image":
        (d / "notes.png").write_text("a text file named like a photo")
        return ["lift", str(d / "notes.png")], "not an image file"
    if case == "decompression_bomb":
        (d / "bomb.png").write_bytes(_bomb_png(20_000))  # 400 MP declared, 100 kB on disk
        return ["lift", str(d / "bomb.png")], "decompression bomb"
    if case == "float_tiff":
        _save(Image.fromarray(np.random.default_rng(0).random((32, 32), dtype=np.float32), mode="F"), d / "f.tif")
        return ["lift", str(d / "f.tif")], "floating-point image"
    if case == "non_utf8_name":
        name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: Python holds the byte as a surrogate
        os.link(png, d / name)
        return ["lift", str(d / name)], "not valid UTF-8"
    if case == "directory":
        (d / "folder.png").mkdir()
        return ["lift", str(d / "folder.png")], "not a file"
    if case == "dotdot_derived_run_name":
        os.link(png, d / "...png")  # its stem is "..": data/runs/.. would be data/
        return ["lift", str(d / "...png")], "run name '..'"
    if case == "escaping_run_name":
        return ["lift", str(png), "--run-name", "../../outside"], "run name '../../outside'"
    if case == "escaping_demo_run_name":
        return ["demo", "--run-name", "a/../../outside"], "path separator"
    raise AssertionError(case)


IMAGE_CASES = ["truncated_png", "truncated_jpeg", "broken_png_crc", "not_an_image", "decompression_bomb",
               "float_tiff", "non_utf8_name", "directory", "dotdot_derived_run_name", "escaping_run_name",
               "escaping_demo_run_name"]


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_hostile_images_and_names_are_one_line_and_write_nothing(tiny_project, capsys, quiet_cli, case):
    args, phrase = _image_case(case, tiny_project)
    line = _one_line_error(*_cli(args, capsys))
    assert phrase in line, line
    assert _store_files(tiny_project) == []
    assert not (tiny_project.parent / "outside").exists() and not (tiny_project / "data" / "outside").exists()


SETTING_CASES = {
    "train.seed=abc": "train.seed",
    "train.fine_iterations=ten": "fine_iterations",
    "train.coarse_iterations=true": "expected an integer",
    "train.net_width=.inf": "finite",
    "train.lambda_dssim=.nan": "finite",
    "train.lambda_dssim=2.0": "lambda_dssim must be in [0, 1]",
    "train.multires=5": "expected a list",
    "train.deform_scale=maybe": "true/false",
    "ingest.width=100000": "8..8192",
    "trajectory.levels=0": "levels",
    "calibrate.max_points=[1, 2]": "expected an integer",
    "generate.seed=-1": "generate.seed must be an integer",
    "generate.synthetic.preset=cathedral": "synthetic.preset 'cathedral' is unknown",
    "generate.backend=sora": "generate.backend 'sora' is unknown",
    "calibrate.backend=photogrammetry": "calibrate.backend 'photogrammetry' is unknown",
    "depth.backend=lidar": "depth.backend 'lidar' is unknown",
    "train.backend=vulkan": "train.backend 'vulkan' is unknown",
    "export.backend=opengl": "export.backend 'opengl' is unknown",
    "evaluate.backend=metal": "evaluate.backend 'metal' is unknown",
}


@pytest.mark.parametrize("override", list(SETTING_CASES))
def test_settings_of_the_wrong_type_or_range_and_unknown_backends(tiny_project, capsys, quiet_cli, override):
    png = _save(_photo(), tiny_project / "photo.png")
    line = _one_line_error(*_cli(["lift", str(png), "--set", override], capsys))
    assert SETTING_CASES[override] in line, line
    assert _store_files(tiny_project) == []


@pytest.mark.slow
def test_no_setting_value_escapes_as_anything_but_a_lift3d_error():
    """Every entry of params.yaml set to each of a dozen hostile values: accepted, or one Lift3DError; never a
    TypeError, OverflowError or ValueError from deep inside a config (which the CLI would print as a traceback)."""
    from lift3d_core.config import apply_overrides
    from lift3d_core.pipeline import key_params, stage_configs

    base = tiny_params()

    def leaves(d, prefix=()):
        for k, v in d.items():
            yield from leaves(v, (*prefix, k)) if isinstance(v, dict) else [(*prefix, k)]

    hostile = ["x", "-1", "1e30", "null", "[1]", "{a: 1}", "true", ".nan", "-.inf", "''", "[]", "99999999999999999999"]
    refused = 0
    for path in leaves({k: v for k, v in base.items() if k != "input"}):
        for raw in hostile:
            try:
                configs = stage_configs(apply_overrides(base, [f"{'.'.join(path)}={raw}"]))
                [key_params(c) for c in configs.values()]
            except Lift3DError:
                refused += 1
    assert refused > 1000  # most of them are refused, by a message


def _malicious_checkpoint(path: Path, marker: Path) -> None:
    """A torch.save file whose unpickling calls ``open(marker, "w")``: it creates ``marker`` if ever executed."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {"model.diffusion_model.x": Payload()}}, path)


@pytest.mark.slow
def test_the_malicious_pickle_is_real(tmp_path):
    """The fixture is no straw man: loaded without weights_only, in another process, it creates its file."""
    evil, marker = tmp_path / "evil.ckpt", tmp_path / "pwned"
    _malicious_checkpoint(evil, marker)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, weights_only=False)"], check=False,
                   capture_output=True, timeout=120)
    assert marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["malicious_pickle", "wrong_shapes", "wrong_digest"])
def test_hostile_checkpoints_are_refused_in_one_line(tiny_project, capsys, quiet_cli, monkeypatch, case):
    """A checkpoint that would run code (refused by weights_only loading: the file it would create never appears),
    one of the wrong shapes, one whose SHA-256 is not the official file's. The wrong digest is found while planning,
    before anything runs; the other two when generate loads the file, which then publishes nothing (the ingest and
    trajectory artifacts before it are valid and stay)."""
    import lift3d_core.checkpoints as checkpoints

    ckpt, marker = tiny_project / "motionctrl.ckpt", tiny_project / "pwned"
    if case == "malicious_pickle":
        _malicious_checkpoint(ckpt, marker)
    elif case == "wrong_shapes":
        torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(3, 3)}}, ckpt)
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
        spec = dataclasses.replace(checkpoints.CHECKPOINTS["motionctrl_svd"], sha256="0" * 64)
        monkeypatch.setitem(checkpoints.CHECKPOINTS, "motionctrl_svd", spec)
    params = tiny_params()
    params["input"]["image"] = str(_save(_photo(), tiny_project / "photo.png"))
    params["generate"].update(backend="motionctrl_svd")
    params["generate"]["motionctrl_svd"].update(checkpoint=str(ckpt), model="tiny", dtype="float32", steps=1)
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    line = _one_line_error(*_cli(["stage", "generate"], capsys))
    assert {"malicious_pickle": "refused without unpickling", "wrong_shapes": "not MotionCtrl-SVD's layout",
            "wrong_digest": "not the official file's"}[case] in line, line
    assert not marker.exists()
    stages = {p.relative_to(tiny_project / "data" / "artifacts").parts[0] for p in _store_files(tiny_project)} - {
        ".locks"}
    assert stages == (set() if case == "wrong_digest" else {"ingest", "trajectory"})


@pytest.mark.parametrize("stage, key", [("../train", "0" * 64), ("train", "../" * 8 + "etc"), ("/etc", "0" * 64),
                                        ("train", "0" * 63 + "/"), ("train", "A" * 64), ("tr\x00ain", "0" * 64),
                                        ("..", "0" * 64), ("train", "")])
def test_no_stage_name_or_key_reaches_outside_the_store(tmp_path, stage, key):
    root = tmp_path / "store"
    store = ArtifactStore(root)
    for call in (lambda: store.exists(stage, key), lambda: store.paths(stage, key), lambda: store.read(stage, key),
                 lambda: store.delete(stage, key), lambda: store.quarantine(stage, key),
                 lambda: store.write(stage, key, {}, {"a": np.zeros(2)}), lambda: artifact_key(stage, "1", {}, {}, {})
                 if stage != "train" else store.manifest(stage, key)):
        with pytest.raises(Lift3DError):
            call()
    assert [p for p in tmp_path.rglob("*") if p != root and root not in p.parents] == []


# -- what a user expects to work ---------------------------------------------------------------------------------


def test_modes_a_user_expects_are_converted_not_refused(tmp_path):
    rgb = _photo()
    red = np.array([220, 30, 30])
    cmyk = load_image(str(_save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95)))
    assert cmyk.shape == rgb.shape and np.abs(cmyk[5, 5].astype(int) - red).max() < 20
    gray16 = np.full((32, 32), 32768, np.uint16)
    gray16[:, :16] = 65535
    out = load_image(str(_save(Image.fromarray(gray16), tmp_path / "g16.png")))
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 20].tolist() == [128, 128, 128]  # scaled, not clipped
    gray = load_image(str(_save(rgb[..., 0], tmp_path / "gray.png")))
    assert gray.shape == rgb.shape and (gray[..., 0] == gray[..., 2]).all() and gray[5, 5, 0] == 220
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:, 32:, 3] = 0  # right half transparent
    out = load_image(str(_save(rgba, tmp_path / "rgba.png")))
    assert (out[:, 32:] == 255).all() and np.abs(out[5, 5].astype(int) - red).max() <= 1  # over white
    la = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    assert (load_image(str(_save(la, tmp_path / "la.png")))[:, 40] == 255).all()
    pal = Image.fromarray(rgb).quantize(4)
    pal.info["transparency"] = int(np.asarray(pal)[-1, -1])  # the blue part's palette index
    out = load_image(str(_save(pal, tmp_path / "pal.png", transparency=pal.info["transparency"])))
    assert (out[-1, -1] == 255).all() and out[5, 5, 0] > 150
    assert load_image(str(_save(Image.fromarray(rgb).quantize(8), tmp_path / "pal.gif"))).shape == rgb.shape
    assert load_image(str(_save(Image.fromarray(rgb[..., 0] > 100), tmp_path / "bw.png")))[5, 5].tolist() == [255] * 3


@pytest.mark.parametrize("orientation, corner", [(1, (0, 0)), (3, (-1, -1)), (6, (0, -1)), (8, (-1, 0)),
                                                 (2, (0, -1)), (4, (-1, 0))])
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    """The red quadrant of the stored pixels lands where the EXIF orientation says the viewer shows it."""
    im = Image.fromarray(_photo())
    exif = im.getexif()
    exif[0x0112] = orientation
    out = load_image(str(_save(im, tmp_path / "o.jpg", exif=exif, quality=95)))
    assert out.shape[:2] == ((48, 64) if orientation in (1, 2, 3, 4) else (64, 48))
    y, x = corner
    assert out[y, x, 0] > 180 and out[y, x, 2] < 60, out[y, x]


def test_any_damaged_byte_is_a_lift3d_error_or_a_valid_image(tmp_path):
    """Single-byte damage and truncation at many places of a PNG and a JPEG: every outcome is an image of the
    declared type or one Lift3DError, never another exception."""
    rng = np.random.default_rng(0)
    outcomes = {"image": 0, "refused": 0}
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(_photo()).save(buf, format=fmt)
        good = buf.getvalue()
        variants = [good[:n] for n in rng.integers(1, len(good), 20)]
        for pos in rng.integers(0, len(good), 40):
            damaged = bytearray(good)
            damaged[pos] ^= int(rng.integers(1, 256))
            variants.append(bytes(damaged))
        for i, data in enumerate(variants):
            path = tmp_path / f"{fmt}{i}"
            path.write_bytes(data)
            try:
                out = load_image(str(path))
            except Lift3DError:
                outcomes["refused"] += 1
            else:
                assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
                outcomes["image"] += 1
    assert outcomes["refused"] > 20 and outcomes["image"] > 0, outcomes


def test_the_pixel_limit_is_pils_too():
    assert Image.MAX_IMAGE_PIXELS == MAX_INPUT_PIXELS
    with pytest.raises(Lift3DError, match="decompression bomb"):
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bomb-{os.getpid()}.png"
        path.write_bytes(_bomb_png(11_000))  # 121 MP: just over the limit, under PIL's own error threshold
        try:
            load_image(str(path))
        finally:
            path.unlink()
