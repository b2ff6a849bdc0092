"""Seeing the result (issue 24): the run report, the batch index, `lift3d render`'s videos, the cost estimate."""

from __future__ import annotations

import base64
import io
import itertools
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from lift3d_core.config import apply_overrides
from lift3d_core.cost import estimate_run, total_seconds
from lift3d_core.flythrough import orbit_path, resample_path, tree_walk, video_size
from lift3d_core.pipeline import stage_configs
from lift3d_core.report import SECTIONS
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree
from tests.conftest import clear_project_env, configured_project, tiny_params

SOURCE = "skimage:astronaut"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny lift (no Prefect, no MLflow), its report written by the flow body as after `lift3d lift`."""
    from flows.lift import lift_body

    root = tmp_path_factory.mktemp("project")
    with configured_project(root, tiny_params()) as project:
        summary = lift_body(SOURCE, tiny_params(), "tiny", project.store_url, str(project.state_dir),
                            str(project.runs_dir), track=False, use_prefect=False)
    return root, Path(summary["summary_path"]).parent, summary


class _Page(HTMLParser):
    """Every element's attributes, the section ids and their h2 headings, and the raw text of style/script."""

    def __init__(self):
        super().__init__()
        self.attrs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.headings: list[str] = []
        self.tags: set[str] = set()
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for name, value in attrs:
            self.attrs.append((tag, name, value or ""))
            if name == "id":
                self.ids.add(value)
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)


def _external_references(html: str, folder: Path) -> tuple[_Page, list[str]]:
    """Parse ``html``; every reference that would make a request outside ``folder`` (not a data: URI, not a
    fragment of this page, not an existing file under ``folder``)."""
    page = _Page()
    page.feed(html)
    bad = []
    for tag, name, value in page.attrs:
        if name in ("src", "srcset", "poster", "data", "action", "formaction", "xlink:href", "background"):
            if not value.startswith("data:"):
                bad.append(f"{tag} {name}={value[:80]}")
        elif name == "href":
            if value.startswith("#"):
                if value[1:] not in page.ids:
                    bad.append(f"{tag} href={value} (no such id)")
            elif "://" in value or value.startswith(("/", "//")) or ":" in value.split("/")[0]:
                bad.append(f"{tag} href={value}")
            elif not (folder / value).resolve().is_relative_to(folder.resolve()) or not (folder / value).exists():
                bad.append(f"{tag} href={value} (not a file of the run)")
    lowered = html.lower()
    bad += [token for token in ("<script", "<link", "<iframe", "@import", "url(") if token in lowered]
    return page, bad


@pytest.mark.slow
def test_the_report_has_every_section_and_makes_no_external_request(tiny_run):
    _, run_dir, summary = tiny_run
    assert summary["outputs"]["report"] == str(run_dir / "report.html")  # written at the end of the lift
    html = (run_dir / "report.html").read_text()
    page, bad = _external_references(html, run_dir)
    assert bad == []
    assert {sid for sid, _ in SECTIONS} <= page.ids
    assert [h.strip() for h in page.headings] == [title for _, title in SECTIONS]
    # every inline image decodes; one contact sheet per clip of the tree
    images = [v for tag, name, v in page.attrs if tag == "img" and name == "src"]
    for uri in images:
        assert uri.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
    tree = articulated_tree(stage_configs(tiny_params())["trajectory"])
    assert html.count("<figcaption>clip ") == len(tree.clips) and len(images) >= len(tree.clips) + 4
    # the numbers are the run's: held-out PSNR, every stage with its cache state, the loss and PSNR curves
    assert f"{summary['metrics']['psnr']:.4g}" in html and "pose.rot_deg_mean" in html
    assert html.count('class="miss">computed') == len(summary["stages"])
    assert "no earlier run of this image" in html  # the reason each stage ran
    assert html.count("<polyline") >= 2 and "Training PSNR" in html
    # the PLY is linked (relative), the videos not yet: the page says how to make them
    assert 'href="scene.ply"' in html and "lift3d render tiny" in html
    assets = {p.name for p in (run_dir / "report_assets").iterdir()}
    assert {"training_loss.svg", "depth.png", "input.png", "heldout.png"} <= assets


def _decode(path: Path) -> tuple[dict, np.ndarray]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    frames = np.stack([np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader])
    return meta, frames


@pytest.mark.slow
def test_render_writes_h264_videos_a_decoder_reads_and_the_report_links_them(tiny_run, capsys, monkeypatch):
    root, run_dir, _ = tiny_run
    monkeypatch.chdir(root)
    clear_project_env(monkeypatch)
    from flows import cli

    monkeypatch.setattr(sys, "argv", ["lift3d", "render", "tiny", "--fly-frames", "14", "--orbit-frames", "6",
                                      "--fps", "12"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
        raise SystemExit(0)
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    for name, count in (("flythrough.mp4", 14), ("orbit.mp4", 6)):
        meta, frames = _decode(run_dir / name)
        assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
        assert frames.shape == (count, 36, 48, 3)  # the tiny run's frames are 48x36: below the CPU cap, kept
        assert all(f.std() > 5 for f in frames)  # a scene, not a blank frame
        assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 1  # the camera moves
    html = (run_dir / "report.html").read_text()
    assert 'href="flythrough.mp4"' in html and 'href="orbit.mp4"' in html
    assert _external_references(html, run_dir)[1] == []


@pytest.mark.slow
def test_batch_index_has_one_row_per_run_and_links_reports(tiny_run, tmp_path):
    from tasks.report import write_batch_index

    _, run_dir, summary = tiny_run
    missing = tmp_path / "failed-run"
    missing.mkdir()
    batch = tmp_path / "batch"
    index = write_batch_index(batch, [run_dir, missing])
    html = index.read_text()
    page, bad = _external_references(html, Path("/"))  # links point into the runs' folders, outside the index's
    rows = [v for tag, name, v in page.attrs if tag == "a" and name == "href"]
    assert len(rows) == 1 and (batch / rows[0]).resolve() == (run_dir / "report.html").resolve()
    assert html.count("<tr>") == 3  # header + 2 images
    assert "failed-run" in html and "no summary.json" in html
    assert f"{summary['metrics']['psnr']:.2f} dB" in html
    assert [b for b in bad if "href" not in b] == []  # the thumbnail is inline


@pytest.mark.slow
def test_estimate_lists_only_what_will_run(tiny_run):
    from flows.estimate import estimate_lines
    from flows.settings import find_project

    root, _, _ = tiny_run
    store = find_project(root).store_url
    assert estimate_lines(tiny_params(), SOURCE, store, device="cpu") == [
        "every costly stage is cached; nothing long to run on this CPU"]
    lines = estimate_lines(apply_overrides(tiny_params(), ["train.fine_iterations=7"]), SOURCE, store, device="cpu")
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == ["train", "export", "evaluate"]
    assert "22 steps at 48x36" in lines[1]


def test_cost_model_reproduces_the_measurements_it_was_fitted_to():
    from flows.settings import DEMO_OVERRIDES

    demo = {e.stage: e for e in estimate_run(stage_configs(apply_overrides(_params(), list(DEMO_OVERRIDES))), "cpu")}
    # bench/RESULTS.md: the demo trained 1,000 distortion-aware steps in 240.9 s, generated 241 frames in ~9 s
    assert 0.8 * 240.9 < demo["train"].seconds < 1.25 * 240.9
    assert 5 < demo["generate"].seconds < 15 and "241 frames at 128x96" in demo["generate"].what
    full = {e.stage: e for e in estimate_run(stage_configs(_params()), "cpu")}
    gpu = {e.stage: e for e in estimate_run(stage_configs(_params()), "cuda")}
    # the default size trains for a day on the CPU and minutes on an H100 (270-420 s measured, warm to cold)
    assert full["train"].seconds > 20 * 3600 and 200 < gpu["train"].seconds < 600
    assert "17,000 steps at 1024x576" in full["train"].what
    # no measurement, no number: MotionCtrl-SVD on any device
    mc = estimate_run(stage_configs(apply_overrides(_params(), ["generate.backend=motionctrl_svd",
                                                                "generate.motionctrl_svd.checkpoint=x"])), "cuda")
    assert mc[0].seconds is None and total_seconds(mc) is None and "unknown" in mc[0].line()


def _params() -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def test_tree_walk_is_continuous_covers_every_camera_and_returns_to_the_input():
    tree = articulated_tree(TrajectoryConfig(presets=("U", "Round-RI_90"), levels=2, frames_per_clip=4))
    walk = tree_walk(tree)
    np.testing.assert_allclose(walk[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(walk[-1], np.eye(4), atol=1e-12)
    neighbours = {(a.tobytes(), b.tobytes()) for c in tree.clips for a, b in zip(c.c2w[:-1], c.c2w[1:])}
    neighbours |= {(b, a) for a, b in neighbours}
    assert all((a.tobytes(), b.tobytes()) in neighbours for a, b in itertools.pairwise(walk))
    distinct = {c.tobytes() for c in tree.distinct_c2w()}
    assert distinct == {c.tobytes() for c in walk}
    assert len(walk) == 1 + 2 * (tree.num_distinct_frames - 1)  # each step out and back once
    # resampling to the same count keeps the keys; to more, it passes through them
    np.testing.assert_allclose(resample_path(walk, len(walk)), walk, atol=1e-9)
    np.testing.assert_allclose(resample_path(walk, 2 * len(walk) - 1)[::2], walk, atol=1e-9)


def test_orbit_keeps_the_pivot_centred_at_its_distance():
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_rotvec([0.3, -0.5, 0.2]).as_matrix()
    c2w[:3, 3] = [0.3, -0.2, 1.0]
    pivot = c2w[:3, 3] + 2.0 * c2w[:3, 2]
    orbit = orbit_path(c2w, 2.0, 16, degrees=10.0)
    for cam in orbit:
        local = np.linalg.inv(cam) @ np.append(pivot, 1.0)
        np.testing.assert_allclose(local[:3], [0, 0, 2.0], atol=1e-9)  # straight ahead, same distance
    angles = np.degrees(np.arccos(np.clip(orbit[:, :3, 2] @ c2w[:3, 2], -1, 1)))
    assert 9.9 < angles.max() <= 10.0 + 1e-9 and np.ptp(orbit[:, :3, 3], axis=0).max() > 0.3
    assert video_size(1023, 577, None) == (1022, 576) and video_size(1024, 576, 320) == (320, 180)


def test_an_unknown_profile_is_one_line_before_anything_starts(tiny_project, capsys, monkeypatch):
    import flows.cli

    booted = []
    monkeypatch.setattr(flows.cli, "boot_prefect_in_background", lambda: booted.append(1) or (lambda: None))
    monkeypatch.setattr(sys, "argv", ["lift3d", "lift", SOURCE, "--profile", "gpu-xl"])
    with pytest.raises(SystemExit) as exit_info:
        flows.cli.main()
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exit_info.value.code == 2 and len(err) == 1 and "unknown profile 'gpu-xl'; profiles: cpu" in err[0]
    assert booted == [] and not (tiny_project / "data").exists()
