"""generate: render the camera tree's clips from the input image (the GPU-heavy stage)."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.generate import generate as generate_video
from lift3d_core.trajectory import CameraTree
from tasks.common import RunContext, StageResult, cached_stage
from tasks.progress import stage_progress


@task(name="generate", cache_policy=NO_CACHE)
def generate(ctx: RunContext) -> StageResult:
    def compute():
        image = ctx.read("ingest").array("image")
        tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
        with stage_progress("generate", tree.num_distinct_frames) as advance:
            video = generate_video(image, tree, ctx.config("generate"), progress=advance)
        arrays = {"frames": video.frames, "K": video.K}
        if video.depth_hint is not None:
            arrays["depth_hint"] = video.depth_hint
        arrays.update({f"ground_truth/{k}": v for k, v in video.ground_truth.items()})
        return arrays, {"clip_ids": [c.clip_id for c in tree.clips]}

    return cached_stage(ctx, "generate", compute)
