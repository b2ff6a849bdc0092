"""CPU benchmark of ``lift3d batch``: orchestration overhead of cached batches, and 2 Dask workers against 1.

Each ``lift3d batch`` runs as its own process (imports, Prefect's temporary server, the task runner, as a user
would run it) in a scratch project whose ``params.yaml`` is the tests' tiny profile; times are the command's wall
time and the flow body's (``batch.json``'s ``wall_seconds``: from planning to the report, cluster start included).

``overhead``: N files of one photograph's bytes (so that one computed chain makes every image's artifacts present;
a real photo of several MB only adds the SHA-256 of its bytes, about 5 ms/MB, to planning):

1. ``warm``: one image computes its chain;
2. ``hits``: the N images run their chains of stage tasks, every stage a store hit (a ``dvc pull`` of the
   artifacts without the run folders looks like this);
3. ``reused``: the same command again: every image is reused from its run summary, no task is submitted, no
   cluster started. The target is under 0.2 s per image for N = 200.

``scaling``: M distinct images (``--profile demo``: ``params.yaml`` with the ``lift3d demo`` profile, minutes an image
on a CPU; ``tiny``: the tests' profile; ``--set`` on top, e.g. a shorter training) on a LocalCluster of 1 worker, then of 2, each from an empty store.

    python bench/batch_overhead.py overhead --images 200 --out bench/results/batch_overhead.json
    python bench/batch_overhead.py scaling --images 20 --profile demo --out bench/results/batch_scaling.json
    python bench/batch_overhead.py scaling --images 20 --profile demo --set train.coarse_iterations=50 \
        train.fine_iterations=150 ...            # demo-sized images, a shorter training
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
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import tiny_params  # noqa: E402 (the tests' tiny profile is this benchmark's cached one)


def project(root: Path, params: dict | None = None) -> Path:
    """A scratch project in ``root`` whose ``params.yaml`` is ``params`` (default: the tests' tiny profile)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    return root


def photos(folder: Path, n: int, distinct: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    for i in range(n):
        image = rng.integers(0, 255, base.shape, dtype=np.uint8) if distinct else base
        Image.fromarray(image).save(folder / f"photo{i:04d}.png")


def batch(root: Path, inputs: str, *args: str) -> dict:
    """Run ``lift3d batch`` in ``root``; the command's wall time and its batch.json."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "batch", inputs, "--no-track", *args], check=False,
                          cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"lift3d batch failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report = json.loads((root / "data" / "runs" / Path(inputs).name / "batch.json").read_text())
    return {"command_seconds": round(wall, 2), "flow_seconds": report["wall_seconds"], "counts": report["counts"]}


def overhead(args) -> dict:
    root = project(Path(tempfile.mkdtemp(prefix="lift3d-batch-bench-")))
    photos(root / "one", 1, distinct=False)
    photos(root / "many", args.images, distinct=False)
    runner = ["--workers", str(args.workers)] if args.workers else []
    rows = {"warm": batch(root, "one", *runner), "hits": batch(root, "many", *runner),
            "reused": batch(root, "many", *runner)}
    for name in ("hits", "reused"):
        rows[name]["flow_seconds_per_image"] = round(rows[name]["flow_seconds"] / args.images, 4)
        rows[name]["command_seconds_per_image"] = round(rows[name]["command_seconds"] / args.images, 4)
    failed = [e for e in json.loads((root / "data" / "runs" / "many" / "batch.json").read_text())["inputs"]
              if e["status"] != "reused"]
    assert not failed, failed[:3]
    shutil.rmtree(root)
    return {"images": args.images, "runner": f"LocalCluster x{args.workers}" if args.workers else "threads",
            "rows": rows}


def scaling(args) -> dict:
    rows = {}
    for workers in (1, 2):
        # demo: the repository's params.yaml under `--demo` (what `lift3d demo` runs, the default tree's 241 frames)
        demo = yaml.safe_load((REPO / "params.yaml").read_text()) if args.profile == "demo" else None
        root = project(Path(tempfile.mkdtemp(prefix="lift3d-batch-bench-")), demo)
        photos(root / "imgs", args.images, distinct=True)
        sets = [a for item in args.set for a in ("--set", item)]
        rows[f"workers_{workers}"] = batch(root, "imgs", "--workers", str(workers),
                                           *(["--demo"] if args.profile == "demo" else []), *sets)
        shutil.rmtree(root)
    rows["speedup"] = round(rows["workers_1"]["flow_seconds"] / rows["workers_2"]["flow_seconds"], 2)
    return {"images": args.images, "profile": args.profile, "set": args.set, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=("overhead", "scaling"))
    ap.add_argument("--images", type=int, default=None, help="overhead: 200; scaling: 20")
    ap.add_argument("--workers", type=int, default=None, help="overhead: a LocalCluster of N (default: threads)")
    ap.add_argument("--profile", choices=("demo", "tiny"), default="demo", help="scaling: the images' profile")
    ap.add_argument("--set", nargs="*", default=[], help="scaling: overrides over the profile (section.key=value), "
                    "e.g. a shorter training to fit a batch of demo-sized images on a small machine")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.images = args.images or (200 if args.scenario == "overhead" else 20)
    result = overhead(args) if args.scenario == "overhead" else scaling(args)
    result.update(scenario=args.scenario, machine=platform.machine(), cpus=os.cpu_count(),
                  load_average=os.getloadavg(), python=platform.python_version())
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
