import numpy as np
import pytest
import torch
from skimage import data

from lift3d_core import metrics, synthetic
from lift3d_core.errors import Lift3DError
from lift3d_core.splat.render import render
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree


@pytest.fixture(scope="module")
def photo():
    return data.astronaut()


@pytest.fixture(scope="module")
def scene(photo):
    return synthetic.build_scene(photo, synthetic.SyntheticConfig())


@pytest.fixture(scope="module")
def tree():
    return articulated_tree(TrajectoryConfig())


def test_input_view_reproduces_photograph(scene):
    frames, _ = synthetic.render_views(scene, np.eye(4))
    assert frames.shape == (1, 96, 128, 3) and frames.dtype == np.uint8
    # measured 32.2 dB / SSIM 0.97 (astronaut, "room", 128x96; 27.2 / 0.95 when composited by depth)
    assert metrics.psnr(frames[0], scene.photo) > 30.0
    assert metrics.ssim(frames[0], scene.photo) > 0.95


def test_other_presets_reproduce_photograph():
    photo = data.coffee()
    for preset in ("tabletop", "corridor"):
        sc = synthetic.build_scene(photo, synthetic.SyntheticConfig(preset=preset, hidden_gaussians=8000))
        frames, _ = synthetic.render_views(sc, np.eye(4))
        assert metrics.psnr(frames[0], sc.photo) > 20.0, preset


def test_back_wall_depth_is_analytic(scene):
    # "room": back wall at z = (1.1 + 2.5) * scale; pixel (5, 5) sees it past every object
    wall_z = 3.6 * scene.scale
    _, depth = synthetic.render_views(scene, np.eye(4))
    assert depth[0, 5, 5] == pytest.approx(wall_z, abs=1e-4)
    assert synthetic.raycast_depth(scene, np.eye(4))[5, 5] == pytest.approx(wall_z, abs=1e-12)


def test_raycast_depth_of_sphere_matches_closed_form(scene):
    sphere = scene.primitives[2]
    assert isinstance(sphere, synthetic.Sphere)
    c, r = np.array(sphere.centre), sphere.radius
    u, v = (scene.K @ (c / c[2]))[:2]
    px, py = int(u), int(v)  # the pixel containing the centre's projection
    d = np.linalg.solve(scene.K, [px + 0.5, py + 0.5, 1.0])  # camera ray with z = 1
    b, a = d @ c, d @ d
    t = (b - np.sqrt(b * b - a * (c @ c - r * r))) / a
    assert synthetic.raycast_depth(scene, np.eye(4))[py, px] == pytest.approx(t, abs=1e-9)


def _coverage(scene, c2w):
    out = render(scene.gaussians, c2w, scene.K, scene.width, scene.height)
    return (out.alpha[..., 0] > 0.95).float().mean(dim=(1, 2)).numpy()


def test_tree_and_eval_cameras_see_covered_pixels(scene, tree):
    c2w = tree.distinct_c2w()
    eval_c2w, _ = synthetic.eval_cameras(tree, n=8, seed=0)
    synthetic.check_cameras_inside(scene, np.concatenate([c2w, eval_c2w]))
    # every third frame (the full 241 take 15 s on one core; neighbours differ little) and every clip end
    ends = np.cumsum([c.num_frames - 1 for c in tree.clips])
    pick = c2w[np.union1d(np.arange(0, len(c2w), 3), ends)]
    frac = np.concatenate([_coverage(scene, pick[i : i + 48]) for i in range(0, len(pick), 48)])
    assert frac.min() > 0.95
    assert _coverage(scene, eval_c2w).min() > 0.95


def test_compositing_order_of_a_wall_does_not_flip_where_the_view_crosses_its_normal(scene, tree):
    """The level-2 orbit turns through a frontal view of the side wall (t = 1 looks along -x): a depth sort
    would reverse the order of that wall's neighbouring discs between t = 0 and t = 2."""
    c2w = tree.clip("Round-RI_90/Round-RI_90").c2w[:3]
    assert np.allclose(c2w[1, :3, 2], [-1.0, 0.0, 0.0])
    room = np.flatnonzero(scene.surface_primitive == 0)
    orders = [synthetic.composite_order(scene, c, scene.K, scene.width, scene.height) for c in c2w]
    room_orders = [o[np.isin(o, room)] for o in orders]
    assert all(np.array_equal(room_orders[0], o) for o in room_orders[1:])
    # the room (which holds everything) goes last, an object's front before its back
    assert np.isin(orders[0][-len(room):], room).all()


def test_frames_agree_with_their_cameras_where_the_view_crosses_a_wall_normal(photo):
    """SIFT features of one frame, carried to the next with the true cameras and the exact (analytic) depth,
    land where the next frame shows them. The orbit starts of the tree turn through a frontal view of a wall (the
    input view faces the back wall, the level-2 orbit faces a side wall at t = 1); compositing by centre depth
    moved those walls' textures by up to half a disc there: median 0.52-0.92 px, mean 0.73-0.99 px at 256x192,
    against 0.07 / 0.18 px for a step of the up clip (measured; the fixed order gives 0.11-0.31 / 0.22-0.49)."""
    pycolmap = pytest.importorskip("pycolmap")
    scene = synthetic.build_scene(photo, synthetic.SyntheticConfig(width=256, height=192))
    tree = articulated_tree(TrajectoryConfig(levels=2))
    options = pycolmap.FeatureExtractionOptions()
    options.sift.peak_threshold = 0.001
    sift = pycolmap.Sift(options, pycolmap.Device.cpu)
    K = scene.K

    def features(frame):
        grey = np.ascontiguousarray(frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255)
        keypoints, descriptors = sift.extract(grey)
        return keypoints[:, :2].astype(np.float64), descriptors.astype(np.float64)  # COLMAP: pixel centre + 0.5

    def surface(c2w, uv):
        rays = np.c_[(uv - K[:2, 2]) / np.diag(K)[:2], np.ones(len(uv))] @ c2w[:3, :3].T
        t, _, _ = synthetic._raycast(scene.primitives, np.tile(c2w[:3, 3], (len(uv), 1)), rays)
        return c2w[:3, 3] + t[:, None] * rays

    def project(c2w, xyz):
        cam = (xyz - c2w[:3, 3]) @ c2w[:3, :3]
        return cam[:, :2] / cam[:, 2:] * np.diag(K)[:2] + K[:2, 2]

    for clip, t in (("Round-RI_90", 0), ("U/Round-RI_90", 0), ("Round-RI_90/Round-RI_90", 0),
                    ("Round-RI_90/Round-RI_90", 1), ("U", 5)):
        c2w = tree.clip(clip).c2w[t : t + 2]
        frames, _ = synthetic.render_views(scene, c2w)
        (uv_a, desc_a), (uv_b, desc_b) = features(frames[0]), features(frames[1])
        sim = desc_a @ desc_b.T
        best = sim.argmax(1)
        mutual = sim.argmax(0)[best] == np.arange(len(uv_a))
        xyz = surface(c2w[0], uv_a[mutual])
        moved = project(c2w[1], xyz)
        seen = np.linalg.norm(surface(c2w[1], moved) - xyz, axis=1) < 1e-3 * np.linalg.norm(xyz - c2w[1, :3, 3], axis=1)
        err = np.linalg.norm(moved - uv_b[best[mutual]], axis=1)[seen]
        err = err[err < 3.0]  # wrong matches
        assert len(err) > 50, (clip, t)
        assert np.median(err) < 0.4 and err.mean() < 0.6, (clip, t, np.median(err), err.mean())


def test_generate_frames_shares_frames_and_depth(photo):
    small = articulated_tree(TrajectoryConfig(frames_per_clip=3))
    cfg = synthetic.SyntheticConfig(hidden_gaussians=4000, distortion="default", photo_fit_steps=0)
    calls = []
    out = synthetic.generate_frames(photo, small, cfg, progress=lambda done, total: calls.append((done, total)))
    frames, depth = out["frames"], out["depth"]
    assert frames.shape == (len(small.clips), 3, 96, 128, 3) and frames.dtype == np.uint8
    assert depth.shape == (len(small.clips), 3, 96, 128) and depth.dtype == np.float32
    assert calls[-1] == (small.num_distinct_frames, small.num_distinct_frames)
    ids = small.clip_ids()
    for k, clip in enumerate(small.clips):
        if clip.parent is None:
            np.testing.assert_array_equal(frames[k, 0], frames[0, 0])
        else:
            np.testing.assert_array_equal(frames[k, 0], frames[ids.index(clip.parent), -1])
    # depth is the undistorted analytic surface, frames are distorted away from the input view
    last = small.clips[-1]
    np.testing.assert_allclose(depth[-1, -1], synthetic.raycast_depth(out["scene"], last.c2w[-1]), rtol=1e-6)
    clean, _ = synthetic.render_views(out["scene"], last.c2w[-1])
    assert np.abs(clean[0].astype(int) - frames[-1, -1]).mean() > 1.0
    # the input view is never distorted
    np.testing.assert_array_equal(synthetic.render_views(out["scene"], np.eye(4))[0][0], frames[0, 0])


def test_distortion_vanishes_at_input_code_and_is_smooth(scene):
    g, amp = scene.gaussians, 0.05
    same = synthetic.distort_gaussians(g, (0.5, 0.5), amp, seed=3, colour=0.1)
    assert torch.equal(same.means, g.means) and torch.equal(same.sh0, g.sh0)
    a = synthetic.distort_gaussians(g, (0.25, 0.5), amp, seed=3)
    b = synthetic.distort_gaussians(g, (0.25 + 1 / 60, 0.5), amp, seed=3)  # the next frame of a clip
    move = (a.means - g.means).norm(dim=1)
    rms = float(move.pow(2).mean().sqrt())
    assert 0.6 * amp < rms < 1.4 * amp  # amplitude = RMS displacement (weight ~1 a clip away)
    step = (a.means - b.means).norm(dim=1)
    assert float(step.pow(2).mean().sqrt()) < 0.2 * amp and float(step.max()) < 0.5 * amp
    near = synthetic.distort_gaussians(g, (0.5 + 1 / 60, 0.5), amp, seed=3)
    assert 0 < float((near.means - g.means).norm(dim=1).max()) < 0.1 * amp
    other = synthetic.distort_gaussians(g, (0.25, 0.5), amp, seed=4)
    assert not torch.allclose(other.means, a.means)


def test_distortion_levels_break_consistency(scene, tree):
    c2w, codes = tree.distinct_c2w()[[40, 120]], tree.distinct_frame_codes()[[40, 120]]
    clean, _ = synthetic.render_views(scene, c2w)
    psnr = {}
    for level in ("low", "default", "high"):
        distorted, _ = synthetic.render_views(
            scene, c2w, frame_codes=codes, distortion=synthetic.DISTORTION_LEVELS[level]
        )
        psnr[level] = metrics.psnr(distorted, clean)
    assert psnr["low"] > psnr["default"] > psnr["high"]
    assert psnr["default"] < 26.0  # a few pixels of motion, not noise


def test_deterministic_with_seed(photo, scene, tree):
    again = synthetic.build_scene(photo, synthetic.SyntheticConfig())
    for name, t in scene.gaussians.tensors().items():
        assert torch.equal(t, getattr(again.gaussians, name)), name
    other = synthetic.build_scene(photo, synthetic.SyntheticConfig(seed=1, photo_fit_steps=0))
    assert not torch.equal(other.gaussians.sh0, scene.gaussians.sh0)  # procedural texture depends on the seed
    e1, c1 = synthetic.eval_cameras(tree, n=8, seed=0)
    e2, c2 = synthetic.eval_cameras(tree, n=8, seed=0)
    np.testing.assert_array_equal(e1, e2)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(synthetic.eval_cameras(tree, n=8, seed=1)[0], e1)


def test_eval_cameras_are_off_the_tree(tree):
    c2w, codes = synthetic.eval_cameras(tree, n=16, seed=0)
    assert c2w.shape == (16, 4, 4) and codes.shape == (16, 2)
    tree_c2w = tree.c2w()
    for cam in c2w:
        np.testing.assert_allclose(cam[:3, :3] @ cam[:3, :3].T, np.eye(3), atol=1e-9)
        gap = np.linalg.norm(tree_c2w[:, :3, 3] - cam[:3, 3], axis=1)
        assert gap.min() > 0.05
    assert np.all((codes >= 0) & (codes <= 1))


def test_sample_surface_points(scene):
    clean, rgb = synthetic.sample_surface_points(scene, 5000, 0.0, seed=0)
    noisy, rgb2 = synthetic.sample_surface_points(scene, 5000, 0.02, seed=0)
    assert clean.shape == (5000, 3) and clean.dtype == np.float32 and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, rgb2)
    assert (noisy - clean).std() == pytest.approx(0.02, rel=0.05)
    # noise-free points lie on the room's walls or inside it
    lo, hi = scene.bounds
    assert np.all(clean >= lo - 1e-3) and np.all(clean <= hi + 1e-3)
    # about as many points per unit of wall as anywhere else: the back wall gets its share of the area
    room = scene.primitives[0]
    back = np.abs(clean[:, 2] - hi[2]) < 1e-4
    share = (2 * room.half[0] * 2 * room.half[1]) / sum(p.area() for p in scene.primitives)
    assert back.mean() == pytest.approx(share, rel=0.15)


def test_config_validation():
    assert synthetic.SyntheticConfig(distortion="high").distortion == synthetic.DISTORTION_LEVELS["high"]
    with pytest.raises(Lift3DError, match="preset"):
        synthetic.SyntheticConfig(preset="castle")
    with pytest.raises(Lift3DError, match="distortion"):
        synthetic.SyntheticConfig(distortion="wild")
    with pytest.raises(Lift3DError):
        synthetic.SyntheticConfig(width=4)
    with pytest.raises(Lift3DError, match="uint8"):
        synthetic.build_scene(np.zeros((32, 32, 3), np.float32), synthetic.SyntheticConfig())


def test_cameras_outside_the_room_are_refused(scene):
    far = np.eye(4)
    far[:3, 3] = (0.0, 0.0, 100.0)
    with pytest.raises(Lift3DError, match="pivot depth"):
        synthetic.check_cameras_inside(scene, far[None])
