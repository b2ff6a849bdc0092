"""MASt3R backend: network layout, checkpoint safety, pair graph, global alignment, end to end (tiny, CPU)."""

from __future__ import annotations

import argparse
import math
import os

import numpy as np
import pytest
import torch

from lift3d_core.calibrate.mast3r.align import PairPointmaps, global_alignment, weighted_umeyama
from lift3d_core.calibrate.mast3r.backend import Mast3rConfig, calibrate_mast3r, network_resolution
from lift3d_core.calibrate.mast3r.checkpoint import (
    build_from_checkpoint,
    constructor_string,
    convert_state_dict,
    net_config_from_constructor,
    parse_constructor,
    read_checkpoint,
)
from lift3d_core.calibrate.mast3r.inference import network_view, pairwise_inference, prepare_images
from lift3d_core.calibrate.mast3r.model import AsymmetricMASt3R, Mast3rNetConfig, RoPE2D
from lift3d_core.calibrate.mast3r.pairs import clip_membership, make_pairs
from lift3d_core.camera import intrinsics_from_fov, invert_rigid, rotation_angle, unproject_depth
from lift3d_core.errors import Lift3DError
from lift3d_core.synthetic import raycast_depth
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree

# The constructor string of the official checkpoint (naver/mast3r README, the metric model's training command).
OFFICIAL = ("AsymmetricMASt3R(pos_embed='RoPE100', patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), "
            "head_type='catmlp+dpt', output_mode='pts3d+desc24', depth_mode=('exp', -inf, inf), "
            "conf_mode=('exp', 1, inf), enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, "
            "dec_depth=12, dec_num_heads=12, two_confs=True, desc_conf_mode=('exp', 0, inf))")


def _tiny_model(seed: int = 0) -> AsymmetricMASt3R:
    torch.manual_seed(seed)
    return AsymmetricMASt3R(Mast3rNetConfig.tiny()).eval()


def _save_official_layout(model: AsymmetricMASt3R, path) -> None:
    args = argparse.Namespace(model=constructor_string(model.cfg), lr=1e-4, epochs=50, output_dir="out")
    torch.save({"model": model.state_dict(), "args": args}, path)


# ----------------------------------------------------------------------------- network layout


def test_full_size_network_has_the_official_layout():
    with torch.device("meta"):
        model = AsymmetricMASt3R(net_config_from_constructor(parse_constructor(OFFICIAL)))
    keys = list(model.state_dict())
    assert len(keys) == 1017
    assert keys[:2] == ["mask_token", "patch_embed.proj.weight"]
    assert keys[-2:] == ["downstream_head2.head_local_features.fc2.weight",
                         "downstream_head2.head_local_features.fc2.bias"]
    # 688.6 M distinct parameters with two_confs (the descriptor MLP emits 25 x 256 values per token);
    # 685.0 M without it, the count in METHOD.md
    assert sum(p.numel() for p in model.parameters()) == 688_638_856
    with torch.device("meta"):
        plain = AsymmetricMASt3R(Mast3rNetConfig(two_confs=False))
    assert abs(sum(p.numel() for p in plain.parameters()) / 1e6 - 685.0) < 0.05
    assert model.state_dict()["downstream_head1.head_local_features.fc2.weight"].shape == (25 * 256, 4 * 1792)


def test_constructor_string_is_parsed_never_evaluated():
    assert net_config_from_constructor(parse_constructor(OFFICIAL)) == Mast3rNetConfig.official()
    tiny = Mast3rNetConfig.tiny()
    assert net_config_from_constructor(parse_constructor(constructor_string(tiny))) == tiny
    for bad in ("__import__('os').system('true')", "AsymmetricMASt3R(enc_depth=open('x'))",
                "AsymmetricMASt3R(24)", "AsymmetricMASt3R(enc_depth=2**40)"):
        with pytest.raises(Lift3DError, match="not a literal"):
            parse_constructor(bad)
    with pytest.raises(Lift3DError, match="unsupported network"):
        net_config_from_constructor(parse_constructor(OFFICIAL.replace("catmlp+dpt", "linear")))


def test_rope_attention_depends_only_on_relative_position():
    torch.manual_seed(0)
    rope = RoPE2D(100.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        return float((rope(q, torch.tensor([[pq]])) * rope(k, torch.tensor([[pk]]))).sum())

    assert score((3, 5), (1, 2)) == pytest.approx(score((10, 20), (8, 17)), abs=1e-4)
    assert score((3, 5), (1, 2)) != pytest.approx(score((3, 5), (2, 1)), abs=1e-3)


# ----------------------------------------------------------------------------- checkpoint


def test_tiny_checkpoint_in_the_official_layout_loads_bit_exact(tmp_path):
    model = _tiny_model()
    path = tmp_path / "tiny_mast3r.pth"
    _save_official_layout(model, path)
    state, model_str = read_checkpoint(path)
    converted, missing, unexpected, ignored = convert_state_dict(state, model)
    assert (missing, unexpected, ignored) == ([], [], [])
    assert converted.keys() == state.keys()  # the identity mapping
    assert net_config_from_constructor(parse_constructor(model_str)) == model.cfg
    loaded = build_from_checkpoint(path)
    assert loaded.cfg == model.cfg
    ours = loaded.state_dict()
    assert set(ours) == set(model.state_dict())
    assert all(torch.equal(ours[k], v) for k, v in model.state_dict().items())
    img1, img2 = torch.rand(2, 1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        a, b = model(img1, img2), loaded(img1, img2)
        c = loaded(img2, img1)
    for view in (0, 1):
        for key in ("pts3d", "conf", "desc", "desc_conf"):
            assert torch.equal(a[view][key], b[view][key])
    assert not torch.allclose(a[1]["pts3d"], c[1]["pts3d"])
    assert a[0]["pts3d"].shape == (1, 32, 48, 3) and a[0]["desc"].shape == (1, 32, 48, 24)
    assert (a[0]["conf"] >= 1).all() and torch.allclose(a[0]["desc"].norm(dim=-1), torch.ones(1, 32, 48))


class _RunsCode:
    """A pickle payload that would create a file if it were ever unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _tiny_model().state_dict(), "args": _RunsCode(str(target))}, path)
    with pytest.raises(Lift3DError, match="refused"):
        read_checkpoint(path)
    assert not target.exists()


def test_missing_truncated_and_wrong_layout_checkpoints_are_named(tmp_path):
    with pytest.raises(Lift3DError, match=r"not found: .*nothing\.pth.*huggingface\.co/naver"):
        build_from_checkpoint(tmp_path / "nothing.pth")
    good = tmp_path / "good.pth"
    _save_official_layout(_tiny_model(), good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(Lift3DError, match=r"cut\.pth .*truncated"):
        read_checkpoint(cut)
    bare = tmp_path / "bare.pth"
    torch.save(_tiny_model().state_dict(), bare)
    with pytest.raises(Lift3DError, match="wrong layout"):
        read_checkpoint(bare)
    other = tmp_path / "other.pth"
    sd = _tiny_model().state_dict()
    sd["downstream_head1.extra.weight"] = torch.zeros(1)
    torch.save({"model": sd, "args": argparse.Namespace(model=constructor_string(Mast3rNetConfig.tiny()))}, other)
    with pytest.raises(Lift3DError, match="1 unexpected"):
        build_from_checkpoint(other)


# ----------------------------------------------------------------------------- views, pairs, inference


def test_network_views_follow_the_reference_resize_and_crop():
    assert network_resolution((576, 1024)) == (288, 512)
    assert network_resolution((576, 1024), 448) == (240, 448)  # the reference's load size
    assert network_resolution((600, 600)) == (384, 512)  # square frames become 4:3
    assert network_view((1024, 576)).net_hw == (512, 288)  # portrait stays portrait, as in the reference
    v = network_view((36, 48), 64)
    K = v.intrinsics(50.0)
    # the view's centre pixel and principal point land on the frame's centre and focal / (view px per frame px)
    assert K[0, 2] == pytest.approx(24.0) and K[1, 2] == pytest.approx(18.0)
    assert K[0, 0] == pytest.approx(50.0 * 48 / 64) and K[1, 1] == pytest.approx(50.0 * 36 / 48)
    depth = np.arange(np.prod(v.net_hw), dtype=np.float32).reshape(1, *v.net_hw)
    assert v.to_frame(depth).shape == (1, 36, 48)


def test_view_depth_maps_back_onto_the_frame_geometry():
    # depth ray-cast in the network view, mapped to the frame with the view's K, must be the frame's own depth
    view = network_view((70, 100), 64)
    (h, w), focal = view.net_hw, 40.0
    K_view = np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1.0]])
    depth_view = raycast_depth("room", np.eye(4), K_view, w, h).astype(np.float32)
    depth = view.to_frame(depth_view[None])[0]
    truth = raycast_depth("room", np.eye(4), view.intrinsics(focal), 100, 70)
    inside = depth > 0
    assert inside.mean() == pytest.approx(32 / 45, abs=0.02)  # 100x70 -> 64x45, cropped to 64x32 view pixels
    rel = np.abs(depth[inside] / truth[inside] - 1)
    assert np.median(rel) < 0.01 and np.quantile(rel, 0.9) < 0.05


def test_config_is_validated_and_keys_only_what_changes_numbers():
    for bad in ({"image_size": 500}, {"init": "random"}, {"min_conf_thr": 0.5}, {"dtype": "int8"},
                {"schedule": "step"}, {"batch_size": 0}):
        with pytest.raises(Lift3DError, match=r"calibrate\.mast3r"):
            Mast3rConfig(**bad)
    assert Mast3rConfig(batch_size=64, device="cuda").key_params() == Mast3rConfig().key_params()
    assert Mast3rConfig(iterations=100).key_params() != Mast3rConfig().key_params()


def test_pair_graph_is_oneref_plus_clip_neighbours_symmetrised():
    clip = np.array([0, 0, 0, 0, 1, 1, 1])
    pairs = make_pairs(clip, neighbours=1)
    as_set = {tuple(p) for p in pairs.tolist()}
    assert len(as_set) == len(pairs)
    assert all((j, i) in as_set for i, j in as_set)
    assert {(0, j) for j in range(1, 7)} <= as_set
    assert {(1, 2), (2, 3), (4, 5), (5, 6)} <= as_set and (3, 4) not in as_set and (1, 3) not in as_set
    assert len(make_pairs(clip, neighbours=0)) == 12  # the reference's oneref-0, symmetrised
    assert (1, 3) in {tuple(p) for p in make_pairs(clip, neighbours=2).tolist()}
    default_tree = articulated_tree(TrajectoryConfig())
    clips = clip_membership(default_tree)
    assert len(clips) == 241 and len(np.unique(clips[1:])) == 16
    assert len(make_pairs(clips, neighbours=0)) == 480 and len(make_pairs(clips, neighbours=1)) == 928


def test_pairwise_inference_encodes_once_and_matches_the_pair_forward():
    model = _tiny_model(1)
    frames = np.random.default_rng(0).integers(0, 255, (3, 20, 30, 3), dtype=np.uint8)
    view = network_view((20, 30), 48)
    images = prepare_images(frames, view)
    edges = np.array([[0, 1], [1, 0], [2, 0]])
    pw = pairwise_inference(model, images, edges, batch_size=2, with_desc=True)
    with torch.no_grad():
        r1, r2 = model(images[[2]], images[[0]])
    torch.testing.assert_close(pw.pts_i[2], r1["pts3d"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pw.pts_j[2], r2["pts3d"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pw.desc_conf_j[2], r2["desc_conf"][0], rtol=1e-4, atol=1e-5)
    assert pw.pts_i.shape == (3, *view.net_hw, 3) and pw.desc_i.shape == (3, *view.net_hw, 24)


# ----------------------------------------------------------------------------- global alignment


SMALL_TREE = TrajectoryConfig(presets=("U", "Round-RI_90"), levels=2, frames_per_clip=4)


def _synthetic_pairs(noise: float = 0.01, outliers: float = 0.05, seed: int = 0, tree_cfg=SMALL_TREE,
                     size=(32, 24)):
    """Ground-truth pointmaps of the 'room' scene over a tree, one random scale per pair, noise,
    and a fraction of wild points given the lowest confidence."""
    tree = articulated_tree(tree_cfg)
    c2w = tree.distinct_c2w()
    clip_of = clip_membership(tree)
    W, H = size
    K = intrinsics_from_fov(60.0, W, H)
    world = np.stack([unproject_depth(raycast_depth("room", c, K, W, H), c, K) for c in c2w])
    edges = make_pairs(clip_of, neighbours=1)
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("pi", "pj", "ci", "cj")}
    for i, j in edges:
        w2c = invert_rigid(c2w[i])
        s = math.exp(rng.uniform(-0.7, 0.7))  # each pair predicts at its own scale
        for frame, pk, ck in ((i, "pi", "ci"), (j, "pj", "cj")):
            p = (world[frame] @ w2c[:3, :3].T + w2c[:3, 3]) * s
            p = p * np.exp(rng.normal(0.0, noise, (H, W, 1)))
            conf = rng.uniform(2.0, 10.0, (H, W))
            wild = rng.random((H, W)) < outliers
            p[wild] = rng.normal(0.0, 3.0, (int(wild.sum()), 3))
            conf[wild] = 1.01
            out[pk].append(p)
            out[ck].append(conf)
    t = {k: torch.tensor(np.stack(v), dtype=torch.float32) for k, v in out.items()}
    pw = PairPointmaps(edges, t["pi"], t["pj"], t["ci"], t["cj"])
    extent = float(np.abs(world.reshape(-1, 3) - world.reshape(-1, 3).mean(0)).max())
    return pw, c2w, K, extent


def _pose_errors(c2w_est, c2w_true, extent):
    """Max rotation error (degrees) and max centre error / extent after a Sim(3) fit on the centres."""
    src = torch.tensor(c2w_est[:, :3, 3])[None]
    s, R, t = weighted_umeyama(src, torch.tensor(c2w_true[:, :3, 3])[None], torch.ones(1, len(c2w_est),
                                                                                      dtype=torch.float64))
    centres = (s[0] * src[0] @ R[0].T + t[0]).numpy()
    rot = np.degrees(rotation_angle(R[0].numpy() @ c2w_est[:, :3, :3], c2w_true[:, :3, :3])).max()
    return rot, np.linalg.norm(centres - c2w_true[:, :3, 3], axis=-1).max() / extent


def _roughly_obeyed(c2w, extent, seed=1):
    """Commanded cameras a generator obeyed only roughly: 2 degrees and 5% of the extent off (not frame 0)."""
    rng = np.random.default_rng(seed)
    commanded = c2w.copy()
    for f in range(1, len(c2w)):
        axis = rng.normal(size=3)
        angle = np.radians(2.0) * axis / np.linalg.norm(axis)
        Kx = np.array([[0, -angle[2], angle[1]], [angle[2], 0, -angle[0]], [-angle[1], angle[0], 0]])
        commanded[f, :3, :3] = (np.eye(3) + Kx) @ c2w[f, :3, :3]
        commanded[f, :3, 3] += rng.normal(0.0, 0.05 * extent / 3**0.5, 3)
    return commanded


@pytest.mark.parametrize("init", ["mst", "commanded"])
def test_global_alignment_recovers_known_cameras_and_focal(init):
    pw, c2w, K, extent = _synthetic_pairs()
    al = global_alignment(pw, iterations=200, init=init, c2w_commanded=_roughly_obeyed(c2w, extent))
    rot, trans = _pose_errors(al.c2w, c2w, extent)
    assert np.allclose(al.c2w[0], np.eye(4))  # the input view stays at the origin
    assert rot < 0.5 and trans < 0.01, (rot, trans)
    assert al.focal == pytest.approx(K[0, 0], rel=0.02)
    assert al.loss < al.loss_init
    assert al.confidence.min() >= 1.0 and al.depth.shape == (len(c2w), 24, 32)


@pytest.mark.slow
def test_global_alignment_on_the_default_tree():
    # the full tree (241 frames, 928 pairs, frames two clips away from the input) at 16x12 pixels, ~15 s
    pw, c2w, K, extent = _synthetic_pairs(tree_cfg=TrajectoryConfig(), size=(16, 12))
    assert len(c2w) == 241 and len(pw.edges) == 928
    al = global_alignment(pw, iterations=400, init="commanded", c2w_commanded=_roughly_obeyed(c2w, extent))
    rot, trans = _pose_errors(al.c2w, c2w, extent)
    assert rot < 0.5 and trans < 0.01, (rot, trans)
    assert al.focal == pytest.approx(K[0, 0], rel=0.02)


# ----------------------------------------------------------------------------- end to end


def _tiny_run(tmp_path):
    """(a tiny random MASt3R in the official layout, 4 random frames 48x36, their cameras sliding along x)."""
    path = tmp_path / "tiny_mast3r.pth"
    _save_official_layout(_tiny_model(2), path)
    frames = np.random.default_rng(0).integers(0, 255, (4, 36, 48, 3), dtype=np.uint8)
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, 0, 3] = [0.0, 0.1, 0.2, 0.3]
    return path, frames, c2w


def test_calibrate_mast3r_runs_a_tiny_random_model_end_to_end(tmp_path, progress_recorder):
    path, frames, c2w = _tiny_run(tmp_path)
    cfg = Mast3rConfig(image_size=64, iterations=10, min_conf_thr=1.0, device="cpu")
    cal = calibrate_mast3r(frames, c2w, intrinsics_from_fov(60, 48, 36), np.array([0, 0, 0, 0]), cfg,
                           checkpoint_path=path, max_points=500, progress=progress_recorder)
    assert cal.c2w.shape == (4, 4, 4) and cal.K.shape == (4, 3, 3)
    assert progress_recorder.phases() == ["pairs", "alignment"]
    assert cal.depth.shape == cal.confidence.shape == (4, 36, 48)
    assert np.allclose(cal.c2w[0, :3, :3], np.eye(3), atol=1e-6)  # input view: identity rotation
    assert np.allclose(cal.K[:, 0, 0], cal.K[0, 0, 0]) and cal.K[0, 0, 0] == pytest.approx(cal.K[0, 1, 1], rel=0.01)
    assert ((cal.confidence == 0) | (cal.confidence >= 1)).all() and (cal.confidence >= 1).mean() > 0.9
    assert np.abs(cal.points).max() == pytest.approx(10.0, rel=1e-5)
    assert cal.points.shape[0] == cal.colors.shape[0] == 500


def test_mast3r_through_the_calibrate_registry_keys_its_checkpoint(tmp_path, monkeypatch):
    from lift3d_core.calibrate import CalibrateConfig, FrameLayout, calibrate
    from lift3d_core.calibrate.contract import Similarity

    monkeypatch.setenv("LIFT3D_DIGEST_CACHE", str(tmp_path / "digests.json"))
    path, frames, c2w = _tiny_run(tmp_path)
    m = Mast3rConfig(checkpoint=str(path), image_size=64, iterations=10, min_conf_thr=1.0, device="cpu")
    cfg = CalibrateConfig(backend="mast3r", max_points=500, mast3r=m)
    cal = calibrate(frames, c2w, intrinsics_from_fov(60, 48, 36), cfg, layout=FrameLayout.single_clip(4))
    assert isinstance(cal.to_commanded, Similarity) and cal.registered.all()
    # the fitted similarity maps the calibrated centres onto the commanded ones as well as a similarity can
    moved = cal.to_commanded.apply_c2w(cal.c2w)
    assert moved.shape == (4, 4, 4)
    digest = cfg.models()["mast3r"]
    assert digest.startswith("sha256:") and len(digest) == 71
    # what only changes the speed stays out of the key; what changes the numbers is in it
    from dataclasses import replace
    assert replace(cfg, mast3r=replace(m, batch_size=1)).key_params() == cfg.key_params()
    assert replace(cfg, mast3r=replace(m, iterations=11)).key_params() != cfg.key_params()
    path.write_bytes(path.read_bytes() + b"\0")  # another file: another digest
    assert cfg.models()["mast3r"] != digest
