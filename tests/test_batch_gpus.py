"""`lift3d batch --gpus N`: one Dask worker per GPU, each seeing only its own device, one heavy stage per GPU at a
time. On a CPU the same code path runs with fake GPUs (``LIFT3D_FAKE_GPUS``): the workers get their
``CUDA_VISIBLE_DEVICES`` and ``GPU: 1`` as on a GPU host, and run the stages on the CPU."""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import pytest
import torch

from flows.batch import FAKE_GPUS, GPU_STAGES, STAGES_ORDER, choose_gpus
from lift3d_core.errors import Lift3DError
from tests.test_batch import TINIER, _cli, _images


def test_gpus_asked_for_must_be_visible(monkeypatch):
    monkeypatch.setenv(FAKE_GPUS, "2")
    assert choose_gpus("all") == ["0", "1"] and choose_gpus("1") == ["0"]
    with pytest.raises(Lift3DError, match=r"--gpus 3: only 2 GPU\(s\) visible"):
        choose_gpus("3")
    for bad in ("0", "two", "-1"):
        with pytest.raises(Lift3DError, match="give a number of GPUs"):
            choose_gpus(bad)
    monkeypatch.delenv(FAKE_GPUS)
    if not torch.cuda.is_available():
        with pytest.raises(Lift3DError, match="no GPU is visible"):
            choose_gpus("all")


def test_gpus_and_workers_exclude_each_other(tiny_project, capsys):
    code, out = _cli(["batch", "imgs", "--gpus", "2", "--workers", "2"], capsys)
    assert code != 0 and "not --workers with another" in out.out + out.err


@pytest.mark.slow
def test_two_fake_gpus_run_one_heavy_stage_each_at_a_time(tiny_project, monkeypatch, capsys):
    monkeypatch.setenv(FAKE_GPUS, "2")
    _images(tiny_project / "imgs", 4)
    code, out = _cli(["batch", "imgs", "--gpus", "2", "--no-track", *[a for s in TINIER for a in ("--set", s)]],
                     capsys)
    assert code == 0, out.err[-3000:]
    report = json.loads((tiny_project / "data" / "runs" / "imgs" / "batch.json").read_text())
    assert report["counts"] == {"done": 4, "reused": 0, "failed": 0}
    for e in report["inputs"]:
        assert Path(json.loads(Path(e["summary"]).read_text())["outputs"]["ply"]).is_file()

    # one worker per GPU, each seeing only its own device and declaring one GPU, with two threads
    workers = report["workers"]
    assert sorted(w["cuda_visible_devices"] for w in workers.values()) == ["0", "1"]
    assert all(w["resources"] == {"GPU": 1} and w["threads"] == 2 for w in workers.values())

    # every stage of every image ran once, on one of those workers
    timeline = report["timeline"]
    runs = {e["run"] for e in report["inputs"]}
    assert sorted((r["run"], r["stage"]) for r in timeline) == sorted((run, s) for run in runs for s in STAGES_ORDER)
    assert {r["worker"] for r in timeline} <= set(workers)
    assert all(r["end"] >= r["start"] for r in timeline)

    # no two GPU stages overlapped on one worker, and both workers ran GPU stages
    heavy = defaultdict(list)
    for r in timeline:
        if r["stage"] in GPU_STAGES:
            heavy[r["worker"]].append((r["start"], r["end"], r["run"], r["stage"]))
    assert set(heavy) == set(workers), heavy.keys()
    for worker, rows in heavy.items():
        rows.sort()
        for before, after in pairwise(rows):
            assert after[0] >= before[1], f"{worker} ran {before[2:]} and {after[2:]} at once"

    # the CPU stages ran too (on either worker: they need no GPU)
    cpu = [r for r in timeline if r["stage"] not in GPU_STAGES]
    assert len(cpu) == len(runs) * (len(STAGES_ORDER) - len(GPU_STAGES))
