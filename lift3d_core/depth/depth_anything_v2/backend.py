"""``depth.backend: depth_anything_v2``: load the official checkpoint once per process, run it, align its relative
disparity to the calibration.

Preprocessing follows the official ``infer_image``: RGB in [0, 1], bicubic resize keeping the aspect so that both
sides are at least ``input_size`` (the shorter side lands on it), each a multiple of 14, ImageNet normalisation; the
disparity is resized back to the frame size (bilinear, corners aligned).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DepthAnythingForDepthEstimation

from lift3d_core.depth import DepthConfig, DepthEstimate, inverse_depth
from lift3d_core.depth.align import fit_scale_shift, median
from lift3d_core.depth.depth_anything_v2.convert import convert_state_dict
from lift3d_core.depth.depth_anything_v2.model import ARCHITECTURES, Architecture, build_model
from lift3d_core.errors import Lift3DError

WHERE = (
    "get depth_anything_v2_vitl.pth (1.34 GB) from "
    "https://huggingface.co/depth-anything/Depth-Anything-V2-Large/resolve/main/depth_anything_v2_vitl.pth "
    "and put it at the path depth.depth_anything_v2.checkpoint names (default checkpoints/)"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an official checkpoint, memory-mapped; Lift3DError naming the file if it cannot be read."""
    from lift3d_core.checkpoints import load_torch

    path = Path(path)
    if not path.is_file():
        raise Lift3DError(f"Depth Anything V2 checkpoint {path} not found: {WHERE}")
    state = load_torch(path, source="https://huggingface.co/depth-anything/Depth-Anything-V2-Large")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Lift3DError(
            f"Depth Anything V2 checkpoint {path} is not a plain state dict of tensors (the official file is): {WHERE}"
        )
    return dict(state)


def load_weights(path: str | Path, arch: Architecture) -> DepthAnythingForDepthEstimation:
    """The network of sizes ``arch`` holding the official checkpoint at ``path`` (on the CPU, float32)."""
    official = read_checkpoint(path)
    model = build_model(arch, "meta")
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    conv = convert_state_dict(official, target)
    if not conv.ok:
        def show(names):
            return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

        problems = [f"{len(v)} {what} ({show(v)})" for what, v in
                    (("missing", conv.missing), ("unexpected", conv.unexpected), ("mismatched", conv.mismatched)) if v]
        raise Lift3DError(f"{path} is not a Depth Anything V2 checkpoint of this size: {'; '.join(problems)}. {WHERE}")
    model.load_state_dict({k: v.float() for k, v in conv.state_dict.items()}, strict=True, assign=True)
    return model.eval()


def load_model(
    path: str | Path, variant: str = "vitl", dtype: str = "float32", device: str | torch.device | None = None
) -> DepthAnythingForDepthEstimation:
    """The network for a checkpoint, loaded once per process per (file, variant, dtype, device)
    (:func:`~lift3d_core.checkpoints.cached_model`: a replaced file is loaded again and the stale copy dropped)."""
    from lift3d_core.checkpoints import cached_model, resolve_device

    device = resolve_device(device)
    path = Path(path)
    if not path.is_file():
        raise Lift3DError(f"Depth Anything V2 checkpoint {path} not found: {WHERE}")
    return cached_model(path, ("depth_anything_v2", variant, dtype, str(device)),
                        lambda p: load_weights(p, ARCHITECTURES[variant]).to(device, getattr(torch, dtype)))


# -- inference ----------------------------------------------------------------------------------------------------


def network_size(height: int, width: int, input_size: int, patch_size: int = 14) -> tuple[int, int]:
    """``(h, w)`` the network sees for a ``height x width`` frame: aspect kept, both sides at least ``input_size``
    (the official ``Resize(keep_aspect_ratio, resize_method="lower_bound", ensure_multiple_of=14)``)."""
    scale = max(input_size / height, input_size / width)

    def constrain(x: float) -> int:
        y = round(x / patch_size) * patch_size
        return y if y >= input_size else math.ceil(x / patch_size) * patch_size

    return constrain(scale * height), constrain(scale * width)


def preprocess(frames_uint8: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``uint8 [B, H, W, 3]`` RGB -> normalised ``float32 [B, 3, h, w]`` at the network size ``size``."""
    x = frames_uint8.permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def relative_disparity(
    model: DepthAnythingForDepthEstimation, frames: np.ndarray, input_size: int = 518, batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Relative disparity ``float32 [F, H, W]`` (larger = nearer, unknown scale and shift) of ``frames uint8
    [F, H, W, 3]``, in batches of ``batch_size`` on the model's device and dtype; ``progress(done, F)`` after each."""
    param = next(model.parameters())
    n, height, width = frames.shape[:3]
    size = network_size(height, width, input_size, model.config.patch_size)
    out = np.empty((n, height, width), np.float32)
    for start in range(0, n, batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size])).to(param.device)
        disparity = model(pixel_values=preprocess(chunk, size).to(param.dtype)).predicted_depth
        disparity = F.interpolate(disparity[:, None].float(), (height, width), mode="bilinear", align_corners=True)
        out[start : start + len(chunk)] = disparity[:, 0].cpu().numpy()
        if progress is not None:
            progress(start + len(chunk), n)
    return out


def align_to_calibration(
    mono: np.ndarray, calibrated_depth: np.ndarray, confidence: np.ndarray, cfg: DepthConfig,
    device: str | torch.device | None = None,
) -> DepthEstimate:
    """Per-frame scale and shift of ``mono [F, H, W]`` onto the calibrated disparity, fitted on pixels with a
    calibrated depth above ``min_depth`` and confidence at least ``min_confidence`` (the fit runs on ``device``).

    Valid: aligned disparity finite, above a tiny epsilon (the reference drops tiny values) and below
    ``1 / min_depth``. A frame with too few fit pixels, a degenerate fit or a non-positive scale (a disparity that
    runs backwards) is left all invalid and counted in ``frames_unaligned``.
    """
    sec = cfg.depth_anything_v2
    device = torch.device(device or "cpu")
    metric = inverse_depth(calibrated_depth, cfg.min_depth)
    usable = (calibrated_depth > cfg.min_depth) & (confidence >= sec.min_confidence) & np.isfinite(mono)
    n = mono.shape[0]
    inv = np.zeros_like(mono, dtype=np.float32)
    valid = np.zeros(mono.shape, bool)
    scales, shifts = np.full(n, np.nan), np.full(n, np.nan)
    residuals = []
    for f in range(n):
        if usable[f].sum() < sec.min_fit_pixels:
            continue
        pick = torch.from_numpy(usable[f]).to(device)
        mono_fit = torch.from_numpy(mono[f]).to(device)[pick]
        metric_fit = torch.from_numpy(metric[f]).to(device)[pick]
        fit = fit_scale_shift(mono_fit, metric_fit, sec.align)
        if fit is None or not np.all(np.isfinite(fit)) or fit[0] <= 0:
            continue
        scales[f], shifts[f] = fit
        aligned = (fit[0] * mono[f].astype(np.float64) + fit[1]).astype(np.float32)
        valid[f] = np.isfinite(aligned) & (aligned > 1e-6) & (aligned < 1.0 / cfg.min_depth)
        inv[f][valid[f]] = aligned[valid[f]]
        disagreement = (fit[0] * mono_fit.double() + fit[1] - metric_fit).abs()
        residuals.append(float(median(disagreement) / median(metric_fit.double())))
    stats = {
        "frames_unaligned": float(np.isnan(scales).sum()),
        # median over frames of the median relative disagreement with calibration on the fit pixels
        "align_residual": float(np.median(residuals)) if residuals else float("nan"),
    }
    return DepthEstimate(inv, valid, {"align_scale": scales, "align_shift": shifts}, stats)


def estimate(frames: np.ndarray, calibrated_depth: np.ndarray, confidence: np.ndarray, cfg: DepthConfig,
             progress: Callable[[int, int], None] | None = None) -> DepthEstimate:
    """The backend: Depth Anything V2 on every frame, aligned to the calibrated depth (all ``[F, H, W]``)."""
    sec = cfg.depth_anything_v2
    t0 = time.perf_counter()
    path = sec.checkpoint
    if sec.variant == "vitl":  # the official file: found (and named when missing) as every checkpoint is
        from lift3d_core.checkpoints import checkpoint_path

        path = checkpoint_path("depth_anything_v2", path)
    model = load_model(path, sec.variant, sec.dtype)
    t1 = time.perf_counter()
    mono = relative_disparity(model, frames, sec.input_size, sec.batch_size, progress)
    t2 = time.perf_counter()
    out = align_to_calibration(mono, calibrated_depth, confidence, cfg, device=next(model.parameters()).device)
    out.seconds = {"load": t1 - t0, "network": t2 - t1, "align": time.perf_counter() - t2}
    return out
