"""The per-frame distortion model: a smooth field of the frame code that moves and tints the scene, imitating a
generated video's per-frame 3D inconsistency; zero at the input view's code (:data:`INPUT_CODE`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lift3d_core.splat.gaussians import SH_C0, Gaussians
from lift3d_core.synthetic.scene import SyntheticScene

INPUT_CODE = (0.5, 0.5)  # frame code of the input view (METHOD.md section 3)


def distortion_weight(frame_code) -> float:
    """Smooth ramp ``1 - exp(-|c - (0.5, 0.5)|^2 / (2 * 0.08^2))``: 0 at the input view, ~1 a clip away.

    0.08 in code units is about 5 frames (a frame step is 1/60 for the default tree): generated
    videos start exactly at the conditioning image and drift from it within a few frames.
    """
    dc = np.asarray(frame_code, dtype=np.float64) - np.asarray(INPUT_CODE)
    return float(1.0 - math.exp(-float(dc @ dc) / (2 * 0.08**2)))


def distort_gaussians(
    gaussians: Gaussians,
    frame_code,
    amplitude: float,
    seed: int,
    *,
    frequency: float = 0.3,
    colour: float = 0.0,
    components: int = 4,
) -> Gaussians:
    """One frame's 3D inconsistency: a smooth displacement (and tint) of the whole scene.

    ``delta(x, c) = amplitude * w(c) * sqrt(2 / K) * sum_k a_k sin(2 pi f_k u_k . x + phi_k + 2 pi b_k . c)``
    with K = ``components`` random unit directions ``a_k``, ``u_k``, frequencies ``f_k`` within 30% of
    ``frequency`` and code frequencies ``b_k`` ~ N(0, 1.5) cycles per unit code (adjacent frames, 1/60
    apart in code, differ by ~15% of the amplitude). ``w`` is :func:`distortion_weight`, exactly 0 at
    the input view's code (0.5, 0.5). So ``amplitude`` is the RMS displacement far from the input
    view. The colour moves the same way: ``sh0`` gains a smooth RGB field of RMS ``colour * w``.

    Args:
        gaussians: N Gaussians (any device).
        frame_code: ``[2]`` the frame's code (u, v).
        amplitude: RMS displacement, scene units (>= 0).
        seed: selects the field; the same seed and code give the same output.
        frequency: spatial frequency, cycles per scene unit.
        colour: RMS colour change in RGB units ([0, 1] scale).

    Returns:
        new :class:`Gaussians` with moved ``means`` and tinted ``sh0`` (other tensors shared);
        ``gaussians`` itself when the weight or both amplitudes are 0.
    """
    weight = distortion_weight(frame_code)
    if weight == 0.0 or (amplitude == 0.0 and colour == 0.0):
        return gaussians
    rng = np.random.default_rng([int(seed), 0xD157])
    a = rng.normal(size=(components, 3))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    u = rng.normal(size=(components, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    k = 2 * np.pi * frequency * rng.uniform(0.7, 1.3, size=(components, 1)) * u
    phase0 = rng.uniform(0, 2 * np.pi, size=components)
    b = rng.normal(0.0, 1.5, size=(components, 2))
    tint_u = rng.normal(size=(3, 3))
    tint_k = 2 * np.pi * frequency * tint_u / np.linalg.norm(tint_u, axis=1, keepdims=True)
    tint_phase0 = rng.uniform(0, 2 * np.pi, size=3)
    tint_b = rng.normal(0.0, 1.5, size=(3, 2))

    dc = np.asarray(frame_code, dtype=np.float64) - np.asarray(INPUT_CODE)
    dev, dt = gaussians.means.device, gaussians.means.dtype
    T = lambda x: torch.as_tensor(np.asarray(x), dtype=dt, device=dev)  # noqa: E731
    x = gaussians.means.detach()
    out = Gaussians(**gaussians.tensors())
    if amplitude > 0.0:
        waves = torch.sin(x @ T(k).T + T(phase0 + 2 * np.pi * (b @ dc)))  # [N, K]
        out.means = gaussians.means + (amplitude * weight * math.sqrt(2.0 / components)) * (waves @ T(a))
    if colour > 0.0:
        tint = torch.sin(x @ T(tint_k).T + T(tint_phase0 + 2 * np.pi * (tint_b @ dc)))  # [N, 3]
        out.sh0 = gaussians.sh0 + ((colour * weight * math.sqrt(2.0) / SH_C0) * tint)[:, None, :]
    return out


def distort_scene_gaussians(
    scene: SyntheticScene, frame_code, distortion: float, gaussians: Gaussians | None = None
) -> Gaussians:
    """:func:`distort_gaussians` in the scene's units: ``distortion`` is a fraction of ``scene.scale``.

    ``gaussians`` defaults to ``scene.gaussians`` (pass a copy on another device to render there).
    """
    return distort_gaussians(
        scene.gaussians if gaussians is None else gaussians,
        frame_code,
        distortion * scene.scale,
        scene.seed,
        frequency=scene.distortion_frequency / scene.scale,
        colour=scene.distortion_colour * distortion,
    )
