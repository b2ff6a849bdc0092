"""calibrate: cameras, depth and the fused, normalised point cloud of the distinct generated frames."""

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.calibrate import FrameLayout
from lift3d_core.calibrate import calibrate as calibrate_frames
from lift3d_core.generate import distinct_frames
from lift3d_core.trajectory import CameraTree
from tasks.common import RunContext, StageResult, cached_stage
from tasks.progress import stage_progress


@task(name="calibrate", cache_policy=NO_CACHE)
def calibrate(ctx: RunContext) -> StageResult:
    def compute():
        video = ctx.read("generate").arrays
        tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
        hint = video.get("depth_hint")
        frames = distinct_frames(tree, video["frames"])
        with stage_progress("calibrate", len(frames)) as advance:
            cal = calibrate_frames(
                frames,
                tree.distinct_c2w(),
                video["K"],
                ctx.config("calibrate"),
                layout=FrameLayout.from_tree(tree),
                depth_hint=None if hint is None else distinct_frames(tree, hint),
                progress=advance,
            )
        arrays = {k: getattr(cal, k) for k in ("c2w", "K", "depth", "confidence", "points", "colors", "center")}
        arrays.update(cal.to_commanded.to_arrays())
        arrays["registered"] = cal.registered.astype(np.uint8)
        attrs = {"scale": cal.scale, "num_points": int(cal.points.shape[0]), "backend": ctx.config("calibrate").backend,
                 **cal.info}
        return arrays, attrs

    result = cached_stage(ctx, "calibrate", compute)
    attrs = ctx.read("calibrate").attrs
    result.metrics["calibrate.registered_fraction"] = 1.0 - len(attrs.get("unregistered", [])) / max(
        1, ctx.read("calibrate").zarr_array("c2w").shape[0])
    return result
