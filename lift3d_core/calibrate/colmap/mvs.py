"""Dense depth from the registered frames by plane-sweep stereo on any torch device (pycolmap's patch-match
stereo needs CUDA).

For every registered frame (the reference):

1. sources: the registered frames that share the most triangulated points with it, among those whose shared
   points are seen under a median triangulation angle of at least ``mvs_min_angle`` (depth from a narrower
   baseline is mostly noise);
2. a plane sweep: ``mvs_planes`` fronto-parallel planes of the reference, evenly spaced in inverse depth over the
   range its own sparse points span (widened by 30 %), each source warped onto each plane (bilinear);
3. the cost of a plane at a pixel: one minus the zero-mean normalised cross-correlation of grey levels over a
   ``mvs_window`` square window, averaged over the better half of the sources (a surface occluded in one source
   costs nothing in the others);
4. each pixel takes its cheapest plane, refined between planes by a parabola through the costs; with
   ``mvs_photo_tolerance``, its cheapest plane whose point has the pixel's own colour in the sources (single pixels,
   :func:`photo_error`; ``mvs_photo_retry`` false: its cheapest plane only if so), else no depth;
5. geometric consistency: a depth is kept where at least ``mvs_min_consistent`` sources' own depth maps, carried
   back into the reference, agree with it (within 1 px and ``mvs_depth_tolerance`` of the depth), and the window
   has texture (grey-level standard deviation at least 1/255);
6. with ``mvs_edge_margin``, pixels within that many pixels of a depth step, on its near side, are dropped: the
   correlation window fattens a foreground object into the background by up to half its width, and the fattened
   pixels pass the consistency check (every view fattens alike);
7. with ``mvs_average``, a kept pixel's depth is the mean of its own and the agreeing sources' carried-back depths
   (the fusion step of multi-view stereo: independent errors of the views partly cancel).

Confidence: the kept pixel's correlation, in [0, 1] (``min_confidence`` is then the least correlation kept).
Pixels that fail get no depth: a fused cloud holds only what frames agree on.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lift3d_core.progress import Progress, report

_GREY = (0.299, 0.587, 0.114)
_MIN_STD = 1.0 / 255.0  # a window flatter than this has no texture to correlate


def select_sources(
    c2w: np.ndarray, points: np.ndarray, observations: list, registered: np.ndarray, num: int, min_angle_deg: float
) -> list[list[int]]:
    """Per frame, up to ``num`` source frames for stereo (empty for unregistered frames).

    c2w: ``[F, 4, 4]`` OpenCV; points: ``[P, 3]``; observations: per frame ``(uv [n, 2], point index [n])``;
    registered: ``[F]`` bool. Candidates share at least 8 points with the frame, seen under a median
    triangulation angle of at least ``min_angle_deg``; the most shared points first.
    """
    n = len(c2w)
    seen = [set(idx.tolist()) if registered[f] else set() for f, (_, idx) in enumerate(observations)]
    centres = c2w[:, :3, 3]
    out: list[list[int]] = []
    for r in range(n):
        ranked = []
        if registered[r]:
            for s in range(n):
                if s == r or not registered[s]:
                    continue
                shared = np.fromiter(seen[r] & seen[s], np.int64)
                if len(shared) < 8:
                    continue
                a = points[shared] - centres[r]
                b = points[shared] - centres[s]
                cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-300)
                angle = float(np.degrees(np.arccos(np.clip(np.median(cos), -1.0, 1.0))))
                if angle >= min_angle_deg:
                    ranked.append((len(shared), -s, s))
        out.append([s for *_, s in sorted(ranked, reverse=True)[:num]])
    return out


def _grey(frames: np.ndarray, device) -> torch.Tensor:
    w = torch.tensor(_GREY, dtype=torch.float32, device=device)
    return (torch.as_tensor(frames, device=device).float() @ w) / 255.0  # [F, H, W]


def _box(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window`` square around each pixel (shrunk at the border), ``x [B, H, W]``."""
    return F.avg_pool2d(x[:, None], window, stride=1, padding=window // 2, count_include_pad=False)[:, 0]


def _shiftable(cost: torch.Tensor, shift: int) -> torch.Tensor:
    """Shiftable windows: a pixel's cost ``[D, H, W]`` of each plane is the least of the windows centred on it and
    moved by ``shift`` px along x, y or both (nine windows that all still hold the pixel). Beside an object's
    silhouette one of them lies wholly on the pixel's own side, so the object's texture no longer pulls the
    background pixels to its depth (the fattening of a centred window)."""
    H, W = cost.shape[1:]
    padded = F.pad(cost[None], (shift, shift, shift, shift), mode="replicate")[0]
    out = cost
    for dy in (-shift, 0, shift):
        for dx in (-shift, 0, shift):
            if dx or dy:
                out = torch.minimum(out, padded[:, shift + dy:shift + dy + H, shift + dx:shift + dx + W])
    return out


def _pixel_rays(K: np.ndarray, height: int, width: int, device) -> torch.Tensor:
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # z = 1
    return torch.as_tensor(rays, dtype=torch.float32, device=device)  # [H, W, 3]


def _relative(c2w_ref: np.ndarray, c2w_src: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, t)`` taking reference-camera coordinates to source-camera coordinates (float64 on the host)."""
    rel = np.linalg.inv(c2w_src) @ c2w_ref
    return rel[:3, :3], rel[:3, 3]


def _project(cam: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera points ``[..., 3]`` -> pixel coordinates ``[..., 2]`` (centre of pixel u at u + 0.5) and z."""
    z = cam[..., 2]
    zs = torch.where(z > 1e-6, z, torch.full_like(z, 1e-6))
    uv = torch.stack([K[0, 0] * cam[..., 0] / zs + K[0, 2], K[1, 1] * cam[..., 1] / zs + K[1, 2]], -1)
    return uv, z


def _sample(img: torch.Tensor, uv: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``img [H, W]`` (or ``[C, H, W]``) at pixel coordinates ``uv [B, H', W', 2]`` -> ``[B, H', W']`` (or ``[B, C, H',
    W']``; NaN outside the image)."""
    x = img if img.dim() == 3 else img[None]
    C, H, W = x.shape
    grid = torch.stack([uv[..., 0] / W * 2 - 1, uv[..., 1] / H * 2 - 1], -1)
    out = F.grid_sample(x[None].expand(len(uv), C, H, W), grid, mode=mode, padding_mode="zeros", align_corners=False)
    inside = (uv[..., 0] >= 0.5) & (uv[..., 0] <= W - 0.5) & (uv[..., 1] >= 0.5) & (uv[..., 1] <= H - 0.5)
    out = torch.where(inside[:, None], out, torch.full_like(out, float("nan")))
    return out if img.dim() == 3 else out[:, 0]


def photo_error(
    rgb: torch.Tensor, ref: int, sources: list[int], c2w: np.ndarray, K: np.ndarray, depth: torch.Tensor
) -> torch.Tensor:
    """Per-pixel photometric disagreement of depth maps ``depth [B, H, W]`` of the reference -> ``[B, H, W]``.

    rgb: ``[F, 3, H, W]`` in [0, 1]. Each pixel's point at its depth is projected into every source and the source's
    colour sampled there (bilinear, the single pixel: no window); the disagreement is the median over the sources
    (the lower of the middle two) of the mean absolute RGB difference to the pixel's own colour, NaN where no source
    sees the point. On a Lambertian surface a right depth lands on the same surface point in every source; a
    background pixel given a foreground object's depth lands on a different background point in each.
    """
    dev = rgb.device
    H, W = rgb.shape[2:]
    Kt = torch.as_tensor(K, dtype=torch.float32, device=dev)
    rays = _pixel_rays(K, H, W, dev)
    errs = []
    for s in sources:
        R, t = _relative(c2w[ref], c2w[s])
        cam = (rays @ torch.as_tensor(R, dtype=torch.float32, device=dev).T)[None] * depth[..., None] + torch.as_tensor(
            t, dtype=torch.float32, device=dev)
        uv, z = _project(cam, Kt)
        diff = (_sample(rgb[s], uv) - rgb[ref][None]).abs().mean(1)
        errs.append(torch.where(z > 1e-6, diff, torch.full_like(diff, float("nan"))))
    return torch.stack(errs).nanmedian(0).values


def plane_sweep(
    grey: torch.Tensor, ref: int, sources: list[int], c2w: np.ndarray, K: np.ndarray, depth_range: tuple[float, float],
    planes: int, window: int, shift: int = 0, rgb: torch.Tensor | None = None, photo_tolerance: float | None = None,
    photo_retry: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One reference frame's winner-take-all depth ``[H, W]`` and its correlation ``[H, W]`` in [-1, 1].

    grey: ``[F, H, W]`` grey levels in [0, 1]; c2w: ``[F, 4, 4]``; K: ``[3, 3]``; depth_range: ``(near, far)``;
    shift: 0 for windows centred on their pixel, else shiftable windows (:func:`_shiftable`).
    photo_tolerance: with ``rgb [F, 3, H, W]`` in [0, 1], a plane is photo-consistent at a pixel where its
    :func:`photo_error` is at most this; the winner is then the cheapest photo-consistent plane (``photo_retry``;
    else the cheapest plane if it is photo-consistent), no depth where there is none.
    """
    dev = grey.device
    H, W = grey.shape[1:]
    Kt = torch.as_tensor(K, dtype=torch.float32, device=dev)
    rays = _pixel_rays(K, H, W, dev)
    inv = torch.linspace(1.0 / depth_range[0], 1.0 / depth_range[1], planes, device=dev)  # near to far
    depth = (1.0 / inv)[:, None, None, None]  # [D, 1, 1, 1]
    r = grey[ref]
    mu_r = _box(r[None], window)
    var_r = (_box((r * r)[None], window) - mu_r**2).clamp_min(0.0)
    costs = []
    for s in sources:
        R, t = _relative(c2w[ref], c2w[s])
        Rt = torch.as_tensor(R, dtype=torch.float32, device=dev)
        tt = torch.as_tensor(t, dtype=torch.float32, device=dev)
        cam = (rays @ Rt.T)[None] * depth + tt  # [D, H, W, 3]
        uv, z = _project(cam, Kt)
        warped = _sample(grey[s], uv)
        valid = torch.isfinite(warped) & (z > 1e-6)
        warped = torch.where(valid, warped, mu_r.expand_as(warped))
        mu_s = _box(warped, window)
        var_s = (_box(warped * warped, window) - mu_s**2).clamp_min(0.0)
        cov = _box(warped * r[None], window) - mu_s * mu_r
        ncc = cov / torch.sqrt(var_r * var_s).clamp_min(_MIN_STD**2)
        ncc = torch.where(valid & (var_s > _MIN_STD**2), ncc, torch.full_like(ncc, -1.0))
        costs.append(1.0 - ncc)
    cost = torch.stack(costs)  # [S, D, H, W]
    keep = max(1, math.ceil(len(sources) / 2))
    cost = cost.topk(keep, dim=0, largest=False).values.mean(0)  # [D, H, W]
    if shift > 0:
        cost = _shiftable(cost, shift)
    best = cost.argmin(0)
    found = torch.ones_like(best, dtype=torch.bool)
    if photo_tolerance is not None:
        err = photo_error(rgb, ref, sources, c2w, K, depth[..., 0].expand(planes, H, W))
        consistent = err <= photo_tolerance  # [D, H, W]; NaN (no source sees the point): False
        if photo_retry:
            best = torch.where(consistent, cost, torch.full_like(cost, float("inf"))).argmin(0)
        found = consistent.gather(0, best[None])[0]
    c0 = cost.gather(0, best[None])[0]
    lo = cost.gather(0, (best - 1).clamp_min(0)[None])[0]
    hi = cost.gather(0, (best + 1).clamp_max(planes - 1)[None])[0]
    curv = lo + hi - 2 * c0
    inner = (best > 0) & (best < planes - 1) & (curv > 1e-9)
    offset = torch.where(inner, 0.5 * (lo - hi) / curv.clamp_min(1e-9), torch.zeros_like(c0)).clamp(-0.5, 0.5)
    step = (inv[1] - inv[0]) if planes > 1 else torch.zeros((), device=dev)
    inv_best = inv[best] + offset * step
    out = 1.0 / inv_best.clamp_min(1e-12)
    ncc = 1.0 - c0
    textured = (var_r[0] > _MIN_STD**2) & found
    return torch.where(textured, out, torch.zeros_like(out)), torch.where(textured, ncc, torch.full_like(ncc, -1.0))


def consistent_views(
    depth: torch.Tensor, ref: int, sources: list[int], c2w: np.ndarray, K: np.ndarray, depth_tolerance: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """How many sources' depth maps agree with the reference's depth, and their mean, per pixel.

    depth: ``float32 [F, H, W]`` (0: none). A reference pixel with depth is carried into the source, the source's
    depth there (nearest pixel) carried back: it agrees when it lands within 1 px of the pixel and within
    ``depth_tolerance`` of its depth. Returns ``count int32 [H, W]`` and ``mean float32 [H, W]``: the mean z-depth of
    the reference's own and every agreeing source's depth carried back (the reference's depth where none agrees).
    """
    dev = depth.device
    H, W = depth.shape[1:]
    Kt = torch.as_tensor(K, dtype=torch.float32, device=dev)
    rays = _pixel_rays(K, H, W, dev)
    pix = torch.stack(torch.meshgrid(torch.arange(W, device=dev) + 0.5, torch.arange(H, device=dev) + 0.5,
                                     indexing="xy"), -1)
    d_ref = depth[ref]
    count = torch.zeros((H, W), dtype=torch.int32, device=dev)
    total = d_ref.clone()
    for s in sources:
        R, t = _relative(c2w[ref], c2w[s])
        cam_s = rays * d_ref[..., None] @ torch.as_tensor(R, dtype=torch.float32, device=dev).T + torch.as_tensor(
            t, dtype=torch.float32, device=dev)
        uv_s, _ = _project(cam_s, Kt)
        d_s = _sample(depth[s], uv_s[None], mode="nearest")[0]
        Rb, tb = _relative(c2w[s], c2w[ref])
        rays_s = torch.cat([(uv_s - Kt[:2, 2]) / torch.diagonal(Kt)[:2], torch.ones_like(uv_s[..., :1])], -1)
        cam_r = rays_s * d_s[..., None] @ torch.as_tensor(Rb, dtype=torch.float32, device=dev).T + torch.as_tensor(
            tb, dtype=torch.float32, device=dev)
        uv_r, z_r = _project(cam_r, Kt)
        ok = (d_ref > 0) & torch.isfinite(d_s) & (d_s > 0)
        ok &= torch.linalg.norm(uv_r - pix, dim=-1) < 1.0
        ok &= (z_r - d_ref).abs() < depth_tolerance * d_ref
        count += ok.to(torch.int32)
        total += torch.where(ok, z_r, torch.zeros_like(z_r))
    return count, total / (1 + count).to(total.dtype)


def near_side_of_step(depth: torch.Tensor, margin: int, step: float) -> torch.Tensor:
    """Pixels of ``depth [H, W]`` (0: none) within ``margin`` px (square) of a pixel more than ``1 + step`` times as
    far, ``bool [H, W]``: the near side of a depth step, where a correlation window that straddles the step gives the
    background pixels the foreground's depth ("foreground fattening", up to half the window wide)."""
    farthest = F.max_pool2d(depth[None, None], 2 * margin + 1, stride=1, padding=margin)[0, 0]
    return (depth > 0) & (farthest > (1.0 + step) * depth)


def mvs_depth(
    frames: np.ndarray, c2w: np.ndarray, K: np.ndarray, sources: list[list[int]], depth_ranges: list, cfg,
    device: str = "cpu",
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Plane-sweep depth and confidence, ``float32 [F, H, W]`` each (0: no depth), of ``frames uint8 [F, H, W, 3]``.

    c2w: ``[F, 4, 4]``; K: ``[3, 3]``; sources: :func:`select_sources`; depth_ranges: per frame ``(near, far)`` or
    None (no depth); cfg: the ``mvs_*`` fields of :class:`~lift3d_core.calibrate.colmap.config.ColmapConfig`.
    progress: phase ``plane sweep``, frames swept (:mod:`lift3d_core.progress`).
    """
    n, H, W = frames.shape[:3]
    with torch.no_grad():
        grey = _grey(frames, device)
        rgb = torch.as_tensor(frames, device=device).permute(0, 3, 1, 2).float() / 255.0
        depth = torch.zeros((n, H, W), dtype=torch.float32, device=device)
        ncc = torch.full((n, H, W), -1.0, dtype=torch.float32, device=device)
        todo = [f for f in range(n) if sources[f] and depth_ranges[f] is not None]
        report(progress, 0, len(todo), "plane sweep")
        for k, f in enumerate(todo):
            depth[f], ncc[f] = plane_sweep(grey, f, sources[f], c2w, K, depth_ranges[f], cfg.mvs_planes,
                                           cfg.mvs_window, cfg.mvs_shift, rgb, cfg.mvs_photo_tolerance,
                                           cfg.mvs_photo_retry)
            report(progress, k + 1, len(todo), "plane sweep")
        conf = torch.zeros_like(depth)
        fused = depth.clone()  # every check reads the single-view depths; the averages are written apart
        for f in range(n):
            if not sources[f]:
                continue
            agree, mean = consistent_views(depth, f, sources[f], c2w, K, cfg.mvs_depth_tolerance)
            ok = (agree >= min(cfg.mvs_min_consistent, len(sources[f]))) & (depth[f] > 0)
            if cfg.mvs_edge_margin > 0:
                ok &= ~near_side_of_step(depth[f], cfg.mvs_edge_margin, cfg.discontinuity)
            conf[f] = torch.where(ok, ncc[f].clamp(0.0, 1.0), torch.zeros_like(conf[f]))
            if cfg.mvs_average:
                fused[f] = mean
        depth = torch.where(conf > 0, fused if cfg.mvs_average else depth, torch.zeros_like(depth))
    return depth.cpu().numpy().astype(np.float32), conf.cpu().numpy().astype(np.float32)
