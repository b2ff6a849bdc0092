"""Parity of the torch reference (on CUDA) and the gsplat backend. Skipped without CUDA or gsplat."""

import importlib.util
import math

import pytest
import torch

from lift3d_core.splat.gaussians import Gaussians, rgb_to_sh0
from lift3d_core.splat.render import RenderOutput, available_backends, render

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("gsplat") is None,
    reason="needs CUDA and gsplat",
)

W, H, N = 128, 96, 2000
FX = 0.5 * W / math.tan(math.radians(30.0))
K = torch.tensor([[FX, 0.0, W / 2], [0.0, FX, H / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN")


def scene(seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    z = 2.0 + 4.0 * torch.rand(N, generator=g)
    u = (torch.rand(N, generator=g) * 1.1 - 0.05) * W
    v = (torch.rand(N, generator=g) * 1.1 - 0.05) * H
    sigma_px = torch.exp(math.log(0.5) + math.log(8.0) * torch.rand(N, generator=g))
    return Gaussians(
        means=torch.stack([(u - W / 2) / FX * z, (v - H / 2) / FX * z, z], -1),
        log_scales=torch.log(sigma_px * z / FX)[:, None] + 0.5 * torch.randn(N, 3, generator=g),
        quats=torch.randn(N, 4, generator=g),
        opacity_logits=torch.randn(N, generator=g),
        sh0=rgb_to_sh0(torch.rand(N, 1, 3, generator=g)),
        shN=0.2 * torch.randn(N, 15, 3, generator=g),
    ).to("cuda")


def cameras() -> torch.Tensor:
    c2w = []
    for a in (-12.0, 0.0, 9.0):
        r = math.radians(a)
        R = torch.tensor(
            [[math.cos(r), 0.0, math.sin(r)], [0.0, 1.0, 0.0], [-math.sin(r), 0.0, math.cos(r)]], dtype=torch.float64
        )
        T = torch.eye(4, dtype=torch.float64)
        T[:3, :3] = R
        T[:3, 3] = torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64) - R @ torch.tensor(
            [0.0, 0.0, 4.0], dtype=torch.float64
        )
        c2w.append(T)
    return torch.stack(c2w)


def render_and_grads(backend: str):
    params = scene().map(lambda t: t.requires_grad_())
    out = render(params, cameras(), K, W, H, backend=backend, background=torch.tensor([0.2, 0.1, 0.3]))
    gen = torch.Generator().manual_seed(1)
    w_rgb, w_alpha, w_depth = (torch.rand(3, H, W, k, generator=gen).cuda() for k in (3, 1, 1))
    ((out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum() + 0.1 * (out.depth * w_depth).sum()).backward()
    return out, {name: getattr(params, name).grad for name in NAMES}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def test_gsplat_is_available():
    assert "gsplat" in available_backends()


def test_torch_and_gsplat_agree_on_images_and_gradients():
    ref, ref_grads = render_and_grads("torch")
    out, grads = render_and_grads("gsplat")
    means2d_grads = out.means2d.grad, ref.means2d.grad
    ref, out = (RenderOutput(**{k: v.detach() for k, v in vars(o).items()}) for o in (ref, out))
    for name in ("rgb", "alpha"):
        assert getattr(out, name).shape == getattr(ref, name).shape
        assert float((getattr(out, name) - getattr(ref, name)).abs().mean()) < 1e-3, name
    hit = (ref.alpha > 0.5) & (out.alpha > 0.5)
    assert float((out.depth - ref.depth).abs()[hit].mean()) < 1e-3 * float(ref.depth[hit].mean())
    assert out.radii.shape == ref.radii.shape == (3, N) and out.radii.dtype == torch.int32
    assert (
        torch.equal(out.radii > 0, ref.radii > 0) or float(((out.radii > 0) != (ref.radii > 0)).float().mean()) < 1e-3
    )
    for name in NAMES:
        assert cosine(grads[name], ref_grads[name]) > 0.99, name
    assert cosine(*means2d_grads) > 0.99


def test_per_camera_gaussians_in_one_gsplat_call_equal_one_render_per_camera():
    # render_w2c_each: each camera its own moved copy of the Gaussians (shN shared), one batched gsplat call;
    # against one gsplat render per camera: the same images, screen-space gradients and parameter gradients.
    from lift3d_core.splat.render import render_w2c, render_w2c_each

    viewmats = torch.linalg.inv(cameras()).float().cuda()
    Ks = K.float().cuda().expand(3, 3, 3).contiguous()
    bg = torch.tensor([0.2, 0.1, 0.3], device="cuda")
    gen = torch.Generator().manual_seed(3)
    shifts = [0.05 * torch.randn(N, 3, generator=gen).cuda() for _ in range(3)]
    weights = torch.rand(3, H, W, 3, generator=gen).cuda()

    def run(batched: bool):
        params = scene().map(lambda t: t.requires_grad_())
        moved = [Gaussians(**{**params.tensors(), "means": params.means + s, "log_scales": params.log_scales * 1.0})
                 for s in shifts]
        if batched:
            out = render_w2c_each(moved, viewmats, Ks, W, H, backend="gsplat", background=bg, sh_degree=3)
            means2d_grad = lambda: out.means2d.grad  # noqa: E731
        else:
            outs = [render_w2c(g, viewmats[c : c + 1], Ks[c : c + 1], W, H, backend="gsplat", background=bg,
                               sh_degree=3) for c, g in enumerate(moved)]
            out = RenderOutput(**{k: torch.cat([getattr(o, k) for o in outs]) for k in ("rgb", "alpha", "depth",
                                                                                        "means2d", "radii")})
            means2d_grad = lambda: torch.cat([o.means2d.grad for o in outs])  # noqa: E731
        ((out.rgb * weights).sum() + out.alpha.sum()).backward()
        return out, means2d_grad(), {name: getattr(params, name).grad for name in NAMES}

    (a, a2d, ga), (b, b2d, gb) = run(True), run(False)
    assert a.rgb.shape == (3, H, W, 3) and a.means2d.shape == (3, N, 2) and a.radii.shape == (3, N)
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-5)
    assert torch.equal(a.radii, b.radii)
    seen = a.radii > 0  # gsplat leaves the screen position of a culled Gaussian unwritten
    assert seen.float().mean() > 0.5
    torch.testing.assert_close(a.means2d.detach()[seen], b.means2d.detach()[seen])
    assert cosine(a2d[seen], b2d[seen]) > 0.9999 and not a2d[~seen].any()
    for name in NAMES:
        assert cosine(ga[name], gb[name]) > 0.9999, name
