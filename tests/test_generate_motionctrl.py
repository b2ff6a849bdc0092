"""MotionCtrl-SVD backend on the CPU: tiny random-init models of the real classes, checkpoints written here
in the official (sgm, Lightning-style) layout."""

from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from lift3d_core.errors import Lift3DError
from lift3d_core.generate import GenerateConfig, MotionCtrlSVDConfig, generate
from lift3d_core.generate.motionctrl_svd import convert
from lift3d_core.generate.motionctrl_svd.backend import clear_model_cache, generate_motionctrl, load_model
from lift3d_core.generate.motionctrl_svd.model import OFFICIAL, TINY, CameraTemporalBlock, build_model
from lift3d_core.generate.motionctrl_svd.pose import export_pose_files, import_pose_files
from lift3d_core.generate.motionctrl_svd.sampler import clip_noise
from lift3d_core.pipeline import plan
from lift3d_core.trajectory import TrajectoryConfig, articulated_tree

H = W = 64  # a tiny UNet of 2 levels on 8x8 latents


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model = build_model(TINY)
    # Random pose columns: the camera module is not the identity, so poses matter.
    for m in model.unet.modules():
        if isinstance(m, CameraTemporalBlock):
            torch.nn.init.normal_(m.cc_projection.weight[:, -12:], std=0.5)
    return model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_model):
    path = tmp_path_factory.mktemp("ckpt") / "motionctrl_svd.ckpt"
    torch.save({"state_dict": convert.to_official(tiny_model.state_dict(), TINY), "global_step": 1}, path)
    return path


def _cfg(path, **kw) -> GenerateConfig:
    mc = dict(checkpoint=str(path), model="tiny", steps=2, dtype="fp32", device="cpu")
    mc.update(kw)
    return GenerateConfig(backend="motionctrl_svd", seed=7, motionctrl_svd=MotionCtrlSVDConfig(**mc))


def _image(seed=0):
    return (np.random.default_rng(seed).random((H, W, 3)) * 255).astype(np.uint8)


def _tree(levels=2, frames=4):
    # 2 + 4 clips: both kinds of motion, both levels, in seconds
    return articulated_tree(TrajectoryConfig(presets=("U", "Round-RI_f90"), levels=levels, frames_per_clip=frames))


def test_full_size_layout_has_the_reference_tensor_counts():
    # METHOD.md counted a random-init build of the reference engine: 2,478 float32 tensors, 2,402 M values.
    model = build_model(OFFICIAL, device="meta")
    official = convert.to_official(model.state_dict(), OFFICIAL)
    groups = {"model.diffusion_model.": "unet", "first_stage_model.": "vae", convert.CLIP: "clip",
              convert.COND_AE: "cond_ae"}
    count, values = Counter(), Counter()
    for k, v in official.items():
        g = next(name for prefix, name in groups.items() if k.startswith(prefix))
        count[g] += 1
        values[g] += v.numel()
    assert count == {"unet": 1460, "vae": 372, "clip": 398, "cond_ae": 248}
    assert round(values["unet"] / 1e6) == 1537 and round(values["vae"] / 1e5) == 977
    assert round(values["clip"] / 1e5) == 6838 and round(values["cond_ae"] / 1e5) == 837
    cc = {k: tuple(v.shape) for k, v in official.items() if k.endswith("cc_projection.weight")}
    assert len(cc) == 16 and cc["model.diffusion_model.input_blocks.1.1.time_stack.0.cc_projection.weight"] == (320, 332)
    assert cc["model.diffusion_model.middle_block.1.time_stack.0.cc_projection.weight"] == (1280, 1292)
    assert cc["model.diffusion_model.output_blocks.11.1.time_stack.0.cc_projection.weight"] == (320, 332)


def test_official_checkpoint_loads_exactly(tiny_model, tiny_ckpt):
    raw = torch.load(tiny_ckpt, weights_only=True)["state_dict"]
    ours = tiny_model.state_dict()
    _, missing, unexpected, ignored = convert.convert_checkpoint(raw, TINY, {k: v.shape for k, v in ours.items()})
    assert missing == [] and unexpected == []
    assert ignored and all(k.startswith(convert.IGNORED_PREFIXES) for k in ignored)
    assert any("token_embedding" in k for k in ignored) and any(".decoder." in k for k in ignored)
    clear_model_cache()
    loaded = load_model(tiny_ckpt, spec=TINY, dtype=torch.float32)
    assert load_model(tiny_ckpt, spec=TINY, dtype=torch.float32) is loaded  # built once per process
    got = loaded.state_dict()
    assert set(got) == set(ours)
    assert all(torch.equal(got[k], ours[k]) for k in ours)  # bit-identical


def test_unet_group_norms_have_the_reference_eps(tiny_model, tiny_ckpt):
    # sgm's SVD UNet normalises every ResBlock (both halves of a VideoResBlock) with GroupNorm eps 1e-5, the
    # spatial-video transformers' input with 1e-6, its output with 1e-5. diffusers alone builds the res blocks
    # of its cross-attention down blocks and of all up blocks with 1e-6: against the reference code
    # (bench/motionctrl_parity.py) that moved the UNet's output by 1.4e-5 of its max even in float64.
    with torch.device("meta"):
        official = OFFICIAL.unet()
    clear_model_cache()
    loaded = load_model(tiny_ckpt, spec=TINY, dtype=torch.float32)
    for unet, spec in ((official, OFFICIAL), (tiny_model.unet, TINY), (loaded.unet, TINY)):
        levels, attn = len(spec.unet_channels), sum(spec.unet_attention)
        eps = {n: m.eps for n, m in unet.named_modules() if isinstance(m, torch.nn.GroupNorm)}
        res = [e for n, e in eps.items() if n.endswith(("_res_block.norm1", "_res_block.norm2"))]
        res_blocks = levels * spec.layers_per_block + 2 + levels * (spec.layers_per_block + 1)
        assert res == [1e-5] * (4 * res_blocks)  # 22 res blocks x 2 halves x 2 norms in the official UNet
        transformers = [e for n, e in eps.items() if n.endswith(".norm") and ".attentions." in n]
        assert transformers == [1e-6] * (attn * spec.layers_per_block + 1 + attn * (spec.layers_per_block + 1))
        assert eps["conv_norm_out"] == 1e-5
        assert len(eps) == len(res) + len(transformers) + 1


def test_broken_checkpoints_fail_with_one_clear_error(tmp_path, tiny_ckpt):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_ckpt.read_bytes()[: tiny_ckpt.stat().st_size // 2])
    with pytest.raises(Lift3DError, match=r"truncated.ckpt.*huggingface.co/TencentARC/MotionCtrl"):
        load_model(truncated, spec=TINY)
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.conv.weight": torch.zeros(1)}}, wrong)
    with pytest.raises(Lift3DError, match=r"wrong.ckpt is not MotionCtrl-SVD's layout: .* missing"):
        load_model(wrong, spec=TINY)
    other = tmp_path / "other.ckpt"
    torch.save({"model": {"a": torch.zeros(1)}}, other)
    with pytest.raises(Lift3DError, match=r"other.ckpt is not MotionCtrl-SVD's layout"):
        load_model(other, spec=TINY)
    with pytest.raises(Lift3DError, match=r"missing.*motionctrl_svd.ckpt"):
        generate(_image(), _tree(1), _cfg(tmp_path / "absent.ckpt"))


def test_sampler_runs_and_is_deterministic(tiny_ckpt):
    tree = _tree(levels=2, frames=4)
    image = _image()
    seen = []
    video = generate(image, tree, _cfg(tiny_ckpt), progress=lambda d, t: seen.append((d, t)))
    assert video.frames.shape == (len(tree), 4, H, W, 3) and video.frames.dtype == np.uint8
    assert video.depth_hint is None and video.K.shape == (3, 3)
    assert seen[-1] == (tree.num_distinct_frames, tree.num_distinct_frames)
    for k, clip in enumerate(tree.clips):
        start = image if clip.parent is None else video.frames[tree.clip_ids().index(clip.parent), -1]
        np.testing.assert_array_equal(video.frames[k, 0], start)
    assert video.frames[:, 1:].std() > 1  # the sampler produced pictures, not a constant
    again = generate(image, tree, _cfg(tiny_ckpt))
    np.testing.assert_array_equal(again.frames, video.frames)
    other_seed = generate(image, tree, GenerateConfig(**{**_cfg(tiny_ckpt).__dict__, "seed": 8}))
    assert not np.array_equal(other_seed.frames[:, 1:], video.frames[:, 1:])


def test_camera_module_changes_output_and_is_neutral_at_identity(tiny_model):
    torch.manual_seed(1)
    b, t, h, w = 2, 4, 8, 8
    sample = torch.randn(b, t, 8, h, w)
    c_noise = torch.full((b,), 0.3)
    embeds = torch.randn(b, 1, TINY.cross_attention_dim)
    ids = torch.tensor([[10.0, 100.0, 0.1]]).expand(b, 3)
    pose_a, pose_b = torch.randn(b, t, 12), torch.randn(b, t, 12)
    out_a = tiny_model.unet_call(sample, c_noise, embeds, ids, pose_a)
    out_b = tiny_model.unet_call(sample, c_noise, embeds, ids, pose_b)
    assert (out_a - out_b).abs().max() > 1e-3

    # Identity on the features ([I | 0], zero bias, MotionCtrl's init with zeroed pose columns): every
    # output feature is x_i * 1 plus exact zeros, so the module is neutral bit for bit, whatever the poses.
    neutral = build_model(TINY)
    neutral.load_state_dict(tiny_model.state_dict())
    for m in neutral.unet.modules():
        if isinstance(m, CameraTemporalBlock):
            c = m.cc_projection.in_features - 12
            with torch.no_grad():
                m.cc_projection.weight.zero_()
                m.cc_projection.weight[:, :c] = torch.eye(c)
                m.cc_projection.bias.zero_()
    plain = neutral.unet_call(sample, c_noise, embeds, ids, None)
    assert torch.equal(neutral.unet_call(sample, c_noise, embeds, ids, pose_a), plain)
    assert torch.equal(neutral.unet_call(sample, c_noise, embeds, ids, pose_b), plain)


def test_batched_generation_equals_clip_by_clip(tiny_model):
    tree = _tree(levels=2, frames=4)
    image = _image(3)
    batched = generate_motionctrl(image, tree, _cfg("unused", max_batch=0), model=tiny_model)
    level1 = {c.clip_id: batched.frames[k] for k, c in enumerate(tree.clips) if c.level == 1}
    # Clip by clip, level 2 started from the same parent frames (a child starts from its parent's uint8 last
    # frame, so a rounding difference there would be a different input, not a batching effect).
    single = generate_motionctrl(image, tree, _cfg("unused", max_batch=1), model=tiny_model, done=level1)
    alone = generate_motionctrl(image, tree, _cfg("unused", max_batch=1), model=tiny_model)
    for got in (single.frames, alone.frames[:2]):
        diff = np.abs(batched.frames[: len(got)].astype(int) - got.astype(int))
        # float rounding of other batch shapes moves a rare uint8 value by one
        assert diff.max() <= 1 and (diff > 0).mean() < 0.002


def test_resume_generates_only_unfinished_clips(tiny_model):
    tree = _tree(levels=2, frames=4)
    image = _image(4)
    cfg = _cfg("unused", max_batch=2)
    stored = {}
    full = generate_motionctrl(image, tree, cfg, model=tiny_model, on_clip=lambda cid, f: stored.setdefault(cid, f))
    assert list(stored) == tree.clip_ids()
    done = {cid: stored[cid] for cid in tree.clip_ids()[:3]}  # killed after 3 clips
    again = []
    resumed = generate_motionctrl(image, tree, cfg, model=tiny_model, done=done,
                                  on_clip=lambda cid, f: again.append(cid))
    assert again == tree.clip_ids()[3:]
    np.testing.assert_array_equal(resumed.frames[:3], full.frames[:3])
    # the remaining clips fall into other batches than before: equal to float rounding
    assert np.abs(resumed.frames.astype(int) - full.frames.astype(int)).max() <= 1


def test_noise_depends_on_seed_and_clip_only():
    a1, c1 = clip_noise(42, "U/D", 4, 64, 64)
    a2, c2 = clip_noise(42, "U/D", 4, 64, 64)
    assert torch.equal(a1, a2) and torch.equal(c1, c2)
    assert not torch.equal(a1, clip_noise(42, "U", 4, 64, 64)[0])
    assert not torch.equal(a1, clip_noise(43, "U/D", 4, 64, 64)[0])


def test_speed_rekeys_generation_only(tmp_path, tiny_ckpt, monkeypatch):
    monkeypatch.setenv("LIFT3D_DIGEST_CACHE", str(tmp_path / "digests.json"))
    params = {"generate": {"backend": "motionctrl_svd", "motionctrl_svd": {"checkpoint": str(tiny_ckpt)}}}

    def keys(p):
        return {name: s.key for name, s in plan(p, "skimage:astronaut").items()}

    base = keys(params)
    faster = keys({"generate": {**params["generate"], "motionctrl_svd": {"checkpoint": str(tiny_ckpt), "speed": 1.0}}})
    assert faster["trajectory"] == base["trajectory"] and faster["ingest"] == base["ingest"]
    assert faster["generate"] != base["generate"] and faster["train"] != base["train"]
    batch = keys({"generate": {**params["generate"], "motionctrl_svd": {"checkpoint": str(tiny_ckpt), "max_batch": 3}}})
    assert batch == base
    other = tmp_path / "other.ckpt"
    other.write_bytes(tiny_ckpt.read_bytes() + b"\0")
    new_weights = keys({"generate": {**params["generate"], "motionctrl_svd": {"checkpoint": str(other)}}})
    assert new_weights["generate"] != base["generate"] and new_weights["trajectory"] == base["trajectory"]


def test_motionctrl_svd_carries_its_own_version_in_its_keys(tmp_path, tiny_ckpt, monkeypatch):
    """The GroupNorm fix moved ``motionctrl_svd``'s backend version to 2: its generate key document says so, the
    synthetic generator's does not (its keys, and the golden digests, are what they were)."""
    from lift3d_core.pipeline import STAGES

    monkeypatch.setenv("LIFT3D_DIGEST_CACHE", str(tmp_path / "digests.json"))
    motion = {"generate": {"backend": "motionctrl_svd", "motionctrl_svd": {"checkpoint": str(tiny_ckpt)}}}
    version = STAGES["generate"].version
    assert plan(motion, "skimage:astronaut")["generate"].doc["stage_version"] == f"{version}+motionctrl_svd.2"
    assert plan({}, "skimage:astronaut")["generate"].doc["stage_version"] == version


def test_pose_files_round_trip(tmp_path):
    tree = articulated_tree(TrajectoryConfig())
    files = export_pose_files(tree, tmp_path / "poses")
    assert len(files) == 16 and files["U/Round-RI_90"].name == "test_camera_U+Round-RI_90.json"
    rows = np.asarray(__import__("json").loads(files["U"].read_text()))
    assert rows.shape == (16, 12)  # MotionCtrl's 16 x 12 layout
    back = import_pose_files(tmp_path / "poses")
    assert back.clip_ids() == tree.clip_ids()
    for clip in tree.clips:
        np.testing.assert_array_equal(back.motionctrl_rows(clip.clip_id), tree.motionctrl_rows(clip.clip_id))
        np.testing.assert_allclose(back.clip(clip.clip_id).c2w, clip.c2w, atol=1e-12)
        np.testing.assert_allclose(back.clip(clip.clip_id).frame_code, clip.frame_code, atol=1e-15)


def test_a_clip_built_from_geometry_is_commanded_as_built():
    """Pose-file rows are scaled (x axis_scale x speed) as MotionCtrl does; a clip given only as cameras is already
    in the conditioning's units and is commanded unscaled."""
    from lift3d_core.camera import c2w_to_motionctrl_rows
    from lift3d_core.generate.motionctrl_svd.pose import clip_conditioning
    from lift3d_core.trajectory import CameraTree, Clip, TrajectoryConfig, articulated_tree

    preset = articulated_tree(TrajectoryConfig(levels=1)).clips[0]
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, 0, 3] = [0.0, 0.1, 0.2, 0.3]  # a slide right, in world units
    built = Clip("slide", None, "slide", 1, c2w, np.full((4, 2), 0.5))
    tree = CameraTree([preset, built])
    np.testing.assert_allclose(tree.motionctrl_rows("slide"), c2w_to_motionctrl_rows(c2w), atol=1e-12)
    cond = clip_conditioning(tree, "slide", 1.6)
    np.testing.assert_allclose(cond[:, [3, 7, 11]], [[0, 0, 0], [-0.1, 0, 0], [-0.2, 0, 0], [-0.3, 0, 0]], atol=1e-12)
    raw = np.asarray(preset.motionctrl_rows)
    t_raw = raw.reshape(-1, 3, 4)[:, :, 3] - raw.reshape(-1, 3, 4)[:1, :, 3]
    scaled = clip_conditioning(tree, preset.clip_id, 1.6)
    np.testing.assert_allclose(scaled.reshape(-1, 3, 4)[:, :, 3], t_raw * np.array([3.0, 1.0, 4.0]) * 1.6, atol=1e-9)
    # the weights are the tree's, the ones its cameras were shaped with (trajectory.motionctrl_axis_scale)
    other = articulated_tree(TrajectoryConfig(levels=1, motionctrl_axis_scale=(1.0, 2.0, 1.0)))
    assert CameraTree.from_dict(other.to_dict()).motionctrl_axis_scale == (1.0, 2.0, 1.0)
    scaled = clip_conditioning(other, other.clips[0].clip_id, 1.6)
    np.testing.assert_allclose(scaled.reshape(-1, 3, 4)[:, :, 3], t_raw * np.array([1.0, 2.0, 1.0]) * 1.6, atol=1e-9)


def test_edm_noise_levels_follow_the_closed_form():
    from lift3d_core.generate.motionctrl_svd.sampler import edm_sigmas

    s = edm_sigmas(50, 0.002, 700.0, 7.0).double()
    assert s.shape == (51,) and s[-1] == 0.0
    assert float(s[0]) == pytest.approx(700.0, rel=1e-5) and float(s[-2]) == pytest.approx(0.002, rel=1e-4)
    i = torch.arange(50, dtype=torch.float64)
    expected = (700.0 ** (1 / 7) + i / 49 * (0.002 ** (1 / 7) - 700.0 ** (1 / 7))) ** 7
    torch.testing.assert_close(s[:-1], expected, rtol=1e-5, atol=0)


def test_one_sampler_step_is_the_guided_v_prediction_denoiser(tiny_model):
    """With one step (sigma_max -> 0) Euler lands on the denoised latent, computed here by hand from the UNet: SVD's
    v-prediction scalings (c_skip = 1 / (s^2 + 1), c_out = -s / sqrt(s^2 + 1), c_in = 1 / sqrt(s^2 + 1),
    c_noise = log(s) / 4), the conditional and unconditional branches mixed by the per-frame guidance ramp."""
    from lift3d_core.generate.motionctrl_svd.sampler import sample_latents

    mc = _cfg("unused.ckpt", steps=1, min_guidance=1.0, max_guidance=3.0).motionctrl_svd
    g = torch.Generator().manual_seed(0)
    t, h, w = 4, 8, 8
    noise = torch.randn(1, t, 4, h, w, generator=g)
    latent = torch.randn(1, 4, h, w, generator=g)
    embeds = torch.randn(1, 1, tiny_model.image_encoder.config.projection_dim, generator=g)
    pose = torch.randn(1, t, 12, generator=g)
    out = sample_latents(tiny_model, noise, latent, embeds, pose, mc)

    s = mc.sigma_max
    x = noise * (1 + s * s) ** 0.5
    ids = torch.tensor([[mc.fps_id, mc.motion_bucket_id, mc.cond_aug]])
    with torch.no_grad():
        def denoise(image_latent, image_embeds):
            sample = torch.cat([x / (s * s + 1) ** 0.5, image_latent[:, None].expand(-1, t, -1, -1, -1)], dim=2)
            v = tiny_model.unet_call(sample, torch.full((1,), 0.25 * np.log(s)), image_embeds, ids, pose)
            return v * (-s / (s * s + 1) ** 0.5) + x / (s * s + 1)

        cond, uncond = denoise(latent, embeds), denoise(torch.zeros_like(latent), torch.zeros_like(embeds))
    ramp = torch.linspace(1.0, 3.0, t).view(1, t, 1, 1, 1)
    # float32 sums ordered otherwise (both branches in one call there): 2e-4 of values of order 1
    torch.testing.assert_close(out, uncond + ramp * (cond - uncond), rtol=1e-3, atol=1e-3)
    assert float((cond - uncond).abs().mean()) > 1e-2  # the two branches differ: the ramp is tested
