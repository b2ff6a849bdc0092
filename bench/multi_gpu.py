#!/usr/bin/env python
"""Scaling of ``lift3d batch --gpus``: the same images on 1 GPU and on N GPUs, each batch from an empty store.

    python bench/multi_gpu.py --gpus 2 --out bench/results/multi_gpu_2xh100.json
    python bench/multi_gpu.py --gpus 2 --generator motionctrl_svd --out bench/results/multi_gpu_motionctrl.json
    python bench/multi_gpu.py --fake-gpus 2 --tiny --images 4     # CPU smoke run: its numbers mean nothing

Each batch is the ``lift3d batch`` command a user runs (its own process, Prefect's temporary server, the
one-worker-per-GPU Dask cluster) in a scratch project, on ``--images`` photographs (crops of the bundled astronaut
photograph, each a different image): generate (the ``synthetic`` scene, or ``--generator motionctrl_svd`` on
full-size random weights, written once to a temporary folder, with MASt3R on full-size random weights to calibrate
its frames), calibrate, depth, and distortion-aware training at ``--train-steps`` steps, then export and evaluate.
Random weights make meaningless frames and cameras: their times are speeds, never qualities.

It reports, per batch: images per hour (done images over the flow's wall time, cluster start included, and over the
span of the stages' timeline), per worker the share of the span its GPU ran a heavy stage (busy fraction, from
``batch.json``'s timeline: Dask's task stream), per stage the seconds and busy fraction on each worker, and
``nvidia-smi`` utilisation and memory samples per GPU where it exists; then the scaling ratio (N-GPU over 1-GPU
images per hour). ``--fake-gpus`` declares GPUs without CUDA (``LIFT3D_FAKE_GPUS``): the same placement code path,
the stages on the CPU; use it with ``--tiny`` (the tests' tiny scene) to check the script, not to measure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flows.batch import FAKE_GPUS, GPU_STAGES  # noqa: E402
from tests.conftest import tiny_params  # noqa: E402
from tests.test_batch import TINIER  # noqa: E402 (the batch tests' smallest scene: the smoke run's)


def photos(folder: Path, n: int) -> None:
    """``n`` different photographs: crops of the astronaut photograph, shifted and mirrored per image."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    source = data.astronaut()  # 512x512, bundled with scikit-image
    for i in range(n):
        crop = np.roll(source, 37 * i, axis=1)[64 + (i % 4) * 16:352 + (i % 4) * 16]
        Image.fromarray(crop[:, ::-1] if i % 2 else crop).save(folder / f"photo{i:02d}.png")


def write_random_weights(folder: Path, tiny: bool) -> list[str]:
    """MotionCtrl-SVD and MASt3R of their official sizes (``tiny``: the tests' tiny ones) with random weights, in
    their official layouts; the ``--set`` options that read them."""
    import argparse as ap

    import torch

    from lift3d_core.calibrate.mast3r.checkpoint import constructor_string
    from lift3d_core.calibrate.mast3r.model import AsymmetricMASt3R, Mast3rNetConfig
    from lift3d_core.generate.motionctrl_svd.convert import to_official
    from lift3d_core.generate.motionctrl_svd.model import OFFICIAL, TINY, build_model

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    spec = TINY if tiny else OFFICIAL
    state = {k: v.cpu() for k, v in build_model(spec, dtype=torch.float32).state_dict().items()}
    torch.save({"state_dict": to_official(state, spec), "global_step": 0}, folder / "motionctrl_svd.ckpt")
    del state
    mast3r = AsymmetricMASt3R(Mast3rNetConfig.tiny() if tiny else Mast3rNetConfig.official())
    torch.save({"model": mast3r.state_dict(), "args": ap.Namespace(model=constructor_string(mast3r.cfg))},
               folder / "mast3r.pth")
    options = ["generate.backend=motionctrl_svd", f"generate.motionctrl_svd.checkpoint={folder / 'motionctrl_svd.ckpt'}",
               "calibrate.backend=mast3r", f"calibrate.mast3r.checkpoint={folder / 'mast3r.pth'}",
               "calibrate.mast3r.min_conf_thr=1.0"]  # random confidences: keep points to train on
    if tiny:  # the settings of tests/test_model_backends_e2e.py
        options += ["ingest.width=64", "ingest.height=64", "generate.motionctrl_svd.model=tiny",
                    "generate.motionctrl_svd.steps=2", "generate.motionctrl_svd.dtype=float32",
                    "calibrate.mast3r.image_size=64", "calibrate.mast3r.iterations=5"]
    return options


def settings(args, weights: list[str]) -> list[str]:
    """The ``--set`` options of every batch: the scene size, the training steps, the generator's weights, the user's."""
    if args.tiny:
        scene = list(TINIER)
    else:
        coarse = args.train_steps // 4  # the default schedule's split is 3,000 coarse of 17,000
        scene = [f"train.coarse_iterations={coarse}", f"train.fine_iterations={args.train_steps - coarse}"]
    return [*scene, *weights, *args.set]


class GPUSampler:
    """``nvidia-smi`` utilisation and memory of every GPU every half second, in a thread (nothing without it)."""

    def __init__(self):
        self.samples: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "500"],
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                index, util, memory = (f.strip() for f in line.split(","))
                self.samples[index].append((float(util), float(memory)))
            except ValueError:
                continue

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait()
        self.thread.join(timeout=5)
        return {gpu: {"samples": len(s), "mean_utilisation_pct": round(float(np.mean([u for u, _ in s])), 1),
                      "busy_share": round(float(np.mean([u > 0 for u, _ in s])), 3),
                      "peak_memory_mib": max(m for _, m in s)} for gpu, s in sorted(self.samples.items()) if s}


def busy(report: dict) -> dict:
    """From ``batch.json``'s timeline: the span (first stage start to last end) and, per worker, the seconds and
    share of the span its GPU ran a heavy stage, and per stage the seconds and share on each worker."""
    timeline = report.get("timeline") or []
    if not timeline:
        return {}
    span = max(r["end"] for r in timeline) - min(r["start"] for r in timeline)
    workers: dict[str, dict] = {w: {"cuda_visible_devices": info.get("cuda_visible_devices"), "gpu_seconds": 0.0,
                                    "stages": defaultdict(float)} for w, info in report["workers"].items()}
    for r in timeline:
        seconds = r["end"] - r["start"]
        workers[r["worker"]]["stages"][r["stage"]] += seconds
        if r["stage"] in GPU_STAGES:
            workers[r["worker"]]["gpu_seconds"] += seconds
    for w in workers.values():
        w["gpu_busy_fraction"] = round(w["gpu_seconds"] / span, 3) if span else None
        w["stages"] = {s: {"seconds": round(t, 2), "fraction": round(t / span, 3) if span else None}
                       for s, t in w["stages"].items()}
        w["gpu_seconds"] = round(w["gpu_seconds"], 2)
    per_stage = defaultdict(list)
    for r in timeline:
        per_stage[r["stage"]].append(r["end"] - r["start"])
    return {"span_seconds": round(span, 2), "workers": workers,
            "stage_mean_seconds": {s: round(float(np.mean(t)), 2) for s, t in per_stage.items()}}


def run_batch(gpus: int, args, options: list[str]) -> dict:
    """``lift3d batch imgs --gpus N`` in a fresh scratch project; its numbers."""
    root = Path(tempfile.mkdtemp(prefix=f"lift3d-multigpu-{gpus}-", dir=args.tmp))
    params = tiny_params() if args.tiny else yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    photos(root / "imgs", args.images)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if args.fake_gpus:
        env.update({FAKE_GPUS: str(args.fake_gpus), "OMP_NUM_THREADS": "1"})
    command = [sys.executable, "-m", "flows.cli", "batch", "imgs", "--gpus", str(gpus), "--no-track",
               *[a for s in options for a in ("--set", s)]]
    sampler = GPUSampler()
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    utilisation = sampler.stop()
    report_path = root / "data" / "runs" / "imgs" / "batch.json"
    if proc.returncode not in (0, 1) or not report_path.is_file():
        sys.exit(f"lift3d batch --gpus {gpus} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    report = json.loads(report_path.read_text())
    done = report["counts"]["done"]
    timing = busy(report)
    row = {"gpus": gpus, "command_seconds": round(wall, 2), "flow_seconds": report["wall_seconds"],
           "counts": report["counts"], "images_per_hour": round(done / report["wall_seconds"] * 3600, 2),
           "images_per_hour_span": round(done / timing["span_seconds"] * 3600, 2) if timing.get("span_seconds")
           else None, **timing, "nvidia_smi": utilisation,
           "failed": [{"source": e["source"], "reason": e["reason"]} for e in report["inputs"]
                      if e["status"] == "failed"]}
    if not args.keep:
        shutil.rmtree(root)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=None, help="N of the N-GPU batch (default: every visible GPU)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--generator", choices=("synthetic", "motionctrl_svd"), default="synthetic")
    ap.add_argument("--train-steps", type=int, default=2000, help="coarse + fine steps (default schedule: 17,000)")
    ap.add_argument("--set", action="append", default=[], help="more params overrides, section.key=value")
    ap.add_argument("--fake-gpus", type=int, default=0, help="declare N GPUs without CUDA (a smoke run)")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny scene (a smoke run on a CPU)")
    ap.add_argument("--tmp", default=None, help="where the scratch projects and weights go (default: the system's)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch projects")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    if args.fake_gpus:
        os.environ[FAKE_GPUS] = str(args.fake_gpus)
    from flows.batch import visible_gpus

    visible = visible_gpus()
    n = args.gpus or len(visible)
    if n < 2 or n > len(visible):
        sys.exit(f"need 2 to {len(visible)} GPUs for a scaling run, asked for {n} (visible: {visible or 'none'}; "
                 "--fake-gpus N for a smoke run on a CPU)")
    weights_dir = Path(tempfile.mkdtemp(prefix="lift3d-multigpu-weights-", dir=args.tmp))
    try:
        t = time.perf_counter()
        weights = write_random_weights(weights_dir, args.tiny) if args.generator == "motionctrl_svd" else []
        weights_seconds = round(time.perf_counter() - t, 1)
        options = settings(args, weights)
        rows = {f"gpus_{g}": run_batch(g, args, options) for g in (1, n)}
    finally:
        shutil.rmtree(weights_dir, ignore_errors=True)
    one, many = rows["gpus_1"], rows[f"gpus_{n}"]
    import torch

    result = {
        "what": "lift3d batch --gpus 1 vs --gpus N, same images, fresh stores",
        "smoke_run_numbers_mean_nothing": bool(args.fake_gpus or args.tiny),
        "images": args.images, "generator": args.generator, "train_steps": None if args.tiny else args.train_steps,
        "tiny": args.tiny, "fake_gpus": args.fake_gpus, "options": options, "weights_seconds": weights_seconds,
        "rows": rows,
        "scaling": round(many["images_per_hour"] / one["images_per_hour"], 3) if one["images_per_hour"] else None,
        "scaling_span": round(many["images_per_hour_span"] / one["images_per_hour_span"], 3)
        if one.get("images_per_hour_span") and many.get("images_per_hour_span") else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
