"""depth: per-frame inverse-depth targets, and where they hold, that supervise training."""

import math

from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.calibrate import confidence_weight
from lift3d_core.depth import estimate_inverse_depth
from lift3d_core.generate import distinct_frames
from lift3d_core.trajectory import CameraTree
from tasks.common import RunContext, StageResult, cached_stage
from tasks.progress import stage_progress


@task(name="depth", cache_policy=NO_CACHE)
def depth(ctx: RunContext) -> StageResult:
    seconds: dict[str, float] = {}

    def compute():
        tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
        frames = distinct_frames(tree, ctx.read("generate").array("frames"))
        cal = ctx.arrays("calibrate", "depth", "confidence")
        # every backend's confidence as a weight in [0, 1] (MASt3R's lies in [1, inf)), so min_confidence means
        # the same whichever calibration ran
        weight = confidence_weight(cal["confidence"], ctx.config("calibrate").backend)
        with stage_progress("depth", len(frames)) as advance:
            est = estimate_inverse_depth(frames, cal["depth"], ctx.config("depth"), confidence=weight, progress=advance)
        seconds.update(est.seconds)
        return est.to_arrays(), est.stats

    result = cached_stage(ctx, "depth", compute)
    result.metrics.update({f"depth.{k}": v for k, v in ctx.read("depth").attrs.items()
                           if isinstance(v, (int, float)) and math.isfinite(v)})
    result.metrics.update({f"depth.seconds_{k}": v for k, v in seconds.items()})
    return result
