"""The Gaussian model shared by every rasterizer, trainer and file format.

Parameters are stored *pre-activation*, as the original 3DGS optimises them:
``scale = exp(log_scales)``, ``opacity = sigmoid(opacity_logits)``, rotation the
normalised quaternion ``quats`` in (w, x, y, z) order, colour from real
spherical-harmonic coefficients with the 3DGS offset ``rgb = SH(dir) + 0.5``
(clamped at 0).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree`` (0..3)."""
    return (degree + 1) ** 2


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """``rgb [..., 3]`` in [0, 1] -> DC coefficient with the 3DGS +0.5 offset removed."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_sh0`."""
    return sh0 * SH_C0 + 0.5


@dataclass
class Gaussians:
    """N anisotropic 3D Gaussians in world coordinates.

    Attributes:
        means: ``[N, 3]`` float32 centres, world frame.
        log_scales: ``[N, 3]`` float32, log of the per-axis standard deviations.
        quats: ``[N, 4]`` float32 rotation quaternions (w, x, y, z), not necessarily unit.
        opacity_logits: ``[N]`` float32, ``opacity = sigmoid(opacity_logits)``.
        sh0: ``[N, 1, 3]`` float32 DC spherical-harmonic coefficients.
        shN: ``[N, K - 1, 3]`` float32 higher-order coefficients, ``K = (degree + 1) ** 2``.
    """

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh0: torch.Tensor
    shN: torch.Tensor

    # -- derived quantities -------------------------------------------------
    @property
    def num(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        k = self.shN.shape[-2] + 1
        degree = round(k**0.5) - 1
        if num_sh_bases(degree) != k:
            raise ValueError(f"shN holds {k - 1} coefficients, not (d+1)^2-1 for any degree")
        return degree

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def unit_quats(self) -> torch.Tensor:
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def sh(self) -> torch.Tensor:
        """``[N, K, 3]`` all SH coefficients (``[C, N, K, 3]`` for per-camera Gaussians, see
        ``render.render_w2c_each``)."""
        return torch.cat([self.sh0, self.shN], dim=-2)

    # -- structural helpers ---------------------------------------------------
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.field_names()}

    def map(self, fn) -> Gaussians:
        """Apply ``fn`` to every tensor: ``g.map(lambda t: t.detach())``."""
        return Gaussians(**{k: fn(v) for k, v in self.tensors().items()})

    def to(self, device: torch.device | str) -> Gaussians:
        return self.map(lambda t: t.to(device))

    def detach(self) -> Gaussians:
        return self.map(lambda t: t.detach())

    def clone(self) -> Gaussians:
        return self.map(lambda t: t.clone())

    def __getitem__(self, index) -> Gaussians:
        """Select Gaussians by a boolean mask or index tensor over N."""
        return self.map(lambda t: t[index])

    @staticmethod
    def cat(parts: list[Gaussians]) -> Gaussians:
        return Gaussians(**{k: torch.cat([getattr(p, k) for p in parts]) for k in Gaussians.field_names()})

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Named float32 arrays, the layout stored in artifacts."""
        return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.tensors().items()}

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray], device: torch.device | str = "cpu") -> Gaussians:
        missing = [k for k in cls.field_names() if k not in arrays]
        if missing:
            raise KeyError(f"Gaussian arrays missing {missing}")
        return cls(**{k: torch.as_tensor(np.asarray(arrays[k], dtype=np.float32), device=device) for k in cls.field_names()})
