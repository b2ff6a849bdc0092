"""``lift3d``: the command line.

Every user error is one line on stderr and exit code 2; nothing is written to the
store for an input that fails validation.
"""

from __future__ import annotations

import atexit
import gc
import json
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from flows import report_cmd, view_cmd
from flows.batch_cli import batch_command
from flows.settings import (
    Project,
    boot_prefect_in_background,
    booted_prefect_server,
    configure_environment,
    find_project,
    stop_prefect_server,
)
from lift3d_core.errors import Lift3DError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Lift a single image to 3D Gaussians.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and maintain the artifact store.")
app.add_typer(cache_app, name="cache")
checkpoints_app = typer.Typer(no_args_is_help=True, help="Check the model weights under checkpoints/.")
app.add_typer(checkpoints_app, name="checkpoints")
console = Console()

SetOpt = typer.Option(None, "--set", help="Override params.yaml: section.key=value (repeatable).")
StoreOpt = typer.Option(None, "--store", help="Artifact store: a path or an fsspec URL (default data/artifacts).")
ParamsOpt = typer.Option(None, "--params", help="params.yaml to use (default: the project's).")


def _project() -> Project:
    project = find_project()
    configure_environment(project)
    return project


def _params(project: Project, params_path: Path | None, overrides: list[str] | None,
            profile: tuple[str, ...] = ()) -> dict:
    from lift3d_core.config import apply_overrides, load_params
    from lift3d_core.pipeline import stage_configs

    params = load_params(params_path or project.params_path)
    params = apply_overrides(params, [*profile, *(overrides or [])])
    stage_configs(params)  # validate every section before anything runs
    return params


def _check_source(source: str) -> None:
    from lift3d_core.image import load_image

    load_image(source)  # a missing, truncated or non-image file fails here, before any flow or store write


def _run_name(name: str) -> str:
    from lift3d_core.pipeline import check_run_name

    return check_run_name(name)  # data/runs/<name>: never a path outside it


def _report(summary: dict) -> None:
    table = Table(title=f"run {summary['run']}  ({summary['wall_seconds']:.1f} s)")
    for col in ("stage", "cache", "seconds", "key", "why"):
        table.add_column(col)
    for name, s in summary["stages"].items():
        why = "" if s["hit"] else "; ".join(s["reason"])
        table.add_row(name, "[green]hit" if s["hit"] else "[yellow]computed", f"{s['seconds']:.1f}",
                      s["key"][:12], why[:80])
    console.print(table)
    if summary["metrics"]:
        console.print("metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in summary["metrics"].items()))
    for name, path in summary["outputs"].items():
        console.print(f"{name}: {path}")


@app.command()
def lift(image: str = typer.Argument(..., help="Image file, or skimage:NAME for a bundled photograph."),
         run_name: str | None = typer.Option(None, "--run-name"), set_: list[str] | None = SetOpt,
         store: str | None = StoreOpt, params: Path | None = ParamsOpt,
         no_track: bool = typer.Option(False, "--no-track", help="Do not record an MLflow run."),
         profile: str | None = typer.Option(None, "--profile", help="Named overrides under --set: cpu (the demo's "
                                                                    "CPU-sized profile).")):
    """Lift one image to 3D Gaussians (every stage cached in the store)."""
    from flows.estimate import print_estimate, profile_overrides

    project = _project()
    _check_source(image)
    name = _run_name(run_name or Path(image.replace("skimage:", "")).stem)
    overrides = profile_overrides(profile)
    # The server boots in a child process while torch, Prefect and the stages import here.
    prefect_ready = boot_prefect_in_background()
    try:
        p = _params(project, params, set_, overrides)
        _preflight(p, image)
        print_estimate(console, p, image, store or project.store_url)
    except Lift3DError:
        stop_prefect_server()  # nothing will run
        raise
    from flows.lift import lift as lift_flow
    from flows.lift import lift_body
    from tasks import tracking

    args = (image, p, name, store or project.store_url, str(project.state_dir), str(project.runs_dir), not no_track)
    if not no_track:
        tracking.warm_up()  # MLflow's imports overlap the wait for Prefect's server
    summary = _run_flow(lift_flow, *args) if _prefect_usable(prefect_ready) else lift_body(*args, use_prefect=False)
    _report(summary)


def _preflight(params: dict, source: str) -> None:
    """Plan every stage before anything runs: a setting out of range, an unknown backend or a missing or
    unreadable checkpoint (their digests enter the keys) stops the command here, in one line, not inside a flow."""
    from lift3d_core.pipeline import plan

    plan(params, source)


def _run_flow(flow, *args):
    """Call ``flow``; on the temporary server this process booted, without flow-run heartbeats.

    Heartbeats let a lasting server's automations notice a crashed run; the temporary server runs none and ends with
    this process, and stopping the heartbeat thread costs up to a second when the flow ends.
    """
    if not booted_prefect_server():
        return flow(*args)
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        return flow(*args)


def _prefect_usable(prefect_ready) -> bool:
    """Wait for the Prefect server; if it could not start, say so and go on without Prefect (the stages, their
    cache keys, the store and MLflow do not depend on it)."""
    error = prefect_ready()
    if error is None:
        return True
    console.print(f"[yellow]Prefect's temporary server did not start ({type(error).__name__}: "
                  f"{str(error).splitlines()[0][:400]}); running the stages without Prefect.[/yellow] "
                  "Set PREFECT_API_URL to use a running server.")
    return False


@app.command()
def demo(run_name: str = typer.Option("demo", "--run-name"), set_: list[str] | None = SetOpt,
         store: str | None = StoreOpt, params: Path | None = ParamsOpt,
         no_track: bool = typer.Option(False, "--no-track")):
    """The synthetic scene from a bundled photograph, with held-out ground-truth evaluation (no weights)."""
    from flows.settings import DEMO_OVERRIDES, DEMO_SOURCE

    project = _project()
    _run_name(run_name)
    # The server boots in a child process while torch, Prefect and the stages import here.
    prefect_ready = boot_prefect_in_background()
    try:
        p = _params(project, params, set_, DEMO_OVERRIDES)
        _preflight(p, DEMO_SOURCE)
    except Lift3DError:
        stop_prefect_server()  # nothing will run
        raise
    _check_source(DEMO_SOURCE)  # cannot fail; the photo's first decoding (0.3 s) then happens before the server is up
    console.print(f"demo profile over params.yaml: {' '.join(DEMO_OVERRIDES)}")
    from flows.estimate import print_estimate

    print_estimate(console, p, DEMO_SOURCE, store or project.store_url)
    from flows.demo import demo as demo_flow
    from flows.lift import lift_body
    from tasks import tracking

    if not no_track:
        tracking.warm_up()  # MLflow's imports overlap the wait for Prefect's server
    if _prefect_usable(prefect_ready):
        summary = _run_flow(demo_flow, p, run_name, store or project.store_url, str(project.state_dir),
                            str(project.runs_dir), DEMO_SOURCE, not no_track)
    else:
        summary = lift_body(DEMO_SOURCE, p, run_name, store or project.store_url, str(project.state_dir),
                            str(project.runs_dir), not no_track, use_prefect=False)
    _report(summary)


app.command("batch")(batch_command)


@app.command()
def stage(name: str = typer.Argument(..., help="Stage to bring up to date (for dvc.yaml)."),
          set_: list[str] | None = SetOpt, store: str | None = StoreOpt, params: Path | None = ParamsOpt):
    """Run one stage (and any missing upstream one) for params.yaml's `input` image; writes data/pipeline/NAME.json."""
    from flows.lift import make_context, run_stages
    from lift3d_core.pipeline import STAGES

    if name not in STAGES:
        raise Lift3DError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    project = _project()
    p = _params(project, params, set_)
    source, run_name = p["input"]["image"], _run_name(p["input"].get("run_name", "dvc"))
    _check_source(source)
    t0 = time.perf_counter()
    ctx = make_context(source, p, run_name, store or project.store_url, str(project.state_dir), str(project.runs_dir))
    results = run_stages(ctx, until=name, use_prefect=False)
    r = results[name]
    project.pipeline_dir.mkdir(parents=True, exist_ok=True)
    pointer = {"stage": name, "key": r.key, "store": ctx.store_url, "outputs": r.outputs}
    (project.pipeline_dir / f"{name}.json").write_text(json.dumps(pointer, indent=2, sort_keys=True) + "\n")
    if name == "evaluate":
        (project.pipeline_dir / "metrics.json").write_text(json.dumps(r.metrics, indent=2, sort_keys=True) + "\n")
    console.print(f"{name}: {'hit' if r.hit else 'computed'} {r.key[:12]} ({time.perf_counter() - t0:.1f} s)")


@app.command()
def status(image: str | None = typer.Argument(None, help="Image (default: params.yaml's input.image)."),
           set_: list[str] | None = SetOpt, store: str | None = StoreOpt, params: Path | None = ParamsOpt,
           demo_profile: bool = typer.Option(False, "--demo", help="Apply the demo profile (as `lift3d demo`)."),
           profile: str | None = typer.Option(None, "--profile", help="Named overrides under --set: cpu (the demo's "
                                                                      "CPU-sized profile).")):
    """What is cached and what would run, and for each key that moved since the last run of this image, why."""
    from flows.estimate import profile_overrides
    from flows.settings import DEMO_OVERRIDES, DEMO_SOURCE
    from lift3d_core.pipeline import explain_miss, last_run_docs, plan
    from lift3d_core.store import ArtifactStore

    project = _project()
    p = _params(project, params, set_, DEMO_OVERRIDES if demo_profile else profile_overrides(profile))
    source = image or (DEMO_SOURCE if demo_profile else p["input"]["image"])
    s = ArtifactStore(store or project.store_url)
    planned = plan(p, source)
    last = last_run_docs(project.state_dir, planned)
    table = Table(title=f"{source} -> {s.url}")
    for col in ("stage", "key", "state", "since the last run"):
        table.add_column(col)
    moved = {}
    for name, stage_plan in planned.items():
        cached = s.exists(name, stage_plan.key)
        previous = last.get(name)
        if previous is not None and previous != stage_plan.doc:
            moved[name] = explain_miss(previous, stage_plan.doc)
        since = "no earlier run" if previous is None else "moved" if name in moved else "same key"
        table.add_row(name, stage_plan.key[:16], "[green]cached" if cached else "[yellow]would run", since)
    console.print(table)
    for name, reasons in moved.items():  # plain lines: a narrow terminal wraps them, never cuts them
        typer.echo(f"{name} moved: {'; '.join(reasons)}")


@cache_app.command("ls")
def cache_ls(store: str | None = StoreOpt, stage_name: str | None = typer.Option(None, "--stage")):
    """List artifacts."""
    from lift3d_core.store import ArtifactStore

    s = ArtifactStore(store or _project().store_url)
    table = Table(title=s.url)
    for col in ("stage", "key", "size", "created"):
        table.add_column(col)
    total = 0
    for info in s.ls(stage_name):
        total += info.size_bytes
        table.add_row(info.stage, info.key[:16], f"{info.size_bytes / 1e6:.2f} MB", str(info.created))
    console.print(table)
    console.print(f"total {total / 1e6:.1f} MB")


@cache_app.command("verify")
def cache_verify(store: str | None = StoreOpt):
    """Check every artifact's digests; exit 1 if any is corrupt."""
    from lift3d_core.store import ArtifactStore

    s = ArtifactStore(store or _project().store_url)
    problems = s.verify()
    n = len(s.ls())
    if problems:
        for prob in problems:
            console.print(f"[red]CORRUPT[/red] {prob}")
        raise typer.Exit(1)
    console.print(f"store clean: {n} artifacts verified in {s.url}")


@cache_app.command("gc")
def cache_gc(store: str | None = StoreOpt, dry_run: bool = typer.Option(False, "--dry-run"),
             grace_hours: float = typer.Option(1.0, "--grace-hours", help="Keep temporary files younger than this.")):
    """Remove what crashed or killed runs left behind (never a committed artifact)."""
    from lift3d_core.store import ArtifactStore

    s = ArtifactStore(store or _project().store_url)
    removed = s.gc(dry_run=dry_run, grace_s=grace_hours * 3600)
    for path in removed:
        console.print(("would remove " if dry_run else "removed ") + str(path))
    console.print(f"{len(removed)} item(s)")


RootOpt = typer.Option(None, "--root", help="Checkpoint folder (default: where params.yaml points, else the project's "
                                            "checkpoints/).")
# where params.yaml names each checkpoint's file
_CHECKPOINT_SETTINGS = {"motionctrl_svd": ("generate", "motionctrl_svd"), "mast3r": ("calibrate", "mast3r"),
                        "depth_anything_v2": ("depth", "depth_anything_v2")}


@checkpoints_app.command("verify")
def checkpoints_verify(root: Path | None = RootOpt, params: Path | None = ParamsOpt):
    """Report each checkpoint present, missing, damaged or mismatched; exit 1 unless every one is present."""
    from lift3d_core.checkpoints import CHECKPOINTS, verify

    project = _project()
    folder = root or project.root / "checkpoints"
    paths = {}
    if root is None:  # the files params.yaml points at, relative to the project
        p = _params(project, params, [])
        for name, (stage, section) in _CHECKPOINT_SETTINGS.items():
            value = p.get(stage, {}).get(section, {}).get("checkpoint")
            if value:
                paths[name] = value if Path(value).is_absolute() else project.root / value
    table = Table(title=str(folder))
    for col in ("checkpoint", "file", "status", "used by"):
        table.add_column(col)
    results = verify(folder, paths=paths)
    for name, status in results:
        colour = "green" if status == "present" else "red" if status == "missing" else "yellow"
        spec = CHECKPOINTS[name]
        table.add_row(name, str(paths.get(name, spec.filename)), f"[{colour}]{status}", spec.used_by)
    console.print(table)
    for name, status in results:
        if status != "present":
            console.print(f"{name}: get {CHECKPOINTS[name].filename} from {CHECKPOINTS[name].source}")
    if any(status != "present" for _, status in results):
        raise typer.Exit(1)


app.command()(report_cmd.report)
app.command()(report_cmd.render)
app.command()(view_cmd.view)


def main() -> None:
    # Runs last at exit: the interpreter's teardown then skips garbage-collecting the millions of objects torch,
    # Prefect and MLflow made (about a second on two cores); nothing is left to collect that would be written.
    atexit.register(gc.freeze)
    try:
        code = app(standalone_mode=False)  # without standalone mode click returns a typer.Exit's code
    except Lift3DError as exc:
        print(f"lift3d: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
