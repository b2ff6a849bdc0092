"""The synthetic scene's description: its config, the preset layouts, the built scene and the exact depth of its
analytic surfaces (:func:`raycast_depth`). How a scene is built is :mod:`lift3d_core.synthetic.build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.synthetic.primitives import Box, Cylinder, Primitive, Sphere, _pixel_rays, _raycast

# RMS displacement of the per-frame distortion away from the input view, as a fraction of the
# pivot depth (SyntheticConfig.scale). Measured on "room" (astronaut) at 128x96 over every 6th frame
# of the default tree: projected content moves on average by 0.6 / 1.8 / 3.5 px ("low" / "default" /
# "high"; up to 2 / 6 / 13 px in the worst frame), and the distorted frames score 25 / 20 / 17 dB PSNR
# against the undistorted ones. Adjacent frames differ by ~0.1 px, like a smooth video; "default"
# is the scale of inconsistency that makes a plain 3DGS blur.
DISTORTION_LEVELS: dict[str, float] = {"none": 0.0, "low": 0.01, "default": 0.03, "high": 0.06}


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic generator.

    preset: scene geometry, one of :data:`PRESETS` (``room``, ``tabletop``, ``corridor``).
    scale: scene units per preset unit. Presets put the orbit pivot 1 unit ahead, so this is the
        trajectory's pivot depth (``TrajectoryConfig().pivot_depth``, 1.7 by default).
    seed: drives texture hues/offsets and the distortion field.
    width, height: output frame size in pixels (the photograph is centre-cropped and resized to it).
    fov_x_deg: horizontal field of view of every camera.
    hidden_gaussians: target number of grid discs on surfaces the input view does not see (the
        visible surfaces get one disc per pixel, ``width * height``, on top).
    distortion: RMS displacement of the per-frame distortion far from the input view, as a
        fraction of ``scale`` (the pivot depth); a float >= 0 or a name in :data:`DISTORTION_LEVELS`.
    distortion_frequency: spatial frequency of the distortion field, cycles per preset unit.
    distortion_colour: RMS RGB change (in [0, 1] units) per unit of ``distortion``.
    photo_fit_steps: iterations fitting the colours of the discs the input view sees to the photograph.
    texture_tile: preset units per (mirrored) tile of the photograph on unseen surfaces.
    """

    preset: str = "room"
    scale: float = 1.7
    seed: int = 0
    width: int = 128
    height: int = 96
    fov_x_deg: float = 60.0
    hidden_gaussians: int = 20000
    distortion: float = 0.0
    distortion_frequency: float = 0.5
    distortion_colour: float = 1.0
    photo_fit_steps: int = 6
    texture_tile: float = 3.0

    def __post_init__(self):
        if isinstance(self.distortion, str):
            if self.distortion not in DISTORTION_LEVELS:
                raise Lift3DError(
                    f"synthetic.distortion {self.distortion!r} is not a level; use a float >= 0 or one of "
                    f"{', '.join(DISTORTION_LEVELS)}"
                )
            object.__setattr__(self, "distortion", DISTORTION_LEVELS[self.distortion])
        if self.preset not in PRESETS:
            raise Lift3DError(f"synthetic.preset {self.preset!r} is unknown; available: {', '.join(PRESETS)}")
        if not self.scale > 0.0:
            raise Lift3DError(f"synthetic.scale must be > 0, got {self.scale}")
        if not (16 <= int(self.width) <= 4096 and 16 <= int(self.height) <= 4096):
            raise Lift3DError(f"synthetic width/height must be within 16..4096, got {self.width}x{self.height}")
        if not 20.0 <= self.fov_x_deg <= 120.0:
            raise Lift3DError(f"synthetic.fov_x_deg must be within 20..120 degrees, got {self.fov_x_deg}")
        if self.hidden_gaussians < 1000:
            raise Lift3DError(f"synthetic.hidden_gaussians must be >= 1000, got {self.hidden_gaussians}")
        if not float(self.distortion) >= 0.0:
            raise Lift3DError(f"synthetic.distortion must be >= 0, got {self.distortion}")
        if not self.distortion_frequency > 0.0:
            raise Lift3DError(f"synthetic.distortion_frequency must be > 0, got {self.distortion_frequency}")
        if not self.distortion_colour >= 0.0:
            raise Lift3DError(f"synthetic.distortion_colour must be >= 0, got {self.distortion_colour}")
        if self.photo_fit_steps < 0:
            raise Lift3DError(f"synthetic.photo_fit_steps must be >= 0, got {self.photo_fit_steps}")
        if not self.texture_tile > 0.0:
            raise Lift3DError(f"synthetic.texture_tile must be > 0, got {self.texture_tile}")


# Laid out in pivot units: the articulated tree's orbits turn about a point 1 unit ahead of the
# input camera (SyntheticConfig.scale, the trajectory's pivot depth, converts to scene units). Its
# orbit cameras then stay 0.8 to 1.0 from the vertical axis through (0, *, 1), with |x| <= 1 and
# 0 <= z <= 2; up/down clips reach |y| = 0.64 (trajectory geometry "conditioning") or 3.3 ("json").
# Eval cameras interpolate between sibling clips; those chords stay > 0.55 from that axis. So objects
# at the pivot stay within 0.4 of the axis, the others beyond 1.3, and rooms span |y| = 3.8.


@dataclass(frozen=True)
class ScenePreset:
    room: Box
    objects: tuple[Primitive, ...]

    @property
    def primitives(self) -> tuple[Primitive, ...]:
        return (self.room, *self.objects)

    def scaled(self, s: float) -> ScenePreset:
        return ScenePreset(self.room.scaled(s), tuple(o.scaled(s) for o in self.objects))


PRESETS: dict[str, ScenePreset] = {
    # A room with a plinth carrying a ball at the pivot, a cube floating above it, and a ball, a
    # crate and a column further back. Input-view depths 0.75 to 3.6 (the back wall).
    "room": ScenePreset(
        room=Box((0.0, 0.0, 1.1), (2.3, 3.8, 2.5), inside=True),
        objects=(
            Box((0.0, 2.075, 1.0), (0.22, 1.725, 0.22), yaw_deg=20.0),
            Sphere((0.03, 0.1, 1.0), 0.25),
            Box((-0.12, -0.55, 1.05), (0.12, 0.12, 0.12), yaw_deg=35.0),
            Sphere((1.2, -0.5, 2.9), 0.4),
            Box((-1.3, 0.9, 2.8), (0.35, 0.35, 0.35), yaw_deg=35.0),
            Cylinder((1.8, 2.2), -3.8, 3.8, 0.15),
        ),
    ),
    # A table at the pivot, its top just under the eye line, with small objects on it (depths 0.78
    # to 1.22), and a cabinet by the back wall (3.2).
    "tabletop": ScenePreset(
        room=Box((0.0, 0.0, 0.95), (2.1, 3.8, 2.25), inside=True),
        objects=(
            Box((0.0, 0.32, 1.0), (0.28, 0.02, 0.22)),
            *(Box((sx * 0.25, 2.07, 1.0 + sz * 0.19), (0.02, 1.73, 0.02)) for sx in (-1, 1) for sz in (-1, 1)),
            Sphere((0.1, 0.2, 0.92), 0.1),
            Cylinder((-0.14, 1.08), 0.06, 0.30, 0.06),
            Box((0.08, 0.24, 1.12), (0.06, 0.06, 0.06), yaw_deg=25.0),
            Box((-0.15, 0.26, 0.88), (0.04, 0.04, 0.04), yaw_deg=60.0),
            Box((1.5, 2.8, 2.9), (0.45, 1.0, 0.3)),
        ),
    ),
    # A hall 10.5 deep: a crate at the pivot, columns down both sides, a ball and a block far away
    # (input-view depths 0.8 to 9).
    "corridor": ScenePreset(
        room=Box((0.0, 0.0, 3.75), (1.8, 3.8, 5.25), inside=True),
        objects=(
            *(Cylinder((sx * 1.55, z), -3.8, 3.8, 0.12) for sx in (-1, 1) for z in (-0.8, 3.0, 4.8, 6.6, 8.4)),
            Box((0.05, 2.0, 1.0), (0.22, 1.8, 0.22), yaw_deg=30.0),
            Sphere((-0.6, 0.8, 5.5), 0.4),
            Box((0.7, 3.3, 7.5), (0.5, 0.5, 0.5), yaw_deg=15.0),
        ),
    ),
}


@dataclass
class SyntheticScene:
    """A built synthetic scene: Gaussians plus the analytic geometry they sample.

    Attributes:
        gaussians: the scene as CPU float32 :class:`Gaussians` (SH degree 3, higher bands zero).
        K: ``[3, 3]`` float64 intrinsics at ``width x height`` (every camera uses them).
        width, height: frame size in pixels.
        photo: ``uint8 [height, width, 3]`` the input photograph as fitted to the frame.
        primitives: the analytic surfaces (room first) for ray casting (:func:`raycast_depth`).
        bounds: ``[2, 3]`` float64 min / max corner of the room.
        extent: half the room diagonal, scene units (a scale for noise and thresholds).
        surface_xyz, surface_tangents, surface_half, surface_rgb: the surface samples the Gaussians
            are made of: centres ``[M, 3]``, in-plane axes ``[M, 2, 3]``, half cell sizes ``[M, 2]``
            along those axes, colour ``uint8 [M, 3]``; M == gaussians.num.
        photo_index: ``[height * width]`` index of pixel (v, u)'s photo disc (row-major).
        surface_primitive: ``int32 [M]`` index in ``primitives`` of the surface each disc lies on.
        surface_normal: ``float32 [M, 3]`` unit normal pointing to the side the disc is seen from (out of an
            object, into the room).
        surface_priority: ``float32 [M]`` the view-independent compositing order within one surface
            (:func:`composite_order`; lower first).
        seed, scale, distortion, distortion_frequency, distortion_colour, preset: from the config.
    """

    gaussians: Gaussians
    K: np.ndarray
    width: int
    height: int
    photo: np.ndarray
    primitives: tuple
    bounds: np.ndarray
    extent: float
    surface_xyz: np.ndarray
    surface_tangents: np.ndarray
    surface_half: np.ndarray
    surface_rgb: np.ndarray
    photo_index: np.ndarray
    surface_primitive: np.ndarray
    surface_normal: np.ndarray
    surface_priority: np.ndarray
    seed: int = 0
    scale: float = 1.7
    distortion: float = 0.0
    distortion_frequency: float = 0.5
    distortion_colour: float = 1.0
    preset: str = "room"
    meta: dict = field(default_factory=dict)

    @property
    def layers(self) -> SurfaceLayers:
        """The discs' surfaces, normals and priorities, for :func:`composite_order`."""
        return SurfaceLayers(self.primitives, self.surface_xyz.astype(np.float64), self.surface_primitive,
                             self.surface_normal, self.surface_priority)


@dataclass(frozen=True)
class SurfaceLayers:
    """What :func:`composite_order` needs of a scene: its analytic surfaces and, per disc (``[M]``), the
    primitive it lies on, its centre ``xyz [M, 3]``, the normal towards the side it is seen from, and its
    view-independent priority within its surface (lower first)."""

    primitives: tuple
    xyz: np.ndarray
    primitive: np.ndarray
    normal: np.ndarray
    priority: np.ndarray


def raycast_depth(
    scene_or_preset, c2w: np.ndarray, K: np.ndarray | None = None, width: int | None = None, height: int | None = None
) -> np.ndarray:
    """Exact z-depth of the analytic scene (no Gaussians) for one camera.

    Args:
        scene_or_preset: a :class:`SyntheticScene` or a preset name.
        c2w: ``[4, 4]`` float64 OpenCV camera-to-world.
        K, width, height: default to the scene's.

    Returns:
        ``float64 [H, W]`` camera z of the first surface through each pixel centre.
    """
    if isinstance(scene_or_preset, str):
        prims = PRESETS[scene_or_preset].primitives
    else:
        prims = scene_or_preset.primitives
        K = scene_or_preset.K if K is None else K
        width = scene_or_preset.width if width is None else width
        height = scene_or_preset.height if height is None else height
    c2w = np.asarray(c2w, dtype=np.float64)
    rays = _pixel_rays(K, width, height)
    t, _, _ = _raycast(prims, np.tile(c2w[:3, 3], (len(rays), 1)), rays @ c2w[:3, :3].T)
    return t.reshape(height, width)  # rays have camera z = 1, so t is the z-depth
