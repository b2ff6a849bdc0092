"""Rendering the synthetic scene: frames from any cameras (:func:`render_views`) and the synthetic video generator
over a camera tree (:func:`generate_frames`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.render import render
from lift3d_core.synthetic.build import build_scene
from lift3d_core.synthetic.composite import composite_order, rasterize_in_order
from lift3d_core.synthetic.distortion import distort_scene_gaussians
from lift3d_core.synthetic.scene import SyntheticConfig, SyntheticScene, raycast_depth


def _to_uint8(rgb: torch.Tensor) -> np.ndarray:
    return (rgb.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def render_views(
    scene: SyntheticScene,
    c2w: np.ndarray,
    *,
    frame_codes: np.ndarray | None = None,
    distortion: float = 0.0,
    backend: str = "torch",
    device: str | None = None,
    chunk: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render the scene's Gaussians (optionally distorted per frame) from N cameras.

    With ``backend="torch"`` (the default, any device) the surfaces are composited in their fixed order
    (:func:`composite_order`, see :mod:`lift3d_core.synthetic`), so the frames are consistent with their cameras; the
    other backends sort by depth as every 3DGS rasterizer does (fast on a GPU, but a flat surface's texture
    jumps where the view direction crosses its normal).

    Args:
        scene: :class:`SyntheticScene`.
        c2w: ``[N, 4, 4]`` float64 OpenCV camera-to-world (``[4, 4]`` for one).
        frame_codes: ``[N, 2]`` frame codes; needed when ``distortion > 0``.
        distortion: per-frame distortion as a fraction of the pivot depth ``scene.scale`` (see
            :class:`SyntheticConfig` and :data:`DISTORTION_LEVELS`), applied from each frame's code.
        backend: rasterizer backend (see :func:`lift3d_core.splat.render.render`).
        device: where to render; default CPU for ``torch``, CUDA for the others.
        chunk: cameras per rasterizer call when undistorted (depth-sorting backends).
        progress: called as ``progress(done, N)``.

    Returns:
        ``frames uint8 [N, H, W, 3]`` and ``depth float32 [N, H, W]``, the rasterizer's expected
        camera z of what was rendered (for the exact surface depth see :func:`raycast_depth`).
    """
    c2w = np.array(c2w, dtype=np.float64).reshape(-1, 4, 4)
    N = len(c2w)
    if distortion > 0.0 and frame_codes is None:
        raise Lift3DError("render_views: distortion > 0 needs frame_codes [N, 2]")
    if frame_codes is not None:
        frame_codes = np.asarray(frame_codes, dtype=np.float64).reshape(N, 2)
    device = device or ("cpu" if backend == "torch" else "cuda")
    frames = np.zeros((N, scene.height, scene.width, 3), np.uint8)
    depth = np.zeros((N, scene.height, scene.width), np.float32)
    ordered = backend == "torch"
    step = 1 if distortion > 0.0 or ordered else max(1, int(chunk))
    base = scene.gaussians.to(device)
    layers = scene.layers
    with torch.no_grad():
        for i in range(0, N, step):
            sl = slice(i, min(i + step, N))
            g = base
            if distortion > 0.0:
                g = distort_scene_gaussians(scene, frame_codes[i], distortion, base)
            if ordered:
                order = composite_order(layers, c2w[i], scene.K, scene.width, scene.height)
                rgb, z = rasterize_in_order(g, order, c2w[i], scene.K, scene.width, scene.height)
                frames[i] = _to_uint8(rgb)
                depth[i] = z.float().cpu().numpy()
            else:
                out = render(g, c2w[sl], scene.K, scene.width, scene.height, backend=backend)
                frames[sl] = _to_uint8(out.rgb)
                depth[sl] = out.depth[..., 0].float().cpu().numpy()
            if progress is not None:
                progress(sl.stop, N)
    return frames, depth


def check_cameras_inside(scene: SyntheticScene, c2w: np.ndarray, margin: float = 0.05) -> None:
    """Raise :class:`Lift3DError` if a camera centre of ``c2w [N, 4, 4]`` is outside the room or in an object.

    ``margin`` is in preset units (times ``scene.scale``).
    """
    centres = np.asarray(c2w, dtype=np.float64).reshape(-1, 4, 4)[:, :3, 3]
    m = margin * scene.scale
    room, objects = scene.primitives[0], scene.primitives[1:]
    bad = ~room.contains(centres, -m)
    for obj in objects:
        bad |= obj.contains(centres, m)
    if bad.any():
        raise Lift3DError(
            f"{int(bad.sum())} of {len(centres)} cameras lie outside the synthetic {scene.preset!r} room or inside "
            f"an object (first at {np.round(centres[bad][0], 3).tolist()}); the presets are laid out for a "
            f"trajectory whose orbits turn about a point synthetic.scale = {scene.scale:g} ahead: set it to the "
            "trajectory's pivot depth (TrajectoryConfig.pivot_depth)"
        )


def generate_frames(
    image_uint8: np.ndarray,
    tree,
    cfg: SyntheticConfig,
    backend: str = "torch",
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The synthetic video generator: render every clip of a camera tree.

    Each distinct frame (a child's frame 0 is its parent's last frame) is rendered once, so shared
    frames are identical. Frames are distorted per frame code with ``cfg.distortion``.

    Args:
        image_uint8: ``uint8 [H, W, 3]`` photograph.
        tree: :class:`lift3d_core.trajectory.CameraTree` (c2w relative to the input camera).
        cfg: :class:`SyntheticConfig`.
        backend: rasterizer backend.
        progress: called as ``progress(done, total)`` over the distinct frames.

    Returns:
        dict with ``frames`` uint8 ``[clips, T, H, W, 3]``, ``depth`` float32 ``[clips, T, H, W]``
        (exact z-depth of the undistorted analytic surfaces through each pixel centre, see
        :func:`raycast_depth`), ``K`` ``[3, 3]`` float64, ``scene``.
    """
    scene = build_scene(image_uint8, cfg)
    lengths = {len(c.c2w) for c in tree.clips}
    if len(lengths) != 1:
        raise Lift3DError(f"synthetic generator needs clips of equal length, got lengths {sorted(lengths)}")
    T = lengths.pop()
    distinct = np.asarray(tree.distinct_frame_index())
    c2w = np.asarray(tree.distinct_c2w(), dtype=np.float64)
    codes = np.asarray(tree.distinct_frame_codes(), dtype=np.float64)
    check_cameras_inside(scene, c2w)
    frames, _ = render_views(
        scene, c2w, frame_codes=codes, distortion=cfg.distortion, backend=backend, progress=progress
    )
    depth = np.stack([raycast_depth(scene, m) for m in c2w]).astype(np.float32)
    clips, H, W = len(tree.clips), scene.height, scene.width
    return {
        "frames": frames[distinct].reshape(clips, T, H, W, 3),
        "depth": depth[distinct].reshape(clips, T, H, W),
        "K": scene.K.copy(),
        "scene": scene,
    }
