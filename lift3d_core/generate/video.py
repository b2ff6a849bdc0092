"""What every generator backend returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["GeneratedVideo"]


@dataclass
class GeneratedVideo:
    """Output of :func:`lift3d_core.generate.generate`.

    frames: ``uint8 [clips, T, H, W, 3]`` in the tree's clip order.
    K: ``[3, 3]`` float64 nominal intrinsics of the frames, pixels.
    depth_hint: ``float32 [clips, T, H, W]`` z-depth the backend can vouch for, or None.
    ground_truth: arrays only a synthetic backend knows (e.g. ``depth`` of the undistorted scene).
    """

    frames: np.ndarray
    K: np.ndarray
    depth_hint: np.ndarray | None = None
    ground_truth: dict[str, np.ndarray] = field(default_factory=dict)
