#!/usr/bin/env python
"""Rasterizer checks and timings, meant for a GPU machine (the CPU part runs anywhere).

    python bench/gpu.py --out bench/results/gpu.json            # CUDA: parity + GPU timings
    python bench/gpu.py --cpu --out bench/results/gpu.json      # ... and CPU timings of the torch backend
    python bench/gpu.py --cpu-only --out bench/results/cpu.json # CPU timings only (no CUDA needed)

Sections (each a function returning JSON-able dicts, so more can be added):
``check_cuda`` (device, versions), ``import_gsplat`` (import + first-call JIT build time),
``parity`` (torch-on-CUDA vs gsplat: image MAD and per-parameter gradient cosine; exits 1
when it fails), ``time_gpu`` (forward and forward+backward at 512x288 and 1024x576 with
100k and 500k Gaussians), ``time_cpu`` (torch backend at 128x96, 10k/30k Gaussians, 1 and
2 threads). Scenes are random and seeded: Gaussians uniformly in front of the camera at
depth 2-6, per-axis screen-space sigma log-uniform in 0.5-2.5 px ("heavy", random
opacities, SH degree 3) or ~1 px isotropic with opacity 0.1 ("init": what a trainer starts from).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians, rgb_to_sh0
from lift3d_core.splat.render import RenderOutput, render

PARITY_MAD = 1e-3  # mean absolute image difference allowed between backends
PARITY_COSINE = 0.99  # gradient cosine similarity required per parameter
GRAD_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")


# -- scenes -----------------------------------------------------------------------------


def intrinsics(width: int, height: int, fov_x_deg: float = 60.0) -> torch.Tensor:
    fx = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
    return torch.tensor([[fx, 0.0, width / 2], [0.0, fx, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)


def orbit(angle_deg: float, centre_z: float = 4.0) -> torch.Tensor:
    """c2w of a camera turned about world y around (0, 0, centre_z), looking at it (OpenCV)."""
    a = math.radians(angle_deg)
    R = torch.tensor(
        [[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]], dtype=torch.float64
    )
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = R
    c2w[:3, 3] = torch.tensor([0.0, 0.0, centre_z], dtype=torch.float64) - R @ torch.tensor(
        [0.0, 0.0, centre_z], dtype=torch.float64
    )
    return c2w


def random_scene(n: int, width: int, height: int, *, kind: str = "heavy", seed: int = 0, device="cpu") -> Gaussians:
    """n Gaussians in front of the identity camera whose intrinsics are ``intrinsics(width, height)``."""
    g = torch.Generator().manual_seed(seed)
    fx = float(intrinsics(width, height)[0, 0])
    z = 2.0 + 4.0 * torch.rand(n, generator=g)
    u = (torch.rand(n, generator=g) * 1.1 - 0.05) * width
    v = (torch.rand(n, generator=g) * 1.1 - 0.05) * height
    means = torch.stack([(u - width / 2) / fx * z, (v - height / 2) / fx * z, z], -1)
    if kind == "heavy":
        sigma_px = torch.exp(math.log(0.5) + math.log(5.0) * torch.rand(n, generator=g))
        log_scales = torch.log(sigma_px * z / fx)[:, None] + 0.5 * torch.randn(n, 3, generator=g)
        opacity_logits = torch.randn(n, generator=g)
        shN = 0.1 * torch.randn(n, 15, 3, generator=g)
    elif kind == "init":
        sigma_px = 0.7 + 0.7 * torch.rand(n, generator=g)
        log_scales = torch.log(sigma_px * z / fx)[:, None].expand(n, 3).clone()
        opacity_logits = torch.full((n,), math.log(0.1 / 0.9))
        shN = torch.zeros(n, 15, 3)
    else:
        raise ValueError(kind)
    return Gaussians(
        means=means,
        log_scales=log_scales,
        quats=torch.randn(n, 4, generator=g),
        opacity_logits=opacity_logits,
        sh0=rgb_to_sh0(torch.rand(n, 1, 3, generator=g)),
        shN=shN,
    ).to(device)


# -- sections -----------------------------------------------------------------------------


def compile_counters() -> dict:
    """torch.compile's cache counters of this process so far (``fxgraph_cache_hit`` / ``_miss`` / ``_bypass``,
    ``autograd_cache_hit`` / ...), and graphs compiled: whether a compile's seconds were spent generating code or
    loading it from the on-disk caches."""
    from torch._dynamo.utils import counters

    out = {k: v for k, v in counters["inductor"].items() if "cache" in k}
    out.update({k: v for k, v in counters["aot_autograd"].items() if "cache" in k})
    out["unique_graphs"] = counters["stats"].get("unique_graphs", 0)
    return dict(out)


def check_cuda() -> dict:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info.update(
            device=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            capability=list(torch.cuda.get_device_capability(0)),
        )
    return info


def import_gsplat() -> dict:
    """Import gsplat and run one tiny render: the first CUDA call may JIT-compile its kernels."""
    t0 = time.perf_counter()
    import gsplat

    t1 = time.perf_counter()
    g = random_scene(16, 32, 24, device="cuda")
    render(g, torch.eye(4, dtype=torch.float64), intrinsics(32, 24), 32, 24, backend="gsplat")
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return {"gsplat": gsplat.__version__, "import_s": round(t1 - t0, 2), "first_render_s": round(t2 - t1, 2)}


def _loss_weights(C: int, width: int, height: int, device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    return tuple(torch.rand(C, height, width, k, generator=g).to(device) for k in (3, 1, 1))


def _grads(g: Gaussians, c2w, K, width, height, backend, weights):
    params = g.map(lambda t: t.detach().clone().requires_grad_())
    out = render(params, c2w, K, width, height, backend=backend, background=torch.tensor([0.1, 0.2, 0.3]))
    w_rgb, w_alpha, w_depth = weights
    ((out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum() + 0.1 * (out.depth * w_depth).sum()).backward()
    grads = {name: getattr(params, name).grad.detach() for name in GRAD_NAMES}
    grads["means2d"] = out.means2d.grad.detach()
    return out, grads


def parity(n: int = 2000, width: int = 128, height: int = 96, cameras: int = 3, device="cuda") -> dict:
    """The torch backend (on ``device``) against gsplat on the same scene and loss."""
    g = random_scene(n, width, height, kind="heavy", seed=3, device=device)
    c2w = torch.stack([orbit(a) for a in torch.linspace(-10, 10, cameras).tolist()])
    K = intrinsics(width, height)
    weights = _loss_weights(cameras, width, height, device)
    ref, ref_grads = _grads(g, c2w, K, width, height, "torch", weights)
    out, grads = _grads(g, c2w, K, width, height, "gsplat", weights)
    ref, out = (RenderOutput(**{k: v.detach() for k, v in vars(o).items()}) for o in (ref, out))
    result = {
        "scene": {"n": n, "width": width, "height": height, "cameras": cameras},
        "mad": {k: float((getattr(out, k) - getattr(ref, k)).abs().mean()) for k in ("rgb", "alpha")},
        "radii_equal": float((out.radii == ref.radii).float().mean()),
        "cosine": {},
    }
    hit = (ref.alpha > 0.5) & (out.alpha > 0.5)
    result["depth_mad_where_alpha_gt_0.5"] = float((out.depth - ref.depth).abs()[hit].mean())
    for name, ref_grad in ref_grads.items():
        a, b = ref_grad.flatten().double(), grads[name].flatten().double()
        result["cosine"][name] = float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-30))
    result["ok"] = all(v < PARITY_MAD for v in result["mad"].values()) and all(
        result["cosine"][name] > PARITY_COSINE for name in GRAD_NAMES
    )
    return result


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_render(
    g: Gaussians, width: int, height: int, backend: str, *, reps: int = 10, warmup: int = 2, backward: bool = True
) -> dict:
    """Median wall time of render (and render + backward of a photometric-like loss)."""
    device = g.device
    c2w, K = torch.eye(4, dtype=torch.float64), intrinsics(width, height)
    params = g.map(lambda t: t.detach().clone().requires_grad_(backward))
    fwd, total = [], []
    for i in range(warmup + reps):
        if backward:
            for t in params.tensors().values():
                t.grad = None
        _sync(device)
        t0 = time.perf_counter()
        out = render(params, c2w, K, width, height, backend=backend)
        _sync(device)
        t1 = time.perf_counter()
        if backward:
            (out.rgb.mean() + out.depth.mean()).backward()
            _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            total.append(t2 - t0)
    row = {
        "backend": backend,
        "device": str(device),
        "width": width,
        "height": height,
        "n": g.num,
        "fwd_ms": round(1e3 * statistics.median(fwd), 2),
    }
    if backward:
        row["fwd_bwd_ms"] = round(1e3 * statistics.median(total), 2)
    if torch.device(device).type == "cuda":
        row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def time_gpu(sizes=((512, 288), (1024, 576)), counts=(100_000, 500_000), reps: int = 10) -> list[dict]:
    rows = []
    for width, height in sizes:
        for n in counts:
            g = random_scene(n, width, height, kind="heavy", seed=0, device="cuda")
            backends = ["gsplat"] + (["torch"] if (width, height) == tuple(sizes[0]) and n == counts[0] else [])
            for backend in backends:
                torch.cuda.reset_peak_memory_stats()
                try:
                    rows.append(time_render(g, width, height, backend, reps=reps if backend == "gsplat" else 3))
                except torch.cuda.OutOfMemoryError:
                    rows.append(
                        {"backend": backend, "width": width, "height": height, "n": n, "error": "CUDA out of memory"}
                    )
                    torch.cuda.empty_cache()
                print(_row_line(rows[-1]), flush=True)
    return rows


def time_cpu(
    counts=(10_000, 30_000), threads=(1, 2), kinds=("init", "heavy"), width: int = 128, height: int = 96, reps: int = 7
) -> list[dict]:
    rows = []
    before = torch.get_num_threads()
    try:
        for kind in kinds:
            for n in counts:
                g = random_scene(n, width, height, kind=kind, seed=0)
                for k in threads:
                    torch.set_num_threads(k)
                    row = time_render(g, width, height, "torch", reps=reps)
                    row.update(threads=k, scene=kind)
                    rows.append(row)
                    print(_row_line(row), flush=True)
    finally:
        torch.set_num_threads(before)
    return rows


# -- report -----------------------------------------------------------------------------


def _row_line(row: dict) -> str:
    return "  " + ", ".join(f"{k}={v}" for k, v in row.items())


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def parity_table(result: dict) -> str:
    rows = [{"check": f"MAD {k}", "value": f"{v:.2e}", "limit": f"< {PARITY_MAD}"} for k, v in result["mad"].items()]
    rows.append(
        {"check": "depth MAD (alpha > 0.5)", "value": f"{result['depth_mad_where_alpha_gt_0.5']:.2e}", "limit": ""}
    )
    rows.append({"check": "radii equal", "value": f"{result['radii_equal']:.4f}", "limit": ""})
    for name, v in result["cosine"].items():
        rows.append(
            {
                "check": f"grad cosine {name}",
                "value": f"{v:.6f}",
                "limit": f"> {PARITY_COSINE}" if name in GRAD_NAMES else "",
            }
        )
    return markdown_table(rows)


def _tree_targets(g: Gaussians, width: int, height: int, frames: int, device, backend: str = "gsplat") -> tuple:
    """Targets for a training benchmark: ``g`` rendered from ``frames`` cameras around it."""
    c2w = torch.stack([orbit(a) for a in torch.linspace(-30.0, 30.0, frames).tolist()])
    K = intrinsics(width, height)
    imgs = []
    with torch.no_grad():
        for i in range(frames):
            rgb = render(g, c2w[i].to(device), K.to(device), width, height, backend=backend).rgb[0]
            imgs.append((rgb.clamp(0, 1) * 255).to(torch.uint8))
    return torch.stack(imgs), c2w.double(), K.double()


def _perturbed(g: Gaussians, seed: int) -> Gaussians:
    gen = torch.Generator(device=g.device).manual_seed(seed)
    noise = lambda t, s: t + s * torch.randn(t.shape, generator=gen, device=t.device)  # noqa: E731
    return Gaussians(noise(g.means, 0.02), noise(g.log_scales, 0.1), g.quats, g.opacity_logits,
                     noise(g.sh0, 0.1), g.shN)


def time_training(sizes=((512, 288), (1024, 576)), counts=(100_000, 500_000), steps: int = 200,
                  warmup: int = 20, distortion: bool = False, backend: str = "gsplat",
                  device: str = "cuda") -> list[dict]:
    """Training iterations per second with the gsplat backend (a full step: render, L1 + D-SSIM, backward,
    Adam, densification bookkeeping; densification itself off so N stays fixed), batch 1 (plain) or the
    reference's batch 2 with the distortion field (fine stage)."""
    from lift3d_core.splat.train import TrainConfig, Trainer
    from lift3d_core.splat.train_distortion import DistortionTrainConfig, DistortionTrainer

    rows = []
    for width, height in sizes:
        for n in counts:
            g = random_scene(n, width, height, kind="heavy", seed=1, device=device)
            frames, c2w, K = _tree_targets(g, width, height, 16, device, backend)
            init = _perturbed(g, 2)
            plain = TrainConfig(iterations=steps + warmup, batch_size=1, backend=backend, densify_until=0,
                                opacity_reset_every=10**9, log_every=10**9)
            if distortion:
                cfg = DistortionTrainConfig(coarse_iterations=0, fine_iterations=steps + warmup, batch_size=2,
                                            train=plain)
                codes = torch.stack([torch.linspace(0.2, 0.8, 16), torch.full((16,), 0.5)], dim=1)
                trainer = DistortionTrainer(init, frames, c2w, K, codes, cfg, device=device)
            else:
                trainer = Trainer(init, frames, c2w, K, plain, device=device)
            for _ in range(warmup):
                trainer.train_step()
            _sync(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.train_step()
            _sync(device)
            dt = time.perf_counter() - t0
            rows.append({"trainer": "distortion (fine, batch 2)" if distortion else "plain (batch 1)",
                         "width": width, "height": height, "n": n, "it_per_s": round(steps / dt, 1),
                         "ms_per_it": round(1000 * dt / steps, 2),
                         "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if device == "cuda" else None})
            print("  " + _row_line(rows[-1]), flush=True)
            del trainer, frames, g, init
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"), help="JSON file for the results")
    parser.add_argument("--cpu", action="store_true", help="also time the torch backend on the CPU")
    parser.add_argument("--cpu-only", action="store_true", help="only the CPU timings (no CUDA needed)")
    parser.add_argument("--skip-timing", action="store_true", help="GPU: parity only")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--train", action="store_true", help="GPU: also time training iterations (plain and "
                        "distortion-aware) at 512x288 / 1024x576 with 100k / 500k Gaussians")
    args = parser.parse_args(argv)

    results: dict = {"env": check_cuda(), "argv": sys.argv[1:]}
    print(json.dumps(results["env"]))
    status = 0
    if not args.cpu_only:
        if not torch.cuda.is_available():
            print("no CUDA device: use --cpu-only", file=sys.stderr)
            return 2
        try:
            results["gsplat"] = import_gsplat()
        except (ImportError, Lift3DError) as exc:
            print(f"gsplat unusable: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(results["gsplat"]))
        results["parity"] = parity()
        print("\n## Parity: torch (CUDA) vs gsplat\n\n" + parity_table(results["parity"]) + "\n")
        if not results["parity"]["ok"]:
            print("PARITY FAILED", file=sys.stderr)
            status = 1
        if not args.skip_timing:
            print("## GPU timings")
            results["gpu"] = time_gpu(reps=args.reps)
            print("\n" + markdown_table(results["gpu"]) + "\n")
        if args.train:
            print("## Training iterations per second (gsplat)")
            results["train"] = time_training() + time_training(distortion=True)
            print("\n" + markdown_table(results["train"]) + "\n")
    if args.cpu or args.cpu_only:
        print("## CPU timings (torch backend)")
        results["cpu"] = time_cpu()
        print("\n" + markdown_table(results["cpu"]) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
