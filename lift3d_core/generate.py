"""The video-generator interface: one conditioning image + a camera tree -> frames.

Every backend turns ``image uint8 [H, W, 3]`` and a :class:`CameraTree` into
``frames uint8 [clips, T, H, W, 3]`` (clip order of the tree; frame 0 of a child
clip equals its parent's last frame), plus nominal intrinsics and whatever
ground truth the backend knows. Callers never branch on the backend.

Backends: ``synthetic`` (renders a known scene built from the image; ground truth
for tests, the demo and benchmarks). The MotionCtrl-SVD backend plugs in here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lift3d_core.config import config_to_dict
from lift3d_core.errors import Lift3DError
from lift3d_core.synthetic import SyntheticConfig, generate_frames
from lift3d_core.trajectory import CameraTree

BACKENDS = ("synthetic",)


@dataclass(frozen=True)
class SyntheticGeneratorConfig:
    """The ``generate.synthetic`` section: the synthetic scene minus its frame size (taken from ingest).

    scale: the scene's size unit; keep it equal to ``trajectory.pivot_depth`` so the tree's
    cameras stay inside the scene (a mismatch is reported, not rendered).
    depth_noise: relative std of the multiplicative log-normal noise on the depth
    the generator hands to calibration (0 = perfect geometry). It imitates an
    imperfect depth/pose estimate, so the 3DGS initialisation is not ground truth.
    """

    preset: str = "room"
    scale: float = 1.7
    fov_x_deg: float = 60.0
    distortion: float = 0.0
    depth_noise: float = 0.02

    def __post_init__(self):
        if self.depth_noise < 0:
            raise Lift3DError(f"generate.synthetic.depth_noise must be >= 0, got {self.depth_noise}")
        if self.distortion < 0:
            raise Lift3DError(f"generate.synthetic.distortion must be >= 0, got {self.distortion}")


@dataclass(frozen=True)
class GenerateConfig:
    """The ``generate`` section of params.yaml."""

    backend: str = "synthetic"
    seed: int = 42
    synthetic: SyntheticGeneratorConfig = field(default_factory=SyntheticGeneratorConfig)

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise Lift3DError(f"generate.backend {self.backend!r} is unknown; available: {', '.join(BACKENDS)}")

    def key_params(self) -> dict:
        """What the store key hashes: the backend, the seed and only that backend's section."""
        return {"backend": self.backend, "seed": self.seed, self.backend: config_to_dict(getattr(self, self.backend))}


@dataclass
class GeneratedVideo:
    """Output of :func:`generate`.

    frames: ``uint8 [clips, T, H, W, 3]`` in the tree's clip order.
    K: ``[3, 3]`` float64 nominal intrinsics of the frames, pixels.
    depth_hint: ``float32 [clips, T, H, W]`` z-depth the backend can vouch for, or None.
    ground_truth: arrays only a synthetic backend knows (e.g. ``depth`` of the undistorted scene).
    """

    frames: np.ndarray
    K: np.ndarray
    depth_hint: np.ndarray | None = None
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)


def generate(
    image: np.ndarray,
    tree: CameraTree,
    cfg: GenerateConfig,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> GeneratedVideo:
    """Render the camera tree's clips from ``image uint8 [H, W, 3]`` with ``cfg.backend``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise Lift3DError(f"generate expects uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if cfg.backend == "synthetic":
        return _generate_synthetic(image, tree, cfg, progress)
    raise Lift3DError(f"generate.backend {cfg.backend!r} is unknown; available: {', '.join(BACKENDS)}")


def _generate_synthetic(image, tree, cfg: GenerateConfig, progress) -> GeneratedVideo:
    out = generate_frames(image, tree, synthetic_scene_config(image.shape[:2], cfg), progress=progress)
    gt_depth = np.asarray(out["depth"], dtype=np.float32)
    rng = np.random.default_rng(cfg.seed)
    noise = rng.normal(0.0, cfg.synthetic.depth_noise, size=gt_depth.shape).astype(np.float32)
    depth_hint = np.where(gt_depth > 0, gt_depth * np.exp(noise), 0.0).astype(np.float32)
    return GeneratedVideo(
        frames=np.asarray(out["frames"], dtype=np.uint8),
        K=np.asarray(out["K"], dtype=np.float64),
        depth_hint=depth_hint,
        ground_truth={"depth": gt_depth},
    )


def synthetic_scene_config(image_shape: tuple[int, int], cfg: GenerateConfig) -> SyntheticConfig:
    """The :class:`SyntheticConfig` that :func:`generate` builds for an image of ``(H, W)``."""
    sc = cfg.synthetic
    return SyntheticConfig(preset=sc.preset, scale=sc.scale, seed=cfg.seed, width=image_shape[1],
                           height=image_shape[0], fov_x_deg=sc.fov_x_deg, distortion=sc.distortion)


__all__ = ["BACKENDS", "GenerateConfig", "GeneratedVideo", "SyntheticGeneratorConfig", "generate",
           "synthetic_scene_config"]


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
