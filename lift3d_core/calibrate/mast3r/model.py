"""MASt3R's network: a siamese ViT encoder, two cross-attending decoders and per-view heads.

Our own implementation of ``AsymmetricMASt3R`` (Leroy, Cabon, Revaud, "Grounding Image
Matching in 3D with MASt3R", 2024), written from the public naver/mast3r, naver/dust3r
and naver/croco code so that the official checkpoint
``MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth`` loads with the identity key
mapping: every module below carries the official attribute name. Checked once (a scratch run,
not a test: the reference code is not a dependency) against naver/mast3r's own classes on a
shrunken config with the same random weights: outputs equal to 7e-7 (float32 round-off), landscape
and portrait views.

Architecture (values of the official checkpoint in :meth:`Mast3rNetConfig.official`):

* encoder: 16x16 patch embedding, ``enc_depth`` pre-norm ViT blocks (ViT-L: 24 x 1024, 16 heads)
  with 2-D rotary position embedding (RoPE100: frequency base 100, first half of each head's
  channels rotated by the patch row, second half by the patch column), final LayerNorm;
* decoder (CroCo "base" decoder, 12 x 768, 12 heads): a linear projection, then two stacks
  ``dec_blocks`` (view 1) and ``dec_blocks2`` (view 2); each block is self-attention,
  cross-attention to the *other* view's tokens of the previous layer, and an MLP;
* heads ``downstream_head1/2`` ('catmlp+dpt'): a DPT head on the encoder output and three
  decoder layers regresses ``pts3d`` + confidence, and an MLP on [encoder, last decoder] tokens
  (``head_local_features``) regresses a 24-d descriptor + its confidence per pixel
  (16 x 16 pixels per token through a pixel shuffle).

Outputs per view, image ``[B, 3, H, W]`` in [-1, 1] (``(rgb - 0.5) / 0.5``), H and W multiples of 16:
``pts3d [B, H, W, 3]`` (both views in view 1's camera frame, OpenCV axes), ``conf [B, H, W]`` in
[1, inf), ``desc [B, H, W, 24]`` unit vectors, ``desc_conf [B, H, W]`` in [0, inf) for the
official checkpoint (its ``desc_conf_mode`` is ('exp', 0, inf)).

Any patch-multiple size runs (RoPE needs no fixed grid). Training transposed portrait pairs into
landscape; the reference's inference loader turns that off (``landscape_only=False``), and so do we.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

INF = float("inf")


@dataclass(frozen=True)
class Mast3rNetConfig:
    """Hyper-parameters of :class:`AsymmetricMASt3R`; the defaults are the official ViT-L / base decoder.

    depth_mode, conf_mode, desc_conf_mode: ``(kind, vmin, vmax)`` as in the constructor string of
    the checkpoint: points ``p * expm1(|p|) / |p|``, confidences ``vmin + exp(x)``.
    img_size: the training resolution, kept only to reproduce the checkpoint's constructor (RoPE
    needs no fixed size; any patch-multiple size runs).
    """

    enc_depth: int = 24
    enc_embed_dim: int = 1024
    enc_num_heads: int = 16
    dec_depth: int = 12
    dec_embed_dim: int = 768
    dec_num_heads: int = 12
    patch_size: int = 16
    mlp_ratio: float = 4.0
    rope_freq: float = 100.0
    local_feat_dim: int = 24
    two_confs: bool = True
    depth_mode: tuple = ("exp", -INF, INF)
    conf_mode: tuple = ("exp", 1.0, INF)
    desc_conf_mode: tuple = ("exp", 0.0, INF)
    img_size: tuple[int, int] = (512, 512)
    dpt_feature_dim: int = 256
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    head_hidden_factor: float = 4.0

    @classmethod
    def official(cls) -> Mast3rNetConfig:
        return cls()

    @classmethod
    def tiny(cls) -> Mast3rNetConfig:
        """A random-init test size: the same code paths, seconds on a CPU."""
        return cls(enc_depth=2, enc_embed_dim=64, enc_num_heads=4, dec_depth=2, dec_embed_dim=48, dec_num_heads=4,
                   dpt_feature_dim=32, dpt_layer_dims=(8, 16, 24, 32), head_hidden_factor=1.0)

    @property
    def dpt_hooks(self) -> tuple[int, int, int, int]:
        # the encoder output (index 0) and decoder layers at 1/2, 3/4 and the end (reference head factory)
        d = self.dec_depth
        return (0, d * 2 // 4, d * 3 // 4, d)

    @property
    def head_channels(self) -> int:
        return self.local_feat_dim + int(self.two_confs)


# ----------------------------------------------------------------------------- transformer blocks


class RoPE2D(nn.Module):
    """Rotary embedding over a 2-D grid: channels ``[:D/2]`` turn with the row, ``[D/2:]`` with the column.

    Within each half, channel pairs ``(k, k + D/4)`` rotate by ``pos * freq ** (-4k / D)`` (the
    rotate-half layout of the reference). tokens ``[B, heads, N, D]``, positions int64 ``[B, N, 2]`` (row, col).
    """

    def __init__(self, freq: float = 100.0):
        super().__init__()
        self.freq = freq

    def _rotate(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        inv_freq = self.freq ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
        angle = pos.to(torch.float32)[:, None, :, None] * inv_freq  # [B, 1, N, d/2]
        cos = torch.cat((angle.cos(), angle.cos()), -1).to(x.dtype)
        sin = torch.cat((angle.sin(), angle.sin()), -1).to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), -1) * sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        rows, cols = tokens.chunk(2, dim=-1)
        return torch.cat((self._rotate(rows, positions[..., 0]), self._rotate(cols, positions[..., 1])), -1)


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope: RoPE2D):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, x, pos):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = self.rope(q, pos), self.rope(k, pos)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, rope: RoPE2D):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope

    def forward(self, query, memory, qpos, kpos):
        B, Nq, C = query.shape
        h = self.num_heads

        def heads(t):
            return t.reshape(B, t.shape[1], h, C // h).transpose(1, 2)

        q = self.rope(heads(self.projq(query)), qpos)
        k = self.rope(heads(self.projk(memory)), kpos)
        x = F.scaled_dot_product_attention(q, k, heads(self.projv(memory)))
        return self.proj(x.transpose(1, 2).reshape(B, Nq, C))


def _norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)  # CroCo's eps


class Block(nn.Module):
    """Pre-norm ViT encoder block with rotary positions."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D):
        super().__init__()
        self.norm1 = _norm(dim)
        self.attn = Attention(dim, num_heads, rope)
        self.norm2 = _norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, pos):
        x = x + self.attn(self.norm1(x), pos)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """CroCo decoder block: self-attention, cross-attention to the other view (normalised by ``norm_y``), MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, rope: RoPE2D):
        super().__init__()
        self.norm1 = _norm(dim)
        self.attn = Attention(dim, num_heads, rope)
        self.cross_attn = CrossAttention(dim, num_heads, rope)
        self.norm2 = _norm(dim)
        self.norm3 = _norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = _norm(dim)

    def forward(self, x, y, xpos, ypos):
        x = x + self.attn(self.norm1(x), xpos)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, xpos, ypos)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img ``[B, 3, H, W]`` -> tokens ``[B, h*w, C]`` row-major and their (row, col) ``[B, h*w, 2]``."""
        x = self.proj(img)
        B, _, h, w = x.shape
        rows, cols = torch.meshgrid(torch.arange(h, device=img.device), torch.arange(w, device=img.device),
                                    indexing="ij")
        pos = torch.stack((rows.reshape(-1), cols.reshape(-1)), -1).expand(B, -1, -1)
        return x.flatten(2).transpose(1, 2), pos


# ----------------------------------------------------------------------------- DPT head


class ResidualConvUnit(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FeatureFusionBlock(nn.Module):
    """Adds the skip input (after a residual unit), refines, upsamples x2 and projects (DPT's fusion)."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x, skip=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Interpolate(nn.Module):
    def __init__(self, scale_factor: float):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x):
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=True)


class DPTScratch(nn.Module):
    def __init__(self, layer_dims, features: int):
        super().__init__()
        for i, d in enumerate(layer_dims, start=1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(d, features, 3, padding=1, bias=False))
        # The official file holds these four convolutions twice, as layerN_rn and layer_rn.N (one module
        # registered under both names); the alias keeps the identity key mapping.
        self.layer_rn = nn.ModuleList([getattr(self, f"layer{i}_rn") for i in range(1, 5)])
        for i in range(1, 5):
            setattr(self, f"refinenet{i}", FeatureFusionBlock(features))


class DPTAdapter(nn.Module):
    """DPT regression head over four token layers ``[B, h*w, C_k]`` -> ``[B, num_channels, H, W]``."""

    def __init__(self, dim_tokens, layer_dims, features: int, last_dim: int, num_channels: int, hooks):
        super().__init__()
        self.hooks = tuple(hooks)
        self.scratch = DPTScratch(layer_dims, features)
        self.head = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            Interpolate(2),
            nn.Conv2d(features // 2, last_dim, 3, padding=1),
            nn.ReLU(True),
            nn.Conv2d(last_dim, num_channels, 1),
        )
        # token grid -> 4x, 2x, 1x, 1/2x of the patch grid (strides 4, 8, 16, 32 of the image)
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], layer_dims[0], 1),
                          nn.ConvTranspose2d(layer_dims[0], layer_dims[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(dim_tokens[1], layer_dims[1], 1),
                          nn.ConvTranspose2d(layer_dims[1], layer_dims[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(dim_tokens[2], layer_dims[2], 1)),
            nn.Sequential(nn.Conv2d(dim_tokens[3], layer_dims[3], 1),
                          nn.Conv2d(layer_dims[3], layer_dims[3], 3, stride=2, padding=1)),
        ])

    def forward(self, layers_tokens: list[torch.Tensor], grid_hw: tuple[int, int]) -> torch.Tensor:
        h, w = grid_hw
        feats = []
        for k, hook in enumerate(self.hooks):
            t = layers_tokens[hook]
            t = t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)
            feats.append(self.scratch.layer_rn[k](self.act_postprocess[k](t)))
        s = self.scratch
        # the stride-32 map of an odd token grid comes back one row/column too large: crop to stride 16
        path = s.refinenet4(feats[3])[:, :, : feats[2].shape[2], : feats[2].shape[3]]
        path = s.refinenet3(path, feats[2])
        path = s.refinenet2(path, feats[1])
        path = s.refinenet1(path, feats[0])
        return self.head(path)


def _dense_points(xyz: torch.Tensor, mode) -> torch.Tensor:
    kind, vmin, vmax = mode
    if not (vmin == -INF and vmax == INF):
        raise ValueError(f"bounded depth_mode {mode} is not supported")
    if kind == "linear":
        return xyz
    d = xyz.norm(dim=-1, keepdim=True)
    direction = xyz / d.clip(min=1e-8)
    if kind == "square":
        return direction * d.square()
    if kind == "exp":
        return direction * torch.expm1(d)
    raise ValueError(f"unknown depth_mode {mode}")


def _dense_conf(x: torch.Tensor, mode) -> torch.Tensor:
    kind, vmin, vmax = mode
    if kind == "exp":
        return vmin + x.exp().clip(max=vmax - vmin)
    if kind == "sigmoid":
        return (vmax - vmin) * torch.sigmoid(x) + vmin
    raise ValueError(f"unknown conf_mode {mode}")


class CatMLPDPTHead(nn.Module):
    """'catmlp+dpt': DPT for pts3d + conf, an MLP on [encoder, last decoder] tokens for desc + desc_conf."""

    def __init__(self, cfg: Mast3rNetConfig):
        super().__init__()
        self.cfg = cfg
        ed, dd = cfg.enc_embed_dim, cfg.dec_embed_dim
        self.dpt = DPTAdapter(dim_tokens=(ed, dd, dd, dd), layer_dims=cfg.dpt_layer_dims,
                              features=cfg.dpt_feature_dim, last_dim=cfg.dpt_feature_dim // 2, num_channels=4,
                              hooks=cfg.dpt_hooks)
        idim = ed + dd
        self.head_local_features = Mlp(idim, int(cfg.head_hidden_factor * idim),
                                       cfg.head_channels * cfg.patch_size**2)

    def forward(self, layers_tokens: list[torch.Tensor], image_hw: tuple[int, int]) -> dict[str, torch.Tensor]:
        cfg, p = self.cfg, self.cfg.patch_size
        H, W = image_hw
        raw = self.dpt(layers_tokens, (H // p, W // p))  # [B, 4, H, W]
        tokens = torch.cat((layers_tokens[0], layers_tokens[-1]), dim=-1)
        B = tokens.shape[0]
        local = self.head_local_features(tokens).transpose(1, 2).reshape(B, -1, H // p, W // p)
        local = F.pixel_shuffle(local, p)  # [B, head_channels, H, W]
        fmap = torch.cat((raw, local), 1).permute(0, 2, 3, 1)
        nd = cfg.local_feat_dim
        out = {"pts3d": _dense_points(fmap[..., 0:3], cfg.depth_mode), "conf": _dense_conf(fmap[..., 3], cfg.conf_mode)}
        out["desc"] = F.normalize(fmap[..., 4 : 4 + nd], dim=-1)
        out["desc_conf"] = (_dense_conf(fmap[..., 4 + nd], cfg.desc_conf_mode) if cfg.two_confs
                            else out["conf"].clone())
        return out


# ----------------------------------------------------------------------------- the network


class AsymmetricMASt3R(nn.Module):
    """Two views in, both views' points in view 1's camera out (plus confidences and descriptors).

    Module names follow the official checkpoint (``mask_token``, ``patch_embed``, ``enc_blocks``,
    ``enc_norm``, ``decoder_embed``, ``dec_blocks``, ``dec_norm``, ``dec_blocks2``,
    ``downstream_head1``, ``downstream_head2``). ``mask_token`` is CroCo pre-training's and unused
    here; it exists so that the checkpoint maps one to one.
    """

    def __init__(self, cfg: Mast3rNetConfig = Mast3rNetConfig()):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.enc_embed_dim)
        self.rope = RoPE2D(cfg.rope_freq)
        self.enc_blocks = nn.ModuleList(
            [Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio, self.rope) for _ in range(cfg.enc_depth)])
        self.enc_norm = _norm(cfg.enc_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_embed_dim))
        self.decoder_embed = nn.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            [DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, self.rope) for _ in range(cfg.dec_depth)])
        self.dec_norm = _norm(cfg.dec_embed_dim)
        self.dec_blocks2 = nn.ModuleList(
            [DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio, self.rope) for _ in range(cfg.dec_depth)])
        self.downstream_head1 = CatMLPDPTHead(cfg)
        self.downstream_head2 = CatMLPDPTHead(cfg)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None):
        """Random init (xavier-uniform linears, unit LayerNorms): for tests and benchmarks, never for results."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                bound = math.sqrt(6.0 / (m.in_features + m.out_features))  # xavier-uniform, as CroCo
                m.weight.uniform_(-bound, bound, generator=generator)
            elif isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                bound = 1.0 / math.sqrt(m.weight[0].numel())
                m.weight.uniform_(-bound, bound, generator=generator)
            elif isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        self.mask_token.normal_(0.0, 0.02, generator=generator)

    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """img ``[B, 3, H, W]`` in [-1, 1] -> encoder tokens ``[B, h*w, enc_embed_dim]``, positions ``[B, h*w, 2]``.

        A view's encoding does not depend on the view it is paired with, so :mod:`.inference`
        encodes every frame once and reuses it in all its pairs.
        """
        p = self.cfg.patch_size
        if img.shape[-2] % p or img.shape[-1] % p:
            raise ValueError(f"image size {tuple(img.shape[-2:])} is not a multiple of the patch size {p}")
        x, pos = self.patch_embed(img)
        for blk in self.enc_blocks:
            x = blk(x, pos)
        return self.enc_norm(x), pos

    def decode(self, feat1, pos1, feat2, pos2) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Both decoders; each returns ``[encoder tokens, block 1, ..., block D (dec_norm-ed)]``."""
        out1, out2 = [feat1], [feat2]
        f1, f2 = self.decoder_embed(feat1), self.decoder_embed(feat2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            # each side attends to the other side's previous layer, not to its fresh update
            f1, f2 = blk1(f1, f2, pos1, pos2), blk2(f2, f1, pos2, pos1)
            out1.append(f1)
            out2.append(f2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    def heads(self, dec1, dec2, image_hw: tuple[int, int]) -> tuple[dict, dict]:
        # the heads run in float32 even under autocast (as the reference does)
        with torch.autocast(device_type=dec1[0].device.type, enabled=False):
            res1 = self.downstream_head1([t.float() for t in dec1], image_hw)
            res2 = self.downstream_head2([t.float() for t in dec2], image_hw)
        return res1, res2

    def forward(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[dict, dict]:
        """img1, img2 ``[B, 3, H, W]`` in [-1, 1] (same size). Returns per-view dicts of
        ``pts3d [B, H, W, 3]`` (in view 1's camera), ``conf``, ``desc [B, H, W, 24]``, ``desc_conf``."""
        f1, p1 = self.encode(img1)
        f2, p2 = self.encode(img2)
        dec1, dec2 = self.decode(f1, p1, f2, p2)
        return self.heads(dec1, dec2, tuple(img1.shape[-2:]))
