"""Distortion-aware 3DGS training: canonical Gaussians plus a per-frame distortion field (METHOD.md section 3).

Two stages on one continuous step counter (so the plain 3DGS schedules of ``train.Trainer`` run unchanged
over ``coarse_iterations + fine_iterations`` steps, the budget a plain 3DGS run of the same length gets):

1. **coarse** (steps ``1 .. coarse_iterations``): plain 3DGS of the canonical Gaussians;
2. **fine** (the remaining steps): frame ``f`` is rendered from ``field.apply(canonical, frame_codes[f])``;
   the loss adds the field's regularisers (plane TV, smoothness along the frame axes, L1 of the frame planes
   to 1) and the anchor loss that pins the offsets to zero at the input view's code (0.5, 0.5).

Densification, pruning, opacity resets and learning rates of the Gaussians are the plain trainer's; the
densification statistics use the screen-space gradients of the *deformed* centres (same indices as the
canonical Gaussians). Exported: the canonical Gaussians alone, and the field's state for per-frame renders.

LiftImage3D (``distort-3dgs``) differs in two ways worth knowing: each stage restarts its own step counter
(densification and position learning rate start over in the fine stage), and the input view is appended 50
extra times to the frame stack (``input_view_repeats`` here, 0 by default so that the comparison with plain
3DGS isolates the field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.checkpoint import TrainCheckpoint
from lift3d_core.splat.distortion import (
    INPUT_VIEW_CODE,
    DistortionField,
    DistortionFieldConfig,
    apply_offsets,
    load_field,
)
from lift3d_core.splat.field_penalties import field_regularisers, offset_penalty
from lift3d_core.splat.field_terms import (
    area_downscale,
    area_preserving_opacity,
    field_downscale,
    projected_offset_px,
    pyramid_depth,
    pyramid_l1,
    scale_intrinsics,
)
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.optim import ADAM_EPS, expon_lr, fused_adam_supported
from lift3d_core.splat.train import TrainConfig, Trainer, compiled_or_eager

# LiftImage3D's schedule (distort-3dgs/arguments/distort_3dgs/default.py): densify until 10k, reset every 3k.
LIFTIMAGE3D_TRAIN = TrainConfig(densify_until=10_000, opacity_reset_every=3000)

_FIELD_KEYS = (
    "features_per_plane",
    "spatial_resolution",
    "frame_resolution",
    "multires",
    "net_width",
    "net_depth",
    "activation",
    "deform_position",
    "deform_scale",
    "deform_rotation",
    "deform_opacity",
    "deform_sh",
)


@dataclass(frozen=True)
class DistortionTrainConfig:
    """Everything that changes a distortion-aware training result.

    Stage lengths and batch: ``coarse_iterations`` (3000), ``fine_iterations`` (14000), ``batch_size`` (2), all
    LiftImage3D's; they override ``train.iterations`` (set to their sum) and ``train.batch_size``.

    Field shape: the :class:`DistortionFieldConfig` fields (its bounds come from the initial Gaussians, see
    ``bounds_margin``; its seed is ``train.seed``).

    Regulariser weights (4DGS names in brackets, LiftImage3D values): ``plane_tv_weight`` 2e-4
    (``plane_tv_weight``), ``frame_smoothness_weight`` 1e-3 (``time_smoothness_weight``), ``frame_l1_weight``
    1e-4 (``l1_time_planes``); ``anchor_weight`` multiplies :func:`anchor_loss` at the input view's code, every
    fine step (LiftImage3D adds it with weight 1 on the steps whose last frame is the input view), on
    ``anchor_samples`` Gaussians drawn at random each step (None: all of them; the mean is the same in
    expectation and the cost no longer grows with the scene).

    Field learning rates (Adam, eps 1e-15), log-linear decay over the fine stage, multiplied by the scene
    extent when ``field_lr_scale_by_extent`` (as 4DGS multiplies them by ``spatial_lr_scale``): grid
    ``lr_grid`` 1.6e-3 -> ``lr_grid_final`` 1.6e-4, MLP ``lr_mlp`` 1.6e-4 -> ``lr_mlp_final`` 1.6e-5.

    ``offset_weight`` (ours, 0 = LiftImage3D): the anchor's penalty applied to the offsets of every rendered
    frame, a soft gauge that keeps the canonical Gaussians where the frames agree on average and leaves the
    field only what the frames disagree about. ``frame_mean_weight`` (ours, 0 = LiftImage3D): the same penalty
    on the offsets averaged over ``frame_mean_codes`` random training codes at ``frame_mean_samples`` random
    Gaussians, so the field cannot hold a component common to all frames (that belongs to the canonical
    Gaussians; a fast field otherwise takes it over). ``detach_field_input`` (ours, False = 4DGS): the field reads
    the canonical centres without gradient, so it cannot push them.

    ``field_cull_margin``: the field is evaluated only for centres projecting inside the frame enlarged by this
    fraction of its size on every side (None: all). Not only a speed-up: without it the field may also move
    Gaussians from outside a frame's view into it, which cost 0.5 dB at amplitude 0 in one ablation run
    (bench/RESULTS.md). The field is evaluated for every centre and the offsets outside the view multiplied by a
    mask built on the device (no device-to-host wait); with ``offset_weight`` the penalty's mean then runs over
    all of a frame's centres, zeros included.

    ``field_mlp_dtype``: dtype of the field MLP's matrix products: ``auto`` (bfloat16 on CUDA, float32
    elsewhere), ``float32`` or ``bfloat16``. The planes, the offsets and the Gaussians stay float32.
    ``compile_field``: run the field's many small per-step operations as ``torch.compile`` graphs: the plane
    regularisers (``field_penalties.field_regularisers``), the MLP (``DistortionField.decode``) and, with the fused
    kernels, the frame lines of every level (``distortion.kernel_lines``): ``auto`` (on CUDA; eager if compiling
    fails, with a warning), ``on``, ``off``. Same values; a few kernels a step instead of ~500 small ones. ``field_kernels``: how the field samples its planes
    (``distortion.DistortionField.kernels``): ``auto`` (the fused Triton kernels on CUDA, ``grid_sample``
    elsewhere), ``triton`` (an error where they cannot run), ``torch``. Same values up to float rounding.

    ``restart_schedule`` (LiftImage3D / 4DGS: True, each stage is a new training run): the position learning rate
    decay and the densification schedule (``densify_*``, ``opacity_reset_every``) restart at the fine stage, each
    stage following them over its own length; False: one schedule over both stages, as a plain run of the same
    length. ``curriculum_steps`` (ours, 0 = off): frames enter training in order of their code's distance from
    ``input_code`` (the input view first: a generated frame drifts more the further it is along the tree), from
    the nearest ``curriculum_start`` of them (the whole coarse stage trains on those) to all of them
    ``curriculum_steps`` steps into the fine stage (into the run, without a fine stage): the field then follows the
    drift frame by frame, a small step each time, from canonical Gaussians that the least distorted frames made
    sharp. ``pyramid_weight`` (ours, 0 = off): in the fine stage, an L1 term between the render and the frame
    average-pooled by 2, 4, ... (``pyramid_levels`` factors; 0: :func:`pyramid_depth`'s rule, pooled until the
    shorter side is about 24 px, so the same share of the image at every resolution), whose gradient reaches as far
    as the coarsest level's pixels: a frame's drift is a share of the image, many pixels at full resolution.

    ``max_offset_fraction`` (ours, None = LiftImage3D): position offsets are bounded smoothly (tanh) to this
    fraction of the field bounds' diagonal per component, so that a Gaussian no frame constrains well cannot be
    sent across the scene.

    ``field_render_size`` (ours, None = LiftImage3D): a second term that teaches the field alone (0: at the
    training resolution). The batch's frames are rendered again, the canonical Gaussians *without gradient* moved by the field's offsets, downscaled by
    :func:`field_downscale` so that the shorter side is about ``field_render_size`` pixels (opacities made
    area-preserving, :func:`area_preserving_opacity`), against the frames area-averaged to that size: L1, weight
    ``field_loss_weight``; the field then reads the canonical centres without gradient. The full-resolution loss
    still trains both (and alone drives densification). Why: a frame's drift is a share of the image, so at
    1024x576 it spans tens of pixels, where the photometric gradient of a sharp scene no longer points across it:
    the field learned no frame-varying offset there, and a pyramid loss on the training render, which did teach it
    the drift, also quadrupled the Gaussians through densification and cost 7 dB on undistorted frames
    (bench/RESULTS.md). About 72 px gives every resolution the 128x96 ablation's view of the drift. Teaching the
    field from the low-resolution render *only* (the canonical Gaussians trusting its offsets without gradient) was
    tried and rejected: on a 32x24 toy at half resolution its per-Gaussian errors landed in the canonical scene.
    ``field_levels``: the field's term compares that render and the frame at this many resolutions, average-pooled
    by 1, 2, 4, ... (1: the field's resolution only; 0: :func:`pyramid_depth`'s rule plus the field's resolution, down
    to a shorter side of about 24 px), so its gradient reaches as far as the coarsest level's pixels while the
    finest keeps it precise. A large ``field_render_size`` with ``field_levels: 0`` is the pyramid loss taught to the
    field alone.

    ``penalty_reference_size`` (ours, None = off): the offset penalties (``anchor_weight``, ``frame_mean_weight``,
    ``offset_weight``) are squared offsets in world units, so one pixel of movement costs ``(S / 96)^2`` times less at
    a shorter side of ``S`` px than at 96. With a size here, those weights hold at a training image whose shorter side
    is this many pixels and are multiplied by ``(shorter side / penalty_reference_size)^2`` at any other: a penalty
    per square pixel, one rule for every resolution (128x96 with 96 is unchanged).

    ``hard_anchor`` (ours, False = LiftImage3D's penalty): the field's offsets are measured from its offsets at
    ``input_code`` (``DistortionFieldConfig.anchor_code``), so the input view sees the canonical Gaussians exactly,
    whatever the field learns; ``anchor_weight`` and ``anchor_samples`` are then unused (no penalty is computed). The
    soft anchor prices offsets at the input code in squared world units, which at 1024x576 left the input view
    10 dB below plain 3DGS on undistorted frames (bench/RESULTS.md, session 10). Costs one more field evaluation
    of the rendered centres a step (the input code beside the batch's).

    ``offset_image_weight`` (ours, 0 = off): an L1 price on every rendered frame's position offsets: the length of
    the image-plane displacement each offset causes at its Gaussian's centre in that frame (:func:`projected_offset_px`),
    in shorter sides of the image (pixels / ``min(height, width)``), averaged over the Gaussians the frame renders the
    field for. An L1 price, unlike the squared penalties: its gradient has the same size for any offset, so the field
    moves a Gaussian only where the frame pays more than this for it. A real drift pays; the small per-frame residuals
    of an overfit do not. Measured in shares of the image, not pixels, because a frame's drift is a share of the image
    (the same drift is 6x more pixels at 1024x576 than at 128x96): a price per pixel of 0.03 kept most of the field's
    gain at 128x96 and silenced the field entirely at 1024x576 (bench/RESULTS.md, session 11). 2.88 here is 0.03 a
    pixel at a shorter side of 96 px and 0.005 at 576.

    ``input_view_repeats``: extra copies of the input-view frames (code == ``input_code``) in every epoch of
    the frame order (LiftImage3D: 50). ``train``: the plain 3DGS config (densification, Gaussian learning
    rates, depth loss, backend, seed, ...).
    """

    coarse_iterations: int = 3000
    fine_iterations: int = 14_000
    batch_size: int = 2
    features_per_plane: int = 16
    spatial_resolution: int = 64
    frame_resolution: int = 64
    multires: tuple[int, ...] = (1, 2, 4)
    net_width: int = 128
    net_depth: int = 1
    activation: str = "relu"
    deform_position: bool = True
    deform_scale: bool = True
    deform_rotation: bool = True
    deform_opacity: bool = False
    deform_sh: bool = False
    bounds_margin: float = 0.0
    plane_tv_weight: float = 2e-4
    frame_smoothness_weight: float = 1e-3
    frame_l1_weight: float = 1e-4
    anchor_weight: float = 1.0
    anchor_samples: int | None = 4096
    hard_anchor: bool = False
    offset_weight: float = 0.0
    offset_image_weight: float = 0.0
    field_cull_margin: float | None = 0.2
    frame_mean_weight: float = 0.0
    frame_mean_codes: int = 8
    frame_mean_samples: int = 2048
    detach_field_input: bool = False
    input_code: tuple[float, float] = INPUT_VIEW_CODE
    lr_grid: float = 1.6e-3
    lr_grid_final: float = 1.6e-4
    lr_mlp: float = 1.6e-4
    lr_mlp_final: float = 1.6e-5
    field_lr_scale_by_extent: bool = True
    input_view_repeats: int = 0
    field_mlp_dtype: str = "auto"
    compile_field: str = "auto"
    field_kernels: str = "auto"
    restart_schedule: bool = False
    curriculum_steps: int = 0
    curriculum_start: float = 0.25
    max_offset_fraction: float | None = None
    pyramid_weight: float = 0.0
    pyramid_levels: int = 0
    field_render_size: int | None = None
    field_loss_weight: float = 1.0
    field_levels: int = 1
    penalty_reference_size: int | None = None
    train: TrainConfig = LIFTIMAGE3D_TRAIN

    def __post_init__(self):
        def need(ok: bool, msg: str):
            if not ok:
                raise Lift3DError(f"distortion train config: {msg}")

        object.__setattr__(self, "multires", tuple(int(m) for m in self.multires))
        object.__setattr__(self, "input_code", tuple(float(c) for c in self.input_code))
        need(isinstance(self.train, TrainConfig), f"train must be a TrainConfig, got {type(self.train).__name__}")
        need(self.coarse_iterations >= 0, f"coarse_iterations must be >= 0, got {self.coarse_iterations}")
        need(self.fine_iterations >= 0, f"fine_iterations must be >= 0, got {self.fine_iterations}")
        need(self.coarse_iterations + self.fine_iterations > 0, "coarse_iterations + fine_iterations must be > 0")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.bounds_margin >= 0, f"bounds_margin must be >= 0, got {self.bounds_margin}")
        for name in ("plane_tv_weight", "frame_smoothness_weight", "frame_l1_weight", "anchor_weight", "offset_weight", "frame_mean_weight",
                     "offset_image_weight"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr_grid", "lr_grid_final", "lr_mlp", "lr_mlp_final"):
            need(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        need(len(self.input_code) == 2 and all(0 <= c <= 1 for c in self.input_code), f"input_code must be 2 numbers in [0, 1], got {self.input_code}")
        need(self.anchor_samples is None or self.anchor_samples >= 1, f"anchor_samples must be >= 1 or None, got {self.anchor_samples}")
        need(self.frame_mean_codes >= 1 and self.frame_mean_samples >= 1, "frame_mean_codes and frame_mean_samples must be >= 1")
        need(self.field_cull_margin is None or self.field_cull_margin >= 0, f"field_cull_margin must be >= 0 or None, got {self.field_cull_margin}")
        need(self.input_view_repeats >= 0, f"input_view_repeats must be >= 0, got {self.input_view_repeats}")
        need(self.curriculum_steps >= 0, f"curriculum_steps must be >= 0, got {self.curriculum_steps}")
        need(0.0 < self.curriculum_start <= 1.0, f"curriculum_start must be in (0, 1], got {self.curriculum_start}")
        need(self.max_offset_fraction is None or self.max_offset_fraction > 0,
             f"max_offset_fraction must be > 0 or None, got {self.max_offset_fraction}")
        need(self.pyramid_weight >= 0 and self.pyramid_levels >= 0, "pyramid_weight must be >= 0 and pyramid_levels >= 0")
        need(self.field_render_size is None or self.field_render_size == 0 or self.field_render_size >= 8,
             f"field_render_size must be >= 8 pixels, 0 (the training resolution) or None, got {self.field_render_size}")
        need(self.field_loss_weight > 0, f"field_loss_weight must be > 0, got {self.field_loss_weight}")
        need(self.field_levels >= 0, f"field_levels must be >= 0 (0: auto), got {self.field_levels}")
        need(self.penalty_reference_size is None or self.penalty_reference_size >= 8,
             f"penalty_reference_size must be >= 8 pixels or None, got {self.penalty_reference_size}")
        if isinstance(self.compile_field, bool):  # YAML reads a bare on / off as a boolean
            object.__setattr__(self, "compile_field", "on" if self.compile_field else "off")
        need(self.compile_field in ("auto", "on", "off"),
             f"compile_field must be auto, on or off, got {self.compile_field!r}")
        need(self.field_kernels in ("auto", "triton", "torch"),
             f"field_kernels must be auto, triton or torch, got {self.field_kernels!r}")
        need(self.field_mlp_dtype in ("auto", "float32", "bfloat16"),
             f"field_mlp_dtype must be auto, float32 or bfloat16, got {self.field_mlp_dtype!r}")
        # Build the field config once with dummy bounds so its checks run here, at the boundary.
        self.field_config(((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
        self.plain_config()

    @property
    def iterations(self) -> int:
        return self.coarse_iterations + self.fine_iterations

    def plain_config(self) -> TrainConfig:
        """The plain 3DGS config of the same budget: ``train`` with the total iterations and the batch size."""
        return replace(self.train, iterations=self.iterations, batch_size=self.batch_size)

    def field_config(self, bounds) -> DistortionFieldConfig:
        max_offset = None
        if self.max_offset_fraction is not None:
            diag = sum((float(b) - float(a)) ** 2 for a, b in zip(*bounds)) ** 0.5
            max_offset = self.max_offset_fraction * diag
        return DistortionFieldConfig(bounds=bounds, seed=self.train.seed, max_offset=max_offset,
                                     anchor_code=self.input_code if self.hard_anchor else None,
                                     **{k: getattr(self, k) for k in _FIELD_KEYS})

    @classmethod
    def from_dict(cls, values: dict) -> DistortionTrainConfig:
        """From a flat ``params.yaml`` section: this config's keys plus any :class:`TrainConfig` key (or a nested
        ``train`` mapping). Unknown keys, and ``iterations`` (use the two stage lengths), are errors."""
        own = {f.name for f in fields(cls)} - {"train"}
        plain = {f.name for f in fields(TrainConfig)}
        values = dict(values)
        train_values = dict(values.pop("train", {}) or {})
        if "iterations" in values or "iterations" in train_values:
            raise Lift3DError("distortion train config: set coarse_iterations and fine_iterations, not iterations")
        unknown = sorted(k for k in values if k not in own and k not in plain)
        if unknown:
            raise Lift3DError(f"distortion train config: unknown keys {unknown}; valid keys: {sorted(own | plain)}")
        for k in [k for k in values if k not in own]:
            train_values[k] = values.pop(k)
        base = LIFTIMAGE3D_TRAIN
        train = TrainConfig.from_dict({**{f.name: getattr(base, f.name) for f in fields(TrainConfig)}, **train_values})
        for k in ("multires", "input_code"):
            if k in values:
                values[k] = tuple(values[k])
        return cls(train=train, **values)


@dataclass
class DistortionTrainResult:
    """``gaussians``: the canonical Gaussians (field removed), detached, CPU. ``field_state``: ``{"config",
    "state_dict"}`` of the field (:func:`load_field` rebuilds it; frame ``f`` renders as
    ``field.apply(gaussians, frame_codes[f])``). ``loss_curve``: ``(step, loss)``. ``stats``: the plain
    trainer's plus ``coarse_iterations``, ``fine_iterations``, ``field_parameters``, ``field_bounds``,
    ``mean_abs_offset`` / ``max_abs_offset`` (of the position offsets over the training frame codes, world
    units) and ``final_terms`` (the last step's loss terms)."""

    gaussians: Gaussians
    field_state: dict
    loss_curve: list[tuple[int, float]]
    stats: dict = field(default_factory=dict)


def field_bounds(means: torch.Tensor, margin: float = 0.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Axis-aligned box of ``means [N, 3]`` (LiftImage3D uses the initial point cloud's min and max), grown
    by ``margin`` times its size on every side; a flat axis gets a small thickness so the box is valid."""
    lo = means.detach().min(dim=0).values.double().cpu()
    hi = means.detach().max(dim=0).values.double().cpu()
    size = hi - lo
    pad = margin * size + 1e-3 * max(float(size.max()), 1e-3)  # never a zero-width axis
    return tuple((lo - pad).tolist()), tuple((hi + pad).tolist())


class DistortionTrainer(Trainer):
    """:class:`Trainer` with the coarse / fine stages of distortion-aware 3DGS.

    Args (besides the plain trainer's): ``frame_codes [F, 2]`` in ``[0, 1]`` (``CameraTree.frame_codes()``
    order matches the frames), ``cfg`` a :class:`DistortionTrainConfig`.
    """

    def __init__(
        self,
        init: Gaussians,
        frames,
        c2w,
        K,
        frame_codes,
        cfg: DistortionTrainConfig,
        *,
        inv_depth=None,
        device: torch.device | str | None = None,
    ):
        super().__init__(init, frames, c2w, K, cfg.plain_config(), inv_depth=inv_depth, device=device)
        self.dcfg = cfg
        codes = torch.as_tensor(np.asarray(frame_codes), dtype=torch.float32)
        if codes.shape != (self.num_frames, 2) or not torch.isfinite(codes).all():
            raise Lift3DError(f"train: frame_codes must be finite [F, 2] with F = {self.num_frames}, got {tuple(codes.shape)}")
        if codes.min() < 0 or codes.max() > 1:
            raise Lift3DError("train: frame_codes must lie in [0, 1] (CameraTree.frame_codes())")
        self.frame_codes = codes.to(self.device)
        self.unique_codes = torch.unique(self.frame_codes, dim=0)
        is_input = (codes - torch.tensor(cfg.input_code)).abs().max(dim=1).values < 1e-6
        self.input_frames = torch.nonzero(is_input).flatten().tolist()
        # frames nearest the input view first (stable: ties keep their order), for the curriculum
        dist = (codes.double() - torch.tensor(cfg.input_code, dtype=torch.float64)).norm(dim=1)
        self.frames_by_distance = torch.sort(dist, stable=True).indices.tolist()
        self._pool_size = 0
        self.last_terms: dict[str, torch.Tensor] = {}
        # Its own stream, so the frame order (and thus the coarse stage) equals the plain trainer's.
        self.anchor_generator = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.bounds = field_bounds(init.means, cfg.bounds_margin)
        self.field = DistortionField(cfg.field_config(self.bounds)).to(self.device)
        mlp_dtype = cfg.field_mlp_dtype
        if mlp_dtype == "auto":
            mlp_dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.field.mlp_dtype = torch.bfloat16 if mlp_dtype == "bfloat16" else None
        self.field.kernels = cfg.field_kernels
        self.field.uses_fused_kernels(self.field.bounds_lo)  # kernels: triton where they cannot run fails here
        self._compile_field = cfg.compile_field == "on" or (cfg.compile_field == "auto" and self.device.type == "cuda")
        self._field_compiled = False
        self._input_code = torch.tensor(cfg.input_code, dtype=torch.float32, device=self.device)
        self._field_factor = field_downscale(self.height, self.width, cfg.field_render_size or self.height)
        self._field_Ks = scale_intrinsics(self.Ks, 1.0 / self._field_factor)
        self._field_batch = None
        self._step_offsets: dict[str, object] = {}
        scale = self.scene_extent if cfg.field_lr_scale_by_extent else 1.0
        self._field_lr = {"grid": (cfg.lr_grid * scale, cfg.lr_grid_final * scale), "mlp": (cfg.lr_mlp * scale, cfg.lr_mlp_final * scale)}
        self.field_optimizer = torch.optim.Adam(
            [
                {"params": self.field.grid_parameters(), "lr": self._field_lr["grid"][0], "name": "grid"},
                {"params": self.field.mlp_parameters(), "lr": self._field_lr["mlp"][0], "name": "mlp"},
            ],
            eps=ADAM_EPS,
            fused=fused_adam_supported(self.device) or None,
        )

    @property
    def penalty_scale(self) -> float:
        """What the offset penalties' weights are multiplied by at this resolution (``penalty_reference_size``)."""
        ref = self.dcfg.penalty_reference_size
        return 1.0 if ref is None else (min(self.height, self.width) / ref) ** 2

    @property
    def fine(self) -> bool:
        """True on the steps of the fine stage (the field is rendered and trained)."""
        return self.step > self.dcfg.coarse_iterations

    def schedule_step(self) -> tuple[int, int]:
        if not self.dcfg.restart_schedule:
            return super().schedule_step()
        coarse = self.dcfg.coarse_iterations
        if self.step <= coarse:
            return self.step, coarse
        return self.step - coarse, self.dcfg.fine_iterations

    def admitted_frames(self) -> int:
        """How many frames (nearest the input view first) the curriculum admits at the current step."""
        d = self.dcfg
        if d.curriculum_steps == 0:
            return self.num_frames
        clock = self.step - d.coarse_iterations if d.fine_iterations > 0 else self.step
        frac = d.curriculum_start + (1.0 - d.curriculum_start) * min(1.0, max(clock, 0) / d.curriculum_steps)
        return max(1, min(self.num_frames, int(np.ceil(frac * self.num_frames - 1e-9))))

    def sample_frames(self) -> torch.Tensor:
        """Shuffled epochs over the admitted frames (all, without a curriculum) plus ``input_view_repeats`` extra
        copies of the input view(s); an epoch starts over when the curriculum admits more frames."""
        n = self.admitted_frames()
        if n != self._pool_size:
            self._pool_size, self._epoch_order = n, []
        idx = []
        while len(idx) < self.cfg.batch_size:
            if not self._epoch_order:
                frames = list(range(self.num_frames)) if n == self.num_frames else self.frames_by_distance[:n]
                extra = [f for f in self.input_frames for _ in range(self.dcfg.input_view_repeats)]
                pool = torch.tensor(frames + extra, dtype=torch.long)
                self._epoch_order = pool[torch.randperm(len(pool), generator=self.generator)].tolist()
            idx.append(self._epoch_order.pop())
        return torch.tensor(idx, dtype=torch.long)

    def render_frames(self, idx: torch.Tensor, sh_degree: int):
        """Fine stage: every frame of the batch rendered from the canonical Gaussians moved by its offsets.

        One field evaluation per step serves the whole batch: every centre at each frame's code, followed by
        the anchor's and the frame-mean penalty's samples, so the planes are sampled and the MLP run once per
        step, not once per frame and term. With ``field_cull_margin`` the offsets of the centres outside a
        frame's enlarged view are multiplied by zero (the field neither moves them nor learns from them): a mask
        computed on the device, so the step never waits for it. One render call draws all frames.
        """
        if not self.fine:
            return super().render_frames(idx, sh_degree)
        from lift3d_core.splat.render import render_w2c_each

        d = self.dcfg
        canonical = self.params.gaussians()
        n, b = canonical.num, len(idx)
        low_res_term = d.field_render_size is not None
        field_input = canonical.means.detach() if (d.detach_field_input or low_res_term) else canonical.means
        frames = self.on_device(idx)
        points, codes = [field_input], [self.frame_codes[frames]]
        segments = [torch.arange(n, device=self.device)] * b  # the canonical centres, once per frame
        extra: dict[str, tuple] = {}
        start = n
        if d.frame_mean_weight > 0:
            fm_points, fm_codes = self._frame_mean_queries()
            k, m = fm_codes.shape[0], fm_points.shape[0]
            points.append(fm_points)
            codes.append(fm_codes)
            segments += [torch.arange(start, start + m, device=self.device)] * k
            start += m
            extra["frame_mean"] = (k, m)
        if d.anchor_weight > 0 and not d.hard_anchor:
            a_points = self._anchor_queries()
            points.append(a_points)
            codes.append(self._input_code[None])
            segments.append(torch.arange(start, start + a_points.shape[0], device=self.device))
            extra["anchor"] = (1, a_points.shape[0])
        off = self.field.evaluate(torch.cat(points), torch.cat(codes), segments)
        parts = _split_offsets(off, [b * n] + [k * m for k, m in extra.values()])
        frame_off = parts[0]
        keep = None
        if d.field_cull_margin is not None:
            keep = self._visible_batch(canonical.means, frames).reshape(b * n, 1).to(canonical.means.dtype)
            frame_off = type(frame_off)(*(None if t is None else t * keep.view(-1, *[1] * (t.dim() - 1))
                                          for t in frame_off))
        self._step_offsets = {"frames": frame_off, "frames_at": (canonical.means.detach(), frames, keep)}
        for name, part in zip(extra, parts[1:]):
            self._step_offsets[name] = (part, *extra[name]) if name == "frame_mean" else part
        parts = _split_offsets(frame_off, [n] * b)
        if low_res_term:  # field_loss renders the same offsets at the field's resolution (or reuses this render)
            self._field_batch = (frames, frame_off, sh_degree)
        per_frame = [apply_offsets(canonical, part) for part in parts]
        return render_w2c_each(per_frame, self.viewmats[frames], self.Ks[frames], self.width, self.height,
                               backend=self.cfg.backend, background=self.background, sh_degree=sh_degree)

    def field_loss(self, idx: torch.Tensor, out) -> torch.Tensor:
        """The field's own term (``field_render_size``): L1 between the batch's frames rendered at the field's
        resolution (the canonical Gaussians without gradient, moved by the field's offsets) and the frames
        area-averaged to it, summed over ``field_levels`` pooled resolutions.

        At the training resolution (``field_render_size: 0``) that render equals the training render ``out``
        (``[B, H, W, 3]``) in value, so it is not drawn again: the term's gradient with respect to the frames'
        offsets is taken through ``out`` (a second backward pass through the rasterizer, none through the
        canonical Gaussians), and the returned value carries it to the field only, as the surrogate
        ``term + sum(offsets * gradient) - sum(offsets * gradient).detach()``: the same value, and the same
        gradients as rendering again, without the second projection and forward rasterization.
        """
        frames, frame_off, sh_degree = self._field_batch
        self._field_batch = None
        f = self._field_factor
        levels = self.dcfg.field_levels or 1 + pyramid_depth(self.height // f, self.width // f)

        def term_of(rgb: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (rgb - target).abs().mean() + pyramid_l1(rgb, target, levels - 1)

        if f == 1:
            term = term_of(out.rgb, self.target_rgb(idx))
            offsets = [t for t in frame_off if t is not None and t.requires_grad]
            if not offsets:
                return term.detach()
            had_grad = out.means2d.grad if out.means2d.requires_grad else None
            grads = torch.autograd.grad(term, offsets, retain_graph=True, allow_unused=True)
            if out.means2d.requires_grad:
                out.means2d.grad = had_grad  # densification counts the training loss's gradient only
            carry = sum((t * g).sum() for t, g in zip(offsets, grads) if g is not None)
            return term.detach() + carry - carry.detach()
        from lift3d_core.splat.render import render_w2c_each

        canonical = Gaussians(**{k: v.detach() for k, v in self.params.gaussians().tensors().items()})
        parts = _split_offsets(frame_off, [canonical.num] * len(frames))
        per_frame = [area_preserving_opacity(apply_offsets(canonical, part), self.viewmats[frames[i]],
                                             self._field_Ks[frames[i]]) for i, part in enumerate(parts)]
        low = render_w2c_each(per_frame, self.viewmats[frames], self._field_Ks[frames], self.width // f,
                              self.height // f, backend=self.cfg.backend, background=self.background,
                              sh_degree=sh_degree)
        return term_of(low.rgb, area_downscale(self.target_rgb(idx), f))

    def losses(self, idx: torch.Tensor, out) -> dict[str, torch.Tensor]:
        terms = super().losses(idx, out)
        if not self.fine:
            return terms
        d = self.dcfg
        loss = terms["loss"]
        weights = {"plane_tv": d.plane_tv_weight, "frame_smoothness": d.frame_smoothness_weight,
                   "frame_l1": d.frame_l1_weight}
        if any(w > 0 for w in weights.values()):
            for (name, weight), value in zip(weights.items(), self._regularisers()):
                if weight > 0:
                    terms[name] = value
                    loss = loss + weight * value
        if d.field_render_size is not None:
            terms["field_photometric"] = self.field_loss(idx, out)
            loss = loss + d.field_loss_weight * terms["field_photometric"]
        if d.pyramid_weight > 0:
            levels = d.pyramid_levels or pyramid_depth(self.height, self.width)
            terms["pyramid"] = pyramid_l1(out.rgb, self.target_rgb(idx), levels)
            loss = loss + d.pyramid_weight * terms["pyramid"]
        per_pixel = self.penalty_scale
        if d.offset_weight > 0:
            terms["offsets"] = offset_penalty(self._step_offsets["frames"])
            loss = loss + per_pixel * d.offset_weight * terms["offsets"]
        if d.offset_image_weight > 0 and self._step_offsets["frames"].d_means is not None:
            means, frames, keep = self._step_offsets["frames_at"]
            px = projected_offset_px(means, self._step_offsets["frames"].d_means.reshape(len(frames), -1, 3),
                                     self.viewmats[frames], self.Ks[frames])  # [B, N]
            share = px / min(self.height, self.width)  # shorter sides of the image
            if keep is None:
                terms["offset_image"] = share.mean()
            else:
                w = keep.reshape(share.shape)
                terms["offset_image"] = (share * w).sum() / w.sum().clamp_min(1.0)
            loss = loss + d.offset_image_weight * terms["offset_image"]
        if d.frame_mean_weight > 0:
            terms["frame_mean"] = _frame_mean_of(*self._step_offsets["frame_mean"])
            loss = loss + per_pixel * d.frame_mean_weight * terms["frame_mean"]
        if d.anchor_weight > 0 and not d.hard_anchor:
            terms["anchor"] = offset_penalty(self._step_offsets["anchor"])
            loss = loss + per_pixel * d.anchor_weight * terms["anchor"]
        terms["loss"] = loss
        return terms

    def _regularisers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return field_regularisers(self.field, compiled=self._compile_field)

    def _compile_field_graphs(self) -> None:
        """Compile (forward and backward) the regularisers, the MLP and, with the fused kernels, the frame lines,
        once, at the first fine step; on failure fall back to eager (``auto``) or raise (``on``)."""
        self._field_compiled = True
        field = self.field
        params = list(field.parameters())
        d = self.dcfg
        # as many codes as a fine step samples at (the frames, the frame-mean codes, the anchor's)
        num_codes = (self.cfg.batch_size + (min(d.frame_mean_codes, len(self.unique_codes)) if d.frame_mean_weight > 0 else 0)
                     + (1 if d.anchor_weight > 0 or d.hard_anchor else 0))
        codes = torch.full((num_codes, 2), 0.25, device=self.device)

        def warm_up():
            field.compiled = True
            try:
                terms = list(field_regularisers(field, compiled=True))
                # features as training computes them (with the fused kernels through the compiled frame lines;
                # they require grad; the CPU path gives a transposed view): other flags, strides or code counts
                # would compile graphs that training never uses, then the ones it does
                feats = field.segment_features(self.params["means"].detach()[:257], codes, [None] * num_codes)
                terms += [t.sum() for t in field.decode(feats) if t is not None]
                torch.autograd.grad(sum(terms), params, allow_unused=True)
            finally:
                field.compiled = False

        self._compile_field = compiled_or_eager(self.dcfg.compile_field, "compile_field", warm_up, self.compile_seconds)
        field.compiled = self._compile_field

    def _anchor_queries(self) -> torch.Tensor:
        """``[M, 3]`` detached canonical centres where the anchor pins the field to zero at the input code
        (``anchor_samples`` drawn at random, or all): it constrains the field, not where the Gaussians sit."""
        means = self.params["means"].detach()
        m = self.dcfg.anchor_samples
        if m is not None and m < means.shape[0]:
            pick = torch.randint(means.shape[0], (m,), generator=self.anchor_generator)
            means = means[self.on_device(pick)]
        return means

    def _frame_mean_queries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(means ``[m, 3]``, codes ``[k, 2]``): ``m`` random detached centres, to be evaluated at each of ``k``
        random training codes."""
        d = self.dcfg
        means = self.params["means"].detach()
        if d.frame_mean_samples < means.shape[0]:
            pick = torch.randint(means.shape[0], (d.frame_mean_samples,), generator=self.anchor_generator)
            means = means[self.on_device(pick)]
        codes = self.unique_codes
        if d.frame_mean_codes < codes.shape[0]:
            codes = codes[self.on_device(torch.randperm(codes.shape[0], generator=self.anchor_generator)[: d.frame_mean_codes])]
        return means, codes

    def _visible_batch(self, means: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` bool: centres in front of each frame of ``frames [B]`` (device indices) projecting inside
        its image enlarged by ``field_cull_margin`` of its size on every side."""
        margin = self.dcfg.field_cull_margin or 0.0
        w2c, K = self.viewmats[frames], self.Ks[frames]  # [B, 4, 4], [B, 3, 3]
        cam = torch.einsum("bij,nj->bni", w2c[:, :3, :3], means.detach().float()) + w2c[:, None, :3, 3]
        z = cam[..., 2].clamp_min(1e-6)
        u = K[:, None, 0, 0] * cam[..., 0] / z + K[:, None, 0, 2]
        v = K[:, None, 1, 1] * cam[..., 1] / z + K[:, None, 1, 2]
        mu, mv = margin * self.width, margin * self.height
        return (cam[..., 2] > 1e-3) & (u > -mu) & (u < self.width + mu) & (v > -mv) & (v < self.height + mv)

    def train_step(self):
        if self.step + 1 > self.dcfg.coarse_iterations:  # the coming step is a fine one
            if self._compile_field and not self._field_compiled:
                self._compile_field_graphs()
            if self.field_optimizer not in self.extra_optimizers:
                self.extra_optimizers.append(self.field_optimizer)
            fine_step = self.step - self.dcfg.coarse_iterations  # 0-based
            for group in self.field_optimizer.param_groups:
                lr0, lr1 = self._field_lr[group["name"]]
                group["lr"] = expon_lr(fine_step, lr0, lr1, max(self.dcfg.fine_iterations - 1, 1))
        terms, out, report = super().train_step()
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        return terms, out, report

    def state_dict(self) -> dict:
        """The plain trainer's state plus the field, its optimiser and the distortion trainer's own sampling."""
        return {**super().state_dict(), "field": self.field.state_dict(),
                "field_optimizer": self.field_optimizer.state_dict(),
                "anchor_generator": self.anchor_generator.get_state(), "pool_size": self._pool_size}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.field.load_state_dict(state["field"])
        self.field_optimizer.load_state_dict(state["field_optimizer"])
        self.anchor_generator.set_state(state["anchor_generator"])
        self._pool_size = int(state["pool_size"])

    @torch.no_grad()
    def offset_magnitudes(self) -> tuple[float, float]:
        """(mean, max) of ``|d_means|`` (Euclidean, world units) over every training frame and the Gaussians it
        renders the field for (those inside its enlarged image, see ``field_cull_margin``): how far the frames'
        Gaussians sit from the canonical ones."""
        if not self.field.cfg.deform_position:
            return 0.0, 0.0
        means = self.params["means"].detach()
        total, peak, n = 0.0, 0.0, 0
        for f in range(self.num_frames):  # one frame at a time: all frames at once would not fit a large scene
            frame = torch.tensor([f], device=self.device)
            rows = None
            if self.dcfg.field_cull_margin is not None:
                rows = torch.nonzero(self._visible_batch(means, frame)[0]).flatten()
            norms = self.field.evaluate(means, self.frame_codes[frame], [rows]).d_means.norm(dim=-1)
            if norms.numel():
                total += float(norms.sum())
                peak = max(peak, float(norms.max()))
                n += norms.numel()
        return total / max(n, 1), peak


def _split_offsets(off, sizes: list[int]) -> list:
    """``off`` (an :class:`Offsets` of ``sum(sizes)`` rows) cut into consecutive :class:`Offsets` of ``sizes`` rows."""
    pieces = [[None] * len(sizes) if t is None else t.split(sizes) for t in off]
    return [type(off)(*(p[q] for p in pieces)) for q in range(len(sizes))]


def _frame_mean_of(off, k: int, m: int) -> torch.Tensor:
    """The frame-mean penalty (see ``frame_mean_weight``): :func:`offset_penalty` of code-major offsets of ``m``
    centres at ``k`` codes, averaged over the codes."""
    return offset_penalty(type(off)(*(None if t is None else t.reshape(k, m, *t.shape[1:]).mean(dim=0) for t in off)))


def train_distortion_aware(
    init: Gaussians,
    frames: np.ndarray | torch.Tensor,
    c2w: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    frame_codes: np.ndarray | torch.Tensor,
    cfg: DistortionTrainConfig,
    *,
    inv_depth: np.ndarray | torch.Tensor | None = None,
    callback: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    checkpoint: TrainCheckpoint | None = None,
) -> DistortionTrainResult:
    """Train canonical Gaussians plus a distortion field on posed frames.

    Args:
        init: initial Gaussians (e.g. from the calibrated point cloud); their box bounds the field.
        frames: ``[F, H, W, 3]`` uint8 RGB. c2w: ``[F, 4, 4]`` float64 OpenCV camera-to-world.
        K: ``[F, 3, 3]`` or ``[3, 3]`` pixels. frame_codes: ``[F, 2]`` in ``[0, 1]``, input view ``(0.5, 0.5)``.
        cfg: see :class:`DistortionTrainConfig`.
        inv_depth: optional ``[F, H, W]`` target inverse depth (0 = invalid), used when ``cfg.train.depth_weight``.
        callback: ``callback(step, metrics)`` every ``cfg.train.log_every`` steps; metrics hold ``stage``.

    Returns:
        :class:`DistortionTrainResult`; deterministic for a given ``cfg.train.seed`` on a given device.
    """
    trainer = DistortionTrainer(init, frames, c2w, K, frame_codes, cfg, inv_depth=inv_depth, device=device)

    def tagged(step: int, metrics: dict) -> None:
        if callback is not None:
            callback(step, {**metrics, "stage": "fine" if trainer.fine else "coarse"})

    result = trainer.run(callback=tagged, progress=progress, checkpoint=checkpoint)
    mean_off, max_off = trainer.offset_magnitudes()
    stats = {
        **result.stats,
        "coarse_iterations": cfg.coarse_iterations,
        "fine_iterations": cfg.fine_iterations,
        "field_parameters": sum(p.numel() for p in trainer.field.parameters()),
        "field_bounds": [list(trainer.bounds[0]), list(trainer.bounds[1])],
        "mean_abs_offset": mean_off,
        "max_abs_offset": max_off,
        "final_terms": {k: float(v) for k, v in trainer.last_terms.items()},
    }
    return DistortionTrainResult(
        gaussians=result.gaussians,
        field_state=trainer.field.state(),
        loss_curve=result.loss_curve,
        stats=stats,
    )


def render_frame_gaussians(result: DistortionTrainResult, frame_code) -> Gaussians:
    """The Gaussians frame ``frame_code [2]`` was trained against: canonical plus the field's offsets."""
    field_module = load_field(result.field_state, device=result.gaussians.device)
    with torch.no_grad():
        return field_module.apply(result.gaussians, torch.as_tensor(frame_code, dtype=torch.float32))


__all__ = [
    "DistortionTrainConfig",
    "DistortionTrainResult",
    "DistortionTrainer",
    "field_bounds",
    "render_frame_gaussians",
    "train_distortion_aware",
]
