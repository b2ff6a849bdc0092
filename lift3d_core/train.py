"""The train stage: canonical Gaussians from calibrated frames, distortion-aware by default.

``train.distortion: true`` trains canonical Gaussians plus the per-frame distortion
field (``splat/train_distortion.py``); ``false`` trains plain 3DGS with the same
budget (``splat/train.py``), for ablations. Either way the artifact holds the
canonical Gaussians; the field is stored beside them so per-frame renders can be
reproduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from lift3d_core.config import config_to_dict
from lift3d_core.errors import Lift3DError
from lift3d_core.splat.checkpoint import TrainCheckpoint
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.init import init_gaussians
from lift3d_core.splat.train import train_gaussians
from lift3d_core.splat.train_distortion import DistortionTrainConfig, train_distortion_aware


@dataclass(frozen=True)
class TrainStageConfig:
    """The ``train`` section: ``distortion`` plus a flat :class:`DistortionTrainConfig` section.

    Its keys are the distortion trainer's own (stage lengths, field shape, regularisers)
    and any plain :class:`TrainConfig` key (densification, learning rates, depth loss, backend).
    ``backend: auto`` renders with gsplat when CUDA and gsplat are present, else the torch reference.
    ``pose_refine`` (true, false or ``auto`` in the section): refine the cameras during training
    (``splat/pose_refine.py``); ``auto`` is on unless the calibration is ``commanded`` (the cameras the frames were
    made from). It is resolved when the config is built (:meth:`from_params`' ``calibration``): the key hashes
    ``schedule.train.pose_refine``, a boolean.
    """

    distortion: bool = True
    schedule: DistortionTrainConfig = field(default_factory=DistortionTrainConfig)
    init_opacity: float = 0.1

    @classmethod
    def from_params(cls, section: dict[str, Any] | None, calibration: str = "commanded") -> TrainStageConfig:
        """From the ``train`` section; ``calibration``: the calibrate stage's backend, which ``pose_refine: auto``
        follows (the default, ``commanded``, suits frames trained on their true cameras: auto is off)."""
        section = dict(section or {})
        distortion = section.pop("distortion", True)
        init_opacity = section.pop("init_opacity", 0.1)
        pose_refine = section.pop("pose_refine", "auto")
        if not isinstance(distortion, bool):
            raise Lift3DError(f"train.distortion must be true or false, got {distortion!r}")
        if isinstance(init_opacity, bool) or not isinstance(init_opacity, (int, float)) or not 0 < init_opacity < 1:
            raise Lift3DError(f"train.init_opacity must be a number in (0, 1), got {init_opacity!r}")
        if pose_refine not in (True, False, "auto"):
            raise Lift3DError(f"train.pose_refine must be true, false or auto, got {pose_refine!r}")
        if pose_refine == "auto":
            pose_refine = calibration != "commanded"
        try:
            schedule = DistortionTrainConfig.from_dict({**section, "pose_refine": pose_refine})
        except (TypeError, ValueError) as exc:  # e.g. a string where a number belongs
            raise Lift3DError(f"train: {exc}") from None
        return cls(distortion=distortion, schedule=schedule, init_opacity=float(init_opacity))

    def key_params(self) -> dict[str, Any]:
        """What the train key hashes: everything for distortion-aware training; for plain 3DGS only what plain
        training reads (``plain_config()``: the total of the two stage lengths, the batch and the 3DGS settings), so
        that a field setting, or steps moved between the stages, re-uses a plain run instead of repeating it."""
        if self.distortion:
            return _resolved(config_to_dict(self))
        return {"distortion": False, "init_opacity": self.init_opacity,
                "plain": _resolved(config_to_dict(self.schedule.plain_config()))}


# Settings that change the speed only (bench/RESULTS.md: the compiled and eager graphs, the fused and grid_sample
# plane samplers give the same values up to float rounding; log_every only how often metrics are reported).
SPEED_ONLY = ("compile_loss", "compile_field", "field_kernels", "log_every")


def _resolved(doc: dict[str, Any]) -> dict[str, Any]:
    """A train key document with ``auto`` settings resolved for this machine (the rasterizer and device that will
    run, the field MLP's dtype) and the speed-only settings left out, at any depth of the document."""
    out = {}
    for k, v in doc.items():
        if k in SPEED_ONLY:
            continue
        if isinstance(v, dict):
            v = _resolved(v)
        elif k == "backend":
            backend, device = resolve_backend(v)
            v = f"{backend}/{device}"
        elif k == "field_mlp_dtype" and v == "auto":
            v = "bfloat16" if torch.cuda.is_available() else "float32"
        out[k] = v
    return out


def resolve_backend(name: str) -> tuple[str, str]:
    """``(render backend, torch device)`` for a backend name; ``auto`` prefers gsplat on CUDA."""
    cuda = torch.cuda.is_available()
    if name == "auto":
        if cuda:
            try:
                import gsplat  # noqa: F401

                return "gsplat", "cuda"
            except ImportError:
                return "torch", "cuda"
        return "torch", "cpu"
    if name == "gsplat" and not cuda:
        raise Lift3DError("train.backend=gsplat needs a CUDA GPU; use backend: torch or auto")
    return name, ("cuda" if cuda else "cpu")


@dataclass
class TrainedScene:
    """Canonical Gaussians, the field state (None for plain 3DGS), the loss curve and stats; ``c2w_refined``:
    ``[F, 4, 4]`` float64 OpenCV cameras of the training frames as pose refinement left them (None: not refined;
    the calibration's cameras are the training ones)."""

    gaussians: Gaussians
    field_state: dict | None
    loss_curve: list[tuple[int, float]]
    stats: dict
    c2w_refined: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"gaussians/{k}": v for k, v in self.gaussians.to_numpy().items()}
        if self.c2w_refined is not None:
            arrays["c2w_refined"] = np.asarray(self.c2w_refined, np.float64)
        if self.field_state is not None:
            for k, v in self.field_state["state_dict"].items():
                arrays[f"field/{k}"] = v.detach().cpu().numpy()
        arrays["loss_curve"] = np.asarray(self.loss_curve, dtype=np.float64).reshape(-1, 2)
        return arrays

    def attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {"stats": _jsonable(self.stats)}
        if self.field_state is not None:
            attrs["field_config"] = _jsonable(self.field_state["config"])
        return attrs


def gaussians_from_arrays(arrays: dict[str, np.ndarray]) -> Gaussians:
    """The canonical Gaussians of a train artifact."""
    return Gaussians.from_numpy({k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("gaussians/")})


def training_cameras(train_arrays: dict[str, np.ndarray], c2w_calibrated: np.ndarray) -> np.ndarray:
    """``[F, 4, 4]`` the cameras the Gaussians were trained with: the train artifact's refined ones
    (``c2w_refined``) when pose refinement ran, else the calibration's ``c2w_calibrated``."""
    return np.asarray(train_arrays.get("c2w_refined", c2w_calibrated), np.float64)


def field_state_from_artifact(arrays: dict[str, np.ndarray], attrs: dict[str, Any]) -> dict | None:
    """The distortion field state of a train artifact (``splat.distortion.load_field`` rebuilds it), or None."""
    if "field_config" not in attrs:
        return None
    sd = {k.split("/", 1)[1]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("field/")}
    return {"config": attrs["field_config"], "state_dict": sd}


def train_scene(
    points: np.ndarray,
    colors: np.ndarray,
    frames: np.ndarray,
    c2w: np.ndarray,
    K: np.ndarray,
    frame_codes: np.ndarray,
    inv_depth: np.ndarray | None,
    cfg: TrainStageConfig,
    *,
    depth_valid: np.ndarray | None = None,
    progress: bool = False,
    callback=None,
    checkpoint: TrainCheckpoint | None = None,
) -> TrainedScene:
    """Train the scene from the calibrated point cloud and the distinct frames.

    points ``float32 [P, 3]``, colors ``uint8 [P, 3]``, frames ``uint8 [F, H, W, 3]``,
    c2w ``[F, 4, 4]`` OpenCV, K ``[F, 3, 3]``, frame_codes ``[F, 2]``, inv_depth ``[F, H, W]`` or None,
    depth_valid ``bool [F, H, W]`` (the depth stage's mask: the depth loss sees these pixels only) or None.
    checkpoint: where a killed run of the same training left its state (resumed from) and where this one saves
    its own as it goes (:mod:`lift3d_core.splat.checkpoint`); None: no checkpoints.
    """
    if inv_depth is not None and depth_valid is not None:
        # the trainers read a 0 target as "no depth here": zeroing what the mask rejects gates their loss
        inv_depth = np.where(depth_valid, inv_depth, 0.0).astype(np.float32)
    backend, device = resolve_backend(cfg.schedule.train.backend)
    sched = replace(cfg.schedule, train=replace(cfg.schedule.train, backend=backend))
    init = init_gaussians(points, colors, sh_degree=sched.train.sh_degree, init_opacity=cfg.init_opacity)
    if cfg.distortion:
        r = train_distortion_aware(init, frames, c2w, K, frame_codes, sched, inv_depth=inv_depth,
                                   callback=callback, progress=progress, device=device, checkpoint=checkpoint)
        field_state = r.field_state
    else:
        r = train_gaussians(init, frames, c2w, K, sched.plain_config(), inv_depth=inv_depth, callback=callback,
                            progress=progress, device=device, checkpoint=checkpoint)
        field_state = None
    stats = dict(r.stats)
    c2w_refined = stats.pop("refined_c2w", None)  # the trainers pass the refined cameras on in their stats
    return TrainedScene(r.gaussians, field_state, r.loss_curve, stats, c2w_refined)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value
