"""The plain 3DGS trainer's config (:class:`TrainConfig`, the ``train`` section of ``params.yaml``).

Flat fields that :meth:`TrainConfig.densify_config` and :meth:`TrainConfig.learning_rates` turn into the nested
``strategy.DensifyConfig`` and ``optim.LearningRates``; :meth:`TrainConfig.for_budget` compresses 3DGS's 30,000-step
schedule into a shorter run. The trainer itself is :mod:`lift3d_core.splat.train`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.optim import LearningRates
from lift3d_core.splat.strategy import DensifyConfig


@dataclass(frozen=True)
class TrainConfig:
    """Everything that changes a training result (the ``train`` section of ``params.yaml``).

    Densification and learning-rate fields are flattened (``densify_*``, ``lr_*``) so ``params.yaml`` stays flat;
    :meth:`densify_config` and :meth:`learning_rates` rebuild the nested configs. Defaults are those of 3DGS.
    """

    iterations: int = 30_000
    batch_size: int = 1  # frames per step; the loss averages over them
    sh_degree: int = 3
    sh_degree_every: int = 1000  # one more SH band every 1000 steps (3DGS)
    lambda_dssim: float = 0.2  # D-SSIM weight of 3DGS
    depth_weight: float = 0.0  # inverse-depth L1 weight at step 1; 0 = off
    depth_decay: float = 0.01  # weight at the last step / weight at the first (log-linear in between)
    depth_scale_invariant: bool = False
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seed: int = 0
    backend: str = "torch"
    compile_loss: str = "auto"  # photometric loss as one torch.compile graph: auto (on CUDA), on, off
    scene_extent: float | None = None  # None: from the cameras as 3DGS does (see scene_extent_from_cameras)
    log_every: int = 100
    # densification (strategy.DensifyConfig)
    grad_threshold: float = 0.0002
    densify_from: int = 500
    densify_until: int = 15_000
    densify_every: int = 100
    opacity_reset_every: int = 3000
    prune_opacity: float = 0.005
    grow_scale3d: float = 0.01
    prune_scale3d: float = 0.1
    max_gaussians: int | None = 1_000_000
    # learning rates (optim.LearningRates); lr_means* are multiplied by the scene extent
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacity: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20.0
    # camera pose refinement (splat/pose_refine.py): a correction per frame, frame 0 (the input view) frozen
    pose_refine: bool = False
    pose_refine_from: int = 0  # steps before the corrections start to train
    pose_lr: float = 1e-3  # Adam; rotation in radians, translation in scene extents
    pose_lr_final: float = 1e-5  # reached at the last step (log-linear from pose_refine_from)
    pose_reg: float = 0.0  # weight of the mean squared correction (an L2 pull toward the calibration)

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise Lift3DError(f"train config: {msg}")

        need(self.iterations > 0, f"iterations must be > 0, got {self.iterations}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(0 <= self.sh_degree <= 3, f"sh_degree must be in 0..3, got {self.sh_degree}")
        need(self.sh_degree_every >= 1, f"sh_degree_every must be >= 1, got {self.sh_degree_every}")
        if isinstance(self.compile_loss, bool):  # YAML reads a bare on / off as a boolean
            object.__setattr__(self, "compile_loss", "on" if self.compile_loss else "off")
        need(self.compile_loss in ("auto", "on", "off"), f"compile_loss must be auto, on or off, got {self.compile_loss!r}")
        need(0.0 <= self.lambda_dssim <= 1.0, f"lambda_dssim must be in [0, 1], got {self.lambda_dssim}")
        need(self.depth_weight >= 0.0, f"depth_weight must be >= 0, got {self.depth_weight}")
        need(self.depth_decay > 0.0, f"depth_decay must be > 0, got {self.depth_decay}")
        need(
            len(self.background) == 3 and all(0.0 <= c <= 1.0 for c in self.background),
            f"background must be 3 floats in [0, 1], got {self.background}",
        )
        need(self.scene_extent is None or self.scene_extent > 0, f"scene_extent must be > 0, got {self.scene_extent}")
        need(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        need(isinstance(self.backend, str), f"backend must be a name, got {self.backend!r}")
        need(isinstance(self.pose_refine, bool), f"pose_refine must be true or false, got {self.pose_refine!r}")
        need(self.pose_refine_from >= 0, f"pose_refine_from must be >= 0, got {self.pose_refine_from}")
        need(self.pose_lr > 0 and self.pose_lr_final > 0, "pose_lr and pose_lr_final must be > 0")
        need(self.pose_reg >= 0, f"pose_reg must be >= 0, got {self.pose_reg}")
        # Build the nested configs once so that their checks run here, at the boundary.
        self.densify_config()
        self.learning_rates()

    def densify_config(self) -> DensifyConfig:
        return DensifyConfig(
            grad_threshold=self.grad_threshold,
            densify_from=self.densify_from,
            densify_until=self.densify_until,
            densify_every=self.densify_every,
            opacity_reset_every=self.opacity_reset_every,
            prune_opacity=self.prune_opacity,
            grow_scale3d=self.grow_scale3d,
            prune_scale3d=self.prune_scale3d,
            max_gaussians=self.max_gaussians,
        )

    def learning_rates(self) -> LearningRates:
        return LearningRates(
            means=self.lr_means,
            means_final=self.lr_means_final,
            log_scales=self.lr_scales,
            quats=self.lr_quats,
            opacity_logits=self.lr_opacity,
            sh0=self.lr_sh0,
            shN=self.lr_shN,
        )

    @classmethod
    def for_budget(cls, iterations: int, **overrides) -> TrainConfig:
        """The 3DGS schedule compressed into a short run of ``iterations`` steps (a CPU or demo budget).

        The defaults are 3DGS's schedule for 30,000 steps; ``for_budget(30_000)`` returns them unchanged. For
        ``iterations`` steps, with ``s = iterations / 30_000``:

        * scaled by ``s``: the end of densification (``densify_until = 15_000 s``: half the run), the start of
          densification (``500 s``) and the SH schedule (``sh_degree_every = 1000 s``: full degree at a tenth
          of the run); the position learning rate always decays over ``iterations``;
        * not scaled: ``densify_every`` stays 100, because the gradient statistics that decide growth are
          means over that many views, and densification starts after one full window at least;
          ``opacity_reset_every`` stays at least 3000, the steps 3DGS lets the Gaussians recover from a reset,
          so runs that cannot afford that recovery have no reset.

        ``overrides`` are any other fields (learning rates, ``batch_size``, ...) or replace the above.
        """
        if iterations <= 0:
            raise Lift3DError(f"train config: iterations must be > 0, got {iterations}")
        ref = cls()
        s = iterations / ref.iterations
        scaled = dict(
            iterations=iterations,
            densify_from=max(round(ref.densify_from * s), ref.densify_every),
            densify_until=round(ref.densify_until * s),
            opacity_reset_every=max(round(ref.opacity_reset_every * s), ref.opacity_reset_every),
            sh_degree_every=max(round(ref.sh_degree_every * s), 1),
        )
        return cls(**{**scaled, **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """From a ``params.yaml`` section; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise Lift3DError(f"train config: unknown keys {unknown}; valid keys: {sorted(known)}")
        values = dict(values)
        if "background" in values:
            values["background"] = tuple(float(c) for c in values["background"])
        return cls(**values)
