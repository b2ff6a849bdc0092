"""`lift3d batch`: inputs from a folder, list or glob; a real 2-worker Dask LocalCluster; failures isolated; reruns
reuse what is finished and compute nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flows.batch import check_api_reachable, failure_reason, find_inputs, run_names
from lift3d_core.errors import Lift3DError

# Smaller than the tiny profile: two presets, one level, 3 frames a clip, 32x24 frames, 6 training steps.
TINIER = ("ingest.width=32", "ingest.height=24", "trajectory.presets=[U,Round-RI_90]", "trajectory.levels=1",
          "trajectory.frames_per_clip=3", "calibrate.max_points=500", "train.coarse_iterations=3",
          "train.fine_iterations=3", "train.densify_from=2", "train.densify_every=2", "train.densify_until=4",
          "export.preview_views=1", "evaluate.views=1", "evaluate.train_views=1")


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(folder / f"photo{i}.png")
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_inputs_from_a_folder_a_list_and_a_glob(tmp_path):
    a, b = _images(tmp_path / "imgs", 2)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    assert find_inputs(str(tmp_path / "imgs")) == [str(a), str(b)]  # image files by extension, sorted
    listing = tmp_path / "list.txt"
    listing.write_text(f"# photos\nimgs/photo1.png\n\nskimage:astronaut\n{a}\nimgs/photo1.png\n")
    assert find_inputs(str(listing)) == [str(b), "skimage:astronaut", str(a)]  # relative to the list, deduplicated
    assert find_inputs(str(tmp_path / "imgs" / "*1.png")) == [str(b)]
    with pytest.raises(Lift3DError, match="no input images"):
        find_inputs(str(tmp_path / "imgs" / "*.jpg"))
    with pytest.raises(Lift3DError, match="not a directory, a list file"):
        find_inputs(str(tmp_path / "nowhere"))


def test_run_names_are_safe_unique_and_stable():
    names = run_names(["/a/cat.png", "/b/cat.png", "skimage:astronaut", "/c/../e v!l.jpg"])
    assert names[2:] == ["astronaut", "e_v_l"]
    assert names[0] != names[1] and all(n.startswith("cat-") for n in names[:2])
    assert run_names(["/a/cat.png", "/b/cat.png"]) == names[:2]


def test_failure_reason_is_one_line():
    assert failure_reason("ingest", Lift3DError("x.png: corrupt or truncated image")) == \
        "ingest: x.png: corrupt or truncated image"
    assert failure_reason("train", RuntimeError("CUDA out of memory\ntraceback...")) == \
        "train: RuntimeError: CUDA out of memory"


def test_a_remote_scheduler_cannot_report_to_a_loopback_api():
    check_api_reachable("tcp://127.0.0.1:8786", "http://127.0.0.1:4200/api")
    check_api_reachable("tcp://10.0.0.5:8786", "http://10.0.0.2:4200/api")
    with pytest.raises(Lift3DError, match="set PREFECT_API_URL"):
        check_api_reachable("tcp://10.0.0.5:8786", "http://127.0.0.1:4200/api")


def _cli(args, capsys):
    from flows import cli

    old, sys.argv = sys.argv, ["lift3d", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = old
    return code, capsys.readouterr()


@pytest.mark.slow
def test_batch_on_a_two_worker_cluster_isolates_failures_and_reruns_nothing(tiny_project, capsys):
    images = _images(tiny_project / "imgs", 3)
    (tiny_project / "imgs" / "broken.png").write_bytes(images[0].read_bytes()[:150])  # truncated PNG
    args = ["batch", "imgs", "--workers", "2", "--no-track", *[a for s in TINIER for a in ("--set", s)]]

    code, out = _cli(args, capsys)
    assert code == 1, out.err[-3000:]  # an image failed
    report = json.loads((tiny_project / "data" / "runs" / "imgs" / "batch.json").read_text())
    status = {Path(e["source"]).name: e for e in report["inputs"]}
    assert {n: e["status"] for n, e in status.items()} == {"broken.png": "failed", "photo0.png": "done",
                                                           "photo1.png": "done", "photo2.png": "done"}
    assert status["broken.png"]["reason"].startswith("ingest: ") and "corrupt or truncated image" in \
        status["broken.png"]["reason"] and "\n" not in status["broken.png"]["reason"]
    for name in ("photo0.png", "photo1.png", "photo2.png"):
        summary = json.loads(Path(status[name]["summary"]).read_text())
        assert Path(summary["outputs"]["ply"]).is_file() and summary["stages"]["train"]["hit"] is False
        assert "train" in status[name]["computed"]
    keys = {json.loads(Path(status[n]["summary"]).read_text())["stages"]["generate"]["key"] for n in status
            if n != "broken.png"}
    assert len(keys) == 3  # three different images: three generations
    index = (tiny_project / "data" / "runs" / "imgs" / "index.html").read_text()  # one row per run, its report linked
    assert all(f'{status[n]["run"]}/report.html' in index for n in ("photo0.png", "photo1.png", "photo2.png")), index[:2000]
    artifacts = sorted((tiny_project / "data" / "artifacts").rglob("*.zip"))
    stamps = {p: p.stat().st_mtime_ns for p in artifacts}
    summaries = {n: Path(status[n]["summary"]).stat().st_mtime_ns for n in status if n != "broken.png"}

    code, out = _cli(args, capsys)
    assert code == 1, out.err[-3000:]
    rerun = {Path(e["source"]).name: e for e in
             json.loads((tiny_project / "data" / "runs" / "imgs" / "batch.json").read_text())["inputs"]}
    assert {n: e["status"] for n, e in rerun.items()} == {"broken.png": "failed", "photo0.png": "reused",
                                                          "photo1.png": "reused", "photo2.png": "reused"}
    assert all(e["computed"] == [] for e in rerun.values())
    assert rerun["broken.png"]["reason"] == status["broken.png"]["reason"]
    # no stage work: no artifact written or rewritten, no run summary rewritten
    assert sorted((tiny_project / "data" / "artifacts").rglob("*.zip")) == artifacts
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert all(Path(rerun[n]["summary"]).stat().st_mtime_ns == t for n, t in summaries.items())
    assert "3 reused, 1 failed" in " ".join(out.out.split())
