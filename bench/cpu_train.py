"""CPU benchmark of the plain 3DGS trainer on the synthetic scene (issue: core library).

Builds the synthetic scene from a bundled photograph at 128x96, renders the 241 distinct frames of the
default camera tree, initialises Gaussians from noisy samples of the scene's surfaces, trains plain 3DGS for
a fixed number of steps (timed; scene generation and evaluation are not), and reports held-out-view
PSNR/SSIM of the result against ground truth (8 cameras off the tree). Prints a markdown row; ``--out``
writes JSON, with the machine's load average (it is shared: timings are only comparable at similar loads).

The defaults are the short-budget recipe (about 2 minutes on 2 idle CPU cores):

* the 3DGS schedule compressed to the run (``TrainConfig.for_budget``): densification every 100 steps from
  step 100 to the middle of the run, no opacity reset, SH bands added every ``iterations / 30`` steps;
* 100k points sampled from the surfaces, of which those that no training camera sees (~60%: walls behind
  the cameras) are dropped (``init.in_view_mask``): they would get no gradient, only cost time, and an SfM
  or depth-fused cloud has none; area-uniform samples leave few on near, small surfaces, where
  densification adds Gaussians as the screen-space gradients ask;
* initial opacity 0.5 instead of 3DGS's 0.1, and 4x / 2x the 3DGS learning rates of colour (``sh0``) and
  ``log_scales``: 3DGS's values are sized for 30k steps, and with ~100x fewer steps the Gaussians would
  spend the run fading in and recolouring.

    python bench/cpu_train.py --out bench/results/cpu_train.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from lift3d_core import metrics, synthetic
from lift3d_core.export import render_views
from lift3d_core.image import IngestConfig, ingest_image
from lift3d_core.splat.init import in_view_mask, init_gaussians
from lift3d_core.splat.train import TrainConfig, Trainer
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="skimage:astronaut")
    ap.add_argument("--preset", default="room")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--points", type=int, default=100_000, help="noisy surface samples, before culling")
    ap.add_argument("--no-cull", action="store_true", help="keep the samples no training camera sees")
    ap.add_argument("--noise", type=float, default=0.01, help="surface-sample noise std, scene units")
    ap.add_argument("--iterations", type=int, default=800)
    ap.add_argument("--init-opacity", type=float, default=0.5, help="3DGS: 0.1")
    ap.add_argument("--lr-sh0", type=float, default=0.01, help="3DGS: 0.0025")
    ap.add_argument("--lr-scales", type=float, default=0.01, help="3DGS: 0.005")
    ap.add_argument("--sh-degree-every", type=int, default=None, help="default: iterations / 30 (for_budget)")
    ap.add_argument("--densify-until", type=int, default=None, help="default: iterations / 2 (for_budget)")
    ap.add_argument("--batch-size", type=int, default=1)
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
    K = np.repeat(video["K"][None], len(c2w), axis=0)
    gen_s = time.perf_counter() - t0

    xyz, rgb = synthetic.sample_surface_points(video["scene"], args.points, args.noise, args.seed)
    if not args.no_cull:
        seen = in_view_mask(xyz, c2w, K, args.width, args.height).numpy()
        xyz, rgb = xyz[seen], rgb[seen]
    init = init_gaussians(xyz, rgb, sh_degree=3, init_opacity=args.init_opacity)
    overrides = {"sh_degree_every": args.sh_degree_every, "densify_until": args.densify_until}
    cfg = TrainConfig.for_budget(
        args.iterations, batch_size=args.batch_size, seed=args.seed, backend="torch",
        lr_sh0=args.lr_sh0, lr_scales=args.lr_scales, log_every=50,
        **{k: v for k, v in overrides.items() if v is not None},
    )
    trainer = Trainer(init, frames, c2w, K, cfg, device="cpu")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for _ in range(cfg.iterations):
        trainer.train_step()
    train_s = time.perf_counter() - t0
    load_after = os.getloadavg()
    gaussians = trainer.params.detached()

    c2w_eval, _ = synthetic.eval_cameras(tree, n=8, seed=args.seed)
    targets, _ = synthetic.render_views(video["scene"], c2w_eval)
    renders = render_views(gaussians, c2w_eval, np.broadcast_to(video["K"], (8, 3, 3)), args.width, args.height,
                           "torch")
    row = {
        "image": args.image, "preset": args.preset, "size": f"{args.width}x{args.height}",
        "frames": len(frames), "sampled_points": args.points, "init_gaussians": init.num, "noise": args.noise, "threads": args.threads,
        "iterations": cfg.iterations, "train_s": round(train_s, 1),
        "it_per_s": round(cfg.iterations / train_s, 2), "final_gaussians": gaussians.num,
        "heldout_psnr": round(metrics.psnr(renders, targets), 2), "heldout_ssim": round(metrics.ssim(renders, targets), 4),
        "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in load_after],
        "generate_s": round(gen_s, 1), "cpu": platform.processor() or platform.machine(),
    }
    print("| " + " | ".join(row) + " |")
    print("| " + " | ".join(map(str, row.values())) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**row, "init_opacity": args.init_opacity, "train_config": cfg.__dict__}, f, indent=2)


if __name__ == "__main__":
    main()
