#!/usr/bin/env python
"""What torch.compile's on-disk cache saves a new process: the trainer's compiled photometric loss warmed up
(forward and backward, as ``Trainer._photometric`` does) in two fresh processes that share one empty
``TORCHINDUCTOR_CACHE_DIR``. The first compiles, the second loads. ``lift3d`` keeps that folder in the project
(``.lift3d/compile-cache/inductor``, ``flows/settings.configure_environment``), so only a machine's first run pays.

    python bench/compile_cache.py                        # CPU (needs a C++ compiler), 128x96, batch 2
    python bench/compile_cache.py --device cuda --width 1024 --height 576

Prints one JSON line: ``cold_s``, ``warm_s`` (warm-up wall time of each process) and the set-up.
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
print(json.dumps(seconds))
"""


def warm_up(cache: str, device: str, width: int, height: int) -> float:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", _WARM_UP, device, str(width), str(height)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["compile_loss"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--height", type=int, default=96)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lift3d-compile-cache-") as cache:
        cold = warm_up(cache, args.device, args.width, args.height)
        warm = warm_up(cache, args.device, args.width, args.height)
    print(json.dumps({"cold_s": cold, "warm_s": warm, "device": args.device, "size": f"{args.width}x{args.height}",
                      "load": os.getloadavg()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
