"""Compositing order of the synthetic scene's discs (:func:`composite_order`, see :mod:`lift3d_core.synthetic`)
and the rasterizer that composites in that order (:func:`rasterize_in_order`).
"""

from __future__ import annotations

import numpy as np
import torch

from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.synthetic.primitives import Box, Cylinder, _yaw
from lift3d_core.synthetic.scene import SurfaceLayers, SyntheticScene


def _primitive_centre(prim) -> np.ndarray:
    if isinstance(prim, Cylinder):
        return np.array([prim.centre_xz[0], 0.5 * (prim.y0 + prim.y1), prim.centre_xz[1]])
    return np.array(prim.centre, dtype=np.float64)


def _surface_layers(prims, xyz, t1, t2, primitive, num_photo: int) -> SurfaceLayers:
    """:class:`SurfaceLayers` of discs ``xyz, t1, t2 [M, 3]`` on ``prims[primitive]``, the first ``num_photo``
    being photo discs. Priority: photo discs before grid discs; on a box's face, a disc nearer the face's edges
    later (``-distance to the nearest edge``), so a room's corner shows each wall's own discs, not the halves of
    the neighbouring wall's edge discs that lie beyond it."""
    n = np.cross(t1, t2)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    priority = np.zeros(len(xyz))
    priority[num_photo:] = 1e3  # every grid disc after every photo disc of the same surface
    for p, prim in enumerate(prims):
        m = primitive == p
        out = np.sign(((xyz[m] - _primitive_centre(prim)) * n[m]).sum(1, keepdims=True))
        inside = isinstance(prim, Box) and prim.inside
        n[m] *= -out if inside else out
        if isinstance(prim, Box):
            local = np.abs((xyz[m] - np.array(prim.centre)) @ _yaw(prim.yaw_deg)) - np.array(prim.half)
            # on the face where |local| reaches half; the distance to the edges is the least of the other two
            face = np.argmax(local, axis=1)
            inner = np.where(np.arange(3)[None] == face[:, None], np.inf, -local)
            priority[m] -= inner.min(1)
    return SurfaceLayers(tuple(prims), np.asarray(xyz, np.float64), np.asarray(primitive, np.int32),
                         n.astype(np.float32), priority.astype(np.float32))


def _primitive_order(prims, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rank ``[P]`` of every primitive in one camera's compositing order: the objects front to back, the room
    (``prims[0]``, which contains them) last.

    Object ``a`` goes before ``b`` when, on the rays (a grid about 128 wide) that meet both, ``a`` is met first
    more often; disjoint convex objects overlap on screen in one order only. Among objects free to go next, the
    nearest (least first-hit depth, else centre distance) goes first.
    """
    P = len(prims)
    rank = np.full(P, P - 1)
    if P == 1:
        return rank
    step = max(1, round(width / 128))
    u, v = np.meshgrid(np.arange(0, width, step) + 0.5, np.arange(0, height, step) + 0.5)
    rays = np.stack([(u.ravel() - K[0, 2]) / K[0, 0], (v.ravel() - K[1, 2]) / K[1, 1], np.ones(u.size)], 1)
    d = rays @ c2w[:3, :3].T
    o = np.tile(c2w[:3, 3], (len(d), 1))
    t = np.stack([prims[p].intersect(o, d)[0] for p in range(1, P)])  # [P - 1, rays]
    both = np.isfinite(t)[:, None] & np.isfinite(t)[None]
    first = (both & (t[:, None] < t[None])).sum(-1)  # [a, b]: rays meeting a before b
    before = first > first.T
    hit = np.isfinite(t).any(1)
    near = np.where(hit, np.where(np.isfinite(t), t, np.inf).min(1), np.inf)
    dist = np.array([np.linalg.norm(_primitive_centre(prims[p]) - c2w[:3, 3]) for p in range(1, P)])
    left = list(range(P - 1))
    for r in range(P - 1):
        free = [a for a in left if not any(before[b, a] for b in left if b != a)] or left  # a cycle: nearest first
        nxt = min(free, key=lambda a: (near[a], dist[a]))
        rank[nxt + 1] = r
        left.remove(nxt)
    return rank


def composite_order(layers, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Front-to-back compositing order ``int64 [M]`` of every disc of a synthetic scene for one camera.

    layers: a :class:`SyntheticScene` or :class:`SurfaceLayers`; c2w: ``[4, 4]`` OpenCV; K: ``[3, 3]``.
    Surfaces go in :func:`_primitive_order`; an object's discs facing the camera before those facing away (a
    convex object hides its back behind its front); within each, by the discs' fixed priority, then index.
    Nothing depends on where a disc sits along the view direction within its surface, so the order of two
    neighbours on one surface never flips as the camera turns.
    """
    if isinstance(layers, SyntheticScene):
        layers = layers.layers
    rank = _primitive_order(layers.primitives, np.asarray(c2w, np.float64), K, width, height)
    facing = ((np.asarray(c2w)[:3, 3] - layers.xyz) * layers.normal).sum(1) > 0
    group = 2 * rank[layers.primitive] + ~facing
    return np.lexsort((np.arange(len(group)), layers.priority, group))


def rasterize_in_order(
    gaussians: Gaussians, order: np.ndarray, c2w: np.ndarray, K: np.ndarray, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one camera compositing the Gaussians front to back in ``order`` (not by depth).

    The torch reference rasterizer's projection and compositing (:mod:`lift3d_core.splat.raster_torch`, the
    conventions of :func:`lift3d_core.splat.render.render`: pixel u's centre at u + 0.5, black background), on
    the Gaussians' device, differentiable in their tensors. gaussians: N; order: ``[N]`` a permutation;
    c2w ``[4, 4]``; K ``[3, 3]``. Returns ``rgb [H, W, 3]`` and the expected camera z ``depth [H, W]``.
    """
    from lift3d_core.splat.raster_torch import composite, project_gaussians
    from lift3d_core.splat.sh import eval_sh

    dev, dt = gaussians.means.device, gaussians.means.dtype
    viewmat = torch.as_tensor(np.linalg.inv(np.asarray(c2w, np.float64)), dtype=dt, device=dev)
    Kt = torch.as_tensor(np.asarray(K, np.float64), dtype=dt, device=dev)
    opacities = gaussians.opacities
    means2d, conics, z, radii = project_gaussians(gaussians.means, gaussians.quats, gaussians.scales, opacities,
                                                  viewmat, Kt, width, height, 0.01, 1e10)
    order_t = torch.as_tensor(np.asarray(order, np.int64), device=dev)
    order_t = order_t[(radii > 0).all(-1).index_select(0, order_t)]
    degree = gaussians.sh_degree
    dirs = None
    if degree > 0:
        campos = torch.as_tensor(np.asarray(c2w, np.float64)[:3, 3], dtype=dt, device=dev)
        dirs = torch.nn.functional.normalize(gaussians.means - campos, dim=-1)
    colours = (eval_sh(gaussians.sh, dirs, degree) + 0.5).clamp_min(0.0)
    out, acc = composite(means2d, conics, opacities, torch.cat([colours, z[:, None]], -1), radii, order_t,
                         width, height)
    return out[..., :3], out[..., 3] / acc.clamp_min(1e-10)
