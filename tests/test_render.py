"""The torch rasterizer against analytic values, a per-pixel reference and finite differences (CPU)."""

import math

import numpy as np
import pytest
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import SH_C0, Gaussians, rgb_to_sh0
from lift3d_core.splat.render import BACKENDS, RenderOutput, available_backends, render
from lift3d_core.splat.sh import eval_sh

W, H = 40, 30
FX = FY = 36.0
K = np.array([[FX, 0.0, W / 2], [0.0, FY, H / 2], [0.0, 0.0, 1.0]])
EYE = np.eye(4)


def gaussians(means, sigma, opacity, rgb, degree=0, dtype=torch.float64):
    """Isotropic Gaussians from plain lists (identity rotations)."""
    n = len(means)
    return Gaussians(
        means=torch.tensor(means, dtype=dtype),
        log_scales=torch.full((n, 3), math.log(sigma), dtype=dtype),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]] * n, dtype=dtype),
        opacity_logits=torch.logit(torch.tensor(opacity, dtype=dtype)),
        sh0=rgb_to_sh0(torch.tensor(rgb, dtype=dtype))[:, None, :],
        shN=torch.zeros(n, (degree + 1) ** 2 - 1, 3, dtype=dtype),
    )


def random_gaussians(n, seed, degree=1, dtype=torch.float64, width=W, height=H, fx=FX):
    g = torch.Generator().manual_seed(seed)
    z = 2.0 + 3.0 * torch.rand(n, generator=g, dtype=torch.float64)
    u = (torch.rand(n, generator=g, dtype=torch.float64) * 1.2 - 0.1) * width
    v = (torch.rand(n, generator=g, dtype=torch.float64) * 1.2 - 0.1) * height
    means = torch.stack([(u - width / 2) / fx * z, (v - height / 2) / fx * z, z], -1)
    sigma_px = 0.6 + 3.0 * torch.rand(n, generator=g, dtype=torch.float64)
    return Gaussians(
        means=means,
        log_scales=torch.log(sigma_px * z / fx)[:, None] + 0.4 * torch.randn(n, 3, generator=g, dtype=torch.float64),
        quats=torch.randn(n, 4, generator=g, dtype=torch.float64),
        opacity_logits=torch.randn(n, generator=g, dtype=torch.float64),
        sh0=torch.randn(n, 1, 3, generator=g, dtype=torch.float64),
        shN=0.3 * torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g, dtype=torch.float64),
    ).map(lambda t: t.to(dtype))


def orbit_c2w(angle_deg):
    """A camera rotated about the world y axis around the point (0, 0, 3.5), looking at it."""
    a = math.radians(angle_deg)
    R = np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    c2w = np.eye(4)
    c2w[:3, :3] = R
    c2w[:3, 3] = np.array([0.0, 0.0, 3.5]) - R @ np.array([0.0, 0.0, 3.5])
    return c2w


def reference_render(g: Gaussians, c2w, K_, width, height, near=0.01, far=1e10):
    """The obvious per-pixel implementation of the same maths, in numpy float64."""
    t = {k: v.detach().double().numpy() for k, v in g.tensors().items()}
    w2c = np.linalg.inv(c2w)
    R, tr = w2c[:3, :3], w2c[:3, 3]
    fx, fy, cx, cy = K_[0, 0], K_[1, 1], K_[0, 2], K_[1, 2]
    q = t["quats"] / np.linalg.norm(t["quats"], axis=1, keepdims=True)
    rgb = np.zeros((height, width, 3))
    acc = np.zeros((height, width))
    dep = np.zeros((height, width))
    items = []
    for i in range(len(q)):
        p = R @ t["means"][i] + tr
        if not near <= p[2] <= far:
            continue
        w, x, y, z = q[i]
        Rq = np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
            ]
        )
        cov = Rq @ np.diag(np.exp(2 * t["log_scales"][i])) @ Rq.T
        lim_x, lim_y = 1.3 * 0.5 * width / fx, 1.3 * 0.5 * height / fy  # principal point at the centre
        txz = np.clip(p[0] / p[2], -lim_x, lim_x)
        tyz = np.clip(p[1] / p[2], -lim_y, lim_y)
        J = np.array([[fx / p[2], 0, -fx * txz / p[2]], [0, fy / p[2], -fy * tyz / p[2]]])
        cov2d = J @ R @ cov @ R.T @ J.T + 0.3 * np.eye(2)
        mean2d = np.array([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])
        dirs = t["means"][i] - c2w[:3, 3]
        dirs = torch.tensor(dirs / np.linalg.norm(dirs))[None]
        sh = torch.tensor(np.concatenate([t["sh0"][i], t["shN"][i]]))[None]
        colour = np.maximum(eval_sh(sh, dirs)[0].numpy() + 0.5, 0.0)
        opacity = 1 / (1 + np.exp(-t["opacity_logits"][i]))
        items.append((p[2], mean2d, np.linalg.inv(cov2d), opacity, colour))
    items.sort(key=lambda it: it[0])
    for v in range(height):
        for u in range(width):
            T, pix = 1.0, np.array([u + 0.5, v + 0.5])
            for z, mean2d, conic, opacity, colour in items:
                d = mean2d - pix
                alpha = min(0.999, opacity * math.exp(-0.5 * d @ conic @ d))
                if alpha < 1 / 255:
                    continue
                if T * (1 - alpha) <= 1e-4:
                    break
                rgb[v, u] += T * alpha * colour
                acc[v, u] += T * alpha
                dep[v, u] += T * alpha * z
                T *= 1 - alpha
    return rgb, acc, np.where(acc > 0, dep / np.maximum(acc, 1e-10), 0.0)


# -- analytic single Gaussian -------------------------------------------------------


def test_single_gaussian_matches_analytic_2d_gaussian():
    X, Y, Z, sigma, opacity = 0.31, -0.17, 2.5, 0.06, 0.8
    out = render(gaussians([[X, Y, Z]], sigma, [opacity], [[0.2, 0.6, 0.9]]), EYE, K, W, H)
    assert isinstance(out, RenderOutput)
    mean2d = np.array([FX * X / Z + W / 2, FY * Y / Z + H / 2])
    np.testing.assert_allclose(out.means2d[0, 0].detach().numpy(), mean2d, rtol=0, atol=1e-12)

    # Sigma_2d = sigma^2 J J^T + 0.3 I for an isotropic Gaussian (no frustum clamp this close to the axis).
    J = np.array([[FX / Z, 0, -FX * X / Z**2], [0, FY / Z, -FY * Y / Z**2]])
    conic = np.linalg.inv(sigma**2 * J @ J.T + 0.3 * np.eye(2))
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    d = np.stack([u - mean2d[0], v - mean2d[1]], -1)
    expected = opacity * np.exp(-0.5 * np.einsum("hwi,ij,hwj->hw", d, conic, d))
    expected[expected < 1 / 255] = 0.0
    alpha = out.alpha[0, ..., 0].detach().numpy()
    np.testing.assert_allclose(alpha, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(out.rgb[0].detach().numpy(), expected[..., None] * [0.2, 0.6, 0.9], rtol=0, atol=1e-9)
    # The peak is in the pixel that contains the projected mean.
    assert np.unravel_index(alpha.argmax(), alpha.shape) == (int(mean2d[1]), int(mean2d[0]))
    np.testing.assert_allclose(out.depth[0, ..., 0].detach().numpy()[expected > 0], Z, rtol=0, atol=1e-12)
    assert (out.depth[0][out.alpha[0] == 0] == 0).all()
    assert out.radii.shape == (1, 1) and out.radii.dtype == torch.int32 and int(out.radii[0, 0]) > 0


def test_pixel_centre_convention():
    # Projects to x = 10.5 exactly: the centre of pixel 10, where alpha equals the opacity.
    Z = 3.0
    X, Y = (10.5 - W / 2) * Z / FX, (7.5 - H / 2) * Z / FY
    alpha = render(gaussians([[X, Y, Z]], 0.05, [0.7], [[1, 1, 1]]), EYE, K, W, H).alpha[0, ..., 0]
    assert alpha[7, 10] == pytest.approx(0.7, abs=1e-12)
    assert alpha[7, 9] == pytest.approx(float(alpha[7, 11]), abs=1e-12)
    # Projects to x = 10.0: the boundary between pixels 9 and 10, which then see equal alpha.
    X = (10.0 - W / 2) * Z / FX
    alpha = render(gaussians([[X, Y, Z]], 0.05, [0.7], [[1, 1, 1]]), EYE, K, W, H).alpha[0, ..., 0]
    assert alpha[7, 9] == pytest.approx(float(alpha[7, 10]), abs=1e-12)
    assert alpha[7, 9] < 0.7


def at_pixel_centre(u, v, z):
    """The 3D point at depth z (identity camera) that projects to the centre of pixel (u, v)."""
    return [(u + 0.5 - W / 2) * z / FX, (v + 0.5 - H / 2) * z / FY, z]


def test_two_gaussians_occlude_in_depth_order():
    near_c, far_c = [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]
    g = gaussians(
        [at_pixel_centre(W // 2, H // 2, 2.0), at_pixel_centre(W // 2, H // 2, 4.0)], 0.2, [0.9, 0.9], [near_c, far_c]
    )
    rgb = render(g, EYE, K, W, H).rgb[0, H // 2, W // 2].detach().numpy()
    np.testing.assert_allclose(rgb, 0.9 * np.array(near_c) + 0.1 * 0.9 * np.array(far_c), atol=1e-9)
    # Listing order does not matter, only depth does.
    swapped = gaussians(
        [at_pixel_centre(W // 2, H // 2, 4.0), at_pixel_centre(W // 2, H // 2, 2.0)], 0.2, [0.9, 0.9], [far_c, near_c]
    )
    np.testing.assert_allclose(render(swapped, EYE, K, W, H).rgb[0, H // 2, W // 2].numpy(), rgb, atol=1e-12)
    depth = render(g, EYE, K, W, H).depth[0, H // 2, W // 2, 0]
    assert float(depth) == pytest.approx((0.9 * 2.0 + 0.09 * 4.0) / 0.99, abs=1e-9)


def test_opaque_stack_stops_at_transmittance_cutoff():
    # Each layer has alpha = 0.999 at its centre: T = 1e-3 after one, 1e-6 would follow, so the
    # second layer is never composited and the third is irrelevant.
    centres = [at_pixel_centre(W // 2, H // 2, z) for z in (2.0, 3.0, 4.0)]
    g = gaussians(centres, 0.3, [0.9999] * 3, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    out = render(g, EYE, K, W, H)
    np.testing.assert_allclose(out.rgb[0, H // 2, W // 2].numpy(), [0.999, 0, 0], atol=1e-12)
    assert float(out.alpha[0, H // 2, W // 2, 0]) == pytest.approx(0.999, abs=1e-12)


# -- against the per-pixel reference --------------------------------------------------


def test_matches_per_pixel_reference_on_random_scene():
    g = random_gaussians(60, seed=1, degree=2)
    c2w = np.stack([EYE, orbit_c2w(12.0)])
    out = render(g, c2w, K, W, H)
    for c in range(2):
        rgb, alpha, depth = reference_render(g, c2w[c], K, W, H)
        np.testing.assert_allclose(out.rgb[c].numpy(), rgb, rtol=0, atol=1e-9)
        np.testing.assert_allclose(out.alpha[c, ..., 0].numpy(), alpha, rtol=0, atol=1e-9)
        np.testing.assert_allclose(out.depth[c, ..., 0].numpy(), depth, rtol=0, atol=1e-8)


def test_float32_matches_float64():
    g = random_gaussians(300, seed=2, degree=3)
    out64 = render(g, EYE, K, W, H)
    out32 = render(g.map(lambda t: t.float()), EYE, K, W, H)
    assert out32.rgb.dtype == torch.float32 and out64.rgb.dtype == torch.float64
    assert (out32.rgb.double() - out64.rgb).abs().max() < 2e-4
    assert (out32.alpha.double() - out64.alpha).abs().max() < 2e-4


def test_cameras_batched_equal_cameras_alone():
    g = random_gaussians(200, seed=3)
    c2w = np.stack([orbit_c2w(a) for a in (-10.0, 0.0, 15.0)])
    both = render(g, c2w, K, W, H)
    for c in range(3):
        alone = render(g, c2w[c], K, W, H)
        for name in ("rgb", "alpha", "depth", "means2d", "radii"):
            assert torch.equal(getattr(both, name)[c], getattr(alone, name)[0]), name


# -- gradients ------------------------------------------------------------------------


def test_gradients_match_central_finite_differences():
    g = random_gaussians(7, seed=4, degree=1, width=16, height=12, fx=14.0)
    K_small = np.array([[14.0, 0, 8.0], [0, 14.0, 6.0], [0, 0, 1.0]])
    c2w = np.stack([EYE, orbit_c2w(8.0)])
    bg = torch.tensor([0.1, 0.3, 0.2], dtype=torch.float64)
    wgen = torch.Generator().manual_seed(5)
    w_rgb, w_alpha, w_depth = (torch.rand(2, 12, 16, k, generator=wgen, dtype=torch.float64) for k in (3, 1, 1))

    def loss(params: Gaussians):
        out = render(params, c2w, K_small, 16, 12, background=bg)
        return (out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum() + 0.1 * (out.depth * w_depth).sum()

    params = g.map(lambda t: t.clone().requires_grad_())
    loss(params).backward()
    eps = 1e-6
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh0", "shN"):
        base = getattr(g, name)
        numeric = torch.zeros_like(base).reshape(-1)
        for i in range(base.numel()):
            for sign in (1, -1):
                t = base.clone().reshape(-1)
                t[i] += sign * eps
                numeric[i] += sign * loss(Gaussians(**{**g.tensors(), name: t.reshape(base.shape)})) / (2 * eps)
        analytic = getattr(params, name).grad.reshape(-1)
        np.testing.assert_allclose(analytic.numpy(), numeric.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


def test_gradients_behind_saturated_pixels_are_zero_and_match_finite_differences():
    # Six nearly uniform layers with alpha ~0.95 over a small image: every pixel stops after the
    # third (T = 0.05^3 > 1e-4 > 0.05^4), so the last three layers get neither colour nor gradient.
    z = [2.0, 2.4, 2.8, 3.2, 3.6, 4.0]
    means = [[0.01 * i, -0.01 * i, zi] for i, zi in enumerate(z)]
    rgb = [[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.5, 0.5, 0.1], [0.1, 0.5, 0.5], [0.5, 0.1, 0.5]]
    g = gaussians(means, 5.0, [0.95] * 6, rgb)
    K8 = np.array([[8.0, 0, 4.0], [0, 8.0, 4.0], [0, 0, 1.0]])
    weights = torch.rand(1, 8, 8, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def loss(params):
        out = render(params, EYE, K8, 8, 8)
        return (out.rgb * weights).sum() + out.depth.sum()

    params = g.map(lambda t: t.clone().requires_grad_())
    loss(params).backward()
    for name in ("means", "log_scales", "opacity_logits", "sh0"):
        grad = getattr(params, name).grad
        assert (grad[3:] == 0).all() and (grad[:3] != 0).any(), name
        base = getattr(g, name)
        for i in range(3 * base[0].numel()):
            numeric = 0.0
            for sign in (1, -1):
                t = base.clone().reshape(-1)
                t[i] += sign * 1e-6
                numeric += sign * float(loss(Gaussians(**{**g.tensors(), name: t.reshape(base.shape)}))) / 2e-6
            assert float(grad.reshape(-1)[i]) == pytest.approx(numeric, rel=1e-5, abs=1e-7), (name, i)


def test_means2d_gradient_is_retained_in_pixels():
    g = random_gaussians(50, seed=6).map(lambda t: t.clone().requires_grad_())
    c2w = np.stack([EYE, orbit_c2w(10.0)])
    out = render(g, c2w, K, W, H)
    assert out.means2d.shape == (2, 50, 2)
    out.rgb.sum().backward()
    assert out.means2d.grad is not None and out.means2d.grad.shape == (2, 50, 2)
    assert (out.means2d.grad[out.radii == 0] == 0).all()


def test_means2d_gradient_equals_pixel_shift_derivative():
    # An isotropic, view-independent Gaussian on the optical axis: to first order, moving it
    # sideways in 3D moves its projection and nothing else, so dL/dx_3d = dL/du * fx / z.
    z = 2.5
    g = gaussians([[0.0, 0.0, z], [0.3, 0.1, 3.5]], 0.08, [0.7, 0.6], [[0.9, 0.2, 0.1], [0.1, 0.5, 0.8]])
    weights = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def loss(params):
        out = render(params, EYE, K, W, H)
        return (out.rgb * weights).sum() + out.alpha.sum(), out

    value, out = loss(g.map(lambda t: t.clone().requires_grad_()))
    value.backward()
    for axis, f in ((0, FX), (1, FY)):
        numeric = 0.0
        for sign in (1, -1):
            means = g.means.clone()
            means[0, axis] += sign * 1e-6
            numeric += sign * float(loss(Gaussians(**{**g.tensors(), "means": means}))[0]) / 2e-6
        assert float(out.means2d.grad[0, 0, axis]) == pytest.approx(numeric * z / f, rel=1e-6)


# -- conventions and properties ---------------------------------------------------------


def test_alpha_in_unit_interval_and_background_compositing():
    g = random_gaussians(400, seed=7, dtype=torch.float32)
    black = render(g, EYE, K, W, H)
    bg = torch.tensor([0.25, 0.5, 1.0])
    white = render(g, EYE, K, W, H, background=bg)
    assert float(black.alpha.min()) >= 0.0 and float(black.alpha.max()) <= 1.0
    assert float(black.alpha.max()) > 0.99  # opaque somewhere
    torch.testing.assert_close(white.rgb, black.rgb + (1 - black.alpha) * bg, rtol=0, atol=1e-6)
    torch.testing.assert_close(white.alpha, black.alpha)
    torch.testing.assert_close(white.depth, black.depth)


def test_sh_degree_0_equals_degree_3_with_zero_higher_coefficients():
    g0 = random_gaussians(100, seed=8, degree=0)
    g3 = Gaussians(**{**g0.tensors(), "shN": torch.zeros(100, 15, 3, dtype=torch.float64)})
    c2w = orbit_c2w(20.0)
    assert torch.equal(render(g0, c2w, K, W, H).rgb, render(g3, c2w, K, W, H).rgb)
    # sh_degree=0 ignores the higher bands.
    g3r = Gaussians(**{**g0.tensors(), "shN": torch.randn(100, 15, 3, dtype=torch.float64)})
    assert torch.equal(render(g3r, c2w, K, W, H, sh_degree=0).rgb, render(g0, c2w, K, W, H).rgb)


def test_culling_near_far_and_behind():
    g = gaussians([[0, 0, -2.0], [0, 0, 0.005], [0, 0, 50.0], [0, 0, 3.0]], 0.1, [0.9] * 4, [[1, 1, 1]] * 4)
    out = render(g, EYE, K, W, H, far=10.0)
    assert out.radii[0].tolist()[:3] == [0, 0, 0] and int(out.radii[0, 3]) > 0
    only = render(g[torch.tensor([3])], EYE, K, W, H)
    assert torch.equal(out.rgb, only.rgb)
    for nothing in (g[torch.tensor([0, 1])], g[torch.zeros(4, dtype=torch.bool)]):
        empty = render(nothing, EYE, K, W, H, background=torch.tensor([0.5, 0.5, 0.5]))
        assert (empty.alpha == 0).all() and (empty.depth == 0).all() and (empty.rgb == 0.5).all()
        assert empty.radii.shape == (1, nothing.num)


def test_eval_sh_matches_scipy_real_harmonics():
    special = pytest.importorskip("scipy.special")
    dirs = torch.nn.functional.normalize(
        torch.tensor([[0.3, -0.5, 0.81], [-0.9, 0.1, 0.2], [0.0, 0.0, 1.0]], dtype=torch.float64), dim=-1
    )
    theta = torch.arccos(dirs[:, 2]).numpy()  # polar
    phi = torch.atan2(dirs[:, 1], dirs[:, 0]).numpy()  # azimuth
    for k in range(16):
        l = math.isqrt(k)  # noqa: E741 - l, m: the SH degree and order, as in the formulas
        m = k - l * l - l
        Y = special.sph_harm_y(l, abs(m), theta, phi)  # complex, with the Condon-Shortley phase
        if m == 0:
            real = Y.real
        elif m > 0:
            real = math.sqrt(2) * (-1) ** m * Y.real
        else:
            real = math.sqrt(2) * (-1) ** m * Y.imag
        expected = (-1) ** m * real  # 3DGS drops the Condon-Shortley phase
        sh = torch.zeros(3, 16, 3, dtype=torch.float64)
        sh[:, k, :] = 1.0
        np.testing.assert_allclose(eval_sh(sh, dirs)[:, 0].numpy(), expected, rtol=0, atol=1e-12, err_msg=f"k={k}")
    assert SH_C0 == pytest.approx(special.sph_harm_y(0, 0, 0.0, 0.0).real)


def test_unknown_backend_and_bad_inputs_raise():
    g = gaussians([[0, 0, 2.0]], 0.1, [0.5], [[1, 1, 1]])
    with pytest.raises(Lift3DError, match="torch, gsplat, inria"):
        render(g, EYE, K, W, H, backend="vulkan")
    with pytest.raises(Lift3DError, match="c2w"):
        render(g, np.eye(3), K, W, H)
    with pytest.raises(Lift3DError, match="sh_degree"):
        render(g, EYE, K, W, H, sh_degree=2)
    assert "torch" in available_backends() and set(available_backends()) <= set(BACKENDS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this checks the message shown without CUDA")
def test_gsplat_backend_without_cuda_says_how_to_install():
    g = gaussians([[0, 0, 2.0]], 0.1, [0.5], [[1, 1, 1]]).map(lambda t: t.float())
    with pytest.raises(Lift3DError, match="pip install gsplat"):
        render(g, EYE, K, W, H, backend="gsplat")
    with pytest.raises(Lift3DError, match=r"diff.gaussian.rasterization"):
        render(g, EYE, K, W, H, backend="inria")
