"""The distortion-aware trainer's config (:class:`DistortionTrainConfig`, built from ``params.yaml``'s ``train``
section) and the field's box from the initial Gaussians (:func:`field_bounds`)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.distortion import INPUT_VIEW_CODE, DistortionFieldConfig
from lift3d_core.splat.train_config import TrainConfig

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


def field_bounds(means: torch.Tensor, margin: float = 0.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Axis-aligned box of ``means [N, 3]`` (LiftImage3D uses the initial point cloud's min and max), grown
    by ``margin`` times its size on every side; a flat axis gets a small thickness so the box is valid."""
    lo = means.detach().min(dim=0).values.double().cpu()
    hi = means.detach().max(dim=0).values.double().cpu()
    size = hi - lo
    pad = margin * size + 1e-3 * max(float(size.max()), 1e-3)  # never a zero-width axis
    return tuple((lo - pad).tolist()), tuple((hi + pad).tolist())
