import math

import pytest
import torch

from lift3d_core.errors import Lift3DError
from lift3d_core.splat.gaussian_params import GaussianParams
from lift3d_core.splat.gaussians import Gaussians
from lift3d_core.splat.optim import LearningRates, make_optimizers, param_group, unique_optimizers
from lift3d_core.splat.render import RenderOutput
from lift3d_core.splat.strategy import (
    DensifyConfig,
    DensifyStrategy,
    append_rows,
    keep_rows,
    quat_to_rotmat,
)

W, H = 64, 48


def _params(log_scales, opacities) -> GaussianParams:
    n = len(opacities)
    gen = torch.Generator().manual_seed(0)
    g = Gaussians(
        means=torch.randn(n, 3, generator=gen),
        log_scales=torch.tensor(log_scales, dtype=torch.float32)[:, None].repeat(1, 3),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        opacity_logits=torch.logit(torch.tensor(opacities, dtype=torch.float32)),
        sh0=torch.randn(n, 1, 3, generator=gen),
        shN=torch.randn(n, 3, 3, generator=gen),
    )
    return GaussianParams.from_gaussians(g)


def _adam_step(params, optimizers, seed=1):
    """One real Adam step so that every row has non-zero moments."""
    gen = torch.Generator().manual_seed(seed)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=gen)
    for opt in unique_optimizers(optimizers.values()):
        opt.step()
        opt.zero_grad(set_to_none=True)


def _render_out(pixel_grads, radii) -> RenderOutput:
    """A render result whose means2d carries the given pixel-space gradient ``[C, N, 2]``."""
    c, n = radii.shape
    means2d = torch.zeros(c, n, 2, requires_grad=True)
    (means2d * pixel_grads).sum().backward()
    zeros = torch.zeros(c, H, W, 1)
    return RenderOutput(rgb=torch.zeros(c, H, W, 3), alpha=zeros, depth=zeros, means2d=means2d, radii=radii)


def _assert_state_consistent(params, optimizers):
    for name, p in params.items():
        opt = optimizers[name]
        assert param_group(opt, name)["params"] == [p]
        state = opt.state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape


def test_clone_split_prune_with_optimizer_state():
    # A: small + high gradient -> clone; B: large + high gradient -> split; C: small, low gradient -> kept;
    # D: low opacity -> pruned.  Scene extent 1: small means max scale <= 0.01.
    params = _params([math.log(0.005), math.log(0.05), math.log(0.005), math.log(0.005)], [0.5, 0.6, 0.7, 0.001])
    optimizers = make_optimizers(params, LearningRates(), scene_extent=1.0)
    _adam_step(params, optimizers)
    before = {k: v.detach().clone() for k, v in params.items()}
    moments = {k: optimizers[k].state[v]["exp_avg"].clone() for k, v in params.items()}

    # 1e-4 px gradient = 1e-4 * W/2 = 3.2e-3 in NDC, far above 2e-4; 1e-7 px is far below.
    grads = torch.tensor([[[1e-4, 0.0], [0.0, 1e-4], [1e-7, 0.0], [1e-7, 0.0]]])
    out = _render_out(grads, torch.ones(1, 4, dtype=torch.int32))
    strategy = DensifyStrategy(DensifyConfig(), scene_extent=1.0, seed=0)
    report = strategy.step_post_backward(params, optimizers, out, step=600)
    assert report == {"cloned": 1, "split": 1, "pruned": 1, "reset": 0}

    # Order after the edits: [A, C, A_clone, B_1, B_2].
    assert params["means"].shape[0] == 5
    _assert_state_consistent(params, optimizers)
    for name in params:
        assert torch.equal(params[name][0], before[name][0])  # A untouched
        assert torch.equal(params[name][1], before[name][2])  # C untouched
        assert torch.equal(params[name][2], before[name][0])  # exact clone of A
        m = optimizers[name].state[params[name]]["exp_avg"]
        assert torch.equal(m[0], moments[name][0]) and torch.equal(m[1], moments[name][2])  # moments follow rows
        assert torch.all(m[2:] == 0)  # new rows start with zero moments
    torch.testing.assert_close(params["log_scales"][3:], before["log_scales"][1:2].repeat(2, 1) - math.log(1.6))
    for name in ("quats", "opacity_logits", "sh0", "shN"):
        assert torch.equal(params[name][3], before[name][1]) and torch.equal(params[name][4], before[name][1])
    assert not torch.equal(params["means"][3], params["means"][4])  # two different samples
    assert strategy.grad2d.shape == (5,) and torch.all(strategy.grad2d == 0)  # statistics restart
    # The optimiser still steps after the edit.
    _adam_step(params, optimizers, seed=2)
    _assert_state_consistent(params, optimizers)


def test_split_samples_follow_the_gaussian():
    n = 3000
    rot = quat_to_rotmat(torch.tensor([[0.9, 0.2, -0.3, 0.1]]))[0]
    scales = torch.tensor([0.3, 0.1, 0.05])
    params = _params([0.0] * n, [0.5] * n)
    with torch.no_grad():
        params["means"][:] = torch.tensor([1.0, 2.0, 3.0])
        params["log_scales"][:] = scales.log()
        params["quats"][:] = torch.tensor([0.9, 0.2, -0.3, 0.1])
    optimizers = make_optimizers(params, LearningRates(), scene_extent=1.0)
    out = _render_out(torch.full((1, n, 2), 1e-3), torch.ones(1, n, dtype=torch.int32))
    cfg = DensifyConfig(max_gaussians=None)
    report = DensifyStrategy(cfg, scene_extent=1.0).step_post_backward(params, optimizers, out, step=1000)
    assert report["split"] == n and params["means"].shape[0] == 2 * n
    offsets = params["means"].detach() - torch.tensor([1.0, 2.0, 3.0])
    cov = offsets.T @ offsets / offsets.shape[0]
    expected = rot @ torch.diag(scales**2) @ rot.T
    torch.testing.assert_close(cov, expected, atol=0.05 * float(scales.max() ** 2), rtol=0)


def test_gradient_statistics_ndc_and_visibility():
    params = _params([math.log(0.005)] * 3, [0.5] * 3)
    optimizers = make_optimizers(params, LearningRates(), scene_extent=1.0)
    strategy = DensifyStrategy(DensifyConfig(), scene_extent=1.0)
    grads = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]], [[0.0, 1.0], [5.0, 0.0], [7.0, 7.0]]])
    radii = torch.tensor([[2, 0, 1], [3, 1, 0]], dtype=torch.int32)  # [C=2, N=3]
    strategy.step_post_backward(params, optimizers, _render_out(grads, radii), step=10)

    def ndc(g):  # pixel gradient -> NDC norm, times C=2 views (the loss averages over them)
        return math.hypot(g[0] * W / 2, g[1] * H / 2) * 2

    expected = [ndc((3, 4)) + ndc((0, 1)), ndc((5, 0)), ndc((0, 2))]
    torch.testing.assert_close(strategy.grad2d, torch.tensor(expected))
    assert strategy.count.tolist() == [2.0, 1.0, 1.0]


def test_opacity_reset():
    params = _params([math.log(0.005)] * 3, [0.9, 0.3, 0.006])
    optimizers = make_optimizers(params, LearningRates(), scene_extent=1.0)
    _adam_step(params, optimizers)
    scales_moment = optimizers["log_scales"].state[params["log_scales"]]["exp_avg"].clone()
    opacity_before = torch.sigmoid(params["opacity_logits"].detach())  # the Adam step moved them a little
    assert opacity_before[0] > 0.5 and opacity_before[1] > 0.2 and 0.005 < opacity_before[2] < 0.01
    out = _render_out(torch.zeros(1, 3, 2), torch.ones(1, 3, dtype=torch.int32))
    report = DensifyStrategy(DensifyConfig(), scene_extent=1.0).step_post_backward(params, optimizers, out, step=3000)
    assert report["reset"] == 1 and report["pruned"] == 0
    expected = torch.stack([torch.tensor(0.01), torch.tensor(0.01), opacity_before[2]])
    torch.testing.assert_close(torch.sigmoid(params["opacity_logits"]), expected)
    state = optimizers["opacity_logits"].state[params["opacity_logits"]]
    assert torch.all(state["exp_avg"] == 0) and torch.all(state["exp_avg_sq"] == 0)
    assert torch.equal(optimizers["log_scales"].state[params["log_scales"]]["exp_avg"], scales_moment)
    _assert_state_consistent(params, optimizers)


def test_schedule_window_and_large_pruning():
    params = _params([math.log(0.005), math.log(0.5)], [0.5, 0.5])  # the second is > 10% of the extent
    optimizers = make_optimizers(params, LearningRates(), scene_extent=1.0)
    cfg = DensifyConfig()
    strategy = DensifyStrategy(cfg, scene_extent=1.0)
    out = _render_out(torch.full((1, 2, 2), 1e-3), torch.ones(1, 2, dtype=torch.int32))
    # Before densify_from, off the interval, after densify_until: nothing happens.
    for step in (500, 650, 15_000, 15_100):
        report = strategy.step_post_backward(params, optimizers, out, step=step)
        assert report == {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
    # Large Gaussians are pruned only after the first opacity reset (3DGS); the split halves are still > 10%.
    report = strategy.step_post_backward(params, optimizers, out, step=3100)
    assert report == {"cloned": 1, "split": 1, "pruned": 2, "reset": 0}
    assert params["means"].shape[0] == 2


def test_max_gaussians_cap_keeps_highest_gradients():
    params = _params([math.log(0.005)] * 3, [0.5] * 3)
    optimizers = make_optimizers(params, LearningRates(), scene_extent=1.0)
    grads = torch.tensor([[[1e-3, 0.0], [3e-3, 0.0], [2e-3, 0.0]]])
    out = _render_out(grads, torch.ones(1, 3, dtype=torch.int32))
    before = params["means"].detach().clone()
    strategy = DensifyStrategy(DensifyConfig(max_gaussians=4), scene_extent=1.0)
    report = strategy.step_post_backward(params, optimizers, out, step=600)
    assert report["cloned"] == 1 and params["means"].shape[0] == 4
    assert torch.equal(params["means"][3], before[1])  # the highest-gradient Gaussian


def test_row_helpers_keep_adam_consistent():
    params = _params([math.log(0.005)] * 4, [0.5] * 4)
    optimizers = make_optimizers(params, LearningRates(), scene_extent=1.0)
    _adam_step(params, optimizers)
    old_sq = optimizers["sh0"].state[params["sh0"]]["exp_avg_sq"].clone()
    keep_rows(params, optimizers, torch.tensor([True, False, True, True]))
    assert torch.equal(optimizers["sh0"].state[params["sh0"]]["exp_avg_sq"], old_sq[[0, 2, 3]])
    append_rows(params, optimizers, {k: v.detach()[:2] for k, v in params.items()})
    _assert_state_consistent(params, optimizers)
    assert params["means"].shape[0] == 5
    _adam_step(params, optimizers)


def test_config_validation():
    with pytest.raises(Lift3DError):
        DensifyConfig(grad_threshold=0.0)
    with pytest.raises(Lift3DError):
        DensifyConfig(densify_every=0)
    with pytest.raises(Lift3DError):
        DensifyStrategy(DensifyConfig(), scene_extent=0.0)
