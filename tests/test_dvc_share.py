"""Team sharing through DVC: `dvc push` the store to a remote, clone the project afresh, `dvc pull`, and the same
image with the same params finds every pulled stage as a hit (README, "Team cache")."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_resume_dvc import _env, _lift3d

BIN = Path(sys.executable).parent
GIT = shutil.which("git")


def _run(cwd: Path, *cmd: str) -> str:
    result = subprocess.run(cmd, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dvc", path=str(BIN)) is None or GIT is None, reason="needs dvc and git")
def test_dvc_push_then_pull_in_a_fresh_clone_makes_the_expensive_stages_hits(tiny_project, tmp_path_factory):
    git = (GIT, "-c", "user.name=lift3d-test", "-c", "user.email=test@lift3d.invalid", "-c", "init.defaultBranch=main")
    dvc = str(BIN / "dvc")
    remote = tmp_path_factory.mktemp("dvc-remote")
    shutil.copy(REPO / ".dvcignore", tiny_project / ".dvcignore")  # the store's lock files are not data
    (tiny_project / ".gitignore").write_text("/.lift3d/\n/data/runs/\n/data/pipeline/\n")
    _run(tiny_project, *git, "init", "-q")
    _run(tiny_project, dvc, "init", "-q")
    _run(tiny_project, dvc, "remote", "add", "-d", "team", str(remote))

    made = _lift3d(tiny_project, "stage", "depth")  # ingest .. depth, without Prefect: what generation costs
    assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    _run(tiny_project, dvc, "add", "-q", "data/artifacts")
    _run(tiny_project, dvc, "push", "-q")
    _run(tiny_project, *git, "add", ".gitignore", ".dvcignore", ".dvc/config", "params.yaml", "data/.gitignore",
         "data/artifacts.dvc")
    _run(tiny_project, *git, "commit", "-q", "-m", "params and the store's DVC pointer")

    clone = tmp_path_factory.mktemp("teammate") / "project"
    _run(clone.parent, *git, "clone", "-q", str(tiny_project), str(clone))
    assert not (clone / "data" / "artifacts").exists()
    _run(clone, dvc, "pull", "-q")
    assert list((clone / "data" / "artifacts" / "generate").rglob("*.zarr.zip"))

    # the same params up to depth; training and what follows cut to a few steps (their keys are not shared here)
    short = ("train.coarse_iterations=2", "train.fine_iterations=2", "evaluate.views=1", "export.preview_views=1")
    again = _lift3d(clone, "lift", "skimage:astronaut", "--no-track", *(a for kv in short for a in ("--set", kv)))
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    for stage in ("ingest", "trajectory", "generate", "calibrate", "depth"):
        assert f"{stage:<10} HIT" in log, stage
    assert "train      MISS" in log  # not pushed: computed here
    verify = _lift3d(clone, "cache", "verify")
    assert verify.returncode == 0 and "store clean" in verify.stdout
