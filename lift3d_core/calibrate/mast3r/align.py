"""Global alignment of pairwise pointmaps into one world: per-frame pose, depth and a shared focal.

The idea of DUSt3R's ``PointCloudOptimizer`` (Wang et al., "DUSt3R: Geometric 3D Vision Made
Easy", 2024, section 3.4), written for lift3d:

* each pair ``e = (i, j)`` predicts both frames' points in camera ``i``'s frame, up to the pair's
  own similarity: ``P_e`` (scale ``s_e``, rotation, translation) maps them into the world;
* each frame ``f`` has a camera ``c2w_f`` and a dense depth map; with a focal length ``focal``
  shared by all frames (``fx = fy``, principal point at the image centre) they give the frame's
  world points ``X_f``;
* minimise ``sum_e sum_{v in {i, j}} sum_px log(conf_v^e) * || X_v - P_e pts_v^e ||`` (L1 of the 3-D
  distance, weighted by the log of MASt3R's confidence, which lies in [1, inf)) over all of it,
  with Adam and a cosine learning-rate schedule.

Gauge: frame 0 (the input view) is fixed at the identity, and the pair scales are normalised so
that their geometric mean is ``BASE_SCALE`` (DUSt3R's convention), so the world's unit is
arbitrary; :mod:`.backend` normalises the result like every other calibration.

Initialisation (``init``): ``"mst"`` chains the pairs along a maximum spanning tree of pair
confidence grown from frame 0 (a frame's camera comes from a pair in which it is the first view,
so the graph must be symmetrised, as :func:`.pairs.make_pairs` makes it); ``"commanded"`` keeps
the tree's points and takes the commanded cameras instead, scaled to the points' unit. Both then
register every pair onto the frames' points.
Every fit of the initialisation is weighted by log-confidence, as the loss is (raw confidence
leaves wild low-confidence points too much weight).

Conventions: pixel ``(u, v)`` has its centre at ``(u + 0.5, v + 0.5)`` (lift3d's, see
:mod:`lift3d_core.camera`); cameras are OpenCV; quaternions ``wxyz``.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np
import torch

from lift3d_core.calibrate.mast3r.config import INITS, SCHEDULES
from lift3d_core.errors import Lift3DError
from lift3d_core.progress import Progress, report

BASE_SCALE = 0.5  # geometric mean of the pair scales (DUSt3R's base_scale)
FOCAL_BREAK = 20.0  # the focal is optimised as 20 * log(f): its steps are 20x smaller (DUSt3R)
LR_MIN = 1e-6  # end of the cosine schedule (DUSt3R)


@dataclass
class PairPointmaps:
    """MASt3R's output over a pair graph, ``E`` pairs of ``h x w`` views.

    edges: ``int64 [E, 2]`` (i, j). pts_i, pts_j: ``[E, h, w, 3]`` frame i's and frame j's points,
    both in camera i's frame. conf_i, conf_j: ``[E, h, w]`` in [1, inf). desc_*: ``[E, h, w, 24]``
    unit descriptors and desc_conf_* ``[E, h, w]``, when asked for (the alignment does not use them).
    """

    edges: np.ndarray
    pts_i: torch.Tensor
    pts_j: torch.Tensor
    conf_i: torch.Tensor
    conf_j: torch.Tensor
    desc_i: torch.Tensor | None = None
    desc_j: torch.Tensor | None = None
    desc_conf_i: torch.Tensor | None = None
    desc_conf_j: torch.Tensor | None = None

    @property
    def num_frames(self) -> int:
        return int(self.edges.max()) + 1

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.pts_i.shape[1:3])


@dataclass
class Alignment:
    """Result of :func:`global_alignment`, in its world (frame 0 = identity, arbitrary unit).

    c2w: ``float64 [F, 4, 4]`` OpenCV. focal: pixels of the ``h x w`` network views (fx = fy).
    depth: ``float32 [F, h, w]`` z-depth. confidence: ``float32 [F, h, w]``, per pixel the largest
    confidence any pair gave it, on MASt3R's [1, inf) scale. loss_init, loss: before / after.
    """

    c2w: np.ndarray
    focal: float
    depth: np.ndarray
    confidence: np.ndarray
    loss_init: float
    loss: float


# ----------------------------------------------------------------------------- small geometry


def _quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """``[..., 4]`` wxyz (any norm) -> ``[..., 3, 3]``."""
    w, x, y, z = torch.nn.functional.normalize(q, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(*q.shape[:-1], 3, 3)


def _rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """``[..., 3, 3]`` -> ``[..., 4]`` wxyz, from the largest of four candidate denominators (stable)."""
    m = R.reshape(-1, 3, 3)
    t = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cands = torch.stack([
        torch.stack([1 + t, m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]], -1),
        torch.stack([m[:, 2, 1] - m[:, 1, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], m[:, 0, 1] + m[:, 1, 0],
                     m[:, 0, 2] + m[:, 2, 0]], -1),
        torch.stack([m[:, 0, 2] - m[:, 2, 0], m[:, 0, 1] + m[:, 1, 0], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                     m[:, 1, 2] + m[:, 2, 1]], -1),
        torch.stack([m[:, 1, 0] - m[:, 0, 1], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1],
                     1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1),
    ], 1)  # [N, 4 candidates, 4]
    diag = torch.stack([1 + t, 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2],
                        1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    q = cands[torch.arange(len(m)), diag.argmax(-1)]
    return torch.nn.functional.normalize(q, dim=-1).reshape(*R.shape[:-2], 4)


def _signed_log1p(x):
    return torch.sign(x) * torch.log1p(x.abs())


def _signed_expm1(x):
    # translations are optimised in a log-like space so that large ones move as fast as small ones (DUSt3R)
    return torch.sign(x) * torch.expm1(x.abs())


def weighted_umeyama(src: torch.Tensor, dst: torch.Tensor, weight: torch.Tensor):
    """Similarities ``dst ~ s R src + t`` by weighted least squares, batched.

    src, dst: ``[B, N, 3]``; weight: ``[B, N]`` >= 0. Returns s ``[B]``, R ``[B, 3, 3]``, t ``[B, 3]``.
    """
    w = weight / weight.sum(-1, keepdim=True).clamp_min(1e-12)
    mu_s = (w[..., None] * src).sum(1)
    mu_d = (w[..., None] * dst).sum(1)
    a, b = src - mu_s[:, None], dst - mu_d[:, None]
    cov = (w[..., None] * b).transpose(1, 2) @ a  # [B, 3, 3] = sum w b a^T
    U, S, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U @ Vh))
    D = torch.ones_like(S)
    D[:, 2] = d
    R = U @ torch.diag_embed(D) @ Vh
    var = (w * a.square().sum(-1)).sum(-1)
    s = (S * D).sum(-1) / var.clamp_min(1e-12)
    t = mu_d - s[:, None] * (R @ mu_s[..., None])[..., 0]
    return s, R, t


def _pixel_rays(h: int, w: int, device) -> torch.Tensor:
    """``[h*w, 2]`` pixel-centre offsets from the principal point (w/2, h/2), row-major."""
    v, u = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32) + 0.5,
                          torch.arange(w, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    return torch.stack((u.reshape(-1) - w / 2, v.reshape(-1) - h / 2), -1)


def estimate_focal(pts: torch.Tensor, conf: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Focal of pointmaps in their own camera, principal point at the centre: ``[B, h, w, 3]`` -> ``[B]``.

    Least squares of ``pixel - centre = f (x/z, y/z)``, reweighted towards an L1 fit (Weiszfeld's
    iteration, as DUSt3R's focal estimate) so that a few wrong points do not pull it.
    """
    B, h, w, _ = pts.shape
    px = _pixel_rays(h, w, pts.device)[None]  # [1, P, 2]
    p = pts.reshape(B, -1, 3)
    z = p[..., 2:3]
    valid = (z[..., 0] > 1e-8) & torch.isfinite(p).all(-1)
    xy = torch.where(valid[..., None], p[..., :2] / z.clamp_min(1e-8), torch.zeros_like(p[..., :2]))
    wgt = conf.reshape(B, -1) * valid
    f = torch.ones(B, device=pts.device)
    for it in range(iterations + 1):
        ww = wgt if it == 0 else wgt / (px - f[:, None, None] * xy).norm(dim=-1).clamp_min(1e-3)
        f = (ww * (px * xy).sum(-1)).sum(-1) / (ww * xy.square().sum(-1)).sum(-1).clamp_min(1e-12)
    size = max(h, w)
    # DUSt3R's acceptable range: 0.5x to 3.5x the focal of a 60-degree field of view
    base = size / (2 * math.tan(math.radians(30)))
    return f.nan_to_num(base).clamp(0.5 * base, 3.5 * base)


# ----------------------------------------------------------------------------- the optimiser


class _Aligner(torch.nn.Module):
    def __init__(self, pw: PairPointmaps):
        super().__init__()
        self.pw = pw
        E = len(pw.edges)
        F_ = pw.num_frames
        h, w = pw.shape
        dev = pw.pts_i.device
        self.register_buffer("ei", torch.as_tensor(pw.edges[:, 0], device=dev))
        self.register_buffer("ej", torch.as_tensor(pw.edges[:, 1], device=dev))
        self.register_buffer("rays", _pixel_rays(h, w, dev))
        self.pred_i = pw.pts_i.reshape(E, -1, 3).float()
        self.pred_j = pw.pts_j.reshape(E, -1, 3).float()
        self.weight_i = pw.conf_i.reshape(E, -1).float().log()
        self.weight_j = pw.conf_j.reshape(E, -1).float().log()
        self.log_depth = torch.nn.Parameter(torch.zeros(F_, h * w, device=dev))
        self.pose_q = torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]], device=dev).repeat(F_ - 1, 1))
        self.pose_t = torch.nn.Parameter(torch.zeros(F_ - 1, 3, device=dev))
        self.focal_p = torch.nn.Parameter(torch.tensor(FOCAL_BREAK * math.log(max(h, w)), device=dev))
        self.pw_q = torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]], device=dev).repeat(E, 1))
        self.pw_t = torch.nn.Parameter(torch.zeros(E, 3, device=dev))
        self.pw_log_s = torch.nn.Parameter(torch.full((E,), math.log(BASE_SCALE), device=dev))

    # -- parameter views
    def focal(self) -> torch.Tensor:
        return (self.focal_p / FOCAL_BREAK).exp()

    def c2w(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Cameras ``R [F, 3, 3]``, centres ``t [F, 3]``; frame 0 is the identity, not a parameter."""
        dev = self.pose_q.device
        R = torch.cat((torch.eye(3, device=dev)[None], _quat_to_rotmat(self.pose_q)))
        t = torch.cat((torch.zeros(1, 3, device=dev), _signed_expm1(self.pose_t)))
        return R, t

    def pair_similarity(self):
        log_s = self.pw_log_s - self.pw_log_s.mean() + math.log(BASE_SCALE)
        return log_s.exp(), _quat_to_rotmat(self.pw_q), _signed_expm1(self.pw_t)

    def world_points(self) -> torch.Tensor:
        """``[F, h*w, 3]`` the frames' depth maps lifted through their cameras."""
        R, t = self.c2w()
        cam = torch.cat((self.rays / self.focal(), torch.ones_like(self.rays[:, :1])), -1)
        cam = self.log_depth.exp()[..., None] * cam
        return cam @ R.transpose(1, 2) + t[:, None]

    def forward(self) -> torch.Tensor:
        X = self.world_points()
        s, R, t = self.pair_similarity()
        sR = (s[:, None, None] * R).transpose(1, 2)
        ai = torch.baddbmm(t[:, None], self.pred_i, sR)
        aj = torch.baddbmm(t[:, None], self.pred_j, sR)
        li = ((X[self.ei] - ai).norm(dim=-1) * self.weight_i).mean()
        lj = ((X[self.ej] - aj).norm(dim=-1) * self.weight_j).mean()
        return li + lj

    # -- initialisation
    @torch.no_grad()
    def set_state(self, R: torch.Tensor, t: torch.Tensor, pts_world: torch.Tensor, focal: float):
        """Cameras ``R [F,3,3], t [F,3]`` (frame 0 = identity), world points ``[F, h*w, 3]``: set everything."""
        s_e, R_e, t_e = weighted_umeyama(self.pred_i, pts_world[self.ei], self.weight_i)
        factor = BASE_SCALE / s_e.log().mean().exp()
        t, pts_world, s_e, t_e = t * factor, pts_world * factor, s_e * factor, t_e * factor
        depth = ((pts_world - t[:, None]) @ R)[..., 2]
        # a point behind its own camera has no depth to start from; the smallest positive one stands in
        floor = depth[depth > 0].min() if (depth > 0).any() else torch.tensor(1.0, device=depth.device)
        self.log_depth.copy_(depth.clamp_min(floor).log())
        self.pose_q.copy_(_rotmat_to_quat(R[1:]))
        self.pose_t.copy_(_signed_log1p(t[1:]))
        self.focal_p.fill_(FOCAL_BREAK * math.log(focal))
        self.pw_q.copy_(_rotmat_to_quat(R_e))
        self.pw_t.copy_(_signed_log1p(t_e))
        self.pw_log_s.copy_(s_e.clamp_min(1e-12).log())


def _own_pointmaps(pw: PairPointmaps) -> tuple[torch.Tensor, torch.Tensor]:
    """For every frame, the pair (as first view) with the highest mean confidence: edge index ``[F]``."""
    n = pw.num_frames
    score = pw.conf_i.reshape(len(pw.edges), -1).float().mean(-1).cpu()
    best = torch.full((n,), -1, dtype=torch.long)
    best_score = torch.full((n,), -math.inf)
    for e, (i, _) in enumerate(pw.edges.tolist()):
        if score[e] > best_score[i]:
            best_score[i], best[i] = score[e], e
    if (best < 0).any():
        missing = torch.nonzero(best < 0).flatten().tolist()
        raise Lift3DError(f"MASt3R alignment: frames {missing} are never the first view of a pair; "
                          "the pair graph must be symmetrised")
    return best, score


def _shared_focal(pw: PairPointmaps, best: torch.Tensor) -> float:
    b = best.to(pw.pts_i.device)
    f = estimate_focal(pw.pts_i[b], pw.conf_i[b].float().log())
    return float(f.median())


def _mst_chain(al: _Aligner, pw: PairPointmaps):
    """Grow a maximum spanning tree of pair confidence from frame 0; each new frame's camera comes from
    the pair in which it is the first view, registered onto the already placed frame's points.

    Returns cameras ``R [F, 3, 3]``, ``t [F, 3]`` and world points ``[F, h*w, 3]`` (frame 0 = identity)
    and each frame's best own pair ``[F]``.
    """
    n = pw.num_frames
    E = len(pw.edges)
    best, _ = _own_pointmaps(pw)
    P = pw.pts_i.shape[1] * pw.pts_i.shape[2]
    pred_i, pred_j = al.pred_i, al.pred_j
    conf_i = pw.conf_i.reshape(E, -1).float()
    conf_j = pw.conf_j.reshape(E, -1).float()
    score = (conf_i.mean(-1) * conf_j.mean(-1)).cpu().tolist()  # DUSt3R's edge score
    edge_index = {(int(i), int(j)): e for e, (i, j) in enumerate(pw.edges.tolist())}
    dev = pred_i.device
    R = torch.eye(3, device=dev).repeat(n, 1, 1)
    t = torch.zeros(n, 3, device=dev)
    pts = torch.zeros(n, P, 3, device=dev)
    pts[0] = pred_i[best[0]]
    placed = {0}
    heap: list[tuple[float, int, int]] = []

    def push(a: int):
        for (i, j), e in edge_index.items():
            if j == a and i not in placed and (a, i) in edge_index:
                heapq.heappush(heap, (-max(score[e], score[edge_index[(a, i)]]), a, i))

    push(0)
    while heap:
        _, a, b = heapq.heappop(heap)
        if b in placed:
            continue
        e = edge_index[(b, a)]  # b first: b's camera is the pair's frame
        s, Rb, tb = weighted_umeyama(pred_j[e][None], pts[a][None], al.weight_j[e][None])
        R[b], t[b] = Rb[0], tb[0]
        pts[b] = s[0] * pred_i[e] @ Rb[0].T + tb[0]
        placed.add(b)
        push(b)
    if len(placed) < n:
        missing = sorted(set(range(n)) - placed)
        raise Lift3DError(f"MASt3R alignment: frames {missing} are not connected to the input view by any pair")
    return R, t, pts, best


@torch.no_grad()
def _init_mst(al: _Aligner, pw: PairPointmaps):
    R, t, pts, best = _mst_chain(al, pw)
    al.set_state(R, t, pts, _shared_focal(pw, best))


@torch.no_grad()
def _init_commanded(al: _Aligner, pw: PairPointmaps, c2w_commanded: np.ndarray):
    """The commanded cameras (relative to frame 0) with the spanning tree's points.

    The points come from chaining the pairs, which keeps their scales consistent; the commanded
    cameras are brought to the points' unit by the least-squares scale between the two sets of
    camera centres (both start at frame 0, so a scale is all that separates them).
    """
    _, t_chain, pts, best = _mst_chain(al, pw)
    dev = pts.device
    c2w = np.linalg.inv(c2w_commanded[0]) @ np.asarray(c2w_commanded, dtype=np.float64)
    centres = torch.as_tensor(c2w[:, :3, 3], dtype=torch.float32, device=dev)
    denom = float((t_chain * t_chain).sum())
    k = float((centres * t_chain).sum()) / denom if denom > 0 else 0.0  # commanded units per chain unit
    if not k > 0:
        k = 1.0  # no baseline anywhere (or a chain pointing against the commands): keep the commanded unit
    R = torch.as_tensor(c2w[:, :3, :3], dtype=torch.float32, device=dev)
    al.set_state(R, centres / k, pts, _shared_focal(pw, best))


def global_alignment(
    pw: PairPointmaps,
    *,
    iterations: int = 400,
    lr: float = 0.01,
    schedule: str = "cosine",
    init: str = "commanded",
    c2w_commanded: np.ndarray | None = None,
    progress: Progress | None = None,
) -> Alignment:
    """Align the pairs of ``pw`` into one world; see the module docstring.

    iterations, lr, schedule: Adam (betas 0.9, 0.9) from ``lr`` down to 1e-6 (reference: 400, 0.01, cosine).
    init: "mst" or "commanded" (needs ``c2w_commanded [F, 4, 4]``, OpenCV c2w of the distinct frames).
    Runs on the device of ``pw``'s tensors, in float32. ``progress``: phase ``alignment``, Adam iterations.
    """
    if init not in INITS:
        raise Lift3DError(f"calibrate.mast3r.init must be one of {INITS}, got {init!r}")
    if schedule not in SCHEDULES:
        raise Lift3DError(f"calibrate.mast3r.schedule must be one of {SCHEDULES}, got {schedule!r}")
    al = _Aligner(pw)
    if init == "mst":
        _init_mst(al, pw)
    else:
        if c2w_commanded is None or len(c2w_commanded) != pw.num_frames:
            raise Lift3DError("MASt3R init='commanded' needs the commanded c2w of every frame")
        _init_commanded(al, pw, c2w_commanded)
    with torch.no_grad():
        loss_init = float(al())
    params = [p for p in al.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.9))
    for it in range(iterations):
        frac = it / iterations
        if schedule == "cosine":
            cur = LR_MIN + (lr - LR_MIN) * (1 + math.cos(math.pi * frac)) / 2
        else:
            cur = lr + (LR_MIN - lr) * frac
        for g in opt.param_groups:
            g["lr"] = cur
        opt.zero_grad(set_to_none=True)
        loss = al()
        loss.backward()
        opt.step()
        if (it + 1) % 10 == 0 or it + 1 == iterations:
            report(progress, it + 1, iterations, "alignment")
    with torch.no_grad():
        loss_final = float(al())
        R, t = al.c2w()
        c2w = torch.eye(4, dtype=torch.float64).repeat(pw.num_frames, 1, 1)
        c2w[:, :3, :3] = R.double().cpu()
        c2w[:, :3, 3] = t.double().cpu()
        h, w = pw.shape
        depth = al.log_depth.exp().reshape(-1, h, w)
        conf = torch.zeros(pw.num_frames, h, w, device=pw.conf_i.device)
        for e, (i, j) in enumerate(pw.edges.tolist()):
            conf[i] = torch.maximum(conf[i], pw.conf_i[e].float())
            conf[j] = torch.maximum(conf[j], pw.conf_j[e].float())
        focal = float(al.focal())
    return Alignment(c2w=c2w.numpy(), focal=focal, depth=depth.float().cpu().numpy(),
                     confidence=conf.cpu().numpy(), loss_init=loss_init, loss=loss_final)
