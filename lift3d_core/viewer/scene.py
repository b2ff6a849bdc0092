"""What the viewer shows: canonical Gaussians, the calibrated cameras of the generated frames, each frame's image,
and the distortion field that moves the Gaussians per frame. Built by ``tasks/view.py`` from a run, or from any
3DGS PLY by :func:`scene_from_ply` (no cameras then).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.ply import load_ply
from lift3d_core.viewer.splats import pack_splats

PLY_VERTICAL_FOV_DEG = 50.0  # a PLY has no camera: the start view's field of view
FIELD_CACHE = 4  # frames whose moved Gaussians stay packed (a field pass over 1M Gaussians takes seconds on a CPU)


@dataclass(frozen=True)
class FrameCamera:
    """One generated frame's calibrated camera. ``c2w [4, 4]`` float64 OpenCV, ``K [3, 3]`` in pixels of the
    ``width x height`` frame; ``code`` its frame code ``(u, v)`` in [0, 1]^2 (the field's input)."""

    label: str
    c2w: np.ndarray
    K: np.ndarray
    width: int
    height: int
    code: tuple[float, float]
    registered: bool = True


@dataclass
class ViewerScene:
    """Everything the server sends. ``cameras[0]`` is the input view (the start pose) when there are cameras;
    ``frame_image(i)`` is ``uint8 [H, W, 3]`` of camera ``i``; ``field_state`` the train artifact's distortion
    field (``splat.distortion.load_field``), or None."""

    title: str
    gaussians: Gaussians
    cameras: list[FrameCamera] = field(default_factory=list)
    frame_image: Callable[[int], np.ndarray] | None = None
    field_state: dict | None = None
    _packed: bytes | None = field(default=None, init=False, repr=False)
    _field_cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)
    _field_module: torch.nn.Module | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def packed(self) -> bytes:
        """The canonical Gaussians in the wire format (``viewer.splats``)."""
        with self._lock:
            if self._packed is None:
                self._packed = pack_splats(self.gaussians)
            return self._packed

    def frame_jpeg(self, index: int) -> bytes:
        """JPEG bytes of camera ``index``'s frame."""
        self._check_camera(index)
        if self.frame_image is None:
            raise Lift3DError("this scene has no frames")
        buf = io.BytesIO()
        Image.fromarray(np.asarray(self.frame_image(index), dtype=np.uint8)).save(buf, format="JPEG", quality=92)
        return buf.getvalue()

    def field_packed(self, index: int) -> bytes:
        """The Gaussians camera ``index``'s frame was trained against (canonical plus the field's offsets at its
        frame code), in the wire format; evaluated on the CPU, the last ``FIELD_CACHE`` kept."""
        self._check_camera(index)
        if self.field_state is None:
            raise Lift3DError("this scene has no distortion field (a plain 3DGS run, or a PLY)")
        with self._lock:
            if index not in self._field_cache:
                self._field_cache[index] = pack_splats(self._moved(self.cameras[index].code))
                while len(self._field_cache) > FIELD_CACHE:
                    self._field_cache.popitem(last=False)
            self._field_cache.move_to_end(index)
            return self._field_cache[index]

    def _moved(self, code: tuple[float, float]) -> Gaussians:
        from lift3d_core.splat.distortion import load_field

        if self._field_module is None:
            self._field_module = load_field(self.field_state, device="cpu").eval()
        with torch.no_grad():
            return self._field_module.apply(self.gaussians, torch.tensor(code, dtype=torch.float32))

    def _check_camera(self, index: int) -> None:
        if not 0 <= index < len(self.cameras):
            raise Lift3DError(f"no camera {index}: the scene has {len(self.cameras)}")

    def metadata(self) -> dict:
        """The page's ``scene.json``: cameras, the start pose, the point the controls orbit about, sizes."""
        means = self.gaussians.means.detach().cpu().numpy().astype(np.float64)
        if self.cameras:
            start = self.cameras[0]
            start_c2w, start_K, width, height = start.c2w, start.K, start.width, start.height
            pivot = pivot_point(means, start_c2w, start_K, width, height)
        else:
            start_c2w, start_K, width, height, pivot = ply_start_pose(means)
        distance = float(np.linalg.norm(pivot - start_c2w[:3, 3]))
        return {
            "title": self.title,
            "num_gaussians": self.gaussians.num,
            "start": {"c2w": start_c2w.tolist(), "K": start_K.tolist(), "width": width, "height": height},
            "pivot": pivot.tolist(),
            "pivot_distance": distance,
            "frustum_depth": frustum_depth([c.c2w for c in self.cameras], distance),
            "cameras": [{"index": i, "label": c.label, "c2w": c.c2w.tolist(), "K": c.K.tolist(), "width": c.width,
                         "height": c.height, "code": list(c.code), "registered": c.registered}
                        for i, c in enumerate(self.cameras)],
            "has_frames": self.frame_image is not None,
            "has_field": self.field_state is not None,
        }


def pivot_point(means: np.ndarray, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[3]``: the point on camera ``c2w``'s optical axis at the median depth of the Gaussian centres ``means
    [N, 3]`` it sees (the orbit centre); at the camera's unit depth when it sees none."""
    w2c = np.linalg.inv(c2w)
    cam = means @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * cam[:, 0] / z + K[0, 2]
        v = K[1, 1] * cam[:, 1] / z + K[1, 2]
    seen = (z > 1e-6) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    depth = float(np.median(z[seen])) if seen.any() else 1.0
    return c2w[:3, 3] + depth * c2w[:3, 2]


def ply_start_pose(means: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray]:
    """A start camera for Gaussians without cameras: axis-aligned (OpenCV, looking along +z), backed off from
    the centres' median until 90% of them are within its field of view. Returns (c2w, K, width, height, pivot)."""
    width, height = 1280, 720
    focal = 0.5 * height / np.tan(np.radians(PLY_VERTICAL_FOV_DEG) / 2)
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])
    pivot = np.median(means, axis=0) if len(means) else np.zeros(3)
    radius = float(np.quantile(np.linalg.norm(means - pivot, axis=1), 0.9)) if len(means) else 1.0
    c2w = np.eye(4)
    c2w[:3, 3] = pivot - [0.0, 0.0, max(radius, 1e-3) / np.tan(np.radians(PLY_VERTICAL_FOV_DEG) / 2)]
    return c2w, K, width, height, pivot


def frustum_depth(c2ws: list[np.ndarray], pivot_distance: float) -> float:
    """How deep the page draws each camera's frustum, world units: half the median distance between a camera
    and its nearest neighbour (neighbouring frustums then do not overlap), within 2-20% of the orbit distance."""
    lo, hi = 0.02 * pivot_distance, 0.2 * pivot_distance
    if len(c2ws) < 2:
        return hi / 2
    centres = np.stack([c[:3, 3] for c in c2ws])
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(np.clip(0.5 * np.median(d.min(axis=1)), lo, hi))


def scene_from_ply(path: str | Path) -> ViewerScene:
    """Any standard 3DGS PLY (``splat.ply``): the Gaussians only, no cameras, frames or field."""
    return ViewerScene(title=Path(path).name, gaussians=load_ply(path))
