"""export: the canonical Gaussians as a standard 3DGS PLY, plus preview renders."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.ply import save_ply
from lift3d_core.splat.render import render


@dataclass(frozen=True)
class ExportConfig:
    """The ``export`` section. preview_views: cameras of the tree rendered into the preview strip."""

    preview_views: int = 6
    backend: str = "auto"

    def __post_init__(self):
        if not 1 <= self.preview_views <= 64:
            raise Lift3DError(f"export.preview_views must be within 1..64, got {self.preview_views}")


def ply_bytes(gaussians: Gaussians) -> np.ndarray:
    """The standard 3DGS PLY of ``gaussians`` as ``uint8 [B]`` (what the export artifact stores)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.ply"
        save_ply(gaussians, path)
        return np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()


def preview_indices(num_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread evenly over ``num_frames`` (always includes the input view 0)."""
    return np.unique(np.linspace(0, num_frames - 1, min(count, num_frames)).round().astype(int))


@torch.no_grad()
def render_views(
    gaussians: Gaussians, c2w: np.ndarray, K: np.ndarray, width: int, height: int, backend: str = "auto"
) -> np.ndarray:
    """Render ``gaussians`` at cameras ``c2w [N, 4, 4]``, ``K [N, 3, 3]``: ``uint8 [N, H, W, 3]``.

    backend: a rasterizer name or ``auto`` (gsplat on CUDA, else the torch reference).
    """
    from lift3d_core.train import resolve_backend

    backend, device = resolve_backend(backend)
    gaussians = gaussians.to(device)
    out = []
    for i in range(c2w.shape[0]):
        cam = torch.tensor(np.asarray(c2w[i]), device=device)  # a copy: broadcast inputs are read-only
        k = torch.tensor(np.asarray(K[i]), device=device)
        rgb = render(gaussians, cam, k, width, height, backend=backend).rgb
        out.append((rgb[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())
    return np.stack(out)


def image_strip(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """Lay ``uint8 [N, H, W, 3]`` side by side with a white gap: ``uint8 [H, N*W + (N-1)*gap, 3]``."""
    n, h, w, _ = images.shape
    strip = np.full((h, n * w + (n - 1) * gap, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        strip[:, i * (w + gap) : i * (w + gap) + w] = im
    return strip
