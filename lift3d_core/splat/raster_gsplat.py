"""The ``gsplat`` backend: gsplat's fused CUDA kernels behind :func:`render`.

gsplat (nerfstudio-project/gsplat, 1.5.x) is imported on first use, so this
module imports fine without it. Its conventions are the ones the torch
reference implements: world-to-camera ``viewmats``, pixel centres at u + 0.5,
eps2d 0.3 dilation, SH colours + 0.5 clamped at 0, ``"RGB+ED"`` expected depth.
"""

from __future__ import annotations

import torch

from lift3d_core.errors import Lift3DError

INSTALL_HINT = "gsplat backend needs CUDA and `pip install gsplat` (1.5.x; it compiles its CUDA kernels on first use)"


def _rasterization():
    if not torch.cuda.is_available():
        raise Lift3DError(f"{INSTALL_HINT}; torch sees no CUDA device here. Use backend='torch' on a CPU.")
    try:
        from gsplat import rasterization
    except ImportError as exc:
        raise Lift3DError(f"{INSTALL_HINT}; importing gsplat failed: {exc}") from exc
    return rasterization


def rasterize_gsplat(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    sh: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    sh_degree: int,
    background: torch.Tensor | None,
    near: float,
    far: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same arguments and outputs as :func:`lift3d_core.splat.raster_torch.rasterize_torch`, plus *per-camera
    Gaussians*: every Gaussian tensor may carry a leading ``[C]`` axis (``means [C, N, 3]``, ``sh [C, N, K, 3]``,
    ...; those without it are shared by all cameras), camera ``c`` then sees row ``c``. One gsplat call renders
    them all (gsplat's batch dimensions, one camera per batch), so C frames of differently deformed Gaussians
    cost one projection, one tile sort and one rasterization, not C of each.

    The Gaussians must be float32 tensors on a CUDA device.
    """
    rasterization = _rasterization()
    if means.device.type != "cuda":
        raise Lift3DError("gsplat backend renders Gaussians on a CUDA device: move them with gaussians.to('cuda')")
    if means.dtype != torch.float32:
        raise Lift3DError(f"gsplat backend renders float32 Gaussians, got {means.dtype}")
    C = viewmats.shape[0]
    per_camera = means.dim() == 3 or quats.dim() == 3 or scales.dim() == 3 or opacities.dim() == 2 or sh.dim() == 4
    if per_camera:
        n = means.shape[-2]
        means = means.expand(C, n, 3)
        quats, scales = quats.expand(C, n, 4), scales.expand(C, n, 3)
        opacities = opacities.expand(C, n)
        sh = sh.expand(C, *sh.shape[-3:])
    backgrounds = None if background is None else background.expand(C, 3).contiguous()
    # View-dependent colour evaluated here, as gsplat would (SH at the direction from the camera centre, + 0.5,
    # clamped at 0), but from the camera centre -R^T t instead of gsplat's torch.inverse of the view matrices,
    # whose error check waits for the device on every render.
    from gsplat import spherical_harmonics

    campos = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # [C, 3]
    dirs = means - campos[:, None] if per_camera else means[None] - campos[:, None]  # [C, N, 3]
    colors = spherical_harmonics(sh_degree, dirs, sh if per_camera else sh.expand(C, *sh.shape))
    colors = colors.add(0.5).clamp_min(0.0)  # [C, N, 3]
    if per_camera:  # batch dims [C], one camera each
        colors, viewmats, Ks = colors[:, None], viewmats[:, None], Ks[:, None]
        backgrounds = None if backgrounds is None else backgrounds[:, None]
    colors, alphas, meta = rasterization(
        means=means,
        quats=quats,  # gsplat normalises them
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats.contiguous(),
        Ks=Ks.contiguous(),
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        eps2d=0.3,
        sh_degree=None,  # colours, not SH coefficients (above)
        packed=False,  # [C, N, ...] outputs, as RenderOutput promises
        backgrounds=backgrounds,
        render_mode="RGB+ED",
        rasterize_mode="classic",
    )
    means2d = meta["means2d"]  # [C, N, 2], or [C, 1, N, 2] per camera
    radii = meta["radii"]
    if per_camera:
        colors, alphas, radii = colors[:, 0], alphas[:, 0], radii[:, 0]
        means2d = _squeezed_grad_leaf(means2d)
    elif means2d.requires_grad:
        means2d.retain_grad()
    if radii.dim() == 3:  # gsplat >= 1.5: per-axis radii [C, N, 2]
        radii = radii.max(dim=-1).values
    return colors[..., :3], alphas, colors[..., 3:4], means2d, radii.to(torch.int32)


def _squeezed_grad_leaf(means2d: torch.Tensor) -> torch.Tensor:
    """``[C, N, 2]`` stand-in for gsplat's ``[C, 1, N, 2]`` screen positions whose ``.grad`` backward fills (a view
    of them would get none: the loss reaches the rasterizer through the original tensor, not through a view)."""
    leaf = means2d[:, 0].detach().requires_grad_(means2d.requires_grad)
    if means2d.requires_grad:

        def write(grad: torch.Tensor) -> None:
            leaf.grad = grad[:, 0]

        means2d.register_hook(write)
    return leaf

