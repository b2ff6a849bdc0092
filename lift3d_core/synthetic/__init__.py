"""The ``synthetic`` video generator: a known scene built around the input photograph.

A lift needs generated video; this backend instead renders a procedural scene
whose geometry is known exactly, so every later stage (calibration, depth,
3DGS training, evaluation) can be checked against ground truth.

Scene. A closed box-shaped room (every camera of the tree sees walls), plus a
few boxes, spheres and cylinders at several depths. The input camera is the
world origin looking along +z (OpenCV axes: x right, y down, z forward; world
"up" is -y). Presets are laid out in units of the trajectory's orbit pivot
depth (``SyntheticConfig.scale``, 1.7 for the default tree) and keep their
objects clear of the default articulated tree and of :func:`eval_cameras`.

Surfaces are flat, surface-aligned Gaussian discs (two in-plane scales about
the sample spacing, the third 1000x thinner; opacity 0.995; SH degree 0 colour
with zero degree-3 coefficients, so the scene is an ordinary 3DGS model that
any rasterizer renders):

* every pixel of the input view gets one "photo" disc where its ray meets the
  scene, shaped by the pixel's footprint on the surface (capped at the grid
  spacing);
* the rest gets a regular grid of discs: coloured from the photograph where
  the input camera sees them, elsewhere with a procedural texture (the
  photograph tiled with mirroring, hue-rotated and tinted per face from the
  seed);
* a few SIRT iterations then fit the colours of every disc the input view sees
  so that rendering the input view reproduces the photograph (about 32 dB PSNR
  for astronaut in "room" at 128x96), undoing the splat blur and the discs of
  hidden surfaces that peek past silhouettes.

Compositing order. A 3DGS rasterizer sorts Gaussians by the camera depth of their centres. Two overlapping
discs of one flat surface then swap whenever the view direction crosses the perpendicular to the line between
them: facing a wall frontally, every pair of neighbours on it swaps, and the wall's texture jumps by about half a
disc (up to 7 px for the 15 px discs of hidden walls at 256x192; ~0.5 px for photo discs), so frames on both
sides of that direction disagree with any rigid scene. :func:`render_views` therefore composites the scene
surface by surface, in an order fixed by the geometry (:func:`composite_order`): objects front to back (from
the analytic surfaces), each object's discs facing the camera before its back faces, the room's walls last
(a convex room is behind everything inside it); within one surface a view-independent order (photo discs
first, then the grid, on a box's face the discs nearest its edges last, so a corner never shows a wall's disc
that lies beyond it). Rendered so, the frames are consistent with their cameras (tests/test_synthetic.py).

Distortion. :func:`distort_gaussians` moves the scene by a smooth field that
depends smoothly on the frame code and vanishes at the input view's code
(0.5, 0.5), imitating a generated video's per-frame 3D inconsistency.

Conventions: images ``uint8 [H, W, 3]`` RGB; cameras ``c2w [N, 4, 4]`` float64
OpenCV camera-to-world; ``K [3, 3]`` in pixels of ``width x height`` with pixel
u's centre at u + 0.5; depth is camera z (not ray length).

Modules: :mod:`~lift3d_core.synthetic.primitives` (analytic surfaces, ray casting),
:mod:`~lift3d_core.synthetic.scene` (config, presets, the built scene), :mod:`~lift3d_core.synthetic.build`
(building it, fitting the photo's colours), :mod:`~lift3d_core.synthetic.composite` (compositing order),
:mod:`~lift3d_core.synthetic.distortion` (per-frame distortion), :mod:`~lift3d_core.synthetic.render` (frames,
the generator) and :mod:`~lift3d_core.synthetic.evaluation` (held-out cameras, surface points).
"""

from lift3d_core.synthetic.build import build_scene, fit_photo
from lift3d_core.synthetic.composite import composite_order, rasterize_in_order
from lift3d_core.synthetic.distortion import INPUT_CODE, distort_gaussians, distort_scene_gaussians, distortion_weight
from lift3d_core.synthetic.evaluation import eval_cameras, sample_surface_points
from lift3d_core.synthetic.primitives import Box, Cylinder, Primitive, Sphere
from lift3d_core.synthetic.primitives import _raycast as _raycast  # tests cast rays through synthetic._raycast
from lift3d_core.synthetic.render import check_cameras_inside, generate_frames, render_views
from lift3d_core.synthetic.scene import (
    DISTORTION_LEVELS,
    PRESETS,
    ScenePreset,
    SurfaceLayers,
    SyntheticConfig,
    SyntheticScene,
    raycast_depth,
)

__all__ = [
    "DISTORTION_LEVELS",
    "INPUT_CODE",
    "PRESETS",
    "Box",
    "Cylinder",
    "Primitive",
    "ScenePreset",
    "Sphere",
    "SurfaceLayers",
    "SyntheticConfig",
    "SyntheticScene",
    "build_scene",
    "check_cameras_inside",
    "composite_order",
    "distort_gaussians",
    "distort_scene_gaussians",
    "distortion_weight",
    "eval_cameras",
    "fit_photo",
    "generate_frames",
    "rasterize_in_order",
    "raycast_depth",
    "render_views",
    "sample_surface_points",
]
