"""The ``generate.motionctrl_svd`` section (importable without diffusers)."""

from __future__ import annotations

from dataclasses import dataclass

from lift3d_core.config import canonical_dtype, config_to_dict
from lift3d_core.errors import Lift3DError

__all__ = ["MotionCtrlSVDConfig"]



@dataclass(frozen=True)
class MotionCtrlSVDConfig:
    """MotionCtrl-SVD sampling; defaults are the LiftImage3D reference's values (METHOD.md section 1).

    checkpoint: the official ``motionctrl_svd.ckpt`` (its SHA-256, not its path, enters the store key).
    model: network sizes, ``official`` (MotionCtrl-SVD) or ``tiny`` (CPU tests and ``bench --tiny``).
    steps: EDM Euler steps (the reference passes 50; the sampler's own default is 25).
    fps_id, motion_bucket_id, cond_aug: SVD's micro-conditioning (``--fps 10``, ``--motion 100``,
        ``--cond_aug 0.1`` in the reference); cond_aug is also the std of the noise added to the
        conditioning frame before it is encoded.
    min_guidance, max_guidance: classifier-free guidance rising linearly over the frames
        (sgm ``LinearPredictionGuider``, MotionCtrl's config 1.0 -> 2.5).
    sigma_min, sigma_max, rho: EDM discretisation (MotionCtrl's config: sigma_max 700).
    speed: pose preprocessing: pose-file translations times the tree's per-axis weights
        (``trajectory.motionctrl_axis_scale``, which also shapes the commanded cameras) times ``speed`` before
        they are made relative to frame 0 (reference ``get_RT``: (3, 1, 4) and ``--speed 1.6``).
    dtype: weights and activations (bfloat16 default; float32 on a CPU; bf16 / fp32 accepted).
    decode_frames: frames per temporal-decoder call (the reference decodes one at a time; a different
        value changes the frames, since the decoder's temporal layers see that many).
    Speed only, not in the key: max_batch (clips per UNet call, both guidance branches included; 0 = as many
    as the GPU's free memory allows, by the per-clip estimate of bench/RESULTS.md), decode_batch (decoder
    chunks per VAE call), attention ("sdpa" or "xformers"), compile (torch.compile the UNet), device.
    """

    checkpoint: str = "checkpoints/motionctrl_svd.ckpt"
    model: str = "official"
    steps: int = 50
    fps_id: int = 10
    motion_bucket_id: int = 100
    cond_aug: float = 0.1
    min_guidance: float = 1.0
    max_guidance: float = 2.5
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    speed: float = 1.6
    dtype: str = "bfloat16"
    decode_frames: int = 1
    max_batch: int = 0
    decode_batch: int = 16
    attention: str = "sdpa"
    compile: bool = False
    device: str = "auto"

    def __post_init__(self):
        where = "generate.motionctrl_svd"
        if self.model not in ("official", "tiny"):
            raise Lift3DError(f"{where}.model must be 'official' or 'tiny', got {self.model!r}")
        if self.steps < 1:
            raise Lift3DError(f"{where}.steps must be >= 1, got {self.steps}")
        if self.cond_aug < 0:
            raise Lift3DError(f"{where}.cond_aug must be >= 0, got {self.cond_aug}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise Lift3DError(f"{where}: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not self.speed > 0:
            raise Lift3DError(f"{where}.speed must be > 0, got {self.speed}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype, f"{where}.dtype"))
        for name in ("decode_frames", "decode_batch"):
            if getattr(self, name) < 1:
                raise Lift3DError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_batch < 0:
            raise Lift3DError(f"{where}.max_batch must be >= 0 (0 = fit to GPU memory), got {self.max_batch}")
        if self.attention not in ("sdpa", "xformers"):
            raise Lift3DError(f"{where}.attention must be 'sdpa' or 'xformers', got {self.attention!r}")

    def key_params(self) -> dict:
        """What changes the frames: everything but the checkpoint path (its digest is in ``models``) and the speed knobs."""
        speed_only = {"checkpoint", "max_batch", "decode_batch", "attention", "compile", "device"}
        return {k: v for k, v in config_to_dict(self).items() if k not in speed_only}
