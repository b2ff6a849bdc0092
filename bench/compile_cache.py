#!/usr/bin/env python
"""What torch.compile's on-disk cache saves a new process: the trainer's compiled photometric loss warmed up
(forward and backward, as ``Trainer._photometric`` does), or with ``--what field`` the distortion field's graphs
(``DistortionTrainer``'s first fine step: regularisers, frame lines, MLP), in two fresh processes that share one
empty ``TORCHINDUCTOR_CACHE_DIR``. The first compiles, the second loads. ``lift3d`` keeps that folder in the project
(``.lift3d/compile-cache/inductor``, ``flows/settings.configure_environment``), so only a machine's first run pays.

    python bench/compile_cache.py                        # CPU (needs a C++ compiler), 128x96, batch 2
    python bench/compile_cache.py --device cuda --width 1024 --height 576
    python bench/compile_cache.py --device cuda --what field   # params.yaml's field, 200k random Gaussians

Prints one JSON line: ``cold_s``, ``warm_s`` (warm-up wall time of each process), each process's cache counters
(``fxgraph_cache_hit`` / ``_miss`` / ``_bypass``, ``autograd_cache_*``) and the set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_WARM_UP = """
import json, sys, torch
from lift3d_core.splat.compile_fallback import compiled_or_eager
from lift3d_core.splat.loss_fast import photometric_loss_shifted
device, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(0)
render = torch.rand(2, h, w, 4, generator=g).to(device)[..., :3]  # a view of RGB+depth, as the trainer passes
target = torch.rand(2, h, w, 3, generator=g).to(device)
fn = torch.compile(photometric_loss_shifted, dynamic=False, fullgraph=True)
probe = render.detach().requires_grad_(True)
seconds = {}
compiled_or_eager("on", "compile_loss", lambda: torch.autograd.grad(fn(probe, target, 0.2), probe), seconds)
from bench.gpu import compile_counters
print(json.dumps({**seconds, "counters": compile_counters()}))
"""

_WARM_UP_FIELD = """
import json, sys, torch
from bench.profile_distortion import make_trainer, recipe
from bench.gpu import compile_counters
from lift3d_core.splat.speed import SWITCHES
device, w, h = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SWITCHES.compiled_parts &= set(sys.argv[4].split(","))
backend = "gsplat" if device.startswith("cuda") else "torch"
trainer = make_trainer(200_000 if device.startswith("cuda") else 3000, w, h, device, backend, recipe(),
                       compile_field="on")
trainer.train_step()  # the first fine step compiles the field's graphs
print(json.dumps({**trainer.compile_seconds, "counters": compile_counters()}))
"""


def warm_up(cache: str, device: str, width: int, height: int, what: str = "loss",
            parts: str = "mlp,lines,regularisers") -> dict:
    """One fresh process's warm-up: ``{"compile_loss" | "compile_field": seconds, "counters": {...}}``; ``parts``:
    the field's pieces compiled (``speed.SWITCHES.compiled_parts``), comma-separated."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": str(REPO)}
    script = _WARM_UP if what == "loss" else _WARM_UP_FIELD
    out = subprocess.run([sys.executable, "-c", script, device, str(width), str(height), parts], env=env,
                         check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--what", choices=["loss", "field"], default="loss")
    ap.add_argument("--parts", default="mlp,lines,regularisers",
                    help="with --what field: the field's pieces compiled, comma-separated")
    args = ap.parse_args(argv)
    key = f"compile_{args.what}"
    with tempfile.TemporaryDirectory(prefix="lift3d-compile-cache-") as cache:
        cold = warm_up(cache, args.device, args.width, args.height, args.what, args.parts)
        warm = warm_up(cache, args.device, args.width, args.height, args.what, args.parts)
    print(json.dumps({"what": args.what, "parts": args.parts if args.what == "field" else None,
                      "cold_s": cold[key], "warm_s": warm[key], "cold_counters": cold["counters"],
                      "warm_counters": warm["counters"], "device": args.device,
                      "size": f"{args.width}x{args.height}", "load": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
