"""The ``motionctrl_svd`` backend: load the official checkpoint once per process, generate the tree level by level.

Clips of one tree level are independent given their start frames (the input image at level 1, the parent's
last frame below), so each level is sampled in batches of up to ``max_batch`` clips, both guidance branches in
the same UNet call. A child clip starts from its parent's stored ``uint8`` last frame, so a resumed run (clips
given in ``done``) continues exactly where the interrupted one stopped. Children that would undo their parent
are not in the tree (``trajectory.skip_undo``), so they are never generated.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from lift3d_core.checkpoints import (
    CHECKPOINTS,
    cached_model,
    checkpoint_path,
    clear_model_cache,
    load_torch,
    resolve_device,
)
from lift3d_core.errors import Lift3DError
from lift3d_core.generate.motionctrl_svd.config import MotionCtrlSVDConfig
from lift3d_core.generate.motionctrl_svd.convert import convert_checkpoint
from lift3d_core.generate.motionctrl_svd.model import OFFICIAL, TINY, ModelSpec, MotionCtrlSVD, build_model
from lift3d_core.generate.motionctrl_svd.pose import clip_conditioning
from lift3d_core.generate.motionctrl_svd.sampler import ClipRequest, sample_clips
from lift3d_core.generate.video import GeneratedVideo
from lift3d_core.trajectory import CameraTree

__all__ = ["SPECS", "clear_model_cache", "generate_motionctrl", "load_model", "max_batch_for"]

log = logging.getLogger("lift3d")

SPECS: dict[str, ModelSpec] = {"official": OFFICIAL, "tiny": TINY}
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Nominal only: MotionCtrl-SVD has no intrinsics; calibration measures the focal length of the frames.
_NOMINAL_FOV_X_DEG = 60.0
# Peak activation bytes of one clip (both guidance branches) at 16 x 1024x576, bf16, SDPA: the max_batch=0
# estimate (bench/generate_speed.py measures it; scaled by pixels x frames for other sizes).
_CLIP_BYTES_1024x576x16 = 6.0e9
def _source() -> str:
    return CHECKPOINTS["motionctrl_svd"].source


def load_model(path, *, spec: ModelSpec = OFFICIAL, dtype: torch.dtype = torch.bfloat16,
               device: str | torch.device = "cpu", attention: str = "sdpa") -> MotionCtrlSVD:
    """The :class:`MotionCtrlSVD` of the official checkpoint at ``path``, built once per process.

    Cached by :func:`lift3d_core.checkpoints.cached_model` (the file, spec, dtype, device, attention). The file is memory-mapped
    (``weights_only=True``) and each tensor goes straight to ``dtype`` on ``device``; the model is built
    on the meta device, so nothing is initialised only to be overwritten. Raises one Lift3DError naming
    the file when it is missing, truncated, or not MotionCtrl-SVD's layout.
    """
    path = Path(path)
    if not path.is_file():
        raise Lift3DError(f"checkpoint {path} is missing (generate.backend=motionctrl_svd needs it); get "
                          f"motionctrl_svd.ckpt from {_source()}")
    device = torch.device(device)
    return cached_model(path, ("motionctrl_svd", spec, dtype, str(device), attention),
                        lambda p: _build(p, spec, dtype, device, attention))


def _build(path: Path, spec: ModelSpec, dtype: torch.dtype, device: torch.device, attention: str) -> MotionCtrlSVD:
    raw = load_torch(path, source=_source())
    official = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(official, dict) or not any(str(k).startswith("model.diffusion_model.") for k in official):
        raise Lift3DError(f"checkpoint {path} is not MotionCtrl-SVD's layout (no 'state_dict' with "
                          f"'model.diffusion_model.*' tensors); get motionctrl_svd.ckpt from {_source()}")
    model = build_model(spec, device="meta", dtype=dtype)
    targets = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state, missing, unexpected, ignored = convert_checkpoint(
        official, spec, targets, transform=lambda t: t.to(device=device, dtype=dtype))
    if missing:
        raise Lift3DError(f"checkpoint {path} is not MotionCtrl-SVD's layout: {len(missing)} of {len(targets)} "
                          f"tensors missing or misshapen (first: {missing[0]}); get motionctrl_svd.ckpt from "
                          f"{_source()}")
    if unexpected:
        log.warning(f"{path}: {len(unexpected)} tensors not read (first: {unexpected[0]})")
    log.info(f"{path}: loaded {len(state)} tensors, ignored {len(ignored)} (text-tower leftovers, second "
             f"autoencoder's decoder, unused encoder copy)")
    model.load_state_dict(state, strict=True, assign=True)
    _materialise_buffers(model, device)
    if attention == "xformers":
        model.unet.enable_xformers_memory_efficient_attention()
    return model


def _materialise_buffers(model: MotionCtrlSVD, device: torch.device) -> None:
    """Rebuild the non-persistent buffers the meta-device build left empty (CLIP's position ids)."""
    emb = model.image_encoder.vision_model.embeddings
    if emb.position_ids.is_meta:
        emb.register_buffer("position_ids", torch.arange(emb.num_positions, device=device)[None], persistent=False)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise AssertionError(f"tensors left on the meta device: {left[:5]}")


def max_batch_for(cfg: MotionCtrlSVDConfig, device: torch.device, height: int, width: int, frames: int) -> int:
    """Clips per UNet call: ``cfg.max_batch`` if set, else what fits the GPU's free memory (all on a CPU).

    Speed only, so not in the key: each clip's noise comes from ``(seed, clip_id)``, and a clip generated in another
    batch differs by at most one uint8 level in a few pixels (float sums ordered otherwise; tested), the float
    tolerance the key promises. Set ``max_batch`` for bytes that do not depend on the memory free at run time.
    """
    if cfg.max_batch > 0:
        return cfg.max_batch
    if device.type != "cuda":
        return 1 << 30
    free, _ = torch.cuda.mem_get_info(device)
    per_clip = _CLIP_BYTES_1024x576x16 * (height * width * frames) / (1024 * 576 * 16)
    return max(1, int(0.9 * free // per_clip))


def generate_motionctrl(
    image: np.ndarray,
    tree: CameraTree,
    cfg,
    *,
    progress: Callable[[int, int], None] | None = None,
    done: Mapping[str, np.ndarray] | None = None,
    on_clip: Callable[[str, np.ndarray], None] | None = None,
    model: MotionCtrlSVD | None = None,
) -> GeneratedVideo:
    """Generate every clip of ``tree`` from ``image uint8 [H, W, 3]`` (``cfg``: GenerateConfig).

    Frame 0 of each clip is its start frame itself (the input image, or the parent's last frame), so the
    interface's "frame 0 of a child equals its parent's last frame" holds exactly. ``model``: an already
    loaded model (tests, benchmarks); default: the checkpoint of ``cfg.motionctrl_svd``, cached per process.
    Returns frames ``uint8 [clips, T, H, W, 3]``, nominal K (60 degree horizontal field of view), depth_hint None.
    """
    mc: MotionCtrlSVDConfig = cfg.motionctrl_svd
    device = resolve_device(mc.device) if model is None else model.device
    if model is None:
        if mc.model not in SPECS:
            raise Lift3DError(f"generate.motionctrl_svd.model must be one of {list(SPECS)}, got {mc.model!r}")
        path = checkpoint_path("motionctrl_svd", mc.checkpoint)
        model = load_model(path, spec=SPECS[mc.model], dtype=_DTYPES[mc.dtype], device=device,
                           attention=mc.attention)
    if mc.compile and not getattr(model.unet, "_lift3d_compiled", False):
        model.unet.compile()  # nn.Module.compile: in place, same state dict
        model.unet._lift3d_compiled = True
    h, w = image.shape[:2]
    factor = 8 * 2 ** (len(model.spec.unet_channels) - 1)
    if h % factor or w % factor:
        raise Lift3DError(f"MotionCtrl-SVD needs a frame size divisible by {factor}, got {w}x{h}; set ingest.width "
                          f"and ingest.height (its training size is 1024x576)")
    lengths = {c.num_frames for c in tree.clips}
    if len(lengths) != 1:
        raise Lift3DError(f"MotionCtrl-SVD generates clips of one length; the tree has {sorted(lengths)}")
    frames_per_clip = lengths.pop()
    batch = max_batch_for(mc, device, h, w, frames_per_clip)

    frames: dict[str, np.ndarray] = {cid: np.asarray(f, dtype=np.uint8) for cid, f in (done or {}).items()}
    total = tree.num_distinct_frames

    def report():
        if progress is not None:
            progress(min(total, 1 + sum(tree.clip(c).num_frames - 1 for c in frames)), total)

    report()
    for level in sorted({c.level for c in tree.clips}):
        todo = [c for c in tree.clips if c.level == level and c.clip_id not in frames]
        for start in range(0, len(todo), batch):
            group = todo[start:start + batch]
            requests = [ClipRequest(c.clip_id, image if c.parent is None else frames[c.parent][-1],
                                    clip_conditioning(tree, c.clip_id, mc.speed))
                        for c in group]
            out = sample_clips(model, requests, cfg.seed, mc)
            for clip, request, clip_frames in zip(group, requests, out, strict=True):
                clip_frames[0] = request.image
                frames[clip.clip_id] = clip_frames
                if on_clip is not None:
                    on_clip(clip.clip_id, clip_frames)
            report()

    fx = w / (2.0 * math.tan(math.radians(_NOMINAL_FOV_X_DEG) / 2.0))
    K = np.array([[fx, 0.0, w / 2.0], [0.0, fx, h / 2.0], [0.0, 0.0, 1.0]])
    return GeneratedVideo(frames=np.stack([frames[c.clip_id] for c in tree.clips]), K=K, depth_hint=None)
