"""Profile one distortion-aware fine training step on a GPU (torch.profiler), to find where its time goes.

    python bench/profile_distortion.py --n 500000 --width 1024 --height 576 --out prof.json

Profiles ``params.yaml``'s ``train`` recipe (what ``lift3d lift`` runs; ``--class-defaults``: the config class's
LiftImage3D values), fine steps only, densification off. Prints the step's wall time with and without the field's pieces switched off (regularisers, anchor, culling)
and the profiler's top operators by CUDA and by CPU time. ``--attribute`` adds where the step's host time goes:
the operators that launch work, counted per line of lift3d_core / gsplat that called them (backward operators
per autograd node), and the Python functions with the most own time (cProfile). Variants may also set the
trainer's speed switches (``_``-keys, ``bench/speed_switches.py``: the fused MLP, lines, regulariser, image-motion
kernels and the compiled pieces); each variant's first step (its compiles, when the process has not compiled
them yet) and torch.compile's cache counters are recorded under ``first_step``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import speed_switches
from bench.gpu import _perturbed, _tree_targets, compile_counters, random_scene
from lift3d_core.splat.train_distortion import DistortionTrainConfig, DistortionTrainer


def recipe(class_defaults: bool = False) -> dict:
    """The distortion-aware settings profiled: ``params.yaml``'s ``train`` section (what ``lift3d lift`` runs), or
    with ``class_defaults`` the config class's own defaults (LiftImage3D's reference values)."""
    if class_defaults:
        return {}
    import yaml

    section = dict(yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["train"])
    for k in ("distortion", "init_opacity", "backend"):
        section.pop(k, None)
    if section.get("pose_refine") == "auto":  # the pipeline resolves it by the calibration: commanded cameras here
        section["pose_refine"] = False
    return section


def make_trainer(n, width, height, device, backend, section: dict, **overrides):
    """A fine-stage-only trainer on a random ``n``-Gaussian scene and 16 tree targets; densification and opacity
    resets off, so every timed step has the same ``n``. ``section``: flat distortion settings (:func:`recipe`)."""
    g = random_scene(n, width, height, kind="heavy", seed=1, device=device)
    frames, c2w, K = _tree_targets(g, width, height, 16, device, backend)
    init = _perturbed(g, 2)
    values = {**section, "coarse_iterations": 0, "fine_iterations": 10**6, "batch_size": 2,
              "backend": backend, "densify_until": 0, "opacity_reset_every": 10**9, "log_every": 10**9,
              "curriculum_steps": 0, **overrides}
    cfg = DistortionTrainConfig.from_dict(values)
    codes = torch.stack([torch.linspace(0.2, 0.8, 16), torch.full((16,), 0.5)], dim=1)
    return DistortionTrainer(init, frames, c2w, K, codes, cfg, device=device)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(trainer, steps, device, first: dict | None = None):
    """Milliseconds per step over ``steps`` steps after 5 warm-up ones; ``first``, if given, gets the warm-up's
    first step's seconds (compiles included) and the trainer's ``compile_seconds``."""
    t0 = time.perf_counter()
    trainer.train_step()
    sync(device)
    if first is not None:
        first.update(first_step_s=round(time.perf_counter() - t0, 2), compile_seconds=dict(trainer.compile_seconds),
                     compile_cache=compile_counters())
    for _ in range(4):
        trainer.train_step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync(device)
    return 1000 * (time.perf_counter() - t0) / steps


def attribute(trainer, steps: int) -> dict:
    """Where the host's time of a step goes, over ``steps`` training steps: milliseconds per step spent inside
    each piece of the step (inclusive; the step queues its GPU work without waiting, so while the host is the
    bottleneck these times add up to the step's), the operators that launch work per step counted by the line
    of lift3d_core / gsplat that called them (backward operators per autograd node; torch.compile'd regions
    run eagerly under the counter, so their operators show up there although training launches them fused),
    and cProfile's top functions."""
    import collections
    import contextlib
    import cProfile
    import functools
    import io
    import pstats

    from torch.utils._python_dispatch import TorchDispatchMode

    from lift3d_core.splat import render as render_module

    spent: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def patched(owner, name: str, label: str):
        original, own = getattr(owner, name), name in vars(owner)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label] += time.perf_counter() - t0

        setattr(owner, name, timed)
        try:
            yield
        finally:
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)

    pieces = [
        (trainer, "train_step", "step"), (trainer, "render_frames", "render_frames"),
        (trainer, "losses", "losses"), (trainer, "_regularisers", "losses/regularisers"),
        (trainer, "_photometric", "losses/photometric"), (trainer, "_visible_batch", "render_frames/visible mask"),
        (trainer.field, "segment_features", "render_frames/field features"),
        (trainer.field, "decode", "render_frames/field MLP"),
        (render_module, "render_w2c_each", "render_frames/rasterize"),
        (trainer.strategy, "step_post_backward", "densify statistics"),
        (torch.Tensor, "backward", "backward"),
    ] + [(opt, "step", "optimizers") for opt in trainer.all_optimizers()]
    with contextlib.ExitStack() as stack:
        for owner, name, label in pieces:
            stack.enter_context(patched(owner, name, label))
        for _ in range(steps):
            trainer.train_step()
        sync(trainer.device.type)
    host_ms = {k: round(1000 * v / steps, 3) for k, v in spent.most_common()}
    counts: collections.Counter = collections.Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                node = torch._C._current_autograd_node()
                where = f"backward {node.name()}" if node is not None else "?"
                if node is None:
                    frame = sys._getframe(1)
                    while frame is not None:
                        name = frame.f_code.co_filename
                        if "lift3d_core" in name or "gsplat" in name:
                            where = f"{name.split('site-packages/')[-1].split('main/')[-1]}:{frame.f_lineno}"
                            break
                        frame = frame.f_back
                counts[f"{where} {func.overloadpacket.__name__}"] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        for _ in range(steps):
            trainer.train_step()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        trainer.train_step()
    sync(trainer.device.type)
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
    ops = {k: v / steps for k, v in counts.most_common()}
    return {"host_ms_per_step": host_ms, "ops_per_step": sum(ops.values()), "ops": ops, "cprofile": text.getvalue()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=500_000)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=576)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="gsplat")
    ap.add_argument("--variants", nargs="+", default=None, help="names of the variants to time (default: all)")
    ap.add_argument("--line-dot-max-r", type=int, default=None,
                    help="field_triton.LINE_DOT_MAX_R: longest line whose gradient uses the one-hot product")
    ap.add_argument("--profile-variant", default="default", help="the variant the profiler records")
    ap.add_argument("--attribute", action="store_true", help="also count operators by caller and run cProfile")
    ap.add_argument("--set", nargs="*", default=[], help="KEY=YAML overrides of the distortion config, every variant")
    ap.add_argument("--class-defaults", action="store_true",
                    help="profile the config class's defaults (LiftImage3D's values) instead of params.yaml's recipe")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    section = recipe(args.class_defaults)
    import yaml

    base = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.line_dot_max_r is not None:
        from lift3d_core.splat import field_triton

        field_triton.LINE_DOT_MAX_R = args.line_dot_max_r
    variants = {
        "default": {},
        "coarse step (plain 3DGS's step)": dict(coarse_iterations=10**6),
        "no regularisers": dict(plane_tv_weight=0.0, frame_smoothness_weight=0.0, frame_l1_weight=0.0),
        "no anchor": dict(anchor_weight=0.0, hard_anchor=False),
        "soft anchor, no price (session 10's recipe)": dict(hard_anchor=False, offset_image_weight=0.0),
        "no frame-mean penalty": dict(frame_mean_weight=0.0),
        "culling": dict(field_cull_margin=0.2),
        "no culling": dict(field_cull_margin=None),
        "position head only": dict(deform_scale=False, deform_rotation=False),
        "one level": dict(multires=[1]),
        "no image-motion price": dict(offset_image_weight=0.0),
        "image-motion price 2.88": dict(offset_image_weight=2.88),
        "eager field": dict(compile_field="off"),
        "eager MLP": dict(_compiled_parts=["lines", "regularisers"]),
        "eager frame lines": dict(_compiled_parts=["mlp", "regularisers"]),
        "eager regularisers": dict(_compiled_parts=["mlp", "lines"]),
        "compiled MLP only": dict(_compiled_parts=["mlp"]),
        "fused image motion": dict(_fused_image_motion="auto"),
        "small-plane products": dict(_small_plane_products=True),
        "triton MLP": dict(_mlp_kernel="triton"),
        "nothing compiled, eager lines (triton MLP and regularisers)": dict(
            _compiled_parts=[], _mlp_kernel="triton", _regularisers="triton"),
        "triton frame lines": dict(_lines_kernel="triton"),
        "triton regularisers": dict(_compiled_parts=["mlp", "lines"], _regularisers="triton"),
        "all kernels, nothing compiled in the field": dict(
            _compiled_parts=[], _mlp_kernel="triton", _regularisers="triton", _fused_image_motion="auto",
            _small_plane_products=True, _lines_kernel="triton"),
        "grid_sample field": dict(field_kernels="torch"),
        "eager loss": dict(compile_loss="off"),
        "culling, eager loss": dict(field_cull_margin=0.2, compile_loss="off"),
        "no field term": dict(field_render_size=None),
        "field term, one level": dict(field_levels=1),
    }
    variants = {name: {**base, **over} for name, over in variants.items()}
    rows, compiles = {}, {}
    for name, over in variants.items():
        if args.variants and name not in args.variants:
            continue
        over = speed_switches.apply(over)
        trainer = make_trainer(args.n, args.width, args.height, args.device, args.backend, section, **over)
        first = {}
        rows[name] = round(time_steps(trainer, args.steps, args.device, first), 2)
        compiles[name] = first
        print(f"{name}: {rows[name]} ms/step; first step {first['first_step_s']} s, compiles "
              f"{first['compile_seconds']}", flush=True)
        del trainer
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    profiled = speed_switches.apply(variants[args.profile_variant])
    trainer = make_trainer(args.n, args.width, args.height, args.device, args.backend, section, **profiled)
    time_steps(trainer, 3, args.device)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if args.device.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(5):
            trainer.train_step()
        sync(args.device)
    by_dev = prof.key_averages().table(sort_by="self_cuda_time_total" if args.device.startswith("cuda") else "self_cpu_time_total", row_limit=30)
    by_cpu = prof.key_averages().table(sort_by="cpu_time_total", row_limit=30)
    print(by_dev)
    print(by_cpu)
    result = {"args": vars(args), "ms_per_step": rows, "first_step": compiles, "by_device": by_dev, "by_cpu": by_cpu}
    if args.attribute:
        result["attribution"] = attribution = attribute(trainer, 5)
        for where, ms in attribution["host_ms_per_step"].items():
            print(f"host {ms:8.3f} ms/step  {where}")
        print(f"operators per step: {attribution['ops_per_step']:.0f}")
        for where, n in list(attribution["ops"].items())[:60]:
            print(f"{n:7.1f}  {where}")
        print(attribution["cprofile"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
