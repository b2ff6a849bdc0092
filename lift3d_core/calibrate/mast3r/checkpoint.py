"""Reading the official MASt3R checkpoint, safely, and building the network it describes.

The file ``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth`` (naver/mast3r, CC BY-NC-SA 4.0;
download link in that repository's README) is a ``torch.save`` of a dict:

* ``model``: the state dict, 1,017 tensors; ours has the same module names, so the key mapping is
  the identity (:data:`KEY_RULES` is empty) and nothing is ignored;
* ``args``: the training script's ``argparse.Namespace``; its ``model`` string is the constructor
  call, e.g. ``AsymmetricMASt3R(enc_depth=24, ..., two_confs=True, desc_conf_mode=('exp', 0, inf))``.

Safety: the file is read with ``torch.load(weights_only=True)``, allowing exactly one class
beyond tensors and plain containers, ``argparse.Namespace``; anything else in the pickle (a
class or function it would call) is refused, never unpickled. The constructor string is parsed
with :mod:`ast` and only literal values (numbers, strings, tuples, ``inf``) are accepted; it is
never evaluated.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import torch

from lift3d_core.calibrate.mast3r.config import CHECKPOINT_NAME
from lift3d_core.calibrate.mast3r.model import INF, AsymmetricMASt3R, Mast3rNetConfig
from lift3d_core.errors import Lift3DError

WHERE = (f"get {CHECKPOINT_NAME} from https://huggingface.co/naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric "
         "and put it where calibrate.mast3r.checkpoint points (default checkpoints/)")

# Official key -> our key rewrites, applied in order; empty because our modules carry the official names.
KEY_RULES: tuple[tuple[str, str], ...] = ()

# Constructor keywords that change nothing we build (training-time options, the patch embedding's
# name: both of the reference's classes hold the same single convolution).
_IGNORED_KWARGS = {"landscape_only", "freeze", "patch_embed_cls", "mask_ratio", "desc_mode"}


# ----------------------------------------------------------------------------- the constructor string


def _literal(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        return node.value
    if isinstance(node, ast.Name) and node.id == "inf":
        return INF
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e) for e in node.elts)
    raise ValueError(ast.dump(node))


def parse_constructor(model_str: str) -> dict:
    """``"AsymmetricMASt3R(k=v, ...)"`` -> ``{k: v}``, literal values only (``inf`` allowed)."""
    try:
        call = ast.parse(model_str.strip(), mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "AsymmetricMASt3R"
                and not call.args):
            raise ValueError("not a keyword-only AsymmetricMASt3R(...) call")
        return {kw.arg: _literal(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as exc:
        raise Lift3DError(f"MASt3R checkpoint: its constructor string is not a literal AsymmetricMASt3R(...) call "
                          f"({exc}): {model_str[:200]!r}") from None


def net_config_from_constructor(kwargs: dict) -> Mast3rNetConfig:
    """The :class:`Mast3rNetConfig` for the constructor's keywords; unsupported variants are refused."""
    kw = dict(kwargs)

    def need(cond, what):
        if not cond:
            raise Lift3DError(f"MASt3R checkpoint describes an unsupported network ({what}); "
                              f"lift3d implements {CHECKPOINT_NAME}")

    need(kw.pop("head_type", "catmlp+dpt") == "catmlp+dpt", f"head_type={kwargs.get('head_type')!r}")
    mode = kw.pop("output_mode", "pts3d+desc24")
    need(isinstance(mode, str) and mode.startswith("pts3d+desc") and mode[10:].isdigit(), f"output_mode={mode!r}")
    pos = kw.pop("pos_embed", "RoPE100")
    need(isinstance(pos, str) and pos.startswith("RoPE"), f"pos_embed={pos!r}")
    need(kw.get("desc_mode", "norm") == "norm", f"desc_mode={kw.get('desc_mode')!r}")
    need(kw.get("patch_embed_cls", "PatchEmbedDust3R") in ("PatchEmbedDust3R", "ManyAR_PatchEmbed"),
         f"patch_embed_cls={kw.get('patch_embed_cls')!r}")
    conf_mode = tuple(kw.pop("conf_mode", ("exp", 1, INF)))
    fields = dict(
        local_feat_dim=int(mode[10:]),
        rope_freq=float(pos[4:]),
        conf_mode=conf_mode,
        depth_mode=tuple(kw.pop("depth_mode", ("exp", -INF, INF))),
        # the reference's default: without its own mode, the descriptor confidence uses conf_mode
        desc_conf_mode=tuple(kw.pop("desc_conf_mode", None) or conf_mode),
        two_confs=bool(kw.pop("two_confs", False)),
    )
    # CroCo's defaults where the string is silent (ViT-B encoder, 8-block 512 decoder)
    for name, default in (("enc_depth", 12), ("enc_embed_dim", 768), ("enc_num_heads", 12), ("dec_depth", 8),
                          ("dec_embed_dim", 512), ("dec_num_heads", 16), ("patch_size", 16), ("mlp_ratio", 4.0)):
        fields[name] = type(default)(kw.pop(name, default))
    # lift3d's own keywords, for tiny test networks only: the official string never has them
    for name, default in (("dpt_feature_dim", 256), ("head_hidden_factor", 4.0)):
        fields[name] = type(default)(kw.pop(name, default))
    fields["dpt_layer_dims"] = tuple(int(d) for d in kw.pop("dpt_layer_dims", (96, 192, 384, 768)))
    img_size = kw.pop("img_size", (224, 224))
    fields["img_size"] = tuple(img_size) if isinstance(img_size, tuple) else (img_size, img_size)
    unknown = sorted(set(kw) - _IGNORED_KWARGS)
    need(not unknown, f"unknown constructor arguments {unknown}")
    return Mast3rNetConfig(**fields)


def constructor_string(cfg: Mast3rNetConfig) -> str:
    """The official-style constructor call describing ``cfg`` (tests write checkpoints with it).

    Head sizes other than the official ones are spelled with lift3d's own keywords.
    """
    official = Mast3rNetConfig()
    official_extras = (official.dpt_feature_dim, tuple(official.dpt_layer_dims), official.head_hidden_factor)
    extras = (cfg.dpt_feature_dim, tuple(cfg.dpt_layer_dims), cfg.head_hidden_factor)
    return (f"AsymmetricMASt3R(enc_depth={cfg.enc_depth}, dec_depth={cfg.dec_depth}, "
            f"enc_embed_dim={cfg.enc_embed_dim}, dec_embed_dim={cfg.dec_embed_dim}, "
            f"enc_num_heads={cfg.enc_num_heads}, dec_num_heads={cfg.dec_num_heads}, "
            f"pos_embed='RoPE{cfg.rope_freq:g}', patch_embed_cls='ManyAR_PatchEmbed', "
            f"img_size={tuple(cfg.img_size)!r}, head_type='catmlp+dpt', output_mode='pts3d+desc{cfg.local_feat_dim}', "
            f"depth_mode={cfg.depth_mode!r}, conf_mode={cfg.conf_mode!r}, patch_size={cfg.patch_size}, "
            f"mlp_ratio={cfg.mlp_ratio}, two_confs={cfg.two_confs}, desc_conf_mode={cfg.desc_conf_mode!r}"
            + ("" if extras == official_extras else
               f", dpt_feature_dim={cfg.dpt_feature_dim}, dpt_layer_dims={tuple(cfg.dpt_layer_dims)!r}, "
               f"head_hidden_factor={cfg.head_hidden_factor}") + ")")


# ----------------------------------------------------------------------------- reading the file


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The file's state dict (memory-mapped, on the CPU) and its constructor string.

    Raises one :class:`Lift3DError` naming the file for: missing, truncated / not a torch file,
    a pickle that needs anything beyond tensors and ``argparse.Namespace``, a wrong layout.
    """
    from lift3d_core.checkpoints import CHECKPOINTS, load_torch

    path = Path(path)
    if not path.is_file():
        raise Lift3DError(f"MASt3R checkpoint not found: {path}; {WHERE}")
    ckpt = load_torch(path, [argparse.Namespace], source=CHECKPOINTS["mast3r"].source)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise Lift3DError(f"MASt3R checkpoint {path} has the wrong layout: expected a dict with 'model' and 'args', "
                          f"got {keys}; {WHERE}")
    state, args = ckpt["model"], ckpt["args"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise Lift3DError(f"MASt3R checkpoint {path}: 'model' is not a state dict of tensors; {WHERE}")
    model_str = getattr(args, "model", None)
    if not isinstance(model_str, str):
        raise Lift3DError(f"MASt3R checkpoint {path}: 'args' has no constructor string 'model'; {WHERE}")
    return state, model_str


def convert_state_dict(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[str]]:
    """Official keys -> ours by :data:`KEY_RULES`. Returns (converted, missing, unexpected, ignored).

    ``missing``: our keys the file lacks; ``unexpected``: file keys we have no place for (after
    the rules); ``ignored``: file keys deliberately dropped (none for this checkpoint). A tensor of
    the wrong shape counts as both missing and unexpected.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for old, new in KEY_RULES:
            if key.startswith(old):
                key = new + key[len(old):]
        converted[key] = value
    ours = model.state_dict()
    wrong_shape = [k for k in converted if k in ours and tuple(converted[k].shape) != tuple(ours[k].shape)]
    missing = sorted((set(ours) - set(converted)) | set(wrong_shape))
    unexpected = sorted((set(converted) - set(ours)) | set(wrong_shape))
    return converted, missing, unexpected, []


def build_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> AsymmetricMASt3R:
    """Read, check and load the checkpoint into our network, on ``device``, in float32, eval mode."""
    state, model_str = read_checkpoint(path)
    cfg = net_config_from_constructor(parse_constructor(model_str))
    with torch.device("meta"):
        model = AsymmetricMASt3R(cfg)
    converted, missing, unexpected, _ = convert_state_dict(state, model)
    if missing or unexpected:
        raise Lift3DError(f"MASt3R checkpoint {path} does not match its own constructor string: "
                          f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}; "
                          f"{WHERE}")
    # the four DPT projections are stored twice (layerN_rn and layer_rn.N): both copies must agree
    for head in ("downstream_head1", "downstream_head2"):
        for n in range(4):
            a = converted[f"{head}.dpt.scratch.layer{n + 1}_rn.weight"]
            b = converted[f"{head}.dpt.scratch.layer_rn.{n}.weight"]
            if not torch.equal(a, b):
                raise Lift3DError(f"MASt3R checkpoint {path}: {head}.dpt.scratch.layer{n + 1}_rn and layer_rn.{n} "
                                  f"differ; the file is corrupt; {WHERE}")
    model.load_state_dict(converted, strict=True, assign=True)
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


def load_mast3r(path: str | Path, device: str | torch.device = "cpu") -> AsymmetricMASt3R:
    """:func:`build_from_checkpoint`, once per process per (file, device) (:func:`~lift3d_core.checkpoints.cached_model`)."""
    from lift3d_core.checkpoints import cached_model

    path = Path(path)
    if not path.is_file():
        raise Lift3DError(f"MASt3R checkpoint not found: {path}; {WHERE}")
    device = str(torch.device(device))
    return cached_model(path, ("mast3r", device), lambda p: build_from_checkpoint(p, device))
