"""Building the synthetic scene around a photograph: photo discs, grid discs, their colours, and the fit of the
colours the input view sees to the photograph (:func:`build_scene`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lift3d_core.camera import intrinsics_from_fov, rotmat_to_quat
from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import SH_C0, Gaussians, rgb_to_sh0
from lift3d_core.synthetic.composite import _surface_layers, composite_order, rasterize_in_order
from lift3d_core.synthetic.primitives import _pixel_rays, _raycast
from lift3d_core.synthetic.scene import PRESETS, SyntheticConfig, SyntheticScene

_OPACITY = 0.995  # nearly opaque surfaces; the 3DGS clamp (0.99-0.999) leaves a little see-through anyway
_GRID_SIGMA = 0.65  # disc std / grid spacing: alpha > 0.97 everywhere on a square grid (checked numerically)
_PHOTO_SIGMA = 0.6  # disc std / pixel footprint: sharper input view, alpha > 0.95 on 98% of the surface
_THIN = 1e-3  # normal-axis scale relative to the in-plane one
_MARGIN = 0.75  # grid samples this fraction of a cell from an occlusion or frame edge are kept
_MAX_FOOTPRINT = 1.0  # photo discs are capped at the grid spacing (grazing views would streak); the grid fills in


def fit_photo(image_uint8: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop ``uint8 [H, W, 3]`` to the aspect of ``width x height`` and resize (antialiased)."""
    img = np.asarray(image_uint8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 8:
        raise Lift3DError(f"synthetic generator expects uint8 [H, W, 3] of at least 8x8, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.copy()
    if w * height > h * width:  # too wide
        cw = round(h * width / height)
        x0 = (w - cw) // 2
        img = img[:, x0 : x0 + cw]
    else:
        ch = round(w * height / width)
        y0 = (h - ch) // 2
        img = img[y0 : y0 + ch]
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].double()
    t = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _footprint(X: np.ndarray, n: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input-view pixel footprint on the tangent plane at ``X [P, 3]`` (normal ``n``), camera at origin.

    The surface point seen through continuous pixel (u, v) is ``Y = (n.X)/(n.d) d`` with
    ``d = K^-1 (u, v, 1)``; its Jacobian ``J = [dY/du, dY/dv]`` ([P, 3, 2]) maps a pixel step to
    the surface. Returns the SVD axes ``[P, 3, 2]`` and singular values ``[P, 2]`` (scene units per pixel).
    """
    d = X / X[:, 2:3]
    nd = (n * d).sum(1)
    nd = np.where(nd < 0, -1.0, 1.0) * np.maximum(np.abs(nd), 1e-6)  # edge-on: a huge but finite footprint
    nX = (n * X).sum(1)
    cols = []
    for axis, f in ((0, K[0, 0]), (1, K[1, 1])):
        dd = np.zeros_like(X)
        dd[:, axis] = 1.0 / f
        ndd = n[:, axis] / f
        cols.append((nX / nd**2)[:, None] * (dd * nd[:, None] - d * ndd[:, None]))
    J = np.stack(cols, 2)
    U, S, _ = np.linalg.svd(J, full_matrices=False)
    return U, S


def _visible_from_input(primitives, X: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Points ``X [P, 3]`` inside the input image and not occluded (camera at origin)."""
    z = X[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = K[0, 0] * X[:, 0] / z + K[0, 2], K[1, 1] * X[:, 1] / z + K[1, 2]
    inside = (z > 1e-6) & (u >= 0) & (u <= width) & (v >= 0) & (v <= height)
    dist = np.linalg.norm(X, axis=1)
    t, _, _ = _raycast(primitives, np.zeros_like(X), X / np.maximum(dist, 1e-12)[:, None])
    return inside & (t >= dist - 1e-4 * (1.0 + dist))


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample float ``img [H, W, C]`` at continuous pixel-index coords (clamped to the border)."""
    H, W = img.shape[:2]
    x, y = np.clip(x, 0, W - 1), np.clip(y, 0, H - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return (
        img[y0, x0] * (1 - fx) * (1 - fy)
        + img[y0, x1] * fx * (1 - fy)
        + img[y1, x0] * (1 - fx) * fy
        + img[y1, x1] * fx * fy
    )


def _hue_rotation(theta: float) -> np.ndarray:
    """3x3 rotation of RGB about the grey axis by ``theta`` radians (greys stay grey)."""
    a = np.ones(3) / math.sqrt(3.0)
    ax = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return math.cos(theta) * np.eye(3) + (1 - math.cos(theta)) * np.outer(a, a) + math.sin(theta) * ax


def _procedural_rgb(
    photo: np.ndarray, uv: np.ndarray, face_id: np.ndarray, spacing: float, tile: float, seed: int
) -> np.ndarray:
    """Texture of unseen surfaces: the photo tiled with mirroring, per-face hue rotation and tint.

    photo: uint8 [H, W, 3]; uv: [P, 2] surface coordinates (scene units); face_id: [P] int.
    The photo is first reduced to about one texel per grid spacing so the discs do not alias it.
    """
    H, W = photo.shape[:2]
    tex_w = max(4, round(tile / spacing))
    tex_h = max(4, round(tex_w * H / W))
    t = torch.from_numpy(photo).permute(2, 0, 1)[None].double() / 255.0
    tex = (
        torch.nn.functional.interpolate(t, size=(tex_h, tex_w), mode="bilinear", antialias=True, align_corners=False)[0]
        .permute(1, 2, 0)
        .numpy()
    )
    rgb = np.zeros((len(uv), 3))
    for f in np.unique(face_id):
        m = face_id == f
        frng = np.random.default_rng([seed, 11, int(f)])
        offset = frng.uniform(0, 2 * tile, size=2)
        x = (uv[m, 0] + offset[0]) / tile * tex_w
        y = (uv[m, 1] + offset[1]) / tile * tex_w  # square texels
        # mirrored repeat: period 2*size, reflected in the second half
        x = np.abs(np.mod(x, 2 * tex_w) - tex_w) - 0.5
        y = np.abs(np.mod(y, 2 * tex_h) - tex_h) - 0.5
        col = _bilinear(tex, x, y)
        hue = _hue_rotation(frng.uniform(0.6, 2 * np.pi - 0.6))
        tint = frng.uniform(0.75, 1.15)
        rgb[m] = np.clip((col @ hue.T) * tint, 0.0, 1.0)
    return rgb


def _gaussians_from_surfels(xyz, t1, t2, sigma, rgb) -> Gaussians:
    """Flat discs: float64 arrays ``xyz, t1, t2 [P, 3]``, ``sigma [P, 2]``, ``rgb [P, 3]`` in [0, 1]."""
    n = np.cross(t1, t2)
    R = np.stack([t1, t2, n], axis=2)  # columns: local x, y, z (normal) axes
    quats = rotmat_to_quat(R)
    scales = np.concatenate([sigma, _THIN * sigma.min(1, keepdims=True)], 1)
    P = len(xyz)
    f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    return Gaussians(
        means=f32(xyz),
        log_scales=f32(np.log(scales)),
        quats=f32(quats),
        opacity_logits=torch.full((P,), math.log(_OPACITY / (1 - _OPACITY)), dtype=torch.float32),
        sh0=rgb_to_sh0(f32(rgb))[:, None, :],
        shN=torch.zeros((P, 15, 3), dtype=torch.float32),
    )


def build_scene(image_uint8: np.ndarray, cfg: SyntheticConfig) -> SyntheticScene:
    """Build the synthetic scene for a photograph.

    Args:
        image_uint8: ``uint8 [H, W, 3]`` RGB photograph (any size; centre-cropped and resized
            to ``cfg.width x cfg.height``).
        cfg: :class:`SyntheticConfig`.

    Returns:
        :class:`SyntheticScene`; rendering it from the identity camera with ``scene.K``
        reproduces the fitted photograph closely.
    """
    W, H = int(cfg.width), int(cfg.height)
    photo = fit_photo(image_uint8, W, H)
    photo_f = photo.astype(np.float64) / 255.0
    K = intrinsics_from_fov(cfg.fov_x_deg, W, H)
    preset = PRESETS[cfg.preset].scaled(cfg.scale)
    prims = preset.primitives
    room = preset.room
    bounds = np.stack([np.array(room.centre) - room.half, np.array(room.centre) + room.half])

    # 1. photo discs: one per input pixel, where its ray meets the scene
    rays = _pixel_rays(K, W, H)
    t, n_hit, idx = _raycast(prims, np.zeros_like(rays), rays)
    if not np.all(idx >= 0):
        raise Lift3DError("synthetic scene is not closed: some input rays hit nothing")
    X = t[:, None] * rays
    U, S = _footprint(X, n_hit, K)

    # 2. grid discs on what the photo discs do not cover; the global spacing is tuned so that about
    # cfg.hidden_gaussians remain (small and curved objects sample finer, see _MIN_CELLS, _CURVED_STEP)
    spacing = math.sqrt(sum(p.area() for p in prims) / cfg.hidden_gaussians)
    for _ in range(3):
        grid = [p.sample(spacing) for p in prims]
        keep = _unseen_mask(prims, grid, K, W, H, spacing)
        kept = sum(int(k.sum()) for k in keep)
        spacing *= math.sqrt(kept / cfg.hidden_gaussians)
    grid = [p.sample(spacing) for p in prims]
    keep = _unseen_mask(prims, grid, K, W, H, spacing)

    # photo discs wider than the grid would leave gaps for other views; the grid fills in there
    S_disc = np.minimum(S, _MAX_FOOTPRINT * spacing)
    g_xyz, g_t1, g_t2, g_step, g_rgb, g_prim = [], [], [], [], [], []
    for p_i, (g, k) in enumerate(zip(grid, keep)):
        xyz = g["xyz"][k]
        vis = _visible_from_input(prims, xyz, K, W, H)
        rgb = np.zeros((len(xyz), 3))
        if vis.any():
            u = K[0, 0] * xyz[vis, 0] / xyz[vis, 2] + K[0, 2] - 0.5
            v = K[1, 1] * xyz[vis, 1] / xyz[vis, 2] + K[1, 2] - 0.5
            rgb[vis] = _bilinear(photo_f, u, v)
        if (~vis).any():
            rgb[~vis] = _procedural_rgb(
                photo, g["uv"][k][~vis], 8 * p_i + g["face"][k][~vis], spacing, cfg.texture_tile * cfg.scale, cfg.seed
            )
        g_xyz.append(xyz)
        g_t1.append(g["t1"][k])
        g_t2.append(g["t2"][k])
        g_step.append(g["step"][k])
        g_rgb.append(rgb)
        g_prim.append(np.full(len(xyz), p_i, np.int32))

    p_t1, p_t2 = U[:, :, 0], U[:, :, 1]
    xyz = np.concatenate([X, *g_xyz])
    t1 = np.concatenate([p_t1, *g_t1])
    t2 = np.concatenate([p_t2, *g_t2])
    half = np.concatenate([0.5 * S_disc, 0.5 * np.concatenate(g_step)])
    sigma = np.concatenate([_PHOTO_SIGMA * S_disc, _GRID_SIGMA * np.concatenate(g_step)])
    rgb = np.concatenate([photo_f.reshape(-1, 3), *g_rgb])
    gaussians = _gaussians_from_surfels(xyz, t1, t2, sigma, rgb)
    photo_index = np.arange(W * H)
    layers = _surface_layers(prims, xyz, t1, t2, np.concatenate([idx.astype(np.int32), *g_prim]), W * H)

    # 3. fit the colours of every disc the input view sees (splats blur, and discs of hidden
    # surfaces peek past silhouettes) so that the input view reproduces the photograph
    order = composite_order(layers, np.eye(4), K, W, H)
    fitted = torch.as_tensor(_fit_input_colours(gaussians, photo_f, K, cfg.photo_fit_steps, order))
    gaussians.sh0 = rgb_to_sh0(fitted)[:, None, :]

    final_rgb = (gaussians.sh0[:, 0] * SH_C0 + 0.5).clamp(0, 1).numpy()
    return SyntheticScene(
        gaussians=gaussians,
        K=K,
        width=W,
        height=H,
        photo=photo,
        primitives=prims,
        bounds=bounds,
        extent=float(0.5 * np.linalg.norm(bounds[1] - bounds[0])),
        surface_xyz=xyz.astype(np.float32),
        surface_tangents=np.stack([t1, t2], 1).astype(np.float32),
        surface_half=half.astype(np.float32),
        surface_rgb=np.round(final_rgb * 255).astype(np.uint8),
        photo_index=photo_index,
        surface_primitive=layers.primitive,
        surface_normal=layers.normal,
        surface_priority=layers.priority,
        seed=int(cfg.seed),
        scale=float(cfg.scale),
        distortion=float(cfg.distortion),
        distortion_frequency=float(cfg.distortion_frequency),
        distortion_colour=float(cfg.distortion_colour),
        preset=cfg.preset,
        meta={"grid_spacing": spacing, "num_photo": W * H, "num_grid": int(sum(len(a) for a in g_xyz))},
    )


def _fit_input_colours(gaussians: Gaussians, photo_f: np.ndarray, K: np.ndarray, steps: int,
                       order: np.ndarray) -> np.ndarray:
    """Disc colours ``[N, 3]`` in [0, 1] after ``steps`` SIRT iterations on the input view.

    The input-view render is linear in the colours, ``I = W c`` (weights fixed by geometry). SIRT
    moves each disc by the residual averaged over the pixels it covers, weighted by its share:
    ``c += (W^T r) / (W^T 1)``; discs the input view does not see keep their colours. ``order``: the input
    view's :func:`composite_order`.
    """
    H, W = photo_f.shape[:2]
    colours = (gaussians.sh0[:, 0] * SH_C0 + 0.5).clamp(0.0, 1.0).detach().clone()
    if steps == 0:
        return colours.numpy()
    target = torch.as_tensor(photo_f, dtype=torch.float32)
    g = Gaussians(**gaussians.tensors())

    def weighted_back(residual_fn):
        c = colours.clone().requires_grad_(True)
        g.sh0 = rgb_to_sh0(c)[:, None, :]
        rgb = rasterize_in_order(g, order, np.eye(4), K, W, H)[0]
        (rgb * residual_fn(rgb.detach())).sum().backward()
        return c.grad

    share = weighted_back(lambda rgb: torch.ones_like(rgb))  # W^T 1, per channel
    seen = share > 1e-3  # a disc weighing less than this everywhere would swing wildly
    for _ in range(steps):
        step = weighted_back(lambda rgb: target - rgb)
        colours = torch.where(seen, (colours + step / share.clamp_min(1e-3)).clamp(0.0, 1.0), colours)
    return colours.numpy()


def _unseen_mask(prims, grid, K, W, H, spacing) -> list[np.ndarray]:
    """Which grid samples to keep: those the photo discs do not already cover.

    A sample is dropped only if it and four neighbours ``_MARGIN`` of its cell away along its
    tangents are all visible from the input camera (so the grid overlaps the photo discs by a thin
    band at occlusion and frame edges: no cracks there in other views), and the photo discs there
    are at most ``_MAX_FOOTPRINT`` global spacings apart (at grazing angles the grid keeps
    covering). Returns a boolean mask per primitive.
    """
    masks = []
    for g in grid:
        xyz = g["xyz"]
        covered = np.ones(len(xyz), bool)
        offsets = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)) if _MARGIN > 0 else ((0, 0),)
        for o1, o2 in offsets:
            p = xyz + _MARGIN * (o1 * g["step"][:, :1] * g["t1"] + o2 * g["step"][:, 1:] * g["t2"])
            covered &= _visible_from_input(prims, p, K, W, H)
        if covered.any():
            n = np.cross(g["t1"][covered], g["t2"][covered])
            _, S = _footprint(xyz[covered], n, K)
            covered[np.flatnonzero(covered)[S.max(1) > _MAX_FOOTPRINT * spacing]] = False
        masks.append(~covered)
    return masks
