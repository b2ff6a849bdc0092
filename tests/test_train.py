import math
import shutil
import time

import numpy as np
import pytest
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussians import Gaussians, rgb_to_sh0
from lift3d_core.splat.loss import photometric_loss, psnr, rendered_inverse_depth
from lift3d_core.splat.optim import (
    LearningRates,
    active_sh_degree,
    expon_lr,
    make_optimizers,
    means_lr,
    param_group,
    unique_optimizers,
)
from lift3d_core.splat.render import render, stack_renders
from lift3d_core.splat.train import (
    GaussianParams,
    TrainConfig,
    Trainer,
    fast_photometric_loss,
    photometric_loss_shifted,
    scene_extent_from_cameras,
    train_gaussians,
)

W, H = 32, 24


def _orbit_c2w(eye) -> np.ndarray:
    """OpenCV camera at ``eye`` looking at the origin, world up = -y."""
    eye = np.asarray(eye, float)
    z = -eye / np.linalg.norm(eye)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, np.cross(z, x), z, eye
    return c2w


@pytest.fixture(scope="module")
def scene():
    """300 random Gaussians seen by 6 cameras at 32x24, and a perturbed copy to start from."""
    gen = torch.Generator().manual_seed(0)
    n = 300
    gt = Gaussians(
        means=torch.rand(n, 3, generator=gen) * 2 - 1,
        log_scales=torch.log(0.08 + 0.08 * torch.rand(n, 3, generator=gen)),
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.full((n,), 2.0),
        sh0=rgb_to_sh0(torch.rand(n, 3, generator=gen))[:, None],
        shN=torch.zeros(n, 0, 3),
    )
    angles = np.linspace(-0.6, 0.6, 6)
    c2w = np.stack([_orbit_c2w([4 * math.sin(a), -0.8 * math.cos(3 * a), -4 * math.cos(a)]) for a in angles])
    f = 0.5 * W / math.tan(math.radians(30))
    K = np.array([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    with torch.no_grad():
        out = render(gt, c2w, K, W, H)
    frames = (out.rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    inv_depth = rendered_inverse_depth(out.depth, out.alpha)[..., 0].numpy()
    init = Gaussians(
        means=gt.means + 0.05 * torch.randn(n, 3, generator=gen),
        log_scales=gt.log_scales + 0.3 * torch.randn(n, 3, generator=gen),
        quats=gt.quats,
        opacity_logits=torch.full((n,), math.log(0.1 / 0.9)),  # the 3DGS initial opacity
        sh0=gt.sh0 + 0.5 * torch.randn(n, 1, 3, generator=gen),
        shN=gt.shN,
    )
    return init, frames, c2w, K, inv_depth


def _training_psnr(gaussians, frames, c2w, K) -> float:
    with torch.no_grad():
        out = render(gaussians, c2w, K, W, H)
    return psnr(out.rgb.clamp(0, 1), torch.from_numpy(frames).float() / 255)


def test_fits_tiny_scene(scene):
    init, frames, c2w, K, _ = scene
    cfg = TrainConfig(iterations=150, sh_degree=0, densify_until=0, log_every=50)
    logged = []
    result = train_gaussians(init, frames, c2w, K, cfg, device="cpu", callback=lambda s, m: logged.append((s, m)))
    losses = [loss for _, loss in result.loss_curve]
    assert [s for s, _ in result.loss_curve] == list(range(1, 151))
    assert np.mean(losses[-10:]) < losses[0] / 5
    assert _training_psnr(init, frames, c2w, K) < 15
    assert _training_psnr(result.gaussians, frames, c2w, K) > 25
    assert [s for s, _ in logged] == [50, 100, 150]
    assert {"loss", "loss/photometric", "psnr", "num_gaussians", "lr_means", "sh_degree"} <= set(logged[-1][1])
    assert result.gaussians.device.type == "cpu" and not result.gaussians.means.requires_grad
    assert result.stats["iterations_per_second"] > 0 and result.stats["num_gaussians"][-1] == (150, 300)
    assert result.stats["scene_extent"] == pytest.approx(scene_extent_from_cameras(c2w))


def test_deterministic_with_densification_and_batches(scene):
    init, frames, c2w, K, _ = scene
    # Densify at steps 10 and 20 (splits draw random samples), two frames per step.
    cfg = TrainConfig(
        iterations=24, batch_size=2, sh_degree=1, densify_from=9, densify_every=10, densify_until=21, log_every=8
    )
    a = train_gaussians(init, frames, c2w, K, cfg, device="cpu")
    b = train_gaussians(init, frames, c2w, K, cfg, device="cpu")
    assert a.loss_curve == b.loss_curve
    for name in Gaussians.field_names():
        assert torch.equal(getattr(a.gaussians, name), getattr(b.gaussians, name))
    assert a.stats["split"] + a.stats["cloned"] > 0 and a.gaussians.num > init.num
    assert a.gaussians.sh_degree == 1  # degree-0 init padded with zero bands
    c = train_gaussians(init, frames, c2w, K, TrainConfig(**{**cfg.__dict__, "seed": 1}), device="cpu")
    assert c.loss_curve != a.loss_curve


def test_trainer_pieces_and_depth_term(scene):
    init, frames, c2w, K, inv_depth = scene
    cfg = TrainConfig(iterations=20, sh_degree=0, depth_weight=0.5, depth_decay=0.1, densify_from=4, densify_every=5)
    trainer = Trainer(init, frames, c2w, K, cfg, inv_depth=inv_depth, device="cpu")
    assert trainer.depth_weight(1) == pytest.approx(0.5) and trainer.depth_weight(20) == pytest.approx(0.05)
    # Every frame once per epoch, in a seeded order.
    order = torch.cat([trainer.sample_frames() for _ in range(6)])
    assert sorted(order.tolist()) == list(range(6))
    for _ in range(10):
        terms, _out, _ = trainer.train_step()
        assert set(terms) == {"photometric", "depth", "loss"} and torch.isfinite(terms["loss"])
        for name, p in trainer.params.items():  # Adam state follows densification
            state = trainer.optimizers[name].state[p]
            assert state["exp_avg"].shape == p.shape
    assert trainer.params.num > init.num
    assert param_group(trainer.optimizers["means"], "means")["lr"] == pytest.approx(
        means_lr(10, trainer.lrs, trainer.scene_extent, 20)
    )


def test_gaussian_params_round_trip(scene):
    init = scene[0]
    params = GaussianParams.from_gaussians(init)
    assert all(isinstance(p, torch.nn.Parameter) for p in params.values()) and params.num == init.num
    back = params.detached()
    for name in Gaussians.field_names():
        assert torch.equal(getattr(back, name), getattr(init, name))
    assert params.gaussians().means is params["means"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the convolution path runs on CUDA"))])
@pytest.mark.parametrize("shape", [(1, 96, 128, 3), (2, 24, 32, 3), (24, 32, 3), (2, 9, 7, 3)])
def test_fast_photometric_loss_equals_reference(shape, device):
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_(True)
    target = torch.rand(shape, generator=gen, dtype=torch.float64).to(device)
    for lam in (0.0, 0.2, 1.0):
        ref, fast = photometric_loss(pred, target, lam), fast_photometric_loss(pred, target, lam)
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(fast, pred)[0], torch.autograd.grad(ref, pred)[0])


@pytest.mark.parametrize("shape", [(2, 24, 32, 3), (2, 9, 7, 3)])
def test_shifted_photometric_loss_equals_reference(shape):
    gen = torch.Generator().manual_seed(1)
    pred = torch.rand(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.rand(shape, generator=gen, dtype=torch.float64)
    for lam in (0.0, 0.2):
        ref, shifted = photometric_loss(pred, target, lam), photometric_loss_shifted(pred, target, lam)
        torch.testing.assert_close(shifted, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(shifted, pred)[0], torch.autograd.grad(ref, pred)[0])


def test_compile_switches_accept_yaml_booleans():
    # YAML reads a bare `off` as False: the switches take it as "off" rather than failing
    from lift3d_core.splat.train_distortion import DistortionTrainConfig

    assert TrainConfig(compile_loss=False).compile_loss == "off"
    assert TrainConfig(compile_loss=True).compile_loss == "on"
    assert DistortionTrainConfig(compile_field=False).compile_field == "off"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled loss is a CUDA feature")
def test_compiled_loss_equals_eager_on_cuda(scene):
    init, frames, c2w, K, _ = scene
    trainer = Trainer(init, frames, c2w, K, TrainConfig(iterations=10, compile_loss="on", backend="torch"), device="cuda")
    gen = torch.Generator().manual_seed(2)
    pred = torch.rand(2, 48, 64, 3, generator=gen).cuda().requires_grad_(True)
    target = torch.rand(2, 48, 64, 3, generator=gen).cuda()
    compiled = trainer._photometric(pred, target)
    assert trainer._compiled_loss is not None
    eager = fast_photometric_loss(pred, target, trainer.cfg.lambda_dssim)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(compiled, pred)[0], torch.autograd.grad(eager, pred)[0],
                               rtol=1e-4, atol=1e-8)


def test_sh_bands_above_the_active_degree_get_no_gradient(scene):
    init, frames, c2w, K, _ = scene
    trainer = Trainer(init, frames, c2w, K, TrainConfig(iterations=10, sh_degree=2, sh_degree_every=3), device="cpu")
    assert trainer.params.gaussians(0).sh_degree == 0 and trainer.params.gaussians(1).sh_degree == 1
    assert trainer.params.gaussians().sh_degree == 2
    for _ in range(2):  # degree 0: shN takes no part, so Adam leaves it (and its state) alone
        trainer.train_step()
    assert trainer.params["shN"] not in trainer.optimizers["shN"].state and not trainer.params["shN"].detach().any()
    trainer.train_step()  # step 3: degree 1, bands 1..3 move, band 4.. do not
    moved = trainer.params["shN"].detach().abs().amax(dim=(0, 2))
    assert (moved[:3] > 0).all() and not moved[3:].any()


def test_stack_renders_equals_batched_render(scene):
    init, frames, c2w, K, _ = scene
    init = GaussianParams.from_gaussians(init).gaussians()  # differentiable
    target = torch.from_numpy(frames[:2]).float() / 255
    both = render(init, c2w[:2], K, W, H)
    ((both.rgb - target) ** 2).sum().backward()
    stacked = stack_renders([render(init, c2w[i], K, W, H) for i in range(2)])
    ((stacked.rgb - target) ** 2).sum().backward()
    assert stacked.means2d.shape == both.means2d.shape == (2, init.num, 2)
    torch.testing.assert_close(stacked.rgb, both.rgb)
    assert torch.equal(stacked.radii, both.radii)
    # The strategy reads the stacked screen-space gradient as it reads a batched render's.
    torch.testing.assert_close(stacked.means2d.grad, both.means2d.grad)


def test_render_each_camera_its_own_gaussians(scene):
    from lift3d_core.splat.render import render_w2c_each

    init, _, c2w, K, _ = scene
    viewmats = torch.linalg.inv(torch.as_tensor(c2w[:2])).float()
    Ks = torch.as_tensor(K).float().expand(2, 3, 3)
    moved = Gaussians(**{**init.tensors(), "means": init.means + torch.tensor([0.05, 0.0, 0.0])})
    out = render_w2c_each([init, moved], viewmats, Ks, W, H, sh_degree=0)
    assert out.rgb.shape == (2, H, W, 3) and out.means2d.shape == (2, init.num, 2)
    torch.testing.assert_close(out.rgb[0], render(init, c2w[0], K, W, H, sh_degree=0).rgb[0])
    torch.testing.assert_close(out.rgb[1], render(moved, c2w[1], K, W, H, sh_degree=0).rgb[0])
    with pytest.raises(Lift3DError, match="one size"):
        render_w2c_each([init, init[: init.num - 1]], viewmats, Ks, W, H)
    with pytest.raises(Lift3DError, match="2 cameras"):
        render_w2c_each([init], viewmats, Ks, W, H)


def test_schedules():
    assert [active_sh_degree(s, 3) for s in (1, 999, 1000, 2500, 3000, 30_000)] == [0, 0, 1, 2, 3, 3]
    assert expon_lr(0, 1e-2, 1e-4, 100) == pytest.approx(1e-2)
    assert expon_lr(50, 1e-2, 1e-4, 100) == pytest.approx(1e-3)
    assert expon_lr(500, 1e-2, 1e-4, 100) == pytest.approx(1e-4)
    lrs = LearningRates()
    assert means_lr(0, lrs, 2.0, 30_000) == pytest.approx(3.2e-4)
    assert means_lr(30_000, lrs, 2.0, 30_000) == pytest.approx(3.2e-6)
    params = GaussianParams.from_gaussians(
        Gaussians(
            torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), torch.zeros(2, 1, 3),
            torch.zeros(2, 15, 3),
        )
    )
    opts = make_optimizers(params, lrs, scene_extent=2.0)
    lr = {k: param_group(o, k)["lr"] for k, o in opts.items()}
    assert lr == pytest.approx(
        {"means": 3.2e-4, "log_scales": 5e-3, "quats": 1e-3, "opacity_logits": 5e-2, "sh0": 2.5e-3, "shN": 1.25e-4}
    )
    assert all(o.defaults["eps"] == 1e-15 for o in opts.values())
    assert len(unique_optimizers(opts.values())) == 1  # one optimizer step a training step
    # The fused Adam (where torch has one) takes the steps of the reference Adam.
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(50, 4, generator=gen)
    grads = [torch.randn(50, 4, generator=gen) for _ in range(5)]
    ours = GaussianParams({"quats": torch.nn.Parameter(start.clone())})
    ref = torch.nn.Parameter(start.clone())
    opt_ours = make_optimizers(ours, lrs, scene_extent=1.0)["quats"]
    opt_ref = torch.optim.Adam([ref], lr=lrs.quats, eps=1e-15, foreach=False, fused=False)
    for g in grads:
        ours["quats"].grad, ref.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_ref.step()
    torch.testing.assert_close(ours["quats"].detach(), ref.detach())


def test_for_budget_compresses_the_3dgs_schedule():
    assert TrainConfig.for_budget(30_000) == TrainConfig()
    cfg = TrainConfig.for_budget(800, lr_sh0=0.01, densify_until=500)
    assert (cfg.iterations, cfg.densify_from, cfg.densify_until, cfg.densify_every) == (800, 100, 500, 100)
    assert cfg.sh_degree_every == 27 and cfg.lr_sh0 == 0.01 and cfg.lr_means == TrainConfig().lr_means
    assert cfg.opacity_reset_every == 3000  # no reset within the run
    assert TrainConfig.for_budget(60_000).opacity_reset_every == 6000
    assert TrainConfig.for_budget(10).sh_degree_every == 1
    with pytest.raises(Lift3DError):
        TrainConfig.for_budget(0)


def test_scene_extent():
    c2w = np.stack([np.eye(4), np.eye(4)])
    c2w[0, 0, 3], c2w[1, 0, 3] = -1.0, 1.0
    assert scene_extent_from_cameras(c2w) == pytest.approx(1.1)
    means = torch.tensor([[0.0, 0.0, 4.0], [0.0, 3.0, 0.0], [0.0, 0.0, 5.0]])
    assert scene_extent_from_cameras(np.eye(4)[None], means) == pytest.approx(4.0)  # one camera: median depth
    assert scene_extent_from_cameras(np.eye(4)[None]) == 1.0


def test_config_and_input_validation(scene):
    init, frames, c2w, K, _ = scene
    for bad in ({"iterations": 0}, {"batch_size": 0}, {"sh_degree": 4}, {"lambda_dssim": 1.5}, {"grad_threshold": 0.0},
                {"lr_means": 0.0}, {"background": (0.0, 2.0, 0.0)}):
        with pytest.raises(Lift3DError):
            TrainConfig(**bad)
    with pytest.raises(Lift3DError, match="unknown keys"):
        TrainConfig.from_dict({"iterations": 10, "densify_form": 100})
    assert TrainConfig.from_dict({"iterations": 10, "background": [1, 1, 1]}).background == (1.0, 1.0, 1.0)
    cfg = TrainConfig(iterations=1)
    with pytest.raises(Lift3DError, match="uint8"):
        Trainer(init, frames.astype(np.float32), c2w, K, cfg, device="cpu")
    with pytest.raises(Lift3DError, match="c2w"):
        Trainer(init, frames, c2w[:3], K, cfg, device="cpu")
    with pytest.raises(Lift3DError, match="inv_depth"):
        Trainer(init, frames, c2w, K, TrainConfig(iterations=1, depth_weight=1.0), device="cpu")
    deg3 = Gaussians(**{**init.tensors(), "shN": torch.zeros(init.num, 15, 3)})
    with pytest.raises(Lift3DError, match="SH degree"):
        Trainer(deg3, frames, c2w, K, TrainConfig(iterations=1, sh_degree=1), device="cpu")


def test_compiled_or_eager_warns_or_raises_by_setting():
    from lift3d_core.errors import Lift3DError
    from lift3d_core.splat.train import compiled_or_eager

    def broken():
        raise RuntimeError("no compiler")

    assert compiled_or_eager("auto", "compile_loss", lambda: None) is True
    seconds = {}
    assert compiled_or_eager("auto", "compile_loss", lambda: time.sleep(0.05), seconds) is True
    assert list(seconds) == ["compile_loss"] and seconds["compile_loss"] >= 0.05
    with pytest.warns(RuntimeWarning, match="compile_loss"):
        assert compiled_or_eager("auto", "compile_loss", broken) is False
    with pytest.raises(Lift3DError, match="compile_loss: on"):
        compiled_or_eager("on", "compile_loss", broken)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_loss_warm_up_compiles_the_graph_training_uses(scene):
    # The render's RGB is a view of RGB+depth channels; the warm-up must compile for those strides, or training
    # compiles a second graph (on an H100 the first compile of this loss costs ~20 s).
    from torch._dynamo.utils import counters

    init, frames, c2w, K, _ = scene
    trainer = Trainer(init, frames, c2w, K, TrainConfig(iterations=2, compile_loss="on"), device="cpu")
    rgbd = torch.rand(2, H, W, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    pred, target = rgbd[..., :3], trainer.target_rgb(torch.tensor([0, 1]))
    before = counters["stats"]["unique_graphs"]
    loss = trainer._photometric(pred, target)
    grad = torch.autograd.grad(loss, rgbd)[0]
    assert counters["stats"]["unique_graphs"] - before == 1
    assert "compile_loss" in trainer.compile_seconds
    eager = fast_photometric_loss(pred, target, trainer.cfg.lambda_dssim)
    torch.testing.assert_close(loss, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, torch.autograd.grad(eager, rgbd)[0], rtol=1e-4, atol=1e-8)
