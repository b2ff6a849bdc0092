"""Camera pose refinement during 3DGS training: a small SE(3) correction per training frame.

A calibration's cameras carry a residual error (COLMAP's: 0.1-0.2 degrees, a third of a pixel at 128x96, see
bench/RESULTS.md) that costs held-out PSNR even with perfect points. Training then also optimises, for every frame,
six numbers ``xi = (rho, omega)`` (zero at the start) that move its camera; the photometric loss reaches them
through the rasterizer's world-to-camera input (both rasterizers differentiate it: gsplat natively, the torch
reference when the matrix requires grad). gsplat's ``simple_trainer`` does the same (``pose_opt``).

Conventions (OpenCV cameras, ``lift3d_core.camera``):

* ``xi [F, 6]``: ``rho = xi[:, :3]`` a translation in units of ``translation_scale`` (the trainer passes the scene
  extent, so one learning rate serves rotation and translation), ``omega = xi[:, 3:]`` an axis-angle rotation in
  radians. Both act in the camera's own frame.
* The correction ``D = [[exp(omega), rho * translation_scale], [0, 1]]`` is applied on the camera side:
  ``w2c' = D @ w2c``, so ``c2w' = c2w @ D^-1``. ``xi = 0`` is the identity exactly (``w2c' == w2c`` bit for bit).
* Frozen frames (the input view: its camera defines the calibrated frame) keep ``xi = 0`` for good: their rows get
  no gradient and Adam never moves them.
"""

from __future__ import annotations

import numpy as np
import torch

# below this squared angle the Rodrigues coefficients are their Taylor series (no 0/0, a finite gradient at 0)
_SMALL_ANGLE2 = 1e-8


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` of axis-angle vectors ``omega [..., 3]`` (radians), Rodrigues' formula
    ``I + a [w]x + b [w]x^2`` with ``a = sin t / t``, ``b = (1 - cos t) / t^2``; smooth and exact at 0."""
    t2 = (omega * omega).sum(-1, keepdim=True)[..., None]  # [..., 1, 1]
    small = t2 < _SMALL_ANGLE2
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    t = torch.sqrt(t2_safe)
    a = torch.where(small, 1.0 - t2 / 6.0, torch.sin(t) / t)
    b = torch.where(small, 0.5 - t2 / 24.0, (1.0 - torch.cos(t)) / t2_safe)
    wx, wy, wz = omega.unbind(-1)
    zero = torch.zeros_like(wx)
    hat = torch.stack([zero, -wz, wy, wz, zero, -wx, -wy, wx, zero], dim=-1).reshape(*omega.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(hat)
    return eye + a * hat + b * (hat @ hat)


def se3_correction(xi: torch.Tensor, translation_scale: float = 1.0) -> torch.Tensor:
    """``[..., 4, 4]`` correction ``D`` of ``xi [..., 6]`` (see the module docstring): rotation ``exp(xi[3:])``,
    translation ``xi[:3] * translation_scale``."""
    top = torch.cat([so3_exp(xi[..., 3:]), (xi[..., :3] * translation_scale)[..., None]], dim=-1)  # [..., 3, 4]
    bottom = torch.zeros(*xi.shape[:-1], 1, 4, dtype=xi.dtype, device=xi.device)
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def refined_c2w(c2w: np.ndarray, xi: np.ndarray | torch.Tensor, translation_scale: float = 1.0) -> np.ndarray:
    """The refined cameras ``c2w @ D^-1``: ``c2w [F, 4, 4]`` OpenCV camera-to-world, ``xi [F, 6]``; float64."""
    D = se3_correction(torch.as_tensor(np.asarray(xi, np.float64) if not isinstance(xi, torch.Tensor) else xi)
                       .detach().cpu().double(), translation_scale).numpy()
    return np.asarray(c2w, np.float64) @ np.linalg.inv(D)


def correction_magnitudes(xi: np.ndarray | torch.Tensor, translation_scale: float = 1.0) -> dict[str, float]:
    """Mean and max of the corrections' rotation angle (degrees) and translation (world units) over the frames."""
    xi = torch.as_tensor(xi).detach().cpu().double()
    angle = torch.rad2deg(xi[:, 3:].norm(dim=-1))
    shift = xi[:, :3].norm(dim=-1) * translation_scale
    return {"rotation_deg_mean": float(angle.mean()), "rotation_deg_max": float(angle.max()),
            "translation_mean": float(shift.mean()), "translation_max": float(shift.max())}


class PoseCorrections(torch.nn.Module):
    """Per-frame corrections ``xi [F, 6]`` (a zero-initialised Parameter) and the frames they leave alone.

    Args:
        num_frames: F.
        frozen: indices of frames whose camera never moves (the input view).
        translation_scale: world units of one unit of ``rho`` (the scene extent).
    """

    def __init__(self, num_frames: int, frozen: tuple[int, ...] = (0,), translation_scale: float = 1.0):
        super().__init__()
        self.translation_scale = float(translation_scale)
        self.xi = torch.nn.Parameter(torch.zeros(num_frames, 6))
        free = torch.ones(num_frames, 1)
        free[list(frozen)] = 0.0
        self.register_buffer("free", free)

    def forward(self, viewmats: torch.Tensor) -> torch.Tensor:
        """``w2c' = D(xi) @ w2c`` of ``viewmats [F, 4, 4]`` (world-to-camera, the parameter's dtype and device);
        frozen frames get ``xi * 0``: the identity exactly, and no gradient."""
        return se3_correction(self.xi * self.free, self.translation_scale) @ viewmats

    def penalty(self) -> torch.Tensor:
        """Mean over the frames of ``|xi|^2``: an L2 pull toward the calibration's cameras."""
        return (self.xi * self.free).square().sum(-1).mean()

    def refined_c2w(self, c2w: np.ndarray) -> np.ndarray:
        """``[F, 4, 4]`` float64 camera-to-world of the refined cameras, from the unrefined ``c2w``."""
        return refined_c2w(c2w, self.xi.detach() * self.free, self.translation_scale)


__all__ = ["PoseCorrections", "correction_magnitudes", "refined_c2w", "se3_correction", "so3_exp"]
