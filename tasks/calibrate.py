"""calibrate: cameras, depth and the fused, normalised point cloud of the distinct generated frames."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.calibrate import calibrate as calibrate_frames
from lift3d_core.generate import distinct_frames
from lift3d_core.trajectory import CameraTree
from tasks.common import RunContext, StageResult, cached_stage


@task(name="calibrate", cache_policy=NO_CACHE)
def calibrate(ctx: RunContext) -> StageResult:
    def compute():
        video = ctx.read("generate").arrays
        tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
        hint = video.get("depth_hint")
        cal = calibrate_frames(
            distinct_frames(tree, video["frames"]),
            distinct_frames(tree, tree.c2w().reshape(len(tree.clips), -1, 4, 4)),
            video["K"],
            ctx.config("calibrate"),
            depth_hint=None if hint is None else distinct_frames(tree, hint),
        )
        arrays = {k: getattr(cal, k) for k in ("c2w", "K", "depth", "confidence", "points", "colors", "center")}
        return arrays, {"scale": cal.scale, "num_points": int(cal.points.shape[0])}

    return cached_stage(ctx, "calibrate", compute)
