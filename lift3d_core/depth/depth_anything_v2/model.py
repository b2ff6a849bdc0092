"""Depth Anything V2's network: transformers' ``DepthAnythingForDepthEstimation`` built from a V2 config (DINOv2
ViT-L/14 backbone, DPT head with 256 features, reassemble channels [256, 512, 1024, 1024], features taken after
blocks [4, 11, 17, 23]), with the official position-embedding resize."""

from __future__ import annotations

import math
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config


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
