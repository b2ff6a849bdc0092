"""Plain 3DGS training of Gaussians on posed frames (the canonical / coarse stage of the method).

The loop is the 3DGS one: sample frames, render, ``(1 - 0.2) L1 + 0.2 D-SSIM`` (+ an optional inverse-depth
L1 with an exponentially decaying weight), backward, Adam step, densify (``strategy.DensifyStrategy``),
learning-rate and SH-degree schedules (``optim``).

Pieces meant for reuse (the distortion-aware trainer subclasses :class:`Trainer`):

* :class:`GaussianParams` (:mod:`~lift3d_core.splat.gaussian_params`): ``dict[str, nn.Parameter]`` keyed like
  :class:`Gaussians` fields <-> ``Gaussians``.
* :class:`Trainer`: ``render_frames(idx, sh_degree)`` (override to render deformed Gaussians; the result must be
  one ``RenderOutput`` whose ``means2d [C, N, 2]`` rows are the canonical Gaussians' and whose ``means2d.grad``
  is filled by backward; ``render.render_w2c_each`` renders each frame's own Gaussians into one),
  ``losses(idx, out)`` (override to add terms; return a dict with the total under ``"loss"``),
  ``extra_optimizers`` (stepped and zeroed with the Gaussians' ones), ``train_step()`` and ``run()``.
* Camera pose refinement (``pose_refine``, :mod:`lift3d_core.splat.pose_refine`): :attr:`Trainer.viewmats` is the
  frames' world-to-camera *as rendered now*, the calibrated cameras moved by a trained per-frame correction (frame 0,
  the input view, frozen), so a subclass that renders ``self.viewmats[idx]`` refines them too. The refined cameras
  leave in ``TrainResult.stats["refined_c2w"]`` (every trainer's result passes its stats on) and in checkpoints.

This module holds the loop and its input checks (:class:`Trainer`, :func:`train_gaussians`, :class:`TrainResult`); its pieces live in

* :mod:`~lift3d_core.splat.train_config`: :class:`TrainConfig` (the ``train`` section of ``params.yaml``);
* :mod:`~lift3d_core.splat.gaussian_params`: :class:`GaussianParams`, :func:`scene_extent_from_cameras` and the
  SH-degree padding of the initial Gaussians;
* :mod:`~lift3d_core.splat.loss_fast`: the photometric loss as the trainer runs it (:func:`fast_photometric_loss`
  eagerly, :func:`photometric_loss_shifted` compiled);
* :mod:`~lift3d_core.splat.compile_fallback`: :func:`compiled_or_eager`, ``torch.compile`` with an eager fallback;
* :mod:`~lift3d_core.splat.train_progress`: the progress bar of ``run(progress=True)``.

Every public name that used to be defined here can still be imported from here (the old import paths).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.checkpoint import TrainCheckpoint
from lift3d_core.splat.compile_fallback import compiled_or_eager as compiled_or_eager
from lift3d_core.splat.gaussian_params import GaussianParams, _match_sh_degree, scene_extent_from_cameras
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.loss import inverse_depth_loss, psnr
from lift3d_core.splat.loss_fast import fast_photometric_loss
from lift3d_core.splat.loss_fast import photometric_loss_shifted as photometric_loss_shifted
from lift3d_core.splat.optim import (
    ADAM_EPS,
    active_sh_degree,
    expon_lr,
    make_optimizers,
    param_group,
    unique_optimizers,
    update_learning_rates,
)
from lift3d_core.splat.pose_refine import PoseCorrections, correction_magnitudes
from lift3d_core.splat.strategy import DensifyStrategy
from lift3d_core.splat.train_config import TrainConfig
from lift3d_core.splat.train_progress import _progress_bar


@dataclass
class TrainResult:
    """``gaussians``: trained, detached, on CPU. ``loss_curve``: ``(step, loss)`` for every step.
    ``stats``: ``num_gaussians`` [(step, N)], ``seconds``, ``iterations_per_second``, ``scene_extent``,
    ``cloned`` / ``split`` / ``pruned`` totals, ``final_psnr`` (training batch of the last step), ``compile_seconds``
    (``torch.compile`` warm-ups, seconds per setting name; empty when nothing was compiled)."""

    gaussians: Gaussians
    loss_curve: list[tuple[int, float]]
    stats: dict = field(default_factory=dict)


class Trainer:
    """3DGS optimisation of Gaussians on posed frames; one :meth:`train_step` per iteration.

    Args:
        init: initial Gaussians (any device); SH coefficients are zero-padded up to ``cfg.sh_degree``.
        frames: ``[F, H, W, 3]`` uint8 RGB targets.
        c2w: ``[F, 4, 4]`` camera-to-world, OpenCV. K: ``[F, 3, 3]`` (or one ``[3, 3]``) pixels of the frames.
        cfg: the training config.
        inv_depth: optional ``[F, H, W]`` float target inverse depth; 0 (or non-finite) marks invalid pixels.
        device: torch device; None picks CUDA when available.
    """

    def __init__(
        self,
        init: Gaussians,
        frames: np.ndarray | torch.Tensor,
        c2w: np.ndarray | torch.Tensor,
        K: np.ndarray | torch.Tensor,
        cfg: TrainConfig,
        *,
        inv_depth: np.ndarray | torch.Tensor | None = None,
        device: torch.device | str | None = None,
    ):
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        frames, c2w, K, inv_depth = _validate_inputs(init, frames, c2w, K, inv_depth, cfg)
        self.frames = frames.to(self.device)  # uint8: a quarter of the memory of float targets
        # Cameras on the device, as the rasterizer takes them: world-to-camera inverted once in float64 on the host
        # (float32 inversion of a far-from-origin pose loses millimetres), so a step copies nothing from the host.
        # :attr:`viewmats` reads them through the pose corrections when pose refinement is on.
        self.c2w = c2w.to("cpu", torch.float64)
        self.calibrated_viewmats = torch.linalg.inv(self.c2w).to(self.device, torch.float32)
        self.Ks = K.to(self.device, torch.float32)
        self.inv_depth = None if inv_depth is None else inv_depth.to(self.device, torch.float32)
        self.num_frames, self.height, self.width = frames.shape[0], frames.shape[1], frames.shape[2]
        self.background = torch.tensor(cfg.background, dtype=torch.float32, device=self.device)
        self._compile_loss = cfg.compile_loss == "on" or (cfg.compile_loss == "auto" and self.device.type == "cuda")
        self._compiled_loss = None
        self.compile_seconds: dict[str, float] = {}  # warm-up wall time per compiled graph family

        self.scene_extent = cfg.scene_extent or scene_extent_from_cameras(c2w, init.means)
        self.params = GaussianParams.from_gaussians(_match_sh_degree(init, cfg.sh_degree).to(self.device))
        self.lrs = cfg.learning_rates()
        self.optimizers = make_optimizers(self.params, self.lrs, self.scene_extent)
        self.extra_optimizers: list[torch.optim.Optimizer] = []
        self.pose: PoseCorrections | None = None
        if cfg.pose_refine:  # frame 0 is the input view (the trees' distinct frames start with it): it never moves
            self.pose = PoseCorrections(self.num_frames, frozen=(0,), translation_scale=self.scene_extent).to(self.device)
            self.pose_optimizer = torch.optim.Adam(self.pose.parameters(), lr=cfg.pose_lr, eps=ADAM_EPS)
            self.extra_optimizers.append(self.pose_optimizer)
        self.strategy = DensifyStrategy(cfg.densify_config(), self.scene_extent, seed=cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # CPU: the same frame order on any device
        self._epoch_order: list[int] = []
        self._last_idx: torch.Tensor | None = None  # frames of the latest step, for the logged PSNR
        self.step = 0

    @property
    def viewmats(self) -> torch.Tensor:
        """``[F, 4, 4]`` world-to-camera of every frame as training renders it now: the calibrated cameras, moved by
        the pose corrections (differentiably) on the steps after ``pose_refine_from`` when ``pose_refine`` is on."""
        if self.pose is None or self.step <= self.cfg.pose_refine_from:
            return self.calibrated_viewmats
        return self.pose(self.calibrated_viewmats)

    def refined_c2w(self) -> np.ndarray | None:
        """``[F, 4, 4]`` float64 OpenCV camera-to-world of the frames as refined so far; None without refinement."""
        return None if self.pose is None else self.pose.refined_c2w(self.c2w.numpy())

    # -- overridable pieces ---------------------------------------------------------------------------------------
    def sample_frames(self) -> torch.Tensor:
        """``[batch_size]`` frame indices: shuffled epochs, every frame once per epoch (as 3DGS's view stack)."""
        idx = []
        while len(idx) < self.cfg.batch_size:
            if not self._epoch_order:
                self._epoch_order = torch.randperm(self.num_frames, generator=self.generator).tolist()
            idx.append(self._epoch_order.pop())
        return torch.tensor(idx, dtype=torch.long)

    def render_frames(self, idx: torch.Tensor, sh_degree: int):
        """Render frames ``idx [B]`` -> ``RenderOutput`` with C = B (rgb ``[B, H, W, 3]``)."""
        from lift3d_core.splat.render import render_w2c

        dev_idx = self.on_device(idx)
        return render_w2c(
            self.params.gaussians(sh_degree),
            self.viewmats[dev_idx],
            self.Ks[dev_idx],
            self.width,
            self.height,
            backend=self.cfg.backend,
            background=self.background,
            sh_degree=sh_degree,
        )

    def on_device(self, index: torch.Tensor) -> torch.Tensor:
        """``index`` (a small host tensor: frame indices, random picks) on the training device. On CUDA the copy
        goes through pinned memory without blocking: a plain copy of pageable memory would wait for every queued
        kernel, and the step would stop queueing work while the device drains."""
        if self.device.type != "cuda" or index.device.type != "cpu":
            return index.to(self.device)
        return index.pin_memory().to(self.device, non_blocking=True)

    def target_rgb(self, idx: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, 3]`` float targets in [0, 1]."""
        return self.frames[self.on_device(idx)].float() / 255.0

    def _photometric(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The photometric loss, through one ``torch.compile`` graph where ``compile_loss`` asks for it (compiled,
        forward and backward, on first use; eager with a warning if that fails and the setting is ``auto``)."""
        lam = self.cfg.lambda_dssim
        if self._compiled_loss is None and self._compile_loss:
            fn = torch.compile(photometric_loss_shifted, dynamic=False, fullgraph=True)
            # the render itself, detached: a probe of other strides (a clone is contiguous; the render is a view of
            # RGB+depth channels) would compile a graph training never uses, then training would compile again
            probe = pred.detach().requires_grad_(True)
            self._compile_loss = compiled_or_eager(
                self.cfg.compile_loss, "compile_loss", lambda: torch.autograd.grad(fn(probe, target, lam), probe),
                self.compile_seconds)
            self._compiled_loss = fn if self._compile_loss else None
        if self._compiled_loss is not None:
            return self._compiled_loss(pred, target, lam)
        return fast_photometric_loss(pred, target, lam)

    def depth_weight(self, step: int) -> float:
        cfg = self.cfg
        if cfg.depth_weight == 0.0 or self.inv_depth is None:
            return 0.0
        return expon_lr(step - 1, cfg.depth_weight, cfg.depth_weight * cfg.depth_decay, max(cfg.iterations - 1, 1))

    def losses(self, idx: torch.Tensor, out) -> dict[str, torch.Tensor]:
        """Loss terms of one step; ``"loss"`` is the total that is back-propagated."""
        terms = {"photometric": self._photometric(out.rgb, self.target_rgb(idx))}
        loss = terms["photometric"]
        weight = self.depth_weight(self.step)
        if weight > 0.0:
            target = self.inv_depth[self.on_device(idx)]
            valid = (target > 0) & torch.isfinite(target)
            terms["depth"] = inverse_depth_loss(
                out.depth, out.alpha, torch.nan_to_num(target), valid, scale_invariant=self.cfg.depth_scale_invariant
            )
            loss = loss + weight * terms["depth"]
        if self.cfg.pose_reg > 0 and self.pose is not None and self.step > self.cfg.pose_refine_from:
            terms["pose"] = self.pose.penalty()
            loss = loss + self.cfg.pose_reg * terms["pose"]
        terms["loss"] = loss
        return terms

    def schedule_step(self) -> tuple[int, int]:
        """(step, length) that the position learning rate and densification follow: the global step and the run's
        length here; a trainer with stages may restart them per stage."""
        return self.step, self.cfg.iterations

    # -- checkpoints (splat/checkpoint.py writes and reads them) ----------------------------------------------------
    def state_dict(self) -> dict:
        """Everything the next steps depend on: step, Gaussians, optimiser moments, densification statistics and
        every random generator. Restored by :meth:`load_state_dict` into a trainer built from the same inputs and
        config, the run continues as if it had not stopped (bit for bit on the CPU)."""
        return {
            "step": self.step,
            "params": {k: v.detach() for k, v in self.params.items()},
            "optimizer": self.optimizers["means"].state_dict(),
            "strategy": self.strategy.state_dict(),
            "generator": self.generator.get_state(),
            "epoch_order": list(self._epoch_order),
            **({} if self.pose is None else {"pose": self.pose.xi.detach().clone(),
                                             "pose_optimizer": self.pose_optimizer.state_dict()}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.params = GaussianParams({k: torch.nn.Parameter(v.to(self.device).clone()) for k, v in state["params"].items()})
        self.optimizers = make_optimizers(self.params, self.lrs, self.scene_extent)
        self.optimizers["means"].load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy"], self.device)
        self.generator.set_state(state["generator"])
        self._epoch_order = list(state["epoch_order"])
        if self.pose is not None:
            with torch.no_grad():
                self.pose.xi.copy_(state["pose"])
            self.pose_optimizer.load_state_dict(state["pose_optimizer"])

    # -- the loop ---------------------------------------------------------------------------------------------------
    def all_optimizers(self) -> list[torch.optim.Optimizer]:
        return unique_optimizers([*self.optimizers.values(), *self.extra_optimizers])

    def train_step(self) -> tuple[dict[str, torch.Tensor], object, dict[str, int]]:
        """One iteration; returns (loss terms, the render, what densification did)."""
        self.step += 1
        step = self.step
        sched_step, sched_total = self.schedule_step()
        update_learning_rates(self.optimizers, sched_step, self.lrs, self.scene_extent, sched_total)
        if self.pose is not None:
            self._update_pose_lr()
        idx = self.sample_frames()
        out = self.render_frames(idx, active_sh_degree(step, self.cfg.sh_degree, self.cfg.sh_degree_every))
        self.strategy.step_pre_backward(out)
        terms = self.losses(idx, out)
        terms["loss"].backward()
        for opt in self.all_optimizers():
            opt.step()
            opt.zero_grad(set_to_none=True)
        # After the Adam step (as gsplat's trainer): rows added now have no gradient yet, so no step is skipped.
        report = self.strategy.step_post_backward(self.params, self.optimizers, out, sched_step)
        self._last_idx = idx
        return terms, out, report

    def _update_pose_lr(self) -> None:
        """``pose_lr`` decayed log-linearly to ``pose_lr_final`` from the first refined step to the last step."""
        cfg = self.cfg
        first = cfg.pose_refine_from + 1
        lr = expon_lr(max(self.step - first, 0), cfg.pose_lr, cfg.pose_lr_final, max(cfg.iterations - first, 1))
        for group in self.pose_optimizer.param_groups:
            group["lr"] = lr

    def run(
        self,
        callback: Callable[[int, dict], None] | None = None,
        progress: bool = False,
        checkpoint: TrainCheckpoint | None = None,
    ) -> TrainResult:
        """Train up to ``cfg.iterations``; ``callback(step, metrics)`` every ``cfg.log_every`` steps and at the end.

        ``checkpoint``: where a killed run left its state (:class:`~lift3d_core.splat.checkpoint.TrainCheckpoint`):
        the run resumes from it when it matches this trainer, and saves to it as it goes."""
        cfg = self.cfg
        losses = torch.zeros(cfg.iterations, device=self.device)  # filled without a device sync per step
        num_gaussians = [(self.step, self.params.num)]
        totals = {"cloned": 0, "split": 0, "pruned": 0}
        start_step = self.step
        saved = checkpoint.load(self) if checkpoint is not None else None
        if saved is not None:  # the curve and counts so far come from the checkpoint; the rate counts this call's steps
            losses[:self.step] = saved["losses"].to(self.device)
            num_gaussians, totals, start_step = saved["num_gaussians"], saved["totals"], 0
        resumed_at = self.step
        bar = _progress_bar(cfg.iterations - self.step) if progress else None
        t0 = time.perf_counter()
        metrics: dict = {}
        while self.step < cfg.iterations:
            terms, out, report = self.train_step()
            losses[self.step - 1] = terms["loss"].detach()
            for k in totals:
                totals[k] += report[k]
            if self.step % cfg.log_every == 0 or self.step == cfg.iterations:
                metrics = self._metrics(terms, out, time.perf_counter() - t0)
                num_gaussians.append((self.step, self.params.num))
                if callback is not None:
                    callback(self.step, metrics)
                if bar is not None:
                    bar.update(self.step, metrics)
            elif bar is not None:
                bar.advance()
            if checkpoint is not None and checkpoint.due(self.step, cfg.iterations):
                checkpoint.save(self, {"losses": losses[:self.step].cpu(), "num_gaussians": num_gaussians,
                                       "totals": dict(totals)})
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        curve = losses.cpu().tolist()
        stats = {
            "num_gaussians": num_gaussians,
            "seconds": seconds,
            "iterations_per_second": (self.step - resumed_at) / max(seconds, 1e-9),
            "resumed_at_step": resumed_at if saved is not None else None,
            "scene_extent": self.scene_extent,
            **totals,
            "final_psnr": metrics.get("psnr"),
            "compile_seconds": dict(self.compile_seconds),
        }
        if self.pose is not None:  # the refined cameras travel in stats, which every trainer's result passes on
            stats["pose_refine"] = correction_magnitudes(self.pose.xi * self.pose.free, self.scene_extent)
            stats["refined_c2w"] = self.refined_c2w()
        return TrainResult(
            gaussians=self.params.detached(),
            loss_curve=[(s, curve[s - 1]) for s in range(start_step + 1, self.step + 1)],
            stats=stats,
        )

    def _metrics(self, terms: dict, out, seconds: float) -> dict:
        idx = self._last_idx
        metrics = {f"loss/{k}" if k != "loss" else "loss": float(v.detach()) for k, v in terms.items()}
        metrics.update(
            psnr=psnr(out.rgb.detach().clamp(0, 1), self.target_rgb(idx)),
            num_gaussians=self.params.num,
            lr_means=param_group(self.optimizers["means"], "means")["lr"],
            sh_degree=active_sh_degree(self.step, self.cfg.sh_degree, self.cfg.sh_degree_every),
            seconds=seconds,
        )
        return metrics


def _validate_inputs(init, frames, c2w, K, inv_depth, cfg):
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise Lift3DError(f"train: frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    num = frames.shape[0]
    c2w = torch.as_tensor(c2w)
    if c2w.shape != (num, 4, 4):
        raise Lift3DError(f"train: c2w must be [F, 4, 4] with F = {num} frames, got {tuple(c2w.shape)}")
    K = torch.as_tensor(K)
    if K.shape == (3, 3):
        K = K.expand(num, 3, 3)
    if K.shape != (num, 3, 3):
        raise Lift3DError(f"train: K must be [F, 3, 3] or [3, 3], got {tuple(K.shape)}")
    if not (torch.isfinite(c2w).all() and torch.isfinite(K).all()):
        raise Lift3DError("train: c2w or K contains NaN or inf")
    if inv_depth is not None:
        inv_depth = torch.as_tensor(inv_depth)
        if inv_depth.shape != frames.shape[:3]:
            want, got = tuple(frames.shape[:3]), tuple(inv_depth.shape)
            raise Lift3DError(f"train: inv_depth must be [F, H, W] = {want}, got {got}")
    if cfg.depth_weight > 0 and inv_depth is None:
        raise Lift3DError("train: depth_weight > 0 needs inv_depth; pass it or set depth_weight: 0")
    if init.num == 0:
        raise Lift3DError("train: no initial Gaussians")
    if cfg.batch_size > num:
        raise Lift3DError(f"train: batch_size {cfg.batch_size} exceeds the {num} frames")
    return frames, c2w, K, inv_depth


def train_gaussians(
    init: Gaussians,
    frames: np.ndarray | torch.Tensor,
    c2w: np.ndarray | torch.Tensor,
    K: np.ndarray | torch.Tensor,
    cfg: TrainConfig,
    *,
    inv_depth: np.ndarray | torch.Tensor | None = None,
    callback: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
    checkpoint: TrainCheckpoint | None = None,
) -> TrainResult:
    """Optimise ``init`` on posed frames with the 3DGS recipe; see :class:`Trainer` for shapes (and
    :meth:`Trainer.run` for ``checkpoint``).

    Deterministic for a given ``cfg.seed`` on a given device (frame order from a seeded CPU generator, split
    samples from a seeded generator on the device).
    """
    trainer = Trainer(init, frames, c2w, K, cfg, inv_depth=inv_depth, device=device)
    return trainer.run(callback=callback, progress=progress, checkpoint=checkpoint)


__all__ = [
    "GaussianParams",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "fast_photometric_loss",
    "scene_extent_from_cameras",
    "train_gaussians",
]
