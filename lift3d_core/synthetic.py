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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lift3d_core.camera import interpolate_poses, intrinsics_from_fov, rotation_angle, rotmat_to_quat
from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import SH_C0, Gaussians, rgb_to_sh0
from lift3d_core.splat.render import render

# RMS displacement of the per-frame distortion away from the input view, as a fraction of the
# pivot depth (SyntheticConfig.scale). Measured on "room" (astronaut) at 128x96 over every 6th frame
# of the default tree: projected content moves on average by 0.6 / 1.8 / 3.5 px ("low" / "default" /
# "high"; up to 2 / 6 / 13 px in the worst frame), and the distorted frames score 25 / 20 / 17 dB PSNR
# against the undistorted ones. Adjacent frames differ by ~0.1 px, like a smooth video; "default"
# is the scale of inconsistency that makes a plain 3DGS blur.
DISTORTION_LEVELS: dict[str, float] = {"none": 0.0, "low": 0.01, "default": 0.03, "high": 0.06}

INPUT_CODE = (0.5, 0.5)  # frame code of the input view (METHOD.md section 3)

_OPACITY = 0.995  # nearly opaque surfaces; the 3DGS clamp (0.99-0.999) leaves a little see-through anyway
_GRID_SIGMA = 0.65  # disc std / grid spacing: alpha > 0.97 everywhere on a square grid (checked numerically)
_PHOTO_SIGMA = 0.6  # disc std / pixel footprint: sharper input view, alpha > 0.95 on 98% of the surface
_THIN = 1e-3  # normal-axis scale relative to the in-plane one
_MARGIN = 0.75  # grid samples this fraction of a cell from an occlusion or frame edge are kept
_MAX_FOOTPRINT = 1.0  # photo discs are capped at the grid spacing (grazing views would streak); the grid fills in


# -- configuration -------------------------------------------------------------------------------


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


# -- analytic primitives ---------------------------------------------------------------------------

_EPS_T = 1e-6
# Grid step on spheres and cylinders, relative to the radius: flat discs on a curved surface poke out
# of its silhouette by about (2 sigma)^2 / (2 r), here ~1% of r.
_CURVED_STEP = 0.15
_MIN_CELLS = 6


def _yaw(deg: float) -> np.ndarray:
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _frames_from_normal(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal tangents ``t1, t2 [P, 3]`` with ``t1 x t2 = n``."""
    ref = np.where(np.abs(n[:, 1:2]) < 0.9, np.array([[0.0, 1.0, 0.0]]), np.array([[1.0, 0.0, 0.0]]))
    t1 = np.cross(ref, n)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    return t1, np.cross(n, t1)


@dataclass(frozen=True)
class Box:
    """Box with centre, half extents and a rotation about the vertical (y) axis.

    ``inside=True`` makes it a room: rays start inside, hit its walls from within,
    normals point inwards.
    """

    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw_deg: float = 0.0
    inside: bool = False

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rays ``o, d [P, 3]`` -> nearest positive ``t [P]`` (inf on a miss) and normals ``[P, 3]``."""
        R = _yaw(self.yaw_deg)
        h = np.array(self.half)
        ol, dl = (o - np.array(self.centre)) @ R, d @ R
        with np.errstate(divide="ignore", invalid="ignore"):
            ta, tb = (-h - ol) / dl, (h - ol) / dl
        par = np.abs(dl) < 1e-300
        inside_slab = np.abs(ol) <= h
        tmin = np.where(par, np.where(inside_slab, -np.inf, np.inf), np.minimum(ta, tb))
        tmax = np.where(par, np.where(inside_slab, np.inf, -np.inf), np.maximum(ta, tb))
        t_in, t_out = tmin.max(1), tmax.min(1)
        rows = np.arange(len(o))
        if self.inside:
            t = np.where(t_out > _EPS_T, t_out, np.inf)
            axis = tmax.argmin(1)
        else:
            t = np.where((t_in <= t_out) & (t_in > _EPS_T), t_in, np.inf)
            axis = tmin.argmax(1)
        nl = np.zeros_like(ol)
        nl[rows, axis] = -np.sign(dl[rows, axis])  # faces the ray: outward when entering, inward for a room
        return t, nl @ R.T

    def scaled(self, s: float) -> Box:
        return Box(tuple(s * c for c in self.centre), tuple(s * h for h in self.half), self.yaw_deg, self.inside)

    def contains(self, p: np.ndarray, margin: float = 0.0) -> np.ndarray:
        pl = (p - np.array(self.centre)) @ _yaw(self.yaw_deg)
        return np.all(np.abs(pl) < np.array(self.half) + margin, axis=1)

    def area(self) -> float:
        x, y, z = (2 * np.array(self.half)).tolist()
        return 2 * (x * y + y * z + z * x)

    def sample(self, spacing: float) -> dict[str, np.ndarray]:
        R = _yaw(self.yaw_deg)
        h = np.array(self.half)
        # Objects get at least _MIN_CELLS discs across each side: fewer would blur its edges.
        min_cells = 1 if self.inside else _MIN_CELLS
        out = []
        for axis in range(3):
            b, c = [a for a in range(3) if a != axis]
            nb, nc = (max(min_cells, math.ceil(2 * h[k] / spacing)) for k in (b, c))
            if self.inside:
                # Room: discs centred on the edges leave no crack in the corners (their outer
                # halves are behind the neighbouring wall).
                lb, lc = np.linspace(-h[b], h[b], nb + 1), np.linspace(-h[c], h[c], nc + 1)
            else:
                # Object: cell centres, so discs do not stick out of the silhouette.
                lb = -h[b] + (np.arange(nb) + 0.5) * 2 * h[b] / nb
                lc = -h[c] + (np.arange(nc) + 0.5) * 2 * h[c] / nc
            gb, gc = np.meshgrid(lb, lc, indexing="ij")
            for side in (-1.0, 1.0):
                p = np.zeros((gb.size, 3))
                p[:, axis], p[:, b], p[:, c] = side * h[axis], gb.ravel(), gc.ravel()
                n = np.zeros(3)
                n[axis] = -side if self.inside else side
                t1, t2 = np.zeros(3), np.zeros(3)
                t1[b], t2[c] = 1.0, 1.0
                if np.dot(np.cross(t1, t2), n) < 0:
                    t2 = -t2
                k = len(p)
                out.append(
                    {
                        "xyz": p @ R.T + np.array(self.centre),
                        "t1": np.tile(R @ t1, (k, 1)),
                        "t2": np.tile(R @ t2, (k, 1)),
                        "step": np.tile([2 * h[b] / nb, 2 * h[c] / nc], (k, 1)),
                        "uv": np.stack([gb.ravel(), gc.ravel()], 1),
                        "face": np.full(k, 2 * axis + (side > 0)),
                    }
                )
        return _concat(out)


@dataclass(frozen=True)
class Sphere:
    centre: tuple[float, float, float]
    radius: float

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        oc = o - np.array(self.centre)
        a = (d * d).sum(1)
        b = (oc * d).sum(1)
        disc = b * b - a * ((oc * oc).sum(1) - self.radius**2)
        sq = np.sqrt(np.maximum(disc, 0.0))
        t0, t1 = (-b - sq) / a, (-b + sq) / a
        t = np.where(t0 > _EPS_T, t0, np.where(t1 > _EPS_T, t1, np.inf))
        t = np.where(disc >= 0, t, np.inf)
        n = (o + np.where(np.isfinite(t), t, 0.0)[:, None] * d - np.array(self.centre)) / self.radius
        return t, n

    def scaled(self, s: float) -> Sphere:
        return Sphere(tuple(s * c for c in self.centre), s * self.radius)

    def contains(self, p: np.ndarray, margin: float = 0.0) -> np.ndarray:
        return np.linalg.norm(p - np.array(self.centre), axis=1) < self.radius + margin

    def area(self) -> float:
        return 4 * math.pi * self.radius**2

    def sample(self, spacing: float) -> dict[str, np.ndarray]:
        spacing = min(spacing, _CURVED_STEP * self.radius)
        k = max(16, math.ceil(self.area() / spacing**2))
        i = np.arange(k) + 0.5
        y = 1.0 - 2.0 * i / k  # Fibonacci lattice: equal-area bands in y, golden-angle azimuths
        phi = np.pi * (3.0 - math.sqrt(5.0)) * np.arange(k)
        rho = np.sqrt(1.0 - y * y)
        n = np.stack([rho * np.cos(phi), y, rho * np.sin(phi)], 1)
        t1, t2 = _frames_from_normal(n)
        s = math.sqrt(self.area() / k)
        uv = self.radius * np.stack([np.mod(phi, 2 * np.pi), np.arccos(np.clip(y, -1, 1))], 1)
        return {
            "xyz": np.array(self.centre) + self.radius * n,
            "t1": t1,
            "t2": t2,
            "step": np.full((k, 2), s),
            "uv": uv,
            "face": np.zeros(k, int),
        }


@dataclass(frozen=True)
class Cylinder:
    """Upright cylinder: axis along y through ``(x, z) = centre_xz``, from ``y0`` (top) to ``y1`` (bottom)."""

    centre_xz: tuple[float, float]
    y0: float
    y1: float
    radius: float

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cx, cz = self.centre_xz
        ox, oz, dx, dz = o[:, 0] - cx, o[:, 2] - cz, d[:, 0], d[:, 2]
        a = dx * dx + dz * dz
        b = ox * dx + oz * dz
        disc = b * b - a * (ox * ox + oz * oz - self.radius**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        y_side = o[:, 1] + ts * d[:, 1]
        ts = np.where(
            (disc >= 0) & (a > 1e-300) & (ts > _EPS_T) & (y_side >= self.y0) & (y_side <= self.y1), ts, np.inf
        )
        t, n = ts, np.zeros_like(o)
        hit = o + np.where(np.isfinite(ts), ts, 0.0)[:, None] * d
        n[:, 0], n[:, 2] = (hit[:, 0] - cx) / self.radius, (hit[:, 2] - cz) / self.radius
        for y_cap, ny in ((self.y0, -1.0), (self.y1, 1.0)):
            with np.errstate(divide="ignore", invalid="ignore"):
                tc = (y_cap - o[:, 1]) / d[:, 1]
                px, pz = o[:, 0] + tc * dx - cx, o[:, 2] + tc * dz - cz
            ok = np.isfinite(tc) & (tc > _EPS_T) & (px * px + pz * pz <= self.radius**2) & (tc < t)
            t = np.where(ok, tc, t)
            n[ok] = (0.0, ny, 0.0)
        return t, n

    def scaled(self, s: float) -> Cylinder:
        return Cylinder((s * self.centre_xz[0], s * self.centre_xz[1]), s * self.y0, s * self.y1, s * self.radius)

    def contains(self, p: np.ndarray, margin: float = 0.0) -> np.ndarray:
        r = np.hypot(p[:, 0] - self.centre_xz[0], p[:, 2] - self.centre_xz[1])
        return (r < self.radius + margin) & (p[:, 1] > self.y0 - margin) & (p[:, 1] < self.y1 + margin)

    def area(self) -> float:
        return 2 * math.pi * self.radius * (self.y1 - self.y0) + 2 * math.pi * self.radius**2

    def sample(self, spacing: float) -> dict[str, np.ndarray]:
        cx, cz = self.centre_xz
        r, hgt = self.radius, self.y1 - self.y0
        na = max(8, math.ceil(2 * math.pi * r / min(spacing, _CURVED_STEP * r)))
        ny = max(1, math.ceil(hgt / spacing))
        th, yy = np.meshgrid(
            (np.arange(na) + 0.5) * 2 * np.pi / na, np.linspace(self.y0, self.y1, ny + 1), indexing="ij"
        )
        th, yy = th.ravel(), yy.ravel()
        n = np.stack([np.cos(th), np.zeros_like(th), np.sin(th)], 1)
        t1 = np.stack([-np.sin(th), np.zeros_like(th), np.cos(th)], 1)
        t2 = np.cross(n, t1)
        side = {
            "xyz": np.stack([cx + r * n[:, 0], yy, cz + r * n[:, 2]], 1),
            "t1": t1,
            "t2": t2,
            "step": np.tile([2 * np.pi * r / na, hgt / ny], (len(th), 1)),
            "uv": np.stack([r * th, yy], 1),
            "face": np.zeros(len(th), int),
        }
        parts = [side]
        k = max(8, math.ceil(math.pi * r * r / min(spacing, _CURVED_STEP * r) ** 2))
        i = np.arange(k) + 0.5
        rho, phi = r * np.sqrt(i / k), np.pi * (3.0 - math.sqrt(5.0)) * np.arange(k)  # Vogel disc
        for face, (y_cap, ny_) in enumerate(((self.y0, -1.0), (self.y1, 1.0)), start=1):
            n = np.tile([0.0, ny_, 0.0], (k, 1))
            t1, t2 = _frames_from_normal(n)
            px, pz = rho * np.cos(phi), rho * np.sin(phi)
            parts.append(
                {
                    "xyz": np.stack([cx + px, np.full(k, y_cap), cz + pz], 1),
                    "t1": t1,
                    "t2": t2,
                    "step": np.full((k, 2), math.sqrt(math.pi * r * r / k)),
                    "uv": np.stack([px, pz], 1),
                    "face": np.full(k, face),
                }
            )
        return _concat(parts)


Primitive = Box | Sphere | Cylinder


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# -- presets ---------------------------------------------------------------------------------------
#
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


# -- scene ------------------------------------------------------------------------------------------


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


def fit_photo(image_uint8: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop ``uint8 [H, W, 3]`` to the aspect of ``width x height`` and resize (antialiased)."""
    img = np.asarray(image_uint8)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < 8:
        raise Lift3DError(f"synthetic generator expects uint8 [H, W, 3] of at least 8x8, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img.copy()
    if w * height > h * width:  # too wide
        cw = round(h * width / height)
        x0 = (w - cw) // 2
        img = img[:, x0 : x0 + cw]
    else:
        ch = round(w * height / width)
        y0 = (h - ch) // 2
        img = img[y0 : y0 + ch]
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].double()
    t = torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def _raycast(primitives, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit over all primitives: ``t [P]``, normal ``[P, 3]``, primitive index ``[P]`` (-1: miss)."""
    t_best = np.full(len(d), np.inf)
    n_best = np.zeros_like(d)
    idx = np.full(len(d), -1)
    for i, prim in enumerate(primitives):
        t, n = prim.intersect(o, d)
        closer = t < t_best
        t_best, idx = np.where(closer, t, t_best), np.where(closer, i, idx)
        n_best[closer] = n[closer]
    return t_best, n_best, idx


def _pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Camera-frame ray directions with z = 1 through pixel centres, ``[H * W, 3]`` row-major."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([(u.ravel() - K[0, 2]) / K[0, 0], (v.ravel() - K[1, 2]) / K[1, 1], np.ones(u.size)], 1)


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


def _footprint(X: np.ndarray, n: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Input-view pixel footprint on the tangent plane at ``X [P, 3]`` (normal ``n``), camera at origin.

    The surface point seen through continuous pixel (u, v) is ``Y = (n.X)/(n.d) d`` with
    ``d = K^-1 (u, v, 1)``; its Jacobian ``J = [dY/du, dY/dv]`` ([P, 3, 2]) maps a pixel step to
    the surface. Returns the SVD axes ``[P, 3, 2]`` and singular values ``[P, 2]`` (scene units per pixel).
    """
    d = X / X[:, 2:3]
    nd = (n * d).sum(1)
    nd = np.where(nd < 0, -1.0, 1.0) * np.maximum(np.abs(nd), 1e-6)  # edge-on: a huge but finite footprint
    nX = (n * X).sum(1)
    cols = []
    for axis, f in ((0, K[0, 0]), (1, K[1, 1])):
        dd = np.zeros_like(X)
        dd[:, axis] = 1.0 / f
        ndd = n[:, axis] / f
        cols.append((nX / nd**2)[:, None] * (dd * nd[:, None] - d * ndd[:, None]))
    J = np.stack(cols, 2)
    U, S, _ = np.linalg.svd(J, full_matrices=False)
    return U, S


def _visible_from_input(primitives, X: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Points ``X [P, 3]`` inside the input image and not occluded (camera at origin)."""
    z = X[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = K[0, 0] * X[:, 0] / z + K[0, 2], K[1, 1] * X[:, 1] / z + K[1, 2]
    inside = (z > 1e-6) & (u >= 0) & (u <= width) & (v >= 0) & (v <= height)
    dist = np.linalg.norm(X, axis=1)
    t, _, _ = _raycast(primitives, np.zeros_like(X), X / np.maximum(dist, 1e-12)[:, None])
    return inside & (t >= dist - 1e-4 * (1.0 + dist))


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample float ``img [H, W, C]`` at continuous pixel-index coords (clamped to the border)."""
    H, W = img.shape[:2]
    x, y = np.clip(x, 0, W - 1), np.clip(y, 0, H - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    return (
        img[y0, x0] * (1 - fx) * (1 - fy)
        + img[y0, x1] * fx * (1 - fy)
        + img[y1, x0] * (1 - fx) * fy
        + img[y1, x1] * fx * fy
    )


def _hue_rotation(theta: float) -> np.ndarray:
    """3x3 rotation of RGB about the grey axis by ``theta`` radians (greys stay grey)."""
    a = np.ones(3) / math.sqrt(3.0)
    ax = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return math.cos(theta) * np.eye(3) + (1 - math.cos(theta)) * np.outer(a, a) + math.sin(theta) * ax


def _procedural_rgb(
    photo: np.ndarray, uv: np.ndarray, face_id: np.ndarray, spacing: float, tile: float, seed: int
) -> np.ndarray:
    """Texture of unseen surfaces: the photo tiled with mirroring, per-face hue rotation and tint.

    photo: uint8 [H, W, 3]; uv: [P, 2] surface coordinates (scene units); face_id: [P] int.
    The photo is first reduced to about one texel per grid spacing so the discs do not alias it.
    """
    H, W = photo.shape[:2]
    tex_w = max(4, round(tile / spacing))
    tex_h = max(4, round(tex_w * H / W))
    t = torch.from_numpy(photo).permute(2, 0, 1)[None].double() / 255.0
    tex = (
        torch.nn.functional.interpolate(t, size=(tex_h, tex_w), mode="bilinear", antialias=True, align_corners=False)[0]
        .permute(1, 2, 0)
        .numpy()
    )
    rgb = np.zeros((len(uv), 3))
    for f in np.unique(face_id):
        m = face_id == f
        frng = np.random.default_rng([seed, 11, int(f)])
        offset = frng.uniform(0, 2 * tile, size=2)
        x = (uv[m, 0] + offset[0]) / tile * tex_w
        y = (uv[m, 1] + offset[1]) / tile * tex_w  # square texels
        # mirrored repeat: period 2*size, reflected in the second half
        x = np.abs(np.mod(x, 2 * tex_w) - tex_w) - 0.5
        y = np.abs(np.mod(y, 2 * tex_h) - tex_h) - 0.5
        col = _bilinear(tex, x, y)
        hue = _hue_rotation(frng.uniform(0.6, 2 * np.pi - 0.6))
        tint = frng.uniform(0.75, 1.15)
        rgb[m] = np.clip((col @ hue.T) * tint, 0.0, 1.0)
    return rgb


def _gaussians_from_surfels(xyz, t1, t2, sigma, rgb) -> Gaussians:
    """Flat discs: float64 arrays ``xyz, t1, t2 [P, 3]``, ``sigma [P, 2]``, ``rgb [P, 3]`` in [0, 1]."""
    n = np.cross(t1, t2)
    R = np.stack([t1, t2, n], axis=2)  # columns: local x, y, z (normal) axes
    quats = rotmat_to_quat(R)
    scales = np.concatenate([sigma, _THIN * sigma.min(1, keepdims=True)], 1)
    P = len(xyz)
    f32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    return Gaussians(
        means=f32(xyz),
        log_scales=f32(np.log(scales)),
        quats=f32(quats),
        opacity_logits=torch.full((P,), math.log(_OPACITY / (1 - _OPACITY)), dtype=torch.float32),
        sh0=rgb_to_sh0(f32(rgb))[:, None, :],
        shN=torch.zeros((P, 15, 3), dtype=torch.float32),
    )


def build_scene(image_uint8: np.ndarray, cfg: SyntheticConfig) -> SyntheticScene:
    """Build the synthetic scene for a photograph.

    Args:
        image_uint8: ``uint8 [H, W, 3]`` RGB photograph (any size; centre-cropped and resized
            to ``cfg.width x cfg.height``).
        cfg: :class:`SyntheticConfig`.

    Returns:
        :class:`SyntheticScene`; rendering it from the identity camera with ``scene.K``
        reproduces the fitted photograph closely.
    """
    W, H = int(cfg.width), int(cfg.height)
    photo = fit_photo(image_uint8, W, H)
    photo_f = photo.astype(np.float64) / 255.0
    K = intrinsics_from_fov(cfg.fov_x_deg, W, H)
    preset = PRESETS[cfg.preset].scaled(cfg.scale)
    prims = preset.primitives
    room = preset.room
    bounds = np.stack([np.array(room.centre) - room.half, np.array(room.centre) + room.half])

    # 1. photo discs: one per input pixel, where its ray meets the scene
    rays = _pixel_rays(K, W, H)
    t, n_hit, idx = _raycast(prims, np.zeros_like(rays), rays)
    if not np.all(idx >= 0):
        raise Lift3DError("synthetic scene is not closed: some input rays hit nothing")
    X = t[:, None] * rays
    U, S = _footprint(X, n_hit, K)

    # 2. grid discs on what the photo discs do not cover; the global spacing is tuned so that about
    # cfg.hidden_gaussians remain (small and curved objects sample finer, see _MIN_CELLS, _CURVED_STEP)
    spacing = math.sqrt(sum(p.area() for p in prims) / cfg.hidden_gaussians)
    for _ in range(3):
        grid = [p.sample(spacing) for p in prims]
        keep = _unseen_mask(prims, grid, K, W, H, spacing)
        kept = sum(int(k.sum()) for k in keep)
        spacing *= math.sqrt(kept / cfg.hidden_gaussians)
    grid = [p.sample(spacing) for p in prims]
    keep = _unseen_mask(prims, grid, K, W, H, spacing)

    # photo discs wider than the grid would leave gaps for other views; the grid fills in there
    S_disc = np.minimum(S, _MAX_FOOTPRINT * spacing)
    g_xyz, g_t1, g_t2, g_step, g_rgb, g_prim = [], [], [], [], [], []
    for p_i, (g, k) in enumerate(zip(grid, keep)):
        xyz = g["xyz"][k]
        vis = _visible_from_input(prims, xyz, K, W, H)
        rgb = np.zeros((len(xyz), 3))
        if vis.any():
            u = K[0, 0] * xyz[vis, 0] / xyz[vis, 2] + K[0, 2] - 0.5
            v = K[1, 1] * xyz[vis, 1] / xyz[vis, 2] + K[1, 2] - 0.5
            rgb[vis] = _bilinear(photo_f, u, v)
        if (~vis).any():
            rgb[~vis] = _procedural_rgb(
                photo, g["uv"][k][~vis], 8 * p_i + g["face"][k][~vis], spacing, cfg.texture_tile * cfg.scale, cfg.seed
            )
        g_xyz.append(xyz)
        g_t1.append(g["t1"][k])
        g_t2.append(g["t2"][k])
        g_step.append(g["step"][k])
        g_rgb.append(rgb)
        g_prim.append(np.full(len(xyz), p_i, np.int32))

    p_t1, p_t2 = U[:, :, 0], U[:, :, 1]
    xyz = np.concatenate([X, *g_xyz])
    t1 = np.concatenate([p_t1, *g_t1])
    t2 = np.concatenate([p_t2, *g_t2])
    half = np.concatenate([0.5 * S_disc, 0.5 * np.concatenate(g_step)])
    sigma = np.concatenate([_PHOTO_SIGMA * S_disc, _GRID_SIGMA * np.concatenate(g_step)])
    rgb = np.concatenate([photo_f.reshape(-1, 3), *g_rgb])
    gaussians = _gaussians_from_surfels(xyz, t1, t2, sigma, rgb)
    photo_index = np.arange(W * H)
    layers = _surface_layers(prims, xyz, t1, t2, np.concatenate([idx.astype(np.int32), *g_prim]), W * H)

    # 3. fit the colours of every disc the input view sees (splats blur, and discs of hidden
    # surfaces peek past silhouettes) so that the input view reproduces the photograph
    order = composite_order(layers, np.eye(4), K, W, H)
    fitted = torch.as_tensor(_fit_input_colours(gaussians, photo_f, K, cfg.photo_fit_steps, order))
    gaussians.sh0 = rgb_to_sh0(fitted)[:, None, :]

    final_rgb = (gaussians.sh0[:, 0] * SH_C0 + 0.5).clamp(0, 1).numpy()
    return SyntheticScene(
        gaussians=gaussians,
        K=K,
        width=W,
        height=H,
        photo=photo,
        primitives=prims,
        bounds=bounds,
        extent=float(0.5 * np.linalg.norm(bounds[1] - bounds[0])),
        surface_xyz=xyz.astype(np.float32),
        surface_tangents=np.stack([t1, t2], 1).astype(np.float32),
        surface_half=half.astype(np.float32),
        surface_rgb=np.round(final_rgb * 255).astype(np.uint8),
        photo_index=photo_index,
        surface_primitive=layers.primitive,
        surface_normal=layers.normal,
        surface_priority=layers.priority,
        seed=int(cfg.seed),
        scale=float(cfg.scale),
        distortion=float(cfg.distortion),
        distortion_frequency=float(cfg.distortion_frequency),
        distortion_colour=float(cfg.distortion_colour),
        preset=cfg.preset,
        meta={"grid_spacing": spacing, "num_photo": W * H, "num_grid": int(sum(len(a) for a in g_xyz))},
    )


def _fit_input_colours(gaussians: Gaussians, photo_f: np.ndarray, K: np.ndarray, steps: int,
                       order: np.ndarray) -> np.ndarray:
    """Disc colours ``[N, 3]`` in [0, 1] after ``steps`` SIRT iterations on the input view.

    The input-view render is linear in the colours, ``I = W c`` (weights fixed by geometry). SIRT
    moves each disc by the residual averaged over the pixels it covers, weighted by its share:
    ``c += (W^T r) / (W^T 1)``; discs the input view does not see keep their colours. ``order``: the input
    view's :func:`composite_order`.
    """
    H, W = photo_f.shape[:2]
    colours = (gaussians.sh0[:, 0] * SH_C0 + 0.5).clamp(0.0, 1.0).detach().clone()
    if steps == 0:
        return colours.numpy()
    target = torch.as_tensor(photo_f, dtype=torch.float32)
    g = Gaussians(**gaussians.tensors())

    def weighted_back(residual_fn):
        c = colours.clone().requires_grad_(True)
        g.sh0 = rgb_to_sh0(c)[:, None, :]
        rgb = rasterize_in_order(g, order, np.eye(4), K, W, H)[0]
        (rgb * residual_fn(rgb.detach())).sum().backward()
        return c.grad

    share = weighted_back(lambda rgb: torch.ones_like(rgb))  # W^T 1, per channel
    seen = share > 1e-3  # a disc weighing less than this everywhere would swing wildly
    for _ in range(steps):
        step = weighted_back(lambda rgb: target - rgb)
        colours = torch.where(seen, (colours + step / share.clamp_min(1e-3)).clamp(0.0, 1.0), colours)
    return colours.numpy()


def _unseen_mask(prims, grid, K, W, H, spacing) -> list[np.ndarray]:
    """Which grid samples to keep: those the photo discs do not already cover.

    A sample is dropped only if it and four neighbours ``_MARGIN`` of its cell away along its
    tangents are all visible from the input camera (so the grid overlaps the photo discs by a thin
    band at occlusion and frame edges: no cracks there in other views), and the photo discs there
    are at most ``_MAX_FOOTPRINT`` global spacings apart (at grazing angles the grid keeps
    covering). Returns a boolean mask per primitive.
    """
    masks = []
    for g in grid:
        xyz = g["xyz"]
        covered = np.ones(len(xyz), bool)
        offsets = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)) if _MARGIN > 0 else ((0, 0),)
        for o1, o2 in offsets:
            p = xyz + _MARGIN * (o1 * g["step"][:, :1] * g["t1"] + o2 * g["step"][:, 1:] * g["t2"])
            covered &= _visible_from_input(prims, p, K, W, H)
        if covered.any():
            n = np.cross(g["t1"][covered], g["t2"][covered])
            _, S = _footprint(xyz[covered], n, K)
            covered[np.flatnonzero(covered)[S.max(1) > _MAX_FOOTPRINT * spacing]] = False
        masks.append(~covered)
    return masks


# -- compositing order -----------------------------------------------------------------------------


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


def _primitive_centre(prim) -> np.ndarray:
    if isinstance(prim, Cylinder):
        return np.array([prim.centre_xz[0], 0.5 * (prim.y0 + prim.y1), prim.centre_xz[1]])
    return np.array(prim.centre, dtype=np.float64)


def _surface_layers(prims, xyz, t1, t2, primitive, num_photo: int) -> SurfaceLayers:
    """:class:`SurfaceLayers` of discs ``xyz, t1, t2 [M, 3]`` on ``prims[primitive]``, the first ``num_photo``
    being photo discs. Priority: photo discs before grid discs; on a box's face, a disc nearer the face's edges
    later (``-distance to the nearest edge``), so a room's corner shows each wall's own discs, not the halves of
    the neighbouring wall's edge discs that lie beyond it."""
    n = np.cross(t1, t2)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    priority = np.zeros(len(xyz))
    priority[num_photo:] = 1e3  # every grid disc after every photo disc of the same surface
    for p, prim in enumerate(prims):
        m = primitive == p
        out = np.sign(((xyz[m] - _primitive_centre(prim)) * n[m]).sum(1, keepdims=True))
        inside = isinstance(prim, Box) and prim.inside
        n[m] *= -out if inside else out
        if isinstance(prim, Box):
            local = np.abs((xyz[m] - np.array(prim.centre)) @ _yaw(prim.yaw_deg)) - np.array(prim.half)
            # on the face where |local| reaches half; the distance to the edges is the least of the other two
            face = np.argmax(local, axis=1)
            inner = np.where(np.arange(3)[None] == face[:, None], np.inf, -local)
            priority[m] -= inner.min(1)
    return SurfaceLayers(tuple(prims), np.asarray(xyz, np.float64), np.asarray(primitive, np.int32),
                         n.astype(np.float32), priority.astype(np.float32))


def _primitive_order(prims, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Rank ``[P]`` of every primitive in one camera's compositing order: the objects front to back, the room
    (``prims[0]``, which contains them) last.

    Object ``a`` goes before ``b`` when, on the rays (a grid about 128 wide) that meet both, ``a`` is met first
    more often; disjoint convex objects overlap on screen in one order only. Among objects free to go next, the
    nearest (least first-hit depth, else centre distance) goes first.
    """
    P = len(prims)
    rank = np.full(P, P - 1)
    if P == 1:
        return rank
    step = max(1, round(width / 128))
    u, v = np.meshgrid(np.arange(0, width, step) + 0.5, np.arange(0, height, step) + 0.5)
    rays = np.stack([(u.ravel() - K[0, 2]) / K[0, 0], (v.ravel() - K[1, 2]) / K[1, 1], np.ones(u.size)], 1)
    d = rays @ c2w[:3, :3].T
    o = np.tile(c2w[:3, 3], (len(d), 1))
    t = np.stack([prims[p].intersect(o, d)[0] for p in range(1, P)])  # [P - 1, rays]
    both = np.isfinite(t)[:, None] & np.isfinite(t)[None]
    first = (both & (t[:, None] < t[None])).sum(-1)  # [a, b]: rays meeting a before b
    before = first > first.T
    hit = np.isfinite(t).any(1)
    near = np.where(hit, np.where(np.isfinite(t), t, np.inf).min(1), np.inf)
    dist = np.array([np.linalg.norm(_primitive_centre(prims[p]) - c2w[:3, 3]) for p in range(1, P)])
    left = list(range(P - 1))
    for r in range(P - 1):
        free = [a for a in left if not any(before[b, a] for b in left if b != a)] or left  # a cycle: nearest first
        nxt = min(free, key=lambda a: (near[a], dist[a]))
        rank[nxt + 1] = r
        left.remove(nxt)
    return rank


def composite_order(layers, c2w: np.ndarray, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Front-to-back compositing order ``int64 [M]`` of every disc of a synthetic scene for one camera.

    layers: a :class:`SyntheticScene` or :class:`SurfaceLayers`; c2w: ``[4, 4]`` OpenCV; K: ``[3, 3]``.
    Surfaces go in :func:`_primitive_order`; an object's discs facing the camera before those facing away (a
    convex object hides its back behind its front); within each, by the discs' fixed priority, then index.
    Nothing depends on where a disc sits along the view direction within its surface, so the order of two
    neighbours on one surface never flips as the camera turns.
    """
    if isinstance(layers, SyntheticScene):
        layers = layers.layers
    rank = _primitive_order(layers.primitives, np.asarray(c2w, np.float64), K, width, height)
    facing = ((np.asarray(c2w)[:3, 3] - layers.xyz) * layers.normal).sum(1) > 0
    group = 2 * rank[layers.primitive] + ~facing
    return np.lexsort((np.arange(len(group)), layers.priority, group))


def rasterize_in_order(
    gaussians: Gaussians, order: np.ndarray, c2w: np.ndarray, K: np.ndarray, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render one camera compositing the Gaussians front to back in ``order`` (not by depth).

    The torch reference rasterizer's projection and compositing (:mod:`lift3d_core.splat.raster_torch`, the
    conventions of :func:`lift3d_core.splat.render.render`: pixel u's centre at u + 0.5, black background), on
    the Gaussians' device, differentiable in their tensors. gaussians: N; order: ``[N]`` a permutation;
    c2w ``[4, 4]``; K ``[3, 3]``. Returns ``rgb [H, W, 3]`` and the expected camera z ``depth [H, W]``.
    """
    from lift3d_core.splat.raster_torch import composite, project_gaussians
    from lift3d_core.splat.sh import eval_sh

    dev, dt = gaussians.means.device, gaussians.means.dtype
    viewmat = torch.as_tensor(np.linalg.inv(np.asarray(c2w, np.float64)), dtype=dt, device=dev)
    Kt = torch.as_tensor(np.asarray(K, np.float64), dtype=dt, device=dev)
    opacities = gaussians.opacities
    means2d, conics, z, radii = project_gaussians(gaussians.means, gaussians.quats, gaussians.scales, opacities,
                                                  viewmat, Kt, width, height, 0.01, 1e10)
    order_t = torch.as_tensor(np.asarray(order, np.int64), device=dev)
    order_t = order_t[(radii > 0).all(-1).index_select(0, order_t)]
    degree = gaussians.sh_degree
    dirs = None
    if degree > 0:
        campos = torch.as_tensor(np.asarray(c2w, np.float64)[:3, 3], dtype=dt, device=dev)
        dirs = torch.nn.functional.normalize(gaussians.means - campos, dim=-1)
    colours = (eval_sh(gaussians.sh, dirs, degree) + 0.5).clamp_min(0.0)
    out, acc = composite(means2d, conics, opacities, torch.cat([colours, z[:, None]], -1), radii, order_t,
                         width, height)
    return out[..., :3], out[..., 3] / acc.clamp_min(1e-10)


# -- distortion ------------------------------------------------------------------------------------


def distortion_weight(frame_code) -> float:
    """Smooth ramp ``1 - exp(-|c - (0.5, 0.5)|^2 / (2 * 0.08^2))``: 0 at the input view, ~1 a clip away.

    0.08 in code units is about 5 frames (a frame step is 1/60 for the default tree): generated
    videos start exactly at the conditioning image and drift from it within a few frames.
    """
    dc = np.asarray(frame_code, dtype=np.float64) - np.asarray(INPUT_CODE)
    return float(1.0 - math.exp(-float(dc @ dc) / (2 * 0.08**2)))


def distort_gaussians(
    gaussians: Gaussians,
    frame_code,
    amplitude: float,
    seed: int,
    *,
    frequency: float = 0.3,
    colour: float = 0.0,
    components: int = 4,
) -> Gaussians:
    """One frame's 3D inconsistency: a smooth displacement (and tint) of the whole scene.

    ``delta(x, c) = amplitude * w(c) * sqrt(2 / K) * sum_k a_k sin(2 pi f_k u_k . x + phi_k + 2 pi b_k . c)``
    with K = ``components`` random unit directions ``a_k``, ``u_k``, frequencies ``f_k`` within 30% of
    ``frequency`` and code frequencies ``b_k`` ~ N(0, 1.5) cycles per unit code (adjacent frames, 1/60
    apart in code, differ by ~15% of the amplitude). ``w`` is :func:`distortion_weight`, exactly 0 at
    the input view's code (0.5, 0.5). So ``amplitude`` is the RMS displacement far from the input
    view. The colour moves the same way: ``sh0`` gains a smooth RGB field of RMS ``colour * w``.

    Args:
        gaussians: N Gaussians (any device).
        frame_code: ``[2]`` the frame's code (u, v).
        amplitude: RMS displacement, scene units (>= 0).
        seed: selects the field; the same seed and code give the same output.
        frequency: spatial frequency, cycles per scene unit.
        colour: RMS colour change in RGB units ([0, 1] scale).

    Returns:
        new :class:`Gaussians` with moved ``means`` and tinted ``sh0`` (other tensors shared);
        ``gaussians`` itself when the weight or both amplitudes are 0.
    """
    weight = distortion_weight(frame_code)
    if weight == 0.0 or (amplitude == 0.0 and colour == 0.0):
        return gaussians
    rng = np.random.default_rng([int(seed), 0xD157])
    a = rng.normal(size=(components, 3))
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    u = rng.normal(size=(components, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    k = 2 * np.pi * frequency * rng.uniform(0.7, 1.3, size=(components, 1)) * u
    phase0 = rng.uniform(0, 2 * np.pi, size=components)
    b = rng.normal(0.0, 1.5, size=(components, 2))
    tint_u = rng.normal(size=(3, 3))
    tint_k = 2 * np.pi * frequency * tint_u / np.linalg.norm(tint_u, axis=1, keepdims=True)
    tint_phase0 = rng.uniform(0, 2 * np.pi, size=3)
    tint_b = rng.normal(0.0, 1.5, size=(3, 2))

    dc = np.asarray(frame_code, dtype=np.float64) - np.asarray(INPUT_CODE)
    dev, dt = gaussians.means.device, gaussians.means.dtype
    T = lambda x: torch.as_tensor(np.asarray(x), dtype=dt, device=dev)  # noqa: E731
    x = gaussians.means.detach()
    out = Gaussians(**gaussians.tensors())
    if amplitude > 0.0:
        waves = torch.sin(x @ T(k).T + T(phase0 + 2 * np.pi * (b @ dc)))  # [N, K]
        out.means = gaussians.means + (amplitude * weight * math.sqrt(2.0 / components)) * (waves @ T(a))
    if colour > 0.0:
        tint = torch.sin(x @ T(tint_k).T + T(tint_phase0 + 2 * np.pi * (tint_b @ dc)))  # [N, 3]
        out.sh0 = gaussians.sh0 + ((colour * weight * math.sqrt(2.0) / SH_C0) * tint)[:, None, :]
    return out


def distort_scene_gaussians(
    scene: SyntheticScene, frame_code, distortion: float, gaussians: Gaussians | None = None
) -> Gaussians:
    """:func:`distort_gaussians` in the scene's units: ``distortion`` is a fraction of ``scene.scale``.

    ``gaussians`` defaults to ``scene.gaussians`` (pass a copy on another device to render there).
    """
    return distort_gaussians(
        scene.gaussians if gaussians is None else gaussians,
        frame_code,
        distortion * scene.scale,
        scene.seed,
        frequency=scene.distortion_frequency / scene.scale,
        colour=scene.distortion_colour * distortion,
    )


# -- rendering frames ----------------------------------------------------------------------------


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
    (:func:`composite_order`, see the module docstring), so the frames are consistent with their cameras; the
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


# -- evaluation helpers ------------------------------------------------------------------------------


def eval_cameras(tree, n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out cameras between the tree's clips, never on them.

    Each is an interpolation (slerp rotation, lerp centre, same weight for the frame code) between
    frame t of two sibling clips (same parent) whose motions are roughly orthogonal (|cos| < 0.7
    between their displacements and < 120 degrees between their final rotations, e.g. "up" and
    "orbit right"), at a weight in [0.3, 0.7] and t in the
    clips' last three quarters, so it is off the tree and sees content both clips saw.

    Args:
        tree: :class:`CameraTree`.
        n: number of cameras.
        seed: selects pairs, t and weights.

    Returns:
        ``c2w [n, 4, 4]`` float64 OpenCV and ``frame_codes [n, 2]`` float64.
    """
    by_parent: dict = {}
    for clip in tree.clips:
        by_parent.setdefault(clip.parent, []).append(clip)
    pairs = []
    for sibs in by_parent.values():
        for i in range(len(sibs)):
            for j in range(i + 1, len(sibs)):
                a, b = sibs[i], sibs[j]
                ma = a.c2w[-1, :3, 3] - a.c2w[0, :3, 3]
                mb = b.c2w[-1, :3, 3] - b.c2w[0, :3, 3]
                cos = float(ma @ mb / max(np.linalg.norm(ma) * np.linalg.norm(mb), 1e-12))
                turn = float(np.degrees(rotation_angle(a.c2w[-1, :3, :3], b.c2w[-1, :3, :3])))
                # opposite moves (U/D, left/right orbit) would interpolate back onto the parent's path
                if abs(cos) < 0.7 and turn < 120.0:
                    pairs.append((a, b))
    if not pairs:
        raise Lift3DError("eval_cameras: the tree has no sibling clips moving in different directions")
    rng = np.random.default_rng([int(seed), 0xE7A1])
    c2w = np.zeros((n, 4, 4))
    codes = np.zeros((n, 2))
    for k in range(n):
        a, b = pairs[rng.integers(len(pairs))]
        T = min(len(a.c2w), len(b.c2w))
        t = int(rng.integers(max(1, T // 4), T))
        w = float(rng.uniform(0.3, 0.7))
        c2w[k] = interpolate_poses(a.c2w[t], b.c2w[t], np.array([w]))[0]
        codes[k] = (1 - w) * np.asarray(a.frame_code[t]) + w * np.asarray(b.frame_code[t])
    return c2w, codes


def sample_surface_points(scene: SyntheticScene, n: int, noise_std: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy points on the scene's surfaces, uniform by area, with their colours.

    Each point picks a surface sample (disc) with probability proportional to its cell area,
    a uniform position within that cell in the tangent plane (kept inside the room), then
    isotropic Gaussian noise.

    Args:
        scene: :class:`SyntheticScene`.
        n: number of points.
        noise_std: std of the added noise, scene units.
        seed: random seed.

    Returns:
        ``xyz float32 [n, 3]`` world and ``rgb uint8 [n, 3]``.
    """
    rng = np.random.default_rng([int(seed), 0x5A3])
    half = scene.surface_half.astype(np.float64)
    area = 4.0 * half[:, 0] * half[:, 1]
    idx = rng.choice(len(area), size=int(n), p=area / area.sum())
    ab = rng.uniform(-1.0, 1.0, size=(int(n), 2)) * half[idx]
    tang = scene.surface_tangents[idx].astype(np.float64)
    xyz = scene.surface_xyz[idx] + ab[:, 0:1] * tang[:, 0] + ab[:, 1:2] * tang[:, 1]
    xyz = np.clip(xyz, scene.bounds[0], scene.bounds[1])  # wall cells centred on the room's edges overhang them
    xyz = xyz + rng.normal(0.0, noise_std, size=xyz.shape)
    return xyz.astype(np.float32), scene.surface_rgb[idx].copy()


__all__ = [
    "DISTORTION_LEVELS",
    "INPUT_CODE",
    "PRESETS",
    "SurfaceLayers",
    "SyntheticConfig",
    "SyntheticScene",
    "build_scene",
    "check_cameras_inside",
    "composite_order",
    "distort_gaussians",
    "distortion_weight",
    "eval_cameras",
    "fit_photo",
    "generate_frames",
    "rasterize_in_order",
    "raycast_depth",
    "render_views",
    "sample_surface_points",
]
