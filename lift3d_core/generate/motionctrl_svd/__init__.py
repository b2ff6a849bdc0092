"""MotionCtrl-SVD generator backend: camera-controlled Stable Video Diffusion on diffusers.

Modules: ``config`` (the params section, no heavy imports), ``model`` (UNet + camera motion control module,
temporal VAE, CLIP image tower), ``convert`` (official checkpoint layout as a key table), ``pose``
(MotionCtrl pose preprocessing and pose files), ``sampler`` (EDM Euler with linearly rising guidance),
``backend`` (loading once per process, level-by-level batched tree generation with per-clip resume).
Everything but ``config`` and ``pose`` needs the ``motionctrl`` extra (diffusers, transformers).
"""

from lift3d_core.generate.motionctrl_svd.config import MotionCtrlSVDConfig

__all__ = ["MotionCtrlSVDConfig"]
