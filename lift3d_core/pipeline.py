"""The stage DAG as data: which stages exist, what each one's store key hashes.

A stage's output is a pure function of (its params section, its upstream
artifacts, its model checkpoints), so every key of a run is computable *before*
running anything: that is what ``lift3d status`` shows and what makes a changed
``train.*`` parameter move only the keys of ``train`` and what follows it.
No Prefect or MLflow here; ``tasks/`` and ``flows/`` execute this plan.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lift3d_core.calibrate import BACKENDS as CALIBRATE_BACKENDS
from lift3d_core.calibrate import CalibrateConfig
from lift3d_core.config import build_config, check_types, config_to_dict
from lift3d_core.depth import BACKENDS as DEPTH_BACKENDS
from lift3d_core.depth import DepthConfig
from lift3d_core.errors import Lift3DError
from lift3d_core.evaluate import EvaluateConfig
from lift3d_core.export import ExportConfig
from lift3d_core.generate import BACKENDS as GENERATE_BACKENDS
from lift3d_core.generate import GenerateConfig
from lift3d_core.image import IngestConfig, input_digest
from lift3d_core.registry import Backend, version_suffix
from lift3d_core.splat.render import BACKENDS as RENDER_BACKENDS
from lift3d_core.splat.train_config import TrainConfig
from lift3d_core.splat.train_distortion import DistortionTrainConfig
from lift3d_core.store import artifact_key
from lift3d_core.train import TrainStageConfig, resolve_backend
from lift3d_core.trajectory import TrajectoryConfig


@dataclass(frozen=True)
class StageSpec:
    """One stage: its name, code version, config and upstream stages.

    Bump ``version`` when the stage's outputs change for the same settings and inputs (a stored artifact of the old
    code would otherwise be served under the same key); ``tests/test_golden_digests.py`` fails until you do. A change
    in one backend's outputs moves that backend's own version instead (:attr:`lift3d_core.registry.Backend.version`,
    appended to this one in its keys by :meth:`code_version`), so the stage's other backends keep their artifacts.
    """

    name: str
    version: str
    config_cls: type
    upstream: tuple[str, ...]
    backends: Mapping[str, Backend] | None = None  # a multi-backend stage's registry: each backend's own version

    def code_version(self, config: Any) -> str:
        """What the key hashes as this stage's code version: :attr:`version`, extended by the active backend's own
        version where it is not "1" (:func:`lift3d_core.registry.version_suffix`)."""
        return self.version + (version_suffix(config.backend, self.backends) if self.backends else "")


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec("ingest", "2", IngestConfig, ()),  # 2: transparency over white, 16-bit scaled (not clipped)
        StageSpec("trajectory", "3", TrajectoryConfig, ()),  # 3: the tree keeps its axis weights
        StageSpec("generate", "3", GenerateConfig, ("ingest", "trajectory"), GENERATE_BACKENDS),  # 3: synthetic surfaces composited in a fixed order
        # 3: MASt3R runs at its network view's resolution (the reference's crop), 58ccbd1
        StageSpec("calibrate", "6", CalibrateConfig, ("generate", "trajectory"), CALIBRATE_BACKENDS),  # 4: the similarity to the commanded frame fitted on whole poses; 5: COLMAP SIFT on upsampled frames, plane-sweep depth; 6: plane-sweep holes filled (colmap.mvs_fill)
        # 2: + validity mask; 3: min_confidence is a weight in [0, 1] for every calibration (2b07d7e)
        StageSpec("depth", "3", DepthConfig, ("calibrate", "generate", "trajectory"), DEPTH_BACKENDS),
        # 2: the artifact records the training PSNR curve (attrs psnr_curve), for the report
        StageSpec("train", "2", TrainStageConfig, ("calibrate", "depth", "generate", "trajectory")),
        StageSpec("export", "1", ExportConfig, ("train", "calibrate")),
        StageSpec("evaluate", "3", EvaluateConfig, ("train", "calibrate", "generate", "ingest", "trajectory")),  # 3: held-out cameras placed by their nearest training cameras
    )
}
NON_STAGE_SECTIONS = ("input",)


def stage_configs(params: dict[str, Any]) -> dict[str, Any]:
    """Validate every section of ``params`` and build each stage's frozen config."""
    unknown = sorted(set(params) - set(STAGES) - set(NON_STAGE_SECTIONS))
    if unknown:
        raise Lift3DError(f"params: unknown section(s) {unknown}; stages are {list(STAGES)}")
    for section in STAGES:
        _check_finite(params.get(section), section)
    _check_train_types(params.get("train") or {})
    configs = {}
    for name, spec in STAGES.items():
        if name == "train":  # its own flat-section parser; pose_refine: auto follows the calibration backend
            configs[name] = spec.config_cls.from_params(params.get(name), calibration=configs["calibrate"].backend)
        elif hasattr(spec.config_cls, "from_params"):  # a stage with its own flat-section parser
            configs[name] = spec.config_cls.from_params(params.get(name))
        else:
            configs[name] = build_config(spec.config_cls, params.get(name), name)
    for name, backend in (("train", configs["train"].schedule.train.backend), ("export", configs["export"].backend),
                          ("evaluate", configs["evaluate"].backend)):
        _render_backend(name, backend)
    _check_run_settings(configs)
    return configs


def _check_run_settings(configs: dict[str, Any]) -> None:
    """What the stages would only find out when they run, after upstream artifacts are written: the synthetic
    scene's settings (checked by the scene it builds) and a model backend's ``device``."""
    from lift3d_core.checkpoints import resolve_device
    from lift3d_core.generate import synthetic_scene_config

    ingest = configs["ingest"]
    if configs["generate"].backend == "synthetic":
        synthetic_scene_config((ingest.height, ingest.width), configs["generate"])
    for name in ("generate", "calibrate", "depth"):
        cfg = configs[name]
        section = getattr(cfg, cfg.backend, None)
        if hasattr(section, "device"):
            try:
                resolve_device(section.device)
            except RuntimeError:
                raise Lift3DError(f"{name}.{cfg.backend}.device {section.device!r} is not a torch device (auto, cpu, "
                                  "cuda, cuda:N)") from None


def _check_finite(value: Any, where: str) -> None:
    """No setting is NaN or infinite (a YAML ``.nan`` or ``.inf`` would reach a loss or a schedule silently)."""
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_finite(v, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise Lift3DError(f"{where} must be a finite number, got {value}")
    elif where.endswith(".seed") and not (isinstance(value, int) and not isinstance(value, bool)
                                          and 0 <= value < 2**32):
        raise Lift3DError(f"{where} must be an integer in 0..2**32-1 (numpy's and torch's seeds), got {value!r}")


# train's flat section feeds two dataclasses through their own parser; it checks names, this checks types.
# compile_loss / compile_field: YAML reads a bare on / off as a boolean, which the trainer maps back; pose_refine may
# also be auto (TrainStageConfig.from_params checks it).
_TRAIN_HINTS = {k: v for k, v in {**typing.get_type_hints(TrainConfig),
                                  **typing.get_type_hints(DistortionTrainConfig)}.items()
                if k not in ("train", "compile_loss", "compile_field", "pose_refine")}


def _check_train_types(section: dict[str, Any]) -> None:
    if isinstance(section, dict):
        check_types(section, _TRAIN_HINTS, "train")


def _render_backend(stage: str, name: str) -> str:
    """``rasterizer/device`` that ``stage.backend`` runs on this machine (``auto`` resolved, as the key hashes it);
    one Lift3DError for an unknown name or gsplat without CUDA."""
    if name != "auto" and name not in RENDER_BACKENDS:
        raise Lift3DError(f"{stage}.backend {name!r} is unknown; available: auto, {', '.join(RENDER_BACKENDS)}")
    try:
        backend, device = resolve_backend(name)
    except Lift3DError:
        raise Lift3DError(f"{stage}.backend={name} needs a CUDA GPU; use auto or torch") from None
    return f"{backend}/{device}"


def key_params(config: Any) -> dict[str, Any]:
    """The part of a config its key hashes (a config may narrow it, e.g. to its active backend); a rasterizer
    ``backend`` (export, evaluate) as what runs here, ``auto`` resolved: a CPU render and a CUDA one differ."""
    if hasattr(config, "key_params"):
        return config.key_params()
    doc = config_to_dict(config)
    if "backend" in doc:
        doc["backend"] = _render_backend(type(config).__name__, doc["backend"])
    return doc


@dataclass(frozen=True)
class PlannedStage:
    name: str
    key: str
    doc: dict[str, Any]
    config: Any


def plan(params: dict[str, Any], source: str, models: dict[str, dict[str, str]] | None = None) -> dict[str, PlannedStage]:
    """Every stage's key for lifting ``source`` with ``params``, in execution order.

    models: per stage, checkpoint name -> digest (stages without weights have none). Default: what each
    stage config's ``models()`` reports (the digests of the checkpoints its active backend reads).
    """
    configs = stage_configs(params)
    if models is None:
        models = {name: c.models() for name, c in configs.items() if hasattr(c, "models")}
    planned: dict[str, PlannedStage] = {}
    for name, spec in STAGES.items():
        inputs = {up: planned[up].key for up in spec.upstream}
        if name == "ingest":
            inputs = {"image": input_digest(source)}
        key, doc = artifact_key(name, spec.code_version(configs[name]), key_params(configs[name]), inputs,
                                models.get(name, {}))
        planned[name] = PlannedStage(name, key, doc, configs[name])
    return planned


def explain_miss(previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Why a stage's key moved: the differences between two key documents of the same stage.

    ``["params.fine_iterations: 3000 -> 500", "upstream depth moved", "code version '2' -> '3'",
    "checkpoint mast3r sha256:1f2e... -> sha256:9a8b..."]``; empty when identical.
    """
    if previous is None:
        return ["no earlier run of this image"]
    changes: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}" if path else k)
        elif (a == "<absent>" and isinstance(b, dict)) or (b == "<absent>" and isinstance(a, dict)):
            # a whole group appeared or went (train.distortion switched: its key hashes other settings)
            changes.append(f"{path}: {'added' if a == '<absent>' else 'removed'}")
        elif a != b:
            changes.append(_change(path, a, b))

    walk(previous, current, "")
    return changes


def _change(path: str, a: Any, b: Any) -> str:
    group, _, name = path.partition(".")
    if group == "stage_version":
        return f"code version {a!r} -> {b!r}"
    if group == "inputs":
        return "input image changed" if name == "image" else f"upstream {name} moved"
    if group == "models":
        return f"checkpoint {name} {str(a)[:19]}... -> {str(b)[:19]}..."
    return f"{path}: {a!r} -> {b!r}"


def history_file(state_dir: str | Path, image_digest: str) -> Path:
    """Where the key documents of the last run of an image (``input_digest``) are kept: one JSON object, stage ->
    key document, which ``lift3d status`` and the miss explanations compare the planned keys with."""
    return Path(state_dir) / "history" / f"{image_digest.split(':')[-1][:24]}.json"


def last_run_docs(state_dir: str | Path, planned: dict[str, PlannedStage]) -> dict[str, dict[str, Any]]:
    """Stage -> key document of the last run of the image ``planned`` lifts ({} when it never ran here)."""
    path = history_file(state_dir, planned["ingest"].doc["inputs"]["image"])
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged history only loses the explanations


def check_run_name(name: str) -> str:
    """``name`` if it is one plain folder name for ``data/runs/<name>``: not empty, ``.`` or ``..``, no path
    separator, control character or non-UTF-8 byte, at most 128 characters (a run name derived from a file called
    ``...png`` would be ``..``); else one Lift3DError saying to pass ``--run-name``."""
    problem = None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        problem = "is not valid UTF-8"
    if problem is None:
        if name in ("", ".", "..") or name.startswith("."):
            problem = "is empty or starts with a dot"
        elif any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
            problem = "holds a path separator or a control character"
        elif len(name) > 128:
            problem = "is longer than 128 characters"
    if problem:
        shown = name.encode("utf-8", "backslashreplace").decode()
        raise Lift3DError(f"run name {shown!r} {problem}; pass --run-name with a plain folder name")
    return name


def check_run_path(name: str) -> str:
    """``name`` if it is a run folder under ``data/runs``: one plain name (:func:`check_run_name`), or a batch's
    ``<batch>/<run>`` of two."""
    parts = name.split("/")
    if len(parts) > 2:
        raise Lift3DError(f"run name {name!r} is nested deeper than <batch>/<run>")
    for part in parts:
        check_run_name(part)
    return name
