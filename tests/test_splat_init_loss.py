import math

import numpy as np
import pytest
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import sh0_to_rgb
from lift3d_core.splat.init import in_view_mask, init_gaussians, knn_mean_distance
from lift3d_core.splat.loss import (
    align_scale_shift,
    inverse_depth_loss,
    photometric_loss,
    ssim,
    ssim_map,
)


def _grid(n: int, spacing: float) -> np.ndarray:
    g = np.arange(n, dtype=np.float32) * spacing
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)


def test_init_scales_equal_analytic_knn_on_grid():
    spacing = 0.25
    xyz = _grid(6, spacing)
    rgb = np.full_like(xyz, 200, dtype=np.uint8)
    g = init_gaussians(xyz, rgb, sh_degree=3, init_opacity=0.1)
    # Every grid point has >= 3 neighbours at exactly one spacing (corners have exactly 3).
    np.testing.assert_allclose(g.scales.numpy(), spacing, rtol=1e-6)
    assert g.shN.shape == (xyz.shape[0], 15, 3) and torch.all(g.shN == 0)
    np.testing.assert_allclose(g.opacities.numpy(), 0.1, rtol=1e-6)
    assert torch.equal(g.quats, torch.tensor([[1.0, 0, 0, 0]]).expand_as(g.quats))
    np.testing.assert_allclose(sh0_to_rgb(g.sh0[:, 0]).numpy(), 200 / 255, rtol=1e-6)
    assert torch.equal(g.means, torch.from_numpy(xyz))


def test_knn_scipy_and_torch_agree():
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(700, 3)).astype(np.float32) * np.array([3.0, 1.0, 0.2], np.float32)
    xyz[5] = xyz[6]  # a duplicate point: distance 0 must be handled the same
    a = knn_mean_distance(xyz, method="scipy")
    # A tiny chunk budget exercises the chunked loop (several row blocks).
    b = knn_mean_distance(torch.from_numpy(xyz), method="torch", chunk_bytes=64 * 700 * 4)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
    rgb = np.zeros((700, 3), np.uint8)
    assert torch.equal(init_gaussians(xyz, rgb).log_scales, init_gaussians(xyz, rgb, knn_method="torch").log_scales)


def test_init_validates_inputs():
    xyz = np.zeros((10, 3), np.float32)
    rgb = np.zeros((10, 3), np.uint8)
    with pytest.raises(Lift3DError, match="uint8"):
        init_gaussians(xyz, rgb.astype(np.float32))
    with pytest.raises(Lift3DError, match=r"\[P, 3\]"):
        init_gaussians(xyz[:, :2], rgb)
    bad = xyz.copy()
    bad[3, 1] = np.nan
    with pytest.raises(Lift3DError, match="NaN"):
        init_gaussians(bad, rgb)
    with pytest.raises(Lift3DError, match="init_opacity"):
        init_gaussians(xyz, rgb, init_opacity=1.0)


def test_in_view_mask_is_the_union_of_camera_frustums():
    K = np.array([[10.0, 0, 8], [0, 10.0, 6], [0, 0, 1]])  # 16x12 image
    c2w = np.stack([np.eye(4), np.eye(4)])
    c2w[1, :3, :3] = np.diag([-1.0, 1.0, -1.0])  # the second camera looks down -z
    xyz = np.array(
        [
            [0.0, 0.0, 2.0],  # ahead of camera 0
            [0.0, 0.0, -2.0],  # ahead of camera 1
            [0.79, 0.0, 1.0],  # u = 15.9: inside camera 0, near its right edge
            [0.81, 0.0, 1.0],  # u = 16.1: just outside
            [0.0, 0.0, 0.005],  # in front, but nearer than `near`
            [5.0, 0.0, 0.0],  # beside both
        ],
        np.float32,
    )
    assert in_view_mask(xyz, c2w, K, 16, 12).tolist() == [True, True, True, False, False, False]
    assert in_view_mask(xyz, c2w, K, 16, 12, margin_px=0.5).tolist() == [True, True, True, True, False, False]
    assert in_view_mask(xyz, c2w[:1], K[None], 16, 12).tolist() == [True, False, True, False, False, False]
    with pytest.raises(Lift3DError, match="K must be"):
        in_view_mask(xyz, c2w, K[None], 16, 12)


def _rand_img(seed, shape=(2, 40, 48, 3)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_ssim_identity_and_noise_monotone():
    x = _rand_img(0)
    x = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)  # some structure
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert float(ssim(x, x, padding="zeros")) == pytest.approx(1.0, abs=1e-12)
    noise = _rand_img(1) - 0.5
    values = [float(ssim(x, (x + s * noise).clamp(0, 1))) for s in (0.02, 0.1, 0.3)]
    assert 1.0 > values[0] > values[1] > values[2]


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    a = _rand_img(2, (37, 45, 3))
    b = (0.7 * a + 0.3 * _rand_img(3, (37, 45, 3))).clamp(0, 1)
    ref = structural_similarity(
        a.numpy(),
        b.numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=-1,
    )
    assert float(ssim(a, b)) == pytest.approx(ref, abs=1e-3)
    # In float64 the agreement is in fact to round-off.
    assert float(ssim(a, b)) == pytest.approx(ref, abs=1e-9)


def test_ssim_zero_padding_equals_valid_inside():
    a, b = _rand_img(4, (30, 31, 3)), _rand_img(5, (30, 31, 3))
    full = ssim_map(a, b, padding="zeros")
    valid = ssim_map(a, b, padding="valid")
    assert full.shape == (30, 31, 3) and valid.shape == (20, 21, 3)
    torch.testing.assert_close(full[5:-5, 5:-5], valid, rtol=0, atol=1e-12)


def test_photometric_loss_values():
    a = _rand_img(6, (24, 32, 3))
    b = _rand_img(7, (24, 32, 3))
    assert float(photometric_loss(a, a)) == pytest.approx(0.0, abs=1e-12)
    l1 = float((a - b).abs().mean())
    assert float(photometric_loss(a, b, lambda_dssim=0.0)) == pytest.approx(l1)
    expected = 0.8 * l1 + 0.2 * (1 - float(ssim(a, b, padding="zeros")))
    assert float(photometric_loss(a, b, 0.2)) == pytest.approx(expected, rel=1e-12)


def test_inverse_depth_loss():
    depth = torch.full((2, 4, 5, 1), 2.0, dtype=torch.float64)
    alpha = torch.ones_like(depth)
    target = torch.full((2, 4, 5), 0.5, dtype=torch.float64)
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    assert float(inverse_depth_loss(depth, alpha, target, valid)) == pytest.approx(0.0)
    target2 = target.clone()
    target2[0, 0, 0] = 100.0  # invalid pixel: ignored
    valid2 = valid.clone()
    valid2[0, 0, 0] = False
    assert float(inverse_depth_loss(depth, alpha, target2, valid2)) == pytest.approx(0.0)
    assert float(inverse_depth_loss(depth, alpha, target + 0.1, valid)) == pytest.approx(0.1)
    # An affine map of the true inverse depth is free under the scale-invariant loss.
    d = 1.0 + torch.rand(2, 4, 5, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    affine = 3.0 * (1.0 / d[..., 0]) - 0.2
    assert float(inverse_depth_loss(d, alpha, affine, valid)) > 0.1
    assert float(inverse_depth_loss(d, alpha, affine, valid, scale_invariant=True)) == pytest.approx(0.0, abs=1e-12)
    # No valid pixel: zero, still differentiable.
    d.requires_grad_(True)
    zero = inverse_depth_loss(d, alpha, affine, torch.zeros_like(valid))
    zero.backward()
    assert float(zero.detach()) == 0.0 and d.grad is not None


def test_align_scale_shift_least_squares():
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(3, 6, 7, generator=gen, dtype=torch.float64)
    target = torch.rand(3, 6, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(3, 6, 7, generator=gen) > 0.3
    aligned = align_scale_shift(pred, target, mask)
    for f in range(3):
        x, y = pred[f][mask[f]].numpy(), target[f][mask[f]].numpy()
        s, t = np.polyfit(x, y, 1)
        np.testing.assert_allclose(aligned[f].numpy(), s * pred[f].numpy() + t, rtol=1e-10)
    assert math.isfinite(float(aligned.sum()))
