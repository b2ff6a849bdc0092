"""MLflow reporting: one run per image per flow run, written by a background worker.

Tasks put what they report into their :class:`StageResult` (seconds, cache hit, key,
metrics, curves, files); the flow hands each result to a :class:`Tracker`, whose
single worker thread talks to MLflow (SQLite inside the project unless
``MLFLOW_TRACKING_URI`` is set). MLflow's import and database set-up then overlap
with the pipeline instead of adding to it, and tasks running on Dask workers never
need a tracking connection.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

EXPERIMENT = "lift3d"
log = logging.getLogger("lift3d.tracking")


class Tracker:
    """Start an MLflow run now (in the background); log stage results as they come; ``finish`` waits."""

    def __init__(self, run_name: str, source: str, params: dict[str, Any]):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")
        self._run_id: Future[str] = self._pool.submit(_start_run, run_name, source, params)
        self._pending: list[Future] = []

    @property
    def run_id(self) -> str:
        return self._run_id.result()

    def log_stage(self, result) -> None:
        self._pending.append(self._pool.submit(_log_stage, self._run_id, result))

    def log_files(self, paths: list[Path], artifact_path: str) -> None:
        """Log files (the report's plots) as the run's artifacts under ``artifact_path``."""
        self._pending.append(self._pool.submit(_log_files, self._run_id, [str(p) for p in paths], artifact_path))

    def finish(self, summary: dict[str, Any] | None, ok: bool) -> str | None:
        """Log the summary's metrics and files, close the run, wait for the worker; returns the run id."""
        self._pending.append(self._pool.submit(_finish, self._run_id, summary, ok))
        self._pool.shutdown(wait=True)
        for f in self._pending:
            if f.exception() is not None:  # tracking must never fail a finished lift
                log.warning(f"MLflow logging failed: {f.exception()}")
        return self._run_id.result() if self._run_id.exception() is None else None


def warm_up() -> None:
    """Import MLflow and open its store now, in the background (seconds of CPU): call it where this process would
    otherwise wait, e.g. for Prefect's server, so that the tracker's first call finds both ready."""
    threading.Thread(target=_warm_up, name="mlflow-warm-up", daemon=True).start()


def _warm_up() -> None:
    try:
        _client().get_experiment_by_name(EXPERIMENT)
    except Exception:  # the tracker's own calls report what really fails
        log.debug("MLflow warm-up failed", exc_info=True)


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _start_run(run_name: str, source: str, params: dict[str, Any]) -> str:
    from mlflow.entities import Param

    client = _client()
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    run_id = client.create_run(exp_id, run_name=run_name, tags={"lift3d.source": source}).info.run_id
    flat = list(_flatten(params).items())
    for i in range(0, len(flat), 100):
        client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flat[i : i + 100]])
    return run_id


def _log_stage(run_id_future: Future, result) -> None:
    from mlflow.entities import Metric, RunTag

    client, run_id, now = _client(), run_id_future.result(), int(time.time() * 1000)
    tags = [RunTag(f"{result.stage}.key", result.key), RunTag(f"{result.stage}.hit", str(result.hit).lower())]
    if not result.hit:
        tags.append(RunTag(f"{result.stage}.miss_reason", "; ".join(result.reason)[:5000]))
    metrics = [Metric(f"{result.stage}.seconds", result.seconds, now, 0),
               Metric(f"{result.stage}.cache_hit", float(result.hit), now, 0)]
    metrics += [Metric(k, float(v), now, 0) for k, v in result.metrics.items()]
    for name, curve in result.curves.items():
        metrics += [Metric(name, float(v), now, int(s)) for s, v in curve]
    client.log_batch(run_id, tags=tags)
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def _log_files(run_id_future: Future, paths: list[str], artifact_path: str) -> None:
    client, run_id = _client(), run_id_future.result()
    for path in paths:
        client.log_artifact(run_id, path, artifact_path)


def _finish(run_id_future: Future, summary: dict[str, Any] | None, ok: bool) -> None:
    client, run_id = _client(), run_id_future.result()
    if summary is not None:
        client.log_metric(run_id, "wall_seconds", float(summary["wall_seconds"]))
        for path in [*summary["outputs"].values(), summary.get("summary_path")]:
            if path and Path(path).is_file():
                client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
