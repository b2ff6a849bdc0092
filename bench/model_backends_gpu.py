"""`lift3d lift photo.jpg` through the model backends at full size, with random-init weights in the official layouts.

Issue 21's end-to-end check on a GPU: MotionCtrl-SVD generates the default tree, MASt3R calibrates the generated
frames (no generator depth anywhere), Depth Anything V2 depth is aligned to that calibration, and the train, export
and evaluate stages run to a PLY; then a second run with a train-only change must reuse generate, calibrate and depth
and build no model. Speed and memory do not depend on the weights' values, so the three checkpoints are random
networks of the official sizes written in the official layouts (``motionctrl_svd.ckpt``: ``{'state_dict': ...}`` with
sgm names; MASt3R: ``{'model': ..., 'args': Namespace(model=...)}``; Depth Anything V2: a bare state dict), loaded
through the real loaders. Random weights make meaningless frames and cameras: this measures the wiring, the
seconds and the memory of every stage, not quality.

    python3 bench/model_backends_gpu.py --weights /tmp/weights --store /tmp/mb/store --out bench/results/model_backends_h100.json
    python3 bench/model_backends_gpu.py --tiny --weights /tmp/w --store /tmp/s --out /tmp/mb.json   # CPU smoke run

Resumable: the checkpoints are written once (atomically) and every finished stage is cached in ``--store``, so a run
stopped at a time limit and started again goes on from the first unfinished stage (training from its last
checkpoint). ``--out`` keeps every attempt: per stage, whether it was a cache hit and its seconds, the models built
in the process, peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lift3d_core import checkpoints  # noqa: E402

# Settings random weights need: MASt3R's confidence of a random network is about 1 everywhere, under its default
# threshold, so every pixel would be dropped; they change which points are kept, not what runs.
RANDOM_WEIGHTS = ("calibrate.mast3r.min_conf_thr=1.0",)

TINY = ("ingest.width=64", "ingest.height=64", "generate.motionctrl_svd.model=tiny", "generate.motionctrl_svd.steps=2",
        "generate.motionctrl_svd.dtype=float32", "calibrate.mast3r.image_size=64", "calibrate.mast3r.iterations=5",
        "depth.depth_anything_v2.variant=tiny", "depth.depth_anything_v2.input_size=56", "trajectory.levels=1",
        "train.coarse_iterations=5", "train.fine_iterations=10")


def write_checkpoints(folder: Path, tiny: bool) -> dict[str, dict]:
    """The three official-layout checkpoints under ``folder`` (each skipped if present, each written to a temporary
    name first, then renamed): name -> path, GB, seconds. MotionCtrl-SVD's is ``generate_speed.write_checkpoint``'s."""
    from bench.generate_speed import write_checkpoint
    from lift3d_core.calibrate.mast3r.checkpoint import constructor_string
    from lift3d_core.calibrate.mast3r.model import AsymmetricMASt3R, Mast3rNetConfig
    from lift3d_core.depth import depth_anything_v2 as dav2
    from lift3d_core.generate.motionctrl_svd import model as mc

    folder.mkdir(parents=True, exist_ok=True)
    out = {}

    def motionctrl(tmp: Path):
        write_checkpoint(mc.TINY if tiny else mc.OFFICIAL, tmp, torch.device("cpu"))

    def mast3r(tmp: Path):
        torch.manual_seed(0)
        net = AsymmetricMASt3R(Mast3rNetConfig.tiny() if tiny else Mast3rNetConfig.official())
        torch.save({"model": net.state_dict(), "args": argparse.Namespace(model=constructor_string(net.cfg))}, tmp)

    def depth(tmp: Path):
        gen = torch.Generator().manual_seed(0)
        arch = dav2.ARCHITECTURES["tiny" if tiny else "vitl"]
        torch.save({k: 0.02 * torch.randn(s, generator=gen) for k, s in dav2.official_shapes(arch).items()}, tmp)

    for name, file, write in (("motionctrl_svd", "motionctrl_svd.ckpt", motionctrl), ("mast3r", "mast3r.pth", mast3r),
                              ("depth_anything_v2", f"depth_anything_v2_{'tiny' if tiny else 'vitl'}.pth", depth)):
        path = folder / file
        seconds = None
        if not path.exists():
            t = time.perf_counter()
            tmp = path.with_name(path.name + ".tmp")
            write(tmp)
            os.replace(tmp, path)
            seconds = round(time.perf_counter() - t, 1)
            print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {seconds} s", flush=True)
        out[name] = {"path": str(path), "gb": round(path.stat().st_size / 1e9, 3), "write_seconds": seconds}
    return out


def lift_once(photo: str, overrides: list[str], run_name: str, store: str) -> dict:
    """One ``lift3d lift`` in this process (the CLI's steps, without Prefect's server); the run's summary, the models
    the process built, peak GPU memory."""
    from flows.cli import _params, _preflight, _project
    from flows.lift import lift_body

    project = _project()
    params = _params(project, None, overrides)
    _preflight(params, photo)
    checkpoints.clear_model_cache()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    summary = lift_body(photo, params, run_name, store, str(project.state_dir), str(project.runs_dir),
                        track=False, use_prefect=False)
    return {
        "run": run_name, "wall_seconds": round(time.perf_counter() - t, 1),
        "stages": {k: {"hit": s["hit"], "seconds": round(s["seconds"], 1)} for k, s in summary["stages"].items()},
        "models_built": sorted(str(k) for k in checkpoints._MODELS),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if torch.cuda.is_available() else None,
        "metrics": summary.get("metrics", {}), "ply": summary.get("outputs", {}).get("ply"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True, help="folder for the three random-init checkpoints")
    ap.add_argument("--store", required=True, help="artifact store of the two runs (keep it to resume)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--photo", default="skimage:coffee")
    ap.add_argument("--tiny", action="store_true", help="tiny networks and sizes (a CPU smoke run)")
    ap.add_argument("--set", nargs="*", default=[], help="more params overrides, both runs")
    args = ap.parse_args(argv)

    record = json.loads(args.out.read_text()) if args.out.exists() else {"attempts": []}
    attempt = {"date": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv[1:], "torch": torch.__version__,
               "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    record["attempts"].append(attempt)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, args.out)

    attempt["checkpoints"] = write_checkpoints(args.weights, args.tiny)
    save()
    ck = attempt["checkpoints"]
    models = ["generate.backend=motionctrl_svd", f"generate.motionctrl_svd.checkpoint={ck['motionctrl_svd']['path']}",
              "calibrate.backend=mast3r", f"calibrate.mast3r.checkpoint={ck['mast3r']['path']}",
              "depth.backend=depth_anything_v2", f"depth.depth_anything_v2.checkpoint={ck['depth_anything_v2']['path']}",
              *RANDOM_WEIGHTS, *(TINY if args.tiny else ()), *args.set]
    attempt["first"] = lift_once(args.photo, models, "model_backends", args.store)
    save()
    print(json.dumps(attempt["first"], indent=1), flush=True)
    # a train-only change: generate, calibrate and depth must be cache hits, and no model is built
    attempt["train_only_change"] = lift_once(args.photo, [*models, "train.seed=1"], "model_backends_train_change",
                                             args.store)
    second = attempt["train_only_change"]
    second["reused_model_stages"] = all(second["stages"][s]["hit"] for s in ("generate", "calibrate", "depth"))
    second["no_model_built"] = second["models_built"] == []
    save()
    print(json.dumps(second, indent=1), flush=True)
    ok = second["reused_model_stages"] and second["no_model_built"] and not second["stages"]["train"]["hit"]
    print("train-only change reused every model stage and built no model" if ok else "CHECK FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
