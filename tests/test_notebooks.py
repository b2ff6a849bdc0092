"""The notebooks run top to bottom on the tiny synthetic scene (so they cannot rot) and are stored without outputs.

Each is executed by nbclient in a ``python3`` kernel of this interpreter, with tiny parameters in a cell inserted
after its ``parameters`` cell (papermill's convention, without papermill).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"walk_a_run": REPO / "notebooks" / "walk_a_run.ipynb",
             "distortion_ablation": REPO / "notebooks" / "distortion_ablation.ipynb"}

# A few seconds of work on a CPU: proves every cell runs, not the result (the notebooks' defaults show that).
TINY_ABLATION = {"WIDTH": 32, "HEIGHT": 24, "ITERATIONS": 24, "POINTS": 600, "MAX_GAUSSIANS": 2000,
                 "HIDDEN_GAUSSIANS": 1000, "FRAME_STEP": 24, "EVAL_VIEWS": 2}


def _execute(path: Path, parameters: dict, timeout: int = 240) -> nbformat.NotebookNode:
    """Run ``path`` with ``parameters`` assigned after its parameters cell; the executed notebook (not saved)."""
    nb = nbformat.read(path, as_version=4)
    (at,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    injected = nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, injected)
    # this checkout's code whatever is installed; one thread per process on a shared 2-core machine
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    client = NotebookClient(nb, timeout=timeout, startup_timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=env)  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    return nb


def _cell(nb, cell_id: str):
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    return cell


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.outputs if o.output_type == "display_data")


@pytest.mark.slow
def test_walk_a_run_lifts_the_tiny_scene_and_shows_every_stage(tiny_project):
    nb = _execute(NOTEBOOKS["walk_a_run"], {"PROJECT": str(tiny_project), "OVERRIDES": [], "VIEWS": 2})
    planned = _text(_cell(nb, "plan"))
    assert str(tiny_project) in planned and planned.count("missing") == 8  # a fresh project: nothing stored yet
    lifted = _text(_cell(nb, "lift"))
    assert lifted.count("computed") == 8, lifted
    assert (tiny_project / "data" / "artifacts" / "train").is_dir()  # the run went to the injected project's store
    for cell_id in ("input", "frames", "poses", "points", "depth", "train", "renders", "evaluate"):
        assert _images(_cell(nb, cell_id)) >= 1, f"cell {cell_id} drew nothing"
    psnr = [float(v) for v in re.findall(r"PSNR against the frames, .*? ([-\d.]+) dB", _text(_cell(nb, "renders")))]
    assert len(psnr) == 2 and all(5.0 < p < 60.0 for p in psnr), psnr  # canonical, and with the frame's field
    assert re.search(r"^\s+psnr\s+[\d.]+$", _text(_cell(nb, "evaluate")), re.MULTILINE)
    assert "element vertex" in _text(_cell(nb, "export"))


@pytest.mark.slow
def test_distortion_ablation_runs_at_a_tiny_size(tmp_path):
    nb = _execute(NOTEBOOKS["distortion_ablation"], TINY_ABLATION)
    assert _images(_cell(nb, "frames")) >= 1 and _images(_cell(nb, "heldout")) >= 1 and _images(_cell(nb, "offsets")) >= 1
    scores = dict(re.findall(r"held-out PSNR (plain 3DGS|distortion-aware)\s*:\s*([-\d.]+) dB", _text(_cell(nb, "heldout"))))
    assert set(scores) == {"plain 3DGS", "distortion-aware"}, scores
    assert all(5.0 < float(v) < 60.0 for v in scores.values()), scores
    offsets = dict(re.findall(r"(offset cos|offset gain)\s*:\s*([-\d.e]+)", _text(_cell(nb, "offsets"))))
    assert set(offsets) == {"offset cos", "offset gain"} and all(math.isfinite(float(v)) for v in offsets.values())


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebooks_are_stored_without_outputs(name):
    """Small diffs: outputs are made by running, never committed; each has one parameters cell for CI to follow."""
    path = NOTEBOOKS[name]
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name}: clear its outputs"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert path.stat().st_size < 100_000
