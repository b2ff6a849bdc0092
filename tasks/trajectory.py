"""trajectory: the articulated camera tree (params only), with a plot of it in the run folder."""

from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.trajectory import CameraTree, articulated_tree, plot_tree
from tasks.common import RunContext, StageResult, cached_stage


@task(name="trajectory", cache_policy=NO_CACHE)
def trajectory(ctx: RunContext) -> StageResult:
    def compute():
        tree = articulated_tree(ctx.config("trajectory"))
        return {"c2w": tree.c2w(), "frame_codes": tree.frame_codes()}, {"tree": tree.to_dict()}

    result = cached_stage(ctx, "trajectory", compute)
    tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
    plot = ctx.run_dir / "trajectory.png"
    plot_tree(tree, plot)
    result.outputs["trajectory_plot"] = str(plot)
    return result
