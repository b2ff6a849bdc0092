"""The ``batch`` flow: many images through the ``lift`` chain, fanned out over a Prefect task runner.

Each input gets the ``lift`` flow's chain of stage tasks (:data:`flows.lift.STAGE_TASKS`: the same tasks, keys,
store and run summary), each stage submitted with ``.submit()`` and waiting for the one before it, so the task
runner runs the chains of different images at once:

- ``ThreadPoolTaskRunner`` (the default): threads of this process; one thread when CUDA is present, so the GPU
  runs one heavy stage at a time (``--workers`` gives GPU machines their parallelism).
- ``DaskTaskRunner`` (prefect-dask) on a ``dask.distributed.LocalCluster`` of ``--workers N`` processes of one
  thread each, or on an existing scheduler (``--address tcp://...``). The stages that may load a GPU model
  (:data:`GPU_STAGES`) are submitted inside ``dask.annotate(resources={"GPU": 1})`` whenever a worker of the
  cluster declares a ``GPU`` resource; without one nothing requires it. A worker of several threads with one GPU
  (``dask worker --nthreads 4 --resources GPU=1``) then runs one heavy stage at a time while CPU stages of other
  images go on beside it. A LocalCluster's workers declare ``GPU: 1`` when CUDA is present, each on its own GPU
  (round robin, :class:`WorkerSetup`): with ``--workers`` at most the number of GPUs, each GPU runs one heavy stage
  at a time.
- ``--gpus N`` (or ``all``): a cluster of one worker process per GPU (:func:`gpu_cluster`), worker ``i`` started with
  ``CUDA_VISIBLE_DEVICES`` set to the ``i``-th visible GPU, so it sees that device alone (as its ``cuda:0``), and
  declaring ``GPU: 1``. The GPU stages ask for that resource, so a GPU runs one heavy stage at a time, and the
  scheduler puts a ready heavy stage on whichever GPU is free. Each worker has two threads (``--threads``): the
  second runs the CPU stages (ingest, trajectory, export, evaluate) of other images beside the heavy stage, so a GPU
  does not wait for an image's export before starting the next image's generation; more threads would have no
  more CPU stages to run. With ``--address`` the scheduler's workers declare the resource themselves
  (``dask worker --resources GPU=1`` with ``CUDA_VISIBLE_DEVICES`` set per worker), and the batch checks they
  declare at least the GPUs asked for. dask-cuda is not used: one environment variable per worker is all the
  placement needs, and it keeps one code path that the CPU test runs (``LIFT3D_FAKE_GPUS=N`` declares N GPUs
  without CUDA; the workers then run on the CPU).

``batch.json`` records, for a Dask cluster, its workers (name, resources, threads, ``CUDA_VISIBLE_DEVICES``) and a
timeline: each stage's worker and the interval it held its worker's slot and resources (seconds from the first start).

Models are loaded once per worker process: every backend builds its model through
:func:`lift3d_core.checkpoints.cached_model`, a per-process cache, and Dask worker processes live for the whole
batch, so a worker builds each model on its first image and reuses it for every later one.

One Prefect API for the whole batch. The stage task runs execute on the Dask workers, and Prefect's task engine
there reports them to the API named by the settings each task carries from this process (prefect-dask serializes
them with the task). So this flow runs only with an API already set, the CLI's temporary server or
``PREFECT_API_URL``, and a LocalCluster's workers get that URL in their environment with Prefect's ephemeral mode
off: a worker that somehow lacked the URL stops with an error instead of booting a temporary server of its own on
the project's SQLite file (which crashes). We chose this over running plain functions on the workers because every
stage then is a task run where it runs: its state, duration and HIT/MISS log lines reach the one API, and a failed
image shows the failed stage. Its costs: workers must reach the API (the CLI refuses a remote ``--address`` when
the API is its own loopback server: set ``PREFECT_API_URL``), and Prefect rebuilds its settings for each task run on
a worker: 0.1-0.3 s of CPU a stage, small beside a stage's work but not beside a store hit (bench/batch_overhead.py:
a chain of eight hits took 2.4 s an image on two busy CPU workers, 0.55 s on threads; a reused image 6 ms).

Per-image failures are isolated: a failed stage leaves that image's later stages unrun (Prefect's ``NotReady``)
and the batch goes on. A rerun does only what is missing: an image whose run summary names the keys this run plans,
whose artifacts are all in the store and whose output files exist is ``reused`` without submitting a task; any
other image runs its chain, where each stage is a store hit or computes (``done`` when any stage computed).
``data/runs/<batch>/batch.json`` lists every input with its status, reason, run summary and the stages it computed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

from distributed.diagnostics.plugin import WorkerPlugin
from prefect import flow

from flows.lift import STAGE_TASKS, make_context, write_summary
from lift3d_core.errors import Lift3DError
from lift3d_core.image import SKIMAGE_PREFIX
from lift3d_core.pipeline import STAGES
from lift3d_core.store import ArtifactStore
from tasks.common import RunContext, StageResult

# Stages whose backends may load a GPU model (MotionCtrl-SVD, MASt3R, Depth Anything V2, gsplat training).
GPU_STAGES = ("generate", "calibrate", "depth", "train")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
GPU_RESOURCE = "GPU"
FAKE_GPUS = "LIFT3D_FAKE_GPUS"  # test hook: `--gpus` sees this many GPUs, with or without CUDA
GPU_WORKER_THREADS = 2  # a GPU worker's threads: one heavy stage plus CPU stages of other images beside it
STAGES_ORDER = tuple(STAGE_TASKS)
# What a stage reads from the environment (flows.settings.configure_environment sets them): checkpoint paths are the
# project's, checkpoint digests and torch.compile's cache live with it.
PROJECT_ENV = ("LIFT3D_PROJECT", "LIFT3D_DIGEST_CACHE", "TORCHINDUCTOR_CACHE_DIR", "GIT_PYTHON_REFRESH")


@dataclass
class Entry:
    """One input of a batch and what became of it (a row of ``batch.json``).

    status: ``done`` (some stage computed), ``reused`` (nothing computed), ``failed`` (reason says why).
    computed: the stages this run computed (empty for ``reused``).
    """

    source: str
    run: str
    status: str = "pending"
    reason: str = ""
    summary: str | None = None
    computed: list[str] = field(default_factory=list)


def find_inputs(spec: str) -> list[str]:
    """The inputs ``spec`` names, in order: a directory (its image files by extension, sorted by name), a text file
    (one path or ``skimage:NAME`` per line; blank lines and ``#`` comments skipped; relative paths are the list's),
    a glob (its matching files, sorted), a single image file or a ``skimage:NAME``. Duplicates are dropped."""
    path = Path(spec)
    if spec.startswith(SKIMAGE_PREFIX):
        sources = [spec]
    elif path.is_dir():
        sources = [str(p.resolve()) for p in sorted(path.iterdir())
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    elif path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS:
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise Lift3DError(f"batch: cannot read the list {path} ({exc})") from None
        entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        sources = [e if e.startswith(SKIMAGE_PREFIX) else str((path.parent / e).resolve()) for e in entries]
    elif path.is_file():
        sources = [str(path.resolve())]
    elif glob.has_magic(spec):
        sources = [str(Path(p).resolve()) for p in sorted(glob.glob(spec)) if Path(p).is_file()]
    else:
        raise Lift3DError(f"batch: {spec} is not a directory, a list file, an image or a glob")
    if not sources:
        raise Lift3DError(f"batch: no input images in {spec}")
    return list(dict.fromkeys(sources))


def run_names(sources: list[str]) -> list[str]:
    """A run folder name per input: its file stem (characters outside ``[A-Za-z0-9._-]`` become ``_``), with a
    digest of the source appended where two inputs share a stem; stable across reruns of the same inputs."""
    stems = [re.sub(r"[^A-Za-z0-9._-]", "_", Path(s.removeprefix(SKIMAGE_PREFIX)).stem).lstrip(".") or "image"
             for s in sources]
    return [f"{stem}-{hashlib.sha256(src.encode()).hexdigest()[:8]}" if stems.count(stem) > 1 else stem
            for stem, src in zip(stems, sources)]


def reusable_summary(ctx: RunContext, store: ArtifactStore) -> str | None:
    """The path of ``ctx``'s run summary if this run can reuse it without submitting a task: it names every key
    ``ctx`` plans, those artifacts are in the store and its output files exist. Else None."""
    path = Path(ctx.runs_dir) / ctx.run_name / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    stages = summary.get("stages", {})
    if any(stages.get(name, {}).get("key") != planned.key for name, planned in ctx.plan.items()):
        return None
    if not all(Path(p).is_file() for p in summary.get("outputs", {}).values()):
        return None
    if not all(store.exists(name, planned.key) for name, planned in ctx.plan.items()):
        return None
    return str(path)


def failure_reason(stage: str, error: BaseException | str) -> str:
    """One line: ``stage: message`` (a Lift3DError's own message; other errors prefixed with their type)."""
    if isinstance(error, BaseException):
        text = str(error).strip() or type(error).__name__
        error = text if isinstance(error, Lift3DError) else f"{type(error).__name__}: {text}"
    return f"{stage}: {str(error).splitlines()[0][:400]}"


@flow(name="batch", log_prints=True, validate_parameters=False)
def batch(sources: list[str], params: dict, batch_name: str, store_url: str, state_dir: str, runs_dir: str,
          track: bool = True, gpus: int = 0) -> dict[str, Any]:
    """Lift every source with ``params`` over the flow's task runner; returns the batch report (``batch.json``).
    ``gpus``: how many GPUs the Dask workers must declare between them (``--gpus``; 0: no check)."""
    return batch_body(sources, params, batch_name, store_url, state_dir, runs_dir, track, gpus=gpus)


def batch_body(sources: list[str], params: dict, batch_name: str, store_url: str, state_dir: str, runs_dir: str,
               track: bool = True, use_prefect: bool = True, gpus: int = 0) -> dict[str, Any]:
    """The body of the ``batch`` flow: inside it with ``use_prefect``; without Prefect (each chain called in turn
    in this process: same keys, store and report) when its server cannot be had."""
    t0 = time.perf_counter()
    store = ArtifactStore(store_url)
    entries = [Entry(src, name) for src, name in zip(sources, run_names(sources))]
    contexts: dict[str, RunContext] = {}
    for e in entries:
        try:
            ctx = make_context(e.source, params, f"{batch_name}/{e.run}", store_url, state_dir, runs_dir)
        except Lift3DError as exc:  # a list entry that does not exist: its digest cannot be taken
            e.status, e.reason = "failed", failure_reason("input", exc)
            continue
        if (summary := reusable_summary(ctx, store)) is not None:
            e.status, e.summary = "reused", summary
        else:
            contexts[e.run] = ctx
    by_run = {e.run: e for e in entries}

    def settle(run: str, outcome: Outcome) -> None:  # as each chain ends, so a killed batch keeps what finished
        _settle(by_run[run], contexts[run], outcome, params, track)

    cluster = None
    with BatchProgress(len(entries), sum(e.status == "reused" for e in entries)) as progress:
        if not contexts:  # nothing to run: no task, and no Dask cluster started
            pass
        elif use_prefect:
            cluster = _run_chains(contexts, progress, settle, gpus)
        else:
            for run, ctx in contexts.items():
                settle(run, _run_inline(ctx, progress))
    return write_report(entries, batch_name, runs_dir, time.perf_counter() - t0, cluster)


Outcome = dict[str, StageResult] | str  # every stage's result, or why the chain stopped


def _run_chains(contexts: dict[str, RunContext], progress: BatchProgress, settle, gpus: int = 0) -> dict | None:
    """Submit every image's stage chain to the flow's task runner, show progress, and ``settle(run, outcome)``
    each image as its chain ends. Returns the Dask cluster's workers and timeline (None on threads)."""
    import dask

    client, gpu = _prepare_workers(gpus)
    chains: dict[str, list[Any]] = {}
    for run, ctx in contexts.items():
        chain, previous = [], None
        for name, stage_task in STAGE_TASKS.items():
            with dask.annotate(resources={GPU_RESOURCE: 1}) if gpu and name in GPU_STAGES else nullcontext():
                previous = stage_task.submit(ctx, wait_for=[previous] if previous is not None else None)
            chain.append(previous)
        chains[run] = chain
    _wait_for_chains(chains, progress, settle)
    if client is None:
        return None
    stages = {str(f.wrapped_future.key): (run, STAGES_ORDER[i]) for run, chain in chains.items()
              for i, f in enumerate(chain)}
    return cluster_record(client, stages)


def _wait_for_chains(chains: dict[str, list[Any]], progress: BatchProgress, settle) -> None:
    position = dict.fromkeys(chains, 0)  # each chain's first stage not yet seen to end: stages end in order
    while position:
        for run, i in list(position.items()):
            chain = chains[run]
            while i < len(chain) and chain[i].wrapped_future.done():
                chain[i].wait()
                state = chain[i].state
                if state.is_final():  # not a stage left unrun after its upstream failed (NotReady)
                    progress.stage_finished(STAGES_ORDER[i], state.is_completed())
                i += 1
            position[run] = i
            if i == len(chain):
                del position[run]
                settle(run, _outcome(dict(zip(STAGES_ORDER, chain))))
        if position:
            time.sleep(0.05)


def _outcome(chain: dict[str, Any]) -> Outcome:
    results = {}
    for name, future in chain.items():
        state = future.state
        if state.is_completed():
            results[name] = state.result()
        elif state.is_failed() or state.is_crashed():
            return failure_reason(name, state.result(raise_on_failure=False) if state.is_failed() else state.message)
        else:
            return failure_reason(name, f"{state.name}: {state.message}")
    return results


def _run_inline(ctx: RunContext, progress: BatchProgress) -> Outcome:
    results = {}
    for name, stage_task in STAGE_TASKS.items():
        try:
            results[name] = stage_task.fn(ctx)
        except Exception as exc:  # one image's failure must not stop the batch
            progress.stage_finished(name, False)
            return failure_reason(name, exc)
        progress.stage_finished(name, True)
    return results


def _settle(entry: Entry, ctx: RunContext, outcome: Outcome, params: dict, track: bool) -> None:
    """Record an image's outcome: its run summary (and MLflow run) when every stage finished."""
    if isinstance(outcome, str):
        entry.status, entry.reason = "failed", outcome
        return
    entry.computed = [name for name, r in outcome.items() if not r.hit]
    entry.status = "done" if entry.computed else "reused"
    summary = write_summary(ctx, outcome, sum(r.seconds for r in outcome.values()))
    entry.summary = summary["summary_path"]
    from flows.lift import report_run, write_summary_file

    tracker = None
    if track:
        from tasks import tracking

        tracker = tracking.Tracker(ctx.run_name, ctx.source, params)
        for r in outcome.values():
            tracker.log_stage(r)
    report_run(ctx, summary, tracker)  # the run's report.html, as `lift3d lift` writes it
    if tracker is not None:
        summary["mlflow_run_id"] = tracker.finish(summary, ok=True)
    write_summary_file(ctx, summary)


def cluster_record(client, stages: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """The cluster's workers (name -> address, resources, threads, ``CUDA_VISIBLE_DEVICES``) and the timeline of
    ``stages`` (Dask key -> (run, stage)): one row per stage run, its worker and the interval it was executing there
    (:meth:`WorkerSetup.transition`, the worker's clock), in seconds from the first start."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    devices = client.run(_cuda_visible_devices)
    workers = {str(w["name"]): {"address": addr, "resources": w.get("resources") or {}, "threads": w.get("nthreads"),
                                "cuda_visible_devices": devices.get(addr)} for addr, w in info.items()}
    rows = []
    for addr, intervals in client.run(_executing_intervals).items():
        for key, (start, end) in intervals.items():
            if key in stages and end is not None:
                run, stage = stages[key]
                name = str(info[addr]["name"]) if addr in info else addr
                rows.append({"run": run, "stage": stage, "worker": name, "start": start, "end": end})
    t0 = min((r["start"] for r in rows), default=0.0)
    for r in rows:
        r["start"], r["end"] = round(r["start"] - t0, 4), round(r["end"] - t0, 4)
    return {"workers": workers, "timeline": sorted(rows, key=lambda r: (r["start"], r["worker"]))}


def _executing_intervals(dask_worker) -> dict[str, list]:  # run on each worker
    plugin = dask_worker.plugins.get(WorkerSetup.name)
    return dict(plugin.executing) if plugin is not None else {}


def _cuda_visible_devices() -> str | None:  # run on each worker: its own environment
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def write_report(entries: list[Entry], batch_name: str, runs_dir: str, wall: float,
                 cluster: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``<runs_dir>/<batch>/batch.json`` atomically and return it (with ``cluster``: the Dask workers and
    the stages' timeline, :func:`cluster_record`)."""
    counts = {s: sum(e.status == s for e in entries) for s in ("done", "reused", "failed")}
    report = {"batch": batch_name, "wall_seconds": round(wall, 3), "counts": counts,
              "inputs": [asdict(e) for e in entries], **(cluster or {})}
    path = Path(runs_dir) / batch_name / "batch.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, path)
    report["path"] = str(path)
    from tasks.report import write_batch_index

    # index.html beside it: one row per input that has a run folder (failed ingests have none), linking its report
    runs = [Path(runs_dir) / batch_name / e.run for e in entries if (Path(runs_dir) / batch_name / e.run).is_dir()]
    report["index"] = str(write_batch_index(path.parent, runs, title=f"lift3d batch {batch_name}"))
    return report


class BatchProgress:
    """A rich progress display: per stage, how many of the batch's images are through it (reused images count as
    through every stage); quiet when stdout is not a terminal."""

    def __init__(self, total: int, reused: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[failed]}"), TimeElapsedColumn())
        self.rows = {name: self.progress.add_task(name, total=total, completed=reused, failed="") for name in STAGES}
        self.failed = dict.fromkeys(STAGES, 0)

    def stage_finished(self, stage: str, ok: bool) -> None:
        if ok:
            self.progress.advance(self.rows[stage])
        else:
            self.failed[stage] += 1
            self.progress.update(self.rows[stage], failed=f"[red]{self.failed[stage]} failed")

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _prepare_workers(gpus: int = 0):
    """Set up the flow's Dask workers (:class:`WorkerSetup`) and check that they declare at least ``gpus`` GPUs.
    Returns the Dask client and whether a worker declares a GPU resource ((None, False) on threads: no GPU
    annotation)."""
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    runner = FlowRunContext.get().task_runner
    if not isinstance(runner, DaskTaskRunner):
        return None, False
    client = runner.client
    round_robin = 0
    if GPU_RESOURCE in (runner.cluster_kwargs.get("resources") or {}):  # a --workers LocalCluster on this machine's GPUs
        import torch

        round_robin = torch.cuda.device_count()
    client.register_plugin(WorkerSetup({v: os.environ[v] for v in PROJECT_ENV if v in os.environ}, round_robin))
    declared = declared_gpus(client, wait_for=gpus)
    if declared < gpus:
        raise Lift3DError(f"batch --gpus: the Dask workers declare {declared} GPU(s), {gpus} asked for; start one "
                          "worker per GPU with `CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --resources GPU=1`")
    return client, declared > 0


def declared_gpus(client, wait_for: int = 0, timeout: float = 30.0) -> int:
    """The ``GPU`` resources the cluster's workers declare between them; waits up to ``timeout`` seconds for
    ``wait_for`` of them (workers of an existing scheduler may still be joining)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        declared = int(sum((w.get("resources") or {}).get(GPU_RESOURCE, 0) for w in workers))
        if declared >= wait_for or time.monotonic() > deadline:
            return declared
        time.sleep(0.5)


def visible_gpus() -> list[str]:
    """The GPUs ``--gpus`` may give its workers, as ``CUDA_VISIBLE_DEVICES`` entries: this process's own list when
    set (``CUDA_VISIBLE_DEVICES=2,3`` gives ``["2", "3"]``), else ``0 .. count-1``; none without CUDA. With
    ``LIFT3D_FAKE_GPUS=N`` (tests, ``bench/multi_gpu.py --fake-gpus``): ``0 .. N-1`` whatever the hardware."""
    if fake := os.environ.get(FAKE_GPUS):
        return [str(i) for i in range(int(fake))]
    import torch

    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return listed[:count] if listed else [str(i) for i in range(count)]


def gpu_count(spec: str) -> int | None:
    """``--gpus``'s count: a positive number, or None for ``all``."""
    if spec == "all":
        return None
    if not (spec.isdigit() and int(spec) > 0):
        raise Lift3DError(f"batch --gpus {spec}: give a number of GPUs (1, 2, ...) or all")
    return int(spec)


def choose_gpus(spec: str) -> list[str]:
    """The devices of ``--gpus spec`` (``all`` or a count), one per worker; a Lift3DError a user can act on when
    CUDA is absent or fewer GPUs are visible than asked for."""
    count = gpu_count(spec)
    devices = visible_gpus()
    if not devices:
        raise Lift3DError(f"batch --gpus {spec}: no GPU is visible (torch finds no CUDA device); run without --gpus, "
                          "or on a machine with CUDA")
    if count is not None and count > len(devices):
        raise Lift3DError(f"batch --gpus {spec}: only {len(devices)} GPU(s) visible "
                          f"(CUDA_VISIBLE_DEVICES {','.join(devices)})")
    return devices[:count]


def gpu_cluster(devices: list[str], threads: int, env: dict[str, str], asynchronous: bool = False,
                silence_logs: int = logging.WARNING):
    """A Dask cluster on this machine of one worker process per device: worker ``i`` (named ``gpu<device>``) has
    ``CUDA_VISIBLE_DEVICES=devices[i]`` and ``env`` in its environment, ``threads`` threads and ``GPU: 1``.

    No memory limit: what a GPU worker holds in host memory is models and frames it is using, which Dask can
    neither spill nor free, and the default limit (a share of the host's memory) would pause or restart a worker
    while it loads a large checkpoint."""
    from distributed import Nanny, Scheduler, SpecCluster

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": ":0"}}
    workers = {f"gpu{device}": {"cls": Nanny, "options": {
        "host": "127.0.0.1", "nthreads": threads, "resources": {GPU_RESOURCE: 1}, "memory_limit": 0,
        "env": {**env, "CUDA_VISIBLE_DEVICES": device}}} for device in devices}
    return SpecCluster(workers=workers, scheduler=scheduler, asynchronous=asynchronous, silence_logs=silence_logs,
                       name="lift3d-gpus")


def task_runner(workers: int | None, address: str | None, api_url: str, threads: int | None = None,
                gpus: list[str] | None = None):
    """Prefect's task runner for a batch: an existing Dask scheduler (``address``), a cluster of one worker per GPU
    of ``gpus`` (:func:`gpu_cluster`, ``threads`` each, default :data:`GPU_WORKER_THREADS`), a LocalCluster of
    ``workers`` processes, or threads of this process (``threads``; default one with CUDA present, else up to four).

    The local clusters' workers (no dashboard) get ``api_url`` and Prefect's ephemeral mode off in their
    environment. The LocalCluster's workers have one thread each, and with CUDA present a ``GPU`` resource and one
    GPU each (round robin)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    env = {"PREFECT_API_URL": api_url, "PREFECT_SERVER_EPHEMERAL_ENABLED": "false"}
    if address or workers or gpus:
        from prefect_dask import DaskTaskRunner

        if address:
            check_api_reachable(address, api_url)
            return DaskTaskRunner(address=address)
        if gpus:
            return DaskTaskRunner(cluster_class=gpu_cluster, cluster_kwargs=dict(
                devices=list(gpus), threads=threads or GPU_WORKER_THREADS, env=env))
        kwargs = dict(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.WARNING, env=env)
        if count:
            kwargs.update(resources={GPU_RESOURCE: 1})
            if workers > count:
                logging.getLogger("lift3d").warning(f"{workers} workers share {count} GPU(s): a GPU may run up to "
                                                    f"{-(-workers // count)} heavy stages at once")
        return DaskTaskRunner(cluster_kwargs=kwargs)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=threads or (1 if count else min(4, os.cpu_count() or 1)))


def check_api_reachable(address: str, api_url: str) -> None:
    """Refuse a scheduler on another machine when the Prefect API listens on this machine's loopback only."""
    import ipaddress
    from urllib.parse import urlparse

    def loopback(host: str | None) -> bool:
        if host in (None, "", "localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    scheduler = urlparse(address if "://" in address else f"tcp://{address}").hostname
    if loopback(urlparse(api_url).hostname) and not loopback(scheduler):
        raise Lift3DError(f"batch: the workers of {address} cannot report to the Prefect API at {api_url} (this "
                          "machine's loopback); set PREFECT_API_URL to a Prefect server they can reach")


class WorkerSetup(WorkerPlugin):
    """Sets up each Dask worker before its first task: the project's settings (:data:`PROJECT_ENV`, where the worker
    has none of its own: a remote worker did not inherit this process's environment), and on a LocalCluster this
    batch started on several GPUs, worker ``i`` works on GPU ``i % gpus`` (``torch.cuda.set_device``: the backends'
    ``auto`` device is the current CUDA device), so workers spread over the GPUs instead of sharing the first; and it
    records when each task executes there (:meth:`transition`, for ``batch.json``'s timeline)."""

    name = "lift3d-worker-setup"

    def __init__(self, env: dict[str, str], gpus: int):
        self.env, self.gpus = env, gpus
        self.executing: dict[str, list] = {}  # Dask key -> [start, end] of its execution on this worker
        self.open: set[str] = set()  # keys executing, their end not yet seen
        self.worker = None

    def setup(self, worker) -> None:
        self.worker = worker
        for var, value in self.env.items():
            os.environ.setdefault(var, value)
        if self.gpus > 1 and isinstance(worker.name, int):
            import torch

            torch.cuda.set_device(worker.name % self.gpus)

    def transition(self, key, start: str, finish: str, *args, **kwargs) -> None:
        """Record each task's time in ``executing`` on this worker. The worker's state machine takes a task's
        resources (``GPU``) as it starts it and gives them back when its thread has returned, and it may start the
        next task before it marks the finished one ``memory``; so an interval ends at the first transition that
        finds its task no longer executing, and two tasks that need the one GPU never have overlapping intervals."""
        now = time.time()
        if self.open:
            executing = {str(ts.key) for ts in self.worker.state.executing}
            for done in self.open - executing:
                self.executing[done][1] = now
            self.open &= executing
        if finish == "executing":
            self.executing[str(key)] = [now, None]
            self.open.add(str(key))
