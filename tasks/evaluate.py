"""evaluate: held-out PSNR/SSIM against ground truth when the generator knows it.

The ground truth depends on generation, not on training: it is stored under its own key (``heldout``), so a run
that only retrains renders the new Gaussians and nothing else.
"""

import numpy as np
from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.evaluate import evaluate_synthetic, fit_to_frames, heldout_views
from lift3d_core.export import image_strip
from lift3d_core.generate import distinct_frames, synthetic_scene_config
from lift3d_core.train import gaussians_from_arrays
from lift3d_core.trajectory import CameraTree
from tasks.common import RunContext, StageResult, cached_arrays, cached_stage


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(ctx: RunContext) -> StageResult:
    cfg, gen = ctx.config("evaluate"), ctx.config("generate")

    def ground_truth(tree: CameraTree) -> dict[str, np.ndarray]:
        image = ctx.read("ingest").array("image")
        c2w, targets = heldout_views(image, tree, synthetic_scene_config(image.shape[:2], gen), cfg)
        return {"c2w": c2w, "targets": targets}

    def compute():
        gaussians = gaussians_from_arrays(ctx.arrays("train", "gaussians/"))
        cal = ctx.arrays("calibrate", "c2w", "K", "center")
        tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
        frames = distinct_frames(tree, ctx.read("generate").array("frames"))
        metrics = fit_to_frames(gaussians, frames, cal["c2w"], cal["K"], cfg)
        arrays = {}
        if gen.backend == "synthetic":
            truth = cached_arrays(ctx, "evaluate", "heldout", {"views": cfg.views, "seed": cfg.seed}, ("generate",),
                                  lambda: ground_truth(tree))
            ev = evaluate_synthetic(gaussians, truth["c2w"], truth["targets"], cal["center"],
                                    float(ctx.read("calibrate").attrs["scale"]), cal["K"][0], cfg)
            metrics.update(ev.metrics)
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
    return result
