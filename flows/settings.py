"""Where a project keeps its state, set up before Prefect or MLflow is imported.

Defaults keep everything inside the project: Prefect's temporary local server (a
child process of the CLI, see :class:`PrefectServer`) with SQLite under
``.lift3d/prefect`` (``PREFECT_API_URL`` points at a real one instead), MLflow in
``.lift3d/mlflow.db`` (``MLFLOW_TRACKING_URI`` overrides), artifacts in
``data/artifacts`` (``LIFT3D_STORE`` or ``--store`` may name any fsspec URL, e.g.
a team bucket).
"""

from __future__ import annotations

import os
import time
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
    """Point Prefect, MLflow and torch.compile's cache at the project's state unless the user already did."""
    project.state_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(project.state_dir / "prefect"))
    # The ephemeral server's telemetry races its own SQLite migration ("database is locked").
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{project.state_dir / 'mlflow.db'}")
    # checkpoint paths in params.yaml are the project's, and their digests are cached with its state
    os.environ.setdefault("LIFT3D_PROJECT", str(project.root))
    os.environ.setdefault("LIFT3D_DIGEST_CACHE", str(project.state_dir / "checkpoint-digests.json"))
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")  # mlflow probes git; a missing git must not warn
    # torch.compile's cache (inductor's graphs and the Triton kernels it generates) with the project rather than in
    # /tmp/torchinductor_$USER, which a reboot or a fresh container empties: the GPU trainer's graphs cost ~1-2
    # minutes to compile and seconds to load (bench/RESULTS.md). Its keys include the torch version and the device,
    # so the folder can be copied to machines of the same kind. Triton's own cache (our kernels in
    # splat/field_triton.py) already lives in ~/.triton. A user's setting wins; so does torch's default where the
    # project's path has white space, which inductor's C++ (CPU) build commands do not quote.
    cache = project.state_dir / "compile-cache" / "inductor"
    if not any(c.isspace() for c in str(cache)):
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))


# The demo profile (flows/demo.py runs it); here so that the CLI can read it before importing Prefect.
DEMO_SOURCE = "skimage:astronaut"
# CPU profile of the method itself: 128x96 frames rendered with the default per-frame distortion (the inconsistency
# of a generated video, DISTORTION_LEVELS["default"]), 20k initial Gaussians, and distortion-aware 3DGS with
# params.yaml's recipe over a schedule scaled down to 1,000 steps (250 coarse + 750 fine: the densification window,
# SH schedule and frame curriculum shrink with it, the curriculum ending at 40% of the fine stage as in params.yaml).
DEMO_OVERRIDES = (
    "generate.backend=synthetic",
    "generate.synthetic.distortion=0.03",
    "ingest.width=128",
    "ingest.height=96",
    "calibrate.max_points=20000",
    "train.distortion=true",
    "train.coarse_iterations=250",
    "train.fine_iterations=750",
    "train.batch_size=2",
    "train.densify_from=100",
    "train.densify_until=600",
    "train.opacity_reset_every=100000",
    "train.sh_degree_every=150",
    "train.curriculum_steps=300",
)

PREFECT_BOOT_TIMEOUT_S = 180  # a first boot runs the SQLite migrations: ~16 s on an idle 2-core machine
# What Prefect's own ephemeral launcher sets: no UI, only the services an ephemeral server runs, the last server of
# this process tree.
_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
# Automations (triggers and their actions) need a server that outlives one run; starting them costs the temporary
# server about a second of CPU just when the flow's first requests arrive. A user's setting wins.
_SERVER_DEFAULTS = {"PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false"}
_SERVE = "import sys; from flows.settings import serve_prefect_api as s; s(int(sys.argv[1]), int(sys.argv[2]))"


class PrefectServer:
    """Prefect's API server as a child process on a port of this machine, for the life of this process.

    The child is started at once, without importing ``prefect`` here: its imports and SQLite
    migrations (seconds) then run on another core while this process imports torch and the stages.
    The listening socket is bound here and handed to the child, so the URL is known before the child
    is up (no port race) and requests made early wait in the socket's backlog. The child exits when
    :meth:`stop` is called (at this process's exit) or, should this process be killed, on its own
    within a second (it watches its parent). Its output goes to ``log_path``.
    """

    def __init__(self, log_path: Path, timeout_s: float = PREFECT_BOOT_TIMEOUT_S):
        import socket
        import subprocess
        import sys

        self.log_path, self.timeout_s = log_path, timeout_s
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, open(log_path, "wb") as log:
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            self.port = sock.getsockname()[1]
            self.process = subprocess.Popen([sys.executable, "-c", _SERVE, str(sock.fileno()), str(os.getpid())],
                                            pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            env={**_SERVER_DEFAULTS, **os.environ, **_SERVER_ENV})
        self._t0 = time.monotonic()
        self._ready: Exception | bool | None = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self) -> Exception | None:
        """Block until the server answers its health check: None, or the exception saying why it never will."""
        import urllib.error
        import urllib.request

        if self._ready is not False:
            return self._ready
        while True:
            if self.process.poll() is not None:
                self._ready = RuntimeError(f"its process exited with code {self.process.returncode}"
                                           f"{self._last_error()}; see {self.log_path}")
                break
            left = self.timeout_s - (time.monotonic() - self._t0)
            if left <= 0:
                self.stop()
                self._ready = TimeoutError(f"it did not answer within {self.timeout_s:.0f} s; see {self.log_path}")
                break
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=min(left, 2.0)) as response:
                    if response.status == 200:
                        self._ready = None
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)  # refused (the child is gone) or timed out in the backlog (still booting)
        return self._ready

    def _last_error(self) -> str:
        """``: <the last exception line of the log>``, or nothing."""
        import re

        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.is_file() else []
        errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
        return f": {errors[-1][:200]}" if errors else ""

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 5 s) and reap it; safe to call twice."""
        import subprocess

        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


_server: PrefectServer | None = None  # this process's server, if it booted one


def boot_prefect_in_background():
    """Start Prefect's API server now, as a child process, and return a function that waits for it and returns
    None, or the exception that stopped it (the caller can then run the stages without Prefect).

    ``PREFECT_API_URL`` is pointed at the child before ``prefect`` is first imported, and the child is stopped when
    this process exits. With ``PREFECT_API_URL`` already set there is nothing to boot; with ``prefect`` already
    imported (its settings are fixed at import) Prefect starts its own temporary server when the flow runs.
    """
    import atexit
    import sys

    global _server
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return lambda: None
    _server = PrefectServer(Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect") / "server.log")
    atexit.register(_server.stop)
    os.environ["PREFECT_API_URL"] = _server.api_url
    os.environ.setdefault("PREFECT_UI_URL", "")  # it serves no UI: no "View at <dead link>" in the log
    return _server.wait


def booted_prefect_server() -> bool:
    """Whether this process started the Prefect server it uses (rather than a user's ``PREFECT_API_URL``)."""
    return _server is not None


def stop_prefect_server() -> None:
    """Stop the server :func:`boot_prefect_in_background` started (when no flow will run after all)."""
    global _server
    if _server is not None:
        _server.stop()
        if os.environ.get("PREFECT_API_URL") == _server.api_url:
            del os.environ["PREFECT_API_URL"]
            if os.environ.get("PREFECT_UI_URL") == "":
                del os.environ["PREFECT_UI_URL"]
        _server = None


def serve_prefect_api(fd: int, parent_pid: int) -> None:
    """The server child's entry point: serve Prefect's API on the listening socket ``fd`` while ``parent_pid`` lives.

    The parent watch starts before the seconds-long imports, so a parent killed at any moment takes the server
    with it. Exit code 3 (uvicorn's) when the app cannot start.
    """
    import socket
    import sys
    import threading

    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    import uvicorn

    config = uvicorn.Config("prefect.server.api.server:create_app", factory=True, log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    server.run(sockets=[socket.socket(fileno=fd)])
    if not server.started:
        sys.exit(3)


def _exit_with_parent(parent_pid: int) -> None:
    import signal

    while os.getppid() == parent_pid:  # an orphan is re-parented: its parent pid changes
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn shuts down cleanly (SQLite closed) ...
    time.sleep(10)
    os._exit(1)  # ... or not at all
