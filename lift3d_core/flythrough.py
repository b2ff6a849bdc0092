"""Videos of the canonical Gaussians: a fly-through along the camera tree and an orbit around the input view.

Camera paths are pure functions of cameras (``c2w [N, 4, 4]`` float64, OpenCV, camera-to-world); frames are
rendered with :func:`lift3d_core.export.render_views` (gsplat on CUDA, else the torch reference) and written
as H.264 ``yuv420p`` MP4 (what browsers and standard players decode) through imageio-ffmpeg's bundled ffmpeg.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation, Slerp

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.trajectory import CameraTree


def tree_walk(tree: CameraTree) -> np.ndarray:
    """A continuous camera path over the whole tree: ``c2w [M, 4, 4]`` in the tree's (commanded) frame.

    Depth first from the input view: down each clip, through its children, then back up the same clip, so
    every step is between neighbouring frames of one clip and the path ends at the input view. A camera
    repeated by two consecutive steps (a child's frame 0 is its parent's last frame) appears once.
    """
    path: list[np.ndarray] = []

    def add(c2w: Iterable[np.ndarray]) -> None:
        for pose in c2w:
            if not path or not np.allclose(path[-1], pose, atol=1e-12):
                path.append(pose)

    def visit(clip) -> None:
        add(clip.c2w)
        for child in tree.children(clip.clip_id):
            visit(child)
        add(clip.c2w[::-1])

    for clip in tree.children(None):
        visit(clip)
    return np.stack(path)


def resample_path(c2w: np.ndarray, num: int) -> np.ndarray:
    """``num`` cameras evenly spaced in steps along the path ``c2w [M, 4, 4]``: centres interpolated linearly,
    rotations spherically (slerp) between neighbouring keys; the first and last keys are kept exactly."""
    if num < 2 or len(c2w) < 2:
        raise Lift3DError(f"a camera path needs at least 2 keys and 2 frames, got {len(c2w)} keys, {num} frames")
    keys = np.arange(len(c2w), dtype=np.float64)
    s = np.linspace(0.0, keys[-1], num)
    out = np.tile(np.eye(4), (num, 1, 1))
    out[:, :3, :3] = Slerp(keys, Rotation.from_matrix(c2w[:, :3, :3]))(s).as_matrix()
    for axis in range(3):
        out[:, axis, 3] = np.interp(s, keys, c2w[:, axis, 3])
    return out


def pivot_depth(means: np.ndarray, c2w: np.ndarray, near: float = 1e-3) -> float:
    """Median camera-z of the Gaussian centres ``means [N, 3]`` in front of camera ``c2w [4, 4]``: the distance
    the orbit turns around (the middle of what the input view sees)."""
    w2c = np.linalg.inv(c2w)
    z = np.asarray(means, np.float64) @ w2c[2, :3] + w2c[2, 3]
    z = z[z > near]
    if z.size == 0:
        raise Lift3DError("no Gaussian lies in front of the input camera: nothing to orbit around")
    return float(np.median(z))


def orbit_path(c2w: np.ndarray, depth: float, num: int, degrees: float = 12.0) -> np.ndarray:
    """``num`` cameras circling the view ``c2w [4, 4]`` around its pivot, ``depth`` ahead on its optical axis.

    Each camera is ``c2w`` turned about the pivot by a yaw of ``degrees * cos(phi)`` and a pitch of
    ``degrees * sin(phi)`` (in the camera's own axes), ``phi`` going once round: the pivot stays at the image
    centre and the first and last cameras are the input view's neighbours on the circle. ``[num, 4, 4]``.
    """
    if num < 1:
        raise Lift3DError(f"an orbit needs at least one frame, got {num}")
    R0, centre = c2w[:3, :3], c2w[:3, 3]
    pivot = centre + depth * R0[:, 2]
    phi = np.linspace(0.0, 2 * np.pi, num, endpoint=False)
    local = Rotation.from_euler("yx", np.stack([np.cos(phi), np.sin(phi)], axis=1) * np.radians(degrees))
    out = np.tile(np.eye(4), (num, 1, 1))
    for i, r in enumerate(local.as_matrix()):
        Rw = R0 @ r @ R0.T  # the camera-frame turn as a world rotation about the pivot
        out[i, :3, :3] = Rw @ R0
        out[i, :3, 3] = pivot + Rw @ (centre - pivot)
    return out


def video_size(width: int, height: int, max_width: int | None) -> tuple[int, int]:
    """The frame size scaled down to ``max_width`` (None: unchanged), both sides even (H.264 ``yuv420p``)."""
    scale = min(1.0, max_width / width) if max_width else 1.0
    w, h = max(2, round(width * scale)), max(2, round(height * scale))
    return w - w % 2, h - h % 2


def scale_intrinsics(K: np.ndarray, width: int, height: int, new_width: int, new_height: int) -> np.ndarray:
    """``K [..., 3, 3]`` of a ``width x height`` image for the same camera at ``new_width x new_height``."""
    S = np.diag([new_width / width, new_height / height, 1.0])
    return S @ np.asarray(K, np.float64)


@torch.no_grad()
def iter_renders(gaussians: Gaussians, c2w: np.ndarray, K: np.ndarray, width: int, height: int,
                 backend: str = "auto", chunk: int = 8) -> Iterator[np.ndarray]:
    """Render ``c2w [N, 4, 4]`` with ``K [3, 3]`` one chunk at a time: yields ``uint8 [H, W, 3]`` frames, so a
    long video never holds all of them in memory."""
    from lift3d_core.export import render_views
    from lift3d_core.train import resolve_backend

    name, device = resolve_backend(backend)
    gaussians = gaussians.to(device)
    Ks = np.broadcast_to(np.asarray(K, np.float64), (len(c2w), 3, 3))
    for i in range(0, len(c2w), chunk):
        yield from render_views(gaussians, c2w[i : i + chunk], Ks[i : i + chunk], width, height, name)


def write_mp4(frames: Iterable[np.ndarray], path: str | Path, width: int, height: int, fps: float = 24.0,
              progress: Callable[[int], None] | None = None) -> int:
    """Encode ``uint8 [H, W, 3]`` frames as H.264 ``yuv420p`` MP4 at ``path`` (written beside it, then renamed:
    a reader never sees half a video); ``progress(frames written)`` after each. Returns the frame count."""
    import imageio_ffmpeg

    if width % 2 or height % 2:
        raise Lift3DError(f"H.264 yuv420p needs an even frame size, got {width}x{height}")
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    # quality 7 of 10 (imageio's scale, libx264's crf ~ 21): small files without visible blocking at these sizes
    writer = imageio_ffmpeg.write_frames(str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_in="rgb24",
                                         pix_fmt_out="yuv420p", quality=7, macro_block_size=1,
                                         output_params=["-movflags", "+faststart"])
    writer.send(None)
    count = 0
    try:
        for frame in frames:
            if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                raise Lift3DError(f"video frame {count}: expected uint8 [{height}, {width}, 3], got "
                                  f"{frame.dtype} {list(frame.shape)}")
            writer.send(np.ascontiguousarray(frame))
            count += 1
            if progress is not None:
                progress(count)
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return count
