"""Depth Anything V2 (conversion of the official layout, tiny model through the backend), disparity alignment, and
the depth validity mask reaching the training loss."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lift3d_core.config import apply_overrides, build_config
from lift3d_core.depth import (
    CalibratedDepthConfig,
    DepthAnythingV2Config,
    DepthConfig,
    estimate_inverse_depth,
)
from lift3d_core.depth.align import fit_median, fit_robust_lsq
from lift3d_core.errors import Lift3DError

transformers = pytest.importorskip("transformers")

from lift3d_core.depth import depth_anything_v2 as dav2  # noqa: E402

TINY = dav2.ARCHITECTURES["tiny"]
REPO = Path(__file__).resolve().parents[1]


def _official_tensors(arch, seed=0) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout (names and shapes of ``depth_anything_v2_*.pth``)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: 0.3 * torch.randn(s, generator=gen) for k, s in dav2.official_shapes(arch).items()}


@pytest.fixture
def tiny_checkpoint(tmp_path):
    path = tmp_path / "depth_anything_v2_tiny.pth"
    tensors = _official_tensors(TINY)
    torch.save(tensors, path)
    return path, tensors


def _depth_cfg(path, **section) -> DepthConfig:
    return DepthConfig(backend="depth_anything_v2", depth_anything_v2=DepthAnythingV2Config(
        checkpoint=str(path), variant="tiny", input_size=56, **section))


def _scene(n=3, h=40, w=56, seed=0):
    """Frames and a smooth calibrated depth (a tilted plane plus a bump), z in about [2, 5]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    depth = np.stack([2.0 + 2.5 * xx + 0.5 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 20) + 0.2 * i
                      for i in range(n)]).astype(np.float32)
    frames = rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)
    return frames, depth


# -- the official layout ------------------------------------------------------------------------------------------


def test_official_vitl_layout_converts_onto_transformers_model_with_nothing_missing():
    arch = dav2.ARCHITECTURES["vitl"]
    shapes = dav2.official_shapes(arch)
    # the counts of the reference model (DepthAnythingV2('vitl') of the public repo, built and counted there)
    assert len(shapes) == 407 and sum(math.prod(s) for s in shapes.values()) == 335_315_649
    assert sum(k.startswith("pretrained.") for k in shapes) == 343 and sum(k.startswith("depth_head.") for k in shapes) == 64
    assert shapes["pretrained.pos_embed"] == (1, 1370, 1024) and shapes["pretrained.blocks.23.attn.qkv.weight"] == (3072, 1024)
    model = dav2.build_model(arch, "meta")  # full size, no memory
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    conv = dav2.convert_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()}, target)
    assert conv.missing == [] and conv.unexpected == [] and conv.mismatched == [] and conv.ignored == []
    assert sum(v.numel() for v in conv.state_dict.values()) == 335_315_649
    assert model.config.backbone_config.out_indices == [5, 12, 18, 24]  # after blocks 4, 11, 17, 23
    assert model.config.fusion_hidden_size == 256 and list(model.config.neck_hidden_sizes) == [256, 512, 1024, 1024]


def test_conversion_reports_what_does_not_fit():
    target = {k: tuple(v.shape) for k, v in dav2.build_model(TINY, "meta").state_dict().items()}
    tensors = _official_tensors(TINY)
    tensors.pop("depth_head.scratch.refinenet2.out_conv.bias")
    tensors["depth_head.scratch.output_conv2.4.weight"] = torch.zeros(1)
    tensors["pretrained.norm.weight"] = torch.zeros(7)
    conv = dav2.convert_state_dict(tensors, target)
    assert set(conv.missing) == {"neck.fusion_stage.layers.2.projection.bias", "backbone.layernorm.weight"}
    assert conv.unexpected == ["depth_head.scratch.output_conv2.4.weight"]
    assert len(conv.mismatched) == 1 and conv.mismatched[0].startswith("pretrained.norm.weight")


def test_tiny_checkpoint_in_the_official_layout_loads_bit_exactly(tiny_checkpoint):
    path, tensors = tiny_checkpoint
    model = dav2.load_weights(path, TINY)
    hf = model.state_dict()
    back = dav2.to_official(hf, TINY)
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)
    # the split rule by itself: query, key, value are the thirds of the fused projection, in that order
    q, k, v = (hf[n] for n in dav2.hf_names("pretrained.blocks.2.attn.qkv.weight", dav2.attention_naming(hf)))
    assert torch.equal(torch.cat([q, k, v]), tensors["pretrained.blocks.2.attn.qkv.weight"])


def test_checkpoint_problems_raise_one_error_naming_the_file(tmp_path, tiny_checkpoint):
    path, tensors = tiny_checkpoint
    with pytest.raises(Lift3DError, match=r"nowhere\.pth not found.*huggingface\.co"):
        dav2.load_weights(tmp_path / "nowhere.pth", TINY)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(Lift3DError, match=r"truncated\.pth .*truncated.*huggingface\.co"):
        dav2.load_weights(truncated, TINY)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": tensors}, wrapped)
    with pytest.raises(Lift3DError, match="not a plain state dict"):
        dav2.load_weights(wrapped, TINY)
    with pytest.raises(Lift3DError, match=r"not a Depth Anything V2 checkpoint of this size: \d+ missing"):
        dav2.load_weights(path, dav2.ARCHITECTURES["vitl"])


def test_network_input_size_follows_the_reference_resize():
    assert dav2.network_size(576, 1024, 518) == (518, 924)  # shorter side on 518, both multiples of 14
    assert dav2.network_size(1024, 576, 518) == (924, 518)
    assert dav2.network_size(576, 1024, 512) == (518, 910)  # LiftImage3D's 512: rounded up to whole patches
    assert dav2.network_size(518, 518, 518) == (518, 518)


# -- the tiny model through the backend ---------------------------------------------------------------------------


def _depth_from_model(path, frames):
    """A calibrated depth that is an exact affine map of the tiny model's own disparity (per-frame scale and shift),
    so that alignment has a known answer."""
    mono = dav2.relative_disparity(dav2.load_model(path, "tiny", "float32", "cpu"), frames, 56, 3)
    scale = 0.5 / mono.max(axis=(1, 2))
    return (1.0 / (scale[:, None, None] * mono + 0.1)).astype(np.float32), scale


def test_tiny_model_runs_through_the_backend_and_loads_once(tiny_checkpoint):
    path, _ = tiny_checkpoint
    frames, _ = _scene()
    model = dav2.load_model(path, "tiny", "float32", "cpu")
    assert dav2.load_model(path, "tiny", "float32", "cpu") is model  # cached: loaded once per process
    mono = dav2.relative_disparity(model, frames, 56, 2)
    assert mono.shape == frames.shape[:3] and np.ptp(mono) > 0
    assert not np.allclose(dav2.relative_disparity(model, frames[:, ::-1].copy(), 56, 2), mono)  # reads its input
    np.testing.assert_allclose(dav2.relative_disparity(model, frames, 56, 3), mono, rtol=1e-4, atol=1e-5 * mono.max())

    depth, scale = _depth_from_model(path, frames)
    for align in ("median", "robust_lsq"):
        est = estimate_inverse_depth(frames, depth, _depth_cfg(path, batch_size=2, align=align),
                                     confidence=np.ones_like(depth))
        assert est.inv_depth.shape == depth.shape and est.inv_depth.dtype == np.float32
        assert est.valid.shape == depth.shape and est.valid.dtype == bool and est.valid.all()
        np.testing.assert_allclose(est.inv_depth, 1.0 / depth, rtol=1e-3)
        np.testing.assert_allclose(est.per_frame["align_scale"], scale, rtol=1e-3)
        assert est.stats["frames_unaligned"] == 0 and set(est.seconds) == {"load", "network", "align"}


def test_unalignable_frames_are_reported_not_dropped(tiny_checkpoint):
    path, _ = tiny_checkpoint
    frames, _ = _scene()
    depth, _ = _depth_from_model(path, frames)
    confidence = np.ones_like(depth)
    confidence[1] = 0.0  # calibration trusts nothing in frame 1
    est = estimate_inverse_depth(frames, depth, _depth_cfg(path, min_confidence=0.5), confidence=confidence)
    assert est.stats["frames_unaligned"] == 1 and not est.valid[1].any() and np.isnan(est.per_frame["align_scale"][1])
    assert np.all(est.inv_depth[1] == 0) and est.valid[0].all() and est.valid[2].all()
    # the calibrated backend keeps the same frame's depth out of training by the same threshold
    cal = estimate_inverse_depth(frames, depth, DepthConfig(calibrated=CalibratedDepthConfig(min_confidence=0.5)),
                                 confidence=confidence)
    assert not cal.valid[1].any() and cal.valid[0].all()


def test_config_hashes_only_the_active_backend_and_names_its_checkpoint():
    params = {"depth": yaml.safe_load((REPO / "params.yaml").read_text())["depth"]}

    def cfg(*overrides):
        return build_config(DepthConfig, apply_overrides(params, list(overrides))["depth"], "depth")

    calibrated, dav2_cfg = cfg(), cfg("depth.backend=depth_anything_v2")
    assert set(calibrated.key_params()) == {"backend", "min_depth", "calibrated"}
    assert set(dav2_cfg.key_params()) == {"backend", "min_depth", "depth_anything_v2"}
    # a Depth Anything setting leaves the calibrated key alone, and moves its own
    assert cfg("depth.depth_anything_v2.align=robust_lsq").key_params() == calibrated.key_params()
    assert cfg("depth.backend=depth_anything_v2", "depth.depth_anything_v2.align=robust_lsq").key_params() != \
        dav2_cfg.key_params()
    # speed and file location are not hashed (the checkpoint's digest is, through DepthConfig.models)
    assert cfg("depth.backend=depth_anything_v2", "depth.depth_anything_v2.batch_size=1",
               "depth.depth_anything_v2.checkpoint=elsewhere.pth").key_params() == dav2_cfg.key_params()
    assert calibrated.models() == {}
    with pytest.raises(Lift3DError, match="align"):
        cfg("depth.depth_anything_v2.align=mean")


# -- alignment ----------------------------------------------------------------------------------------------------


def _disparity_with_outliers(kind: str, seed=0, n=20_000, scale=2.5, shift=-0.3):
    """Calibrated disparity ``metric = scale * mono + shift`` with 1% noise and 20% outliers."""
    rng = np.random.default_rng(seed)
    metric = rng.uniform(0.1, 1.0, n)
    mono = (metric - shift) / scale
    observed = metric * (1 + 0.01 * rng.standard_normal(n))
    out = rng.random(n) < 0.2
    if kind == "one_sided":  # e.g. background the calibration placed far too near
        observed[out] = rng.uniform(0.0, 2.0, out.sum())
    else:  # symmetric about the truth
        observed[out] = metric[out] + rng.choice([-1, 1], out.sum()) * rng.uniform(0.2, 0.6, out.sum())
    return mono, observed, out


@pytest.mark.parametrize("kind", ["one_sided", "symmetric"])
def test_robust_lsq_recovers_scale_and_shift_to_one_percent_with_20_percent_outliers(kind):
    mono, observed, _ = _disparity_with_outliers(kind)
    s, t = fit_robust_lsq(mono, observed)
    assert abs(s / 2.5 - 1) < 0.01 and abs(t / -0.3 - 1) < 0.01


def test_median_rule_is_biased_by_one_sided_outliers_unless_confidence_removes_them():
    # Why robust_lsq exists: the medians that centre the reference's ratios move with one-sided outliers.
    mono, observed, out = _disparity_with_outliers("one_sided")
    s, t = fit_median(mono, observed)
    assert abs(s / 2.5 - 1) > 0.05
    # the same data with the outliers left out (what min_confidence does when calibration flags them): 1%
    s, t = fit_median(mono[~out], observed[~out])
    assert abs(s / 2.5 - 1) < 0.01 and abs(t / -0.3 - 1) < 0.01


@pytest.mark.parametrize("method", ["median", "robust_lsq"])
def test_alignment_per_frame_recovers_known_affine_maps(method):
    from lift3d_core.depth.depth_anything_v2 import align_to_calibration

    _, depth = _scene(n=2, h=30, w=40)
    true = [(2.0, 0.05), (0.5, 0.2)]
    mono = np.stack([(1 / depth[i] - b) / a for i, (a, b) in enumerate(true)]).astype(np.float32)
    est = align_to_calibration(mono, depth, np.ones_like(depth), DepthConfig(
        depth_anything_v2=DepthAnythingV2Config(align=method)))
    np.testing.assert_allclose(est.per_frame["align_scale"], [a for a, _ in true], rtol=1e-4)
    np.testing.assert_allclose(est.per_frame["align_shift"], [b for _, b in true], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(est.inv_depth, 1 / depth, rtol=1e-4)
    assert est.valid.all()


# -- the mask in training -----------------------------------------------------------------------------------------


def test_validity_mask_gates_the_depth_loss_in_training():
    """A wrong depth target under the mask changes nothing; the same target unmasked changes the result."""
    from lift3d_core.camera import intrinsics_from_fov, look_at
    from lift3d_core.train import TrainStageConfig, train_scene

    h, w = 18, 24
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.uniform(-1, 1, (200, 2)), rng.uniform(3.5, 4.5, (200, 1))], 1).astype(np.float32)
    colors = rng.integers(0, 255, (200, 3), dtype=np.uint8)
    c2w = np.stack([look_at(np.array([x, 0.0, 0.0]), np.array([x, 0.0, 4.0])) for x in (-0.2, 0.2)])
    K = np.broadcast_to(intrinsics_from_fov(60.0, w, h), (2, 3, 3)).copy()
    frames = rng.integers(0, 255, (2, h, w, 3), dtype=np.uint8)
    codes = np.full((2, 2), 0.5)
    cfg = TrainStageConfig.from_params({
        "distortion": False, "coarse_iterations": 3, "fine_iterations": 3, "batch_size": 1, "backend": "torch",
        "compile_loss": "off", "depth_weight": 1.0, "densify_from": 1000, "sh_degree": 0})
    true_inv = np.full((2, h, w), 0.25, np.float32)
    valid = np.ones((2, h, w), bool)
    valid[:, :, : w // 2] = False
    wrong = true_inv.copy()
    wrong[~valid] = 5.0  # a target 20x too near, where the depth stage said it does not hold

    def train(inv, mask):
        return train_scene(points, colors, frames, c2w, K, codes, inv, cfg, depth_valid=mask).gaussians.means

    reference = train(true_inv, valid)
    assert torch.equal(train(wrong, valid), reference)
    assert not torch.equal(train(wrong, None), reference)


@pytest.mark.slow
def test_depth_stage_with_the_tiny_model_feeds_training(tiny_project):
    """The stage end to end on the tiny project: Depth Anything's targets and mask are stored and trained on."""
    from flows.lift import make_context, run_stages
    from flows.settings import configure_environment, find_project
    from lift3d_core.store import ArtifactStore
    from tests.conftest import tiny_params

    checkpoint = tiny_project / "depth_anything_v2_tiny.pth"
    torch.save(_official_tensors(TINY), checkpoint)
    params = apply_overrides(tiny_params(), [
        "depth.backend=depth_anything_v2", "depth.depth_anything_v2.variant=tiny",
        f"depth.depth_anything_v2.checkpoint={checkpoint}", "depth.depth_anything_v2.input_size=56",
        "train.depth_weight=0.5"])
    project = find_project(tiny_project)
    configure_environment(project)
    ctx = make_context("skimage:astronaut", params, "t", project.store_url, str(project.state_dir),
                       str(project.runs_dir))
    results = run_stages(ctx, until="train", use_prefect=False)
    arrays = ArtifactStore(project.store_url).read("depth", results["depth"].key).arrays
    calibrated = ArtifactStore(project.store_url).read("calibrate", results["calibrate"].key).arrays["depth"]
    assert arrays["inv_depth"].shape == calibrated.shape and arrays["valid"].dtype == bool
    assert arrays["align_scale"].shape == (calibrated.shape[0],)
    assert np.all(arrays["inv_depth"][~arrays["valid"]] == 0)
    assert "depth.valid_fraction" in results["depth"].metrics and not results["train"].hit


def test_new_weights_move_the_depth_key(tiny_checkpoint, tmp_path, monkeypatch):
    tiny_checkpoint = tiny_checkpoint[0]
    from lift3d_core.pipeline import plan

    monkeypatch.setenv("LIFT3D_DIGEST_CACHE", str(tmp_path / "digests.json"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = apply_overrides(params, ["depth.backend=depth_anything_v2",
                                      f"depth.depth_anything_v2.checkpoint={tiny_checkpoint}"])
    before = plan(params, "skimage:astronaut")
    assert before["depth"].doc["models"]["depth_anything_v2"].startswith("sha256:")
    Path(tiny_checkpoint).write_bytes(Path(tiny_checkpoint).read_bytes() + b"\0")  # other weights
    after = plan(params, "skimage:astronaut")
    assert after["depth"].key != before["depth"].key and after["calibrate"].key == before["calibrate"].key
    params["depth"]["depth_anything_v2"]["checkpoint"] = str(tmp_path / "absent.pth")
    with pytest.raises(Lift3DError, match=r"absent\.pth"):
        plan(params, "skimage:astronaut")
