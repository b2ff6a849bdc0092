"""The fused Triton kernels of the distortion field against ``grid_sample``: values and every gradient.

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


def compare(device: str, multires=(1, 2, 3), spatial_resolution=8, line_dot_max_r=128, seed=0,
            features_per_plane=16, spatial_dot_max_cells=256, small_plane_products=True) -> dict:
    """Largest |fused - grid_sample| of the features and of the gradients of the centres and of every plane group,
    each relative to the largest reference value, for a field with random frame planes and queries in several
    segments (all points, a random multiset, an empty one, a short one; centres partly outside the bounds)."""
    from lift3d_core.splat import field_triton
    from lift3d_core.splat.speed import SWITCHES

    saved = field_triton.LINE_DOT_MAX_R, field_triton.SPATIAL_DOT_MAX_CELLS, SWITCHES.small_plane_products
    field_triton.LINE_DOT_MAX_R = line_dot_max_r
    field_triton.SPATIAL_DOT_MAX_CELLS = spatial_dot_max_cells
    SWITCHES.small_plane_products = small_plane_products
    try:
        return _compare(device, multires, spatial_resolution, seed, features_per_plane)
    finally:  # in-process on CUDA: the switches back as they were
        field_triton.LINE_DOT_MAX_R, field_triton.SPATIAL_DOT_MAX_CELLS, SWITCHES.small_plane_products = saved


def _compare(device, multires, spatial_resolution, seed, features_per_plane) -> dict:
    from lift3d_core.splat.distortion import DistortionField, DistortionFieldConfig

    gen = torch.Generator().manual_seed(seed)
    cfg = DistortionFieldConfig(bounds=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)), spatial_resolution=spatial_resolution,
                                frame_resolution=6, multires=tuple(multires), net_width=32,
                                features_per_plane=features_per_plane)
    field = DistortionField(cfg).to(device)
    with torch.no_grad():
        for level in field.levels:
            level.frame.add_(0.3 * torch.randn(level.frame.shape, generator=gen).to(device))
            level.uv.add_(0.3 * torch.randn(level.uv.shape, generator=gen).to(device))
    n = 300
    means = ((torch.rand(n, 3, generator=gen) * 2.4 - 1.2).to(device)).requires_grad_(True)
    codes = torch.rand(4, 2, generator=gen).to(device)
    segments = [None, torch.randint(0, n, (70,), generator=gen).to(device), torch.arange(0, device=device),
                torch.arange(5, device=device)]
    weights = None

    def run(kernels: str):
        nonlocal weights
        field.kernels = kernels
        field.zero_grad(set_to_none=True)
        means.grad = None
        feats = field.segment_features(means, codes, segments)
        if weights is None:
            weights = torch.randn(feats.shape, generator=gen).to(device)
        (feats * weights).sum().backward()
        return [feats.detach().clone(), means.grad.clone()] + [p.grad.clone() for p in field.grid_parameters()]

    ref = run("torch")
    fused = run("triton")
    names = ["features", "means"] + [f"group{i}" for i in range(len(ref) - 2)]
    return {k: float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for k, a, b in zip(names, fused, ref)}


CASES = {
    "dot": dict(multires=(1, 2, 3), spatial_resolution=8, line_dot_max_r=128),  # R = 8, 16, 24 (not a power of 2)
    "atomic": dict(multires=(1, 2), spatial_resolution=8, line_dot_max_r=0, spatial_dot_max_cells=0),
    # params.yaml's field: 8 x 8 planes of 8 channels (the products padded / paired to 16 columns)
    "8 channels": dict(multires=(1, 2), spatial_resolution=8, features_per_plane=8),
    "8 channels, atomic": dict(multires=(1,), spatial_resolution=8, features_per_plane=8,
                               small_plane_products=False),
    "long lines": dict(multires=(1,), spatial_resolution=80, line_dot_max_r=128),  # several one-hot chunks
}


def compare_lines(device: str, channels: int = 8, rows: int = 8, frame_rows: int = 6, seed: int = 0) -> dict:
    """Largest |lines_triton - distortion.lines| of the lines and of the gradients of the frame and u-v planes,
    relative to the largest reference value, at 7 codes (two on the square's border, one outside it)."""
    from lift3d_core.splat import lines_triton
    from lift3d_core.splat.distortion.lines import _kernel_lines

    gen = torch.Generator().manual_seed(seed)
    frame = (1.0 + 0.3 * torch.randn(6, channels, frame_rows, rows, generator=gen)).to(device)
    uv = (1.0 + 0.3 * torch.randn(1, channels, frame_rows, frame_rows, generator=gen)).to(device)
    codes = torch.tensor([[0.0, 0.0], [-0.3, 0.7], [1.0, -1.0], [0.25, 0.9], [-1.0, 0.4], [0.6, 1.3],
                          [-0.95, -0.05]]).to(device)
    upstream = torch.randn(3, codes.shape[0], rows, 2 * channels, generator=gen).to(device)
    results = []
    for fused in (False, True):
        f, u = frame.clone().requires_grad_(True), uv.clone().requires_grad_(True)
        out = lines_triton.kernel_lines(f, u, codes) if fused else _kernel_lines([f], [u], codes)[0]
        (out * upstream).sum().backward()
        results.append([out.detach(), f.grad, u.grad])
    assert lines_triton.supports(frame)
    return {k: float((a - b).abs().max() / b.abs().max()) for k, a, b in zip(("lines", "frame", "uv"), *results[::-1])}


def _check(errors: dict) -> None:
    assert set(errors) >= {"features", "means", "group0"} or set(errors) == {"lines", "frame", "uv"}
    for name, err in errors.items():
        assert err < 2e-5, f"{name}: relative error {err:.2e}"


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("case", list(CASES))
def test_fused_kernels_equal_grid_sample_in_the_interpreter(case):
    _check(interpret(__file__, case))


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")
@pytest.mark.parametrize("case", list(CASES))
def test_fused_kernels_equal_grid_sample_on_cuda(case):
    _check(compare("cuda", **CASES[case]))


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("sizes", ["8x8", "6x5"])
def test_fused_frame_lines_equal_pytorch_in_the_interpreter(sizes):
    # lines_triton (the "lines" of distortion.compiled without a compile): the lines and the gradients of both
    # planes, at params.yaml's sizes and at sizes that are not powers of two (masked tiles)
    _check(interpret(__file__, "lines", sizes))


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")
def test_fused_frame_lines_equal_pytorch_on_cuda():
    _check(compare_lines("cuda"))


def test_query_layout_pads_segments_to_blocks():
    from lift3d_core.splat import field_triton

    b = field_triton.BLOCK
    segs = [torch.arange(b + 3), None, torch.arange(0), torch.tensor([7, 7])]
    counts = [b + 3, 10, 0, 2]
    lay = field_triton.QueryLayout.build(segs, counts, 10, torch.device("cpu"))
    assert lay.num_out == sum(counts) and lay.num_segments == 4
    assert lay.points.shape[0] == lay.num_blocks * b
    seg, first, size = lay.blocks.tolist()
    assert seg == [0, 0, 1, 3] and first == [0, b, b + 3, b + 13] and size == [b, 3, 10, 2]
    pts = lay.points.view(-1, b)
    assert pts[1, :3].tolist() == [b, b + 1, b + 2] and (pts[1, 3:] == -1).all()
    assert pts[2, :10].tolist() == list(range(10)) and pts[3, :2].tolist() == [7, 7]


def test_query_layout_of_ranges_equals_tensors_and_is_reused():
    # The trainer passes its segments as ranges (contiguous rows): the layout must be the one of the same rows as
    # tensors, and an identical call must reuse it (nothing built on the step's critical path).
    from lift3d_core.splat import field_triton

    n = 150
    ranges = [range(n), range(n), range(n, n + 40), None]
    tensors = [torch.arange(n), torch.arange(n), torch.arange(n, n + 40), None]
    counts = [n, n, 40, n + 40]
    a = field_triton.QueryLayout.build(ranges, counts, n + 40, torch.device("cpu"))
    b = field_triton.QueryLayout.build(tensors, counts, n + 40, torch.device("cpu"))
    assert torch.equal(a.points, b.points) and torch.equal(a.blocks, b.blocks) and a.num_out == b.num_out
    assert field_triton.QueryLayout.build(ranges, counts, n + 40, torch.device("cpu")) is a
    assert field_triton.QueryLayout.build([range(n)] * 2 + ranges[2:], counts, n + 40, torch.device("cpu")) is a


def test_segment_rows_of_ranges_equal_tensors():
    from lift3d_core.splat.distortion.field import segment_rows

    rows = segment_rows([range(5), range(3, 7), None, torch.tensor([2, 2])], 6, torch.device("cpu"))
    assert rows.tolist() == [0, 1, 2, 3, 4, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 2, 2]


def test_fused_heads_equal_each_head_on_its_own():
    from lift3d_core.splat.distortion import DistortionField, DistortionFieldConfig

    cfg = DistortionFieldConfig(bounds=((0, 0, 0), (1, 1, 1)), spatial_resolution=4, frame_resolution=4,
                                multires=(1,), net_width=16, deform_opacity=True, deform_sh=True)
    field = DistortionField(cfg)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in field.mlp_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    feats = torch.randn(50, cfg.feature_dim, generator=gen)
    fused = field._run_mlp(feats)
    hidden = field.feature_net(feats)
    for name, head in field.heads.items():
        torch.testing.assert_close(fused[name], head(hidden), rtol=1e-5, atol=1e-5)


if __name__ == "__main__":
    if sys.argv[1] == "lines":
        rows, channels = (int(v) for v in sys.argv[2].split("x"))
        print(json.dumps(compare_lines("cpu", channels=channels, rows=rows)))
    else:
        print(json.dumps(compare("cpu", **CASES[sys.argv[1]])))
