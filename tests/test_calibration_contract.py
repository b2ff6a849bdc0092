"""The calibration contract: the similarity to the commanded frame, confidence scales, and held-out PSNR that does
not depend on which frame a calibration comes back in."""

import numpy as np
import pytest
import torch

from lift3d_core import synthetic
from lift3d_core.calibrate import CalibrateConfig, FrameLayout, Similarity, confidence_weight, fit_to_commanded
from lift3d_core.calibrate.contract import run_resolution
from lift3d_core.camera import rotmat_to_quat
from lift3d_core.errors import Lift3DError
from lift3d_core.evaluate import EvaluateConfig, evaluate_synthetic, heldout_views
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree


def _random_similarity(seed: int) -> Similarity:
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    R = Q * np.sign(np.linalg.det(Q))
    return Similarity(float(rng.uniform(0.3, 4.0)), R, rng.normal(size=3) * 5)


def test_fit_to_commanded_recovers_a_known_similarity():
    tree = articulated_tree(TrajectoryConfig(presets=("U", "Round-RI_90"), levels=2, frames_per_clip=6))
    commanded = tree.distinct_c2w()
    truth = _random_similarity(1)
    calibrated = truth.inverse().apply_c2w(commanded)
    fit = fit_to_commanded(calibrated, commanded)
    assert fit.scale == pytest.approx(truth.scale, rel=1e-9)
    np.testing.assert_allclose(fit.R, truth.R, atol=1e-9)
    np.testing.assert_allclose(fit.t, truth.t, atol=1e-8)
    np.testing.assert_allclose(fit.apply_c2w(calibrated), commanded, atol=1e-8)
    # centres on one line (a single "up" clip) leave a rotation free: the camera rotations settle it
    line = articulated_tree(TrajectoryConfig(presets=("U",), levels=1, frames_per_clip=5)).distinct_c2w()
    fit = fit_to_commanded(truth.inverse().apply_c2w(line), line)
    np.testing.assert_allclose(fit.R, truth.R, atol=1e-9)
    assert fit.scale == pytest.approx(truth.scale, rel=1e-9)
    with pytest.raises(Lift3DError, match="registered"):
        fit_to_commanded(calibrated, commanded, np.eye(1, len(commanded), dtype=bool)[0])


def test_similarity_round_trip_and_arrays():
    s = _random_similarity(2)
    x = np.random.default_rng(0).normal(size=(7, 3))
    np.testing.assert_allclose(s.inverse().apply_points(s.apply_points(x)), x, atol=1e-10)
    back = Similarity.from_arrays(s.to_arrays())
    assert back.scale == s.scale and np.array_equal(back.R, s.R) and np.array_equal(back.t, s.t)


def test_confidence_scales_and_resolutions():
    np.testing.assert_allclose(confidence_weight(np.array([1.0, 2.0, 10.0]), "mast3r"), [0.0, 0.5, 0.9])
    np.testing.assert_allclose(confidence_weight(np.array([0.0, 0.4, 1.0]), "colmap"), [0.0, 0.4, 1.0])
    assert run_resolution("colmap", (96, 128)) == (96, 128)
    assert run_resolution("mast3r", (576, 1024)) == (288, 512)
    # the reference's crop, not a rounding: 650x1000 -> 320x512 (floor to patches), a square -> 4:3
    assert run_resolution("mast3r", (650, 1000)) == (320, 512)
    assert run_resolution("mast3r", (512, 512)) == (384, 512)


def test_only_the_active_backend_section_enters_the_key():
    a, b = CalibrateConfig(backend="commanded"), CalibrateConfig(backend="colmap")
    assert "colmap" not in a.key_params() and b.key_params()["colmap"]["sequential_overlap"] == 3
    from lift3d_core.calibrate import ColmapConfig

    changed = CalibrateConfig(backend="commanded", colmap=ColmapConfig(sequential_overlap=5))
    assert changed.key_params() == a.key_params()


def test_layout_of_a_tree_names_each_clip_with_its_shared_first_frame():
    tree = articulated_tree(TrajectoryConfig(presets=("U", "Round-RI_90"), levels=2, frames_per_clip=4))
    clips = FrameLayout.from_tree(tree).clip_frames()
    index = tree.distinct_frame_index().reshape(len(tree.clips), -1)
    for k, clip in enumerate(tree.clips):
        assert clips[clip.clip_id] == index[k].tolist()


def _moved(g: Gaussians, s: Similarity) -> Gaussians:
    """The same Gaussians in another frame: centres moved, sizes scaled, orientations rotated (colour is
    view-independent in the synthetic scene, its SH bands above 0 are zero)."""
    w, v = rotmat_to_quat(s.R)[0], rotmat_to_quat(s.R)[1:]
    q = g.quats.double().numpy()
    qw, qv = q[:, :1], q[:, 1:]
    quats = np.concatenate([w * qw - qv @ v[:, None], w * qv + qw * v + np.cross(v, qv)], 1)
    return Gaussians(torch.tensor(s.apply_points(g.means.double().numpy()), dtype=torch.float32),
                     g.log_scales + float(np.log(s.scale)), torch.tensor(quats, dtype=torch.float32),
                     g.opacity_logits, g.sh0, g.shN)


def test_heldout_psnr_does_not_depend_on_the_calibrated_frame():
    tree = articulated_tree(TrajectoryConfig(presets=("U", "Round-RI_90"), levels=1, frames_per_clip=4))
    image = np.random.default_rng(0).integers(0, 255, (36, 48, 3), dtype=np.uint8)
    scene_cfg = synthetic.SyntheticConfig(width=48, height=36, hidden_gaussians=1000, photo_fit_steps=0)
    cfg = EvaluateConfig(views=3, backend="torch")
    c2w, targets = heldout_views(image, tree, scene_cfg, cfg)
    scene = synthetic.build_scene(image, scene_cfg)
    # a model that is not perfect, so PSNR is finite: the scene with its colours perturbed
    g = scene.gaussians.clone()
    g.sh0 = g.sh0 + 0.05 * torch.randn(g.sh0.shape, generator=torch.Generator().manual_seed(0))
    base = evaluate_synthetic(g, c2w, targets, Similarity.identity(), scene.K, cfg).metrics["psnr"]
    # the calibrated frame: a rotated (a quarter turn, exact in floating point), scaled, shifted copy of the
    # commanded one
    quarter = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    other = Similarity(0.37, quarter, np.array([3.0, -2.0, 7.5]))
    moved = _moved(g, other)
    same = evaluate_synthetic(moved, c2w, targets, other.inverse(), scene.K, cfg).metrics["psnr"]
    assert 15.0 < base < 60.0
    assert same == pytest.approx(base, abs=0.01)
    # a generic rotation: within 1 dB (the thin discs of the synthetic scene, 1000:1, are rendered slightly
    # differently once their rotations are rounded to float32: measured 0.5 to 0.8 dB)
    generic = _random_similarity(3)
    near = evaluate_synthetic(_moved(g, generic), c2w, targets, generic.inverse(), scene.K, cfg).metrics["psnr"]
    assert near == pytest.approx(base, abs=1.0)
    # normalisation alone (what evaluate did before the contract) is wrong for such a frame
    wrong = evaluate_synthetic(moved, c2w, targets, Similarity.identity(), scene.K, cfg).metrics["psnr"]
    assert wrong < base - 5.0
