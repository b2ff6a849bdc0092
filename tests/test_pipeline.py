"""The cached pipeline: key scheme, hits that skip work, miss explanations, CLI errors, one Prefect flow run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.settings import configure_environment, find_project
from lift3d_core.config import apply_overrides
from lift3d_core.errors import Lift3DError
from lift3d_core.evaluate import heldout_views
from lift3d_core.generate import synthetic_scene_config
from lift3d_core.pipeline import STAGES, explain_miss, plan, stage_configs
from lift3d_core.store import ArtifactStore
from lift3d_core.trajectory import CameraTree
from tests.conftest import tiny_params

SOURCE = "skimage:astronaut"


def _keys(params, source=SOURCE):
    return {name: p.key for name, p in plan(params, source).items()}


@pytest.mark.parametrize(
    "override, moved",
    [
        ("train.fine_iterations=7", {"train", "export", "evaluate"}),
        ("train.distortion=false", {"train", "export", "evaluate"}),
        ("evaluate.views=3", {"evaluate"}),
        ("export.preview_views=3", {"export"}),
        ("depth.min_depth=0.01", {"depth", "train", "export", "evaluate"}),
        ("calibrate.max_points=2000", {"calibrate", "depth", "train", "export", "evaluate"}),
        ("generate.seed=7", {"generate", "calibrate", "depth", "train", "export", "evaluate"}),
        ("trajectory.levels=1", {"trajectory", "generate", "calibrate", "depth", "train", "export", "evaluate"}),
        ("ingest.width=64", {"ingest", "generate", "calibrate", "depth", "train", "export", "evaluate"}),
    ],
)
def test_a_param_change_moves_exactly_its_stage_and_downstream(override, moved):
    base = tiny_params()
    before, after = _keys(base), _keys(apply_overrides(base, [override]))
    assert {s for s in STAGES if before[s] != after[s]} == moved


def test_plain_training_keys_only_what_plain_training_reads():
    plain = apply_overrides(tiny_params(), ["train.distortion=false"])
    base = _keys(plain)["train"]
    # the field's settings, and steps moved between the two stages (same total), train the same plain 3DGS
    for same in (["train.lr_grid=0.5"], ["train.net_width=8", "train.activation=silu"],
                 ["train.coarse_iterations=20", "train.fine_iterations=10"]):
        assert _keys(apply_overrides(plain, same))["train"] == base, same
    for other in (["train.grad_threshold=0.001"], ["train.fine_iterations=16"], ["train.batch_size=1"], ["train.init_opacity=0.2"]):
        assert _keys(apply_overrides(plain, other))["train"] != base, other
    # distortion-aware training keys every setting
    assert _keys(apply_overrides(tiny_params(), ["train.lr_grid=0.5"]))["train"] != _keys(tiny_params())["train"]


def test_compile_cache_lives_with_the_project_unless_the_user_set_it(tiny_project, monkeypatch):
    import os

    project = find_project(tiny_project)
    configure_environment(project)  # as the CLI does: before anything imports torch._inductor, which sets a default
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert Path(cache_dir()) == project.state_dir / "compile-cache" / "inductor"  # what torch reads
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    configure_environment(project)
    assert cache_dir() == "/elsewhere"
    # a project path with white space keeps torch's default (inductor's CPU build commands split on spaces)
    spaced = tiny_project / "my project"
    spaced.mkdir()
    (spaced / "params.yaml").write_text((tiny_project / "params.yaml").read_text())
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    configure_environment(find_project(spaced))
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ


def test_keys_are_stable_and_input_addressed(tmp_path):
    assert _keys(tiny_params()) == _keys(tiny_params())  # deterministic across calls
    a = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(a)
    other = _keys(tiny_params(), str(a))
    same = _keys(tiny_params())
    assert other["trajectory"] == same["trajectory"] and other["ingest"] != same["ingest"]


def test_explain_miss_names_the_changed_param():
    base = tiny_params()
    old = plan(base, SOURCE)["train"].doc
    new = plan(apply_overrides(base, ["train.fine_iterations=7"]), SOURCE)["train"].doc
    reasons = explain_miss(old, new)
    assert any("fine_iterations: 15 -> 7" in r for r in reasons)
    assert explain_miss(None, new) == ["no earlier run of this image"]
    plain = plan(apply_overrides(base, ["train.distortion=false"]), SOURCE)["train"].doc
    assert explain_miss(old, plain) == ["params.distortion: True -> False", "params.plain: added",
                                        "params.schedule: removed"]
    cal_old = plan(base, SOURCE)["depth"].doc
    cal_new = plan(apply_overrides(base, ["calibrate.max_points=2000"]), SOURCE)["depth"].doc
    assert explain_miss(cal_old, cal_new) == ["upstream calibrate moved"]


def test_unknown_sections_and_backends_are_rejected():
    with pytest.raises(Lift3DError, match="unknown section"):
        plan({**tiny_params(), "trian": {}}, SOURCE)
    for bad in ("generate.backend=motionctrl", "calibrate.backend=nope", "depth.backend=nope"):
        with pytest.raises(Lift3DError, match="unknown"):
            plan(apply_overrides(tiny_params(), [bad]), SOURCE)
    with pytest.raises(Lift3DError, match="fine_iterations must be >= 0"):
        plan(apply_overrides(tiny_params(), ["train.fine_iterations=-5"]), SOURCE)


def _run(project: Path, params: dict, until=None):
    from flows.lift import make_context, run_stages

    p = find_project(project)
    ctx = make_context(SOURCE, params, "t", p.store_url, str(p.state_dir), str(p.runs_dir))
    return run_stages(ctx, until=until, use_prefect=False)


@pytest.mark.slow
def test_stages_hit_after_a_run_and_a_train_change_reuses_generation(tiny_project):
    configure_environment(find_project(tiny_project))
    params = tiny_params()
    first = _run(tiny_project, params)
    assert not any(r.hit for r in first.values())
    store = ArtifactStore(find_project(tiny_project).store_url)
    gen_zip, _ = store.paths("generate", first["generate"].key)
    mtime = Path(gen_zip).stat().st_mtime_ns

    again = _run(tiny_project, params)
    assert all(r.hit for r in again.values())
    assert again["train"].seconds < 0.5 * first["train"].seconds  # a hit skipped the training

    changed = _run(tiny_project, apply_overrides(params, ["train.fine_iterations=5"]))
    hits = {n for n, r in changed.items() if r.hit}
    assert hits == {"ingest", "trajectory", "generate", "calibrate", "depth"}
    assert any("fine_iterations: 15 -> 5" in r for r in changed["train"].reason)
    assert Path(gen_zip).stat().st_mtime_ns == mtime  # generation was reused, not rewritten
    assert store.verify() == []
    # every artifact the run made is a real result: frames and Gaussians have the expected shapes
    frames = store.read("generate", first["generate"].key).arrays["frames"]
    assert frames.dtype == np.uint8 and frames.shape[2:] == (36, 48, 3)
    assert store.read("train", changed["train"].key).arrays["gaussians/means"].shape[1] == 3
    # evaluate's ground truth depends on generation only: kept under its own key, reused after the train change,
    # and equal to a fresh computation (the held-out metrics do not change by reusing it)
    (heldout,) = store.ls("heldout")
    truth = store.read("heldout", heldout.key).arrays
    np.testing.assert_array_equal(store.read("evaluate", changed["evaluate"].key).arrays["targets"], truth["targets"])
    tree = CameraTree.from_dict(store.read("trajectory", changed["trajectory"].key).attrs["tree"])
    image = store.read("ingest", changed["ingest"].key).arrays["image"]
    configs = stage_configs(params)
    c2w, targets = heldout_views(image, tree, synthetic_scene_config(image.shape[:2], configs["generate"]),
                                 configs["evaluate"])
    np.testing.assert_array_equal(truth["targets"], targets)
    np.testing.assert_array_equal(truth["c2w"], c2w)


@pytest.mark.slow
def test_corrupt_artifact_is_recomputed_not_used(tiny_project):
    configure_environment(find_project(tiny_project))
    params = tiny_params()
    first = _run(tiny_project, params, until="trajectory")
    store = ArtifactStore(find_project(tiny_project).store_url)
    zip_path, _ = store.paths("trajectory", first["trajectory"].key)
    data = bytearray(Path(zip_path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(zip_path).write_bytes(bytes(data))
    assert store.verify() != []
    again = _run(tiny_project, params, until="trajectory")
    assert not again["trajectory"].hit  # quarantined and recomputed
    assert store.verify() == []


def test_a_prefect_server_of_ones_own_boots_nothing(monkeypatch):
    import flows.settings

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    monkeypatch.setattr(flows.settings, "_server", None)
    assert flows.settings.boot_prefect_in_background()() is None
    assert flows.settings._server is None and os.environ["PREFECT_API_URL"] == "http://127.0.0.1:9/api"


def _cli(args, capsys):
    from flows import cli

    old = sys.argv
    sys.argv = ["lift3d", *args]
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = old
    return code, capsys.readouterr()


@pytest.mark.parametrize("case", ["missing", "truncated", "not_image", "bad_backend", "negative_iterations",
                                  "missing_checkpoint"])
def test_invalid_input_is_one_line_nonzero_and_writes_nothing(tiny_project, capsys, case):
    png = tiny_project / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png)
    args = {
        "missing": ["lift", str(tiny_project / "nope.png")],
        "truncated": ["lift", str(tiny_project / "trunc.png")],
        "not_image": ["lift", str(tiny_project / "notes.txt")],
        "bad_backend": ["lift", str(png), "--set", "generate.backend=sora"],
        "negative_iterations": ["lift", str(png), "--set", "train.fine_iterations=-5"],
        "missing_checkpoint": ["lift", str(png), "--set", "generate.backend=motionctrl_svd"],
    }[case]
    (tiny_project / "trunc.png").write_bytes(png.read_bytes()[:200])
    (tiny_project / "notes.txt").write_text("not an image")
    code, out = _cli(args, capsys)
    assert code == 2
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lift3d: error:")
    if case == "missing_checkpoint":  # named, with where to get it, before any stage ran
        assert "motionctrl_svd.ckpt is missing" in lines[0] and "huggingface.co/TencentARC/MotionCtrl" in lines[0]
    artifacts = tiny_project / "data" / "artifacts"
    assert not artifacts.exists() or not any(p.is_file() for p in artifacts.rglob("*"))


@pytest.mark.slow
def test_flow_end_to_end_with_prefect_and_mlflow(tiny_project, capsys):
    """The real `lift3d lift` path: Prefect (ephemeral), MLflow (SQLite), summary, PLY, previews."""
    code, out = _cli(["lift", SOURCE, "--run-name", "e2e"], capsys)
    assert code in (0, None), out.err[-2000:]
    run = tiny_project / "data" / "runs" / "e2e"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["run"] == "e2e" and set(summary["stages"]) == set(STAGES)
    assert all({"key", "hit", "seconds"} <= set(s) for s in summary["stages"].values())
    assert 10.0 < summary["metrics"]["psnr"] < 60.0 and 0.0 < summary["metrics"]["ssim"] <= 1.0
    from lift3d_core.splat.ply import load_ply

    assert load_ply(summary["outputs"]["ply"]).num > 100
    assert (run / "preview.png").is_file() and (run / "heldout.png").is_file()
    from mlflow.tracking import MlflowClient

    mlrun = MlflowClient().get_run(summary["mlflow_run_id"])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.tags["train.hit"] == "false" and "evaluate.seconds" in mlrun.data.metrics
    assert len(MlflowClient().get_metric_history(mlrun.info.run_id, "train.loss")) > 10
    # the run report, and its plots as artifacts of their own
    assert summary["outputs"]["report"] == str(run / "report.html") and (run / "report.html").is_file()
    plots = {Path(a.path).name for a in MlflowClient().list_artifacts(mlrun.info.run_id, "report")}
    assert {"training_loss.svg", "depth.png", "heldout.png", "cameras_calibrated.png"} <= plots
    assert "report.html" in {a.path for a in MlflowClient().list_artifacts(mlrun.info.run_id)}


@pytest.mark.slow
def test_lift_runs_without_prefect_when_its_server_cannot_start(tiny_project, capsys, monkeypatch):
    """A Prefect server that does not come up is reported, and the run completes without it, with the same keys."""
    import flows.cli

    monkeypatch.setattr(flows.cli, "boot_prefect_in_background",
                        lambda: (lambda: RuntimeError("Timed out while attempting to connect to ephemeral Prefect API")))
    code, out = _cli(["lift", SOURCE, "--run-name", "noprefect", "--no-track"], capsys)
    assert code in (0, None), out.err[-2000:]
    assert "running the stages without Prefect" in " ".join(out.out.split())  # rich wraps lines
    summary = json.loads((tiny_project / "data" / "runs" / "noprefect" / "summary.json").read_text())
    assert set(summary["stages"]) == set(STAGES) and not any(s["hit"] for s in summary["stages"].values())
    import yaml

    from lift3d_core.pipeline import plan

    keys = {name: s.key for name, s in plan(yaml.safe_load((tiny_project / "params.yaml").read_text()), SOURCE).items()}
    assert {k: v["key"] for k, v in summary["stages"].items()} == keys


def test_train_key_resolves_auto_and_ignores_speed_only_switches():
    import torch

    from lift3d_core.train import TrainStageConfig

    base = tiny_params()
    key = plan(base, SOURCE)["train"].key
    for speed in ("train.compile_field=off", "train.compile_loss=on", "train.field_kernels=torch"):
        assert plan(apply_overrides(base, [speed]), SOURCE)["train"].key == key, speed
    # auto is hashed as what runs here (the torch rasterizer on this CPU), so naming it changes nothing ...
    assert plan(apply_overrides(base, ["train.backend=torch"]), SOURCE)["train"].key == key
    doc = TrainStageConfig.from_params(base["train"]).key_params()
    assert doc["schedule"]["train"]["backend"] == ("gsplat/cuda" if torch.cuda.is_available() else "torch/cpu")
    # ... while a setting that changes the numbers still moves the key
    assert plan(apply_overrides(base, ["train.lambda_dssim=0.3"]), SOURCE)["train"].key != key


def test_params_yaml_lists_every_hashed_train_setting():
    import yaml

    from lift3d_core.train import TrainStageConfig

    section = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["train"]
    doc = TrainStageConfig.from_params(section).key_params()
    hashed = (set(doc["schedule"]) - {"train"}) | set(doc["schedule"]["train"]) | (set(doc) - {"schedule"})
    # iterations is the sum of the two stage lengths, which params.yaml sets
    assert sorted(hashed - set(section) - {"iterations"}) == []


def test_checkpoints_verify_reads_where_params_point_and_exits_nonzero_when_any_is_missing(tiny_project, capsys):
    import torch
    import yaml

    code, out = _cli(["checkpoints", "verify"], capsys)
    assert code == 1 and out.out.count("missing") >= 3
    # the MotionCtrl file where params.yaml points (relative to the project), the others in checkpoints/
    (tiny_project / "weights").mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tiny_project / "weights" / "mc.ckpt")
    for name in ("MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth", "depth_anything_v2_vitl.pth"):
        (tiny_project / "checkpoints").mkdir(exist_ok=True)
        torch.save({"w": torch.zeros(2)}, tiny_project / "checkpoints" / name)
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["generate"]["motionctrl_svd"]["checkpoint"] = "weights/mc.ckpt"
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    code, out = _cli(["checkpoints", "verify"], capsys)
    assert code == 0, out.out
    assert "missing" not in out.out and out.out.count("present") == 3


@pytest.mark.parametrize("stage, moved, kept", [("generate", "synthetic", None), ("calibrate", "colmap", "commanded"),
                                                ("depth", "calibrated", None)])
def test_a_backend_version_moves_that_backends_keys_only(monkeypatch, stage, moved, kept):
    """Moving one backend's ``registry.Backend.version`` moves the key of its stage (and what follows) when that
    backend is active, and no key of a run on another backend of the same stage; "1" adds nothing."""
    from dataclasses import replace

    backends = STAGES[stage].backends

    def keys(backend):
        return {n: s.key for n, s in plan({stage: {"backend": backend}}, "skimage:astronaut").items()}

    before = {b: keys(b) for b in (moved, kept) if b}
    monkeypatch.setitem(backends, moved, replace(backends[moved], version="2"))
    after = {b: keys(b) for b in (moved, kept) if b}
    assert after[moved][stage] != before[moved][stage] and after[moved]["evaluate"] != before[moved]["evaluate"]
    assert all(after[moved][u] == before[moved][u] for u in STAGES[stage].upstream)
    assert plan({stage: {"backend": moved}}, "skimage:astronaut")[stage].doc["stage_version"].endswith(f"+{moved}.2")
    if kept:
        assert after[kept] == before[kept]
