"""How a calibration's frame is related to the commanded one: fitted on the whole camera poses, so that the noise
of the camera centres does not turn every held-out camera (evaluate) or the reported pose errors."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from lift3d_core.calibrate import Similarity, fit_to_commanded
from lift3d_core.metrics import align_poses, pose_errors, rotation_angle_deg, umeyama_sim3
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree


def _noisy_calibration(seed: int, rot_deg: float, bend: float):
    """The level-1 tree's 61 cameras as a calibration returns them: in another similarity frame, each rotation off
    by ``rot_deg`` degrees about a random axis, and the rig's shape bent the way structure from motion bends it
    (its depth axis ``bend`` short, sheared by two thirds of that)."""
    rng = np.random.default_rng(seed)
    commanded = articulated_tree(TrajectoryConfig(levels=1)).distinct_c2w()
    truth = Similarity(2.7, Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3))
    bent = commanded.copy()
    bent[:, :3, 3] = commanded[:, :3, 3] @ np.array([[1.0, 0.0, 2 * bend / 3], [0.0, 1.0, 0.0], [0.0, 0.0, 1 - bend]]).T
    cal = truth.inverse().apply_c2w(bent)
    axes = rng.normal(size=(len(cal), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    cal[:, :3, :3] = Rotation.from_rotvec(np.radians(rot_deg) * axes).as_matrix() @ cal[:, :3, :3]
    return commanded, cal, truth


def test_a_similarity_is_recovered_exactly_from_whole_poses():
    commanded, cal, truth = _noisy_calibration(0, 0.0, 0.0)
    s, R, t = align_poses(cal, commanded)
    assert s == pytest.approx(truth.scale, rel=1e-12)
    np.testing.assert_allclose(R, truth.R, atol=1e-12)
    np.testing.assert_allclose(t, truth.t, atol=1e-12)
    err = pose_errors(cal, commanded)
    assert err["rot_deg_max"] < 1e-9 and err["trans_rel_mean"] < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_rotations_fix_the_frame_when_the_centres_are_bent(seed):
    """Rotations good to 0.3 degrees each, the rig's centres bent by 3 %: the centres alone turn the frame by a third
    of a degree (what every held-out camera of evaluate would inherit), the 61 rotations by a twentieth."""
    commanded, cal, truth = _noisy_calibration(seed, rot_deg=0.3, bend=0.03)
    fit = fit_to_commanded(cal, commanded)
    _, R_centres, _ = umeyama_sim3(cal[:, :3, 3], commanded[:, :3, 3])
    off_poses = float(rotation_angle_deg(fit.R, truth.R))
    off_centres = float(rotation_angle_deg(R_centres, truth.R))
    assert off_poses < 0.1 and off_centres > 0.3, (off_poses, off_centres)
    assert fit.scale == pytest.approx(truth.scale, rel=0.03)
    # the reported rotation errors are then the cameras' own
    err = pose_errors(cal, commanded)
    assert err["rot_deg_mean"] == pytest.approx(0.3, abs=0.06) and err["rot_deg_max"] < 0.4
    assert pose_errors(cal, commanded, align="centres")["rot_deg_max"] > err["rot_deg_max"] + 0.15


def _drifted(c2w: np.ndarray, deg_per_unit: float) -> np.ndarray:
    """Cameras of a calibration that drifts: each turned about the vertical by an angle growing with its x."""
    out = c2w.copy()
    for k, cam in enumerate(c2w):
        turn = Rotation.from_rotvec([0.0, np.radians(deg_per_unit * cam[0, 3]), 0.0]).as_matrix()
        out[k, :3, :3] = turn @ cam[:3, :3]
        out[k, :3, 3] = turn @ cam[:3, 3]
    return out


def test_a_heldout_camera_is_placed_among_its_neighbours():
    """A calibration that drifts (1.5 degrees per unit of x, 4 degrees across the tree) in another similarity frame:
    each held-out camera placed by its 12 nearest training cameras lands where the drift puts it, within 0.4 degrees
    (0.09-0.37 measured: its neighbours sit on both sides of it, where the drift differs) and 1.5 % of the rig; the
    one similarity for the tree misses by the drift, 0.4-1.3 degrees."""
    from lift3d_core.evaluate import heldout_in_calibrated_frame
    from lift3d_core.synthetic import eval_cameras

    tree = articulated_tree(TrajectoryConfig(levels=1))
    commanded = tree.distinct_c2w()
    heldout, _ = eval_cameras(tree, n=8, seed=0)
    frame = Similarity(0.4, Rotation.random(random_state=3).as_matrix(), np.array([1.0, -2.0, 0.5]))
    calibrated = frame.apply_c2w(_drifted(commanded, 1.5))
    truth = frame.apply_c2w(_drifted(heldout, 1.5))
    to_commanded = fit_to_commanded(calibrated, commanded)
    spread = 0.4 * np.sqrt(((commanded[:, :3, 3] - commanded[:, :3, 3].mean(0)) ** 2).sum(1).mean())
    for k, tol_deg, tol_rel in ((12, 0.4, 0.015), (0, None, None)):
        placed = heldout_in_calibrated_frame(heldout, to_commanded, k, calibrated, commanded)
        rot = rotation_angle_deg(placed[:, :3, :3], truth[:, :3, :3])
        trans = np.linalg.norm(placed[:, :3, 3] - truth[:, :3, 3], axis=1) / spread
        if k:
            assert rot.max() < tol_deg and trans.max() < tol_rel, (rot, trans)
        else:
            assert rot.max() > 1.0
    # an exact similarity: every way of placing gives the same cameras
    exact = frame.apply_c2w(commanded)
    np.testing.assert_allclose(heldout_in_calibrated_frame(heldout, fit_to_commanded(exact, commanded), 12, exact,
                                                           commanded), frame.apply_c2w(heldout), atol=1e-9)
