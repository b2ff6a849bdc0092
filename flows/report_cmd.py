"""``lift3d report RUN`` and ``lift3d render RUN``: the run report page and the fly-through videos of a finished
run (``flows/cli.py`` registers them). RUN is a run name under ``data/runs`` or a run folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from flows.settings import configure_environment, find_project
from lift3d_core.errors import Lift3DError

console = Console()
RunArg = typer.Argument(..., help="Run name (a folder of data/runs) or the path of a run folder.")


def run_folder(run: str) -> Path:
    """The folder of run ``run``: a path to a folder holding ``summary.json``, else ``data/runs/<run>``."""
    project = find_project()
    configure_environment(project)
    for candidate in (Path(run), project.runs_dir / run):
        if (candidate / "summary.json").is_file():
            return candidate
    raise Lift3DError(f"no run {run!r}: neither {run} nor {project.runs_dir / run} holds a summary.json "
                      "(a finished `lift3d lift` or `lift3d demo` writes one)")


def report(run: str = RunArg):
    """Write the run's report.html: one page that opens offline (input, frames, cameras, depth, training,
    held-out metrics, per-stage cache and time, links to the PLY and videos)."""
    from tasks.report import write_run_report

    files = write_run_report(run_folder(run))
    console.print(f"report: {files.page}")


def render(run: str = RunArg,
           fly_frames: int | None = typer.Option(None, "--fly-frames", min=2,
                                                 help="Fly-through frames (default: one per step of the tree)."),
           orbit_frames: int = typer.Option(96, "--orbit-frames", min=1, help="Orbit frames."),
           fps: float = typer.Option(24.0, "--fps", min=1.0),
           max_width: int | None = typer.Option(None, "--max-width", min=2,
                                                help="Scale frames down to this width (default: the run's frame size "
                                                     "on a GPU, 320 px on the CPU)."),
           orbit_degrees: float = typer.Option(12.0, "--orbit-degrees", min=0.0, max=60.0,
                                               help="How far the orbit turns from the input view."),
           backend: str = typer.Option("auto", "--backend", help="Rasterizer: auto (gsplat on a GPU), torch, gsplat.")):
    """Render MP4 videos (H.264) of the run's canonical Gaussians: a fly-through along the camera tree and an
    orbit around the input view, written into the run folder."""
    folder = run_folder(run)
    from tasks.render import render_run

    for video in render_run(folder, fly_frames=fly_frames, orbit_frames=orbit_frames, fps=fps, max_width=max_width,
                            orbit_degrees=orbit_degrees, backend=backend):
        console.print(f"{video.path}: {video.frames} frames at {video.width}x{video.height}")
    from tasks.report import REPORT, write_run_report

    if (folder / REPORT).is_file():  # its Files section now links the videos
        write_run_report(folder)
