"""``lift3d view RUN|scene.ply``: the local web viewer (``flows/cli.py`` registers it). RUN is a run name under
``data/runs`` or a run folder; a ``.ply`` file is any standard 3DGS PLY (the Gaussians alone, orbit controls)."""

from __future__ import annotations

import os
import sys
import webbrowser
from pathlib import Path

import typer
from rich.console import Console

from lift3d_core.errors import Lift3DError

console = Console()
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def view(target: str = typer.Argument(..., help="Run name (a folder of data/runs), a run folder, or a 3DGS .ply."),
         host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
         port: int = typer.Option(8765, "--port", min=0, max=65535, help="Port (0: any free one)."),
         no_browser: bool = typer.Option(False, "--no-browser", help="Do not open a browser; print the URL.")):
    """Serve a local web viewer of the run: its Gaussians, the generated frames' cameras (click one for its frame)
    and the distortion field of a chosen frame. Stop it with Ctrl-C."""
    from lift3d_core.viewer import ViewerServer, scene_from_ply

    if target.lower().endswith(".ply"):
        if not Path(target).is_file():
            raise Lift3DError(f"PLY file not found: {target}")
        scene = scene_from_ply(target)
    else:
        from flows.report_cmd import run_folder
        from tasks.view import load_run_scene

        scene = load_run_scene(run_folder(target))
    server = ViewerServer(scene, host, port)
    if host not in LOOPBACK:
        console.print(f"[yellow]listening on {host}: anyone who reaches this machine can see the scene[/yellow]")
    console.print(f"{scene.title}: {scene.gaussians.num} Gaussians, {len(scene.cameras)} cameras")
    console.print(f"viewer at {server.url}  (Ctrl-C stops it)")
    if not no_browser and _has_display():
        webbrowser.open(server.url)
    elif not no_browser:  # a console browser would take over this terminal
        console.print(f"no display here: open {server.url} in a browser (from another machine: "
                      f"ssh -L {server.server_address[1]}:127.0.0.1:{server.server_address[1]} this-host)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
