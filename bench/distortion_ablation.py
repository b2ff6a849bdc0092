"""Ablation: distortion-aware 3DGS vs plain 3DGS on synthetic frames with known per-frame distortion.

For each scene preset, seed and distortion amplitude: build the synthetic scene around a scikit-image photo
(room: astronaut, tabletop: coffee), render every ``--frame-step``-th distinct frame of the default articulated
tree (61 of 241 frames with the default 4; distinct frame 0, the input view, is always in) distorted per frame
code (``synthetic.distort_scene_gaussians``), initialise Gaussians from noisy surface points
(``sample_surface_points``), train plain 3DGS (``splat.train``) and distortion-aware 3DGS
(``splat.train_distortion``) with the *same* iteration budget, batch, seed and densification schedule (the
distortion-aware coarse stage is the plain run's first steps, step for step), and score the *canonical*
Gaussians on held-out cameras (``synthetic.eval_cameras``: between sibling clips, never on them) against the
*undistorted* scene.

Writes one JSON row per (scene, seed, amplitude, method) to ``--out`` after every finished run (``--resume``
keeps the rows of an interrupted run with the same settings) and prints a markdown table of per-amplitude means,
the distortion-aware minus plain delta, and how much of the true distortion the field learned (``offset cos``:
cosine between learned and true displacements at the canonical centres over the training codes; ``offset
gain``: least-squares share of the true displacement the field reproduces; the rows also hold both for the
frame-varying part alone, ``offset_cos_var`` / ``offset_gain_var``).

    python bench/distortion_ablation.py                    # CPU default: 2 workers, 64x48, 500 steps
    python bench/distortion_ablation.py --quick            # room, seed 0, none + default, 300 steps
    python bench/distortion_ablation.py --device cuda --backend gsplat --width 128 --height 96 \
        --iterations 1500 --points 30000 --max-gaussians 40000 --jobs 1      # the GPU run of bench/RESULTS.md

The CPU defaults are sized for 2 cores, a budget at which 3DGS is far from converged and the comparison says
little; bench/RESULTS.md records the GPU-sized run. The distortion-aware recipe is ``params.yaml``'s (``params_recipe``):
the bench compresses only the schedule to its budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d_core import metrics
from lift3d_core.splat.distortion import load_field
from lift3d_core.splat.init import init_gaussians
from lift3d_core.splat.render import render
from lift3d_core.splat.train import TrainConfig, train_gaussians
from lift3d_core.splat.train_distortion import DistortionTrainConfig, train_distortion_aware
from lift3d_core.synthetic import (
    DISTORTION_LEVELS,
    SyntheticConfig,
    build_scene,
    distort_scene_gaussians,
    eval_cameras,
    render_views,
    sample_surface_points,
)
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree

PHOTOS = {"room": "astronaut", "tabletop": "coffee", "corridor": "chelsea"}


def photo(scene: str) -> np.ndarray:
    from skimage import data

    return getattr(data, PHOTOS[scene])()


def params_recipe() -> dict:
    """The distortion-aware recipe users get: every field, regulariser and curriculum setting of ``params.yaml``'s
    ``train`` section (the plain 3DGS schedule is this bench's own, compressed to its budget; see ``configs``)."""
    import yaml

    section = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["train"]
    own = {f.name for f in fields(DistortionTrainConfig)} - {"train", "coarse_iterations", "fine_iterations", "batch_size"}
    return {k: v for k, v in section.items() if k in own}


def configs(args) -> tuple[TrainConfig, DistortionTrainConfig]:
    """The plain and the distortion-aware config of one budget (the plain one is ``plain_config()``)."""
    n = args.iterations
    coarse = round(args.coarse_fraction * n)
    train = TrainConfig(
        iterations=n,
        batch_size=2,
        sh_degree=0,  # the synthetic scenes are SH degree 0
        seed=0,
        backend=args.backend,
        log_every=max(n // 4, 1),
        # the 3DGS schedule compressed to the budget: densify over the first 60%, no opacity reset
        densify_from=max(n // 10, 1),
        densify_every=max(n // 20, 1),
        densify_until=int(0.6 * n),
        opacity_reset_every=10 * n,
        max_gaussians=args.max_gaussians,
    )
    recipe = params_recipe()
    if recipe.get("curriculum_steps"):  # the same share of the fine stage as in params.yaml (14,000 fine steps there)
        recipe["curriculum_steps"] = max(round(recipe["curriculum_steps"] / 14_000 * (n - coarse)), 1)
    values = {**_flat_train(train), **recipe, "coarse_iterations": coarse, "fine_iterations": n - coarse, "batch_size": 2}
    for item in args.set:
        key, value = item.split("=", 1)
        values[key] = json.loads(value)
    dcfg = DistortionTrainConfig.from_dict(values)
    return dcfg.plain_config(), dcfg


def _flat_train(train: TrainConfig) -> dict:
    return {f.name: getattr(train, f.name) for f in fields(train) if f.name not in ("iterations", "batch_size")}


def _flat(dcfg: DistortionTrainConfig) -> dict:
    out = {f.name: getattr(dcfg, f.name) for f in fields(dcfg) if f.name != "train"}
    out.update(_flat_train(dcfg.train))
    return out


def evaluate(gaussians, c2w, K, width, height, gt) -> tuple[float, float]:
    with torch.no_grad():
        out = render(gaussians, c2w, K, width, height)
    pred = (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return metrics.psnr(pred, gt), metrics.ssim(pred, gt)


def offset_agreement(res, scene, codes: np.ndarray, amp: float) -> dict:
    """How much of the true per-frame distortion the field learned, at the canonical centres over the training
    codes: ``offset_cos`` (cosine of the learned and true displacement fields, 1 = same direction everywhere),
    ``offset_gain`` (least-squares scale of the learned onto the true field, 1 = all of it) and the RMS of both."""
    field = load_field(res.field_state)
    g = res.gaussians
    learned, true = [], []
    with torch.no_grad():
        for code in codes:
            off = field(g.means, torch.as_tensor(code, dtype=torch.float32)).d_means
            learned.append(torch.zeros_like(g.means) if off is None else off)
            true.append(distort_scene_gaussians(scene, code, amp, g).means - g.means if amp > 0 else torch.zeros_like(g.means))
    L, T = torch.stack(learned).double(), torch.stack(true).double()  # [codes, N, 3]

    def agreement(L, T):
        tt, ll = float((T * T).sum()), float((L * L).sum())
        return (float((L * T).sum()) / (ll * tt) ** 0.5 if tt > 0 and ll > 0 else 0.0), (float((L * T).sum()) / tt if tt > 0 else 0.0)

    cos, gain = agreement(L, T)
    # the part that varies from frame to frame (what makes the frames inconsistent), each centre's mean removed
    cos_var, gain_var = agreement(L - L.mean(0), T - T.mean(0))
    return {
        "offset_cos": cos,
        "offset_gain": gain,
        "offset_cos_var": cos_var,
        "offset_gain_var": gain_var,
        "offset_rms": float(L.pow(2).sum(-1).mean().sqrt()),
        "offset_rms_var": float((L - L.mean(0)).pow(2).sum(-1).mean().sqrt()),
        "true_rms": float(T.pow(2).sum(-1).mean().sqrt()),
    }


def run_task(task: tuple) -> dict:
    """One (scene, seed, amplitude, method) run: everything it needs is rebuilt (cheap next to training)."""
    args, scene_name, seed, amp_name, method = task
    torch.set_num_threads(1)
    plain_cfg, dcfg = configs(args)
    tree = articulated_tree(TrajectoryConfig())
    c2w_all, codes_all = tree.distinct_c2w(), tree.distinct_frame_codes()
    sel = np.arange(0, len(c2w_all), args.frame_step)  # distinct frame 0 is the input view
    c2w, codes = c2w_all[sel], codes_all[sel]
    scene = build_scene(
        photo(scene_name),
        SyntheticConfig(preset=scene_name, seed=seed, width=args.width, height=args.height, hidden_gaussians=args.hidden_gaussians),
    )
    eval_c2w, _ = eval_cameras(tree, n=args.eval_views, seed=seed)
    gt_eval, _ = render_views(scene, eval_c2w)
    xyz, rgb = sample_surface_points(scene, args.points, args.init_noise * scene.scale, seed)
    init = init_gaussians(xyz, rgb, sh_degree=0, init_opacity=args.init_opacity)
    amp = float(DISTORTION_LEVELS[amp_name]) if amp_name in DISTORTION_LEVELS else float(amp_name)
    frames, _ = render_views(scene, c2w, frame_codes=codes, distortion=amp)
    t = time.perf_counter()
    if method == "plain":
        res = train_gaussians(init, frames, c2w, scene.K, replace(plain_cfg, seed=seed), device=args.device)
        extra = {}
    else:
        cfg = replace(dcfg, train=replace(dcfg.train, seed=seed))
        res = train_distortion_aware(init, frames, c2w, scene.K, codes, cfg, device=args.device)
        extra = {"mean_abs_offset": res.stats["mean_abs_offset"], "max_abs_offset": res.stats["max_abs_offset"],
                 **offset_agreement(res, scene, codes, amp)}
    seconds = time.perf_counter() - t
    p, s = evaluate(res.gaussians.to(args.device), eval_c2w, scene.K, args.width, args.height, gt_eval)
    row = dict(scene=scene_name, seed=seed, amplitude=amp_name, amplitude_value=amp, method=method,
               psnr=p, ssim=s, seconds=seconds, num_gaussians=res.gaussians.num, **extra)
    print("  " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    return row


def _task_key(scene, seed, amp, method) -> tuple:
    return (scene, int(seed), str(amp), method)


def run(args, done: list[dict] | None = None, save=None) -> list[dict]:
    """Every (scene, seed, amplitude, method) task not already in ``done`` (rows of an earlier, interrupted run
    of the same configuration); ``save(rows)`` is called after each finished task, so a killed run resumes."""
    order = [_task_key(sc, sd, a, m) for sc in args.scenes for sd in args.seeds for a in args.amplitudes for m in args.methods]
    rows = [r for r in (done or []) if _task_key(r["scene"], r["seed"], r["amplitude"], r["method"]) in order]
    have = {_task_key(r["scene"], r["seed"], r["amplitude"], r["method"]) for r in rows}
    if rows:
        print(f"resuming: {len(rows)} of {len(order)} runs already in {args.out}", flush=True)
    tasks = [(args, *k) for k in order if k not in have]
    # Longest first (distortion-aware runs cost more), so the last worker does not start a long one late.
    tasks.sort(key=lambda t: t[4] != "distortion")

    def finished(row: dict) -> None:
        rows.append(row)
        if save is not None:
            save(sorted(rows, key=lambda r: order.index(_task_key(r["scene"], r["seed"], r["amplitude"], r["method"]))))

    if args.jobs <= 1:
        for t in tasks:
            finished(run_task(t))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for row in pool.imap_unordered(run_task, tasks, chunksize=1):
                finished(row)
    return sorted(rows, key=lambda r: order.index(_task_key(r["scene"], r["seed"], r["amplitude"], r["method"])))


def table(rows: list[dict]) -> str:
    amps = list(dict.fromkeys(r["amplitude"] for r in rows))
    lines = [
        "| amplitude | value | plain PSNR | distortion-aware PSNR | delta PSNR | plain SSIM | d-a SSIM | offset cos | offset gain | runs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in amps:
        sub = [r for r in rows if r["amplitude"] == a]
        by = {m: [r for r in sub if r["method"] == m] for m in ("plain", "distortion")}
        if not by["plain"] or not by["distortion"]:
            continue
        mp = np.mean([r["psnr"] for r in by["plain"]])
        md = np.mean([r["psnr"] for r in by["distortion"]])
        sp = np.mean([r["ssim"] for r in by["plain"]])
        sd = np.mean([r["ssim"] for r in by["distortion"]])
        cos = np.mean([r.get("offset_cos", 0.0) for r in by["distortion"]])
        gain = np.mean([r.get("offset_gain", 0.0) for r in by["distortion"]])
        lines.append(
            f"| {a} | {sub[0]['amplitude_value']:g} | {mp:.2f} | {md:.2f} | {md - mp:+.2f} | {sp:.4f} | {sd:.4f} "
            f"| {cos:.3f} | {gain:.3f} | {len(by['plain'])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", nargs="+", default=["room", "tabletop"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--amplitudes", nargs="+", default=["none", "low", "default", "high"],
                    help="names in synthetic.DISTORTION_LEVELS or RMS displacements in scene units")
    ap.add_argument("--methods", nargs="+", default=["plain", "distortion"], choices=["plain", "distortion"])
    ap.add_argument("--out", default="bench/results/distortion_ablation.json")
    ap.add_argument("--iterations", type=int, default=500, help="total steps of both methods (coarse + fine)")
    ap.add_argument("--coarse-fraction", type=float, default=0.25)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--frame-step", type=int, default=4, help="train on every k-th distinct frame of the tree")
    ap.add_argument("--points", type=int, default=5000, help="initial points")
    ap.add_argument("--init-noise", type=float, default=0.003, help="std of the initial points' noise, fraction of the pivot depth")
    ap.add_argument("--init-opacity", type=float, default=0.5)
    ap.add_argument("--hidden-gaussians", type=int, default=3000)
    ap.add_argument("--max-gaussians", type=int, default=10000)
    ap.add_argument("--eval-views", type=int, default=16)
    ap.add_argument("--set", nargs="*", default=[], help="DistortionTrainConfig overrides (flat keys), key=json-value")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes, one thread each")
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default=None)
    ap.add_argument("--resume", action="store_true", help="keep the rows of --out written by an interrupted run with the same settings")
    ap.add_argument("--quick", action="store_true", help="room, seed 0, amplitudes none and default, 300 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.scenes, args.seeds, args.amplitudes = ["room"], [0], ["none", "default"]
        args.iterations = min(args.iterations, 300)
    args.device = args.device or "cpu"
    t0 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _, dcfg = configs(args)
    same = ("iterations", "coarse_fraction", "width", "height", "frame_step", "points", "init_noise", "init_opacity",
            "hidden_gaussians", "max_gaussians", "eval_views", "set", "backend")
    setup = {k: getattr(args, k) for k in same}
    done: list[dict] = []
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        if old.get("meta", {}).get("setup") == json.loads(json.dumps(setup)):
            done = old.get("rows", [])
        else:
            print(f"--resume: {out} was written with other settings; starting over", flush=True)

    def save(rows: list[dict]) -> None:
        meta = {
            "argv": sys.argv[1:],
            "setup": setup,
            "args": dict(vars(args)),
            "device": args.device,
            "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "seconds": time.perf_counter() - t0,
            "distortion_config": _flat(dcfg),
        }
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
        tmp.replace(out)  # atomic: a killed run leaves the last complete file

    rows = run(args, done, save)
    save(rows)
    print()
    print(table(rows))
    print(f"\n{len(rows)} runs in {time.perf_counter() - t0:.0f}s -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
