#!/usr/bin/env python
"""Time the distortion field's plane sampling (forward and backward) on a GPU, and the replica count that
``distortion.sample_batched`` uses against grid_sample's atomic-add contention.

The field is the reference's (3 levels, 16 features, 64-sample planes, 128-wide MLP); the points cluster on a few
surfaces as a trained scene's Gaussians do (a ground, a wall, a blob), and two frames see 85% of them each, as in
one batch-2 fine step. The grid_sample variants cap the replicas at ``--copies`` values (1: plain grid_sample);
the memory cap (``distortion.sampling._COPY_BYTES``) still applies, so large planes get fewer replicas than the cap
(the reference's 256x256 level: 2), and caps above the memory cap time the same there. The Triton variants (where
``field_triton.available``) run the fused kernels with the one-hot line gradient up to ``--line-dot`` cells.

    python bench/field_sampling.py --n 350000 500000 --copies 1 64 --line-dot 0 128 256 --out field_sampling.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d_core.splat import distortion as D
from lift3d_core.splat import field_triton
from lift3d_core.splat.distortion import sampling as plane_sampling


def surface_points(n: int, device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    k = n // 4
    ground = torch.rand(k, 3, generator=gen) * 2 - 1
    ground[:, 1] = 0.9 + 0.01 * torch.randn(k, generator=gen)
    wall = torch.rand(k, 3, generator=gen) * 2 - 1
    wall[:, 2] = 0.95 + 0.01 * torch.randn(k, generator=gen)
    blob = torch.randn(n - 2 * k, 3, generator=gen) * 0.25
    return torch.cat([ground, wall, blob]).clamp(-1, 1).to(device)


def timed(fn, device, reps: int) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return 1000 * (time.perf_counter() - t) / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[350_000, 500_000])
    ap.add_argument("--copies", type=int, nargs="+", default=[1, 16, 64, 128], help="caps of the replica count")
    ap.add_argument("--line-dot", type=int, nargs="+", default=[0, 128, 256],
                    help="fused Triton kernels, with field_triton.LINE_DOT_MAX_R at each of these values")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for n in args.n:
        field = D.DistortionField(D.DistortionFieldConfig(bounds=((-1, -1, -1), (1, 1, 1)))).to(device)
        if device.type == "cuda":
            field.mlp_dtype = torch.bfloat16
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for level in field.levels:  # frame planes away from their constant start, as after some training
                level.frame.add_(0.05 * torch.randn(level.frame.shape, generator=gen).to(device))
        means = surface_points(n, device).requires_grad_(True)
        segments = [torch.nonzero(torch.rand(n, generator=gen) < 0.85).flatten().to(device) for _ in range(2)]
        codes = torch.tensor([[0.3, 0.5], [0.7, 0.6]], device=device)
        upstream = None
        variants = [("grid_sample", cap) for cap in args.copies]
        if field_triton.available(device):
            variants += [("triton", r) for r in args.line_dot]
        for kind, value in variants:
            old_copies, old_dot = plane_sampling._COPY_MAX, field_triton.LINE_DOT_MAX_R
            field.kernels = "torch" if kind == "grid_sample" else "triton"
            if kind == "grid_sample":
                plane_sampling._COPY_MAX = value
            else:
                field_triton.LINE_DOT_MAX_R = value
            try:
                feats = field.segment_features(means, codes, segments)
                if upstream is None:
                    upstream = torch.randn(feats.shape, generator=gen).to(device)

                # timed() runs these three in this iteration: they see this iteration's field, means, ... (B023).
                def forward():
                    with torch.no_grad():
                        field.segment_features(means, codes, segments)  # noqa: B023

                def backward():
                    (field.segment_features(means, codes, segments) * upstream).sum().backward()  # noqa: B023

                def with_mlp():
                    off = field.evaluate(means, codes, segments)  # noqa: B023
                    (off.d_means.sum() + off.d_log_scales.sum() + off.d_quats.sum()).backward()

                row = {"n": n, "kernels": kind, ("copies_cap" if kind == "grid_sample" else "line_dot_max_r"): value,
                       "forward_ms": timed(forward, device, args.reps),
                       "forward_backward_ms": timed(backward, device, args.reps),
                       "with_mlp_ms": timed(with_mlp, device, args.reps)}
            finally:
                plane_sampling._COPY_MAX, field_triton.LINE_DOT_MAX_R = old_copies, old_dot
            field.zero_grad(set_to_none=True)
            means.grad = None
            rows.append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
        Path(args.out).write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
