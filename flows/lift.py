"""The ``lift`` flow: one image through every stage, cached in the artifact store.

``flows/lift.py`` -> ``tasks/<stage>.py`` -> ``lift3d_core/<stage>``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from prefect import flow

from lift3d_core.pipeline import STAGES, check_run_path, plan
from tasks import tracking
from tasks.calibrate import calibrate
from tasks.common import RunContext, StageResult
from tasks.depth import depth
from tasks.evaluate import evaluate
from tasks.export import export
from tasks.generate import generate
from tasks.ingest import ingest
from tasks.train import train
from tasks.trajectory import trajectory

STAGE_TASKS = {
    "ingest": ingest,
    "trajectory": trajectory,
    "generate": generate,
    "calibrate": calibrate,
    "depth": depth,
    "train": train,
    "export": export,
    "evaluate": evaluate,
}
assert tuple(STAGE_TASKS) == tuple(STAGES), "flow order must follow the stage DAG"


def make_context(source: str, params: dict, run_name: str, store_url: str, state_dir: str,
                 runs_dir: str) -> RunContext:
    check_run_path(run_name)  # the run folder stays under runs_dir whoever calls (a batch's runs: <batch>/<run>)
    return RunContext(run_name=run_name, source=source, store_url=store_url, state_dir=state_dir,
                      runs_dir=runs_dir, plan=plan(params, source))


def run_stages(ctx: RunContext, until: str | None = None, *, use_prefect: bool = True,
               tracker: tracking.Tracker | None = None) -> dict[str, StageResult]:
    """Run the stages in order (up to and including ``until``); each is a hit or computes."""
    results: dict[str, StageResult] = {}
    for name, task_fn in STAGE_TASKS.items():
        results[name] = task_fn(ctx) if use_prefect else task_fn.fn(ctx)
        if tracker is not None:
            tracker.log_stage(results[name])
        if name == until:
            break
    return results


def write_summary(ctx: RunContext, results: dict[str, StageResult], wall: float,
                  mlflow_run_id: str | None = None) -> dict[str, Any]:
    """``data/runs/<run>/summary.json``: per-stage key/hit/seconds, metrics, outputs."""
    metrics: dict[str, float] = {}
    outputs: dict[str, str] = {}
    for r in results.values():
        metrics.update(r.metrics)
        outputs.update(r.outputs)
    summary = {
        "run": ctx.run_name,
        "source": ctx.source,
        "store": ctx.store_url,
        "wall_seconds": round(wall, 3),
        "stages": {n: {"key": r.key, "hit": r.hit, "seconds": round(r.seconds, 3), "reason": r.reason}
                   for n, r in results.items()},
        "metrics": metrics,
        "outputs": outputs,
        "mlflow_run_id": mlflow_run_id,
    }
    summary["summary_path"] = str(ctx.run_dir / "summary.json")
    write_summary_file(ctx, summary)
    return summary


def report_run(ctx: RunContext, summary: dict[str, Any], tracker: tracking.Tracker | None) -> None:
    """The run's report.html (and its plots to MLflow). A report that fails leaves the finished run as it is and
    says how to retry: the stages' results are all in the store."""
    from tasks.report import write_run_report

    try:
        files = write_run_report(ctx.run_dir)
    except Exception as exc:
        logging.getLogger("lift3d").warning(f"report not written ({type(exc).__name__}: {exc}); "
                                            f"`lift3d report {ctx.run_name}` tries again")
        return
    summary["outputs"]["report"] = str(files.page)
    write_summary_file(ctx, summary)
    if tracker is not None:
        tracker.log_files(files.assets, "report")


def write_summary_file(ctx: RunContext, summary: dict[str, Any]) -> None:
    path = ctx.run_dir / "summary.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)


@flow(name="lift", log_prints=True, validate_parameters=False)
def lift(source: str, params: dict, run_name: str, store_url: str, state_dir: str, runs_dir: str,
         track: bool = True) -> dict[str, Any]:
    """Lift ``source`` (an image path or ``skimage:NAME``) with ``params``; returns the run summary."""
    return lift_body(source, params, run_name, store_url, state_dir, runs_dir, track)


def lift_body(source: str, params: dict, run_name: str, store_url: str, state_dir: str, runs_dir: str,
              track: bool = True, use_prefect: bool = True) -> dict[str, Any]:
    """The body of the ``lift`` and ``demo`` flows: inside a flow with ``use_prefect``; without Prefect (the stages
    called directly: same keys, cache and store) when its server cannot be had."""
    t0 = time.perf_counter()
    ctx = make_context(source, params, run_name, store_url, state_dir, runs_dir)
    tracker = tracking.Tracker(run_name, source, params) if track else None
    summary = None
    try:
        results = run_stages(ctx, tracker=tracker, use_prefect=use_prefect)
        summary = write_summary(ctx, results, time.perf_counter() - t0)
        report_run(ctx, summary, tracker)
    finally:
        if tracker is not None:
            run_id = tracker.finish(summary, ok=summary is not None)
            if summary is not None:
                summary["mlflow_run_id"] = run_id
                write_summary_file(ctx, summary)
    return summary
