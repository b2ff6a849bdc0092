"""Frames -> network views -> batched pairwise MASt3R predictions.

Resolution: frames are resized so their longest side is ``image_size`` (default 512, the size the
checkpoint was trained at and is named after; the LiftImage3D reference loads at 448), then
centre-cropped to multiples of the 16-pixel patch, as DUSt3R's ``load_images`` does (a square
frame is cropped to 4:3, a shape the network was trained on). 1024x576 generated frames become
512x288 views. Portrait frames go in as they are: the reference's loader builds the network
with ``landscape_only=False`` and a plain patch embedding, so it transposes nothing at inference.

Each frame is encoded once: the encoder sees one view at a time, so its output is the same in
every pair, and only the decoders and heads run per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from lift3d_core.calibrate.mast3r.align import PairPointmaps
from lift3d_core.calibrate.mast3r.model import AsymmetricMASt3R
from lift3d_core.errors import Lift3DError
from lift3d_core.progress import Progress, report


@dataclass(frozen=True)
class NetworkView:
    """How a frame of ``frame_hw`` maps onto the network's ``net_hw`` view.

    The frame is resized to ``resized_hw`` and cropped at ``crop_xy`` (left, top, in resized pixels).
    """

    frame_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    crop_xy: tuple[int, int]
    net_hw: tuple[int, int]

    def intrinsics(self, focal: float) -> np.ndarray:
        """K ``[3, 3]`` in frame pixels for a focal in view pixels, principal point at the view's centre."""
        (H, W), (Hr, Wr), (x0, y0), (h, w) = self.frame_hw, self.resized_hw, self.crop_xy, self.net_hw
        sx, sy = W / Wr, H / Hr
        return np.array([[focal * sx, 0.0, (x0 + w / 2) * sx], [0.0, focal * sy, (y0 + h / 2) * sy], [0, 0, 1.0]])

    def to_frame(self, maps: np.ndarray) -> np.ndarray:
        """View maps ``[F, h, w]`` -> frame maps ``[F, H, W]``: nearest view pixel, 0 outside the crop.

        Nearest, not bilinear: interpolating depth across an occlusion edge invents points in between.
        """
        (H, W), (Hr, Wr), (x0, y0), (h, w) = self.frame_hw, self.resized_hw, self.crop_xy, self.net_hw
        xn = np.floor((np.arange(W) + 0.5) * (Wr / W) - x0).astype(np.int64)
        yn = np.floor((np.arange(H) + 0.5) * (Hr / H) - y0).astype(np.int64)
        inside = ((yn >= 0) & (yn < h))[:, None] & ((xn >= 0) & (xn < w))[None, :]
        out = maps[:, yn.clip(0, h - 1)][:, :, xn.clip(0, w - 1)]
        return np.where(inside[None], out, 0).astype(maps.dtype)


def network_view(frame_hw: tuple[int, int], image_size: int = 512, patch_size: int = 16) -> NetworkView:
    """The resize and crop of DUSt3R's ``load_images`` for frames of ``(H, W)``."""
    H, W = frame_hw
    r = image_size / max(H, W)
    Wr, Hr = round(W * r), round(H * r)
    w, h = Wr // patch_size * patch_size, Hr // patch_size * patch_size
    if w == h:
        h = (3 * w // 4) // patch_size * patch_size
    if min(h, w) < patch_size:
        raise Lift3DError(f"calibrate.mast3r: frames of {W}x{H} at image_size {image_size} leave less than one "
                          f"{patch_size}-px patch; use larger frames or a larger calibrate.mast3r.image_size")
    return NetworkView(frame_hw=(H, W), resized_hw=(Hr, Wr), crop_xy=(Wr // 2 - w // 2, Hr // 2 - h // 2),
                       net_hw=(h, w))


def prepare_images(frames: np.ndarray, view: NetworkView) -> torch.Tensor:
    """uint8 ``[F, H, W, 3]`` -> float32 ``[F, 3, h, w]`` in [-1, 1] (MASt3R's normalisation)."""
    (Hr, Wr), (x0, y0), (h, w) = view.resized_hw, view.crop_xy, view.net_hw
    # Lanczos when shrinking, bicubic when enlarging (the reference's choice)
    resample = Image.Resampling.LANCZOS if max(Hr, Wr) < max(view.frame_hw) else Image.Resampling.BICUBIC
    out = np.empty((len(frames), h, w, 3), dtype=np.uint8)
    for n, frame in enumerate(frames):
        img = Image.fromarray(frame).resize((Wr, Hr), resample)
        out[n] = np.asarray(img)[y0 : y0 + h, x0 : x0 + w]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)


@torch.no_grad()
def pairwise_inference(
    model: AsymmetricMASt3R,
    images: torch.Tensor,
    edges: np.ndarray,
    *,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    with_desc: bool = False,
    progress: Progress | None = None,
) -> PairPointmaps:
    """Run MASt3R on every pair ``(i, j)`` of ``edges [E, 2]`` over ``images [F, 3, h, w]`` (model's device).

    Returns both views' points in camera i and confidences (and, with ``with_desc``, descriptors and
    their confidences), ``[E, h, w, ...]`` on the model's device, float32. ``dtype``: the autocast
    precision of the encoder and decoders (the heads always run in float32). Pixels whose
    prediction is not finite get point 0 and confidence 1, i.e. zero weight in the alignment.
    ``progress``: phase ``pairs``, pairs decoded (the encoder's pass over the frames comes first).
    """
    device = next(model.parameters()).device
    x = images.to(device)
    hw = tuple(x.shape[-2:])
    feats, pos = [], None
    with _autocast(device, dtype):
        for s in range(0, len(x), 2 * batch_size):
            f, pos = model.encode(x[s : s + 2 * batch_size])
            feats.append(f)
    feats = torch.cat(feats)
    pos = pos[:1]
    keys = ("pts3d", "conf") + (("desc", "desc_conf") if with_desc else ())
    out: dict[str, list[torch.Tensor]] = {f"{k}_{v}": [] for k in keys for v in (1, 2)}
    ei = torch.as_tensor(edges[:, 0], device=device)
    ej = torch.as_tensor(edges[:, 1], device=device)
    report(progress, 0, len(edges), "pairs")
    for s in range(0, len(edges), batch_size):
        a, b = ei[s : s + batch_size], ej[s : s + batch_size]
        p = pos.expand(len(a), -1, -1)
        with _autocast(device, dtype):
            dec1, dec2 = model.decode(feats[a], p, feats[b], p)
        res1, res2 = model.heads(dec1, dec2, hw)
        for k in keys:
            for v, res in ((1, res1), (2, res2)):
                out[f"{k}_{v}"].append(res[k])
        report(progress, min(s + batch_size, len(edges)), len(edges), "pairs")
    cat = {k: torch.cat(v).contiguous() for k, v in out.items()}
    for v in (1, 2):
        bad = ~(torch.isfinite(cat[f"pts3d_{v}"]).all(-1) & torch.isfinite(cat[f"conf_{v}"]))
        if bad.any():
            cat[f"pts3d_{v}"][bad] = 0.0
            cat[f"conf_{v}"][bad] = 1.0
    return PairPointmaps(
        edges=np.asarray(edges, dtype=np.int64),
        pts_i=cat["pts3d_1"], pts_j=cat["pts3d_2"], conf_i=cat["conf_1"], conf_j=cat["conf_2"],
        desc_i=cat.get("desc_1"), desc_j=cat.get("desc_2"),
        desc_conf_i=cat.get("desc_conf_1"), desc_conf_j=cat.get("desc_conf_2"),
    )

