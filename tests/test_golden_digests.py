"""Stage code versions guarded by golden digests: the same key must mean the same outputs.

One tiny deterministic CPU run of every stage (32x24 frames, two clips of three frames, eight training steps, the
default backends and params.yaml's recipe) through the real stage tasks. Each stage's artifact is reduced to a
content digest (:func:`artifact_digest`: every array and attribute, floats quantised) and compared with
``tests/golden_digests.json``: ``{stage: {version: {"key", "digest", "arrays"}}}``, one entry per code version
(``STAGES[stage].version`` in ``lift3d_core/pipeline.py``).

- Same key, other digest: the stage's code changed its outputs while nothing its key hashes moved; the test fails and
  says to bump the stage's version (cached artifacts of the old code would otherwise be served as the new code's).
- Other key (a version bump, a params.yaml default, an upstream key): the entry is stale; the test fails and says
  to re-record with ``pytest tests/test_golden_digests.py --update-golden``, which rewrites only entries whose key
  moved and refuses to overwrite a digest whose key did not (that needs a version bump first).

Float noise: float arrays and attributes are rounded to :data:`SIGNIFICANT` significant digits, values below
:data:`FLUSH` in magnitude count as 0, so bit-level differences between runs of one build (thread count, kernel
choice) do not move a digest unless a value sits on a rounding boundary; the run uses one thread and
``torch.use_deterministic_algorithms``. That is reproducibility for one build on one kind of CPU, not across them:
two threads instead of one already move trained values by up to 3e-3 after eight steps, which no rounding absorbs,
so the table records the platform (torch version, its CPU kernel level) and the check is skipped, saying why, on
another one. Attributes holding wall times (``seconds``, ``iterations_per_second``) are left out.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from lift3d_core.pipeline import STAGES

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).with_name("golden_digests.json")
SIGNIFICANT = 4  # digits kept of every float value
FLUSH = 1e-6  # |x| below this is 0 (rounding residue such as a 1e-15 pose error is noise, not output)
SOURCE = "skimage:astronaut"

# params.yaml's recipe at the smallest size that still runs every stage for real (a few seconds on one core)
GOLDEN_OVERRIDES = {
    "ingest": {"width": 32, "height": 24},
    "trajectory": {"presets": ["U", "Round-RI_90"], "levels": 1, "frames_per_clip": 3},
    "generate": {"synthetic": {"distortion": 0.02}},
    "calibrate": {"max_points": 500},
    "train": {"coarse_iterations": 4, "fine_iterations": 4, "densify_from": 2, "densify_every": 2,
              "densify_until": 6, "backend": "torch", "curriculum_steps": 2, "anchor_samples": 64,
              "frame_mean_samples": 64},
    "export": {"preview_views": 2, "backend": "torch"},
    "evaluate": {"views": 2, "train_views": 2, "backend": "torch"},
}
# artifacts a stage writes under its own version besides its own (evaluate keeps its ground truth apart)
COMPANIONS = {"evaluate": ("heldout",)}


def golden_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in GOLDEN_OVERRIDES.items():
        for k, v in values.items():
            params[section][k] = {**params[section][k], **v} if isinstance(v, dict) else v
    return params


def _quantised(values: np.ndarray) -> np.ndarray:
    """Float values as ``int64 [..., 2]`` (mantissa of SIGNIFICANT digits, decimal exponent); NaN and inf kept."""
    x = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(x) & (np.abs(x) >= FLUSH)
    exp = np.zeros(x.shape, np.int64)
    exp[finite] = np.floor(np.log10(np.abs(x[finite]))).astype(np.int64) - (SIGNIFICANT - 1)
    mant = np.zeros(x.shape, np.int64)
    mant[finite] = np.round(x[finite] / 10.0 ** exp[finite]).astype(np.int64)
    mant[np.isnan(x)], exp[np.isnan(x)] = 0, 1 << 40
    mant[np.isinf(x)], exp[np.isinf(x)] = np.sign(x[np.isinf(x)]).astype(np.int64), 1 << 41
    return np.stack([mant, exp], axis=-1)


def array_digest(array: np.ndarray) -> str:
    """Digest of one array: its dtype kind, shape and values (floats quantised, everything else exact)."""
    a = np.asarray(array)
    h = hashlib.sha256(f"{a.dtype.kind}:{a.shape}".encode())
    h.update(np.ascontiguousarray(_quantised(a) if a.dtype.kind in "fc" else a).tobytes())
    return h.hexdigest()[:16]


def _quantised_attrs(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _quantised_attrs(v) for k, v in sorted(value.items()) if "second" not in k}
    if isinstance(value, (list, tuple)):
        return [_quantised_attrs(v) for v in value]
    if isinstance(value, float):
        return _quantised(np.asarray(value)).tolist()
    return value


def _ply_arrays(data: np.ndarray) -> dict[str, np.ndarray]:
    """A PLY's Gaussians (its float bytes would be hashed exactly otherwise)."""
    from lift3d_core.splat.ply import load_ply

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.ply"
        path.write_bytes(np.asarray(data, np.uint8).tobytes())
        return {f"ply/{k}": v for k, v in load_ply(path).to_numpy().items()}


def artifact_digest(arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> dict[str, str]:
    """``{name: digest}`` of every array and of the attributes (``"attrs"``) of one artifact."""
    out = {}
    for name, a in sorted(arrays.items()):
        parts = _ply_arrays(a) if name.split("/")[-1] == "ply" else {name: a}
        out.update({n: array_digest(v) for n, v in parts.items()})
    attrs_json = json.dumps(_quantised_attrs(attrs), sort_keys=True, separators=(",", ":"))
    out["attrs"] = hashlib.sha256(attrs_json.encode()).hexdigest()[:16]
    return out


def combined(parts: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def golden_run(workdir: Path) -> dict[str, dict[str, Any]]:
    """Run every stage once in ``workdir``, laid out as a project (params.yaml, the store in data/artifacts, the
    run history in .lift3d); ``{stage: {"key", "digest", "arrays"}}``."""
    from flows.lift import make_context, run_stages
    from lift3d_core.store import ArtifactStore

    params = golden_params()
    (workdir / "params.yaml").write_text(yaml.safe_dump({**params, "input": {"image": SOURCE, "run_name": "g"}}))
    ctx = make_context(SOURCE, params, "golden", str(workdir / "data" / "artifacts"), str(workdir / ".lift3d"),
                       str(workdir / "data" / "runs"))
    results = run_stages(ctx, use_prefect=False)
    store = ArtifactStore(ctx.store_url)
    out = {}
    for name, r in results.items():
        artifact = store.read(name, r.key)
        parts = artifact_digest(artifact.arrays, artifact.attrs)
        for companion in COMPANIONS.get(name, ()):
            for info in store.ls(companion):
                extra = store.read(companion, info.key)
                parts.update({f"{companion}/{n}": d for n, d in artifact_digest(extra.arrays, extra.attrs).items()})
        out[name] = {"key": r.key, "digest": combined(parts), "arrays": parts}
    return out


def platform() -> str:
    """What float results depend on besides the code: torch's version and the CPU kernels it picked."""
    import platform as host

    return f"torch {torch.__version__.split('+')[0]}, {torch.backends.cpu.get_cpu_capability()}, {host.machine()}"


def compare(golden: dict, current: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """``(changed, stale)``: one message per stage whose outputs changed under an unchanged key (a version bump is
    missing), and one per stage whose golden entry is missing or was recorded for another key (re-record)."""
    changed, stale, differs = [], [], set()
    for name, now in current.items():
        version = STAGES[name].version
        entry = golden.get("stages", {}).get(name, {}).get(version)
        if entry is None:
            stale.append(f"{name}: no golden digest for version {version!r}")
        elif entry["key"] != now["key"]:
            moved = [u for u in STAGES[name].upstream
                     if golden["stages"].get(u, {}).get(STAGES[u].version, {}).get("key") != current[u]["key"]]
            why = (f"the key of {', '.join(moved)} moved" if moved
                   else "a hashed setting moved: params.yaml's default or this test's overrides, or the "
                        "default backend's own version (registry.Backend.version)")
            stale.append(f"{name} (version {version}): its key moved since the golden digest was recorded ({why})")
        elif entry["digest"] != now["digest"]:
            differs.add(name)
            arrays = sorted(n for n in set(entry["arrays"]) | set(now["arrays"])
                            if entry["arrays"].get(n) != now["arrays"].get(n))
            upstream = sorted(u for u in _ancestors(name) if u in differs)
            cause = (f"; its input from {', '.join(upstream)} changed too, so fix that stage first" if upstream
                     else f": bump STAGES[{name!r}].version in lift3d_core/pipeline.py (now {version!r})")
            changed.append(f"{name}: outputs changed ({', '.join(arrays)}) but its version {version!r} and its key "
                           f"did not{cause}")
    return changed, stale


def _ancestors(name: str) -> set[str]:
    out: set[str] = set()
    for up in STAGES[name].upstream:
        out |= {up} | _ancestors(up)
    return out


def updated(golden: dict, current: dict[str, dict[str, Any]]) -> dict:
    """``golden`` with the entries of ``current`` whose key moved (or that are new); a changed digest under an
    unchanged key raises: that needs a version bump, not a new golden value."""
    if golden.get("platform", platform()) != platform():
        raise AssertionError(f"refusing to re-record: the table was recorded on {golden['platform']}, this is "
                             f"{platform()}; re-record there, or delete {GOLDEN.name} to start over here")
    changed, _ = compare(golden, current)
    if changed:
        raise AssertionError("refusing to re-record:\n" + "\n".join(changed))
    out = {"platform": platform(), "stages": json.loads(json.dumps(golden.get("stages", {})))}
    for name, now in current.items():
        out["stages"].setdefault(name, {})[STAGES[name].version] = now
    return out


@pytest.fixture(scope="module")
def golden_project(tmp_path_factory):
    """The golden run: CPU only (the keys resolve ``auto`` for this machine), one thread, deterministic kernels.
    ``(project folder, {stage: {"key", "digest", "arrays"}})``."""
    mp = pytest.MonkeyPatch()
    mp.setattr(torch.cuda, "is_available", lambda: False)
    mp.setenv("LIFT3D_DIGEST_CACHE", str(tmp_path_factory.mktemp("digests") / "d.json"))
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    workdir = tmp_path_factory.mktemp("golden")
    try:
        yield workdir, golden_run(workdir)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
        mp.undo()


@pytest.fixture
def current(golden_project):
    return golden_project[1]


@pytest.mark.slow
def test_every_stage_has_a_golden_digest_for_its_version_and_its_outputs_match_it(current, request):
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(json.dumps(updated(golden, current), indent=1, sort_keys=True) + "\n")
        golden = json.loads(GOLDEN.read_text())
    if golden.get("platform") != platform():
        pytest.skip(f"golden digests were recorded on {golden.get('platform')}, this is {platform()}: float results "
                    "differ between torch versions and CPU kernels")
    assert set(current) == set(STAGES)
    changed, stale = compare(golden, current)
    assert not changed, ("stage outputs changed without a version bump:\n" + "\n".join(changed)
                         + "\nthen re-record: pytest tests/test_golden_digests.py --update-golden")
    assert not stale, ("golden digests out of date:\n" + "\n".join(stale)
                       + "\nre-record: pytest tests/test_golden_digests.py --update-golden")


@pytest.mark.slow
def test_the_check_fails_on_a_changed_output_and_refuses_to_record_it_without_a_version_bump(current):
    """The comparison itself, on the run's real digests: one changed array of train, under the same key."""
    golden = updated({}, current)
    assert compare(golden, current) == ([], [])
    tampered = json.loads(json.dumps(current))
    tampered["train"]["arrays"]["gaussians/means"] = "0" * 16
    tampered["train"]["digest"] = combined(tampered["train"]["arrays"])
    tampered["export"]["digest"] = "1" * 16  # downstream of train: named, with train as the cause
    changed, stale = compare(golden, tampered)
    assert stale == [] and len(changed) == 2
    assert "train: outputs changed (gaussians/means)" in changed[0] and "bump STAGES['train'].version" in changed[0]
    assert "its input from train changed too" in changed[1]
    with pytest.raises(AssertionError, match="refusing to re-record"):
        updated(golden, tampered)
    # a version bump moves the key: the entry is stale until re-recorded, and re-recording it is allowed
    bumped = {**current, "train": {**tampered["train"], "key": "f" * 64}}
    changed, stale = compare(golden, bumped)
    assert changed == [] and len(stale) == 1 and stale[0].startswith(f"train (version {STAGES['train'].version}): its key moved")
    assert updated(golden, bumped)["stages"]["train"][STAGES["train"].version]["key"] == "f" * 64


def test_quantisation_absorbs_float_residue_but_not_a_real_change():
    x = np.linspace(-3, 3, 1000, dtype=np.float64)
    assert array_digest(x) == array_digest(x * (1 + 1e-9))  # far from a rounding boundary at 4 digits
    assert array_digest(np.array([1e-15, -2e-13])) == array_digest(np.zeros(2))
    assert array_digest(x) != array_digest(x + 1e-3)
    assert array_digest(x.astype(np.float32)) == array_digest(x.astype(np.float32).astype(np.float64))
    assert array_digest(np.arange(6, dtype=np.uint8)) != array_digest(np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert math.isfinite(float(_quantised(np.array([np.nan, np.inf]))[0, 0]))


def _leaves(doc: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(doc, dict):
        return set().union(*(_leaves(v, (*prefix, k)) for k, v in doc.items())) if doc else {prefix}
    return {prefix}


def test_params_yaml_lists_every_setting_every_stage_key_hashes_for_every_backend():
    """``--set`` reaches a setting only if params.yaml lists it: every leaf of every stage's key document, with each
    backend of the multi-backend stages active in turn (train's flat section is checked in test_pipeline)."""
    from lift3d_core.calibrate import BACKENDS as CALIBRATE_BACKENDS
    from lift3d_core.config import apply_overrides
    from lift3d_core.depth import BACKENDS as DEPTH_BACKENDS
    from lift3d_core.generate import BACKENDS as GENERATE_BACKENDS
    from lift3d_core.pipeline import key_params, stage_configs

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    variants = [(name, []) for name in STAGES if name != "train"]
    for stage, backends in (("generate", GENERATE_BACKENDS), ("calibrate", CALIBRATE_BACKENDS),
                            ("depth", DEPTH_BACKENDS)):
        variants += [(stage, [f"{stage}.backend={b}"]) for b in backends]
    checked = 0
    for stage, overrides in variants:
        doc = key_params(stage_configs(apply_overrides(params, overrides))[stage])
        listed = _leaves(params[stage])
        missing = sorted(".".join(leaf) for leaf in _leaves(doc) - listed)
        assert missing == [], f"{stage} {overrides}: hashed but not in params.yaml: {missing}"
        checked += len(_leaves(doc))
    assert checked > 60  # the model sections were really visited


@pytest.mark.slow
def test_status_says_which_keys_moved_and_why(golden_project, tiny_project, monkeypatch, capsys):
    """After the golden run, `lift3d status` with one train setting changed: train moved because of that setting,
    export and evaluate because train did, everything upstream is cached under the same key."""
    from tests.test_pipeline import _cli

    monkeypatch.chdir(golden_project[0])  # a project: params.yaml, data/artifacts, .lift3d/history
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the keys the golden run hashed
    code, out = _cli(["status"], capsys)
    assert code in (0, None) and "moved" not in out.out and out.out.count("same key") == len(STAGES), out
    code, out = _cli(["status", "--set", "train.fine_iterations=3"], capsys)
    assert code in (0, None), out.err
    rows = {line.split()[1]: line for line in out.out.splitlines() if line.startswith("│ ") and "│" in line[2:]}
    for name in ("ingest", "trajectory", "generate", "calibrate", "depth"):
        assert "cached" in rows[name] and "same key" in rows[name], rows[name]
    for name in ("train", "export", "evaluate"):
        assert "would run" in rows[name] and "moved" in rows[name], rows[name]
    lines = [ln for ln in out.out.splitlines() if " moved: " in ln]
    assert lines == ["train moved: params.schedule.fine_iterations: 4 -> 3",
                     "export moved: upstream train moved", "evaluate moved: upstream train moved"]
