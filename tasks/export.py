"""export: the canonical Gaussians as a 3DGS PLY and a strip of preview renders."""

import json
from pathlib import Path

from PIL import Image
from prefect import task
from prefect.cache_policies import NO_CACHE

from lift3d_core.calibrate.contract import Similarity
from lift3d_core.export import image_strip, ply_bytes, preview_indices, render_views
from lift3d_core.train import gaussians_from_arrays
from tasks.common import RunContext, StageResult, cached_stage


@task(name="export", cache_policy=NO_CACHE)
def export(ctx: RunContext) -> StageResult:
    def compute():
        gaussians = gaussians_from_arrays(ctx.arrays("train", "gaussians/"))
        cal = ctx.arrays("calibrate", "c2w", "K")
        h, w = ctx.read("calibrate").zarr_array("depth").shape[1:]
        idx = preview_indices(len(cal["c2w"]), ctx.config("export").preview_views)
        previews = render_views(gaussians, cal["c2w"][idx], cal["K"][idx], w, h, ctx.config("export").backend)
        return {"ply": ply_bytes(gaussians), "previews": previews}, {"preview_frames": idx.tolist()}

    result = cached_stage(ctx, "export", compute)
    arrays = ctx.read("export").arrays
    ply, preview = ctx.run_dir / "scene.ply", ctx.run_dir / "preview.png"
    _write_atomic(ply, arrays["ply"].tobytes())
    Image.fromarray(image_strip(arrays["previews"])).save(preview)
    # the PLY is in the calibrated frame; this similarity puts it in the commanded cameras' frame
    sim = Similarity.from_arrays(ctx.arrays("calibrate", "to_commanded/"))
    frame = ctx.run_dir / "scene_to_commanded.json"
    _write_atomic(frame, json.dumps({"x_commanded": "scale * R @ x_ply + t", "scale": sim.scale,
                                     "R": sim.R.tolist(), "t": sim.t.tolist()}, indent=1).encode())
    result.outputs.update({"ply": str(ply), "preview": str(preview), "scene_to_commanded": str(frame)})
    return result


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
