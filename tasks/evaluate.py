"""evaluate: held-out PSNR/SSIM against ground truth when the generator knows it.

The ground truth depends on generation, not on training: it is stored under its own key (``heldout``), so a run
that only retrains renders the new Gaussians and nothing else.
"""

import numpy as np
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.calibrate.contract import Similarity
from lift3d_core.evaluate import evaluate_synthetic, fit_to_frames, heldout_views, plot_calibrated_tree, pose_report
from lift3d_core.export import image_strip
from lift3d_core.generate import distinct_frames, synthetic_scene_config
from lift3d_core.train import gaussians_from_arrays, training_cameras
from lift3d_core.trajectory import CameraTree
from tasks.common import RunContext, StageResult, cached_arrays, cached_stage


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(ctx: RunContext) -> StageResult:
    cfg, gen = ctx.config("evaluate"), ctx.config("generate")
    # only a generator that knows its scene (synthetic) stores ground truth; evaluation needs nothing else from it
    has_ground_truth = any(n.startswith("ground_truth/") for n in ctx.read("generate").names)

    def ground_truth(tree: CameraTree) -> dict[str, np.ndarray]:
        image = ctx.read("ingest").array("image")
        c2w, targets = heldout_views(image, tree, synthetic_scene_config(image.shape[:2], gen), cfg)
        return {"c2w": c2w, "targets": targets}

    def compute():
        refined = [n for n in ("c2w_refined",) if n in ctx.read("train").names]  # when pose refinement ran
        trained = ctx.arrays("train", "gaussians/", *refined)
        gaussians = gaussians_from_arrays(trained)
        cal = ctx.arrays("calibrate", "c2w", "K", "registered", "to_commanded/")
        c2w_train = training_cameras(trained, cal["c2w"])  # held-out cameras are placed among these
        tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
        frames = distinct_frames(tree, ctx.read("generate").array("frames"))
        metrics = fit_to_frames(gaussians, frames, c2w_train, cal["K"], cfg)
        arrays = {}
        if has_ground_truth:
            truth = cached_arrays(ctx, "evaluate", "heldout", {"views": cfg.views, "seed": cfg.seed}, ("generate",),
                                  lambda: ground_truth(tree))
            ev = evaluate_synthetic(gaussians, truth["c2w"], truth["targets"], Similarity.from_arrays(cal),
                                    cal["K"][0], cfg, c2w_calibrated=c2w_train, c2w_commanded=tree.distinct_c2w(),
                                    registered=cal["registered"].astype(bool))
            metrics.update(ev.metrics)
            # the generator rendered exactly the commanded cameras: they are the true ones
            metrics.update(pose_report(cal["c2w"], tree.distinct_c2w(), cal["registered"].astype(bool)))
            if "c2w_refined" in trained:  # and how far training's pose refinement took them
                refined = pose_report(c2w_train, tree.distinct_c2w(), cal["registered"].astype(bool))
                metrics.update({k.replace("pose.", "pose_refined.", 1): v for k, v in refined.items()
                                if k != "pose.registered_fraction"})
            arrays = {"renders": ev.renders, "targets": ev.targets}
        return arrays or {"none": np.zeros(0, np.uint8)}, {"metrics": metrics}

    result = cached_stage(ctx, "evaluate", compute)
    artifact = ctx.read("evaluate")
    result.metrics.update(artifact.attrs["metrics"])
    if "renders" in artifact.names:
        path = ctx.run_dir / "heldout.png"
        grid = np.concatenate([image_strip(artifact.array("targets")), image_strip(artifact.array("renders"))])
        Image.fromarray(grid).save(path)
        result.outputs["heldout"] = str(path)
    if has_ground_truth:
        cal = ctx.arrays("calibrate", "c2w", "registered", "to_commanded/")
        path = ctx.run_dir / "cameras.png"
        plot_calibrated_tree(CameraTree.from_dict(ctx.read("trajectory").attrs["tree"]),
                             Similarity.from_arrays(cal).apply_c2w(cal["c2w"]), cal["registered"].astype(bool), path)
        result.outputs["cameras"] = str(path)
    return result
