"""What every stage task shares: the run context, the store look-up and the hit/miss log.

The store is the source of truth for caching (so a ``dvc pull`` or a team remote
counts as a hit on any machine); Prefect's own result cache is off and its task
results are only the small :class:`StageResult`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from lift3d_core import __version__
from lift3d_core.pipeline import PlannedStage, explain_miss, history_file
from lift3d_core.store import ArtifactStore, CorruptArtifactError, artifact_key


@dataclass(frozen=True)
class RunContext:
    """Everything a task needs, small and picklable (it travels to Dask workers).

    plan: stage name -> PlannedStage (key, key document, config) for this run.
    """

    run_name: str
    source: str
    store_url: str
    state_dir: str
    runs_dir: str
    plan: dict[str, PlannedStage]

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.store_url)

    @property
    def run_dir(self) -> Path:
        path = Path(self.runs_dir) / self.run_name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def config(self, stage: str) -> Any:
        return self.plan[stage].config

    def read(self, stage: str):
        """The verified upstream artifact of ``stage`` for this run."""
        return self.store.read(stage, self.plan[stage].key)

    def arrays(self, stage: str, *names: str) -> dict[str, np.ndarray]:
        """The arrays ``names`` of ``stage``'s artifact (a name ending in ``/`` selects a group, ``gaussians/``),
        each decoded and verified on its own: a stage reads what it uses, not every array of its inputs."""
        artifact = self.read(stage)
        chosen = [n for name in names for n in ([m for m in artifact.names if m.startswith(name)]
                                                 if name.endswith("/") else [name])]
        return {n: artifact.array(n) for n in chosen}


@dataclass
class StageResult:
    stage: str
    key: str
    hit: bool
    seconds: float
    reason: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # metric by step, for MLflow

Computed = tuple[dict[str, Any], dict[str, Any]]  # (arrays, attrs)


def stage_logger():
    """Prefect's run logger inside a flow; a plain logger when a stage runs alone (``lift3d stage``)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("lift3d")


def _history_path(ctx: RunContext) -> Path:
    return history_file(ctx.state_dir, ctx.plan["ingest"].doc["inputs"]["image"])


def _previous_doc(ctx: RunContext, stage: str) -> dict | None:
    path = _history_path(ctx)
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(stage)


def _remember_doc(ctx: RunContext, stage: str) -> None:
    path = _history_path(ctx)
    path.parent.mkdir(parents=True, exist_ok=True)
    history = json.loads(path.read_text()) if path.is_file() else {}
    history[stage] = ctx.plan[stage].doc
    tmp = path.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")  # threads of a batch share a pid
    tmp.write_text(json.dumps(history, indent=1, sort_keys=True))
    os.replace(tmp, path)


def cached_stage(ctx: RunContext, stage: str, compute: Callable[[], Computed]) -> StageResult:
    """Return the stored artifact of ``stage`` if present and intact, else compute and store it.

    A corrupt artifact is quarantined, reported and recomputed, never used. Two
    processes that need the same key compute it once (per-key lock on local stores).
    """
    log = stage_logger()
    planned: PlannedStage = ctx.plan[stage]
    store = ctx.store
    t0 = time.perf_counter()
    if _intact(store, stage, planned.key, log):
        _remember_doc(ctx, stage)
        seconds = time.perf_counter() - t0
        log.info(f"{stage:<10} HIT   {planned.key[:12]}  reused from {store.url}")
        return StageResult(stage, planned.key, True, seconds, ["artifact present"])
    reason = explain_miss(_previous_doc(ctx, stage), planned.doc) or ["artifact missing from the store"]
    log.info(f"{stage:<10} MISS  {planned.key[:12]}  because: {'; '.join(reason)}")
    with store.lock(stage, planned.key):
        if _intact(store, stage, planned.key, log):  # another process finished it while we waited
            hit = True
        else:
            arrays, attrs = compute()
            store.write(stage, planned.key, planned.doc, arrays, attrs, code_version=__version__)
            hit = False
    _remember_doc(ctx, stage)
    seconds = time.perf_counter() - t0
    log.info(f"{stage:<10} {'HIT ' if hit else 'DONE'}  {planned.key[:12]}  in {seconds:.1f} s")
    return StageResult(stage, planned.key, hit, seconds, reason)


def cached_arrays(ctx: RunContext, owner: str, name: str, params: dict[str, Any], upstream: tuple[str, ...],
                  compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Part of stage ``owner``'s work that depends on fewer inputs than the stage (evaluate's ground truth depends
    on generation, not on training), stored under its own key so that every run needing it reuses it.

    The key hashes ``name``, ``owner``'s code version, ``params`` and the keys of the ``upstream`` stages; the
    artifact is written, verified and quarantined like a stage's.
    """
    inputs = {up: ctx.plan[up].key for up in upstream}
    key, doc = artifact_key(name, ctx.plan[owner].doc["stage_version"], params, inputs, {})
    store, log = ctx.store, stage_logger()
    with store.lock(name, key):
        if not _intact(store, name, key, log):
            t0 = time.perf_counter()
            store.write(name, key, doc, compute(), code_version=__version__)
            log.info(f"{name:<10} DONE  {key[:12]}  in {time.perf_counter() - t0:.1f} s (kept for later runs)")
    return store.read(name, key).arrays


def _intact(store: ArtifactStore, stage: str, key: str, log) -> bool:
    if not store.exists(stage, key):
        return False
    problems = store.verify_artifact(stage, key, deep=False)  # zip size + SHA-256: any changed byte
    if not problems:
        return True
    log.warning(f"{stage:<10} CORRUPT {key[:12]}: {'; '.join(map(str, problems))}; quarantined, recomputing")
    store.quarantine(stage, key)
    return False


__all__ = ["CorruptArtifactError", "RunContext", "StageResult", "cached_arrays", "cached_stage"]
