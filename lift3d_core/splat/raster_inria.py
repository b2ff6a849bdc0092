"""The ``inria`` backend: the original 3DGS ``diff_gaussian_rasterization``, when installed.

Kept for comparisons with the paper's code; it differs from the torch / gsplat
backends in ways its CUDA code fixes:

- principal point must be the image centre (it only takes tan(FOV/2));
- alpha is clamped to 0.99 (not 0.999), the screen radius is 3 sigma of the
  larger eigenvalue (not the opacity-aware box), and Gaussians with camera
  z <= 0.2 are always culled (``near`` can only cull more: opacities of
  Gaussians outside [near, far] are zeroed);
- it returns colour only, so alpha and depth take a second pass that
  composites (z, 1, 0) as colours.

``means2d`` is a leaf ``[C, N, 2]`` of projected means whose ``.grad`` is the
pixel-space gradient (Inria's own screen-space gradient is in NDC units).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.raster_torch import project_gaussians

INSTALL_HINT = (
    "inria backend needs CUDA and the original 3DGS rasterizer: "
    "`pip install git+https://github.com/graphdeco-inria/diff-gaussian-rasterization` (builds CUDA code)"
)


def _projection_matrix(near: float, far: float, tan_x: float, tan_y: float, device) -> torch.Tensor:
    """The OpenGL-style projection of the 3DGS code (z in [0, 1], row-vector layout after .T)."""
    P = torch.zeros(4, 4, device=device)
    P[0, 0], P[1, 1] = 1.0 / tan_x, 1.0 / tan_y
    P[3, 2] = 1.0
    P[2, 2] = far / (far - near)
    P[2, 3] = -(far * near) / (far - near)
    return P


def rasterize_inria(
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
    """Same arguments and outputs as :func:`lift3d_core.splat.raster_torch.rasterize_torch`."""
    if not torch.cuda.is_available():
        raise Lift3DError(f"{INSTALL_HINT}; torch sees no CUDA device here")
    try:
        from diff_gaussian_rasterization import GaussianRasterizationSettings, GaussianRasterizer
    except ImportError as exc:
        raise Lift3DError(f"{INSTALL_HINT}; import failed: {exc}") from exc
    if means.device.type != "cuda" or means.dtype != torch.float32:
        raise Lift3DError("inria backend renders float32 Gaussians on a CUDA device: gaussians.to('cuda')")

    dev, C, N = means.device, viewmats.shape[0], means.shape[0]
    with torch.no_grad():
        projected = [
            project_gaussians(means, quats, scales, opacities, viewmats[c], Ks[c], width, height, near, far)
            for c in range(C)
        ]
    means2d = torch.stack([p[0] for p in projected]).requires_grad_(True)
    rotations = F.normalize(quats, dim=-1)
    bg = torch.zeros(3, device=dev) if background is None else background
    extra = {"antialiasing": False} if "antialiasing" in GaussianRasterizationSettings._fields else {}
    rgbs, alphas, depths, radii = [], [], [], []
    for c in range(C):
        fx, fy, cx, cy = (float(v) for v in (Ks[c, 0, 0], Ks[c, 1, 1], Ks[c, 0, 2], Ks[c, 1, 2]))
        if abs(cx - width / 2) > 1e-3 * width or abs(cy - height / 2) > 1e-3 * height:
            raise Lift3DError(
                "inria backend supports only a principal point at the image centre; use backend='torch' or 'gsplat'"
            )
        tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
        view_T = viewmats[c].T.contiguous()  # 3DGS stores matrices for row vectors
        settings = dict(
            image_height=height,
            image_width=width,
            tanfovx=tan_x,
            tanfovy=tan_y,
            scale_modifier=1.0,
            viewmatrix=view_T,
            projmatrix=view_T @ _projection_matrix(max(near, 0.01), min(far, 1e6), tan_x, tan_y, dev).T,
            sh_degree=sh_degree,
            campos=torch.linalg.inv(viewmats[c])[:3, 3],
            prefiltered=False,
            debug=False,
            **extra,
        )
        z = means @ viewmats[c, 2, :3] + viewmats[c, 2, 3]  # camera z, differentiable for the depth pass
        in_range = ((z >= near) & (z <= far)).to(opacities.dtype)[:, None]
        # Inria's screen-space gradient is d/d(NDC) = d/d(pixel) * size / 2: scale so means2d.grad is per pixel.
        screen = torch.cat([means2d[c] * means2d.new_tensor([2.0 / width, 2.0 / height]), means2d.new_zeros(N, 1)], -1)
        common = {"means3D": means, "means2D": screen, "opacities": opacities[:, None] * in_range}
        common.update(scales=scales, rotations=rotations)
        rgb, r = GaussianRasterizer(GaussianRasterizationSettings(bg=bg, **settings))(shs=sh, **common)[:2]
        z_one = torch.stack([z, torch.ones_like(z), torch.zeros_like(z)], -1)
        zw = GaussianRasterizer(GaussianRasterizationSettings(bg=torch.zeros(3, device=dev), **settings))(
            colors_precomp=z_one, **common
        )[0]
        alpha = zw[1]
        rgbs.append(rgb.permute(1, 2, 0))
        alphas.append(alpha[..., None])
        depths.append((zw[0] / alpha.clamp_min(1e-10))[..., None])
        radii.append(r.to(torch.int32))
    return torch.stack(rgbs), torch.stack(alphas), torch.stack(depths), means2d, torch.stack(radii)
