"""Real spherical harmonics up to degree 3 in the basis of 3DGS and gsplat.

The basis is the real SH *without* the Condon-Shortley phase, i.e. the common
real SH ``Y_lm`` multiplied by ``(-1)^m``; this is the sign convention of the
original 3DGS CUDA code and of gsplat, so coefficients trained by either load
unchanged. Coefficient ``k = l^2 + l + m`` (``m = -l..l``). The 3DGS ``+0.5``
colour offset is *not* applied here (see :func:`render`).
"""

from __future__ import annotations

import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import SH_C0, num_sh_bases

SH_C1 = 0.4886025119029199  # sqrt(3 / (4 pi))
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)

MAX_SH_DEGREE = 3


def _basis_rows(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, degree: int) -> list[torch.Tensor]:
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return out


def _check_degree(degree: int) -> None:
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise Lift3DError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")


def sh_basis(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """Evaluate the SH basis functions.

    Args:
        dirs: ``[..., 3]`` unit directions (x, y, z) in world coordinates.
        degree: 0..3.

    Returns:
        ``[..., (degree + 1) ** 2]`` basis values, same dtype as ``dirs``.
    """
    _check_degree(degree)
    return torch.stack(_basis_rows(*dirs.unbind(-1), degree), dim=-1)


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor, degree: int | None = None) -> torch.Tensor:
    """Colour from SH coefficients, without the 3DGS ``+0.5`` offset and without clamping.

    Args:
        sh: ``[N, K, 3]`` coefficients, ``K >= (degree + 1) ** 2``.
        dirs: ``[N, 3]`` unit viewing directions (camera centre -> Gaussian mean);
            unused for degree 0.
        degree: bands to use; ``None`` uses every band ``sh`` holds. Higher
            coefficients beyond ``degree`` are ignored, as in gsplat.

    Returns:
        ``[N, 3]``.
    """
    k = sh.shape[-2]
    if degree is None:
        degree = round(k**0.5) - 1
    _check_degree(degree)
    n = num_sh_bases(degree)
    if n > k:
        raise Lift3DError(f"sh holds {k} coefficients per channel, degree {degree} needs {n}")
    if degree == 0:
        return SH_C0 * sh[:, 0, :]
    # Basis-major layout [n, 3, N]: the sum over bases (and, backwards, over channels) then
    # adds whole contiguous rows, ~2x faster on a CPU than reducing small inner dimensions.
    basis = torch.stack(_basis_rows(*dirs.T.contiguous().unbind(0), degree))  # [n, N]
    return (basis[:, None, :] * sh[:, :n, :].permute(1, 2, 0).contiguous()).sum(0).T
