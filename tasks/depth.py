"""depth: per-frame inverse-depth targets that supervise training."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.depth import estimate_inverse_depth
from lift3d_core.generate import distinct_frames
from lift3d_core.trajectory import CameraTree
from tasks.common import RunContext, StageResult, cached_stage


@task(name="depth", cache_policy=NO_CACHE)
def depth(ctx: RunContext) -> StageResult:
    def compute():
        tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
        frames = distinct_frames(tree, ctx.read("generate").array("frames"))
        inv = estimate_inverse_depth(frames, ctx.read("calibrate").array("depth"), ctx.config("depth"))
        return {"inv_depth": inv}, {"valid_fraction": float((inv > 0).mean())}

    return cached_stage(ctx, "depth", compute)
