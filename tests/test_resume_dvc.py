"""Process-level guarantees: a SIGKILLed run resumes from its finished stages; `dvc repro` reruns only what changed;
Prefect's temporary server ends with the CLI that started it, however the CLI ends."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

BIN = Path(sys.executable).parent


def _env(project: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "LIFT3D_"))}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _lift3d(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lift3d"), *args], cwd=project, env=_env(project), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_sigkill_during_training_then_resume(tiny_project):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["train"]["fine_iterations"] = 100_000  # long enough to be killed mid-way
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    log = tiny_project / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "lift3d"), "lift", "skimage:astronaut", "--no-track"], cwd=tiny_project,
                                env=_env(tiny_project), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while "train      MISS" not in log.read_text() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(3)  # well inside training
    assert proc.poll() is None, log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, Prefect's server subprocess included
    proc.wait()

    store = tiny_project / "data" / "artifacts"
    assert not (store / "train").exists() or not list((store / "train").rglob("*.json"))  # no train artifact
    verify = _lift3d(tiny_project, "cache", "verify")
    assert verify.returncode == 0 and "store clean" in verify.stdout

    params["train"]["fine_iterations"] = 10
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    again = _lift3d(tiny_project, "lift", "skimage:astronaut", "--no-track")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in ("ingest", "trajectory", "generate", "calibrate", "depth"):
        assert f"{stage:<10} HIT" in again.stdout + again.stderr
    assert "train      MISS" in again.stdout + again.stderr
    assert _lift3d(tiny_project, "cache", "verify").returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dvc", path=str(BIN)) is None, reason="dvc not installed in this environment")
def test_dvc_repro_after_editing_train_reruns_only_train_and_downstream(tiny_project):
    shutil.copy(REPO / "dvc.yaml", tiny_project / "dvc.yaml")
    env = _env(tiny_project)
    subprocess.run([str(BIN / "dvc"), "init", "--no-scm", "-q"], cwd=tiny_project, env=env, check=True)
    first = subprocess.run([str(BIN / "dvc"), "repro"], cwd=tiny_project, env=env, capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (tiny_project / "data" / "pipeline" / "metrics.json").is_file()

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["train"]["fine_iterations"] = 7
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params))
    second = subprocess.run([str(BIN / "dvc"), "repro"], cwd=tiny_project, env=env, capture_output=True, text=True,
                            timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    ran = {line.split("'")[1] for line in second.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"train", "export", "evaluate"}, second.stdout


# A CLI's first steps: boot the server, wait for it, then exit (or hang until killed).
_BOOT_THEN = textwrap.dedent("""
    import sys, time
    from flows import settings
    settings.configure_environment(settings.find_project())
    wait = settings.boot_prefect_in_background()
    print(settings._server.process.pid, settings._server.api_url, flush=True)
    print(wait(), flush=True)
    if sys.argv[1] == "sigkill":
        time.sleep(600)
""")


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an orphan's zombie may wait for a reaper that never comes)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


@pytest.mark.slow
@pytest.mark.parametrize("end", ["exit", "sigkill"])
def test_prefect_server_ends_with_the_cli(tiny_project, end):
    """The server child is stopped when the CLI exits, and stops itself when the CLI is SIGKILLed (no orphan)."""
    proc = subprocess.Popen([sys.executable, "-c", _BOOT_THEN, end], cwd=tiny_project, env=_env(tiny_project),
                            stdout=subprocess.PIPE, text=True)
    pid, api_url = proc.stdout.readline().split()
    assert proc.stdout.readline().strip() == "None"  # it answered its health check
    if end == "sigkill":
        proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + (10 if end == "sigkill" else 0)  # a clean exit reaps it before returning
    while _running(int(pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _running(int(pid))
    with pytest.raises(OSError):  # nothing serves on its port any more
        urllib.request.urlopen(f"{api_url}/health", timeout=5)


@pytest.mark.slow
def test_a_prefect_server_that_cannot_start_says_why_in_one_line(tiny_project, monkeypatch):
    from flows.settings import PrefectServer

    monkeypatch.setenv("PREFECT_HOME", str(tiny_project / ".lift3d" / "prefect"))
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{tiny_project}/no/such/dir/x.db")
    server = PrefectServer(tiny_project / "server.log")
    error = server.wait()
    assert isinstance(error, RuntimeError) and server.process.poll() is not None
    message = str(error)
    assert "\n" not in message and "unable to open database file" in message
    assert str(tiny_project / "server.log") in message
