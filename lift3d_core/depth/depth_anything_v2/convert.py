"""The official ``depth_anything_v2_vitl.pth`` layout (a plain state dict: 407 tensors, 335,315,649 values, prefixes
``pretrained.*`` and ``depth_head.*``) and its conversion onto transformers' names: :data:`KEY_MAP`, a renaming
table, plus one rule (:data:`QKV`: DINOv2's fused query/key/value projection is three in transformers);
:func:`convert_state_dict` reports what it could not map."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from lift3d_core.depth.depth_anything_v2.model import Architecture


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
