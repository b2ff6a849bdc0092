"""The :class:`DistortionField` module: planes, MLP and heads, evaluated into per-Gaussian :class:`Offsets`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lift3d_core.errors import Lift3DError
from lift3d_core.splat import field_mlp_triton, field_triton
from lift3d_core.splat.distortion.compiled import compile_once
from lift3d_core.splat.distortion.config import ACTIVATIONS, DistortionFieldConfig
from lift3d_core.splat.distortion.levels import GROUPS, _Level
from lift3d_core.splat.distortion.lines import kernel_lines
from lift3d_core.splat.distortion.offsets import Offsets, _minus_rows, apply_offsets
from lift3d_core.splat.distortion.sampling import _exact_rows, _row_coordinates, line_grid, spatial_grid
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.speed import SWITCHES


def _head(width: int, out_dim: int, activation: str) -> nn.Sequential:
    # Two layers per head as in 4DGS; the last starts at zero so offsets start at zero.
    last = nn.Linear(width, out_dim)
    last.zero_init = True
    act = ACTIVATIONS[activation][0]
    return nn.Sequential(act(), nn.Linear(width, width), act(), last)


_ROWS_CACHE: dict[tuple, torch.Tensor] = {}


def segment_rows(segments: list, n: int, device: torch.device) -> torch.Tensor:
    """``[sum M_j]`` long: the rows of every segment (a ``[M_j]`` tensor, a ``range``, or None for all ``n``) one
    after another. Segments given as ranges and None (the trainer's) reuse a recent identical result."""
    key = None
    if all(seg is None or isinstance(seg, range) for seg in segments):
        key = (str(device), n, tuple(None if seg is None else (seg.start, seg.stop, seg.step) for seg in segments))
        if key in _ROWS_CACHE:
            return _ROWS_CACHE[key]

    def rows_of(seg):
        if seg is None:
            return torch.arange(n, device=device)
        if isinstance(seg, range):
            return torch.arange(seg.start, seg.stop, seg.step, device=device)
        return seg

    rows = torch.cat([rows_of(seg) for seg in segments])
    if key is not None:
        _ROWS_CACHE[key] = rows
        while len(_ROWS_CACHE) > 2:  # a step's rows and one more (8 bytes a query each)
            _ROWS_CACHE.pop(next(iter(_ROWS_CACHE)))
    return rows


class DistortionField(nn.Module):
    """k-planes field over ``(x, y, z, u, v)`` decoded into per-Gaussian offsets.

    Attributes:
        levels: ``ModuleList`` of :class:`_Level` (the grouped planes of each resolution level).
        grids: per level, the 10 planes in ``PLANE_PAIRS`` order as ``[1, C, R_b, R_a]`` views.
        feature_net: shared MLP ``feature_dim -> net_width``.
        heads: ``ModuleDict`` with keys among ``position, scale, rotation, opacity, sh``.
        kernels: how the planes are sampled: ``"auto"`` (the fused Triton kernels of
            :mod:`lift3d_core.splat.field_triton` where they can run, ``grid_sample`` elsewhere), ``"triton"``
            (the kernels or an error), ``"torch"`` (``grid_sample``). Same values up to float rounding.
        mlp_dtype: dtype of the MLP's matrix products (None: float32). ``torch.bfloat16`` on CUDA is several
            times faster for the large per-Gaussian batches of training; the planes, their samples and the
            offsets stay float32.
        compiled: while gradients are on, run the MLP (:meth:`decode`) and, with the fused kernels, the frame
            lines of every level (:func:`kernel_lines`) as ``torch.compile`` graphs, forward and backward: a few
            kernels instead of ~100 small ones a step (the trainer sets it on CUDA). Same values.
    """

    def __init__(self, cfg: DistortionFieldConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mlp_dtype: torch.dtype | None = None
        self.kernels = "auto"
        self.compiled = False
        gen = torch.Generator().manual_seed(cfg.seed)
        self.levels = nn.ModuleList(_Level(cfg, level, gen) for level in range(len(cfg.multires)))
        layers: list[nn.Module] = [nn.Linear(cfg.feature_dim, cfg.net_width)]
        for _ in range(cfg.net_depth - 1):
            layers += [ACTIVATIONS[cfg.activation][0](), nn.Linear(cfg.net_width, cfg.net_width)]
        self.feature_net = nn.Sequential(*layers)
        heads = {}
        for name, on, dim in (
            ("position", cfg.deform_position, 3),
            ("scale", cfg.deform_scale, 3),
            ("rotation", cfg.deform_rotation, 4),
            ("opacity", cfg.deform_opacity, 1),
            ("sh", cfg.deform_sh, 3),
        ):
            if on:
                heads[name] = _head(cfg.net_width, dim, cfg.activation)
        self.heads = nn.ModuleDict(heads)
        self._init_linear(gen)
        self.register_buffer("bounds_lo", torch.tensor(cfg.bounds[0], dtype=torch.float32), persistent=False)
        self.register_buffer("bounds_hi", torch.tensor(cfg.bounds[1], dtype=torch.float32), persistent=False)

    @property
    def grids(self) -> list[list[torch.Tensor]]:
        return [level.planes() for level in self.levels]

    def _init_linear(self, gen: torch.Generator) -> None:
        # Deterministic from cfg.seed (torch's default init draws from the global RNG).
        for module in self.modules():
            if not isinstance(module, nn.Linear):
                continue
            with torch.no_grad():
                module.bias.zero_()
                if getattr(module, "zero_init", False):
                    module.weight.zero_()
                else:
                    bound = (6.0 / (module.in_features + module.out_features)) ** 0.5  # Xavier, as 4DGS
                    module.weight.copy_((torch.rand(module.weight.shape, generator=gen) * 2 - 1) * bound)

    # -- parameter groups (4DGS gives grids and MLP different learning rates) --------
    def grid_parameters(self) -> list[nn.Parameter]:
        """The plane-group tensors (3 per level)."""
        return [getattr(level, name) for level in self.levels for name in GROUPS]

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.feature_net.parameters()) + list(self.heads.parameters())

    # -- evaluation -------------------------------------------------------------
    def normalise(self, means: torch.Tensor, frame_code: torch.Tensor) -> torch.Tensor:
        """``[N, 5]`` grid coordinates in ``[-1, 1]`` of ``means [N, 3]`` and ``frame_code [2] | [N, 2]``."""
        lo = self.bounds_lo.to(means)
        hi = self.bounds_hi.to(means)
        xyz = ((means - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)
        code = torch.as_tensor(frame_code, dtype=means.dtype, device=means.device)
        code = code.expand(means.shape[0], 2) if code.dim() == 1 else code
        return torch.cat([xyz, code * 2.0 - 1.0], dim=-1)

    def normalise_xyz(self, means: torch.Tensor) -> torch.Tensor:
        """``[N, 3]``: ``means`` mapped by the bounds to ``[-1, 1]`` (outside clamped)."""
        lo, hi = self.bounds_lo.to(means), self.bounds_hi.to(means)
        return ((means - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)

    def uses_fused_kernels(self, like: torch.Tensor) -> bool:
        """Whether :meth:`segment_features` runs the fused kernels for tensors like ``like`` (see ``kernels``)."""
        if self.kernels == "torch":
            return False
        ok = field_triton.available(like.device) and field_triton.supports(self.cfg.features_per_plane)
        if self.kernels == "triton" and not ok:
            raise Lift3DError(f"distortion field: kernels='triton' but the fused kernels cannot run on {like.device} "
                              f"(needs CUDA and the triton package, and a power-of-two features_per_plane)")
        if self.kernels not in ("auto", "triton"):
            raise Lift3DError(f"distortion field: kernels must be auto, triton or torch, got {self.kernels!r}")
        return ok

    def segment_features(self, means: torch.Tensor, codes: torch.Tensor, segments: list) -> torch.Tensor:
        """Features of several groups of points, each at one frame code.

        Args:
            means: ``[N, 3]`` canonical centres (the spatial planes are sampled once for all of them).
            codes: ``[S, 2]`` frame codes in ``[0, 1]``.
            segments: S entries, each a ``[M_j]`` long tensor of rows of ``means``, a ``range`` of rows, or None
                for all rows.

        Returns:
            ``[sum M_j, feature_dim]``, segment after segment (a transposed view: column-major memory).
        """
        xyz = self.normalise_xyz(means)
        c = torch.as_tensor(codes, dtype=means.dtype, device=means.device).reshape(-1, 2) * 2.0 - 1.0
        n = xyz.shape[0]
        counts = [n if seg is None else len(seg) if isinstance(seg, range) else int(seg.shape[0]) for seg in segments]
        if self.uses_fused_kernels(xyz):
            layout = field_triton.QueryLayout.build(segments, counts, n, xyz.device)
            spatial = [level.spatial.permute(0, 2, 3, 1) for level in self.levels]  # [3, R, R, C]
            lines = kernel_lines(self, c, compiled=self.compiled and torch.is_grad_enabled())  # [3, S, R, 2C]
            return field_triton.fused_features(xyz, layout, spatial, lines)
        rows = None
        if not (len(segments) == 1 and segments[0] is None):
            rows = segment_rows(segments, n, means.device)
        # every segment's lines in one sample per level: frame j's lines are row j of one image per axis
        s = c.shape[0]
        num_rows = _exact_rows(s)
        lgrid = line_grid(xyz if rows is None else xyz.index_select(0, rows), _row_coordinates(num_rows, counts, xyz))
        sgrid = spatial_grid(xyz)
        per_level = []
        for level in self.levels:
            sp = level.spatial_features(sgrid)  # [C, N]: frame-independent, once for all segments
            lines = F.pad(level.frame_lines(c).permute(1, 2, 0, 3), (0, 0, 0, num_rows - s))  # [3, 2C, rows, R]
            per_level.append((sp if rows is None else sp.index_select(1, rows)) * level.line_features(lgrid, lines))
        return torch.cat(per_level, dim=0).t()  # a transposed view of [feature_dim, sum M_j]

    def _group_by_code(self, means: torch.Tensor, frame_code) -> tuple[torch.Tensor, list, torch.Tensor | None]:
        code = torch.as_tensor(frame_code, dtype=means.dtype, device=means.device)
        if code.dim() == 1:
            return code[None], [None], None
        uniq, inverse = torch.unique(code, dim=0, return_inverse=True)
        segments = [torch.nonzero(inverse == j).flatten() for j in range(uniq.shape[0])]
        return uniq, segments, torch.cat(segments)

    def features(self, means: torch.Tensor, frame_code: torch.Tensor) -> torch.Tensor:
        """``[N, features_per_plane * levels]``: per level, the product of the 10 plane samples."""
        codes, segments, order = self._group_by_code(means, frame_code)
        feats = self.segment_features(means, codes, segments)
        return feats if order is None else torch.empty_like(feats).index_copy(0, order, feats)

    def _run_mlp(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        # The heads run as one wide layer (their first layers stacked) and one block-diagonal layer (their last
        # layers): two matrix products for all heads instead of two per head; the same function of the same
        # parameters (each head's gradient is its block's).
        act = ACTIVATIONS[self.cfg.activation][1]
        hidden = act(self.feature_net(feats))
        heads = list(self.heads.values())
        if len(heads) == 1:
            return {name: head[1:](hidden) for name, head in self.heads.items()}
        wide = act(F.linear(hidden, torch.cat([h[1].weight for h in heads]), torch.cat([h[1].bias for h in heads])))
        out = F.linear(wide, torch.block_diag(*[h[3].weight for h in heads]), torch.cat([h[3].bias for h in heads]))
        return dict(zip(self.heads, out.split([h[3].out_features for h in heads], dim=-1)))

    def decode(self, feats: torch.Tensor) -> Offsets:
        """Offsets of features ``[M, feature_dim]`` (the MLP and heads); one compiled graph when ``compiled``
        and gradients are on (its row count dynamic: one graph for every size)."""
        if SWITCHES.mlp == "triton" and torch.is_grad_enabled() and field_mlp_triton.supports(self):
            return Offsets(field_mlp_triton.decode_position(self, feats), None, None, None, None)
        if self.compiled and torch.is_grad_enabled() and "mlp" in SWITCHES.compiled_parts:
            return compile_once(_decode, True)(self, feats)
        return _decode(self, feats)

    def evaluate(self, means: torch.Tensor, codes: torch.Tensor, segments: list) -> Offsets:
        """Offsets of several groups of points, each at one code (see :meth:`segment_features`), rows segment
        after segment: one pass over the planes and one MLP call for all of them."""
        anchor = self.cfg.anchor_code
        if anchor is None:
            return self.decode(self.segment_features(means, codes, segments))
        codes = torch.cat([torch.as_tensor(codes, dtype=means.dtype, device=means.device).reshape(-1, 2),
                           torch.tensor([anchor], dtype=means.dtype, device=means.device)])
        n = means.shape[0]
        out = self.decode(self.segment_features(means, codes, [*segments, None]))
        rows = segment_rows(segments, n, means.device)
        return _minus_rows(out, rows.shape[0], rows)

    def forward(self, means: torch.Tensor, frame_code: torch.Tensor) -> Offsets:
        """Offsets of N Gaussians at one frame, or each at its own frame (from the anchor code's, with one).

        Args:
            means: ``[N, 3]`` canonical centres, world frame.
            frame_code: ``[2]`` (one frame) or ``[N, 2]`` frame codes in ``[0, 1]``.
        """
        out = self.decode(self.features(means, frame_code))
        if self.cfg.anchor_code is None:
            return out
        base = self.decode(self.features(means, torch.tensor(self.cfg.anchor_code, dtype=means.dtype, device=means.device)))
        return Offsets(*(None if a is None else a - b for a, b in zip(out, base)))

    def apply(self, gaussians: Gaussians, frame_code: torch.Tensor) -> Gaussians:
        """The Gaussians seen by frame ``frame_code``: canonical plus offsets (a new object; differentiable)."""
        return apply_offsets(gaussians, self(gaussians.means, frame_code))

    # -- persistence ------------------------------------------------------------
    def state(self) -> dict:
        """``{"config": dict, "state_dict": {name: tensor}}``: everything :func:`load_field` needs."""
        return {"config": self.cfg.to_dict(), "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}


def _decode(field: DistortionField, feats: torch.Tensor) -> Offsets:
    dtype = field.mlp_dtype
    if dtype is not None and dtype != feats.dtype:
        with torch.autocast(device_type=feats.device.type, dtype=dtype):
            out = {name: t.float() for name, t in field._run_mlp(feats).items()}
    else:
        out = field._run_mlp(feats)
    m = field.cfg.max_offset
    if m is not None and "position" in out:
        out["position"] = m * torch.tanh(out["position"] / m)
    return Offsets(
        d_means=out.get("position"),
        d_log_scales=out.get("scale"),
        d_quats=out.get("rotation"),
        d_opacity=out["opacity"][:, 0] if "opacity" in out else None,
        d_sh0=out["sh"][:, None, :] if "sh" in out else None,
    )
