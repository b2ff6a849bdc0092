"""The video-generator interface: one conditioning image + a camera tree -> frames.

Every backend turns ``image uint8 [H, W, 3]`` and a :class:`CameraTree` into
``frames uint8 [clips, T, H, W, 3]`` (clip order of the tree; frame 0 of a child
clip equals its parent's last frame), plus nominal intrinsics and whatever
ground truth the backend knows. Callers never branch on the backend.

Backends, in :data:`BACKENDS` (name -> :class:`lift3d_core.registry.Backend`: lazy factory, section, pip extra):

* ``synthetic``: renders a known scene built from the image (ground truth for tests, the demo and benchmarks).
* ``motionctrl_svd``: MotionCtrl's camera-controlled Stable Video Diffusion on diffusers, official checkpoint
  (:mod:`lift3d_core.generate.motionctrl_svd`). Its model is loaded once per process.

Resume: a backend that generates clip by clip takes ``done`` (clip_id -> frames already made) and calls
``on_clip(clip_id, frames)`` as each clip is finished, so a killed stage restarts at the first unfinished clip.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from lift3d_core.errors import Lift3DError
from lift3d_core.generate.motionctrl_svd.config import MotionCtrlSVDConfig
from lift3d_core.generate.synthetic import SyntheticGeneratorConfig, synthetic_scene_config
from lift3d_core.generate.video import GeneratedVideo
from lift3d_core.registry import Backend, active_section, check_backend, checkpoint_digests, section_key
from lift3d_core.trajectory import CameraTree

__all__ = ["BACKENDS", "Backend", "GenerateConfig", "GeneratedVideo", "MotionCtrlSVDConfig",
           "SyntheticGeneratorConfig", "backend_function", "distinct_frames", "generate", "synthetic_scene_config"]


BACKENDS: dict[str, Backend] = {
    "synthetic": Backend("lift3d_core.generate.synthetic:generate_synthetic", "synthetic"),
    "motionctrl_svd": Backend("lift3d_core.generate.motionctrl_svd.backend:generate_motionctrl", "motionctrl_svd",
                              extra="motionctrl", checkpoints={"motionctrl_svd": "checkpoint"},
                              version="2"),  # 2: the UNet's res-block GroupNorm eps is sgm's 1e-5 (was diffusers' 1e-6)
}


@dataclass(frozen=True)
class GenerateConfig:
    """The ``generate`` section of params.yaml: the backend, the seed and one section per backend."""

    backend: str = "synthetic"
    seed: int = 42
    synthetic: SyntheticGeneratorConfig = field(default_factory=SyntheticGeneratorConfig)
    motionctrl_svd: MotionCtrlSVDConfig = field(default_factory=MotionCtrlSVDConfig)

    def __post_init__(self):
        check_backend("generate", self.backend, BACKENDS)

    def key_params(self) -> dict:
        """What the store key hashes: the backend, the seed and only that backend's section."""
        return {"backend": self.backend, "seed": self.seed, self.backend: section_key(active_section(self, BACKENDS))}

    def models(self) -> dict[str, str]:
        """Checkpoint name -> SHA-256 digest, for the store key (``pipeline.plan``'s ``models``).

        A missing file raises one Lift3DError naming it and where to get it (the digest is cached by
        path, size and mtime, so only the first run hashes a large file).
        """
        return checkpoint_digests(self, BACKENDS)


def backend_function(name: str) -> Callable[..., GeneratedVideo]:
    """The generate function of backend ``name``, imported now; a missing dependency names the extra to install."""
    return BACKENDS[name].load("generate", name)


def generate(
    image: np.ndarray,
    tree: CameraTree,
    cfg: GenerateConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
    done: Mapping[str, np.ndarray] | None = None,
    on_clip: Callable[[str, np.ndarray], None] | None = None,
) -> GeneratedVideo:
    """Render the camera tree's clips from ``image uint8 [H, W, 3]`` with ``cfg.backend``.

    progress: called as ``progress(done, total)`` over the distinct frames.
    done: clip_id -> ``uint8 [T, H, W, 3]`` frames finished by an earlier, interrupted run (reused as they are).
    on_clip: called with ``(clip_id, frames uint8 [T, H, W, 3])`` as each clip is finished.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise Lift3DError(f"generate expects uint8 [H, W, 3], got {image.dtype} {image.shape}")
    return backend_function(cfg.backend)(image, tree, cfg, progress=progress, done=done, on_clip=on_clip)


def distinct_frames(tree: CameraTree, per_clip: np.ndarray) -> np.ndarray:
    """Collapse ``[clips, T, ...]`` to the tree's distinct frames ``[F, ...]``.

    A child clip's frame 0 repeats its parent's last frame; each distinct frame is
    taken from its first occurrence in the tree's frame order.
    """
    flat = per_clip.reshape(-1, *per_clip.shape[2:])
    index = np.asarray(tree.distinct_frame_index())
    first = np.full(int(index.max()) + 1, -1)
    for i in range(len(index) - 1, -1, -1):
        first[index[i]] = i
    return flat[first]
