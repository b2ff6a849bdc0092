"""Where a project keeps its state, set up before Prefect or MLflow is imported.

Defaults keep everything inside the project: Prefect's ephemeral local mode with
SQLite under ``.lift3d/prefect`` (no server to start; ``PREFECT_API_URL`` points
at a real one), MLflow in ``.lift3d/mlflow.db`` (``MLFLOW_TRACKING_URI``
overrides), artifacts in ``data/artifacts`` (``LIFT3D_STORE`` or ``--store``
may name any fsspec URL, e.g. a team bucket).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    @property
    def state_dir(self) -> Path:
        return self.root / ".lift3d"

    @property
    def runs_dir(self) -> Path:
        return self.root / "data" / "runs"

    @property
    def pipeline_dir(self) -> Path:
        return self.root / "data" / "pipeline"

    @property
    def store_url(self) -> str:
        return os.environ.get("LIFT3D_STORE", str(self.root / "data" / "artifacts"))


def find_project(start: Path | None = None) -> Project:
    """The nearest directory (from ``start`` or the cwd upwards) holding ``params.yaml``; else the cwd."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "params.yaml").is_file():
            return Project(d)
    return Project(here)


def configure_environment(project: Project) -> None:
    """Point Prefect and MLflow at the project's state unless the user already did."""
    project.state_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(project.state_dir / "prefect"))
    # The ephemeral server's telemetry races its own SQLite migration ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{project.state_dir / 'mlflow.db'}")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # mlflow probes git; a missing git must not warn


# The demo profile (flows/demo.py runs it); here so that the CLI can read it before importing Prefect.
DEMO_SOURCE = "skimage:astronaut"
# CPU profile: 128x96 frames, 20k initial Gaussians, and a plain-3DGS schedule of 600 steps whose
# densification window and SH schedule are scaled down with it (3DGS's are sized for 30k steps).
DEMO_OVERRIDES = (
    "generate.backend=synthetic",
    "ingest.width=128",
    "ingest.height=96",
    "calibrate.max_points=20000",
    "train.distortion=false",
    "train.coarse_iterations=600",
    "train.fine_iterations=0",
    "train.batch_size=1",
    "train.densify_from=150",
    "train.densify_until=450",
    "train.opacity_reset_every=100000",
    "train.sh_degree_every=150",
)

PREFECT_BOOT_TIMEOUT_S = 180  # a first boot runs the SQLite migrations: ~16 s on an idle 2-core machine


def boot_prefect_in_background():
    """Start Prefect's ephemeral server now, in a thread, and return a function that waits for it and returns
    None, or the exception that stopped it (the caller can then run the stages without Prefect).

    Booting the server (a uvicorn subprocess and its SQLite migrations) takes seconds;
    started before torch and the stages are imported, it is ready by the time the flow
    runs. With ``PREFECT_API_URL`` set there is nothing to boot.
    """
    import threading

    if os.environ.get("PREFECT_API_URL"):
        return lambda: None
    errors: list[BaseException] = []

    def boot() -> None:
        try:
            from prefect.server.api.server import SubprocessASGIServer

            # A per-process singleton: the flow's client reuses it. The timeout is explicit: a loaded machine's first
            # boot can outlast Prefect's default of 20 s.
            SubprocessASGIServer().start(timeout=PREFECT_BOOT_TIMEOUT_S)
        except Exception as exc:  # returned by wait()
            errors.append(exc)

    thread = threading.Thread(target=boot, name="prefect-boot", daemon=True)
    thread.start()

    def wait() -> Exception | None:
        thread.join()
        return errors[0] if errors else None

    return wait
