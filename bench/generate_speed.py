#!/usr/bin/env python
"""MotionCtrl-SVD tree generation speed, with full-size random weights saved in the official layout.

    python bench/generate_speed.py --out bench/results/generate_speed_h100.json   # CUDA, the default tree
    python bench/generate_speed.py --tiny                                          # CPU smoke run, seconds

Speed does not depend on the weights' values, so the script builds a random-init model of MotionCtrl-SVD's
sizes, writes it as an official-layout ``motionctrl_svd.ckpt`` (``{'state_dict': ...}``, sgm names, float32,
with the tensors the loader ignores) to a temporary folder, and then times, in one process:

1. ``tree``: loading that file through the real loader plus generating the default tree (16 clips x 16 frames
   at 1024x576, 50 steps with guidance, decoding), as ``lift3d lift`` would; per level too.
2. ``unet``: one UNet call at the tree's batch, its FLOPs counted by ``torch.utils.flop_counter`` and its
   achieved TFLOP/s against a bf16 matmul ceiling (8192^3 ``torch.mm``) measured in the same run.
3. ``memory``: peak GPU memory of the tree run, and per-clip activation memory (UNet call at 1 and 2
   clips), from which the ``generate.motionctrl_svd.max_batch`` that fits a 24 GB card is derived.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d_core.generate import GenerateConfig, MotionCtrlSVDConfig
from lift3d_core.generate.motionctrl_svd.backend import clear_model_cache, generate_motionctrl, load_model
from lift3d_core.generate.motionctrl_svd.convert import to_official
from lift3d_core.generate.motionctrl_svd.model import OFFICIAL, TINY, build_model
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_ceiling(device, n=8192, reps=20) -> float:
    """bf16 dense matmul TFLOP/s: the ceiling the UNet's achieved rate is compared with."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def write_checkpoint(spec, path: Path, device) -> float:
    t = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(spec, device=device, dtype=torch.float32)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    del model
    torch.cuda.empty_cache() if device.type == "cuda" else None
    torch.save({"state_dict": to_official(state, spec), "global_step": 0}, path)
    return time.perf_counter() - t


def unet_inputs(model, clips, frames, h, w):
    b = 2 * clips  # both guidance branches
    dev, dt = model.device, model.dtype
    return (torch.randn(b, frames, 8, h // 8, w // 8, device=dev, dtype=dt), torch.full((b,), 0.5, device=dev),
            torch.randn(b, 1, model.spec.cross_attention_dim, device=dev, dtype=dt),
            torch.tensor([[10.0, 100.0, 0.1]], device=dev).expand(b, 3),
            torch.randn(b, frames, 12, device=dev, dtype=dt))


@torch.no_grad()
def time_unet(model, clips, frames, h, w, reps) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    args = unet_inputs(model, clips, frames, h, w)
    model.unet_call(*args)
    with FlopCounterMode(display=False) as counter:
        model.unet_call(*args)
    flops = counter.get_total_flops()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        model.unet_call(*args)
    sync()
    seconds = (time.perf_counter() - t) / reps
    return {"clips": clips, "unet_batch": 2 * clips, "seconds_per_call": seconds, "tflop_per_call": flops / 1e12,
            "achieved_tflops": flops / seconds / 1e12, "ms_per_clip_step": 1000 * seconds / clips}


@torch.no_grad()
def peak_of_call(model, clips, frames, h, w) -> int:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model.unet_call(*unet_inputs(model, clips, frames, h, w))
    sync()
    return torch.cuda.max_memory_allocated() - base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny networks, 64x64, 4 frames, 2 steps (CPU smoke run)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--max-batch", type=int, default=0, help="clips per UNet call (0: fit free memory)")
    ap.add_argument("--unet-reps", type=int, default=5)
    ap.add_argument("--tmp", default=None, help="folder for the 9.6 GB checkpoint (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the JSON here too")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    spec = TINY if args.tiny else OFFICIAL
    w, h, frames = (64, 64, 4) if args.tiny else (1024, 576, 16)
    steps = args.steps or (2 if args.tiny else 50)
    dtype = "fp32" if device.type == "cpu" else "bf16"
    torch.set_num_threads(min(torch.get_num_threads(), 4)) if device.type == "cpu" else None
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "size": f"{w}x{h}", "frames": frames, "steps": steps,
              "spec": "tiny" if args.tiny else "official"}

    def save():  # after each part, so a run stopped at its time limit keeps what it measured
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

    result["bf16_ceiling_tflops"] = matmul_ceiling(device)
    save()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "motionctrl_svd.ckpt"
        result["write_checkpoint_s"] = write_checkpoint(spec, path, device)
        result["checkpoint_bytes"] = path.stat().st_size
        save()

        tree = articulated_tree(TrajectoryConfig(frames_per_clip=frames))
        cfg = GenerateConfig(backend="motionctrl_svd", motionctrl_svd=MotionCtrlSVDConfig(
            checkpoint=str(path), model=result["spec"], steps=steps, dtype=dtype, device=str(device),
            max_batch=args.max_batch))
        image = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
        clear_model_cache()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t0 = time.perf_counter()
        model = load_model(path, spec=spec, dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[dtype],
                           device=device)
        sync()
        result["load_s"] = time.perf_counter() - t0
        video = generate_motionctrl(image, tree, cfg, model=model)
        sync()
        result["tree_s"] = time.perf_counter() - t0
        result["clips"] = int(video.frames.shape[0])
        save()
        if device.type == "cuda":
            result["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            result["weights_gb"] = weights / 1e9
            one, two = peak_of_call(model, 1, frames, h, w), peak_of_call(model, 2, frames, h, w)
            per_clip = max(two - one, 1)
            result["unet_call_peak_gb"] = {"1 clip": one / 1e9, "2 clips": two / 1e9}
            result["per_clip_gb"] = per_clip / 1e9
            fixed = weights + max(one - per_clip, 0) + 1.5e9  # CUDA context, allocator slack
            result["max_batch_24gb"] = max(1, math.floor((0.9 * 24e9 - fixed) / per_clip))
        clips_level = max(1, min(args.max_batch or 12, 12))
        result["unet"] = time_unet(model, clips_level if device.type == "cuda" else 1, frames, h, w,
                                   args.unet_reps if device.type == "cuda" else 1)
        if device.type == "cuda":
            result["unet"]["fraction_of_ceiling"] = result["unet"]["achieved_tflops"] / result["bf16_ceiling_tflops"]

    rows = [("device", result["device"]), ("checkpoint", f"{result['checkpoint_bytes'] / 1e9:.2f} GB "
             f"(written in {result['write_checkpoint_s']:.1f} s)"),
            ("load", f"{result['load_s']:.1f} s"), ("tree", f"{result['tree_s']:.1f} s for {result['clips']} clips "
             f"x {frames} frames at {w}x{h}, {steps} steps, load included"),
            ("UNet", f"{result['unet']['achieved_tflops']:.1f} TFLOP/s at {result['unet']['unet_batch']} videos/call, "
             f"{result['unet']['ms_per_clip_step']:.0f} ms per clip-step (both branches)"),
            ("bf16 ceiling", f"{result['bf16_ceiling_tflops']:.0f} TFLOP/s")]
    if "peak_gb" in result:
        rows += [("peak memory", f"{result['peak_gb']:.1f} GB (weights {result['weights_gb']:.1f} GB)"),
                 ("per clip", f"{result['per_clip_gb']:.2f} GB -> max_batch {result['max_batch_24gb']} on 24 GB")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
