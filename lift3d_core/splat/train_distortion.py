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
from dataclasses import dataclass, field

import numpy as np
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat import field_triton, image_motion_triton
from lift3d_core.splat.checkpoint import TrainCheckpoint
from lift3d_core.splat.compile_fallback import compiled_or_eager
from lift3d_core.splat.distortion import DistortionField, apply_offsets, load_field
from lift3d_core.splat.distortion.offsets import _split_offsets
from lift3d_core.splat.field_penalties import _frame_mean_of, field_regularisers, offset_penalty
from lift3d_core.splat.field_terms import (
    area_downscale,
    area_preserving_opacity,
    field_downscale,
    projected_offset_px,
    pyramid_depth,
    pyramid_l1,
    scale_intrinsics,
    visible_in_frames,
)
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.optim import ADAM_EPS, expon_lr, fused_adam_supported
from lift3d_core.splat.speed import SWITCHES
from lift3d_core.splat.train import Trainer
from lift3d_core.splat.train_distortion_config import _FIELD_KEYS as _FIELD_KEYS
from lift3d_core.splat.train_distortion_config import LIFTIMAGE3D_TRAIN as LIFTIMAGE3D_TRAIN
from lift3d_core.splat.train_distortion_config import DistortionTrainConfig, field_bounds


def _fused_image_motion(like: torch.Tensor) -> bool:
    """Whether ``speed.SWITCHES.image_motion`` sends the view mask and the price to the Triton kernels (CUDA, or
    Triton's CPU interpreter)."""
    return SWITCHES.image_motion == "auto" and field_triton.available(like.device)


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
        segments = [range(n)] * b  # the canonical centres, once per frame (ranges: the layout is reused)
        extra: dict[str, tuple] = {}
        start = n
        if d.frame_mean_weight > 0:
            fm_points, fm_codes = self._frame_mean_queries()
            k, m = fm_codes.shape[0], fm_points.shape[0]
            points.append(fm_points)
            codes.append(fm_codes)
            segments += [range(start, start + m)] * k
            start += m
            extra["frame_mean"] = (k, m)
        if d.anchor_weight > 0 and not d.hard_anchor:
            a_points = self._anchor_queries()
            points.append(a_points)
            codes.append(self._input_code[None])
            segments.append(range(start, start + a_points.shape[0]))
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
            px = self._image_motion_px(means, self._step_offsets["frames"].d_means.reshape(len(frames), -1, 3),
                                       frames)  # [B, N]
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
        w2c, K = self.viewmats[frames].detach(), self.Ks[frames]  # [B, 4, 4], [B, 3, 3]
        if _fused_image_motion(means):
            return image_motion_triton.visible_mask(means, w2c, K, self.width, self.height, margin)
        return visible_in_frames(means, w2c, K, self.width, self.height, margin)

    def _image_motion_px(self, means: torch.Tensor, d_means: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``[B, N]`` pixels each frame's offsets ``d_means [B, N, 3]`` move the centres ``means [N, 3]`` (detached)
        by (:func:`projected_offset_px`; the fused kernels where ``speed.SWITCHES.image_motion`` allows and the cameras
        are constants: with pose refinement the price also reaches the cameras, through the PyTorch version)."""
        w2c, K = self.viewmats[frames], self.Ks[frames]
        if not w2c.requires_grad and _fused_image_motion(means):
            return image_motion_triton.projected_offset_px(means, d_means, w2c, K)
        return projected_offset_px(means, d_means, w2c, K)

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
