"""train: canonical Gaussians (plus the distortion field) from the calibrated frames."""

from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.generate import distinct_frames
from lift3d_core.splat.checkpoint import TrainCheckpoint
from lift3d_core.train import train_scene
from lift3d_core.trajectory import CameraTree
from tasks.common import RunContext, StageResult, cached_stage


@task(name="train", cache_policy=NO_CACHE)
def train(ctx: RunContext) -> StageResult:
    key = ctx.plan["train"].key
    # a killed run of this key resumes from its last checkpoint (written every 2 minutes of training)
    checkpoint = TrainCheckpoint(Path(ctx.state_dir) / "checkpoints" / f"train-{key}.pt", key=key)

    def compute():
        cal = ctx.arrays("calibrate", "points", "colors", "c2w", "K")
        depth = ctx.arrays("depth", "inv_depth", "valid")
        tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
        per_clip = (len(tree.clips), -1)
        psnr_curve: list[tuple[int, float]] = []  # the training batch's PSNR every log_every steps, for the report
        result = train_scene(
            points=cal["points"], colors=cal["colors"],
            frames=distinct_frames(tree, ctx.read("generate").array("frames")),
            c2w=cal["c2w"], K=cal["K"],
            frame_codes=distinct_frames(tree, tree.frame_codes().reshape(*per_clip, 2)),
            inv_depth=depth["inv_depth"], depth_valid=depth["valid"],
            cfg=ctx.config("train"), progress=True,
            callback=lambda step, metrics: psnr_curve.append((int(step), float(metrics["psnr"]))),
            checkpoint=checkpoint,
        )
        return result.to_arrays(), {**result.attrs(), "psnr_curve": psnr_curve}

    result = cached_stage(ctx, "train", compute)
    checkpoint.remove()  # the artifact is stored: nothing left to resume
    if checkpoint.resumed_step is not None:
        result.reason.append(f"resumed from a checkpoint at step {checkpoint.resumed_step}")
    artifact = ctx.read("train")
    curve = artifact.array("loss_curve")
    result.metrics["num_gaussians"] = float(artifact.zarr_array("gaussians/means").shape[0])
    result.curves["train.loss"] = [(int(s), float(v)) for s, v in curve]
    if "psnr_curve" in artifact.attrs:
        result.curves["train.psnr"] = [(int(s), float(v)) for s, v in artifact.attrs["psnr_curve"]]
    np.savetxt(ctx.run_dir / "loss_curve.csv", curve, delimiter=",", header="step,loss", comments="")
    result.outputs["loss_curve"] = str(ctx.run_dir / "loss_curve.csv")
    return result
