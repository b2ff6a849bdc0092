"""The ``synthetic`` generator: renders the known scene built around the photograph (ground truth for tests,
the demo and benchmarks). Frames, nominal intrinsics, a noisy depth hint and the true depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lift3d_core.errors import Lift3DError
from lift3d_core.generate.video import GeneratedVideo
from lift3d_core.synthetic import SyntheticConfig, generate_frames
from lift3d_core.trajectory import CameraTree

__all__ = ["SyntheticGeneratorConfig", "generate_synthetic", "synthetic_scene_config"]


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


def generate_synthetic(image: np.ndarray, tree: CameraTree, cfg, *, progress=None, **_) -> GeneratedVideo:
    """The synthetic backend of :func:`lift3d_core.generate.generate` (``cfg``: GenerateConfig); fast, no resume."""
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


def synthetic_scene_config(image_shape: tuple[int, int], cfg) -> SyntheticConfig:
    """The :class:`SyntheticConfig` that :func:`generate` builds for an image of ``(H, W)``."""
    sc = cfg.synthetic
    return SyntheticConfig(preset=sc.preset, scale=sc.scale, seed=cfg.seed, width=image_shape[1],
                           height=image_shape[0], fov_x_deg=sc.fov_x_deg, distortion=sc.distortion)
