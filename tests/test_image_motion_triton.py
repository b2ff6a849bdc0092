"""The fused image-motion kernels (view mask, image-motion price and its gradient) against their PyTorch references.

On a CPU the kernels run in Triton's interpreter, which must be switched on before Triton is imported, so the
comparison runs in a subprocess (this file as a script); on CUDA it also runs in-process on the real kernels.
"""

from __future__ import annotations

import importlib.util
import json

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
    print(json.dumps(compare("cpu")))
