"""Commanded calibration (fusion + the method's normalisation) and depth alignment."""

import numpy as np
import pytest

from lift3d_core.calibrate import CalibrateConfig, apply_similarity, calibrate, fuse_depth, normalization
from lift3d_core.camera import intrinsics_from_fov, look_at, project_points
from lift3d_core.depth import DepthConfig, align_disparity, estimate_inverse_depth, inverse_depth
from lift3d_core.errors import Lift3DError


def _plane_views(n=3, w=32, h=24):
    """Cameras looking at the plane z = 4 from a few positions; exact depth maps."""
    K = intrinsics_from_fov(60.0, w, h)
    c2w = np.stack([look_at(np.array([x, 0.0, 0.0]), np.array([x, 0.0, 4.0])) for x in np.linspace(-0.5, 0.5, n)])
    depth = np.full((n, h, w), 4.0, np.float32)
    frames = np.random.default_rng(0).integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    return frames, c2w, K, depth


def test_fused_points_lie_on_the_surface_and_reproject():
    frames, c2w, K, depth = _plane_views()
    pts, cols = fuse_depth(frames, depth, c2w, np.broadcast_to(K, (3, 3, 3)), max_points=500, seed=0)
    assert pts.shape == (500, 3) and cols.shape == (500, 3) and cols.dtype == np.uint8
    np.testing.assert_allclose(pts[:, 2], 4.0, atol=1e-9)
    uv, z = project_points(pts, c2w[0], K)
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < 32) & (uv[:, 1] >= 0) & (uv[:, 1] < 24)
    assert inside.mean() > 0.5 and np.allclose(z, 4.0)


def test_normalisation_matches_the_method():
    frames, c2w, K, depth = _plane_views()
    cal = calibrate(frames, c2w, K, CalibrateConfig(max_points=800), depth_hint=depth)
    np.testing.assert_allclose(cal.points.mean(0), 0.0, atol=1e-5)
    assert np.abs(cal.points).max() == pytest.approx(10.0, rel=1e-6)
    # cameras and depth moved by the same similarity: a normalised point still projects with its depth
    p = cal.points[:50].astype(np.float64)
    _, z = project_points(p, cal.c2w[0], cal.K[0])
    np.testing.assert_allclose(z, 4.0 * cal.scale, rtol=1e-5)
    np.testing.assert_allclose(cal.depth, depth * cal.scale, rtol=1e-6)
    center, scale = normalization(np.array([[0.0, 0, 0], [2.0, 0, 0]]), 10.0)
    assert scale == pytest.approx(10.0) and np.allclose(apply_similarity(np.eye(4), center, scale)[:3, 3], [-10, 0, 0])


def test_commanded_calibration_needs_depth():
    frames, c2w, K, _ = _plane_views()
    with pytest.raises(Lift3DError, match="depth"):
        calibrate(frames, c2w, K, CalibrateConfig(), depth_hint=None)
    with pytest.raises(Lift3DError, match="unknown"):
        CalibrateConfig(backend="mast3r-typo")


def test_align_disparity_recovers_scale_and_shift():
    rng = np.random.default_rng(0)
    metric = rng.uniform(0.2, 1.0, (40, 50)).astype(np.float32)
    mono = (metric - 0.1) / 3.0  # relative disparity: unknown scale 3 and shift 0.1
    valid = np.ones_like(metric, bool)
    valid[:5] = False
    np.testing.assert_allclose(align_disparity(mono, metric, valid), metric, atol=1e-5)  # exact when clean
    mono_noisy = mono.copy()
    mono_noisy[10, :10] = 50.0  # outliers: least squares would be ruined, the median rule barely moves
    aligned = align_disparity(mono_noisy, metric, valid)
    good = np.ones_like(valid)
    good[10, :10] = False
    assert np.abs(aligned[good] - metric[good]).max() < 5e-3


def test_inverse_depth_targets():
    d = np.array([[0.0, 2.0], [4.0, 1e-5]], np.float32)
    np.testing.assert_allclose(inverse_depth(d, 1e-3), [[0, 0.5], [0.25, 0]])
    frames = np.zeros((1, 2, 2, 3), np.uint8)
    est = estimate_inverse_depth(frames, d[None], DepthConfig())
    np.testing.assert_allclose(est.inv_depth[0], [[0, 0.5], [0.25, 0]])
    np.testing.assert_array_equal(est.valid[0], [[False, True], [True, False]])
