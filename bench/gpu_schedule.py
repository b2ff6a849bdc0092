#!/usr/bin/env python
"""The reference's full training schedule on a GPU, on the synthetic scene (issue: distortion-aware 3DGS).

Builds the synthetic scene at 1024x576 around a bundled photograph, renders every distinct frame of the default
camera tree with the default per-frame distortion, initialises Gaussians from noisy samples of the scene's
surfaces (those a training camera sees), and trains with ``params.yaml``'s ``train`` section as the pipeline
does (LiftImage3D's schedule: 3,000 coarse + 14,000 fine steps, batch 2, densification to step 10,000,
gsplat). Reports wall seconds per stage, the number of Gaussians the scene grows to, and held-out PSNR/SSIM
of the canonical Gaussians against the undistorted scene. ``--methods plain distortion`` also trains plain
3DGS with the same budget.

    python bench/gpu_schedule.py --out bench/results/gpu_schedule.json
    python bench/gpu_schedule.py --set fine_iterations=2000 --methods distortion   # a shorter check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d_core import metrics, synthetic
from lift3d_core.export import render_views
from lift3d_core.image import IngestConfig, ingest_image
from lift3d_core.splat.init import in_view_mask
from lift3d_core.train import TrainStageConfig, train_scene
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default="skimage:astronaut")
    ap.add_argument("--preset", default="room")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=576)
    ap.add_argument("--distortion", default="default", help="synthetic.DISTORTION_LEVELS name or a number")
    ap.add_argument("--points", type=int, default=300_000, help="noisy surface samples before culling")
    ap.add_argument("--noise", type=float, default=0.01, help="sample noise std, fraction of the scene scale")
    ap.add_argument("--methods", nargs="+", default=["distortion"], choices=["plain", "distortion"])
    ap.add_argument("--set", nargs="*", default=[], help="train-section overrides KEY=YAML")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="gsplat", help="torch: a CPU smoke run of this script")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cuda = args.backend == "gsplat"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: this benchmark times the GPU path (--backend torch for a CPU smoke run)", file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    section = {**params["train"], "backend": args.backend}
    for item in args.set:
        k, v = item.split("=", 1)
        section[k] = yaml.safe_load(v)
    amp = synthetic.DISTORTION_LEVELS.get(args.distortion)
    amp = float(args.distortion) if amp is None else float(amp)

    t0 = time.perf_counter()
    image = ingest_image(args.image, IngestConfig(width=args.width, height=args.height))
    tree = articulated_tree(TrajectoryConfig())
    scene_cfg = synthetic.SyntheticConfig(preset=args.preset, seed=args.seed, width=args.width, height=args.height,
                                          distortion=amp)
    scene = synthetic.build_scene(image, scene_cfg)
    c2w, codes = np.asarray(tree.distinct_c2w()), np.asarray(tree.distinct_frame_codes())
    frames, _ = synthetic.render_views(scene, c2w, frame_codes=codes, distortion=amp, backend=args.backend)
    K = np.repeat(scene.K[None], len(c2w), axis=0)
    xyz, rgb = synthetic.sample_surface_points(scene, args.points, args.noise * scene.scale, args.seed)
    seen = in_view_mask(xyz, c2w, K, args.width, args.height).numpy()
    xyz, rgb = xyz[seen], rgb[seen]
    c2w_eval, _ = synthetic.eval_cameras(tree, n=8, seed=args.seed)
    targets, _ = synthetic.render_views(scene, c2w_eval, backend=args.backend)
    setup_s = time.perf_counter() - t0
    print(f"setup {setup_s:.1f} s: {len(frames)} frames {args.width}x{args.height}, {len(xyz)} init points, "
          f"distortion {amp}", flush=True)

    rows = []
    for method in args.methods:
        cfg = TrainStageConfig.from_params({**section, "distortion": method == "distortion"})
        marks = {}

        def callback(step, m, marks=marks, method=method):
            marks.setdefault(m.get("stage", "plain"), []).append((step, time.perf_counter(), m["num_gaussians"]))
            if step % 1000 == 0:
                print(f"  {method} step {step} {m.get('stage', '')} N={m['num_gaussians']} psnr={m['psnr']:.2f} "
                      f"t={time.perf_counter() - t:.1f}s", flush=True)  # noqa: B023 - this run's t, set below

        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        res = train_scene(xyz, rgb, frames, c2w, K, codes, None, cfg, callback=callback)
        sync()
        seconds = time.perf_counter() - t
        renders = render_views(res.gaussians, c2w_eval, np.broadcast_to(scene.K, (8, 3, 3)), args.width,
                               args.height, args.backend)
        counts = [n for _, n in res.stats["num_gaussians"]]
        row = {
            "method": method, "size": f"{args.width}x{args.height}", "frames": len(frames),
            "coarse_iterations": cfg.schedule.coarse_iterations if method == "distortion" else 0,
            "iterations": cfg.schedule.iterations, "batch_size": cfg.schedule.batch_size,
            "seconds": round(seconds, 1), "init_gaussians": len(xyz), "max_gaussians": max(counts),
            "final_gaussians": res.gaussians.num,
            "heldout_psnr": round(metrics.psnr(renders, targets), 2),
            "heldout_ssim": round(metrics.ssim(renders, targets), 4),
            "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
            "compile_seconds": res.stats.get("compile_seconds", {}),
        }
        if method == "distortion" and "coarse" in marks and "fine" in marks:
            c_end, f_end = marks["coarse"][-1], marks["fine"][-1]
            row["coarse_seconds"] = round(c_end[1] - t, 1)
            row["fine_seconds"] = round(f_end[1] - c_end[1], 1)
            row["fine_ms_per_step"] = round(1000 * (f_end[1] - c_end[1]) / max(f_end[0] - c_end[0], 1), 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "setup_s": round(setup_s, 1),
           "distortion": amp, "preset": args.preset, "overrides": args.set, "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
