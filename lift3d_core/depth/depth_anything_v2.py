"""``depth.backend: depth_anything_v2``: Depth Anything V2 (ViT-L) relative disparity, aligned to calibration.

The network is transformers' ``DepthAnythingForDepthEstimation`` built from a V2 config (DINOv2 ViT-L/14 backbone,
DPT head with 256 features, reassemble channels [256, 512, 1024, 1024], features taken after blocks [4, 11, 17, 23]).
It loads the official ``depth_anything_v2_vitl.pth`` (a plain state dict: 407 tensors, 335,315,649 values, prefixes
``pretrained.*`` and ``depth_head.*``) through :data:`KEY_MAP`, a renaming table, plus one rule (:data:`QKV`: DINOv2's
fused query/key/value projection is three in transformers); :func:`convert_state_dict` reports what it could not map.

Preprocessing follows the official ``infer_image``: RGB in [0, 1], bicubic resize keeping the aspect so that both
sides are at least ``input_size`` (the shorter side lands on it), each a multiple of 14, ImageNet normalisation; the
disparity is resized back to the frame size (bilinear, corners aligned).
"""

from __future__ import annotations

import math
import re
import threading
import time
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

from lift3d_core.depth import DepthConfig, DepthEstimate, inverse_depth
from lift3d_core.depth.align import fit_scale_shift, median
from lift3d_core.errors import Lift3DError

WHERE = (
    "get depth_anything_v2_vitl.pth (1.34 GB) from "
    "https://huggingface.co/depth-anything/Depth-Anything-V2-Large/resolve/main/depth_anything_v2_vitl.pth "
    "and put it at the path depth.depth_anything_v2.checkpoint names (default checkpoints/)"
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Architecture:
    """Sizes of a Depth Anything V2 network.

    intermediate_layers: 0-based indices of the DINOv2 blocks whose (layer-normed) tokens feed the DPT head.
    pos_grid: side of the learned position-embedding grid (518 / 14 = 37 for the official models).
    head_hidden: channels of the head's last 3x3 convolution (32 in every official model).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_layers: tuple[int, int, int, int]
    features: int
    out_channels: tuple[int, int, int, int]
    pos_grid: int = 37
    patch_size: int = 14
    mlp_ratio: int = 4
    head_hidden: int = 32


ARCHITECTURES = {
    "vitl": Architecture(1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
    # the same code at a size a CPU test runs in milliseconds; never an official checkpoint
    "tiny": Architecture(32, 4, 2, (0, 1, 2, 3), 16, (8, 16, 32, 32), pos_grid=4, head_hidden=8),
}


def hf_config(arch: Architecture) -> DepthAnythingConfig:
    """transformers' config of the V2 network of sizes ``arch``."""
    backbone = Dinov2Config(
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        image_size=arch.pos_grid * arch.patch_size,
        patch_size=arch.patch_size,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        # transformers counts the embeddings as hidden state 0: block i's output is stage i + 1
        out_indices=[i + 1 for i in arch.intermediate_layers],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=arch.hidden_size,
        patch_size=arch.patch_size,
        reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(arch.out_channels),
        fusion_hidden_size=arch.features,
        head_hidden_size=arch.head_hidden,
        depth_estimation_type="relative",
        max_depth=1,  # the relative head multiplies its ReLU output by this: 1 keeps V2's raw disparity
    )


# -- the official layout, and its conversion ----------------------------------------------------------------------


def official_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the official checkpoint of sizes ``arch`` (its ``state_dict`` order)."""
    C, P, g, Fh = arch.hidden_size, arch.patch_size, arch.pos_grid, arch.features
    shapes: dict[str, tuple[int, ...]] = {
        "pretrained.cls_token": (1, 1, C),
        "pretrained.pos_embed": (1, g * g + 1, C),
        "pretrained.mask_token": (1, C),
        "pretrained.patch_embed.proj.weight": (C, 3, P, P),
        "pretrained.patch_embed.proj.bias": (C,),
    }
    for i in range(arch.num_layers):
        b = f"pretrained.blocks.{i}."
        shapes |= {
            b + "norm1.weight": (C,), b + "norm1.bias": (C,),
            b + "attn.qkv.weight": (3 * C, C), b + "attn.qkv.bias": (3 * C,),
            b + "attn.proj.weight": (C, C), b + "attn.proj.bias": (C,),
            b + "ls1.gamma": (C,),
            b + "norm2.weight": (C,), b + "norm2.bias": (C,),
            b + "mlp.fc1.weight": (arch.mlp_ratio * C, C), b + "mlp.fc1.bias": (arch.mlp_ratio * C,),
            b + "mlp.fc2.weight": (C, arch.mlp_ratio * C), b + "mlp.fc2.bias": (C,),
            b + "ls2.gamma": (C,),
        }
    shapes |= {"pretrained.norm.weight": (C,), "pretrained.norm.bias": (C,)}
    o = arch.out_channels
    for i, oc in enumerate(o):
        shapes |= {f"depth_head.projects.{i}.weight": (oc, C, 1, 1), f"depth_head.projects.{i}.bias": (oc,)}
    # resize layers: x4 and x2 transposed convolutions, identity (no tensors), a stride-2 3x3 convolution
    for i, k in ((0, 4), (1, 2), (3, 3)):
        shapes |= {f"depth_head.resize_layers.{i}.weight": (o[i], o[i], k, k), f"depth_head.resize_layers.{i}.bias": (o[i],)}
    for i, oc in enumerate(o):
        shapes[f"depth_head.scratch.layer{i + 1}_rn.weight"] = (Fh, oc, 3, 3)
    for r in range(1, 5):
        n = f"depth_head.scratch.refinenet{r}."
        shapes |= {n + "out_conv.weight": (Fh, Fh, 1, 1), n + "out_conv.bias": (Fh,)}
        for unit in (1, 2):
            for conv in (1, 2):
                shapes |= {f"{n}resConfUnit{unit}.conv{conv}.weight": (Fh, Fh, 3, 3),
                           f"{n}resConfUnit{unit}.conv{conv}.bias": (Fh,)}
    shapes |= {
        "depth_head.scratch.output_conv1.weight": (Fh // 2, Fh, 3, 3),
        "depth_head.scratch.output_conv1.bias": (Fh // 2,),
        "depth_head.scratch.output_conv2.0.weight": (arch.head_hidden, Fh // 2, 3, 3),
        "depth_head.scratch.output_conv2.0.bias": (arch.head_hidden,),
        "depth_head.scratch.output_conv2.2.weight": (1, arch.head_hidden, 1, 1),
        "depth_head.scratch.output_conv2.2.bias": (1,),
    }
    return shapes


def _fusion_layer(refinenet: str) -> int:
    # the official head fuses from the deepest map (refinenet4) up; transformers numbers its fusion layers in that order
    return 4 - int(refinenet)


# official name (whole-key regex) -> transformers name (a template of the regex's groups, or a function of the match)
KEY_MAP: tuple[tuple[str, str | Callable[[re.Match], str]], ...] = (
    (r"pretrained\.cls_token", "backbone.embeddings.cls_token"),
    (r"pretrained\.mask_token", "backbone.embeddings.mask_token"),
    (r"pretrained\.pos_embed", "backbone.embeddings.position_embeddings"),
    (r"pretrained\.patch_embed\.proj\.(weight|bias)", r"backbone.embeddings.patch_embeddings.projection.\1"),
    (r"pretrained\.blocks\.(\d+)\.norm([12])\.(weight|bias)", r"backbone.encoder.layer.\1.norm\2.\3"),
    (r"pretrained\.blocks\.(\d+)\.ls([12])\.gamma", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (r"pretrained\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"backbone.encoder.layer.\1.mlp.\2.\3"),
    (r"pretrained\.norm\.(weight|bias)", r"backbone.layernorm.\1"),
    (r"depth_head\.projects\.([0-3])\.(weight|bias)", r"neck.reassemble_stage.layers.\1.projection.\2"),
    (r"depth_head\.resize_layers\.([013])\.(weight|bias)", r"neck.reassemble_stage.layers.\1.resize.\2"),
    (r"depth_head\.scratch\.layer([1-4])_rn\.weight", lambda m: f"neck.convs.{int(m[1]) - 1}.weight"),
    (r"depth_head\.scratch\.refinenet([1-4])\.out_conv\.(weight|bias)",
     lambda m: f"neck.fusion_stage.layers.{_fusion_layer(m[1])}.projection.{m[2]}"),
    (r"depth_head\.scratch\.refinenet([1-4])\.resConfUnit([12])\.conv([12])\.(weight|bias)",
     lambda m: f"neck.fusion_stage.layers.{_fusion_layer(m[1])}.residual_layer{m[2]}.convolution{m[3]}.{m[4]}"),
    (r"depth_head\.scratch\.output_conv1\.(weight|bias)", r"head.conv1.\1"),
    (r"depth_head\.scratch\.output_conv2\.0\.(weight|bias)", r"head.conv2.\1"),
    (r"depth_head\.scratch\.output_conv2\.2\.(weight|bias)", r"head.conv3.\1"),
)
_KEY_MAP = tuple((re.compile(pattern), target) for pattern, target in KEY_MAP)
# the one rule that is not a rename: the fused [3C, C] projection splits, in this order, into query, key and value
QKV = re.compile(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")
ATTN_OUT = re.compile(r"pretrained\.blocks\.(\d+)\.attn\.proj\.(weight|bias)")
# transformers renamed DINOv2's attention projections in its 5.x series: (query, key, value, output) per naming
ATTENTION_NAMES = {
    "proj": ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"),
    "legacy": ("attention.attention.query", "attention.attention.key", "attention.attention.value",
               "attention.output.dense"),
}


def attention_naming(model_keys) -> str:
    """Which of :data:`ATTENTION_NAMES` a transformers state dict (its keys) uses."""
    return "proj" if "backbone.encoder.layer.0.attention.q_proj.weight" in set(model_keys) else "legacy"


def hf_names(official: str, naming: str = "proj") -> list[str] | None:
    """The transformers name(s) an official tensor becomes (three for a fused qkv), or None if it has no place;
    ``naming`` is the installed transformers' attention naming (:func:`attention_naming`)."""
    q, k, v, o = ATTENTION_NAMES[naming]
    m = QKV.fullmatch(official)
    if m:
        return [f"backbone.encoder.layer.{m[1]}.{p}.{m[2]}" for p in (q, k, v)]
    m = ATTN_OUT.fullmatch(official)
    if m:
        return [f"backbone.encoder.layer.{m[1]}.{o}.{m[2]}"]
    for pattern, target in _KEY_MAP:
        m = pattern.fullmatch(official)
        if m:
            return [target(m) if callable(target) else m.expand(target)]
    return None


@dataclass
class Conversion:
    """The result of :func:`convert_state_dict`.

    state_dict: transformers-named tensors (views of the official ones: no copy).
    missing: transformers tensors nothing in the file fills. unexpected: file tensors with no place in the model.
    ignored: file tensors deliberately left out (none for Depth Anything V2: every tensor has a place).
    mismatched: ``"name: shape in the file vs expected"`` for tensors whose name maps but whose shape does not.
    """

    state_dict: dict[str, torch.Tensor]
    missing: list[str]
    unexpected: list[str]
    ignored: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def convert_state_dict(official: Mapping[str, torch.Tensor], target: Mapping[str, tuple[int, ...]]) -> Conversion:
    """Official-layout tensors -> transformers names, checked against ``target`` (name -> shape of the model's
    state dict, e.g. of a model built on the meta device)."""
    state: dict[str, torch.Tensor] = {}
    unexpected, mismatched = [], []
    naming = attention_naming(target)
    for key, tensor in official.items():
        names = hf_names(key, naming)
        if names is None or any(n not in target for n in names):
            unexpected.append(key)
            continue
        if len(names) > 1 and tensor.shape[0] % len(names):
            mismatched.append(f"{key}: {tuple(tensor.shape)} does not split into {len(names)}")
            continue
        parts = tensor.chunk(len(names), dim=0) if len(names) > 1 else (tensor,)
        for name, part in zip(names, parts):
            if tuple(part.shape) != tuple(target[name]):
                mismatched.append(f"{key}: {tuple(part.shape)} in the file, {tuple(target[name])} expected")
            else:
                state[name] = part
    missing = [k for k in target if k not in state]
    return Conversion(state, missing, unexpected, [], mismatched)


def to_official(hf_state: Mapping[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """The inverse of :func:`convert_state_dict`: a transformers state dict in the official layout (tests write
    checkpoints with it)."""
    out, naming = {}, attention_naming(hf_state)
    for key in official_shapes(arch):
        names = hf_names(key, naming)
        out[key] = torch.cat([hf_state[n] for n in names]) if len(names) > 1 else hf_state[names[0]]
    return out


# -- building and loading ---------------------------------------------------------------------------------------


def reference_position_encoding(embeddings_module, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """DINOv2's position embeddings for a ``height x width`` input as Depth Anything V2's own code computes them.

    The official DINOv2 resizes the learned grid by a scale factor of ``(patches + 0.1) / grid`` (bicubic, the
    offset against a floating-point floor); transformers resizes to the exact patch grid. The sampling points differ,
    and at 16:9 frames so does the disparity (up to 0.4% of its largest value, measured on a random-init ViT-S with
    both codes), so the official rule replaces transformers' method on the model this module builds.
    """
    pos = embeddings_module.position_embeddings
    grid_positions = pos.shape[1] - 1
    if embeddings.shape[1] - 1 == grid_positions and height == width:
        return pos
    patch_h, patch_w = embeddings_module.patch_embeddings.patch_size
    g = math.isqrt(grid_positions)
    rows, cols = height // patch_h + 0.1, width // patch_w + 0.1
    grid = pos[:, 1:].float().reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(rows / g, cols / g), mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1]).to(pos.dtype)
    return torch.cat((pos[:, :1], grid), dim=1)


def build_model(arch: Architecture, device: str | torch.device = "cpu") -> DepthAnythingForDepthEstimation:
    """A randomly initialised network of sizes ``arch`` (``device="meta"``: shapes only, no memory), in eval mode,
    with the official position-embedding resize (:func:`reference_position_encoding`)."""
    with torch.device(device):
        model = DepthAnythingForDepthEstimation(hf_config(arch))
    embeddings = model.backbone.embeddings
    embeddings.interpolate_pos_encoding = types.MethodType(reference_position_encoding, embeddings)
    return model.eval()


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


_MODELS: dict[tuple, DepthAnythingForDepthEstimation] = {}
_MODELS_LOCK = threading.Lock()


def load_model(
    path: str | Path, variant: str = "vitl", dtype: str = "float32", device: str | torch.device | None = None
) -> DepthAnythingForDepthEstimation:
    """The cached network for a checkpoint: loaded once per process per (file, its size and mtime, variant, dtype,
    device); a replaced file is loaded again and the stale copy dropped."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolved = Path(path).resolve()
    stat = resolved.stat() if resolved.is_file() else None
    key = (str(resolved), stat and stat.st_size, stat and stat.st_mtime_ns, variant, dtype, str(device))
    with _MODELS_LOCK:
        if key not in _MODELS:
            model = load_weights(resolved, ARCHITECTURES[variant]).to(device, getattr(torch, dtype))
            for stale in [k for k in _MODELS if k[0] == key[0] and k[1:3] != key[1:3]]:
                del _MODELS[stale]
            _MODELS[key] = model
        return _MODELS[key]


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
    model: DepthAnythingForDepthEstimation, frames: np.ndarray, input_size: int = 518, batch_size: int = 8
) -> np.ndarray:
    """Relative disparity ``float32 [F, H, W]`` (larger = nearer, unknown scale and shift) of ``frames uint8
    [F, H, W, 3]``, in batches of ``batch_size`` on the model's device and dtype."""
    param = next(model.parameters())
    n, height, width = frames.shape[:3]
    size = network_size(height, width, input_size, model.config.patch_size)
    out = np.empty((n, height, width), np.float32)
    for start in range(0, n, batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size])).to(param.device)
        disparity = model(pixel_values=preprocess(chunk, size).to(param.dtype)).predicted_depth
        disparity = F.interpolate(disparity[:, None].float(), (height, width), mode="bilinear", align_corners=True)
        out[start : start + len(chunk)] = disparity[:, 0].cpu().numpy()
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


def estimate(frames: np.ndarray, calibrated_depth: np.ndarray, confidence: np.ndarray, cfg: DepthConfig) -> DepthEstimate:
    """The backend: Depth Anything V2 on every frame, aligned to the calibrated depth (all ``[F, H, W]``)."""
    sec = cfg.depth_anything_v2
    t0 = time.perf_counter()
    path = sec.checkpoint
    if sec.variant == "vitl":  # the official file: found (and named when missing) as every checkpoint is
        from lift3d_core.checkpoints import checkpoint_path

        path = checkpoint_path("depth_anything_v2", path)
    model = load_model(path, sec.variant, sec.dtype)
    t1 = time.perf_counter()
    mono = relative_disparity(model, frames, sec.input_size, sec.batch_size)
    t2 = time.perf_counter()
    out = align_to_calibration(mono, calibrated_depth, confidence, cfg, device=next(model.parameters()).device)
    out.seconds = {"load": t1 - t0, "network": t2 - t1, "align": time.perf_counter() - t2}
    return out
