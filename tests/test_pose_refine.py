"""Camera pose refinement: the SE(3) corrections, the rasterizer's camera gradient, and training pulling a perturbed
camera back to the one its frame was rendered from (CPU, tiny scenes)."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.pose_refine import PoseCorrections, refined_c2w, se3_correction, so3_exp
from lift3d_core.splat.render import render_w2c
from lift3d_core.splat.train import TrainConfig, Trainer
from lift3d_core.train import TrainStageConfig
from tests.test_distortion import H_TINY, W_TINY, noisy_init, render_frames, tiny_cameras, tiny_scene


def test_so3_exp_is_rodrigues_and_exact_at_zero():
    omega = torch.tensor([[0.3, -0.2, 0.5], [1e-5, 2e-5, -1e-5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    R = so3_exp(omega)
    want = torch.as_tensor(Rotation.from_rotvec(omega.numpy()).as_matrix())
    assert torch.allclose(R, want, atol=1e-12)
    assert torch.equal(R[2], torch.eye(3, dtype=torch.float64))
    # a finite gradient at exactly zero: d(R @ v)/d(omega) = -[v]x there
    zero = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda w: so3_exp(w) @ v, zero)
    hat_v = torch.tensor([[0.0, -3.0, 2.0], [3.0, 0.0, -1.0], [-2.0, 1.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(jac, -hat_v, atol=1e-12)


def test_refined_cameras_are_the_corrected_view_matrices_inverted():
    c2w, _, _ = tiny_cameras()
    xi = torch.tensor(np.random.default_rng(0).normal(scale=0.02, size=(len(c2w), 6)))
    w2c = torch.linalg.inv(torch.as_tensor(c2w))
    corrected = se3_correction(xi, translation_scale=2.0) @ w2c
    assert np.allclose(np.linalg.inv(refined_c2w(c2w, xi, translation_scale=2.0)), corrected.numpy(), atol=1e-12)
    # zero corrections and frozen frames leave the view matrices bit for bit
    module = PoseCorrections(len(c2w), frozen=(0, 3))
    with torch.no_grad():
        module.xi.copy_(xi.float())
    moved = module(w2c.float())
    assert torch.equal(moved[0], w2c[0].float()) and torch.equal(moved[3], w2c[3].float())
    assert not torch.allclose(moved[1], w2c[1].float())
    assert torch.equal(PoseCorrections(len(c2w))(w2c.float()), w2c.float())


def test_torch_rasterizer_differentiates_the_camera_with_unchanged_values():
    scene = tiny_scene()
    c2w, _, K = tiny_cameras()
    g64 = Gaussians(**{k: v.double() for k, v in scene.tensors().items()})
    w2c = torch.linalg.inv(torch.as_tensor(c2w[4:5]))
    Ks = torch.as_tensor(K)[None]
    fixed = render_w2c(scene, w2c.float(), Ks.float(), W_TINY, H_TINY)
    free = render_w2c(scene, w2c.float().requires_grad_(True), Ks.float(), W_TINY, H_TINY)
    assert torch.equal(fixed.rgb, free.rgb) and torch.equal(fixed.means2d, free.means2d)

    target = render_w2c(g64, w2c, Ks, W_TINY, H_TINY).rgb.detach() * 0.9

    def loss(xi):
        return (render_w2c(g64, se3_correction(xi) @ w2c, Ks, W_TINY, H_TINY).rgb - target).square().sum()

    xi = torch.zeros(1, 6, dtype=torch.float64, requires_grad=True)
    loss(xi).backward()
    eps = 1e-6
    numeric = torch.stack([(loss(e) - loss(-e)) / (2 * eps) for e in torch.eye(6, dtype=torch.float64)[:, None] * eps])
    assert torch.allclose(xi.grad[0], numeric, rtol=1e-4, atol=1e-6), (xi.grad, numeric)
    assert xi.grad.abs().max() > 0.1


def _reprojection_px(c2w_a, c2w_b, points, K) -> float:
    """Mean distance in pixels between where cameras a and b see ``points [N, 3]``."""
    def project(c2w):
        w2c = np.linalg.inv(c2w)
        cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        return cam[:, :2] / cam[:, 2:] * K[0, 0]
    return float(np.linalg.norm(project(c2w_a) - project(c2w_b), axis=1).mean())


def _perturbed_cameras():
    """The tiny scene's 9 cameras with frame 4 moved by 1.5 degrees and (0.03, -0.02, 0.05) in its own frame."""
    c2w, codes, K = tiny_cameras()
    moved = c2w.copy()
    P = np.eye(4)
    P[:3, :3] = Rotation.from_rotvec(np.radians(1.5) * np.array([0.6, 0.8, 0.0])).as_matrix()
    P[:3, 3] = (0.03, -0.02, 0.05)
    moved[4] = c2w[4] @ P
    return c2w, moved, codes, K


POSE_CFG = dict(sh_degree=0, densify_until=0, opacity_reset_every=100_000, log_every=50, lr_sh0=0.02, lr_opacity=0.1,
                lr_means=2e-3, lr_means_final=2e-4, pose_refine=True, pose_lr=3e-3, pose_lr_final=3e-4)


def test_training_pulls_a_perturbed_camera_back_and_never_moves_the_input_view():
    scene = tiny_scene()
    true_c2w, c2w, _, K = _perturbed_cameras()
    frames = render_frames(scene, true_c2w, K)  # rendered from the true cameras; trained from the perturbed ones
    points = scene.means.double().numpy()
    before = _reprojection_px(c2w[4], true_c2w[4], points, K)
    assert before > 1.0
    result = Trainer(noisy_init(scene), frames, c2w, K, TrainConfig(iterations=150, batch_size=2, **POSE_CFG),
                     device="cpu").run()
    refined = result.stats["refined_c2w"]
    after = _reprojection_px(refined[4], true_c2w[4], points, K)
    assert after < before / 4, (before, after)  # measured: 1.19 -> 0.09 px
    assert np.array_equal(refined[0], c2w[0])  # the input view defines the frame
    others = [_reprojection_px(refined[i], true_c2w[i], points, K) for i in (1, 2, 3, 5, 6, 7, 8)]
    assert max(others) < 0.25, others  # the correct cameras stay put (measured 0.04 px)
    assert result.stats["pose_refine"]["rotation_deg_max"] > 0.5


def test_distortion_aware_training_inherits_pose_refinement():
    from lift3d_core.splat.train_distortion import train_distortion_aware
    from tests.test_distortion import tiny_train_cfg

    scene = tiny_scene()
    true_c2w, c2w, codes, K = _perturbed_cameras()
    frames = render_frames(scene, true_c2w, K)
    points = scene.means.double().numpy()
    cfg = tiny_train_cfg(coarse_iterations=60, fine_iterations=90, train=TrainConfig(**POSE_CFG))
    result = train_distortion_aware(noisy_init(scene), frames, c2w, K, codes, cfg, device="cpu")
    refined = result.stats["refined_c2w"]
    before = _reprojection_px(c2w[4], true_c2w[4], points, K)
    after = _reprojection_px(refined[4], true_c2w[4], points, K)
    assert after < before / 3, (before, after)
    assert np.array_equal(refined[0], c2w[0])


def test_no_pose_refinement_changes_nothing_and_starts_when_told():
    scene = tiny_scene()
    true_c2w, c2w, _, K = _perturbed_cameras()
    frames = render_frames(scene, true_c2w, K)
    base = dict(POSE_CFG, pose_refine=False)
    off = Trainer(noisy_init(scene), frames, c2w, K, TrainConfig(iterations=6, batch_size=2, **base), device="cpu")
    assert off.pose is None and off.viewmats is off.calibrated_viewmats
    assert "refined_c2w" not in off.run().stats
    late = Trainer(noisy_init(scene), frames, c2w, K,
                   TrainConfig(iterations=6, batch_size=2, **dict(POSE_CFG, pose_refine_from=4)), device="cpu")
    for _ in range(4):
        late.train_step()
    assert torch.count_nonzero(late.pose.xi) == 0  # nothing learned before pose_refine_from
    late.train_step()
    assert torch.count_nonzero(late.pose.xi) > 0


def test_pose_refine_auto_follows_the_calibration_backend():
    from lift3d_core.config import apply_overrides
    from lift3d_core.pipeline import stage_configs
    from tests.conftest import tiny_params

    params = tiny_params()
    assert params["train"].get("pose_refine", "auto") == "auto"
    for backend, on in (("commanded", False), ("colmap", True), ("mast3r", True)):
        cfg = stage_configs(apply_overrides(params, [f"calibrate.backend={backend}"]))["train"]
        assert cfg.schedule.train.pose_refine is on, backend
        assert cfg.key_params()["schedule"]["train"]["pose_refine"] is on  # hashed resolved
    forced = stage_configs(apply_overrides(params, ["calibrate.backend=colmap", "train.pose_refine=false"]))["train"]
    assert forced.schedule.train.pose_refine is False
    with pytest.raises(Lift3DError, match="pose_refine"):
        TrainStageConfig.from_params({"pose_refine": "sometimes"})


@pytest.mark.slow
def test_the_refined_cameras_are_stored_with_the_training_and_placed_by_evaluation(tiny_project):
    from flows.settings import configure_environment, find_project
    from lift3d_core.config import apply_overrides
    from lift3d_core.store import ArtifactStore
    from tests.conftest import tiny_params
    from tests.test_pipeline import _run

    configure_environment(find_project(tiny_project))
    runs = _run(tiny_project, apply_overrides(tiny_params(), ["train.pose_refine=true"]))
    store = ArtifactStore(find_project(tiny_project).store_url)
    refined = store.read("train", runs["train"].key).arrays["c2w_refined"]
    calibrated = store.read("calibrate", runs["calibrate"].key).arrays["c2w"]
    assert refined.shape == calibrated.shape and refined.dtype == np.float64
    assert np.array_equal(refined[0], calibrated[0]) and not np.array_equal(refined, calibrated)
    metrics = store.read("evaluate", runs["evaluate"].key).attrs["metrics"]
    # the commanded cameras are the true ones: refinement may wander a little from them, not far
    assert metrics["pose.rot_deg_max"] < 1e-6 and 0 < metrics["pose_refined.rot_deg_max"] < 1.0
    assert np.isfinite(metrics["psnr"])
