"""Analytic primitives of the synthetic scene (boxes, spheres, upright cylinders) and ray casting against them.

Conventions as in :mod:`lift3d_core.synthetic`: OpenCV axes (x right, y down, z forward), rays ``o, d [P, 3]``
float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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
