"""Shared fixtures: a tiny project (params.yaml sized for seconds on a CPU) in a temp dir."""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# Before any test module imports Prefect (whose settings are read then): a test process that has imported Prefect
# starts Prefect's own temporary server in the CLI, and on a loaded 2-core CI machine it can take minutes to come up.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")

# The smallest configuration that still runs every stage for real: 2 presets x 2 levels, 4 frames
# per clip, 48x36 frames, a few dozen training steps.
TINY_OVERRIDES = {
    "input": {"image": "skimage:astronaut", "run_name": "tiny"},
    "ingest": {"width": 48, "height": 36},
    "trajectory": {"presets": ["U", "Round-RI_90"], "levels": 2, "frames_per_clip": 4},
    "calibrate": {"max_points": 3000},
    "train": {"coarse_iterations": 15, "fine_iterations": 15, "densify_from": 10, "densify_every": 10,
              "densify_until": 30, "spatial_resolution": 16, "frame_resolution": 8, "multires": [1, 2],
              "backend": "torch"},
    "export": {"preview_views": 2, "backend": "torch"},
    "evaluate": {"views": 2, "train_views": 2, "backend": "torch"},
}


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in TINY_OVERRIDES.items():
        params[section] = {**params[section], **copy.deepcopy(values)}
    return params


@pytest.fixture
def tiny_project(tmp_path, monkeypatch):
    """A project dir with a tiny params.yaml; Prefect/MLflow state and the store live inside it."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    monkeypatch.chdir(tmp_path)
    clear_project_env(monkeypatch)
    return tmp_path


# What configure_environment() sets for a project: cleared so that no test's project leaks into another's.
PROJECT_ENV = ("PREFECT_HOME", "MLFLOW_TRACKING_URI", "LIFT3D_STORE", "PREFECT_API_URL", "TORCHINDUCTOR_CACHE_DIR",
               "LIFT3D_PROJECT", "LIFT3D_DIGEST_CACHE")


def clear_project_env(mp: pytest.MonkeyPatch) -> None:
    """Unset :data:`PROJECT_ENV` under ``mp``. configure_environment() sets these with os.environ.setdefault;
    set-then-delete makes the monkeypatch record each variable's state (delenv alone records nothing for an unset
    one), so it is restored afterwards."""
    for var in PROJECT_ENV:
        mp.setenv(var, "")
        mp.delenv(var)


@pytest.fixture(autouse=True)
def _one_thread():
    # Two busy-waiting torch threads on a shared 2-core machine can be 20x slower than one.
    n = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LIFT3D_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(n)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="re-record tests/golden_digests.json for stages whose key moved (tests/test_golden_digests.py)")


@contextlib.contextmanager
def configured_project(root: Path, params: dict):
    """A project at ``root`` with ``params`` as its params.yaml, its environment configured (and undone afterwards)
    and torch on one thread, for module-scoped fixtures that run a tiny lift once: yields the Project."""
    from flows.settings import configure_environment, find_project

    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            clear_project_env(mp)
            project = find_project(root)
            configure_environment(project)
            yield project
    finally:
        torch.set_num_threads(threads)



class ProgressRecorder:
    """A ``progress=`` callback (:mod:`lift3d_core.progress`) that keeps its calls and checks their contract."""

    def __init__(self):
        self.calls: list[tuple[int, int, str | None]] = []

    def __call__(self, done: int, total: int, phase: str | None = None) -> None:
        self.calls.append((int(done), int(total), phase))

    def phases(self) -> list[str | None]:
        """The phases in the order they started, each checked: counts within ``[0, total]``, never decreasing,
        the total fixed, the last call ``done == total``."""
        out: list[str | None] = []
        runs: list[list[tuple[int, int]]] = []
        for done, total, phase in self.calls:
            if not out or out[-1] != phase:
                out.append(phase)
                runs.append([])
            runs[-1].append((done, total))
        for phase, run in zip(out, runs, strict=True):
            dones = [d for d, _ in run]
            assert len({t for _, t in run}) == 1, (phase, run)
            assert all(0 <= d <= run[0][1] for d in dones) and dones == sorted(dones), (phase, run)
            assert dones[-1] == run[0][1], (phase, run)
        return out


@pytest.fixture
def progress_recorder() -> ProgressRecorder:
    return ProgressRecorder()
