"""The official ``motionctrl_svd.ckpt`` (sgm single-file layout) <-> :class:`MotionCtrlSVD`'s state dict, as data.

The official file is Lightning-style, ``{"state_dict": {...}, ...}``; the reference loads ``state_dict`` into its
whole sgm engine. Its groups (tensor counts of the official config, METHOD.md section 2):

* ``model.diffusion_model.*`` (1,460): the UNet, incl. 16 ``cc_projection`` -> ``unet.*``
* ``first_stage_model.decoder.*`` (266): the temporal decoder -> ``vae.decoder.*``
* ``conditioner.embedders.3.encoder.{encoder,quant_conv}.*`` (106 + 2): the KL encoder that encodes the
  conditioning frame at sampling time -> ``vae.encoder.*``, ``vae.quant_conv.*``
* ``conditioner.embedders.0.open_clip.model.visual.*`` (392): the CLIP ViT-H/14 image tower -> ``image_encoder.*``

Deliberately ignored (never read at img2vid sampling time): the text tower's leftovers
(``open_clip.model.{token_embedding, positional_embedding, ln_final, text_projection, logit_scale}``),
the second autoencoder's 2-D decoder (``conditioner.embedders.3.encoder.{decoder, post_quant_conv}.*``) and
``first_stage_model.encoder.*`` (the reference encodes the conditioning frame with embedders.3's encoder and
its ``quant_conv``, which ``first_stage_model`` lacks; so that is the encoder loaded here).

The mapping is a table of block prefixes built from the model's config plus renaming rules for the inside
of each kind of block; three value rules: CLIP's fused ``in_proj`` is split into q, k, v (row slices), CLIP's
``proj [D, E]`` is transposed to ``visual_projection.weight [E, D]``, and the VAE attention's 1x1 convs
``[C, C, 1, 1]`` become linear weights ``[C, C]``. Every rule is a view: converted tensors are bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from lift3d_core.generate.motionctrl_svd.model import ModelSpec

__all__ = ["IGNORED_PREFIXES", "convert_checkpoint", "key_map", "to_official"]

UNET = "model.diffusion_model."
VAE_DECODER = "first_stage_model.decoder."
COND_AE = "conditioner.embedders.3.encoder."
CLIP = "conditioner.embedders.0.open_clip.model."

IGNORED_PREFIXES: tuple[str, ...] = (
    CLIP + "token_embedding.", CLIP + "positional_embedding", CLIP + "ln_final.", CLIP + "text_projection",
    CLIP + "logit_scale", COND_AE + "decoder.", COND_AE + "post_quant_conv.", "first_stage_model.encoder.",
)

# Inside a ResBlock: sgm (openaimodel) name -> diffusers ResnetBlock2D / TemporalResnetBlock name.
_UNET_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
# Inside a VAE ResnetBlock (sgm diffusionmodules.model): only the shortcut is renamed.
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "nin_shortcut": "conv_shortcut"}
# The temporal half of a VideoResBlock is an openaimodel ResBlock without time embedding.
_VAE_TEMPORAL = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2"}
# VAE single-head attention: sgm AttnBlock 1x1 convs -> diffusers Attention linears.
_VAE_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_CLIP_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
               "attn.out_proj": "self_attn.out_proj"}


def _invert(table: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in table.items()}


def _rename(sub: str, table: Mapping[str, str]) -> str | None:
    """``sub`` ("conv1.weight") with its leading module renamed by ``table`` (diffusers -> sgm), else None."""
    for new, old in sorted(table.items(), key=lambda kv: -len(kv[0])):
        if sub.startswith(new + "."):
            return old + sub[len(new):]
    return None


# --------------------------------------------------------------------------- block tables


def _unet_blocks(spec: ModelSpec) -> list[tuple[str, str, str]]:
    """(diffusers prefix, sgm prefix, kind) for every block of the UNet, in the sgm index order."""
    levels, layers = len(spec.unet_channels), spec.layers_per_block
    rows = [("time_embedding.linear_1", "time_embed.0", "plain"), ("time_embedding.linear_2", "time_embed.2", "plain"),
            ("add_embedding.linear_1", "label_emb.0.0", "plain"), ("add_embedding.linear_2", "label_emb.0.2", "plain"),
            ("conv_in", "input_blocks.0.0", "plain"), ("conv_norm_out", "out.0", "plain"),
            ("conv_out", "out.2", "plain")]
    index = 1
    for b in range(levels):
        for j in range(layers):
            rows.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{index}.0", "resnet"))
            if spec.unet_attention[b]:
                rows.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{index}.1", "attention"))
            index += 1
        if b < levels - 1:
            rows.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{index}.0.op", "plain"))
            index += 1
    rows += [("mid_block.resnets.0", "middle_block.0", "resnet"), ("mid_block.attentions.0", "middle_block.1", "attention"),
             ("mid_block.resnets.1", "middle_block.2", "resnet")]
    index = 0
    for u in range(levels):
        attention = spec.unet_attention[levels - 1 - u]
        for j in range(layers + 1):
            rows.append((f"up_blocks.{u}.resnets.{j}", f"output_blocks.{index}.0", "resnet"))
            if attention:
                rows.append((f"up_blocks.{u}.attentions.{j}", f"output_blocks.{index}.1", "attention"))
            if u < levels - 1 and j == layers:
                rows.append((f"up_blocks.{u}.upsamplers.0.conv", f"output_blocks.{index}.{2 if attention else 1}.conv",
                             "plain"))
            index += 1
    return rows


def _vae_blocks(spec: ModelSpec) -> list[tuple[str, str, str]]:
    levels, layers = len(spec.vae_channels), spec.vae_layers_per_block
    rows = [("encoder.conv_in", COND_AE + "encoder.conv_in", "plain"),
            ("encoder.conv_norm_out", COND_AE + "encoder.norm_out", "plain"),
            ("encoder.conv_out", COND_AE + "encoder.conv_out", "plain"),
            ("encoder.mid_block.resnets.0", COND_AE + "encoder.mid.block_1", "vae_resnet"),
            ("encoder.mid_block.resnets.1", COND_AE + "encoder.mid.block_2", "vae_resnet"),
            ("encoder.mid_block.attentions.0", COND_AE + "encoder.mid.attn_1", "vae_attention"),
            ("quant_conv", COND_AE + "quant_conv", "plain"),
            ("decoder.conv_in", VAE_DECODER + "conv_in", "plain"),
            ("decoder.conv_norm_out", VAE_DECODER + "norm_out", "plain"),
            ("decoder.conv_out", VAE_DECODER + "conv_out", "plain"),
            ("decoder.time_conv_out", VAE_DECODER + "conv_out.time_mix_conv", "plain"),
            ("decoder.mid_block.resnets.0", VAE_DECODER + "mid.block_1", "video_resnet"),
            ("decoder.mid_block.resnets.1", VAE_DECODER + "mid.block_2", "video_resnet"),
            ("decoder.mid_block.attentions.0", VAE_DECODER + "mid.attn_1", "vae_attention")]
    for b in range(levels):
        for j in range(layers):
            rows.append((f"encoder.down_blocks.{b}.resnets.{j}", f"{COND_AE}encoder.down.{b}.block.{j}", "vae_resnet"))
        if b < levels - 1:
            rows.append((f"encoder.down_blocks.{b}.downsamplers.0.conv", f"{COND_AE}encoder.down.{b}.downsample.conv",
                         "plain"))
    for u in range(levels):
        level = levels - 1 - u  # sgm numbers decoder levels from the output side
        for j in range(layers + 1):
            rows.append((f"decoder.up_blocks.{u}.resnets.{j}", f"{VAE_DECODER}up.{level}.block.{j}", "video_resnet"))
        if u < levels - 1:
            rows.append((f"decoder.up_blocks.{u}.upsamplers.0.conv", f"{VAE_DECODER}up.{level}.upsample.conv", "plain"))
    return rows


def _clip_blocks(spec: ModelSpec) -> list[tuple[str, str, str]]:
    visual = CLIP + "visual."
    rows = [("vision_model.embeddings.class_embedding", visual + "class_embedding", "exact"),
            ("vision_model.embeddings.patch_embedding", visual + "conv1", "plain"),
            ("vision_model.embeddings.position_embedding.weight", visual + "positional_embedding", "exact"),
            ("vision_model.pre_layrnorm", visual + "ln_pre", "plain"),
            ("vision_model.post_layernorm", visual + "ln_post", "plain"),
            ("visual_projection.weight", visual + "proj", "transpose")]
    for i in range(spec.clip_layers):
        rows.append((f"vision_model.encoder.layers.{i}", f"{visual}transformer.resblocks.{i}", "clip_block"))
    return rows


def _sub_key(kind: str, sub: str) -> tuple[str, str] | None:
    """(sgm sub-key, value rule) for a diffusers sub-key inside a block of ``kind``; None if unmapped."""
    if kind == "plain":
        return (sub, "same") if sub in ("weight", "bias") else None
    if kind == "resnet":
        if sub == "time_mixer.mix_factor":
            return sub, "same"
        for half, stem in (("spatial_res_block.", ""), ("temporal_res_block.", "time_stack.")):
            if sub.startswith(half):
                old = _rename(sub[len(half):], _invert(_UNET_RESNET))
                return (stem + old, "same") if old else None
        return None
    if kind == "attention":
        if sub.startswith("temporal_transformer_blocks."):
            return "time_stack." + sub[len("temporal_transformer_blocks."):], "same"
        for new, old in (("time_pos_embed.linear_1.", "time_pos_embed.0."), ("time_pos_embed.linear_2.", "time_pos_embed.2.")):
            if sub.startswith(new):
                return old + sub[len(new):], "same"
        return sub, "same"
    if kind == "vae_resnet":
        old = _rename(sub, _invert(_VAE_RESNET))
        return (old, "same") if old else None
    if kind == "video_resnet":
        if sub == "time_mixer.mix_factor":
            return "mix_factor", "same"
        if sub.startswith("spatial_res_block."):
            old = _rename(sub[len("spatial_res_block."):], _invert(_VAE_RESNET))
            return (old, "same") if old else None
        if sub.startswith("temporal_res_block."):
            old = _rename(sub[len("temporal_res_block."):], _invert(_VAE_TEMPORAL))
            return ("time_stack." + old, "same") if old else None
        return None
    if kind == "vae_attention":
        old = _rename(sub, _invert(_VAE_ATTN))
        if old is None:
            return None
        return old, ("conv1x1" if old.endswith("weight") and not old.startswith("norm.") else "same")
    if kind == "clip_block":
        for proj, part in (("self_attn.q_proj.", 0), ("self_attn.k_proj.", 1), ("self_attn.v_proj.", 2)):
            if sub.startswith(proj):
                return f"attn.in_proj_{sub[len(proj):]}", f"split{part}"
        old = _rename(sub, _invert(_CLIP_BLOCK))
        return (old, "same") if old else None
    raise AssertionError(kind)


def key_map(spec: ModelSpec, keys: list[str]) -> dict[str, tuple[str, str]]:
    """Our state-dict key -> (official key, value rule) for every key of ``keys`` (MotionCtrlSVD's state dict).

    Raises KeyError naming a key that no rule maps (a model/table mismatch: a bug, not a user error).
    """
    tables = {"unet.": (UNET, _unet_blocks(spec)), "vae.": ("", _vae_blocks(spec)),
              "image_encoder.": ("", _clip_blocks(spec))}
    out: dict[str, tuple[str, str]] = {}
    for key in keys:
        part = next(p for p in tables if key.startswith(p))
        base, rows = tables[part]
        local = key[len(part):]
        found = None
        for new, old, kind in sorted(rows, key=lambda r: -len(r[0])):
            if kind in ("exact", "transpose") and local == new:
                found = (base + old, "transpose" if kind == "transpose" else "same")
                break
            if local.startswith(new + "."):
                sub = _sub_key(kind, local[len(new) + 1:])
                if sub is not None:
                    found = (f"{base}{old}.{sub[0]}", sub[1])
                break
        if found is None:
            raise KeyError(f"no official name for {key}")
        out[key] = found
    return out


def _from_official(tensor: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == "same":
        return tensor
    if rule == "transpose":
        return tensor.t()
    if rule == "conv1x1":
        return tensor[:, :, 0, 0]
    if rule.startswith("split"):
        part = int(rule[-1])
        n = tensor.shape[0] // 3
        return tensor[part * n:(part + 1) * n]
    raise AssertionError(rule)


def convert_checkpoint(
    official: Mapping[str, torch.Tensor], spec: ModelSpec, target_keys: Mapping[str, tuple[int, ...]],
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[str]]:
    """Convert an official ``state_dict`` to MotionCtrlSVD's.

    official: the checkpoint's ``state_dict`` (sgm names). target_keys: our key -> expected shape (from the
    model, e.g. built on the meta device). transform: applied to each converted tensor (cast and move, so a
    memory-mapped file goes straight to the target dtype and device).
    Returns ``(state_dict, missing, unexpected, ignored)``: missing = our keys whose official tensor is absent
    (or has the wrong shape, reported as ``"key (shape ... != ...)"``), unexpected = official keys neither
    used nor deliberately ignored, ignored = official keys matching :data:`IGNORED_PREFIXES`.
    """
    mapping = key_map(spec, list(target_keys))
    state, missing, used = {}, [], set()
    for key, (old, rule) in mapping.items():
        if old not in official:
            missing.append(key)
            continue
        used.add(old)
        tensor = _from_official(official[old], rule)
        if tuple(tensor.shape) != tuple(target_keys[key]):
            missing.append(f"{key} (shape {tuple(tensor.shape)} in the file != {tuple(target_keys[key])})")
            continue
        state[key] = transform(tensor)
    ignored = sorted(k for k in official if k not in used and k.startswith(IGNORED_PREFIXES))
    unexpected = sorted(k for k in official if k not in used and not k.startswith(IGNORED_PREFIXES))
    return state, missing, unexpected, ignored


def to_official(state: Mapping[str, torch.Tensor], spec: ModelSpec, *, with_ignored: bool = True) -> dict[str, torch.Tensor]:
    """The official-layout ``state_dict`` of a MotionCtrlSVD ``state`` (for tests and benchmarks).

    with_ignored: also write what the official file carries but the loader ignores, shaped as in the official
    file (zeros; the conditioning encoder copied to ``first_stage_model.encoder``), so a written file has the
    official layout, not only the used part of it.
    """
    mapping = key_map(spec, list(state))
    out: dict[str, torch.Tensor] = {}
    for key, (old, rule) in mapping.items():
        t = state[key]
        if rule == "transpose":
            out[old] = t.t().contiguous()
        elif rule == "conv1x1":
            out[old] = t[:, :, None, None].contiguous()
        elif rule.startswith("split"):
            part = int(rule[-1])
            name = old
            if name not in out:
                out[name] = torch.empty((3 * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
            n = t.shape[0]
            out[name][part * n:(part + 1) * n] = t
        else:
            out[old] = t.contiguous()
    if not with_ignored:
        return out
    like = next(iter(state.values()))
    zeros = lambda *shape: torch.zeros(shape, dtype=like.dtype, device=like.device)  # noqa: E731
    w, tw = spec.clip_width, spec.clip_text_width
    out[CLIP + "token_embedding.weight"] = zeros(spec.clip_vocab, tw)
    out[CLIP + "positional_embedding"] = zeros(77, tw)
    out[CLIP + "ln_final.weight"] = zeros(tw)
    out[CLIP + "ln_final.bias"] = zeros(tw)
    out[CLIP + "text_projection"] = zeros(tw, spec.cross_attention_dim)
    out[CLIP + "logit_scale"] = zeros()
    del w
    for k in list(out):
        if k.startswith(COND_AE + "encoder."):
            out["first_stage_model.encoder." + k[len(COND_AE + "encoder."):]] = out[k].clone()
        if k.startswith(VAE_DECODER) and not any(s in k for s in ("time_stack", "mix_factor", "time_mix_conv")):
            out[COND_AE + "decoder." + k[len(VAE_DECODER):]] = zeros(*out[k].shape)
    out[COND_AE + "post_quant_conv.weight"] = zeros(4, 4, 1, 1)
    out[COND_AE + "post_quant_conv.bias"] = zeros(4)
    return out
