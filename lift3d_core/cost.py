"""What a run will cost before it starts: a per-stage estimate of seconds on this device.

A stage's cost is ``fixed + rate x work``, work being pixels x frames (generation, calibration, depth, renders)
or pixels x steps (training); each rate is a constant fitted to measurements in ``bench/RESULTS.md`` (the 2-core
development CPU and an H100), so an estimate is a size, not a promise: a faster CPU, a loaded one or another GPU
moves it by a factor of 2 or more. A stage whose backend was never measured on the device says so (``seconds``
None) instead of guessing. Nothing here runs a model; it reads the stage configs and the camera tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lift3d_core.trajectory import articulated_tree


@dataclass(frozen=True)
class Rate:
    """``seconds = fixed + per_unit * units``; ``source`` says which measurement fitted it."""

    fixed: float
    per_unit: float
    source: str

    def seconds(self, units: float) -> float:
        return self.fixed + self.per_unit * units


# Stages that run on the CPU whatever the device (units in each comment).
_CPU_BOUND = {
    # pixel-frames. The synthetic scene renders with the torch rasterizer on the CPU (on a GPU host too): 25 s at
    # 128x96 and 115 s at 384x216 for the 241-frame tree under load 4.6, 2.8x the idle demo's 9 s at 128x96.
    "generate.synthetic": Rate(3.3, 1.9e-6, "2-core CPU: 9 s at 128x96 x 241 frames (demo); 384x216 measured"),
    # pixel-frames: pycolmap's SIFT (on frames upsampled to 384 px wide), matching, mapping and the plane sweep:
    # 72 s for the level-1 tree's 61 frames at 128x96 under load ~4 (sweep 36 s), ~9.5e-5 s a pixel-frame
    "calibrate.colmap": Rate(2.0, 9.5e-5, "COLMAP end to end, session 10: 61 frames at 128x96, plane sweep"),
    "calibrate.commanded": Rate(0.2, 5e-9, "demo run: well under a second"),
    "depth.calibrated": Rate(0.1, 5e-9, "demo run: well under a second"),
}
# Rates per device ("cpu": the 2-core development machine; "cuda": an H100).
RATES: dict[str, dict[str, Rate]] = {
    "cpu": {
        **_CPU_BOUND,
        # frames: the ViT-L at its fixed 518-row input, whatever the frame size
        "depth.depth_anything_v2": Rate(5.0, 36.0, "Depth Anything V2 table: 36 s a frame on the CPU"),
        # pixel-steps x batch/2. Distortion-aware: 240.9 s for 1,000 steps at 128x96 (demo), 872 s for 1,500 at
        # 256x192 -> 0.127 s + 9.2e-6 s a pixel a step. Plain: 178 s / 1,000 at 128x96, 709 s / 1,500 at 256x192.
        "train.distortion": Rate(0.127, 9.2e-6, "demo and 256x192 ablation rows (per step)"),
        "train.plain": Rate(0.08, 7.9e-6, "demo_plain and 256x192 ablation rows (per step)"),
        # pixel-views: the torch rasterizer, ~50k Gaussians at 128x96 in ~0.1 s a view
        "render": Rate(0.5, 8e-6, "rasterizer table, 30k Gaussians at 128x96"),
    },
    "cuda": {
        **_CPU_BOUND,
        # steps (not pixels: the H100 step is host-bound at 1024x576): coarse ~7 s and fine ~29 s a 1,000 steps
        # (params.yaml's recipe since session 13, alone on the GPU), plus ~50 s of torch.compile on a machine whose
        # compile cache is empty
        "train.distortion.coarse": Rate(50.0, 0.007, "Full GPU schedule, H100, session 13 (plain's step rate)"),
        "train.distortion.fine": Rate(0.0, 0.029, "Full GPU schedule, H100, session 13"),
        # frames: the ViT-L at 518 rows, float32 (the default dtype), batch 8: 241 frames in 13.9 s
        "depth.depth_anything_v2": Rate(1.0, 0.058, "Depth Anything V2 table, H100, session 13"),
        "train.plain": Rate(10.0, 0.007, "Training iterations per second on a GPU, H100"),
        # pixel-views: gsplat's forward, ~2-3 ms a view at 1024x576
        "render": Rate(1.0, 0.003 / 589_824, "rasterizer table, gsplat on an H100"),
    },
}


@dataclass(frozen=True)
class StageEstimate:
    """``what``: the work in words (``synthetic, 241 frames at 1024x576``); ``seconds``: None when this backend
    was never measured on this device."""

    stage: str
    what: str
    seconds: float | None

    def line(self) -> str:
        return f"{self.stage}: {self.what} ~ {format_seconds(self.seconds)}"


def format_seconds(seconds: float | None) -> str:
    """``42 s``, ``7 min``, ``2.5 h``; ``unknown (not measured on this device)`` for None."""
    if seconds is None:
        return "unknown (not measured on this device)"
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def estimate_run(configs: dict[str, Any], device: str, stages: tuple[str, ...] | None = None) -> list[StageEstimate]:
    """Estimates of the stages ``stages`` (default: every one whose cost is more than bookkeeping) on ``device``
    (``"cpu"`` or ``"cuda"``) for the frozen stage configs of :func:`lift3d_core.pipeline.stage_configs`."""
    rates = RATES["cuda" if device == "cuda" else "cpu"]
    ingest, gen, cal, depth, train = (configs[s] for s in ("ingest", "generate", "calibrate", "depth", "train"))
    w, h = ingest.width, ingest.height
    pixels, size = w * h, f"{w}x{h}"
    frames = articulated_tree(configs["trajectory"]).num_distinct_frames
    out: dict[str, StageEstimate] = {}

    rate = rates.get(f"generate.{gen.backend}")
    out["generate"] = StageEstimate("generate", f"{gen.backend}, {frames} frames at {size}",
                                    _seconds(rate, pixels * frames))
    rate = rates.get(f"calibrate.{cal.backend}")
    out["calibrate"] = StageEstimate("calibrate", f"{cal.backend}, {frames} frames",
                                     _seconds(rate, pixels * frames))
    rate = rates.get(f"depth.{depth.backend}")
    units = frames if depth.backend == "depth_anything_v2" else pixels * frames
    out["depth"] = StageEstimate("depth", f"{depth.backend}, {frames} frames", _seconds(rate, units))

    sched = train.schedule
    batch = max(1, sched.batch_size) / 2  # the rates were measured at batch 2
    steps = sched.coarse_iterations + sched.fine_iterations
    if train.distortion and "train.distortion.fine" in rates:
        seconds = (rates["train.distortion.coarse"].seconds(sched.coarse_iterations * batch)
                   + rates["train.distortion.fine"].seconds(sched.fine_iterations * batch))
    else:
        rate = rates["train.distortion" if train.distortion else "train.plain"]
        seconds = steps * rate.seconds(pixels * batch)
    kind = "distortion-aware" if train.distortion else "plain 3DGS"
    out["train"] = StageEstimate("train", f"{kind}, {steps:,} steps at {size}", seconds)

    views = configs["export"].preview_views
    out["export"] = StageEstimate("export", f"PLY and {views} preview renders", rates["render"].seconds(pixels * views))
    ev = configs["evaluate"]
    out["evaluate"] = StageEstimate("evaluate", f"{ev.views + ev.train_views} renders",
                                    rates["render"].seconds(pixels * (ev.views + ev.train_views)))
    chosen = stages if stages is not None else tuple(out)
    return [out[s] for s in chosen if s in out]


def _seconds(rate: Rate | None, units: float) -> float | None:
    return None if rate is None else rate.seconds(units)


def total_seconds(estimates: list[StageEstimate]) -> float | None:
    """The sum, or None if any stage's cost is unknown."""
    if any(e.seconds is None for e in estimates):
        return None
    return sum(e.seconds for e in estimates)
