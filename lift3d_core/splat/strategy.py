"""Adaptive density control of 3DGS as a strategy object (the shape of gsplat's ``DefaultStrategy``).

The trainer calls ``step_pre_backward(out)`` before ``loss.backward()`` and
``step_post_backward(params, optimizers, out, step)`` after the optimiser step; the strategy then

* accumulates, per Gaussian, the norm of the screen-space gradient of its projected centre over the views
  where it is visible, in NDC units (pixel gradient times (W/2, H/2)) as the 3DGS rasterizer reports it, so
  the 0.0002 threshold means what it means in 3DGS;
* every ``densify_every`` steps after ``densify_from``: clones the small Gaussians (max scale <= 1% of the
  scene extent) whose mean gradient exceeds the threshold, splits the large ones into 2 samples drawn from
  the Gaussian with scales / 1.6, prunes those below opacity 0.005 (and, after the first opacity reset, those
  larger than 10% of the extent); then zeroes the statistics;
* every ``opacity_reset_every`` steps: clamps opacities to at most 0.01;
* does nothing from ``densify_until`` on.

Steps are 1-based, as the 3DGS loop. ``params`` is a dict of ``torch.nn.Parameter`` named like the
:class:`Gaussians` fields, ``optimizers`` a dict of one optimiser per name (see ``optim.make_optimizers``);
:func:`append_rows`, :func:`keep_rows` and :func:`reset_param` edit both together so that the Adam moments
always have the parameters' shapes (new rows zero moments, removed rows gone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lift3d_core.errors import Lift3DError

# 3DGS splits a Gaussian into N = 2 samples and divides their scales by 0.8 * N = 1.6.
SPLIT_SAMPLES = 2
SPLIT_SCALE_DIVISOR = 1.6


@dataclass(frozen=True)
class DensifyConfig:
    """3DGS densification schedule (defaults of graphdeco-inria/gaussian-splatting and gsplat)."""

    grad_threshold: float = 0.0002
    densify_from: int = 500
    densify_until: int = 15_000
    densify_every: int = 100
    opacity_reset_every: int = 3000
    opacity_reset_value: float = 0.01
    prune_opacity: float = 0.005
    grow_scale3d: float = 0.01  # 3DGS "percent_dense": clone below, split above this fraction of the extent
    prune_scale3d: float = 0.1
    max_gaussians: int | None = 1_000_000

    def __post_init__(self):
        if not self.grad_threshold > 0:
            raise Lift3DError(f"densify grad_threshold must be > 0, got {self.grad_threshold}")
        for name in ("densify_from", "densify_until"):
            if getattr(self, name) < 0:
                raise Lift3DError(f"densify {name} must be >= 0, got {getattr(self, name)}")
        for name in ("densify_every", "opacity_reset_every"):
            if getattr(self, name) < 1:
                raise Lift3DError(f"densify {name} must be >= 1, got {getattr(self, name)}")
        for name in ("opacity_reset_value", "prune_opacity"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise Lift3DError(f"densify {name} must be in (0, 1), got {getattr(self, name)}")
        if not (self.grow_scale3d > 0 and self.prune_scale3d > 0):
            raise Lift3DError("densify grow_scale3d and prune_scale3d must be > 0")
        if self.max_gaussians is not None and self.max_gaussians < 1:
            raise Lift3DError(f"densify max_gaussians must be >= 1 or None, got {self.max_gaussians}")


# -- editing parameters and optimiser state together ----------------------------------------------------------


@torch.no_grad()
def _swap(
    params: dict[str, torch.nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    name: str,
    value: torch.Tensor,
    moment_fn: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """Replace ``params[name]`` by a new Parameter holding ``value``; map its optimiser state by ``moment_fn``."""
    old = params[name]
    new = torch.nn.Parameter(value.contiguous(), requires_grad=old.requires_grad)
    params[name] = new
    opt = optimizers.get(name)
    if opt is None:
        return
    for group in opt.param_groups:
        for i, p in enumerate(group["params"]):
            if p is old:
                group["params"][i] = new
    state = opt.state.pop(old, None)
    if state is not None:
        # "step" is shared by all rows (Adam's bias correction), every other entry is a per-row moment.
        opt.state[new] = {k: v if k == "step" else moment_fn(v) for k, v in state.items()}


def append_rows(
    params: dict[str, torch.nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    rows: dict[str, torch.Tensor],
) -> None:
    """Append ``rows[name] [M, ...]`` to every parameter; the new rows start with zero Adam moments."""
    for name, extra in rows.items():
        num_new = extra.shape[0]
        _swap(
            params,
            optimizers,
            name,
            torch.cat([params[name].detach(), extra.to(params[name].dtype)]),
            lambda v, num_new=num_new: torch.cat([v, v.new_zeros((num_new, *v.shape[1:]))]),
        )


def keep_rows(
    params: dict[str, torch.nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    keep: torch.Tensor,
) -> None:
    """Keep the rows where ``keep [N]`` (bool) is true in every parameter and its optimiser state."""
    idx = torch.nonzero(keep, as_tuple=True)[0]
    for name in list(params):
        _swap(params, optimizers, name, params[name].detach()[idx], lambda v: v[idx])


def reset_param(
    params: dict[str, torch.nn.Parameter],
    optimizers: dict[str, torch.optim.Optimizer],
    name: str,
    value: torch.Tensor,
) -> None:
    """Set ``params[name]`` to ``value`` (same shape) and zero its Adam moments, as 3DGS's opacity reset."""
    _swap(params, optimizers, name, value, torch.zeros_like)


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """``[N, 4]`` quaternions (w, x, y, z), any norm -> ``[N, 3, 3]`` rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)


# -- the strategy -------------------------------------------------------------------------------------------------


class DensifyStrategy:
    """3DGS adaptive density control; see the module docstring for the schedule.

    Args:
        cfg: the schedule.
        scene_extent: scene radius (3DGS ``cameras_extent``); the 3-D size thresholds are fractions of it.
        seed: seeds the samples of split Gaussians.
    """

    def __init__(self, cfg: DensifyConfig, scene_extent: float, *, seed: int = 0):
        if not scene_extent > 0:
            raise Lift3DError(f"scene_extent must be > 0, got {scene_extent}")
        self.cfg = cfg
        self.scene_extent = float(scene_extent)
        self.seed = seed
        self.grad2d: torch.Tensor | None = None  # [N] sum of NDC gradient norms over visible views
        self.count: torch.Tensor | None = None  # [N] number of views where visible
        self._generator: torch.Generator | None = None

    def state_dict(self) -> dict:
        """The statistics and the split sampler's state, for a training checkpoint."""
        return {"grad2d": self.grad2d, "count": self.count,
                "generator": None if self._generator is None else self._generator.get_state(),
                "generator_device": None if self._generator is None else str(self._generator.device)}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.grad2d = None if state["grad2d"] is None else state["grad2d"].to(device)
        self.count = None if state["count"] is None else state["count"].to(device)
        self._generator = None
        if state["generator"] is not None:
            self._generator = torch.Generator(device=state["generator_device"])
            self._generator.set_state(state["generator"])

    def step_pre_backward(self, out) -> None:
        """Keep the gradient of ``out.means2d`` (``[C, N, 2]``, pixels) for the statistics."""
        if out.means2d.requires_grad:
            out.means2d.retain_grad()

    @torch.no_grad()
    def step_post_backward(
        self,
        params: dict[str, torch.nn.Parameter],
        optimizers: dict[str, torch.optim.Optimizer],
        out,
        step: int,
    ) -> dict[str, int]:
        """Update the statistics from ``out`` (the render this step's loss came from) and, on schedule, densify,
        prune and reset opacities, editing ``params`` and ``optimizers`` in place.

        Returns counts ``{"cloned", "split", "pruned", "reset"}`` of what this call did.
        """
        cfg = self.cfg
        report = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
        if step >= cfg.densify_until:
            return report
        self._accumulate(out, params["means"].shape[0])

        if step > cfg.densify_from and step % cfg.densify_every == 0:
            report["cloned"], report["split"] = self._grow(params, optimizers)
            report["pruned"] = self._prune(params, optimizers, prune_large=step > cfg.opacity_reset_every)
            num = params["means"].shape[0]
            self.grad2d = params["means"].new_zeros(num)
            self.count = params["means"].new_zeros(num)

        if step % cfg.opacity_reset_every == 0:
            logit_max = torch.logit(torch.tensor(cfg.opacity_reset_value)).item()
            reset_param(params, optimizers, "opacity_logits", params["opacity_logits"].detach().clamp(max=logit_max))
            report["reset"] = 1
        return report

    def _accumulate(self, out, num: int) -> None:
        grad = out.means2d.grad
        if grad is None:
            raise RuntimeError("means2d has no gradient: call step_pre_backward(out) before loss.backward()")
        num_cams, height, width = out.rgb.shape[0], out.rgb.shape[1], out.rgb.shape[2]
        if self.grad2d is None or self.grad2d.shape[0] != num:
            self.grad2d = grad.new_zeros(num)
            self.count = grad.new_zeros(num)
        # Pixel -> NDC gradient ((W/2, H/2)), times the number of views because the loss averages over them.
        norms = torch.hypot(grad[..., 0] * (width / 2.0 * num_cams), grad[..., 1] * (height / 2.0 * num_cams))
        visible = out.radii > 0  # [C, N]
        # dense over cameras (no device sync, no atomics): an invisible Gaussian's screen gradient counts as 0
        self.grad2d += torch.where(visible, norms, 0.0).sum(dim=0)
        self.count += visible.sum(dim=0).to(self.count.dtype)

    def _split_noise(self, shape, device) -> torch.Tensor:
        if self._generator is None or self._generator.device != torch.device(device):
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return torch.randn(shape, generator=self._generator, device=device)

    def _grow(self, params, optimizers) -> tuple[int, int]:
        cfg = self.cfg
        num = params["means"].shape[0]
        mean_grad = self.grad2d / self.count.clamp_min(1.0)
        candidates = mean_grad >= cfg.grad_threshold
        if cfg.max_gaussians is not None:
            # Clones and splits both add one Gaussian each: keep the highest-gradient ones that fit the cap.
            budget = max(cfg.max_gaussians - num, 0)
            if int(candidates.sum()) > budget:
                top = torch.where(candidates, mean_grad, torch.full_like(mean_grad, -1.0)).topk(budget).indices
                candidates = torch.zeros_like(candidates)
                candidates[top] = True
        max_scale = params["log_scales"].detach().exp().max(dim=-1).values
        is_small = max_scale <= cfg.grow_scale3d * self.scene_extent
        clone, split = candidates & is_small, candidates & ~is_small
        n_clone, n_split = int(clone.sum()), int(split.sum())

        if n_clone:
            append_rows(params, optimizers, {name: p.detach()[clone] for name, p in params.items()})
        if n_split:
            split = torch.cat([split, split.new_zeros(n_clone)])  # clones are never split right away
            sel = torch.nonzero(split, as_tuple=True)[0]
            scales = params["log_scales"].detach()[sel].exp()
            rotmats = quat_to_rotmat(params["quats"].detach()[sel])
            noise = self._split_noise((SPLIT_SAMPLES, sel.numel(), 3), scales.device)
            offsets = torch.einsum("nij,snj->sni", rotmats, scales[None] * noise)  # samples of N(0, R S^2 R^T)
            rows = {}
            for name, p in params.items():
                base = p.detach()[sel]
                if name == "means":
                    rows[name] = (base[None] + offsets).reshape(-1, 3)
                elif name == "log_scales":
                    rows[name] = torch.log(scales / SPLIT_SCALE_DIVISOR).repeat(SPLIT_SAMPLES, 1)
                else:
                    rows[name] = base.repeat(SPLIT_SAMPLES, *([1] * (base.ndim - 1)))
            append_rows(params, optimizers, rows)
            keep_rows(params, optimizers, ~torch.cat([split, split.new_zeros(SPLIT_SAMPLES * n_split)]))
        return n_clone, n_split

    def _prune(self, params, optimizers, *, prune_large: bool) -> int:
        cfg = self.cfg
        prune = torch.sigmoid(params["opacity_logits"].detach()) < cfg.prune_opacity
        if prune_large:
            # 3DGS also prunes by screen size (20 px), but its max_radii2D is zeroed at every densification so
            # the test never fires (graphdeco-inria/gaussian-splatting#123); only the world-size test is kept.
            prune |= params["log_scales"].detach().exp().max(dim=-1).values > cfg.prune_scale3d * self.scene_extent
        n_prune = int(prune.sum())
        if n_prune:
            keep_rows(params, optimizers, ~prune)
        return n_prune
