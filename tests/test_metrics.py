import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from lift3d_core import metrics
from lift3d_core.errors import Lift3DError


def _images(seed=0, shape=(2, 24, 32, 3)):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.1, 0.9, size=shape)
    b = np.clip(a + rng.normal(0, 0.05, size=shape), 0, 1)
    return a, b


def test_psnr_constant_offset_is_analytic():
    a = np.full((16, 16, 3), 0.5)
    # MSE = 0.1^2 -> 20 dB, whatever the container or dtype.
    assert metrics.psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-9)
    assert metrics.psnr(torch.tensor(a + 0.1), torch.tensor(a)) == pytest.approx(20.0, abs=1e-9)
    u8 = np.full((4, 16, 16, 3), 100, np.uint8)
    # uint8 offset of 5 levels: 20 log10(255 / 5)
    assert metrics.psnr(u8 + 5, u8) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    assert metrics.psnr(u8, u8) == math.inf


def test_psnr_is_mean_over_batch():
    a = np.full((2, 8, 8, 3), 0.5)
    b = a.copy()
    b[0] += 0.1  # 20 dB
    b[1] += 0.01  # 40 dB
    assert metrics.psnr(b, a) == pytest.approx(30.0, abs=1e-9)


def test_ssim_matches_skimage():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    a, b = _images()
    ref = np.mean(
        [
            structural_similarity(
                a[i], b[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1
            )
            for i in range(len(a))
        ]
    )
    assert metrics.ssim(a, b) == pytest.approx(ref, abs=1e-10)
    assert metrics.ssim(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)) == pytest.approx(
        ref, abs=1e-5
    )
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_uint8_scaled_like_float():
    a, b = _images(1, (20, 20, 3))
    a8, b8 = (a * 255).round().astype(np.uint8), (b * 255).round().astype(np.uint8)
    assert metrics.ssim(a8, b8) == pytest.approx(metrics.ssim(a8 / 255.0, b8 / 255.0), abs=1e-12)


def test_image_shape_mismatch_raises():
    with pytest.raises(Lift3DError):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


def test_lpips_unavailable_says_where_weights_go():
    if metrics.lpips_available():
        a, b = _images()
        assert metrics.lpips(a, a) == pytest.approx(0.0, abs=1e-6)
        assert metrics.lpips(a, b) > 0
    else:
        with pytest.raises(Lift3DError, match="alexnet"):
            metrics.lpips(np.zeros((16, 16, 3)), np.zeros((16, 16, 3)))


def _random_sim3(rng):
    return (
        float(rng.uniform(0.3, 3.0)),
        Rotation.random(random_state=rng.integers(1 << 31)).as_matrix(),
        rng.normal(size=3),
    )


def test_umeyama_recovers_random_sim3():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(20, 3))
    s, R, t = _random_sim3(rng)
    dst = s * src @ R.T + t
    s_hat, R_hat, t_hat = metrics.umeyama_sim3(src, dst)
    assert s_hat == pytest.approx(s, abs=1e-9)
    np.testing.assert_allclose(R_hat, R, atol=1e-9)
    np.testing.assert_allclose(t_hat, t, atol=1e-9)
    assert np.linalg.det(R_hat) == pytest.approx(1.0, abs=1e-12)


def _camera_rig(rng, n=12):
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, :3] = Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix()
    c2w[:, :3, 3] = rng.normal(size=(n, 3))
    return c2w


def _apply_sim3(c2w, s, R, t):
    out = c2w.copy()
    out[:, :3, :3] = R @ c2w[:, :3, :3]
    out[:, :3, 3] = s * c2w[:, :3, 3] @ R.T + t
    return out


def test_pose_errors_zero_for_similar_copy():
    rng = np.random.default_rng(4)
    gt = _camera_rig(rng)
    s, R, t = _random_sim3(rng)
    est = _apply_sim3(gt, s, R, t)  # estimate lives in another similarity frame
    err = metrics.pose_errors(est, gt)
    assert err["rot_deg_max"] < 1e-6
    assert err["trans_rel_mean"] < 1e-9
    assert err["scale"] == pytest.approx(1.0 / s, abs=1e-9)


def test_pose_errors_measures_perturbed_rotation():
    rng = np.random.default_rng(5)
    gt = _camera_rig(rng)
    est = gt.copy()
    # rotate one camera by 7 degrees about its own axis: centres unchanged, so the centres' alignment is identity
    est[3, :3, :3] = est[3, :3, :3] @ Rotation.from_rotvec(np.radians(7.0) * np.array([0.0, 0.6, 0.8])).as_matrix()
    err = metrics.pose_errors(est, gt, align="centres")
    assert err["rot_deg_max"] == pytest.approx(7.0, abs=1e-9)
    assert err["rot_deg_mean"] == pytest.approx(7.0 / len(gt), abs=1e-9)
    assert err["rot_deg_median"] == pytest.approx(0.0, abs=1e-6)
    assert err["trans_rel_mean"] == pytest.approx(0.0, abs=1e-12)


def test_pose_errors_translation_relative_to_rig_spread():
    rng = np.random.default_rng(6)
    gt = _camera_rig(rng, n=400)
    est = gt.copy()
    sigma = 0.01
    est[:, :3, 3] += rng.normal(0, sigma, size=(len(gt), 3))
    err = metrics.pose_errors(est, gt)
    spread = np.sqrt(((gt[:, :3, 3] - gt[:, :3, 3].mean(0)) ** 2).sum(1).mean())
    # 400 cameras: the 7-dof alignment absorbs almost none of the noise; E|N(0, s^2 I_3)| = 1.596 s
    assert err["trans_rel_mean"] == pytest.approx(1.596 * sigma / spread, rel=0.1)
    # units cancel: the same rig and noise in a world 7x larger give the same relative error
    big = metrics.pose_errors(
        _apply_sim3(est, 7.0, np.eye(3), np.zeros(3)), _apply_sim3(gt, 7.0, np.eye(3), np.zeros(3))
    )
    assert big["trans_rel_mean"] == pytest.approx(err["trans_rel_mean"], rel=1e-9)
