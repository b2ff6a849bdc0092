#!/usr/bin/env python
"""MASt3R calibration speed on the default tree: full-size random-init weights, 241 frames.

    python bench/mast3r_speed.py --out bench/results/mast3r_speed.json     # CUDA, ViT-L, 512 px
    python bench/mast3r_speed.py --tiny                                     # CPU, tiny network, 64 px

What it times (random weights: the numbers are speeds, never accuracies): frames -> network
views (CPU resize), encoding every frame once, the decoders and heads over the pair graph
(pairs per second; float32 and bfloat16 autocast), and the global alignment (init + 400
Adam iterations over all pairs' pixels). Frames are random noise at 1024x576: the network's
cost does not depend on the content. Peak GPU memory is reported per phase.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d_core.calibrate.mast3r.align import global_alignment
from lift3d_core.calibrate.mast3r.inference import network_view, pairwise_inference, prepare_images
from lift3d_core.calibrate.mast3r.model import AsymmetricMASt3R, Mast3rNetConfig
from lift3d_core.calibrate.mast3r.pairs import clip_membership, make_pairs
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device, fn):
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return out, time.perf_counter() - t0, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny network on the CPU (a smoke run)")
    ap.add_argument("--image-size", type=int, default=None, help="view long side (512; --tiny: 64)")
    ap.add_argument("--neighbours", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=None, help="alignment iterations (400; --tiny: 20)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    image_size = args.image_size or (64 if args.tiny else 512)
    iterations = args.iterations if args.iterations is not None else (20 if args.tiny else 400)
    tree = articulated_tree(TrajectoryConfig())
    clips = clip_membership(tree)
    edges = make_pairs(clips, neighbours=args.neighbours)
    n = len(clips)
    frames = np.random.default_rng(0).integers(0, 256, (n, 576, 1024, 3), dtype=np.uint8)
    c2w = tree.distinct_c2w()

    cfg = Mast3rNetConfig.tiny() if args.tiny else Mast3rNetConfig.official()
    torch.manual_seed(0)
    model, t_build, _ = _timed(device, lambda: AsymmetricMASt3R(cfg).to(device).eval().requires_grad_(False))
    view = network_view((576, 1024), image_size, cfg.patch_size)
    images, t_prep, _ = _timed(device, lambda: prepare_images(frames, view).to(device))
    res = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "network": "tiny" if args.tiny else "ViT-L/base decoder (688.6 M)",
        "frames": n, "pairs": len(edges), "neighbours": args.neighbours, "view_hw": view.net_hw,
        "batch_size": args.batch_size, "build_s": t_build, "prepare_views_s": t_prep, "inference": {},
    }
    pw = None
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        # a short warm-up so kernel selection is not timed
        pairwise_inference(model, images[:2], edges[:2] % 2, batch_size=args.batch_size, dtype=dtype)
        enc, t_enc, _ = _timed(device, partial(model_encode, model, images, args.batch_size, dtype))
        del enc
        pw = None
        pw, t_inf, peak = _timed(device, partial(pairwise_inference, model, images, edges,
                                                 batch_size=args.batch_size, dtype=dtype))
        res["inference"][name] = {"encode_frames_s": t_enc, "total_s": t_inf, "pairs_per_s": len(edges) / t_inf,
                                  "peak_gib": peak}
        print(f"{name:>9}: encode {n} frames {t_enc:6.2f} s | pairwise inference (encode + {len(edges)} pairs) "
              f"{t_inf:6.2f} s = {len(edges) / t_inf:6.1f} pairs/s | peak {peak or 0:.1f} GiB", flush=True)
    model = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    al, t_align, peak = _timed(device, lambda: global_alignment(pw, iterations=iterations, init="commanded",
                                                                c2w_commanded=c2w))
    _, t_init, _ = _timed(device, lambda: global_alignment(pw, iterations=0, init="commanded", c2w_commanded=c2w))
    res["alignment"] = {"iterations": iterations, "total_s": t_align, "init_s": t_init,
                        "per_iteration_ms": 1e3 * (t_align - t_init) / max(iterations, 1), "peak_gib": peak,
                        "finite": bool(np.isfinite(al.c2w).all() and np.isfinite(al.depth).all())}
    print(f"alignment: init {t_init:.2f} s + {iterations} iterations {t_align - t_init:.2f} s "
          f"({res['alignment']['per_iteration_ms']:.1f} ms/it) | peak {peak or 0:.1f} GiB", flush=True)
    print(f"build {t_build:.1f} s, views {t_prep:.1f} s (CPU resize of {n} frames)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    return 0


@torch.no_grad()
def model_encode(model, images, batch_size, dtype):
    device = images.device
    with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32):
        return [model.encode(images[s : s + 2 * batch_size])[0] for s in range(0, len(images), 2 * batch_size)]


if __name__ == "__main__":
    sys.exit(main())
