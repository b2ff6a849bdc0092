"""The fused MLP kernels of the distortion field (``splat/field_mlp_triton.py``) against ``DistortionField.decode``:
offsets and every gradient.

On a CPU the kernels run in Triton's interpreter (float32 products: it cannot multiply bfloat16), switched on before
Triton is imported, so the comparison runs in a subprocess (this file as a script); on CUDA it also runs in-process
on the real kernels, in float32 and in bfloat16 (as ``field_mlp_dtype: auto`` trains).
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from tests.triton_interpreter import interpret

HAS_TRITON = importlib.util.find_spec("triton") is not None

CASES = {
    "silu, bounded": dict(activation="silu", max_offset=0.05, width=32),
    "relu, unbounded": dict(activation="relu", max_offset=None, width=16),
    "silu, 64 wide, 2 levels": dict(activation="silu", max_offset=0.2, width=64, multires=(1, 2)),
    # 3 backward programs for 16 row blocks: each program sums several blocks' weight gradients
    "persistent programs": dict(activation="silu", max_offset=0.05, width=32, programs=3),
}


def compare(device: str, activation="silu", max_offset=0.05, width=32, multires=(1,), bf16=False, seed=0,
            programs: int | None = None) -> dict:
    """Largest error of the fused kernels (``fused``) and of ``decode`` in float32 (``torch``) against ``decode`` in
    float64: of the offsets and of the gradients of the features and of every MLP parameter, each relative to
    the largest reference value, for 1,000 random feature rows (a transposed view, as the field's PyTorch path
    returns them) and a random upstream gradient. ``bf16``: both in bfloat16 products."""
    from lift3d_core.splat import field_mlp_triton
    from lift3d_core.splat.distortion import DistortionField, DistortionFieldConfig
    from lift3d_core.splat.distortion.field import _decode

    cfg = DistortionFieldConfig(bounds=((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0)), features_per_plane=8,
                                spatial_resolution=4, frame_resolution=4, multires=tuple(multires), net_width=width,
                                net_depth=1, activation=activation, deform_scale=False, deform_rotation=False,
                                max_offset=max_offset, seed=seed)
    field = DistortionField(cfg).to(device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in field.mlp_parameters():  # the last layer starts at zero: give every layer a value
            p.copy_((0.5 * torch.randn(p.shape, generator=gen)).to(device))
    assert field_mlp_triton.supports(field)
    feats = torch.randn(cfg.feature_dim, 1000, generator=gen).to(device).t()  # column-major, like segment_features
    upstream = torch.randn(1000, 3, generator=gen).to(device)

    def run(how: str) -> list[torch.Tensor]:
        model = field.double() if how == "float64" else field.float()
        model.mlp_dtype = torch.bfloat16 if bf16 and how != "float64" else None
        model.zero_grad(set_to_none=True)
        dtype = torch.float64 if how == "float64" else torch.float32
        x = feats.detach().to(dtype).clone().requires_grad_(True)
        out = field_mlp_triton.decode_position(model, x) if how == "fused" else _decode(model, x).d_means
        (out * upstream.to(dtype)).sum().backward()
        return [t.detach().double() for t in [out, x.grad] + [p.grad for p in model.mlp_parameters()]]

    saved = field_mlp_triton._MAX_PROGRAMS
    field_mlp_triton._MAX_PROGRAMS = programs or saved
    try:
        truth = run("float64")
        names = ["offsets", "features"] + [f"param{i}" for i in range(len(truth) - 2)]
        return {how: {k: float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
                      for k, a, b in zip(names, run(how), truth)} for how in ("fused", "torch")}
    finally:
        field_mlp_triton._MAX_PROGRAMS = saved


def _check(errors: dict, tol: float = 1e-4) -> None:
    fused, torch_errors = errors["fused"], errors["torch"]
    assert len(fused) == 8, fused  # offsets, features and the six tensors of three Linear layers
    for name, err in fused.items():
        # as close to the float64 truth as PyTorch's own float32 (or bfloat16) decode, and within tol
        assert err < tol and err <= 2.0 * torch_errors[name] + 1e-6, f"{name}: {err:.2e} (torch {torch_errors[name]:.2e})"


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
@pytest.mark.parametrize("case", list(CASES))
def test_fused_mlp_equals_decode_in_the_interpreter(case):
    _check(interpret(__file__, case))


@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs CUDA and triton")
@pytest.mark.parametrize("case", list(CASES))
def test_fused_mlp_equals_decode_on_cuda(case):
    _check(compare("cuda", **CASES[case]))
    _check(compare("cuda", bf16=True, **CASES[case]), tol=5e-2)  # bfloat16 products, both sides


def train_both(steps: int = 6) -> dict:
    """The distortion-aware trainer on the tiny scene of ``test_distortion``, 4 coarse and ``steps`` fine steps,
    once with the MLP and the frame lines in PyTorch and once through the fused kernels, from the same start: the largest relative
    difference of the fine steps' losses, and of the field's position offsets at every training code after them."""
    from lift3d_core.splat import field_mlp_triton, lines_triton
    from lift3d_core.splat.speed import SWITCHES
    from lift3d_core.splat.train_distortion import DistortionTrainer
    from tests.test_distortion import noisy_init, render_frames, tiny_cameras, tiny_scene, tiny_train_cfg

    scene = tiny_scene()
    c2w, codes, K = tiny_cameras()
    frames = render_frames(scene, c2w, K)
    cfg = tiny_train_cfg(coarse_iterations=4, fine_iterations=steps, activation="silu", deform_scale=False,
                         deform_rotation=False, field_lr_scale_by_extent=False, lr_grid=0.1, lr_grid_final=0.01,
                         lr_mlp=0.01, lr_mlp_final=0.001)  # a field that moves within a few steps
    out = {}
    for kernel in ("torch", "triton"):  # the switches restored below
        SWITCHES.mlp = SWITCHES.lines = kernel
        trainer = DistortionTrainer(noisy_init(scene), frames, c2w, K, codes, cfg, device="cpu")
        assert field_mlp_triton.supports(trainer.field) and lines_triton.supports(trainer.field.levels[0].frame)
        losses = [float(trainer.train_step()[0]["loss"].detach()) for _ in range(4 + steps)][4:]
        with torch.no_grad():
            offsets = torch.stack([trainer.field(trainer.params["means"], c).d_means for c in trainer.frame_codes])
        out[kernel] = (losses, offsets)
    SWITCHES.mlp = SWITCHES.lines = "torch"
    (l0, o0), (l1, o1) = out["torch"], out["triton"]
    return {"loss": max(abs(a - b) / abs(a) for a, b in zip(l0, l1)),
            "offsets": float((o1 - o0).abs().max() / o0.abs().max().clamp_min(1e-12)),
            "offset_scale": float(o0.abs().max())}


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_training_through_the_fused_mlp_equals_pytorch_in_the_interpreter():
    # The kernels wired into the field (speed.SWITCHES.mlp and .lines = "triton") train it as PyTorch's MLP does:
    # the same losses and learned offsets up to float32 rounding after coarse and fine steps.
    result = interpret(__file__, "trainer", timeout=900)
    assert result["offset_scale"] > 0  # the field moved: the comparison is not of zeros
    assert result["loss"] < 1e-4 and result["offsets"] < 1e-3, result


def test_fused_mlp_supports_only_the_small_field():
    from lift3d_core.splat import field_mlp_triton
    from lift3d_core.splat.distortion import DistortionField, DistortionFieldConfig

    box = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    reference = DistortionField(DistortionFieldConfig(bounds=box))  # 3 heads, 128 wide: not this kernel's shape
    assert not field_mlp_triton.supports(reference)


if __name__ == "__main__":
    print(json.dumps(train_both() if sys.argv[1] == "trainer" else compare("cpu", **CASES[sys.argv[1]])))
