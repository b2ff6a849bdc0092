"""``lift3d batch``: the command (registered in flows/cli.py); the flow is flows/batch.py.

Imports nothing heavy at module level, so that the Prefect server boots before ``prefect`` is imported.
"""

from __future__ import annotations

import atexit
import os
from contextlib import contextmanager
from pathlib import Path

import typer

SetOpt = typer.Option(None, "--set", help="Override params.yaml: section.key=value (repeatable).")
ParamsOpt = typer.Option(None, "--params", help="params.yaml to use (default: the project's).")
_server = None  # (PREFECT_HOME, PrefectServer) that one_prefect_api started in this process


def batch_command(
    inputs: str = typer.Argument(..., help="A folder of images, a text file listing them (paths or skimage:NAME, "
                                 "one a line) or a glob (quote it)."),
    batch_name: str | None = typer.Option(None, "--batch-name", help="Batch folder under data/runs (default: "
                                          "the folder's, list's or glob's name)."),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Run on a Dask LocalCluster of N worker "
                                       "processes (default: threads of this process)."),
    address: str | None = typer.Option(None, "--address", help="Run on an existing Dask scheduler, tcp://host:port."),
    gpus: str | None = typer.Option(None, "--gpus", help="N or all: one Dask worker per GPU, each seeing only its "
                                    "own, one heavy stage per GPU at a time; with --address, the GPUs its workers "
                                    "must declare (--resources GPU=1)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads of the default runner (default: "
                                       "one with CUDA present, else up to four), or of each --gpus worker "
                                       "(default: two, CPU stages beside the heavy one)."),
    set_: list[str] | None = SetOpt,
    store: str | None = typer.Option(None, "--store", help="Artifact store: a path or an fsspec URL."),
    params: Path | None = ParamsOpt,
    demo_profile: bool = typer.Option(False, "--demo", help="Apply the demo profile (as `lift3d demo`)."),
    profile: str | None = typer.Option(None, "--profile", help="Named overrides under --set: cpu (the demo's "
                                                               "CPU-sized profile)."),
    no_track: bool = typer.Option(False, "--no-track", help="Do not record MLflow runs."),
):
    """Lift every image of a folder, list or glob, fanned out over threads or a Dask cluster; reruns do only what
    is missing. Writes data/runs/BATCH/batch.json; exit code 1 when any image failed."""
    from flows import cli
    from flows.settings import DEMO_OVERRIDES, boot_prefect_in_background, stop_prefect_server
    from lift3d_core.errors import Lift3DError

    if workers and (address or gpus):
        raise Lift3DError("batch: give --workers (a LocalCluster), --gpus (a worker per GPU) or --address (an "
                          "existing scheduler), not --workers with another")
    project = cli._project()
    prefect_ready = boot_prefect_in_background()  # boots while the inputs are listed and the stages import
    try:
        from flows.batch import choose_gpus, find_inputs, gpu_count
        from lift3d_core.pipeline import stage_configs

        # --gpus with --address: the scheduler's workers must declare that many (all: at least one); the flow checks
        devices = choose_gpus(gpus) if gpus and not address else None
        required = len(devices) if devices else (gpu_count(gpus) or 1) if gpus else 0
        sources = find_inputs(inputs)
        from flows.estimate import profile_overrides

        p = cli._params(project, params, set_, DEMO_OVERRIDES if demo_profile else profile_overrides(profile))
        # every image needs the checkpoints: a missing one is one line here, not a failure per image
        for config in stage_configs(p).values():
            if hasattr(config, "models"):
                config.models()
    except Lift3DError:
        stop_prefect_server()  # nothing will run
        raise
    from flows.batch import batch, batch_body, task_runner

    name = batch_name or _default_name(inputs)
    args = (sources, p, name, store or project.store_url, str(project.state_dir), str(project.runs_dir),
            not no_track)
    if not no_track:
        from tasks import tracking

        tracking.warm_up()
    if cli._prefect_usable(prefect_ready):
        with one_prefect_api() as api_url:
            runner = task_runner(workers, address, api_url, threads, devices)
            report = batch.with_options(task_runner=runner)(*args, gpus=required)
    else:
        report = batch_body(*args, use_prefect=False)
    print_report(report, cli.console)
    if report["counts"]["failed"]:
        raise typer.Exit(1)


def _default_name(spec: str) -> str:
    """The folder's name, or the list's or glob's stem, as a safe folder name."""
    import re

    path = Path(spec.rstrip("/"))
    name = path.resolve().name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "batch"


@contextmanager
def one_prefect_api():
    """Yield the Prefect API URL the whole batch reports to: ``PREFECT_API_URL`` (the CLI's temporary server or the
    user's), else (``prefect`` was imported before the CLI could point it at its own server, as in tests) a
    temporary server started here, kept for later batches of this process (one per ``PREFECT_HOME``). Never Prefect's ephemeral mode, which each Dask
    worker process would start again on the same SQLite file. Flow-run heartbeats are off on a temporary server
    (see flows/cli.py ``_run_flow``)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.settings import PrefectServer, booted_prefect_server

    url = PREFECT_API_URL.value()
    if url:
        updates = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None} if booted_prefect_server() else {}
        with temporary_settings(updates=updates):
            yield url
        return
    from lift3d_core.errors import Lift3DError

    global _server
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    if _server is None or _server[0] != home or _server[1].process.poll() is not None:
        if _server is not None:
            _server[1].stop()
        _server = (home, PrefectServer(home / "server.log"))
        atexit.register(_server[1].stop)
    error = _server[1].wait()
    if error is not None:
        raise Lift3DError(f"batch: Prefect's temporary server did not start ({error}); set PREFECT_API_URL")
    with temporary_settings(updates={PREFECT_API_URL: _server[1].api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield _server[1].api_url


def print_report(report: dict, console) -> None:
    """The final table: every input with its status, reason and run summary; then the counts."""
    from rich.table import Table

    colours = {"done": "green", "reused": "cyan", "failed": "red"}
    table = Table(title=f"batch {report['batch']}  ({report['wall_seconds']:.1f} s)")
    for col in ("input", "status", "computed", "reason / summary"):
        table.add_column(col, overflow="fold")
    for e in report["inputs"]:
        table.add_row(Path(e["source"]).name if not e["source"].startswith("skimage:") else e["source"],
                      f"[{colours.get(e['status'], 'white')}]{e['status']}", ", ".join(e["computed"]),
                      e["reason"] or e["summary"] or "")
    console.print(table)
    counts = report["counts"]
    console.print(f"{counts['done']} done, {counts['reused']} reused, {counts['failed']} failed; {report['path']}")
