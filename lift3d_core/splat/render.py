"""Render Gaussians into pinhole cameras: one function, several rasterizers.

Every backend follows gsplat's conventions (classic 3DGS EWA splatting, 0.3 px
dilation, ``rgb = SH(dir) + 0.5`` clamped at 0, pixel u's centre at u + 0.5) and
returns the same :class:`RenderOutput`; callers never branch on the backend.

- ``"torch"``: pure PyTorch (:mod:`lift3d_core.splat.raster_torch`), any device;
  the reference the others are tested against.
- ``"gsplat"``: gsplat's CUDA kernels (needs CUDA and ``pip install gsplat``).
- ``"inria"``: the original 3DGS ``diff_gaussian_rasterization``, if installed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, fields

import numpy as np
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians

BACKENDS = ("torch", "gsplat", "inria")


@dataclass
class RenderOutput:
    """What every backend returns for C cameras of an H x W image.

    Attributes:
        rgb: ``[C, H, W, 3]`` float, background composited as ``rgb + (1 - alpha) * bg``.
        alpha: ``[C, H, W, 1]`` accumulated opacity in [0, 1].
        depth: ``[C, H, W, 1]`` expected camera z-depth ``sum_i w_i z_i / alpha``, 0 where alpha is 0.
        means2d: ``[C, N, 2]`` projected means in pixels; ``retain_grad()`` was called when it
            requires grad, so ``means2d.grad`` holds the screen-space gradient after backward.
        radii: ``[C, N]`` int32 screen-space radius in pixels (max over x and y), 0 = culled.
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    means2d: torch.Tensor
    radii: torch.Tensor


def available_backends() -> list[str]:
    """Backends usable on this machine (without importing heavy CUDA modules)."""
    names = ["torch"]
    if torch.cuda.is_available():
        if importlib.util.find_spec("gsplat") is not None:
            names.append("gsplat")
        if importlib.util.find_spec("diff_gaussian_rasterization") is not None:
            names.append("inria")
    return names


def _as_batch(x, name: str, tail: tuple[int, ...]) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.shape == tail:
        t = t[None]
    if t.dim() != len(tail) + 1 or tuple(t.shape[1:]) != tail:
        raise Lift3DError(
            f"{name} must be [{', '.join(map(str, tail))}] or [C, {', '.join(map(str, tail))}], got {list(t.shape)}"
        )
    return t


def render(
    gaussians: Gaussians,
    c2w,
    K,
    width: int,
    height: int,
    *,
    backend: str = "torch",
    background: torch.Tensor | None = None,
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
) -> RenderOutput:
    """Rasterize ``gaussians`` into C cameras, differentiably w.r.t. every Gaussian tensor.

    Args:
        gaussians: N Gaussians (pre-activation parameters, see :class:`Gaussians`).
        c2w: ``[C, 4, 4]`` or ``[4, 4]`` camera-to-world, OpenCV axes (x right, y down, z forward).
        K: ``[C, 3, 3]`` or ``[3, 3]`` intrinsics in pixels of the ``width`` x ``height`` image.
        width, height: image size in pixels.
        backend: ``"torch"``, ``"gsplat"`` or ``"inria"``.
        background: ``[3]`` colour behind the Gaussians; None = black.
        sh_degree: SH bands to use (0..gaussians.sh_degree); None = all.
        near, far: camera-z clipping planes; Gaussians whose mean is outside are culled.

    Returns:
        :class:`RenderOutput` in the Gaussians' dtype and device.
    """
    if backend not in BACKENDS:
        raise Lift3DError(f"unknown render backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if int(width) <= 0 or int(height) <= 0:
        raise Lift3DError(f"image size must be positive, got {width}x{height}")
    if not 0 < near < far:
        raise Lift3DError(f"need 0 < near < far, got near={near}, far={far}")
    degree = gaussians.sh_degree if sh_degree is None else int(sh_degree)
    if not 0 <= degree <= gaussians.sh_degree:
        raise Lift3DError(f"sh_degree {sh_degree} outside 0..{gaussians.sh_degree} (the degree the Gaussians hold)")

    c2w = _as_batch(c2w, "c2w", (4, 4))
    K = _as_batch(K, "K", (3, 3))
    if len(K) == 1 and len(c2w) > 1:
        K = K.expand(len(c2w), 3, 3)
    if len(K) != len(c2w):
        raise Lift3DError(f"c2w holds {len(c2w)} cameras but K holds {len(K)}")
    dtype, device = gaussians.means.dtype, gaussians.device
    # Invert in float64: float32 inversion of a far-from-origin pose loses millimetres.
    viewmats = torch.linalg.inv(c2w.to(torch.float64)).to(device=device, dtype=dtype)
    return render_w2c(gaussians, viewmats, K.to(device=device, dtype=dtype), width, height, backend=backend,
                      background=background, sh_degree=degree, near=near, far=far)


def render_w2c(
    gaussians: Gaussians,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    backend: str = "torch",
    background: torch.Tensor | None = None,
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
) -> RenderOutput:
    """:func:`render` from cameras already on the Gaussians' device: the training loop's entry point.

    ``viewmats [C, 4, 4]`` world-to-camera (OpenCV axes) and ``Ks [C, 3, 3]``, both in the Gaussians' dtype and
    on their device; ``background`` likewise. Nothing is copied from the host, so a CUDA step queues its kernels
    without waiting for the device (a host-to-device copy of pageable memory synchronises the stream). The
    other arguments and the result are :func:`render`'s; the arguments are trusted (render validates them).
    """
    degree = gaussians.sh_degree if sh_degree is None else int(sh_degree)
    dtype, device = gaussians.means.dtype, gaussians.device
    if background is not None:
        background = torch.as_tensor(background, dtype=dtype, device=device).reshape(3)
    args = (
        gaussians.means,
        gaussians.quats,
        gaussians.scales,
        gaussians.opacities,
        gaussians.sh,
        viewmats,
        Ks,
        int(width),
        int(height),
        degree,
        background,
        float(near),
        float(far),
    )
    if backend == "torch":
        from lift3d_core.splat.raster_torch import rasterize_torch

        rgb, alpha, depth, means2d, radii = rasterize_torch(*args)
    elif backend == "gsplat":
        from lift3d_core.splat.raster_gsplat import rasterize_gsplat

        rgb, alpha, depth, means2d, radii = rasterize_gsplat(*args)
    else:
        from lift3d_core.splat.raster_inria import rasterize_inria

        rgb, alpha, depth, means2d, radii = rasterize_inria(*args)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii)


def render_w2c_each(
    gaussians: list[Gaussians],
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    *,
    backend: str = "torch",
    background: torch.Tensor | None = None,
    sh_degree: int | None = None,
    near: float = 0.01,
    far: float = 1e10,
) -> RenderOutput:
    """:func:`render_w2c` of C cameras where camera ``c`` sees its own Gaussians ``gaussians[c]`` (all with the
    same N: e.g. one set moved differently for each frame), as one :class:`RenderOutput` with C images whose
    ``means2d [C, N, 2]`` row ``c`` is ``gaussians[c]``'s and whose ``.grad`` backward fills.

    ``gsplat`` renders all C in one call (its batch dimensions); a tensor that every camera shares (the same
    object in each ``gaussians[c]``) is passed once, not stacked. The other backends render camera by camera.
    """
    if len(gaussians) != viewmats.shape[0] or len(gaussians) != Ks.shape[0]:
        raise Lift3DError(f"{len(gaussians)} sets of Gaussians for {viewmats.shape[0]} cameras and {Ks.shape[0]} Ks")
    if len({g.num for g in gaussians}) != 1:
        raise Lift3DError(f"per-camera Gaussians must have one size, got {sorted({g.num for g in gaussians})}")
    if backend != "gsplat" or len(gaussians) == 1:
        return stack_renders([
            render_w2c(g, viewmats[c : c + 1], Ks[c : c + 1], width, height, backend=backend, background=background,
                       sh_degree=sh_degree, near=near, far=far)
            for c, g in enumerate(gaussians)
        ])
    count = len(gaussians)

    def stacked(name: str) -> torch.Tensor:
        tensors = [getattr(g, name) for g in gaussians]
        return tensors[0] if all(t is tensors[0] for t in tensors) else torch.stack(tensors)

    # tensors [C, N, ...] where the cameras' Gaussians differ, [N, ...] where they share one (gsplat broadcasts)
    per_camera = Gaussians(**{name: stacked(name) for name in Gaussians.field_names()})
    if per_camera.sh0.dim() != per_camera.shN.dim():  # SH bands concatenate: both per camera then
        per_camera.sh0 = per_camera.sh0.expand(count, *gaussians[0].sh0.shape)
        per_camera.shN = per_camera.shN.expand(count, *gaussians[0].shN.shape)
    return render_w2c(per_camera, viewmats, Ks, width, height, backend=backend, background=background,
                      sh_degree=sh_degree, near=near, far=far)


def stack_renders(outs: list[RenderOutput]) -> RenderOutput:
    """Concatenate renders along C (e.g. frames of differently deformed Gaussians) into one ``RenderOutput``.

    The loss flows through the parts' ``means2d``, not through a concatenation of them, so the stacked
    ``means2d [C, N, 2]`` is a fresh leaf whose ``.grad`` backward hooks on the parts fill: the densification
    strategy reads it as it reads a batched render's.
    """
    if len(outs) == 1:
        return outs[0]
    means2d = torch.cat([o.means2d.detach() for o in outs]).requires_grad_(any(o.means2d.requires_grad for o in outs))
    start = 0
    for o in outs:
        if o.means2d.requires_grad:
            o.means2d.register_hook(_grad_writer(means2d, start, start + o.means2d.shape[0]))
        start += o.means2d.shape[0]
    parts = {f.name: torch.cat([getattr(o, f.name) for o in outs]) for f in fields(RenderOutput) if f.name != "means2d"}
    return RenderOutput(means2d=means2d, **parts)


def _grad_writer(stacked: torch.Tensor, lo: int, hi: int):
    def write(grad: torch.Tensor) -> None:
        if stacked.grad is None:
            stacked.grad = torch.zeros_like(stacked)
        stacked.grad[lo:hi] += grad

    return write

