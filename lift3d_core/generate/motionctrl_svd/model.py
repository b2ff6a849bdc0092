"""MotionCtrl-SVD as diffusers models: the spatio-temporal UNet with MotionCtrl's camera motion control module.

What MotionCtrl changes in Stable Video Diffusion (read in TencentARC/MotionCtrl, branch ``svd``, and in
the LiftImage3D copy, ``motionctrlsvd/sgm/motionctrl/camera_motion_control.py`` and ``modified_svd.py``):

* Every temporal transformer block of the UNet (sgm ``VideoTransformerBlock``, the ``time_stack.0`` of each
  ``SpatialVideoTransformer``; diffusers :class:`TemporalBasicTransformerBlock`, the
  ``temporal_transformer_blocks.0`` of each ``TransformerSpatioTemporalModel``) gains
  ``cc_projection = nn.Linear(C + 12, C)``, C the block's width, created as identity on the first C inputs
  (``nn.init.eye_`` on ``weight[:C, :C]``, zero bias; the pose columns keep Linear's default init).
* Inside the block, after the temporal self-attention ``attn1`` (with its residual) and before the
  cross-attention ``attn2``: the frame's 12 pose numbers ``RT [B, T, 12]``, repeated over the S spatial
  positions (``repeat_interleave(S, dim=0)`` onto the ``(B S, T, C)`` layout) are concatenated to the
  features and ``cc_projection`` *replaces* them (no residual). ``attn2`` (cross-attention to the CLIP image
  embedding, residual) and the feed-forward follow unchanged. Trained in MotionCtrl: ``cc_projection``,
  ``attn2``, ``norm2``.
* The pose is passed to the UNet once per call and reaches all 16 blocks; both guidance branches get the
  same poses (the reference repeats RT for its batch of 2).

The 16 blocks, with sgm checkpoint names (``model.diffusion_model.`` prefix) and ``cc_projection.weight``
shapes ``[C, C + 12]``:

====================================  ============================================  ===========
sgm block                             diffusers block                               weight
====================================  ============================================  ===========
input_blocks.{1,2}.1.time_stack.0     down_blocks.0.attentions.{0,1}.temporal_...0  [320, 332]
input_blocks.{4,5}.1.time_stack.0     down_blocks.1.attentions.{0,1}.temporal_...0  [640, 652]
input_blocks.{7,8}.1.time_stack.0     down_blocks.2.attentions.{0,1}.temporal_...0  [1280, 1292]
middle_block.1.time_stack.0           mid_block.attentions.0.temporal_...0          [1280, 1292]
output_blocks.{3,4,5}.1.time_stack.0  up_blocks.1.attentions.{0,1,2}.temporal_...0  [1280, 1292]
output_blocks.{6,7,8}.1.time_stack.0  up_blocks.2.attentions.{0,1,2}.temporal_...0  [640, 652]
output_blocks.{9,10,11}.1.time_stack.0  up_blocks.3.attentions.{0,1,2}.temporal_...0  [320, 332]
====================================  ============================================  ===========

(``temporal_...0`` = ``temporal_transformer_blocks.0``.) The rest is SVD img2vid: UNet with ``in_channels 8``
(noisy latent + conditioning-frame latent), ``block_out_channels (320, 640, 1280, 1280)``, 64-wide heads,
``cross_attention_dim 1024``, added time ids (fps id, motion bucket, cond_aug) embedded with 256 sinusoids each;
the temporal VAE (:class:`AutoencoderKLTemporalDecoder`, scale 0.18215); the CLIP ViT-H/14 image tower
(transformers :class:`CLIPVisionModelWithProjection`, exact GELU as open_clip's ViT-H, projection to 1024).

Checked against the reference's own sgm classes (``bench/motionctrl_parity.py``, a scratch run, not a test: the
reference code is not a dependency) on a shrunken config with the same perturbed random weights: UNet with poses,
whole guided sampler, CLIP embedding and temporal decoder equal to 6e-6 of their largest value in float32 (4e-15
in float64), once diffusers' 1e-6 GroupNorm eps of some res blocks was set to sgm's 1e-5 (:func:`set_resnet_eps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
from diffusers.models.attention import TemporalBasicTransformerBlock
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

__all__ = [
    "OFFICIAL",
    "TINY",
    "CameraTemporalBlock",
    "ModelSpec",
    "MotionCtrlSVD",
    "build_model",
    "set_resnet_eps",
]

POSE_DIM = 12  # a row-major 3x4 [R | t] per frame


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of the three networks; :data:`OFFICIAL` is MotionCtrl-SVD's, :data:`TINY` a CPU test size."""

    unet_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    unet_attention: tuple[bool, ...] = (True, True, True, False)  # attention_resolutions [4, 2, 1] of 4 levels
    unet_head_dim: int = 64
    layers_per_block: int = 2
    cross_attention_dim: int = 1024
    time_id_dim: int = 256
    vae_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_layers_per_block: int = 2
    vae_scale_factor: float = 0.18215
    clip_width: int = 1280
    clip_layers: int = 32
    clip_heads: int = 16
    clip_mlp: int = 5120
    clip_image_size: int = 224
    clip_patch: int = 14
    clip_text_width: int = 1024  # only for the text-tower leftovers the official file carries
    clip_vocab: int = 49408

    def unet(self) -> UNetSpatioTemporalConditionModel:
        down = tuple("CrossAttnDownBlockSpatioTemporal" if a else "DownBlockSpatioTemporal" for a in self.unet_attention)
        up = tuple("CrossAttnUpBlockSpatioTemporal" if a else "UpBlockSpatioTemporal"
                   for a in reversed(self.unet_attention))
        unet = UNetSpatioTemporalConditionModel(
            sample_size=None, in_channels=8, out_channels=4, down_block_types=down, up_block_types=up,
            block_out_channels=self.unet_channels, addition_time_embed_dim=self.time_id_dim,
            projection_class_embeddings_input_dim=3 * self.time_id_dim, layers_per_block=self.layers_per_block,
            cross_attention_dim=self.cross_attention_dim, transformer_layers_per_block=1,
            num_attention_heads=tuple(c // self.unet_head_dim for c in self.unet_channels), num_frames=16,
        )
        set_resnet_eps(unet)
        add_camera_motion_control(unet)
        return unet

    def vae(self) -> AutoencoderKLTemporalDecoder:
        return AutoencoderKLTemporalDecoder(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(self.vae_channels),
            block_out_channels=self.vae_channels, layers_per_block=self.vae_layers_per_block, latent_channels=4,
            scaling_factor=self.vae_scale_factor,
        )

    def image_encoder(self) -> CLIPVisionModelWithProjection:
        cfg = CLIPVisionConfig(
            hidden_size=self.clip_width, intermediate_size=self.clip_mlp, num_hidden_layers=self.clip_layers,
            num_attention_heads=self.clip_heads, image_size=self.clip_image_size, patch_size=self.clip_patch,
            projection_dim=self.cross_attention_dim, hidden_act="gelu", layer_norm_eps=1e-5,
        )
        return CLIPVisionModelWithProjection(cfg)


OFFICIAL = ModelSpec()
TINY = ModelSpec(
    unet_channels=(32, 64), unet_attention=(True, False), unet_head_dim=16, layers_per_block=2,
    cross_attention_dim=32, time_id_dim=8, vae_channels=(32, 32, 32, 32), vae_layers_per_block=2,
    clip_width=32, clip_layers=2, clip_heads=2, clip_mlp=64, clip_image_size=28, clip_patch=14,
    clip_text_width=16, clip_vocab=64,
)


RESNET_EPS = 1e-5  # sgm openaimodel ``normalization()``: GroupNorm32(32, C), torch's default eps


def set_resnet_eps(unet: UNetSpatioTemporalConditionModel) -> int:
    """Give every GroupNorm of the UNet's res blocks sgm's eps, 1e-5; returns how many norms changed.

    diffusers builds the res blocks of ``CrossAttnDownBlockSpatioTemporal`` and of both up-block kinds with
    eps 1e-6 (only ``DownBlockSpatioTemporal`` and the mid block get 1e-5), while SVD's sgm UNet normalises
    every ResBlock, spatial and temporal half, with 1e-5. Found by ``bench/motionctrl_parity.py``: with 1e-6
    the UNet differed from the reference by 1.4e-5 of its output's max even in float64, and by 4e-15 with 1e-5.
    """
    changed = 0
    for name, module in unet.named_modules():
        if name.endswith(("spatial_res_block", "temporal_res_block")):
            for norm in (module.norm1, module.norm2):
                changed += norm.eps != RESNET_EPS
                norm.eps = RESNET_EPS
    return changed


class _PoseSlot:
    """The camera poses of the current UNet call, shared by every camera block of one UNet."""

    pose: torch.Tensor | None = None


class CameraTemporalBlock(TemporalBasicTransformerBlock):
    """diffusers' temporal transformer block with MotionCtrl's ``cc_projection`` between attn1 and attn2.

    Reads the poses ``[B, T, 12]`` of the current call from the UNet's shared slot (set by
    :meth:`MotionCtrlSVD.unet_call`); without poses it is the plain block.
    """

    def __init__(self, dim: int, time_mix_inner_dim: int, num_attention_heads: int, attention_head_dim: int,
                 cross_attention_dim: int | None, slot: _PoseSlot):
        super().__init__(dim, time_mix_inner_dim, num_attention_heads, attention_head_dim, cross_attention_dim)
        self.cc_projection = nn.Linear(time_mix_inner_dim + POSE_DIM, time_mix_inner_dim)
        with torch.no_grad():
            # MotionCtrl's init: identity on the features, zero bias (the untrained module passes features through).
            self.cc_projection.weight[:, :time_mix_inner_dim].copy_(torch.eye(time_mix_inner_dim))
            self.cc_projection.bias.zero_()
        self._slot = slot

    def forward(self, hidden_states: torch.Tensor, num_frames: int,
                encoder_hidden_states: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states: ``[B T, S, C]``; returns the same shape. encoder_hidden_states: ``[B S, 1, D]``."""
        batch_frames, seq_length, channels = hidden_states.shape
        batch_size = batch_frames // num_frames
        x = hidden_states.reshape(batch_size, num_frames, seq_length, channels).permute(0, 2, 1, 3)
        x = x.reshape(batch_size * seq_length, num_frames, channels)  # (B S, T, C): attention runs over T

        residual = x
        x = self.ff_in(self.norm_in(x))
        if self.is_res:
            x = x + residual
        x = self.attn1(self.norm1(x), encoder_hidden_states=None) + x

        pose = self._slot.pose
        if pose is not None:
            rt = pose.to(x.dtype).repeat_interleave(seq_length, dim=0)  # [B, T, 12] -> [B S, T, 12]
            x = self.cc_projection(torch.cat([x, rt], dim=-1))

        if self.attn2 is not None:
            x = self.attn2(self.norm2(x), encoder_hidden_states=encoder_hidden_states) + x
        ff = self.ff(self.norm3(x))
        x = ff + x if self.is_res else ff

        x = x.reshape(batch_size, seq_length, num_frames, -1).permute(0, 2, 1, 3)
        return x.reshape(batch_size * num_frames, seq_length, -1)


def add_camera_motion_control(unet: UNetSpatioTemporalConditionModel) -> list[str]:
    """Replace every temporal transformer block of ``unet`` by a :class:`CameraTemporalBlock` (weights kept).

    Returns the module names of the new blocks, in ``named_modules`` order.
    """
    slot = _PoseSlot()
    unet._motionctrl_pose = slot
    names = []
    for name, module in list(unet.named_modules()):
        if not hasattr(module, "temporal_transformer_blocks"):
            continue
        for i, old in enumerate(module.temporal_transformer_blocks):
            dim = old.norm_in.normalized_shape[0]
            inner = old.norm1.normalized_shape[0]
            heads = old.attn1.heads
            cross = old.attn2.cross_attention_dim if old.attn2 is not None else None
            new = CameraTemporalBlock(dim, inner, heads, old.attn1.inner_dim // heads, cross, slot)
            new.load_state_dict(old.state_dict(), strict=False)
            new.to(device=old.norm_in.weight.device, dtype=old.norm_in.weight.dtype)
            module.temporal_transformer_blocks[i] = new
            names.append(f"{name}.temporal_transformer_blocks.{i}")
    return names


class MotionCtrlSVD(nn.Module):
    """The three networks of MotionCtrl-SVD: ``unet``, ``vae`` and ``image_encoder`` (state-dict prefixes)."""

    def __init__(self, spec: ModelSpec = OFFICIAL):
        super().__init__()
        self.spec = spec
        self.unet = spec.unet()
        self.vae = spec.vae()
        self.image_encoder = spec.image_encoder()

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    def unet_call(self, sample: torch.Tensor, c_noise: torch.Tensor, image_embeds: torch.Tensor,
                  added_time_ids: torch.Tensor, pose: torch.Tensor | None) -> torch.Tensor:
        """One UNet evaluation.

        sample: ``[B, T, 8, h, w]`` (scaled noisy latent ++ conditioning latent); c_noise: ``[B]``;
        image_embeds: ``[B, 1, D]``; added_time_ids: ``[B, 3]`` (fps id, motion bucket, cond_aug);
        pose: ``[B, T, 12]`` camera conditioning or None (no camera control). Returns ``[B, T, 4, h, w]``.
        """
        slot: _PoseSlot = self.unet._motionctrl_pose
        slot.pose = pose
        try:
            return self.unet(sample, c_noise, image_embeds, added_time_ids, return_dict=False)[0]
        finally:
            slot.pose = None


def build_model(spec: ModelSpec = OFFICIAL, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32) -> MotionCtrlSVD:
    """A randomly initialised :class:`MotionCtrlSVD` of ``spec`` (``device="meta"``: shapes only, no memory)."""
    with torch.device(device):
        model = MotionCtrlSVD(spec)
    return model.to(dtype=dtype).eval().requires_grad_(False)
