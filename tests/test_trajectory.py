import json

import numpy as np
import pytest

from lift3d_core.camera import c2w_to_motionctrl_rows, motionctrl_rows_to_c2w, relative_c2w, rotation_angle
from lift3d_core.errors import Lift3DError
from lift3d_core.trajectory import (
    PRESETS,
    CameraTree,
    Clip,
    TrajectoryConfig,
    articulated_tree,
    load_motionctrl_json,
    motionctrl_conditioning,
    plot_tree,
    preset_relative_c2w,
    save_motionctrl_json,
    tree_from_motionctrl,
)


@pytest.fixture(scope="module")
def tree():
    return articulated_tree(TrajectoryConfig())


def test_default_tree_counts(tree):
    assert len(tree) == 16
    assert sum(c.level == 1 for c in tree) == 4 and sum(c.level == 2 for c in tree) == 12
    assert len(tree.frame_ids()) == 16 * 16 == tree.c2w().shape[0] == tree.frame_codes().shape[0]
    assert tree.num_distinct_frames == 241
    idx = tree.distinct_frame_index()
    assert idx.shape == (256,) and set(idx.tolist()) == set(range(241))
    # Shared frames really are shared; distinct frames are distinct cameras except where
    # vertical moves commute with yaw orbits: U then orbit ends where orbit then U ends.
    c2w = tree.c2w()
    d = tree.distinct_c2w()
    assert d.shape == (241, 4, 4)
    np.testing.assert_array_equal(c2w, d[idx])
    ids = tree.distinct_frame_ids()
    assert len(set(ids)) == 241 and ids[0] == ("U", 0)
    flat = d.reshape(241, 16)
    gaps = np.linalg.norm(flat[:, None] - flat[None], axis=-1) + np.eye(241) * 9
    same = {(ids[i], ids[j]) for i, j in zip(*np.nonzero(gaps < 1e-9)) if i < j}
    assert same == {((f"{a}/{b}", 15), (f"{b}/{a}", 15)) for a in ("U", "D") for b in ("Round-RI_90", "Round-RI_f90")}
    assert np.sort(gaps, axis=None)[8] > 0.03  # one U step is 0.036
    # Undoing children are not generated.
    ids = set(tree.clip_ids())
    for undone in ("U/D", "D/U", "Round-RI_90/Round-RI_f90", "Round-RI_f90/Round-RI_90"):
        assert undone not in ids
    assert {"U/U", "U/Round-RI_90", "Round-RI_90/D"} <= ids


def test_skip_undo_false_and_levels():
    t = articulated_tree(TrajectoryConfig(skip_undo=False))
    assert len(t) == 20 and t.num_distinct_frames == 1 + 20 * 15
    assert "U/D" in t.clip_ids()
    t3 = articulated_tree(TrajectoryConfig(levels=3, frames_per_clip=14))
    assert len(t3) == 4 + 12 + 36 and t3.num_distinct_frames == 1 + 52 * 13
    assert max(c.level for c in t3) == 3
    t1 = articulated_tree(TrajectoryConfig(presets=["L", "R", "I", "O"], levels=1))
    assert t1.clip_ids() == ["L", "R", "I", "O"]


def test_child_starts_at_parent_last_frame_exactly(tree):
    for clip in tree:
        start = np.eye(4) if clip.parent is None else tree.clip(clip.parent).c2w[-1]
        np.testing.assert_array_equal(clip.c2w[0], start)
        if clip.parent is not None:
            assert clip.clip_id == f"{clip.parent}/{clip.preset}"
            np.testing.assert_array_equal(clip.frame_code[0], tree.clip(clip.parent).frame_code[-1])
        # Child = parent's last frame composed with the preset's relative motion, which for the
        # default geometry is the motion MotionCtrl is conditioned on, in units of pivot depth 1.7.
        rel = motionctrl_rows_to_c2w(motionctrl_conditioning(PRESETS[clip.preset].json_rows(16), 1.6))
        rel[:, :3, 3] *= 1.7 / (4.1 * 1.6)
        np.testing.assert_allclose(relative_c2w(clip.c2w, clip.c2w[0]), rel, atol=1e-12)
        R = clip.c2w[:, :3, :3]
        np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)


@pytest.fixture(scope="module")
def json_tree():
    return articulated_tree(TrajectoryConfig(geometry="json"))


ORBIT_CLIPS = ["Round-RI_90", "Round-RI_f90", "U/Round-RI_90", "Round-RI_90/Round-RI_90"]


def _orbit_checks(clip, pivot_depth):
    """Pivot on every optical axis; returns distances to it and the frame-0-relative poses."""
    T = clip.num_frames
    pivot = (clip.c2w[0] @ np.array([0.0, 0.0, pivot_depth, 1.0]))[:3]
    to_pivot = pivot - clip.c2w[:, :3, 3]
    np.testing.assert_allclose(np.cross(clip.c2w[:, :3, 2], to_pivot), 0.0, atol=1e-12)
    assert (np.einsum("ij,ij->i", clip.c2w[:, :3, 2], to_pivot) > 0).all()
    # Rotation about the vertical axis, 90/T degrees per frame as the reference's files:
    # frame T - 1 is at 90 (T - 1) / T = 84.375 degrees, the virtual frame T at 90.
    angles = np.rad2deg(rotation_angle(clip.c2w[0, :3, :3], clip.c2w[:, :3, :3]))
    np.testing.assert_allclose(angles, 90.0 * np.arange(T) / T, atol=1e-9)
    assert angles[-1] / (T - 1) * T == pytest.approx(90.0)
    rel = relative_c2w(clip.c2w, clip.c2w[0])
    np.testing.assert_allclose(rel[:, 1, 3], 0.0, atol=1e-12)  # stays at the same height
    np.testing.assert_allclose(rel[:, :3, 1], np.broadcast_to([0, 1.0, 0], (T, 3)), atol=1e-12)  # vertical axis
    assert np.sign(rel[-1, 0, 3]) == (1 if clip.preset == "Round-RI_90" else -1)  # 90: orbits to the right
    return np.linalg.norm(to_pivot, axis=1)


@pytest.mark.parametrize("clip_id", ORBIT_CLIPS)
def test_json_geometry_orbit_keeps_pivot_at_constant_distance(json_tree, clip_id):
    dist = _orbit_checks(json_tree.clip(clip_id), 1.7)
    np.testing.assert_allclose(dist, 1.7, atol=1e-12)


@pytest.mark.parametrize("clip_id", ORBIT_CLIPS)
def test_commanded_orbit_spirals_about_its_pivot(tree, clip_id):
    # The reference scales (3, 1, 4) before making poses relative: the pivot stays on the axis at
    # 3.2 + 0.9 cos(theta) MotionCtrl units (4.1 at the start, which pivot_depth maps to 1.7).
    dist = _orbit_checks(tree.clip(clip_id), 1.7)
    theta = np.deg2rad(90.0 * np.arange(16) / 16)
    np.testing.assert_allclose(dist, (3.2 + 0.9 * np.cos(theta)) * 1.7 / 4.1, atol=1e-12)


def test_translation_presets_directions(tree):
    step = 1.4 / 16 * 1.7 / 4.1  # a U clip moves 1.3125 / 4.1 pivot depths
    T = 16
    expected = {"U": (1, -1), "D": (1, 1)}
    for name, (axis, sign) in expected.items():
        c = tree.clip(name).c2w[:, :3, 3]
        np.testing.assert_allclose(c[:, axis], sign * step * np.arange(T), atol=1e-12)
        np.testing.assert_allclose(np.delete(c, axis, axis=1), 0.0, atol=1e-15)
        np.testing.assert_allclose(tree.clip(name).c2w[:, :3, :3], np.broadcast_to(np.eye(3), (T, 3, 3)), atol=0)
    # U moves toward -y: up in OpenCV.
    assert tree.clip("U").c2w[-1, 1, 3] == pytest.approx(-1.3125 * 1.7 / 4.1)
    moves = (("L", [-1, 0, 0], 3), ("R", [1, 0, 0], 3), ("I", [0, 0, 1], 4), ("O", [0, 0, -1], 4))
    for geometry, unit in (("json", 1.7 / 0.8), ("conditioning", 1.7 / 4.1)):
        t = articulated_tree(TrajectoryConfig(presets=("L", "R", "I", "O"), levels=1, geometry=geometry))
        for name, direction, weight in moves:
            w = weight if geometry == "conditioning" else 1
            np.testing.assert_allclose(t.clip(name).c2w[-1, :3, 3], unit * w * 1.3125 * np.array(direction),
                                       atol=1e-12)
    # speed is the generator's (generate.motionctrl_svd.speed); pivot_depth sets the unit.
    near = articulated_tree(TrajectoryConfig(pivot_depth=0.85))
    np.testing.assert_allclose(near.c2w()[:, :3, 3] * 2, tree.c2w()[:, :3, 3], atol=1e-12)
    np.testing.assert_allclose(near.c2w()[:, :3, :3], tree.c2w()[:, :3, :3], atol=1e-12)


def test_preset_rows_match_reference_shape():
    # Analytic values of the reference files (motionctrlsvd/examples/camera_poses/test_camera_*.json).
    u = PRESETS["U"].json_rows(16)
    np.testing.assert_allclose(u[:, 7], 0.2 + 0.0875 * np.arange(16), atol=1e-15)
    np.testing.assert_array_equal(np.delete(u, 7, axis=1), np.broadcast_to(np.delete(np.eye(3, 4).ravel(), 7), (16, 11)))
    assert PRESETS["L"].json_rows(16)[15, 3] == pytest.approx(1.5125)
    assert PRESETS["I"].json_rows(16)[15, 11] == pytest.approx(-1.5125)
    o = PRESETS["Round-RI_90"].json_rows(16)
    np.testing.assert_allclose(o[0], [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1.7], atol=1e-15)
    th = np.deg2rad(45.0)
    np.testing.assert_allclose(o[8], [np.cos(th), 0, np.sin(th), 0.9 * np.sin(th), 0, 1, 0, 0,
                                      -np.sin(th), 0, np.cos(th), 0.8 + 0.9 * np.cos(th)], atol=1e-15)
    f = PRESETS["Round-RI_f90"].json_rows(16)
    np.testing.assert_allclose(f[:, [0, 5, 10, 11]], o[:, [0, 5, 10, 11]], atol=1e-15)
    np.testing.assert_allclose(f[:, [2, 3, 8]], -o[:, [2, 3, 8]], atol=1e-15)


def test_motionctrl_conditioning_as_reference(tree):
    for clip in tree:
        rows = tree.motionctrl_rows(clip.clip_id)
        assert rows.shape == (16, 12)
        # Clips keep the pose-file rows; every clip of a preset has the preset's rows, whatever its parent.
        np.testing.assert_array_equal(rows, PRESETS[clip.preset].json_rows(16))
        cond = motionctrl_conditioning(rows, 1.6)
        np.testing.assert_allclose(cond[0], np.eye(3, 4).ravel(), atol=1e-12)
    # Translations: geometry rows (speed applied) weighted per axis by (3, 1, 4).
    for name in ("U", "L", "I"):
        geo = c2w_to_motionctrl_rows(preset_relative_c2w(PRESETS[name].json_rows(16), 1.6)).reshape(16, 3, 4)
        cond = motionctrl_conditioning(PRESETS[name].json_rows(16), 1.6).reshape(16, 3, 4)
        np.testing.assert_allclose(cond[:, :, 3], geo[:, :, 3] * [3, 1, 4], atol=1e-12)
    # Orbit: the reference scales before making poses relative, so the file's 0.9 offset matters:
    # t_rel_x = (3 * 0.9 - 4 * 1.7) * speed * sin(theta).
    cond = motionctrl_conditioning(PRESETS["Round-RI_90"].json_rows(16), 1.6).reshape(16, 3, 4)
    th = np.deg2rad(90.0 * np.arange(16) / 16)
    np.testing.assert_allclose(cond[:, 0, 3], (2.7 - 6.8) * 1.6 * np.sin(th), atol=1e-12)
    # Fallback for a clip without stored rows: its geometry (world units), relative to frame 0.
    bare = CameraTree((Clip("U", None, "U", 1, tree.clip("U").c2w, tree.clip("U").frame_code),))
    np.testing.assert_allclose(bare.motionctrl_rows("U")[:, 7], 1.4 / 16 * 1.7 / 4.1 * np.arange(16), atol=1e-12)


def test_frame_codes(tree):
    codes = tree.frame_codes()
    assert codes.min() >= 0.0 and codes.max() <= 1.0
    for clip in tree:
        if clip.parent is None:
            np.testing.assert_array_equal(clip.frame_code[0], [0.5, 0.5])
    # Reference signs: U +v, D -v, orbit right -u, orbit left +u; one step = 1 / (4 * 15).
    np.testing.assert_allclose(tree.clip("U").frame_code[-1], [0.5, 0.75])
    np.testing.assert_allclose(tree.clip("D").frame_code[-1], [0.5, 0.25])
    np.testing.assert_allclose(tree.clip("Round-RI_90").frame_code[-1], [0.25, 0.5])
    np.testing.assert_allclose(tree.clip("Round-RI_f90").frame_code[5], [0.5 + 5 / 60, 0.5])
    np.testing.assert_allclose(tree.clip("U/U").frame_code[-1], [0.5, 1.0])
    np.testing.assert_allclose(tree.clip("D/Round-RI_f90").frame_code[-1], [0.75, 0.25])
    # Generalised normaliser: levels * (T - 1) steps reach the border.
    t3 = articulated_tree(TrajectoryConfig(levels=3, presets=("D",), frames_per_clip=5))
    np.testing.assert_allclose(t3.clip("D/D/D").frame_code[:, 1], (-8 - np.arange(5) + 12) / 24)
    assert t3.frame_codes().min() == 0.0


def test_json_round_trip_exact(tree, tmp_path):
    text = json.dumps(tree.to_dict())
    back = CameraTree.from_dict(json.loads(text))
    assert back == tree
    np.testing.assert_array_equal(back.c2w(), tree.c2w())
    np.testing.assert_array_equal(back.frame_codes(), tree.frame_codes())
    np.testing.assert_array_equal(back.motionctrl_rows("U/Round-RI_90"), tree.motionctrl_rows("U/Round-RI_90"))
    d = json.loads(text)
    d["clips"][3]["c2w"][5][0][3] += 1e-15
    assert CameraTree.from_dict(d) != tree
    with pytest.raises(Lift3DError):
        CameraTree.from_dict({"format": "something else", "clips": []})
    # Stored arrays are read-only.
    with pytest.raises(ValueError):
        tree.clip("U").c2w[0, 0, 0] = 2.0


def test_tree_validation():
    good = articulated_tree(TrajectoryConfig(presets=("U",), levels=2))
    u, uu = good.clips
    with pytest.raises(Lift3DError, match="before"):
        CameraTree((uu, u))
    offset = np.zeros((16, 4, 4))
    offset[:, 0, 3] = 0.1
    shifted = Clip("U/U", "U", "U", 2, uu.c2w + offset, uu.frame_code)
    with pytest.raises(Lift3DError, match="last frame"):
        CameraTree((u, shifted))
    with pytest.raises(Lift3DError):
        Clip("X", None, "X", 1, np.eye(4)[None].repeat(3, 0), np.zeros((2, 2)))


def test_config_validation():
    with pytest.raises(Lift3DError, match="Round-RI_90"):
        TrajectoryConfig(presets=("U", "spin"))
    with pytest.raises(Lift3DError, match="levels"):
        TrajectoryConfig(levels=0)
    with pytest.raises(Lift3DError, match="frames_per_clip"):
        TrajectoryConfig(frames_per_clip=1)
    with pytest.raises(Lift3DError, match="twice"):
        TrajectoryConfig(presets=("U", "U"))
    with pytest.raises(Lift3DError, match="conditioning"):
        TrajectoryConfig(geometry="blender")
    with pytest.raises(Lift3DError, match="pivot_depth"):
        TrajectoryConfig(pivot_depth=-1.0)
    cfg = TrajectoryConfig(presets=["U", "D"])
    assert cfg.presets == ("U", "D")
    assert cfg.levels == 2 and cfg.frames_per_clip == 16 and cfg.skip_undo


def test_motionctrl_json_files_and_custom_tree(tmp_path):
    files = {}
    for cid in ("U", "Round-RI_90", "U/Round-RI_90", "Round-RI_90/U"):
        path = tmp_path / f"{cid.replace('/', '__')}.json"
        save_motionctrl_json(PRESETS[cid.split("/")[-1]].json_rows(16), path)
        files[cid] = path
    rows = load_motionctrl_json(files["U"])
    np.testing.assert_array_equal(rows, PRESETS["U"].json_rows(16))
    custom = tree_from_motionctrl({k: files[k] for k in ("U/Round-RI_90", "U", "Round-RI_90", "Round-RI_90/U")})
    assert custom.clip_ids() == ["U", "U/Round-RI_90", "Round-RI_90", "Round-RI_90/U"]
    ref = articulated_tree(TrajectoryConfig(presets=("U", "Round-RI_90")))
    for cid in custom.clip_ids():
        np.testing.assert_allclose(custom.clip(cid).c2w, ref.clip(cid).c2w, atol=1e-12)
        np.testing.assert_allclose(custom.clip(cid).frame_code, ref.clip(cid).frame_code, atol=1e-15)
        np.testing.assert_allclose(custom.motionctrl_rows(cid), ref.motionctrl_rows(cid), atol=1e-15)
    custom_json = tree_from_motionctrl(files, geometry="json")
    ref_json = articulated_tree(TrajectoryConfig(presets=("U", "Round-RI_90"), geometry="json"))
    np.testing.assert_allclose(custom_json.clip("Round-RI_90/U").c2w, ref_json.clip("Round-RI_90/U").c2w, atol=1e-12)
    # An unknown motion name gets its frame-code axis from its geometry: L rows -> +u, D rows -> -v.
    mine = tree_from_motionctrl({"sideways": PRESETS["L"].json_rows(16),
                                 "sideways/drop": PRESETS["D"].json_rows(16).tolist()})
    assert mine.clip("sideways/drop").parent == "sideways" and mine.clip("sideways/drop").level == 2
    np.testing.assert_allclose(mine.clip("sideways").frame_code[-1], [0.75, 0.5])
    np.testing.assert_allclose(mine.clip("sideways/drop").frame_code[-1], [0.75, 0.25])
    orbit = tree_from_motionctrl({"o": PRESETS["Round-RI_90"].json_rows(16)})
    assert orbit.clip("o").frame_code[-1, 0] < 0.5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[1, 2, 3]]))
    with pytest.raises(Lift3DError, match="12"):
        load_motionctrl_json(bad)
    with pytest.raises(Lift3DError, match="parent"):
        tree_from_motionctrl({"a/b": files["U"]})


def test_plot_tree_writes_png(tree, tmp_path):
    path = tmp_path / "tree.png"
    plot_tree(tree, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
