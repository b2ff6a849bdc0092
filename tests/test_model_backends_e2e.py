"""`lift3d lift` on a photograph through the model backends (issue 21's end-to-end path), on the CPU: MotionCtrl-SVD,
MASt3R and Depth Anything V2 as tiny random-init networks, each loaded from a checkpoint this test writes in the
official layout. Random weights make meaningless frames and cameras, so this checks the wiring, not the quality:
every stage runs to a PLY with no generator depth anywhere, and a re-run with a train-only change loads no
generator and reuses generate, calibrate and depth."""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from lift3d_core import checkpoints


def _write_checkpoints(root):
    from lift3d_core.calibrate.mast3r.checkpoint import constructor_string
    from lift3d_core.calibrate.mast3r.model import AsymmetricMASt3R, Mast3rNetConfig
    from lift3d_core.depth import depth_anything_v2 as dav2
    from lift3d_core.generate.motionctrl_svd import convert
    from lift3d_core.generate.motionctrl_svd.model import TINY, build_model

    root.mkdir()
    torch.manual_seed(0)
    generator = build_model(TINY)
    torch.save({"state_dict": convert.to_official(generator.state_dict(), TINY), "global_step": 1}, root / "mc.ckpt")
    mast3r = AsymmetricMASt3R(Mast3rNetConfig.tiny())
    args = argparse.Namespace(model=constructor_string(mast3r.cfg))
    torch.save({"model": mast3r.state_dict(), "args": args}, root / "mast3r.pth")
    gen = torch.Generator().manual_seed(0)
    torch.save({k: 0.3 * torch.randn(s, generator=gen) for k, s in dav2.official_shapes(dav2.ARCHITECTURES["tiny"]).items()},
               root / "dav2.pth")


@pytest.mark.slow
def test_a_photograph_lifts_through_the_model_backends_and_a_train_change_loads_no_generator(tiny_project, capsys,
                                                                                          monkeypatch):
    from test_pipeline import _cli

    import flows.cli

    # the model backends are under test, not Prefect: the stages run without its server (the same keys and store;
    # test_pipeline covers the Prefect path), which a loaded CI machine can be slow to start
    monkeypatch.setattr(flows.cli, "boot_prefect_in_background", lambda: (lambda: RuntimeError("not under test")))
    _write_checkpoints(tiny_project / "weights")
    photo = tiny_project / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(photo)
    models = [
        "ingest.width=64", "ingest.height=64",
        "generate.backend=motionctrl_svd", "generate.motionctrl_svd.model=tiny", "generate.motionctrl_svd.steps=2",
        "generate.motionctrl_svd.checkpoint=weights/mc.ckpt", "generate.motionctrl_svd.dtype=float32",
        "calibrate.backend=mast3r", "calibrate.mast3r.checkpoint=weights/mast3r.pth", "calibrate.mast3r.image_size=64",
        "calibrate.mast3r.iterations=5", "calibrate.mast3r.min_conf_thr=1.0",
        "depth.backend=depth_anything_v2", "depth.depth_anything_v2.checkpoint=weights/dav2.pth",
        "depth.depth_anything_v2.variant=tiny", "depth.depth_anything_v2.input_size=56",
    ]
    models = [arg for item in models for arg in ("--set", item)]
    checkpoints.clear_model_cache()
    code, out = _cli(["lift", str(photo), "--run-name", "models", "--no-track", *models], capsys)
    assert code in (0, None), out.out[-3000:] + out.err[-3000:]
    summary = json.loads((tiny_project / "data" / "runs" / "models" / "summary.json").read_text())
    assert not any(s["hit"] for s in summary["stages"].values())
    from lift3d_core.splat.ply import load_ply

    assert load_ply(summary["outputs"]["ply"]).num > 0
    # the generator's depth is never used: MASt3R's calibration is what the depth stage aligns to
    assert len(checkpoints._MODELS) == 3, list(checkpoints._MODELS)  # generator, MASt3R, Depth Anything V2

    # a train-only change: the model stages are reused and no model is built
    checkpoints.clear_model_cache()
    code, out = _cli(["lift", str(photo), "--run-name", "models2", "--no-track", *models,
                      "--set", "train.fine_iterations=10"], capsys)
    assert code in (0, None), out.out[-3000:] + out.err[-3000:]
    summary = json.loads((tiny_project / "data" / "runs" / "models2" / "summary.json").read_text())
    hits = {name: s["hit"] for name, s in summary["stages"].items()}
    assert hits["generate"] and hits["calibrate"] and hits["depth"] and not hits["train"], hits
    assert checkpoints._MODELS == {}, list(checkpoints._MODELS)
