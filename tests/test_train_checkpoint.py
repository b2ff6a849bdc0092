"""A killed training run resumes from its checkpoint and ends exactly where an uninterrupted run ends (CPU)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from lift3d_core.splat.checkpoint import TrainCheckpoint
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.train import TrainConfig, Trainer
from tests.test_distortion import noisy_init, render_frames, tiny_cameras, tiny_scene, tiny_train_cfg
from tests.test_train import scene  # noqa: F401  (the fixture)


class Killed(Exception):
    pass


def _kill_at(step_to_die: int):
    def callback(step, metrics):
        if step >= step_to_die:
            raise Killed
    return callback


def _assert_same(a: Gaussians, b: Gaussians):
    for name in Gaussians.field_names():
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_a_killed_plain_run_resumes_bit_for_bit(scene, tmp_path):  # noqa: F811
    init, frames, c2w, K, _ = scene
    # densification at steps 10 and 20 (split samples from the strategy's generator) spans the kill at step 16
    cfg = TrainConfig(iterations=28, batch_size=2, sh_degree=1, sh_degree_every=12, densify_from=9, densify_every=10,
                      densify_until=21, log_every=4)
    straight = Trainer(init, frames, c2w, K, cfg, device="cpu").run()

    ckpt = TrainCheckpoint(tmp_path / "train.pt", key="run-a", every_seconds=0)
    with pytest.raises(Killed):
        Trainer(init, frames, c2w, K, cfg, device="cpu").run(callback=_kill_at(16), checkpoint=ckpt)
    assert ckpt.path.exists() and ckpt.saves == 15  # saved after every step before the one the kill interrupted
    resumed_ckpt = TrainCheckpoint(tmp_path / "train.pt", key="run-a", every_seconds=0)
    resumed = Trainer(init, frames, c2w, K, cfg, device="cpu").run(checkpoint=resumed_ckpt)
    assert resumed_ckpt.resumed_step == 15 and resumed.stats["resumed_at_step"] == 15
    _assert_same(straight.gaussians, resumed.gaussians)
    assert resumed.loss_curve == straight.loss_curve  # the whole curve, the part before the kill included
    assert resumed.stats["num_gaussians"] == straight.stats["num_gaussians"]
    assert straight.stats["split"] + straight.stats["cloned"] > 0
    assert {k: resumed.stats[k] for k in ("cloned", "split", "pruned")} == \
        {k: straight.stats[k] for k in ("cloned", "split", "pruned")}


def test_a_checkpoint_of_another_run_or_a_torn_file_is_ignored(scene, tmp_path):  # noqa: F811
    init, frames, c2w, K, _ = scene
    cfg = TrainConfig(iterations=12, sh_degree=0, densify_until=0, log_every=4)
    ckpt = TrainCheckpoint(tmp_path / "train.pt", key="run-a", every_seconds=0)
    with pytest.raises(Killed):
        Trainer(init, frames, c2w, K, cfg, device="cpu").run(callback=_kill_at(8), checkpoint=ckpt)
    other = TrainCheckpoint(tmp_path / "train.pt", key="run-b", every_seconds=0)  # another stage key
    trainer = Trainer(init, frames, c2w, K, cfg, device="cpu")
    assert other.load(trainer) is None and trainer.step == 0
    changed = TrainCheckpoint(tmp_path / "train.pt", key="run-a", every_seconds=0)
    assert changed.load(Trainer(init, frames, c2w, K, TrainConfig(**{**cfg.__dict__, "seed": 3}), device="cpu")) is None
    data = ckpt.path.read_bytes()
    ckpt.path.write_bytes(data[: len(data) // 2])  # torn: the run starts over instead of failing
    trainer = Trainer(init, frames, c2w, K, cfg, device="cpu")
    assert TrainCheckpoint(ckpt.path, key="run-a").load(trainer) is None and trainer.step == 0
    result = trainer.run(checkpoint=TrainCheckpoint(ckpt.path, key="run-a", every_seconds=0))
    assert result.stats["resumed_at_step"] is None and len(result.loss_curve) == 12


@pytest.mark.parametrize("pose_refine", [False, True])
def test_a_killed_distortion_aware_run_resumes_bit_for_bit_in_the_fine_stage(tmp_path, pose_refine):
    from lift3d_core.splat.train_distortion import train_distortion_aware

    scene_g = tiny_scene()
    c2w, codes, K = tiny_cameras()
    frames = render_frames(scene_g, c2w, K)
    init = noisy_init(scene_g)
    # the field's own term, the frame-mean penalty and the anchor all draw samples; the kill lands in the fine stage
    cfg = tiny_train_cfg(field_render_size=0, field_levels=0, frame_mean_weight=5.0, curriculum_steps=8)
    if pose_refine:  # a camera worth refining; refinement starts before the kill
        c2w = c2w.copy()
        c2w[5, :3, 3] += (0.02, -0.01, 0.0)
        cfg = replace(cfg, train=replace(cfg.train, pose_refine=True, pose_refine_from=4, pose_lr=2e-3))
    straight = train_distortion_aware(init, frames, c2w, K, codes, cfg, device="cpu")
    ckpt = TrainCheckpoint(tmp_path / "d.pt", key="k", every_seconds=0)
    with pytest.raises(Killed):
        train_distortion_aware(init, frames, c2w, K, codes, cfg, device="cpu", callback=_kill_at(20),
                               checkpoint=ckpt)
    resumed = train_distortion_aware(init, frames, c2w, K, codes, cfg, device="cpu",
                                     checkpoint=TrainCheckpoint(ckpt.path, key="k", every_seconds=0))
    assert resumed.stats["resumed_at_step"] == 19
    _assert_same(straight.gaussians, resumed.gaussians)
    for name, value in straight.field_state.items():
        other = resumed.field_state[name]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), name
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, other), name
    assert resumed.loss_curve == straight.loss_curve
    if pose_refine:
        assert np.array_equal(straight.stats["refined_c2w"], resumed.stats["refined_c2w"])
        assert not np.array_equal(straight.stats["refined_c2w"][5], c2w[5])


def test_a_killed_run_with_pose_refinement_resumes_bit_for_bit(scene, tmp_path):  # noqa: F811
    init, frames, c2w, K, _ = scene
    moved = c2w.copy()
    moved[2, :3, 3] += (0.02, -0.01, 0.03)  # a camera worth refining
    # refinement starts after step 6, before the kill (at the callback of step 16); its learning rate decays after
    cfg = TrainConfig(iterations=24, batch_size=2, sh_degree=0, densify_until=0, log_every=4, pose_refine=True,
                      pose_refine_from=6, pose_lr=2e-3, pose_lr_final=2e-4, pose_reg=0.1)
    straight = Trainer(init, frames, moved, K, cfg, device="cpu").run()
    ckpt = TrainCheckpoint(tmp_path / "train.pt", key="run-p", every_seconds=0)
    with pytest.raises(Killed):
        Trainer(init, frames, moved, K, cfg, device="cpu").run(callback=_kill_at(16), checkpoint=ckpt)
    state = torch.load(ckpt.path, weights_only=True)["trainer"]
    assert state["step"] == 15 and torch.count_nonzero(state["pose"]) > 0 and state["pose_optimizer"]["state"]
    resumed = Trainer(init, frames, moved, K, cfg, device="cpu").run(
        checkpoint=TrainCheckpoint(ckpt.path, key="run-p", every_seconds=0))
    assert resumed.stats["resumed_at_step"] == 15
    _assert_same(straight.gaussians, resumed.gaussians)
    assert np.array_equal(straight.stats["refined_c2w"], resumed.stats["refined_c2w"])
    assert not np.array_equal(straight.stats["refined_c2w"][2], moved[2])
    assert resumed.loss_curve == straight.loss_curve

