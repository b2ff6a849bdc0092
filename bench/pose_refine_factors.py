"""What pose refinement recovers of COLMAP's camera error: training on COLMAP's cameras with the *true* points.

The demo profile on the level-1 tree (128x96, no distortion) through library calls: generation and both
calibrations come from (or go to) the store ``--store``; then distortion-aware training (params.yaml's recipe at the
demo's schedule) on COLMAP's cameras, its points replaced by the commanded calibration's (the true geometry, moved
into COLMAP's frame by the calibration's similarity), with ``train.pose_refine`` off and on; held-out PSNR as the
evaluate stage computes it (each held-out camera placed by its 12 nearest training cameras, refined when refined).

``--cameras commanded`` trains on the commanded calibration's cameras instead (its frame; evaluated as the commanded
backend is), and ``--points`` picks the cloud, so that the points' cost is measured without the cameras':

* ``true``: the commanded calibration's cloud (the generator's depth of every pixel, subsampled);
* ``true_at_colmap``: the generator's depth only at the pixels where COLMAP's dense depth has one (its holes, no
  noise), fused as the calibrations fuse;
* ``colmap_depth``: COLMAP's dense depth per pixel (its holes and its noise, in commanded units by the similarity's
  scale) unprojected through the *true* cameras, so the cameras' errors do not move the points;
* ``colmap``: COLMAP's fused cloud moved by the similarity (what the COLMAP backend hands training);
* ``colmap_tail`` / ``colmap_body``: as ``colmap_depth`` where COLMAP's depth is more / less than ``TAIL`` off the
  truth, the true depth at its other pixels: what the wrong tail and the rest of its depths each cost;
* ``colmap_no_floaters``: as ``colmap_depth`` without the pixels more than ``2 TAIL`` nearer than the truth (told
  by the truth): what the floaters cost when they are dropped rather than corrected; ``colmap_fixed_floaters``: the
  same pixels given the true depth instead.

    python bench/pose_refine_factors.py --preset room --store /tmp/pr/store --out bench/results/pose_refine_factors.json
    python bench/pose_refine_factors.py --preset tabletop --cameras commanded --points colmap --variants off ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.lift import make_context, run_stages  # noqa: E402
from flows.settings import DEMO_OVERRIDES  # noqa: E402
from lift3d_core.calibrate.contract import Similarity  # noqa: E402
from lift3d_core.calibrate.fusion import fuse_depth  # noqa: E402
from lift3d_core.config import apply_overrides  # noqa: E402
from lift3d_core.evaluate import evaluate_synthetic, heldout_views, pose_report  # noqa: E402
from lift3d_core.generate import distinct_frames, synthetic_scene_config  # noqa: E402
from lift3d_core.pipeline import stage_configs  # noqa: E402
from lift3d_core.train import TrainStageConfig, train_scene, training_cameras  # noqa: E402
from lift3d_core.trajectory import CameraTree  # noqa: E402

SOURCE = "skimage:astronaut"
TAIL = 0.05  # relative depth error beyond which a COLMAP depth counts as the tail (bench/colmap_points.py's outlier)


def upstream(params: dict, store: str, backend: str) -> dict:
    """Arrays of generate, calibrate and the tree for ``calibrate.backend=backend`` (computed or store hits)."""
    p = apply_overrides(params, [f"calibrate.backend={backend}"])
    ctx = make_context(SOURCE, p, f"factors_{backend}", store, str(ROOT / ".lift3d"), str(ROOT / "data" / "runs"))
    run_stages(ctx, until="depth", use_prefect=False)
    tree = CameraTree.from_dict(ctx.read("trajectory").attrs["tree"])
    return {"ctx": ctx, "tree": tree, "params": p,
            "frames": distinct_frames(tree, ctx.read("generate").array("frames")),
            "cal": ctx.arrays("calibrate", "c2w", "K", "points", "colors", "registered", "to_commanded/")}


def cloud(kind: str, colmap: dict, commanded: dict, to_cmd_c: Similarity, to_cmd_t: Similarity):
    """``(points float64 [P, 3], colors uint8 [P, 3])`` in the commanded frame for ``--points kind``."""
    cal_c, cal_t = colmap["cal"], commanded["cal"]
    if kind == "true":
        return to_cmd_t.apply_points(cal_t["points"].astype(np.float64)), cal_t["colors"]
    if kind == "colmap":
        return to_cmd_c.apply_points(cal_c["points"].astype(np.float64)), cal_c["colors"]
    cfg = stage_configs(colmap["params"])["calibrate"]
    depth_c = colmap["ctx"].arrays("calibrate", "depth")["depth"].astype(np.float64)
    true_depth = commanded["ctx"].arrays("calibrate", "depth")["depth"].astype(np.float64)  # commanded normalised
    depth = depth_c * (to_cmd_c.scale / to_cmd_t.scale)  # COLMAP's, in the commanded calibration's units
    if kind == "true_at_colmap":
        depth = np.where(depth_c > 0, true_depth, 0.0)
    elif kind in ("colmap_no_floaters", "colmap_fixed_floaters"):
        floater = depth < (1.0 - 2 * TAIL) * true_depth
        depth = np.where(floater, 0.0 if kind == "colmap_no_floaters" else true_depth, depth)
    elif kind in ("colmap_tail", "colmap_body"):
        tail = np.abs(depth / np.where(true_depth > 0, true_depth, np.inf) - 1.0) > TAIL
        depth = np.where(depth_c > 0, np.where(tail == (kind == "colmap_tail"), depth, true_depth), 0.0)
    points, colors = fuse_depth(colmap["frames"], depth, cal_t["c2w"], cal_t["K"], cfg.max_points, cfg.seed)
    return to_cmd_t.apply_points(points), colors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="room")
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="off,on")
    ap.add_argument("--cameras", default="colmap", choices=("colmap", "commanded"))
    ap.add_argument("--points", default="true", choices=("true", "true_at_colmap", "colmap_depth", "colmap", "colmap_tail", "colmap_body",
                                                     "colmap_no_floaters", "colmap_fixed_floaters"))
    ap.add_argument("--renders", default="", help="save the held-out renders and targets here (.npz per variant)")
    args = ap.parse_args()
    params = apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()),
                             [*DEMO_OVERRIDES, "trajectory.levels=1", "generate.synthetic.distortion=0",
                              f"generate.synthetic.preset={args.preset}"])
    colmap, commanded = upstream(params, args.store, "colmap"), upstream(params, args.store, "commanded")
    tree, frames = colmap["tree"], colmap["frames"]
    to_cmd_c, to_cmd_t = Similarity.from_arrays(colmap["cal"]), Similarity.from_arrays(commanded["cal"])
    train_side = colmap if args.cameras == "colmap" else commanded
    cal, to_cmd = train_side["cal"], Similarity.from_arrays(train_side["cal"])
    points, colors = cloud(args.points, colmap, commanded, to_cmd_c, to_cmd_t)  # commanded frame
    points = to_cmd.inverse().apply_points(points).astype(np.float32)  # -> the training cameras' frame
    configs = stage_configs(colmap["params"])
    ev_cfg = configs["evaluate"]
    image = colmap["ctx"].read("ingest").array("image")
    c2w_held, targets = heldout_views(image, tree, synthetic_scene_config(image.shape[:2], configs["generate"]), ev_cfg)
    codes = distinct_frames(tree, tree.frame_codes().reshape(len(tree.clips), -1, 2))
    registered = cal["registered"].astype(bool)
    out = Path(args.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    for variant in args.variants.split(","):
        cfg = TrainStageConfig.from_params({**colmap["params"]["train"], "pose_refine": variant == "on"})
        t0 = time.time()
        scene = train_scene(points, colors, frames, cal["c2w"], cal["K"], codes, None, cfg)
        c2w_train = training_cameras({} if scene.c2w_refined is None else {"c2w_refined": scene.c2w_refined},
                                     cal["c2w"])
        ev = evaluate_synthetic(scene.gaussians, c2w_held, targets, to_cmd, cal["K"][0], ev_cfg,
                                c2w_calibrated=c2w_train, c2w_commanded=tree.distinct_c2w(), registered=registered)
        row = {"preset": args.preset, "cameras": args.cameras, "points": args.points, "num_points": len(points),
               "pose_refine": variant == "on", **ev.metrics,
               "pose": pose_report(cal["c2w"], tree.distinct_c2w(), registered),
               "pose_refined": pose_report(c2w_train, tree.distinct_c2w(), registered),
               "train_s": round(time.time() - t0, 1), "load": round(os.getloadavg()[0], 2), "date": "2026-12-07",
               "device": "2-core dev CPU shared with other agents, OMP_NUM_THREADS=1",
               "command": f"python bench/pose_refine_factors.py --preset {args.preset} --store S --out F "
                          f"--variants {variant} --cameras {args.cameras} --points {args.points}"}
        if args.renders:
            np.savez_compressed(f"{args.renders}_{args.cameras}_{args.points}_{variant}.npz",
                                renders=np.asarray(ev.renders), targets=np.asarray(ev.targets))
        rows.append(row)
        out.write_text(json.dumps(rows, indent=1))
        print(json.dumps({k: row[k] for k in ("preset", "cameras", "points", "pose_refine", "psnr", "train_s")}),
              flush=True)


if __name__ == "__main__":
    main()
