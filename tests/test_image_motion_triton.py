"""The fused image-motion kernels (view mask, image-motion price and its gradient) against their PyTorch references.

On a CPU the kernels run in Triton's interpreter, which must be switched on before Triton is imported, so the
comparison runs in a subprocess (this file as a script); on CUDA it also runs in-process on the real kernels.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from tests.triton_interpreter import interpret

HAS_TRITON = importlib.util.find_spec("triton") is not None


def _look_at(eye: torch.Tensor) -> torch.Tensor:
    """``[4, 4]`` world-to-camera (OpenCV) of a camera at ``eye`` looking at the origin."""
    f = -eye / eye.norm()
    r = torch.linalg.cross(f, torch.tensor([0.0, -1.0, 0.0]))
    r = r / r.norm()
    u = torch.linalg.cross(f, r)
    R = torch.stack([r, u, f])
    w2c = torch.eye(4)
    w2c[:3, :3] = R
    w2c[:3, 3] = -R @ eye
    return w2c


def compare(device: str, seed: int = 0) -> dict:
    """Largest relative |fused - reference| of the price, of its gradient with respect to the offsets, and the
    number of centres the two masks disagree on, for 3 cameras and 3,000 centres (some behind a camera, some
    outside its view, one offset exactly zero)."""
    from lift3d_core.splat import image_motion_triton as fused
    from lift3d_core.splat.field_terms import projected_offset_px, visible_in_frames

    gen = torch.Generator().manual_seed(seed)
    n, width, height = 3000, 96, 64
    means = (torch.rand(n, 3, generator=gen) * 6.0 - 3.0).to(device)
    w2c = torch.stack([_look_at(torch.tensor(e)) for e in ([0.0, 0.0, 4.0], [2.5, 0.5, 3.0], [-1.0, 1.0, 2.0])])
    K = torch.tensor([[80.0, 0.0, 48.0], [0.0, 80.0, 32.0], [0.0, 0.0, 1.0]]).expand(3, 3, 3).contiguous()
    w2c, K = w2c.to(device), K.to(device)
    d = (0.05 * torch.randn(3, n, 3, generator=gen)).to(device)
    d[0, 0] = 0.0
    weights = torch.rand(3, n, generator=gen).to(device)

    out = {}
    grads = []
    for fn in (projected_offset_px, fused.projected_offset_px):
        dd = d.clone().requires_grad_(True)
        px = fn(means, dd, w2c, K)
        (px * weights).sum().backward()
        grads.append((px.detach(), dd.grad))
    (ref_px, ref_g), (px, g) = grads
    out["price"] = float((px - ref_px).abs().max() / ref_px.abs().max())
    out["price_grad"] = float((g - ref_g).abs().max() / ref_g.abs().max())
    out["zero_offset_price"] = float(px[0, 0])
    ref_mask = visible_in_frames(means, w2c, K, width, height, 0.2)
    mask = fused.visible_mask(means, w2c, K, width, height, 0.2)
    out["mask_disagree"] = int((mask != ref_mask).sum())
    out["mask_share"] = float(ref_mask.float().mean())
    return out


def train_both(pose_refine: bool, steps: int = 5) -> dict:
    """The distortion-aware trainer on the tiny scene of ``test_distortion`` with the image-motion price on, 4
    coarse and ``steps`` fine steps, with ``speed.SWITCHES.image_motion`` "off" and "auto" from the same start: the largest
    relative difference of the fine steps' losses and of the learned offsets, and the price's last value."""
    from lift3d_core.splat.speed import SWITCHES
    from lift3d_core.splat.train_config import TrainConfig
    from lift3d_core.splat.train_distortion import DistortionTrainer
    from tests.test_distortion import noisy_init, render_frames, tiny_cameras, tiny_scene, tiny_train_cfg

    scene = tiny_scene()
    c2w, codes, K = tiny_cameras()
    frames = render_frames(scene, c2w, K)
    train = TrainConfig(sh_degree=0, densify_from=5, densify_every=5, densify_until=25, opacity_reset_every=1000,
                        log_every=10, lr_sh0=0.02, lr_opacity=0.1, lr_means=2e-3, lr_means_final=2e-4,
                        pose_refine=pose_refine)
    cfg = tiny_train_cfg(coarse_iterations=4, fine_iterations=steps, offset_image_weight=2.88, field_cull_margin=0.1,
                         field_lr_scale_by_extent=False, lr_grid=0.1, lr_grid_final=0.01, lr_mlp=0.01,
                         lr_mlp_final=0.001, train=train)
    out = {}
    try:
        for mode in ("off", "auto"):
            SWITCHES.image_motion = mode
            trainer = DistortionTrainer(noisy_init(scene), frames, c2w, K, codes, cfg, device="cpu")
            losses = [float(trainer.train_step()[0]["loss"].detach()) for _ in range(4 + steps)][4:]
            with torch.no_grad():
                offsets = torch.stack([trainer.field(trainer.params["means"], c).d_means for c in trainer.frame_codes])
            out[mode] = (losses, offsets, float(trainer.last_terms["offset_image"]))
    finally:
        SWITCHES.image_motion = "off"
    (l0, o0, p0), (l1, o1, p1) = out["off"], out["auto"]
    return {"loss": max(abs(a - b) / abs(a) for a, b in zip(l0, l1)),
            "offsets": float((o1 - o0).abs().max() / o0.abs().max().clamp_min(1e-12)), "price": p0,
            "price_fused": p1}


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_training_with_the_fused_image_motion_equals_pytorch_in_the_interpreter():
    # speed.SWITCHES.image_motion = "auto" wired into the trainer (the view mask and the price; with pose refinement the
    # price stays in PyTorch, whose gradient also reaches the cameras): the same losses and learned offsets
    for result in interpret(__file__, "trainer", timeout=900):
        assert result["price"] > 0 and abs(result["price_fused"] - result["price"]) <= 1e-4 * result["price"], result
        assert result["loss"] < 1e-4 and result["offsets"] < 1e-3, result


def _check(result: dict) -> None:
    assert result["price"] < 1e-5 and result["price_grad"] < 1e-5, result
    assert result["zero_offset_price"] == 0.0
    assert result["mask_disagree"] == 0 and 0.1 < result["mask_share"] < 0.9, result  # a real mix of in and out


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_fused_image_motion_equals_pytorch_in_the_interpreter():
    _check(interpret(__file__))


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")
def test_fused_image_motion_equals_pytorch_on_cuda():
    _check(compare("cuda"))


def test_fused_price_refuses_centres_with_gradients():
    from lift3d_core.splat import image_motion_triton as fused

    with pytest.raises(ValueError, match="detached"):
        fused.projected_offset_px(torch.zeros(2, 3, requires_grad=True), torch.zeros(1, 2, 3), torch.eye(4)[None],
                                  torch.eye(3)[None])


if __name__ == "__main__":
    print(json.dumps([train_both(False), train_both(True)] if len(sys.argv) > 1 and sys.argv[1] == "trainer"
                     else compare("cpu")))
