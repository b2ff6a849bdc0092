"""CPU benchmark of the plain 3DGS trainer on the synthetic scene (issue: core library).

Builds the synthetic scene from a bundled photograph at 128x96, renders the default
camera tree, initialises Gaussians from noisy samples of the scene's surfaces, trains
plain 3DGS for a fixed number of steps (timed), and reports held-out-view PSNR/SSIM of the result
against ground truth (cameras not on the tree). Prints a markdown row; ``--out`` writes JSON.

    python bench/cpu_train.py --iterations 1500 --out bench/results/cpu_train.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace

import numpy as np
import torch

from lift3d_core import metrics, synthetic
from lift3d_core.export import render_views
from lift3d_core.image import IngestConfig, ingest_image
from lift3d_core.splat.init import init_gaussians
from lift3d_core.splat.train import TrainConfig, Trainer
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="skimage:astronaut")
    ap.add_argument("--preset", default="room")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--points", type=int, default=20_000, help="initial Gaussians (noisy surface samples)")
    ap.add_argument("--noise", type=float, default=0.01, help="surface-sample noise std, scene units")
    ap.add_argument("--iterations", type=int, default=1500)
    ap.add_argument("--densify-until", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    image = ingest_image(args.image, IngestConfig(width=args.width, height=args.height))
    tree = articulated_tree(TrajectoryConfig())
    scene_cfg = synthetic.SyntheticConfig(preset=args.preset, seed=args.seed, width=args.width, height=args.height)
    t0 = time.perf_counter()
    video = synthetic.generate_frames(image, tree, scene_cfg)
    frames = video["frames"].reshape(-1, args.height, args.width, 3)
    c2w = tree.c2w()
    first = np.unique(np.asarray(tree.distinct_frame_index()), return_index=True)[1]
    frames, c2w = frames[first], c2w[first]
    K = np.broadcast_to(video["K"], (len(c2w), 3, 3))
    gen_s = time.perf_counter() - t0

    xyz, rgb = synthetic.sample_surface_points(video["scene"], args.points, args.noise, args.seed)
    init = init_gaussians(xyz, rgb, sh_degree=3)
    # A short schedule scaled to the budget: densify early, no opacity reset in so few steps.
    cfg = TrainConfig(iterations=args.iterations, batch_size=1, seed=args.seed, backend="torch",
                      densify_from=200, densify_until=args.densify_until, densify_every=100,
                      opacity_reset_every=10**9, sh_degree_every=300, max_gaussians=60_000, log_every=50)
    trainer = Trainer(init, frames, c2w, K, cfg)
    t0 = time.perf_counter()
    for step in range(1, args.iterations + 1):
        trainer.train_step()
    train_s = time.perf_counter() - t0
    gaussians = trainer.params.detached()

    c2w_eval, _ = synthetic.eval_cameras(tree, n=8, seed=args.seed)
    targets, _ = synthetic.render_views(video["scene"], c2w_eval)
    renders = render_views(gaussians, c2w_eval, np.broadcast_to(video["K"], (8, 3, 3)), args.width, args.height,
                           "torch")
    row = {
        "image": args.image, "preset": args.preset, "size": f"{args.width}x{args.height}",
        "frames": len(frames), "init_points": args.points, "noise": args.noise, "threads": args.threads,
        "iterations": step, "train_s": round(train_s, 1),
        "it_per_s": round(step / train_s, 2), "final_gaussians": gaussians.num,
        "heldout_psnr": round(metrics.psnr(renders, targets), 2), "heldout_ssim": round(metrics.ssim(renders, targets), 4),
        "generate_s": round(gen_s, 1), "cpu": platform.processor() or platform.machine(),
    }
    print("| " + " | ".join(map(str, row.values())) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
