"""Pure-PyTorch differentiable EWA splatting: the reference rasterizer.

Same maths and cut-offs as gsplat 1.5 (classic mode, pinhole, ``packed=False``),
so the two backends give the same images and gradients (bench/gpu.py checks
it); it runs on any device and is fast enough on a CPU to train small scenes
(128x96, tens of thousands of Gaussians).

Layout, chosen by profiling on a CPU:

1. *Projection* is elementwise over Gaussians, written per component (``[N]``
   tensors): small ``[N, 3, 3]`` matmuls and reductions over tiny dimensions
   cost ~10x more in eager PyTorch.
2. *Binning*: depth-sorted visible Gaussians are binned into 4x4-pixel tiles,
   each into exactly the tiles its alpha >= 1/255 ellipse reaches; a stable sort
   by tile gives per-tile, front-to-back lists. Small tiles waste few (pixel,
   Gaussian) evaluations: a 1-3 px Gaussian reaches ~30 pixels but 1-4 whole
   16x16 tiles (~500 evaluations); 4x4 beat 2, 3, 5, 6 and 8 px.
3. *Compositing*: tiles with lists of similar length are padded into
   ``[B, P=16, K]`` blocks. ``log alpha`` of a Gaussian is a quadratic
   polynomial in the pixel centre, so one matmul evaluates a whole block;
   transmittance is a cumulative sum of ``log(1 - alpha)`` along K, and the
   3DGS cut-offs are thresholds. The block has a hand-written backward
   (:class:`_BlockComposite`): about half the passes over block-sized memory
   of the autograd version, and it drops the tail of the lists behind pixels
   that have all saturated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lift3d_core.splat.sh import eval_sh

# Constants of gsplat 1.5 (fully_fused_projection / rasterize_to_pixels, classic mode).
EPS2D = 0.3  # px^2 added to the 2D covariance: every Gaussian covers ~1 pixel (the 3DGS dilation)
ALPHA_THRESHOLD = 1.0 / 255.0  # (pixel, Gaussian) pairs below this are skipped
ALPHA_MAX = 0.999  # gsplat's clamp; the original 3DGS CUDA code uses 0.99
T_MIN = 1e-4  # a pixel stops before the Gaussian that would bring its transmittance to this
EXTEND_MAX = 3.33  # bounding box half-size in sigmas for an opaque Gaussian
FRUSTUM_MARGIN = 0.3  # Jacobian clamp: x/z, y/z at most 30% of the half-FOV beyond the image edge
TILE_SIZE = 4  # px; see the module docstring
_LOG_T_MIN = math.log(T_MIN)
_LOG_ALPHA_MAX = math.log(ALPHA_MAX)
_EXP_FLOOR = -60.0  # exp(-60) ~ 1e-26: far below every threshold, yet a normal float32
_T_ZERO = 1e-20  # kept Gaussians see T > T_MIN; past the cut T < exp(_EXP_FLOOR + 7) ~ 1e-23
_DEAD = -1e4  # log-opacity of the transparent padding Gaussian


def quat_to_rotmat_components(quats: torch.Tensor) -> list[list[torch.Tensor]]:
    """``quats [N, 4]`` (w, x, y, z), any norm -> the rotation matrix as 3x3 nested lists of ``[N]``."""
    w, x, y, z = quats.T.contiguous().unbind(0)
    s = 2.0 / (w * w + x * x + y * y + z * z)  # normalises the quaternion on the fly
    xx, yy, zz = s * x * x, s * y * y, s * z * z
    xy, xz, yz = s * x * y, s * x * z, s * y * z
    wx, wy, wz = s * w * x, s * w * y, s * w * z
    return [
        [1 - (yy + zz), xy - wz, xz + wy],
        [xy + wz, 1 - (xx + zz), yz - wx],
        [xz - wy, yz + wx, 1 - (xx + yy)],
    ]


def project_gaussians(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float,
    far: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA projection of 3D Gaussians into one pinhole camera (as gsplat's ``fully_fused_projection``).

    Args:
        means: ``[N, 3]`` world. quats: ``[N, 4]`` wxyz, any norm. scales: ``[N, 3]`` std devs.
        opacities: ``[N]`` in (0, 1) (they size the opacity-aware bounding box).
        viewmat: ``[4, 4]`` world-to-camera, OpenCV axes; differentiated when it requires grad (pose refinement),
            with the same values as without.
        K: ``[3, 3]`` pixels (not differentiated).

    Returns:
        means2d ``[N, 2]`` pixels (x = fx X/Z + cx; pixel u's centre is at u + 0.5),
        conics ``[N, 3]`` (a, b, c): the inverse dilated 2D covariance [[a, b], [b, c]],
        depths ``[N]`` camera z, radii ``[N, 2]`` int32 bounding-box half sizes in
        pixels, 0 where culled (mean outside near/far, degenerate, opacity < 1/255,
        or box off the image).
    """
    if viewmat.requires_grad:  # 0-dim tensors in the same products: the same values, and a gradient for the camera
        R = [[viewmat[i, j] for j in range(3)] for i in range(3)]
        t = [viewmat[i, 3] for i in range(3)]
    else:  # Python numbers: no autograd nodes and no gradient reductions for a fixed camera
        R = viewmat[:3, :3].tolist()
        t = viewmat[:3, 3].tolist()
    fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    mean_w = means.T.contiguous().unbind(0)
    x, y, z = (sum(R[i][j] * mean_w[j] for j in range(3)) + t[i] for i in range(3))
    in_depth = (z >= near) & (z <= far)
    # Culled Gaussians still flow through the graph with zero upstream gradient;
    # a safe z keeps 0 * inf from turning their gradients into NaN.
    z = torch.where(in_depth, z, torch.ones_like(z))
    rz = 1.0 / z

    # Clamp x/z, y/z to the widened frustum before building the Jacobian, so that
    # Gaussians far outside the image do not get huge, unstable footprints.
    margin_x, margin_y = FRUSTUM_MARGIN * 0.5 * width / fx, FRUSTUM_MARGIN * 0.5 * height / fy
    tx = z * (x * rz).clamp(-cx / fx - margin_x, (width - cx) / fx + margin_x)
    ty = z * (y * rz).clamp(-cy / fy - margin_y, (height - cy) / fy + margin_y)

    # Sigma_2d = (J W Rq S)(J W Rq S)^T + eps I. The two rows of J W are combinations
    # of the rows of W, with per-Gaussian weights.
    jx, jxz = fx * rz, -fx * tx * rz * rz
    jy, jyz = fy * rz, -fy * ty * rz * rz
    jw0 = [jx * R[0][i] + jxz * R[2][i] for i in range(3)]
    jw1 = [jy * R[1][i] + jyz * R[2][i] for i in range(3)]
    rot = quat_to_rotmat_components(quats)
    s = scales.T.contiguous().unbind(0)
    m0 = [(jw0[0] * rot[0][j] + jw0[1] * rot[1][j] + jw0[2] * rot[2][j]) * s[j] for j in range(3)]
    m1 = [(jw1[0] * rot[0][j] + jw1[1] * rot[1][j] + jw1[2] * rot[2][j]) * s[j] for j in range(3)]
    a = m0[0] * m0[0] + m0[1] * m0[1] + m0[2] * m0[2] + EPS2D
    b = m0[0] * m1[0] + m0[1] * m1[1] + m0[2] * m1[2]
    c = m1[0] * m1[0] + m1[1] * m1[1] + m1[2] * m1[2] + EPS2D
    det = a * c - b * b
    ok = in_depth & (det > 0)  # also read by torch.where's backward: never modify in place
    inv_det = 1.0 / torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c * inv_det, -b * inv_det, a * inv_det], dim=-1)
    means2d = torch.stack([jx * x + cx, jy * y + cy], dim=-1)

    with torch.no_grad():
        op = opacities.detach()
        visible = ok & (op >= ALPHA_THRESHOLD)
        # Opacity-aware box (gsplat 1.5): beyond `extend` sigmas alpha < 1/255 anyway.
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(EXTEND_MAX)
        rx = torch.ceil(extend * torch.sqrt(a.detach()))
        ry = torch.ceil(extend * torch.sqrt(c.detach()))
        mx, my = means2d[:, 0].detach(), means2d[:, 1].detach()
        visible &= (rx > 0) | (ry > 0)
        visible &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.stack([rx, ry], dim=-1).nan_to_num_(0.0)
        radii = torch.where(visible[:, None], radii, torch.zeros_like(radii)).to(torch.int32)
    return means2d, conics, z, radii


def _expand(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``counts [n]``: ``(owner, offset)`` over ``sum(counts)`` items, item j being the
    ``offset[j]``-th of the ``counts[owner[j]]`` items of ``owner[j]``."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts, output_size=total)
    first = (torch.cumsum(counts, 0) - counts).index_select(0, owner)
    return owner, torch.arange(total, device=counts.device) - first


def _bin_tiles(means2d, conics, opacities, radii, width, height, tile_size):
    """No-grad binning of depth-sorted visible Gaussians into square tiles.

    A Gaussian is listed in a tile when its alpha >= 1/255 ellipse reaches the
    rectangle spanned by the tile's pixel centres: per tile row, the ellipse's
    x-extent within the row's band of y is exact (the left and right boundaries
    of an ellipse are convex and concave in y), so no (tile, Gaussian) entry
    is wasted on a corner of the bounding box.

    Returns ``(tile, gid)``: the flat tile index ``ty * tiles_x + tx`` and the
    Gaussian's index in the given arrays, sorted by tile and, within a tile,
    front to back.
    """
    dtype = means2d.dtype
    tiles_x = -(-width // tile_size)
    mx, my = means2d[:, 0], means2d[:, 1]
    a, b, c = conics.unbind(-1)
    ry = radii[:, 1].to(dtype)
    ty0 = torch.div(torch.floor(my - ry).clamp(0, height).long(), tile_size, rounding_mode="floor")
    ty1 = torch.div(torch.ceil(my + ry).clamp(0, height).long() + tile_size - 1, tile_size, rounding_mode="floor")

    # One entry per (Gaussian, tile row).
    rows = ty1 - ty0
    g, offset = _expand(rows)
    ty = ty0.index_select(0, g) + offset
    # Ellipse {e : e^T Q e <= 2 t}, Q = [[a, b], [b, c]], t = log(255 opacity): alpha >= 1/255.
    two_t = 2.0 * torch.log(opacities * 255.0).clamp_min(0.0)
    det = a * c - b * b
    sxx = two_t * c / det  # extent^2 of the ellipse along x
    y_lo = (ty * tile_size).to(dtype) + 0.5  # the row's band of pixel-centre y
    y_hi = y_lo + (tile_size - 1)
    ga, gb, gdet, gtt, gmx, gmy = (v.index_select(0, g) for v in (a, b, det, two_t, mx, my))
    # The leftmost / rightmost points of the ellipse sit at y = my -/+ sxy / sqrt(sxx).
    y_off = (-two_t * b / det / torch.sqrt(sxx).clamp_min(1e-12)).index_select(0, g)

    def x_at(ey, sign):
        disc = (gtt * ga - gdet * ey * ey).clamp_min(0.0)
        return gmx + (-gb * ey + sign * torch.sqrt(disc)) / ga

    eps = 1e-3  # px of slack so that rounding never drops a pixel at the ellipse border
    x_left = x_at(torch.minimum(torch.maximum(gmy - y_off, y_lo), y_hi) - gmy, -1.0) - eps
    x_right = x_at(torch.minimum(torch.maximum(gmy + y_off, y_lo), y_hi) - gmy, 1.0) + eps
    # Rows whose band misses the ellipse's y-extent [my - sqrt(syy), my + sqrt(syy)].
    half_y = torch.sqrt(two_t * a / det).index_select(0, g) + eps
    hit = (y_hi >= gmy - half_y) & (y_lo <= gmy + half_y)
    tx0 = torch.ceil((x_left - (tile_size - 0.5)) / tile_size).clamp_min(0).long()
    tx1 = torch.floor((x_right - 0.5) / tile_size).clamp_max(tiles_x - 1).long() + 1
    span = torch.where(hit, (tx1 - tx0).clamp_min(0), 0)

    row, offset = _expand(span)
    gid = g.index_select(0, row)
    tile = (ty * tiles_x + tx0).index_select(0, row) + offset
    # Entries were emitted front to back; a stable sort by tile keeps that order per tile.
    tile, perm = torch.sort(tile.to(torch.int32), stable=True)
    return tile.long(), gid.index_select(0, perm)


def _blocks(tile, num_tiles, ratio=1.25, max_elements=1 << 16):
    """Group non-empty tiles whose lists have similar lengths, so that padding each list
    of a group to the group's longest wastes little.

    Returns ``[(tiles [B], entries [B, K])]``: ``entries`` indexes the sorted
    (tile, Gaussian) entries, or is ``len(tile)`` (a padding entry) past a tile's
    list; ``B * K <= max_elements`` unless one tile alone is longer.
    """
    counts = torch.bincount(tile, minlength=num_tiles)
    starts = torch.cumsum(counts, 0) - counts
    sorted_counts, order = torch.sort(counts)
    first = int(torch.count_nonzero(sorted_counts == 0))
    sorted_counts, order = sorted_counts[first:], order[first:]
    lengths = sorted_counts.tolist()
    groups, i = [], 0
    while i < len(lengths):
        limit = torch.tensor(int(lengths[i] * ratio) + 4, dtype=counts.dtype, device=tile.device)
        j = int(torch.searchsorted(sorted_counts, limit, right=True))
        j = min(j, i + max(1, max_elements // lengths[j - 1]))
        tiles, k = order[i:j], lengths[j - 1]
        slot = torch.arange(k, device=tile.device)
        groups.append((tiles, torch.where(slot < counts[tiles, None], starts[tiles, None] + slot, len(tile))))
        i = j
    return groups


class _BlockComposite(torch.autograd.Function):
    """Front-to-back compositing of a block of B tiles x P pixels x K Gaussians.

    Forward inputs: ``log_alpha_coef [B, 6, K]`` (the coefficients of ``log alpha_raw``
    in ``basis``), ``feats [B, K, D + 1]`` whose last column is 1, ``basis [P, 6]``.
    Output ``[B, P, D + 1]``: ``sum_i w_i f_i`` and, in the last column, ``sum_i w_i``,
    where ``alpha_i`` is clamped to ALPHA_MAX and zeroed below ALPHA_THRESHOLD,
    ``T_i = prod_{j<i} (1 - alpha_j)`` is zeroed from the first i whose
    inclusive product falls to T_MIN, and ``w_i = alpha_i T_i``.

    Backward: with ``s_i = g . f_i`` and ``r_i = alpha_i / (1 - alpha_i)``,
    ``dL/dlog alpha_raw_i = w_i s_i - r_i sum_{j>i} w_j s_j`` where neither the clamp
    nor the threshold is active, else 0 (as in gsplat).
    """

    @staticmethod
    def forward(ctx, log_alpha_coef, feats, basis):
        grad = any(ctx.needs_input_grad)
        log_alpha = torch.matmul(basis, log_alpha_coef)  # [B, P, K]
        # Gradients stop where alpha is clamped; rare, so only then is a mask kept.
        clamped = grad and bool(log_alpha.max() >= _LOG_ALPHA_MAX)
        unclamped = (log_alpha < _LOG_ALPHA_MAX).to(log_alpha.dtype) if clamped else None
        # exp() of arguments below ~-87 takes a slow path (float underflow) that costs ~20x
        # more on a CPU: clamp them to _EXP_FLOOR; threshold then zeroes the tiny results.
        alpha = log_alpha.clamp_(_EXP_FLOOR, _LOG_ALPHA_MAX).exp_()
        F.threshold(alpha, ALPHA_THRESHOLD, 0.0, inplace=True)
        one_m = 1.0 - alpha
        log1m = torch.log(one_m)
        # Inclusive log transmittance, floored past the T_MIN cut, minus log(1 - alpha_i): exclusive.
        T = F.threshold(torch.cumsum(log1m, -1), _LOG_T_MIN, _EXP_FLOOR).sub_(log1m).exp_()
        F.threshold(T, _T_ZERO, 0.0, inplace=True)  # exactly 0 past the cut
        weights = T.mul_(alpha)
        out = torch.bmm(weights, feats)
        if not grad:
            return out
        ratio = alpha.div_(one_m)
        if unclamped is not None:
            ratio.mul_(unclamped)
        # Where every pixel of the block has saturated (or its Gaussians ended) before the end
        # of the lists, the tail has zero weight and zero gradient: keep only the live prefix.
        live = torch.nonzero(weights.amax(dim=(0, 1)))
        k = int(live[-1]) + 1 if len(live) else 0
        if k < weights.shape[-1]:
            weights, ratio, feats = weights[..., :k].contiguous(), ratio[..., :k].contiguous(), feats[:, :k]
            unclamped = None if unclamped is None else unclamped[..., :k].contiguous()
        ctx.K = log_alpha_coef.shape[-1]
        ctx.save_for_backward(feats, basis, weights, ratio, unclamped)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):
        feats, basis, weights, ratio, unclamped = ctx.saved_tensors
        ws = torch.bmm(g_out, feats.transpose(1, 2)).mul_(weights)  # w_i s_i, [B, P, k]
        g_feats = torch.bmm(weights.transpose(1, 2), g_out)
        suffix = torch.cumsum(ws, -1)
        suffix = suffix[..., -1:] - suffix  # sum_{j>i} w_j s_j
        if unclamped is not None:
            ws.mul_(unclamped)
        g_coef = torch.matmul(basis.T, ws.sub_(suffix.mul_(ratio)))
        k = weights.shape[-1]
        if k < ctx.K:
            g_coef = F.pad(g_coef, (0, ctx.K - k))
            g_feats = F.pad(g_feats, (0, 0, 0, ctx.K - k))
        return g_coef, g_feats, None


def composite(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    features: torch.Tensor,
    radii: torch.Tensor,
    order: torch.Tensor,
    width: int,
    height: int,
    tile_size: int = TILE_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Front-to-back alpha compositing of N projected Gaussians into one image.

    Args:
        means2d ``[N, 2]`` pixels, conics ``[N, 3]``, opacities ``[N]``, features ``[N, D]``:
            in the graph.
        radii: ``[N, 2]`` bounding-box half sizes (no grad).
        order: ``[G]`` indices of the visible Gaussians, front to back.

    Returns:
        ``sum_i w_i f_i`` as ``[H, W, D]`` and ``alpha = sum_i w_i`` as ``[H, W]``.
    """
    dev, dtype = means2d.device, means2d.dtype
    N, D = features.shape
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    num_tiles = tiles_x * tiles_y
    with torch.no_grad():
        tile, gid = _bin_tiles(
            means2d.detach().index_select(0, order),
            conics.detach().index_select(0, order),
            opacities.detach().index_select(0, order),
            radii.index_select(0, order),
            width,
            height,
            tile_size,
        )
        # Global Gaussian ids; padding entries point at index N, an extra, transparent Gaussian.
        gid = torch.cat([order.index_select(0, gid), gid.new_full((1,), N)])
        groups = _blocks(tile, num_tiles)

    # Everything an entry needs, one row per quantity (1-D gathers along a row are the cheap
    # ones on a CPU), plus a column for the transparent Gaussian and a row of ones whose
    # composite is alpha.
    table = torch.cat(
        [
            torch.stack([*means2d.T, *conics.T, torch.log(opacities), *features.T, torch.ones_like(opacities)]),
            torch.tensor([0.0] * 5 + [_DEAD] + [0.0] * (D + 1), dtype=dtype, device=dev)[:, None],
        ],
        dim=1,
    )  # [6 + D + 1, N + 1]

    # log alpha_raw = log(opacity) - power is a quadratic polynomial in the pixel centre.
    # Coordinates relative to the tile centre keep its coefficients small enough for float32.
    half = 0.5 * tile_size
    centre = torch.arange(tile_size, dtype=dtype, device=dev) + 0.5 - half
    py, px = torch.meshgrid(centre, centre, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)
    basis = torch.stack([px * px, px * py, py * py, px, py, torch.ones_like(px)], dim=-1)  # [P, 6]

    outs, tiles_done = [], []
    for tiles, entries in groups:
        B, K = entries.shape
        rows = table.index_select(1, gid.index_select(0, entries.reshape(-1))).view(-1, B, K)
        mx, my, a, b, c, log_op = rows[:6]
        dx = mx - (((tiles % tiles_x) * tile_size).to(dtype)[:, None] + half)
        dy = my - ((torch.div(tiles, tiles_x, rounding_mode="floor") * tile_size).to(dtype)[:, None] + half)
        lx, ly = a * dx + b * dy, b * dx + c * dy
        coef = torch.stack([-0.5 * a, -b, -0.5 * c, lx, ly, log_op - 0.5 * (dx * lx + dy * ly)], dim=1)  # [B, 6, K]
        outs.append(_BlockComposite.apply(coef, rows[6:].permute(1, 2, 0), basis))
        tiles_done.append(tiles)

    out = means2d.new_zeros(num_tiles, tile_size * tile_size, D + 1)
    if outs:
        out = out.index_copy(0, torch.cat(tiles_done), torch.cat(outs))
    image = out.reshape(tiles_y, tiles_x, tile_size, tile_size, D + 1).permute(0, 2, 1, 3, 4)
    image = image.reshape(tiles_y * tile_size, tiles_x * tile_size, D + 1)[:height, :width]
    return image[..., :D], image[..., D]


def rasterize_torch(
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
    """Render C cameras.

    Args:
        means ``[N, 3]``, quats ``[N, 4]``, scales ``[N, 3]``, opacities ``[N]``,
        sh ``[N, K, 3]``: activated Gaussian parameters, one dtype.
        viewmats ``[C, 4, 4]`` world-to-camera OpenCV (differentiated when they require grad), Ks ``[C, 3, 3]``.
        background: ``[3]`` or None (black).

    Returns:
        rgb ``[C, H, W, 3]``, alpha ``[C, H, W, 1]``, depth ``[C, H, W, 1]``
        (expected z), means2d ``[C, N, 2]``, radii ``[C, N]`` int32.
    """
    C = viewmats.shape[0]
    projected = [
        project_gaussians(means, quats, scales, opacities, viewmats[c], Ks[c], width, height, near, far)
        for c in range(C)
    ]
    # One [C, N, 2] tensor that everything downstream reads, so its .grad is the
    # screen-space gradient a densification strategy wants.
    means2d = torch.stack([p[0] for p in projected])
    if means2d.requires_grad:
        means2d.retain_grad()
    campos = torch.linalg.inv(viewmats.double())[:, :3, 3].to(means.dtype)

    rgbs, alphas, depths = [], [], []
    for c in range(C):
        _, conics, z, radii = projected[c]
        order = torch.nonzero((radii > 0).all(-1)).squeeze(1)
        order = order.index_select(0, torch.argsort(z.detach().index_select(0, order), stable=True))
        dirs = F.normalize(means - campos[c], dim=-1) if sh_degree > 0 else None
        colors = (eval_sh(sh, dirs, sh_degree) + 0.5).clamp_min(0.0)
        features = torch.cat([colors, z[:, None]], dim=-1)
        out, acc = composite(means2d[c], conics, opacities, features, radii, order, width, height)
        acc = acc[..., None]
        rgb = out[..., :3]
        if background is not None:
            rgb = rgb + (1.0 - acc) * background
        rgbs.append(rgb)
        alphas.append(acc)
        # Expected depth as gsplat's "ED": accumulated z over alpha, 0 where nothing was hit.
        depths.append(out[..., 3:] / acc.clamp_min(1e-10))
    radii = torch.stack([p[3].max(dim=-1).values for p in projected])
    return torch.stack(rgbs), torch.stack(alphas), torch.stack(depths), means2d, radii
