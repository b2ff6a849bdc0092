"""How COLMAP's fused cloud differs from the true one: holes, noise or outliers.

The demo profile on the level-1 tree (128x96, no distortion) through library calls, generation and both
calibrations from (or into) the store ``--store`` (as ``bench/pose_refine_factors.py``). Everything is compared in the
commanded frame, COLMAP's arrays moved there by the calibration's similarity:

* per frame, COLMAP's dense depth against the generator's true depth at the same pixel (the commanded
  calibration's): coverage (share of pixels with a depth), relative depth error |d - d_true| / d_true (median, 90th
  percentile, share of outliers above ``--outlier``, share more than twice that nearer than the truth: floaters);
* the fused clouds: accuracy (each COLMAP point's distance to the nearest point of the *dense* true cloud, every
  pixel of every frame unprojected, in units of the true cloud's extent: largest |coordinate| about its mean),
  completeness (share of the true fused points with a COLMAP point within ``--tolerance`` extents).

``--variant section.key=value[;...]`` (repeatable) re-runs only the COLMAP backend's dense depth with those settings
of ``calibrate.colmap`` on the same sparse model (structure from motion once per preset, cached under ``--store``)
and reports the same numbers; ``--variant base`` is the setting as it stands. Every variant after ``base`` also says
what became of base's floaters (its pixels more than twice ``--outlier`` nearer than the truth): the shares of them
now within that bound of the truth (corrected), without depth (dropped) and still floaters. ``--why`` says why the plane sweep's pixels are empty.
``--train`` also trains each variant's calibration as the train stage does (COLMAP's cameras, pose refinement on) and
reports the evaluate stage's held-out PSNR: variants compared on one sparse model, without the SfM's run-to-run
spread. ``--skip-stored`` leaves out the stored COLMAP calibration (whose key a code change would move, re-running SfM).

    python bench/colmap_points.py --preset room --store /tmp/cpoints/store --out bench/results/colmap_points.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pose_refine_factors import upstream  # noqa: E402

from flows.settings import DEMO_OVERRIDES  # noqa: E402
from lift3d_core.calibrate import FrameLayout  # noqa: E402
from lift3d_core.calibrate.contract import Similarity  # noqa: E402
from lift3d_core.calibrate.fusion import fuse_depth  # noqa: E402
from lift3d_core.camera import unproject_depth  # noqa: E402
from lift3d_core.config import apply_overrides  # noqa: E402
from lift3d_core.pipeline import stage_configs  # noqa: E402


def depth_stats(depth: np.ndarray, true: np.ndarray, outlier: float) -> dict:
    """Coverage and relative error of ``depth [F, H, W]`` (0: none) against ``true [F, H, W]`` (same units)."""
    has = depth > 0
    ratio = depth[has] / true[has]
    rel = np.abs(ratio - 1.0)
    per_frame = has.reshape(len(has), -1).mean(1)
    return {"coverage": round(float(has.mean()), 4), "coverage_min_frame": round(float(per_frame.min()), 4),
            "coverage_max_frame": round(float(per_frame.max()), 4),
            "ratio_median": round(float(np.median(ratio)), 5),
            "rel_err_median": round(float(np.median(rel)), 5), "rel_err_p90": round(float(np.quantile(rel, 0.9)), 5),
            "outlier_share": round(float((rel > outlier).mean()), 4),
            # floaters: more than twice the outlier bound nearer than the surface (a foreground depth on the background)
            "too_near_share": round(float((ratio < 1.0 - 2 * outlier).mean()), 4)}


def floater_fate(depth: np.ndarray, base: np.ndarray, true: np.ndarray, outlier: float) -> dict:
    """What became of ``base``'s floaters (more than ``2 outlier`` nearer than ``true``) in ``depth`` (all ``[F, H,
    W]``, 0: none): shares of them corrected (within ``2 outlier`` of the truth), dropped (no depth), still floaters;
    and of the pixels without depth in ``base``, the share given one within ``2 outlier``."""
    bound = 2 * outlier
    ratio = depth / np.where(true > 0, true, np.inf)
    floaters = (base > 0) & (base < (1.0 - bound) * true)
    empty = base <= 0
    has = depth > 0
    right = has & (np.abs(ratio - 1.0) < bound)

    def share(mask: np.ndarray, of: np.ndarray) -> float | None:  # None where there is nothing to take a share of
        return round(float(mask[of].mean()), 4) if of.any() else None

    return {"base_floaters": int(floaters.sum()),
            "floaters_corrected": share(right, floaters),
            "floaters_dropped": share(~has, floaters),
            "floaters_still": share(has & (ratio < 1.0 - bound), floaters),
            "base_right_kept": share(right, (base > 0) & (np.abs(base / np.where(true > 0, true, np.inf) - 1.0) < bound)),
            "empty_now_right": share(right, empty)}


def cloud_stats(points: np.ndarray, true_dense: np.ndarray, true_fused: np.ndarray, extent: float,
                tolerance: float) -> dict:
    from scipy.spatial import cKDTree

    acc = cKDTree(true_dense).query(points)[0] / extent
    comp = cKDTree(points).query(true_fused)[0] / extent
    return {"points": len(points), "accuracy_median": round(float(np.median(acc)), 5),
            "accuracy_p90": round(float(np.quantile(acc, 0.9)), 5),
            "accuracy_far_share": round(float((acc > 10 * tolerance).mean()), 4),
            "completeness": round(float((comp <= tolerance).mean()), 4),
            "completeness_gap_p90": round(float(np.quantile(comp, 0.9)), 5)}


def sparse_model(colmap: dict, store: str, preset: str):
    """COLMAP's sparse model of the run's frames (cached in ``store``/colmap_points_sfm_<preset>.pkl); ``colmap``:
    an :func:`upstream` dict (its generation and tree) whose ``params`` say ``calibrate.backend: colmap``."""
    from lift3d_core.calibrate.colmap.pairs import pair_graph
    from lift3d_core.calibrate.colmap.sfm import run_sfm
    from lift3d_core.trajectory import CameraTree

    path = Path(store) / f"colmap_points_sfm_{preset}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    cfg = stage_configs(colmap["params"])["calibrate"]
    tree: CameraTree = colmap["tree"]
    K = colmap["ctx"].read("generate").array("K")
    K0 = np.asarray(K, np.float64).reshape(-1, 3, 3)[0]
    pairs = pair_graph(FrameLayout.from_tree(tree), tree.distinct_c2w(), cfg.colmap)
    model = run_sfm(colmap["frames"], K0, pairs, cfg.colmap, cfg.seed)
    path.write_bytes(pickle.dumps(model))
    return model


def hole_reasons(model, frames: np.ndarray, true_depth: np.ndarray, cfg) -> dict:
    """Why plane-sweep pixels are empty, as shares of all pixels: untextured window, correlation under
    ``min_confidence``, no source agreeing; with the median relative error of the rejected depths (against the truth,
    COLMAP's scale taken from the kept pixels' median ratio)."""
    import torch

    from lift3d_core.calibrate.colmap.densify import sparse_depth_ranges
    from lift3d_core.calibrate.colmap.mvs import _MIN_STD, _box, _grey, consistent_views, plane_sweep, select_sources

    n, H, W = frames.shape[:3]
    src = select_sources(model.c2w, model.points, model.observations, model.registered, cfg.mvs_sources,
                         cfg.mvs_min_angle)
    ranges = sparse_depth_ranges(model)
    grey = _grey(frames, "cpu")
    depth, ncc = torch.zeros((n, H, W)), torch.full((n, H, W), -1.0)
    masks = {k: np.zeros((n, H, W), bool) for k in ("untextured", "low_correlation", "inconsistent", "kept")}
    with torch.no_grad():
        for f in range(n):
            if src[f] and ranges[f] is not None:
                depth[f], ncc[f] = plane_sweep(grey, f, src[f], model.c2w, model.K, ranges[f], cfg.mvs_planes,
                                               cfg.mvs_window)
        for f in range(n):
            agree = consistent_views(depth, f, src[f], model.c2w, model.K, cfg.mvs_depth_tolerance)[0].numpy()
            mu = _box(grey[f][None], cfg.mvs_window)
            untex = ((_box((grey[f] ** 2)[None], cfg.mvs_window) - mu**2)[0] <= _MIN_STD**2).numpy()
            low = ~untex & (ncc[f].numpy() < cfg.min_confidence)
            masks["untextured"][f], masks["low_correlation"][f] = untex, low
            masks["inconsistent"][f] = ~untex & ~low & (agree < 1)
            masks["kept"][f] = ~untex & ~low & (agree >= 1)
    ratio = depth.numpy() / np.where(true_depth > 0, true_depth, np.inf)
    scale = np.median(ratio[masks["kept"]])
    out = {}
    for k, m in masks.items():
        out[f"share_{k}"] = round(float(m.mean()), 4)
        if k != "untextured":
            out[f"rel_err_median_{k}"] = round(float(np.median(np.abs(ratio[m] / scale - 1.0))), 4)
    return out


def train_and_evaluate(cal, colmap: dict, frames: np.ndarray, seed: int | None) -> dict:
    """Train on the calibration ``cal`` as the train stage does (params.yaml's recipe, ``pose_refine`` resolved for
    the colmap backend) and evaluate as the evaluate stage does: held-out PSNR and pose errors."""
    from lift3d_core.evaluate import evaluate_synthetic, heldout_views, pose_report
    from lift3d_core.generate import distinct_frames, synthetic_scene_config
    from lift3d_core.train import train_scene, training_cameras

    configs = stage_configs(colmap["params"] if seed is None else
                            apply_overrides(colmap["params"], [f"train.seed={seed}"]))
    tree = colmap["tree"]
    image = colmap["ctx"].read("ingest").array("image")
    c2w_held, targets = heldout_views(image, tree, synthetic_scene_config(image.shape[:2], configs["generate"]),
                                      configs["evaluate"])
    codes = distinct_frames(tree, tree.frame_codes().reshape(len(tree.clips), -1, 2))
    t0 = time.time()
    scene = train_scene(cal.points, cal.colors, frames, cal.c2w, cal.K, codes, None, configs["train"])
    c2w_train = training_cameras({} if scene.c2w_refined is None else {"c2w_refined": scene.c2w_refined}, cal.c2w)
    ev = evaluate_synthetic(scene.gaussians, c2w_held, targets, cal.to_commanded, cal.K[0], configs["evaluate"],
                            c2w_calibrated=c2w_train, c2w_commanded=tree.distinct_c2w(), registered=cal.registered)
    return {**ev.metrics, "pose_refine": scene.c2w_refined is not None, "train_seed": seed,
            **pose_report(cal.c2w, tree.distinct_c2w(), cal.registered),
            **{k.replace("pose.", "pose_refined."): v
               for k, v in pose_report(c2w_train, tree.distinct_c2w(), cal.registered).items()},
            "train_s": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="room")
    ap.add_argument("--store", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tolerance", type=float, default=0.025, help="completeness radius, extents")
    ap.add_argument("--outlier", type=float, default=0.05, help="relative depth error that makes an outlier")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--why", action="store_true", help="also say why plane-sweep pixels are empty")
    ap.add_argument("--skip-stored", action="store_true",
                    help="only the variants (the sparse model's cache), not the stored COLMAP calibration")
    ap.add_argument("--train", action="store_true",
                    help="also train each variant's calibration (COLMAP's cameras, pose refinement as params.yaml) "
                         "and report its held-out PSNR")
    ap.add_argument("--train-seed", type=int, default=None)
    args = ap.parse_args()
    params = apply_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()),
                             [*DEMO_OVERRIDES, "trajectory.levels=1", "generate.synthetic.distortion=0",
                              f"generate.synthetic.preset={args.preset}"])
    commanded = upstream(params, args.store, "commanded")
    # --skip-stored: no COLMAP calibration through the store (a code change to its key would re-run SfM)
    colmap = ({**commanded, "params": apply_overrides(params, ["calibrate.backend=colmap"])} if args.skip_stored
              else upstream(params, args.store, "colmap"))
    frames = commanded["frames"]
    n = len(frames)
    cal_t = commanded["ctx"].arrays("calibrate", "depth")
    to_cmd_t = Similarity.from_arrays(commanded["cal"])
    true_depth = cal_t["depth"].astype(np.float64) * to_cmd_t.scale  # commanded units
    # the dense true cloud: every pixel of every frame, commanded frame
    c2w_t = to_cmd_t.apply_c2w(commanded["cal"]["c2w"])
    true_dense = np.concatenate([unproject_depth(true_depth[f], c2w_t[f], commanded["cal"]["K"][f])[true_depth[f] > 0]
                                 for f in range(n)])
    true_fused = to_cmd_t.apply_points(commanded["cal"]["points"].astype(np.float64))
    extent = float(np.abs(true_fused - true_fused.mean(0)).max())
    rows = []

    def report(name: str, depth_cmd_units: np.ndarray, points_cmd: np.ndarray) -> None:
        row = {"preset": args.preset, "variant": name, **depth_stats(depth_cmd_units, true_depth, args.outlier),
               **cloud_stats(points_cmd, true_dense, true_fused, extent, args.tolerance)}
        rows.append(row)
        print(json.dumps(row), flush=True)

    if not args.skip_stored:  # the stored calibration (what training saw)
        cal_c = colmap["ctx"].arrays("calibrate", "depth", "confidence")
        to_cmd_c = Similarity.from_arrays(colmap["cal"])
        report("stored", cal_c["depth"].astype(np.float64) * to_cmd_c.scale,
               to_cmd_c.apply_points(colmap["cal"]["points"].astype(np.float64)))
    # another subsample of the true depth: the floor of the cloud measures (a uniform subsample's spacing)
    report("true, another subsample (floor)", true_depth,
           fuse_depth(frames, true_depth, c2w_t, commanded["cal"]["K"], len(true_fused), 12345)[0])
    if args.why:
        cfg = stage_configs(colmap["params"])["calibrate"]
        reasons = hole_reasons(sparse_model(colmap, args.store, args.preset), frames, true_depth / to_cmd_t.scale,
                               cfg.colmap)
        rows.append({"preset": args.preset, "variant": "why pixels are empty (mvs, as it stands)", **reasons})
        print(json.dumps(rows[-1]), flush=True)
    if args.variant:
        from lift3d_core.calibrate.colmap import calibrate_from_model

        cfg = stage_configs(colmap["params"])["calibrate"]
        t0 = time.time()
        model = sparse_model(colmap, args.store, args.preset)
        print(f"sparse model: {time.time() - t0:.0f} s", flush=True)
        c2w_cmd = colmap["tree"].distinct_c2w()
        base_depth = None
        for variant in args.variant:
            sets = [] if variant == "base" else variant.split(";")
            section = replace(cfg.colmap, **{k.split(".")[-1]: yaml.safe_load(v)
                                             for k, v in (s.split("=", 1) for s in sets)})
            t0 = time.time()
            cal = calibrate_from_model(model, frames, c2w_cmd, replace(cfg, colmap=section))
            seconds = time.time() - t0
            depth_cmd = cal.depth.astype(np.float64) * cal.to_commanded.scale
            report(variant, depth_cmd, cal.to_commanded.apply_points(cal.points.astype(np.float64)))
            rows[-1]["dense_s"] = round(seconds, 1)
            if variant == "base":
                base_depth = depth_cmd
            elif base_depth is not None:
                rows[-1].update(floater_fate(depth_cmd, base_depth, true_depth, args.outlier))
                print(json.dumps({k: rows[-1][k] for k in rows[-1] if k.startswith(("floaters_", "base_", "empty_"))}),
                      flush=True)
            if args.train:
                rows[-1].update(train_and_evaluate(cal, colmap, frames, args.train_seed))
                print(json.dumps({k: rows[-1][k] for k in ("variant", "psnr", "train_s")}), flush=True)
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else []
    stamp = {"date": "2026-12-07", "device": "2-core dev CPU shared with other agents, OMP_NUM_THREADS=1",
             "load": round(os.getloadavg()[0], 2), "tolerance": args.tolerance, "outlier": args.outlier,
             "extent": extent, "command": "python bench/colmap_points.py --preset {} --store S --out F {}{}".format(
                 args.preset, " ".join(f"--variant '{v}'" for v in args.variant),
                 "".join(f" --{k.replace('_', '-')}" for k in ("skip_stored", "train") if getattr(args, k)) +
                 (f" --train-seed {args.train_seed}" if args.train_seed is not None else ""))}
    out.write_text(json.dumps(old + [{**r, **stamp} for r in rows], indent=1))


if __name__ == "__main__":
    main()
