"""COLMAP calibration of the synthetic scene's camera tree: registration, pose errors and seconds.

Renders the distinct frames of a camera tree with the synthetic generator (one preset, one frame size, one
distortion level), runs ``calibrate.backend: colmap`` with ``allow_unregistered`` (so failures are counted and
named rather than raised) and prints registration, pose errors after the Sim(3) fit on the whole poses
(``metrics.pose_errors``: rotation from the rotations, scale and shift from the centres; translation relative to
the camera rig's RMS spread; the fit on the centres alone beside it) and the stage's seconds.
Rendered frames are cached under ``--cache`` (they depend only on the tree, the preset, the size and the
distortion), so trying COLMAP settings costs COLMAP's time alone.

    python bench/colmap_tree.py --preset room --width 128                   # the default tree, 241 frames
    python bench/colmap_tree.py --preset tabletop --levels 1 --set max_features=4096
    python bench/colmap_tree.py --preset room --distortion default --out bench/results/colmap_room_default.json

``--set KEY=VALUE`` overrides a field of ``calibrate.colmap`` (params.yaml's section is the base).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d_core.calibrate import CalibrateConfig, ColmapConfig, FrameLayout, calibrate
from lift3d_core.camera import rotation_angle
from lift3d_core.generate import GenerateConfig, SyntheticGeneratorConfig, distinct_frames, generate
from lift3d_core.image import IngestConfig, ingest_image
from lift3d_core.metrics import align_poses, pose_errors
from lift3d_core.synthetic import DISTORTION_LEVELS, PRESETS
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree

ROOT = Path(__file__).resolve().parents[1]


def params_colmap() -> ColmapConfig:
    """params.yaml's ``calibrate.colmap`` section."""
    import yaml

    section = yaml.safe_load((ROOT / "params.yaml").read_text())["calibrate"]["colmap"]
    return ColmapConfig(**section)


def parse_set(base: ColmapConfig, items: list[str]) -> ColmapConfig:
    types = {f.name: type(getattr(base, f.name)) for f in fields(base)}
    out = {}
    for item in items:
        key, value = item.split("=", 1)
        kind = types[key]
        out[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return replace(base, **out)


def tree_frames(preset: str, width: int, levels: int, distortion: float, source: str, cache: Path):
    """``(tree, frames uint8 [F, H, W, 3], K [3, 3])`` of the default presets' tree, rendered once and cached."""
    tree = articulated_tree(TrajectoryConfig(levels=levels))
    path = cache / f"frames_{preset}_{width}_{levels}_{distortion:g}_{source.replace(':', '_')}.npz"
    if path.is_file():
        data = np.load(path)
        return tree, data["frames"], data["K"]
    image = ingest_image(source, IngestConfig(width=width, height=width * 3 // 4))
    video = generate(image, tree, GenerateConfig(synthetic=SyntheticGeneratorConfig(preset=preset,
                                                                                   distortion=distortion)))
    frames = distinct_frames(tree, video.frames)
    K = np.asarray(video.K, np.float64).reshape(-1, 3, 3)[0]
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, frames=frames, K=K)
    return tree, frames, K


def scene_extent(preset: str) -> float:
    """The largest side of the preset's room in scene units (the trees' units: pivot depth = synthetic scale)."""
    return 2.0 * max(PRESETS[preset].room.half) * SyntheticGeneratorConfig().scale


def report(cal, tree, seconds: float, scene_extent: float) -> dict:
    """Registration, pose errors of the registered frames and the worst frames by id."""
    truth = tree.distinct_c2w()
    reg = cal.registered
    ids = FrameLayout.from_tree(tree).frame_ids
    row = {"frames": len(reg), "registered": int(reg.sum()), "unregistered": cal.info["unregistered"],
           "seconds_total": round(seconds, 1), "seconds": cal.info["seconds"], "num_pairs": cal.info["num_pairs"],
           "num_sparse_points": cal.info["num_sparse_points"], "focal_px": cal.info["focal_px"]}
    if reg.sum() >= 3:
        est, gt = cal.c2w[reg], truth[reg]
        row.update(pose_errors(est, gt))  # aligned on the whole poses (metrics.align_poses)
        centres = pose_errors(est, gt, align="centres")
        row["rot_deg_mean_centre_fit"], row["rot_deg_max_centre_fit"] = centres["rot_deg_mean"], centres["rot_deg_max"]
        s, R, t = align_poses(est, gt)
        rot = np.degrees(rotation_angle(R @ est[:, :3, :3] @ np.swapaxes(gt[:, :3, :3], 1, 2)))
        centres = s * est[:, :3, 3] @ R.T + t
        spread = float(np.sqrt(((gt[:, :3, 3] - gt[:, :3, 3].mean(0)) ** 2).sum(1).mean()))
        extent = float(np.ptp(gt[:, :3, 3], axis=0).max())
        trans = np.linalg.norm(centres - gt[:, :3, 3], axis=1)
        row["trans_rel_max"] = float(trans.max() / spread)
        row["trans_extent_max"] = float(trans.max() / extent)  # relative to the rig's largest side
        row["trans_scene_max"] = float(trans.max() / scene_extent)  # relative to the room's largest side
        row["trans_scene_mean"] = float(trans.mean() / scene_extent)
        worst = np.argsort(rot)[::-1][:5]
        row["worst_rotation"] = [[*ids[int(np.flatnonzero(reg)[k])], round(float(rot[k]), 3)] for k in worst]
    return row


def summary(row: dict) -> str:
    """One readable paragraph of a row."""
    by_clip: dict[str, list[int]] = {}
    for clip, t in row["unregistered"]:
        by_clip.setdefault(clip, []).append(t)
    lines = [f"{row['preset']} {row['size']} levels {row['levels']} distortion {row['distortion']:g}: registered "
             f"{row['registered']}/{row['frames']} in {row['seconds_total']} s {row['seconds']}, "
             f"{row['num_pairs']} pairs, {row['num_sparse_points']} points, focal {row['focal_px']:.2f}"]
    if by_clip:
        lines.append("unregistered: " + "; ".join(f"{c} {ts}" for c, ts in by_clip.items()))
    if "rot_deg_mean" in row:
        lines.append(f"rot mean/max {row['rot_deg_mean']:.3f}/{row['rot_deg_max']:.3f} deg (centre fit "
                     f"{row['rot_deg_mean_centre_fit']:.3f}/{row['rot_deg_max_centre_fit']:.3f}); trans "
                     f"mean/max {100 * row['trans_rel_mean']:.2f}/{100 * row['trans_rel_max']:.2f} % of the rig's "
                     f"spread, max {100 * row['trans_extent_max']:.2f} % of its extent, mean/max "
                     f"{100 * row['trans_scene_mean']:.2f}/{100 * row['trans_scene_max']:.2f} % of the scene's; "
                     f"worst {row['worst_rotation']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="room")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--distortion", default="none", help="a level of synthetic.DISTORTION_LEVELS or a float")
    ap.add_argument("--source", default="skimage:astronaut")
    ap.add_argument("--set", action="append", default=[], help="calibrate.colmap KEY=VALUE")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/lift3d-colmap-bench"))
    ap.add_argument("--out", type=Path, help="append the JSON row to this file")
    args = ap.parse_args()
    distortion = float(DISTORTION_LEVELS.get(args.distortion, args.distortion))
    section = replace(parse_set(params_colmap(), args.set), allow_unregistered=True)

    t0 = time.perf_counter()
    tree, frames, K = tree_frames(args.preset, args.width, args.levels, distortion, args.source, args.cache)
    print(f"frames {frames.shape} ready in {time.perf_counter() - t0:.1f} s", flush=True)
    t0 = time.perf_counter()
    cal = calibrate(frames, tree.distinct_c2w(), K, CalibrateConfig(backend="colmap", max_points=20000, colmap=section),
                    layout=FrameLayout.from_tree(tree))
    row = {"preset": args.preset, "size": f"{frames.shape[2]}x{frames.shape[1]}", "levels": args.levels,
           "distortion": distortion, "source": args.source, "colmap": {**asdict(section), "allow_unregistered": False},
           "threads": os.environ.get("OMP_NUM_THREADS"), "load_avg": os.getloadavg()[0],
           **report(cal, tree, time.perf_counter() - t0, scene_extent(args.preset))}
    print(summary(row))
    if args.out:
        rows = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps([*rows, row], indent=1) + "\n")


if __name__ == "__main__":
    main()
