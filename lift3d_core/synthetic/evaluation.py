"""Evaluation helpers on the synthetic scene: held-out cameras between a tree's clips (:func:`eval_cameras`) and
noisy points on its surfaces (:func:`sample_surface_points`).
"""

from __future__ import annotations

import numpy as np

from lift3d_core.camera import interpolate_poses, rotation_angle
from lift3d_core.errors import Lift3DError
from lift3d_core.synthetic.scene import SyntheticScene


def eval_cameras(tree, n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out cameras between the tree's clips, never on them.

    Each is an interpolation (slerp rotation, lerp centre, same weight for the frame code) between
    frame t of two sibling clips (same parent) whose motions are roughly orthogonal (|cos| < 0.7
    between their displacements and < 120 degrees between their final rotations, e.g. "up" and
    "orbit right"), at a weight in [0.3, 0.7] and t in the
    clips' last three quarters, so it is off the tree and sees content both clips saw.

    Args:
        tree: :class:`CameraTree`.
        n: number of cameras.
        seed: selects pairs, t and weights.

    Returns:
        ``c2w [n, 4, 4]`` float64 OpenCV and ``frame_codes [n, 2]`` float64.
    """
    by_parent: dict = {}
    for clip in tree.clips:
        by_parent.setdefault(clip.parent, []).append(clip)
    pairs = []
    for sibs in by_parent.values():
        for i in range(len(sibs)):
            for j in range(i + 1, len(sibs)):
                a, b = sibs[i], sibs[j]
                ma = a.c2w[-1, :3, 3] - a.c2w[0, :3, 3]
                mb = b.c2w[-1, :3, 3] - b.c2w[0, :3, 3]
                cos = float(ma @ mb / max(np.linalg.norm(ma) * np.linalg.norm(mb), 1e-12))
                turn = float(np.degrees(rotation_angle(a.c2w[-1, :3, :3], b.c2w[-1, :3, :3])))
                # opposite moves (U/D, left/right orbit) would interpolate back onto the parent's path
                if abs(cos) < 0.7 and turn < 120.0:
                    pairs.append((a, b))
    if not pairs:
        raise Lift3DError("eval_cameras: the tree has no sibling clips moving in different directions")
    rng = np.random.default_rng([int(seed), 0xE7A1])
    c2w = np.zeros((n, 4, 4))
    codes = np.zeros((n, 2))
    for k in range(n):
        a, b = pairs[rng.integers(len(pairs))]
        T = min(len(a.c2w), len(b.c2w))
        t = int(rng.integers(max(1, T // 4), T))
        w = float(rng.uniform(0.3, 0.7))
        c2w[k] = interpolate_poses(a.c2w[t], b.c2w[t], np.array([w]))[0]
        codes[k] = (1 - w) * np.asarray(a.frame_code[t]) + w * np.asarray(b.frame_code[t])
    return c2w, codes


def sample_surface_points(scene: SyntheticScene, n: int, noise_std: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy points on the scene's surfaces, uniform by area, with their colours.

    Each point picks a surface sample (disc) with probability proportional to its cell area,
    a uniform position within that cell in the tangent plane (kept inside the room), then
    isotropic Gaussian noise.

    Args:
        scene: :class:`SyntheticScene`.
        n: number of points.
        noise_std: std of the added noise, scene units.
        seed: random seed.

    Returns:
        ``xyz float32 [n, 3]`` world and ``rgb uint8 [n, 3]``.
    """
    rng = np.random.default_rng([int(seed), 0x5A3])
    half = scene.surface_half.astype(np.float64)
    area = 4.0 * half[:, 0] * half[:, 1]
    idx = rng.choice(len(area), size=int(n), p=area / area.sum())
    ab = rng.uniform(-1.0, 1.0, size=(int(n), 2)) * half[idx]
    tang = scene.surface_tangents[idx].astype(np.float64)
    xyz = scene.surface_xyz[idx] + ab[:, 0:1] * tang[:, 0] + ab[:, 1:2] * tang[:, 1]
    xyz = np.clip(xyz, scene.bounds[0], scene.bounds[1])  # wall cells centred on the room's edges overhang them
    xyz = xyz + rng.normal(0.0, noise_std, size=xyz.shape)
    return xyz.astype(np.float32), scene.surface_rgb[idx].copy()
