"""End to end with and without camera pose refinement: the demo profile on the level-1 tree, commanded vs COLMAP.

Runs ``python -m flows.cli lift skimage:astronaut <flows.settings.DEMO_OVERRIDES as --set> --set trajectory.levels=1
--set generate.synthetic.preset=P --set generate.synthetic.distortion=D --set calibrate.backend=B --set
train.pose_refine=R [--set ...] --store S --no-track`` once per row, one after the other, and collects each run's
``summary.json`` metrics (held-out PSNR, pose errors of the calibration and of the refined cameras, seconds) into
``--out``. Generation and calibration are cached in the store, so rows that differ only in training rerun training.

    python bench/pose_refine_e2e.py --store /tmp/pr/store --out bench/results/pose_refine_e2e.json \\
        --row room,0,colmap,true --row room,0,colmap,false --row room,0,commanded,false

A row is ``preset,distortion,backend,pose_refine[,section.key=value...]`` (distortion 0 or default; default is
the demo's 0.03).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.settings import DEMO_OVERRIDES  # noqa: E402

KEEP = ("psnr", "psnr_global_alignment", "psnr_min_view", "ssim", "train_psnr", "pose.rot_deg_mean",
        "pose.rot_deg_max", "pose.trans_rel_mean", "pose_refined.rot_deg_mean", "pose_refined.rot_deg_max",
        "pose_refined.trans_rel_mean", "depth.valid_fraction", "num_gaussians")


def run_row(row: str, store: str) -> dict:
    preset, distortion, backend, refine, *extra = row.split(",")
    sets = [*DEMO_OVERRIDES, "trajectory.levels=1", f"generate.synthetic.preset={preset}",
            f"calibrate.backend={backend}", f"train.pose_refine={refine}", *extra]
    if distortion != "default":
        sets.append(f"generate.synthetic.distortion={distortion}")
    name = "pr_" + "_".join(s.replace("=", "-").replace(".", "-") for s in (preset, distortion, backend, refine, *extra))
    if len(name) > 100:  # the CLI takes run names up to 128 characters: keep the head, name the rest by its digest
        name = name[:80] + "_" + hashlib.sha256(name.encode()).hexdigest()[:12]
    cmd = [sys.executable, "-m", "flows.cli", "lift", "skimage:astronaut"]
    for s in sets:
        cmd += ["--set", s]
    cmd += ["--store", store, "--no-track", "--run-name", name]
    t0 = time.time()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{row}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((ROOT / "data" / "runs" / name / "summary.json").read_text())
    metrics = summary.get("metrics", summary)
    flat = {}
    for stage_metrics in (metrics.values() if all(isinstance(v, dict) for v in metrics.values()) else [metrics]):
        flat.update(stage_metrics)
    return {
        "row": row, "preset": preset, "distortion": distortion, "backend": backend, "pose_refine": refine,
        "extra": extra, "command": " ".join(["python -m flows.cli lift skimage:astronaut",
                                              "<flows.settings.DEMO_OVERRIDES as --set>",
                                              *(f"--set {s}" for s in sets[len(DEMO_OVERRIDES):]),
                                              f"--store {store} --no-track"]),
        "wall_s": round(time.time() - t0, 1), "load_after": round(os.getloadavg()[0], 2),
        **{k: flat[k] for k in KEEP if k in flat},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", action="append", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    for row in args.row:
        result = {**run_row(row, args.store), "date": time.strftime("%Y-%m-%d"),
                  "device": "2-core dev CPU shared with other agents, OMP_NUM_THREADS=1", "note": args.note}
        rows.append(result)
        out.write_text(json.dumps(rows, indent=1))
        print(json.dumps({k: result[k] for k in ("row", "psnr", "train_psnr", "wall_s") if k in result}), flush=True)


if __name__ == "__main__":
    main()
