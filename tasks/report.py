"""The run report (``data/runs/<run>/report.html``) and a batch's index page, read from a run's ``summary.json``
and the artifacts its keys name; the page itself is assembled by :mod:`lift3d_core.report`.

Not a Prefect task: it runs after the stages (``flows/lift.py``) or alone (``lift3d report RUN``), on any machine
that reaches the run's store.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lift3d_core.errors import Lift3DError
from lift3d_core.report import BatchRow, RunReport, batch_index_html, run_report_html
from lift3d_core.report.images import pick
from lift3d_core.store import ArtifactStore
from lift3d_core.trajectory import CameraTree

REPORT = "report.html"
ASSETS = "report_assets"  # the report's plots as files (MLflow logs them); the page itself does not link them
VIDEOS = {"fly-through video": "flythrough.mp4", "orbit video": "orbit.mp4"}


@dataclass(frozen=True)
class ReportFiles:
    page: Path
    assets: list[Path]


def load_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise Lift3DError(f"{run_dir}: no summary.json (no finished run there); run `lift3d lift` or `lift3d demo`")
    return json.loads(path.read_text())


def run_artifacts(summary: dict) -> tuple[ArtifactStore, dict[str, str]]:
    """The run's store and stage keys; one line naming what is missing if an artifact is not in the store."""
    store = ArtifactStore(summary["store"])
    keys = {name: s["key"] for name, s in summary["stages"].items()}
    for name, key in keys.items():
        if not store.exists(name, key):
            raise Lift3DError(f"run {summary['run']}: the {name} artifact {key[:12]} is not in {store.url} "
                              "(removed, or the store moved); run the lift again to rebuild it")
    return store, keys


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _camera_plots(run_dir: Path, store: ArtifactStore, keys: dict[str, str], tree: CameraTree):
    """PNG bytes of the commanded and the calibrated trees: the run's own plots where its stages drew them
    (``trajectory.png``, and ``cameras.png`` when there is ground truth), else drawn here once."""
    from lift3d_core.calibrate.contract import Similarity
    from lift3d_core.evaluate import plot_calibrated_tree
    from lift3d_core.trajectory import plot_tree

    commanded, calibrated = run_dir / "trajectory.png", run_dir / "cameras.png"
    if not commanded.is_file():
        plot_tree(tree, commanded)
    if not calibrated.is_file():
        cal = store.read("calibrate", keys["calibrate"])
        sim = Similarity.from_arrays({n: cal.array(n) for n in cal.names if n.startswith("to_commanded/")})
        plot_calibrated_tree(tree, sim.apply_c2w(cal.array("c2w")), cal.array("registered").astype(bool), calibrated)
    return commanded.read_bytes(), calibrated.read_bytes()


def read_run_report(run_dir: Path, frames_per_clip: int = 8) -> RunReport:
    """Everything :func:`lift3d_core.report.run_report_html` shows, read from the run folder and the store
    (frames and depth lazily: only the ones the page shows are decoded)."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    store, keys = run_artifacts(summary)
    tree = CameraTree.from_dict(store.read("trajectory", keys["trajectory"]).attrs["tree"])
    gen = store.read("generate", keys["generate"])
    frames_z = gen.zarr_array("frames")  # [C, T, H, W, 3], decoded only where sliced
    ts = pick(frames_z.shape[1], frames_per_clip)
    frames = np.stack([frames_z[c][ts] for c in range(frames_z.shape[0])])
    depth = store.read("depth", keys["depth"])
    inv_z, valid_z = depth.zarr_array("inv_depth"), depth.zarr_array("valid")
    shown = pick(inv_z.shape[0], frames_per_clip)
    clip_index = {c.clip_id: i for i, c in enumerate(tree.clips)}
    ids = tree.distinct_frame_ids()
    depth_frames = np.stack([frames_z[clip_index[ids[i][0]], ids[i][1]] for i in shown])

    train = store.read("train", keys["train"])
    stats = train.attrs.get("stats", {})
    psnr = train.attrs.get("psnr_curve")
    evaluation = store.read("evaluate", keys["evaluate"])
    has_truth = "renders" in evaluation.names
    commanded_png, calibrated_png = _camera_plots(run_dir, store, keys, tree)

    files: dict[str, str | None] = {"3DGS PLY": "scene.ply"}
    files.update(VIDEOS)
    files.update({"run summary": "summary.json", "loss curve (CSV)": "loss_curve.csv", "preview renders": "preview.png"})
    files = {label: (name if (run_dir / name).is_file() else None) for label, name in files.items()}
    hints = dict.fromkeys(VIDEOS, f"run `lift3d render {summary['run']}`")
    ingest = store.read("ingest", keys["ingest"])
    return RunReport(
        run=summary["run"], source=summary["source"], image=ingest.array("image"),
        clip_ids=[c.clip_id for c in tree.clips], frames=frames, frame_ts=ts.tolist(), clip_length=frames_z.shape[1],
        commanded_plot=commanded_png, calibrated_plot=calibrated_png,
        depth_index=shown.tolist(), num_distinct=inv_z.shape[0], depth_frames=depth_frames,
        inv_depth=np.stack([inv_z[int(i)] for i in shown]), depth_valid=np.stack([valid_z[int(i)] for i in shown]),
        loss_curve=np.asarray(train.array("loss_curve"), np.float64).reshape(-1, 2),
        psnr_curve=None if psnr is None else np.asarray(psnr, np.float64).reshape(-1, 2),
        gaussians_curve=np.asarray(stats["num_gaussians"], np.float64).reshape(-1, 2)
        if stats.get("num_gaussians") else None,
        metrics=summary.get("metrics", {}),
        heldout_targets=evaluation.array("targets") if has_truth else None,
        heldout_renders=evaluation.array("renders") if has_truth else None,
        stages=summary["stages"], wall_seconds=float(summary.get("wall_seconds", 0.0)),
        files=files, file_hints={**hints, "3DGS PLY": "the export stage writes it"},
    )


def write_run_report(run_dir: Path) -> ReportFiles:
    """Write ``<run_dir>/report.html`` and its plots as files under ``<run_dir>/report_assets/``."""
    run_dir = Path(run_dir)
    page, assets = run_report_html(read_run_report(run_dir))
    folder = run_dir / ASSETS
    folder.mkdir(exist_ok=True)
    paths = []
    for name, data in assets.items():
        _write(folder / name, data)
        paths.append(folder / name)
    for stale in set(folder.iterdir()) - set(paths):  # plots of an earlier report (another tree, no PSNR curve)
        stale.unlink()
    _write(run_dir / REPORT, page.encode())
    return ReportFiles(run_dir / REPORT, paths)


def write_batch_index(batch_dir: Path, runs: list[Path], title: str | None = None) -> Path:
    """Write ``<batch_dir>/index.html``: one row per run folder of ``runs`` (its input, held-out quality, cost and
    a link to its report, relative to the index); a run without a summary or report gets a row saying so."""
    batch_dir = Path(batch_dir)
    batch_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for run_dir in map(Path, runs):
        summary_path, report = run_dir / "summary.json", run_dir / REPORT
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
        thumb = run_dir / ASSETS / "input.png"
        rows.append(BatchRow(
            run=summary["run"] if summary else run_dir.name,
            report=os.path.relpath(report, batch_dir) if report.is_file() else None,
            thumbnail=_small_png(thumb) if thumb.is_file() else None,
            summary=summary,
            error=None if summary else "no summary.json: the run failed or has not finished",
        ))
    path = batch_dir / "index.html"
    _write(path, batch_index_html(title or f"lift3d batch {batch_dir.name}", rows).encode())
    return path


def _small_png(path: Path, width: int = 160) -> bytes:
    from PIL import Image

    from lift3d_core.report.images import png_bytes, thumbnail

    return png_bytes(thumbnail(np.asarray(Image.open(path).convert("RGB")), width))
