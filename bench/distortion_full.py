#!/usr/bin/env python
"""Distortion-aware vs plain 3DGS at the size users run, with ``params.yaml``'s ``train`` section (issue 20).

For every (preset, seed, amplitude, method[, variant]) it builds the synthetic scene around the preset's photograph,
renders every distinct frame of the default camera tree with that per-frame distortion, initialises Gaussians from
noisy samples of the surfaces a training camera sees, and trains through ``lift3d_core.train.train_scene`` (what the
train stage runs), each run in its own process, ``--jobs`` at once. One JSON row per run:

- ``heldout_psnr`` / ``heldout_ssim``: the *canonical* Gaussians (what the export writes, no field) at held-out
  cameras between sibling clips, against the *undistorted* scene;
- ``input_psnr``: the canonical Gaussians at the input view against frame 0 (undistorted by construction);
  ``train_psnr_field``: training frames rendered through the field at their own codes, against those frames
  (the measurement check: the field explains the frames it was trained on);
- ``train_seconds``, ``compile_seconds`` (per compiled family in ``compile_breakdown``), ``num_gaussians`` (final) and ``max_gaussians``;
- the field's recovery of the true per-frame displacement (distortion-aware rows): ``offset_cos`` / ``offset_gain``
  of its position offsets against the truth, over the Gaussians each frame sees, and the same for the
  frame-varying parts (each Gaussian's mean over the frames removed): ``offset_cos_var`` / ``offset_gain_var``.

    python bench/distortion_full.py --presets room tabletop corridor --seeds 0 1 --amplitudes none default \\
        --jobs 6 --out bench/results/distortion_full_h100.json --resume

``--variants FILE`` (a JSON object: name -> train-section overrides) trains each distortion-aware variant beside
the plain runs; ``--budget N`` shortens both schedules proportionally (an exploration aid: a result counts only at
the full schedule). ``--backend torch --width 128 --height 72 --budget 300`` is a CPU smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRESET_IMAGES = {"room": "skimage:astronaut", "tabletop": "skimage:coffee", "corridor": "skimage:chelsea"}
# schedule settings that are step counts: --budget scales them with the total
STEP_KEYS = ("densify_from", "densify_until", "opacity_reset_every", "sh_degree_every", "curriculum_steps")


def budget_section(section: dict, budget: int | None) -> dict:
    """``section`` with its step counts scaled so that coarse + fine = ``budget`` (None: unchanged)."""
    if not budget:
        return section
    total = section["coarse_iterations"] + section["fine_iterations"]
    f = budget / total
    out = dict(section)
    out["coarse_iterations"] = round(section["coarse_iterations"] * f)
    out["fine_iterations"] = budget - out["coarse_iterations"]
    for k in STEP_KEYS:
        if out.get(k):
            out[k] = max(1, round(out[k] * f))
    return out


def recovery(field_state, gaussians, scene, c2w, K, codes, amp, width, height, max_points=20000, max_codes=60):
    """How much of the true per-frame displacement the field learned (see the module docstring)."""
    from lift3d_core.splat.distortion import load_field
    from lift3d_core.splat.init import in_view_mask
    from lift3d_core.synthetic import distort_scene_gaussians

    dev = gaussians.means.device
    field = load_field(field_state, device=dev)
    g = gaussians
    if g.num > max_points:
        pick = torch.randperm(g.num, generator=torch.Generator().manual_seed(0))[:max_points].to(dev)
        g = type(g)(**{k: v[pick] for k, v in g.tensors().items()})
    step = max(1, len(codes) // max_codes)
    learned, true, seen = [], [], []
    with torch.no_grad():
        for i in range(0, len(codes), step):
            code = torch.as_tensor(codes[i], dtype=torch.float32, device=dev)
            off = field(g.means, code).d_means
            learned.append(torch.zeros_like(g.means) if off is None else off)
            true.append(distort_scene_gaussians(scene, codes[i], amp, g).means - g.means if amp > 0
                        else torch.zeros_like(g.means))
            seen.append(in_view_mask(g.means.cpu(), c2w[i:i + 1], K[i:i + 1], width, height).to(dev))
    L, T = torch.stack(learned).double(), torch.stack(true).double()  # [codes, N, 3]
    S = torch.stack(seen).double()[..., None]  # [codes, N, 1]

    def agreement(L, T):
        lt, tt, ll = float((L * T).sum()), float((T * T).sum()), float((L * L).sum())
        return (lt / (ll * tt) ** 0.5 if tt > 0 and ll > 0 else 0.0), (lt / tt if tt > 0 else 0.0)

    def mean_seen(X):
        return (X * S).sum(0) / S.sum(0).clamp_min(1)

    cos, gain = agreement(L * S, T * S)
    cos_var, gain_var = agreement((L - mean_seen(L)) * S, (T - mean_seen(T)) * S)
    return {"offset_cos": cos, "offset_gain": gain, "offset_cos_var": cos_var, "offset_gain_var": gain_var,
            "offset_rms": float((L * S).pow(2).sum(-1).mean().sqrt()), "true_rms": float((T * S).pow(2).sum(-1).mean().sqrt())}


def run_task(task: dict) -> dict:
    """One run, in a worker process: the scene is rebuilt here (cheap next to training)."""
    torch.set_num_threads(task["threads"])
    from bench import speed_switches
    from bench.gpu import compile_counters
    from lift3d_core import metrics, synthetic
    from lift3d_core.export import render_views
    from lift3d_core.image import IngestConfig, ingest_image
    from lift3d_core.splat.distortion import load_field
    from lift3d_core.splat.init import in_view_mask
    from lift3d_core.train import TrainStageConfig, resolve_backend, train_scene
    from lift3d_core.trajectory import TrajectoryConfig, articulated_tree

    w, h, seed, amp = task["width"], task["height"], task["seed"], task["amplitude_value"]
    image = ingest_image(task["image"], IngestConfig(width=w, height=h))
    tree = articulated_tree(TrajectoryConfig())
    scene = synthetic.build_scene(image, synthetic.SyntheticConfig(preset=task["preset"], seed=seed, width=w, height=h,
                                                                   distortion=amp))
    c2w, codes = np.asarray(tree.distinct_c2w()), np.asarray(tree.distinct_frame_codes())
    frames, _ = synthetic.render_views(scene, c2w, frame_codes=codes, distortion=amp, backend=task["backend"])
    K = np.repeat(scene.K[None], len(c2w), axis=0)
    xyz, rgb = synthetic.sample_surface_points(scene, task["points"], task["noise"] * scene.scale, seed)
    keep = in_view_mask(xyz, c2w, K, w, h).numpy()
    xyz, rgb = xyz[keep], rgb[keep]
    c2w_eval, _ = synthetic.eval_cameras(tree, n=8, seed=seed)
    targets, _ = synthetic.render_views(scene, c2w_eval, backend=task["backend"])

    section = speed_switches.apply({**task["section"], "distortion": task["method"] == "distortion", "seed": seed})
    cfg = TrainStageConfig.from_params(section)
    cuda = torch.cuda.is_available() and task["backend"] == "gsplat"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    counts = []
    t = time.perf_counter()
    ckpt = None
    name = "_".join(str(task[k]) for k in ("preset", "seed", "amplitude", "method", "variant"))
    if task.get("checkpoints"):  # a run killed at a call's time limit resumes in the next call on the same machine
        from lift3d_core.splat.checkpoint import TrainCheckpoint

        ckpt = TrainCheckpoint(Path(task["checkpoints"]) / f"{name}.pt", key=json.dumps(task["section"], sort_keys=True),
                               every_seconds=60)
    total, last = cfg.schedule.iterations, [t, None]

    def progress(step: int, m: dict) -> None:  # a call cut at its time limit still says how far each run got
        counts.append(m["num_gaussians"])
        now = time.perf_counter()
        if now - last[0] >= 60 or step == total:
            rate = "" if last[1] is None else f", {(step - last[1]) / (now - last[0]):.1f} steps/s"
            print(f"  {name}: step {step}/{total}{rate}, {m['num_gaussians']} Gaussians", flush=True)
            last[:] = [now, step]

    res = train_scene(xyz, rgb, frames, c2w, K, codes, None, cfg, callback=progress, checkpoint=ckpt)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    backend, device = resolve_backend(task["backend"])
    g = res.gaussians.to(device)
    renders = render_views(g, c2w_eval, np.broadcast_to(scene.K, (len(c2w_eval), 3, 3)), w, h, backend)
    inp = render_views(g, c2w[:1], K[:1], w, h, backend)
    compile_s = res.stats.get("compile_seconds", {}) or {}
    if ckpt is not None:
        ckpt.remove()
    row = {
        **{k: task[k] for k in ("preset", "image", "seed", "amplitude", "amplitude_value", "method", "variant")},
        "overrides": task["overrides"], "size": f"{w}x{h}", "frames": len(frames),
        "iterations": cfg.schedule.iterations, "coarse_iterations": cfg.schedule.coarse_iterations if cfg.distortion else 0,
        "heldout_psnr": round(metrics.psnr(renders, targets), 3), "heldout_ssim": round(metrics.ssim(renders, targets), 4),
        "input_psnr": round(metrics.psnr(inp, frames[:1]), 3),
        "train_seconds": round(seconds, 1), "compile_seconds": round(float(sum(compile_s.values())), 1),
        "compile_breakdown": {k: round(float(v), 1) for k, v in compile_s.items()},
        "compile_cache": compile_counters(),
        "init_gaussians": len(xyz), "num_gaussians": res.gaussians.num, "max_gaussians": max(counts, default=0),
        "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
        "resumed_at_step": res.stats.get("resumed_at_step"),  # train_seconds then count this process's part only
    }
    if res.field_state is not None:
        probe = np.linspace(0, len(frames) - 1, 6).round().astype(int)
        field = load_field(res.field_state, device=device)
        with torch.no_grad():
            moved = [field.apply(g, torch.as_tensor(codes[i], dtype=torch.float32, device=device)) for i in probe]
        own = np.concatenate([render_views(m, c2w[i:i + 1], K[i:i + 1], w, h, backend) for m, i in zip(moved, probe)])
        row["train_psnr_field"] = round(metrics.psnr(own, frames[probe]), 3)
        row["train_psnr_canonical"] = round(metrics.psnr(render_views(g, c2w[probe], K[probe], w, h, backend),
                                                         frames[probe]), 3)
        row.update({k: round(v, 4) for k, v in recovery(res.field_state, g, scene, c2w, K, codes, amp, w, h).items()})
    return row


def _safe(task: dict) -> dict:
    try:
        return run_task(task)
    except Exception as exc:  # one failed run must not lose the others' rows
        return {**{k: task[k] for k in ("preset", "seed", "amplitude", "method", "variant")},
                "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}


def key(r: dict) -> tuple:
    return (r["preset"], r["seed"], r["amplitude"], r["method"], r["variant"])


def summary(rows: list[dict]) -> str:
    """Mean over seeds per (preset, amplitude, variant): plain vs distortion-aware."""
    ok = [r for r in rows if "error" not in r]
    lines = ["| preset | amplitude | variant | plain | distortion-aware | delta | cos var | gain var | d-a s | plain s | runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = sorted({(r["preset"], r["amplitude"], r["variant"]) for r in ok if r["method"] == "distortion"})
    for preset, amp, variant in groups:
        d = [r for r in ok if (r["preset"], r["amplitude"], r["variant"], r["method"]) == (preset, amp, variant, "distortion")]
        seeds = {r["seed"] for r in d}
        p = [r for r in ok if (r["preset"], r["amplitude"], r["method"]) == (preset, amp, "plain") and r["seed"] in seeds]
        if not p:
            continue
        mp, md = np.mean([r["heldout_psnr"] for r in p]), np.mean([r["heldout_psnr"] for r in d])
        lines.append(f"| {preset} | {amp} | {variant} | {mp:.2f} | {md:.2f} | {md - mp:+.2f} "
                     f"| {np.mean([r.get('offset_cos_var', 0) for r in d]):.3f} | {np.mean([r.get('offset_gain_var', 0) for r in d]):.3f} "
                     f"| {np.mean([r['train_seconds'] for r in d]):.0f} | {np.mean([r['train_seconds'] for r in p]):.0f} | {len(d)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from lift3d_core.synthetic import DISTORTION_LEVELS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["room", "tabletop", "corridor"])
    ap.add_argument("--images", nargs="*", default=[], help="PRESET=IMAGE overrides of the photographs")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--amplitudes", nargs="+", default=["none", "default"])
    ap.add_argument("--methods", nargs="+", default=["plain", "distortion"], choices=["plain", "distortion"])
    ap.add_argument("--variants", default=None, help="JSON file: variant name -> train-section overrides (keys "
                    "starting with _ are speed switches, bench/speed_switches.py)")
    ap.add_argument("--set", nargs="*", default=[], help="train-section overrides KEY=YAML, every run")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=576)
    ap.add_argument("--budget", type=int, default=None, help="total steps (exploration); default: params.yaml's")
    ap.add_argument("--points", type=int, default=300_000, help="noisy surface samples before culling")
    ap.add_argument("--noise", type=float, default=0.01, help="sample noise std, fraction of the scene scale")
    ap.add_argument("--backend", default="gsplat", help="torch: a CPU smoke run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out, run the rest")
    ap.add_argument("--checkpoints", default=None,
                    help="directory of training checkpoints (every 60 s): a killed run resumes from its own")
    args = ap.parse_args(argv)

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    base = {**params["train"], "backend": args.backend}
    for item in args.set:
        k, v = item.split("=", 1)
        base[k] = yaml.safe_load(v)
    variants = {"default": {}}
    if args.variants:
        variants = json.loads(Path(args.variants).read_text())
    images = {**PRESET_IMAGES, **dict(i.split("=", 1) for i in args.images)}
    threads = max(1, (os.cpu_count() or 2) // max(args.jobs, 1))
    tasks = []
    for preset in args.presets:
        for seed in args.seeds:
            for amp in args.amplitudes:
                for method in args.methods:
                    for name, over in (variants.items() if method == "distortion" else [("plain", {})]):
                        section = budget_section({**base, **over}, args.budget)
                        value = float(DISTORTION_LEVELS.get(amp, amp))
                        tasks.append(dict(preset=preset, image=images[preset], seed=seed, amplitude=amp, amplitude_value=value,
                                          method=method, variant=name, overrides={**dict(i.split("=", 1) for i in args.set), **over},
                                          section=section, width=args.width, height=args.height, points=args.points,
                                          noise=args.noise, backend=args.backend, threads=threads,
                                          checkpoints=args.checkpoints))
    out = Path(args.out)
    rows = []
    if args.resume and out.exists():
        rows = [r for r in json.loads(out.read_text())["rows"] if "error" not in r]
    have = {key(r) for r in rows}
    todo = [t for t in tasks if key(t) not in have]
    todo.sort(key=lambda t: t["method"] != "distortion")  # the long runs first
    print(f"{len(tasks)} runs, {len(tasks) - len(todo)} already in {out}; {len(todo)} to run, {args.jobs} at a time, "
          f"{args.width}x{args.height}", flush=True)
    t0 = time.perf_counter()
    meta = {"argv": sys.argv[1:], "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "variants": variants, "base_overrides": args.set}

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"meta": {**meta, "seconds": round(time.perf_counter() - t0, 1)}, "rows": rows}, indent=1))
        tmp.replace(out)  # a killed run leaves the last complete file

    def finished(row):
        rows.append(row)
        save()
        short = {k: row.get(k) for k in ("preset", "seed", "amplitude", "method", "variant", "heldout_psnr", "input_psnr",
                                         "train_psnr_field", "offset_cos_var", "offset_gain_var", "train_seconds", "error")}
        print(json.dumps(short), flush=True)

    if args.jobs <= 1:
        for t in todo:
            finished(_safe(t))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs, maxtasksperchild=1) as pool:
            for row in pool.imap_unordered(_safe, todo, chunksize=1):
                finished(row)
    save()
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
