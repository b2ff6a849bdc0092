"""trajectory: the articulated camera tree (params only), with a plot of it in the run folder.

The plot is drawn once per trajectory key (kept under ``.lift3d/plots``) and copied into later runs' folders:
matplotlib costs seconds, which a run that only changes training should not pay.
"""

import os
import shutil
import threading
from pathlib import Path

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
    plot = ctx.run_dir / "trajectory.png"
    cached = Path(ctx.state_dir) / "plots" / f"trajectory-{result.key[:24]}.png"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}-{threading.get_ident()}.png")  # threads of a batch share a pid
        plot_tree(CameraTree.from_dict(ctx.read("trajectory").attrs["tree"]), tmp)
        os.replace(tmp, cached)
    plot.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, plot)
    result.outputs["trajectory_plot"] = str(plot)
    return result
