#!/usr/bin/env python
"""Depth Anything V2 speed: frames per second of the depth stage's network and alignment, random-init weights.

    python bench/depth_speed.py --out bench/results/depth_speed.json   # CUDA: full ViT-L, the default tree's 241
                                                                        # frames at 1024x576, network at 518 px
    python bench/depth_speed.py --tiny                                  # CPU: the tiny config through the same code

Rows: one per (dtype, batch size): seconds for all frames through ``relative_disparity`` (upload, resize,
normalisation, network, resize back, download) after one warm-up batch, frames per second, peak GPU memory. Then
the alignment of those frames to a synthetic calibrated depth (both methods, on the network's device), and the
official-layout checkpoint path: writing a random full-size checkpoint, then ``load_weights`` (read, convert, build)
and the copy to the device, as the stage pays them once per process.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d_core.depth import DepthAnythingV2Config, DepthConfig
from lift3d_core.depth import depth_anything_v2 as dav2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_network(model, frames: np.ndarray, input_size: int, batch_size: int, device: torch.device) -> dict:
    dav2.relative_disparity(model, frames[:batch_size], input_size, batch_size)  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    mono = dav2.relative_disparity(model, frames, input_size, batch_size)
    sync(device)
    seconds = time.perf_counter() - t0
    row = {"batch_size": batch_size, "seconds": round(seconds, 3), "fps": round(len(frames) / seconds, 2)}
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row, mono


def time_alignment(mono: np.ndarray, device: torch.device) -> list[dict]:
    rng = np.random.default_rng(0)
    depth = (1.0 / (0.5 * mono / max(float(mono.max()), 1e-12) + 0.1)).astype(np.float32)
    depth *= (1 + 0.01 * rng.standard_normal(depth.shape)).astype(np.float32)
    rows = []
    for method in ("median", "robust_lsq"):
        cfg = DepthConfig(depth_anything_v2=DepthAnythingV2Config(align=method))
        sync(device)
        t0 = time.perf_counter()
        dav2.align_to_calibration(mono, depth, np.ones_like(depth), cfg, device=device)
        sync(device)
        seconds = time.perf_counter() - t0
        rows.append({"align": method, "seconds": round(seconds, 3), "frames_per_s": round(len(mono) / seconds, 1)})
    return rows


def time_loading(variant: str, dtype: torch.dtype, device: torch.device) -> dict:
    arch = dav2.ARCHITECTURES[variant]
    gen = torch.Generator().manual_seed(0)
    tensors = {k: 0.02 * torch.randn(s, generator=gen) for k, s in dav2.official_shapes(arch).items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"depth_anything_v2_{variant}.pth"
        torch.save(tensors, path)
        size = path.stat().st_size
        del tensors
        t0 = time.perf_counter()
        model = dav2.load_weights(path, arch)
        t1 = time.perf_counter()
        model.to(device, dtype)
        sync(device)
        t2 = time.perf_counter()
    return {"checkpoint_gb": round(size / 1e9, 3), "read_convert_s": round(t1 - t0, 2), "to_device_s": round(t2 - t1, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random-init config on the CPU")
    ap.add_argument("--frames", type=int, default=None, help="default 241 (the default tree), 6 with --tiny")
    ap.add_argument("--width", type=int, default=None, help="default 1024 (ingest), 96 with --tiny")
    ap.add_argument("--height", type=int, default=None, help="default 576 (ingest), 54 with --tiny")
    ap.add_argument("--input-size", type=int, default=None, help="default 518, 56 with --tiny")
    ap.add_argument("--batch-sizes", default=None, help="comma list; default 1,4,8,16 (2,6 with --tiny)")
    ap.add_argument("--dtypes", default=None, help="comma list; default float32,bfloat16 (float32 with --tiny)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    tiny = args.tiny
    if tiny:  # busy-waiting torch threads on a shared CPU cost more than they give at this size (0.8 vs 130 fps)
        torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    n = args.frames or (6 if tiny else 241)
    width, height = args.width or (96 if tiny else 1024), args.height or (54 if tiny else 576)
    input_size = args.input_size or (56 if tiny else 518)
    batch_sizes = [int(b) for b in (args.batch_sizes or ("2,6" if tiny else "1,4,8,16")).split(",")]
    dtypes = (args.dtypes or ("float32" if tiny else "float32,bfloat16")).split(",")
    variant = "tiny" if tiny else "vitl"
    frames = np.random.default_rng(0).integers(0, 255, (n, height, width, 3), dtype=np.uint8)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "variant": variant, "frames": n, "frame_size": [height, width], "input_size": input_size,
        "network_size": list(dav2.network_size(height, width, input_size)),
        "network": [], "alignment": [],
    }
    torch.manual_seed(0)
    model = dav2.build_model(dav2.ARCHITECTURES[variant], device)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    mono = None
    for dtype in dtypes:
        model.to(dtype=getattr(torch, dtype))
        for b in batch_sizes:
            row, out = time_network(model, frames, input_size, b, device)
            report["network"].append({"dtype": dtype, **row})
            print(json.dumps(report["network"][-1]), flush=True)
            if dtype == "float32" and mono is None:
                mono = out
    if mono is None:
        mono = out
    del model
    report["alignment"] = time_alignment(mono, device)
    print(json.dumps(report["alignment"]), flush=True)
    report["loading"] = time_loading(variant, getattr(torch, dtypes[0]), device)
    print(json.dumps(report["loading"]), flush=True)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
