"""SVD's sampler as MotionCtrl-SVD runs it: conditioning, EDM Euler with linearly rising guidance, decoding.

Read in the reference (``motionctrlsvd/sgm/modules/diffusionmodules/{sampling,discretizer,guiders,
denoiser_scaling}.py`` and ``main/inference/motionctrl_cmcm_run.py``):

* conditioning frame ``x0 [-1, 1]``: CLIP embeds the clean frame (resized to 224 with an antialiasing blur,
  bicubic, ``align_corners=True``, CLIP-normalised); the KL encoder encodes ``x0 + cond_aug * noise`` (mode of
  the posterior, *no* 0.18215 scale), concatenated to every frame's noisy latent on the channel axis;
  ``added_time_ids = (fps_id, motion_bucket_id, cond_aug)``. The unconditional branch has zero CLIP embedding
  and zero concat latent, the same time ids and the same camera poses.
* EDM discretisation ``sigma_i = (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho`` plus a final 0;
  the noise starts at ``noise * sqrt(1 + sigma_0^2)``.
* v-prediction with EDM's c_noise (``VScalingWithEDMcNoise``): ``c_in = 1/sqrt(s^2+1)``,
  ``c_skip = 1/(s^2+1)``, ``c_out = -s/sqrt(s^2+1)``, ``c_noise = log(s)/4``;
  ``denoised = unet(x c_in ++ concat, c_noise) c_out + x c_skip``.
* guidance per frame t: ``denoised = u + g_t (c - u)``, ``g = linspace(min_guidance, max_guidance, T)``.
* Euler: ``x += (sigma_{i+1} - sigma_i) (x - denoised) / sigma_i`` (no churn).
* decoding: ``latent / 0.18215`` through the temporal decoder, ``decode_frames`` frames per call.

Randomness: one ``torch.Generator`` per clip, seeded from ``(seed, clip_id)``, draws the clip's initial noise
then its cond_aug noise, on the CPU; so a clip's frames do not depend on which clips share its batch.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lift3d_core.generate.motionctrl_svd.config import MotionCtrlSVDConfig
from lift3d_core.generate.motionctrl_svd.model import MotionCtrlSVD

__all__ = ["ClipRequest", "clip_noise", "clip_seed", "decode_latents", "edm_sigmas", "encode_conditioning",
           "sample_clips", "sample_latents"]

# OpenAI CLIP's normalisation, used by open_clip's ViT-H/14 (sgm FrozenOpenCLIPImageEmbedder).
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_LATENT_DOWN = 8  # the VAE's spatial factor


@dataclass(frozen=True)
class ClipRequest:
    """One clip to sample. image: ``uint8 [H, W, 3]`` start frame; pose: ``[T, 12]`` conditioning rows."""

    clip_id: str
    image: np.ndarray
    pose: np.ndarray


def clip_seed(seed: int, clip_id: str) -> int:
    """A 63-bit seed from ``(seed, clip_id)``: the clip's noise does not depend on its batch or position."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{clip_id}".encode()).digest()[:8], "little") >> 1


def clip_noise(seed: int, clip_id: str, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(initial noise ``[T, 4, H/8, W/8]``, cond_aug noise ``[3, H, W]``), float32 on the CPU."""
    g = torch.Generator().manual_seed(clip_seed(seed, clip_id))
    noise = torch.randn((frames, 4, height // _LATENT_DOWN, width // _LATENT_DOWN), generator=g)
    cond = torch.randn((3, height, width), generator=g)
    return noise, cond


def edm_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> torch.Tensor:
    """``[steps + 1]`` float32 noise levels, decreasing, last 0 (sgm ``EDMDiscretization``)."""
    ramp = torch.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)])


def _gaussian_blur(x: torch.Tensor, sigma: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding of ``[B, C, H, W]`` (kornia's antialias before a resize)."""
    for axis, s in ((2, sigma[0]), (3, sigma[1])):
        size = int(max(2.0 * 2 * s, 3))
        size += 1 - size % 2
        t = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
        k = torch.exp(-(t**2) / (2 * s * s))
        k = k / k.sum()
        pad = size // 2
        if axis == 2:
            x = F.conv2d(F.pad(x, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, -1, 1).expand(x.shape[1], 1, -1, 1),
                         groups=x.shape[1])
        else:
            x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(x.shape[1], 1, 1, -1),
                         groups=x.shape[1])
    return x


def _clip_pixels(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, 3, H, W]`` in [-1, 1] -> CLIP input ``[B, 3, size, size]`` as sgm's embedder prepares it."""
    h, w = x.shape[-2:]
    sigma = (max((h / size - 1.0) / 2.0, 0.001), max((w / size - 1.0) / 2.0, 0.001))
    x = F.interpolate(_gaussian_blur(x, sigma), size=(size, size), mode="bicubic", align_corners=True)
    x = (x + 1.0) / 2.0
    mean = torch.tensor(_CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(_CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def encode_conditioning(model: MotionCtrlSVD, images: torch.Tensor, cond_noise: torch.Tensor,
                        cfg: MotionCtrlSVDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """images: ``[B, 3, H, W]`` float32 in [-1, 1]; cond_noise: ``[B, 3, H, W]``.

    Returns (image latent ``[B, 4, H/8, W/8]`` float32, CLIP image embedding ``[B, 1, D]`` model dtype).
    """
    size = model.image_encoder.config.image_size
    pixels = _clip_pixels(images, size).to(model.dtype)
    embeds = model.image_encoder(pixel_values=pixels).image_embeds[:, None]
    noisy = (images + cfg.cond_aug * cond_noise).to(model.dtype)
    latent = model.vae.encode(noisy).latent_dist.mode().float()
    return latent, embeds


@torch.no_grad()
def sample_latents(model: MotionCtrlSVD, noise: torch.Tensor, image_latent: torch.Tensor, image_embeds: torch.Tensor,
                   pose: torch.Tensor, cfg: MotionCtrlSVDConfig) -> torch.Tensor:
    """EDM Euler sampling of a batch of B clips, both guidance branches in one UNet call per step.

    noise: ``[B, T, 4, h, w]`` float32; image_latent: ``[B, 4, h, w]``; image_embeds: ``[B, 1, D]``;
    pose: ``[B, T, 12]``. Returns the latents ``[B, T, 4, h, w]`` float32 (unscaled, before ``/ 0.18215``).
    """
    b, t = noise.shape[:2]
    dev, dtype = model.device, model.dtype
    sigmas = edm_sigmas(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho).tolist()
    guidance = torch.linspace(cfg.min_guidance, cfg.max_guidance, t, device=dev).view(1, t, 1, 1, 1)
    concat = torch.cat([torch.zeros_like(image_latent), image_latent]).to(dev)
    concat = concat[:, None].expand(-1, t, -1, -1, -1).to(dtype)
    embeds = torch.cat([torch.zeros_like(image_embeds), image_embeds]).to(dev, dtype)
    # float32: the sinusoidal embedding of cond_aug 0.1 would move in bf16
    ids = torch.tensor([[cfg.fps_id, cfg.motion_bucket_id, cfg.cond_aug]], device=dev).expand(2 * b, 3)
    pose2 = torch.cat([pose, pose]).to(dev, dtype)

    x = noise.to(dev) * math.sqrt(1.0 + sigmas[0] ** 2)
    for sigma, sigma_next in itertools.pairwise(sigmas):
        c_in = 1.0 / math.sqrt(sigma**2 + 1.0)
        c_skip = 1.0 / (sigma**2 + 1.0)
        c_out = -sigma / math.sqrt(sigma**2 + 1.0)
        c_noise = torch.full((2 * b,), 0.25 * math.log(sigma), device=dev, dtype=torch.float32)
        x2 = torch.cat([x, x])
        sample = torch.cat([(x2 * c_in).to(dtype), concat], dim=2)
        v = model.unet_call(sample, c_noise, embeds, ids, pose2).float()
        denoised = v * c_out + x2 * c_skip
        uncond, cond = denoised.chunk(2)
        denoised = uncond + guidance * (cond - uncond)
        x = x + (sigma_next - sigma) * (x - denoised) / sigma
    return x


@torch.no_grad()
def decode_latents(model: MotionCtrlSVD, latents: torch.Tensor, cfg: MotionCtrlSVDConfig) -> np.ndarray:
    """latents ``[B, T, 4, h, w]`` -> frames ``uint8 [B, T, 8h, 8w, 3]``.

    Each clip is cut into chunks of ``cfg.decode_frames`` frames (the temporal decoder sees one chunk);
    up to ``cfg.decode_batch`` chunks of equal length share one decoder call (speed only).
    """
    b, t = latents.shape[:2]
    z = latents / model.vae.config.scaling_factor
    chunks = [(i, s, min(s + cfg.decode_frames, t)) for i in range(b) for s in range(0, t, cfg.decode_frames)]
    out = np.empty((b, t, z.shape[-2] * _LATENT_DOWN, z.shape[-1] * _LATENT_DOWN, 3), dtype=np.uint8)
    by_length: dict[int, list[tuple[int, int, int]]] = {}
    for c in chunks:
        by_length.setdefault(c[2] - c[1], []).append(c)
    for length, group in by_length.items():
        for g in range(0, len(group), cfg.decode_batch):
            part = group[g:g + cfg.decode_batch]
            zc = torch.cat([z[i, s:e] for i, s, e in part]).to(model.device, model.dtype)
            rgb = model.vae.decode(zc, num_frames=length).sample.float()
            u8 = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            for k, (i, s, e) in enumerate(part):
                out[i, s:e] = u8[k * length:(k + 1) * length]
    return out


def sample_clips(model: MotionCtrlSVD, requests: list[ClipRequest], seed: int,
                 cfg: MotionCtrlSVDConfig) -> np.ndarray:
    """Generate a batch of clips: ``uint8 [B, T, H, W, 3]`` (frame 0 as generated, not replaced)."""
    h, w = requests[0].image.shape[:2]
    t = len(requests[0].pose)
    noises, conds = zip(*(clip_noise(seed, r.clip_id, t, h, w) for r in requests), strict=True)
    images = torch.stack([torch.from_numpy(np.ascontiguousarray(r.image)).permute(2, 0, 1) for r in requests])
    images = (images.float() / 127.5 - 1.0).to(model.device)
    latent, embeds = encode_conditioning(model, images, torch.stack(conds).to(model.device), cfg)
    pose = torch.from_numpy(np.stack([r.pose for r in requests])).float()
    latents = sample_latents(model, torch.stack(noises), latent, embeds, pose, cfg)
    return decode_latents(model, latents, cfg)
