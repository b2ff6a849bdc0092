"""Parity of lift3d's MotionCtrl-SVD with the reference code (a scratch check, not a test: it needs the reference).

Builds the reference engine (sgm ``CameraMotionControl`` from the reference's own inference config, shrunken to
tiny widths but keeping the structure: 4 UNet levels with attention at the first 3, 2 res blocks per level,
temporal transformer blocks with ``cc_projection``, learned_with_images mixing, temporal VAE decoder, the
conditioning KL encoder, a tiny open_clip ViT, EDM Euler sampler with LinearPredictionGuider), perturbs every
weight (so zero-initialised layers, the identity ``cc_projection`` and the 0.5 mix factors count), writes its
state dict in the official layout, converts it with ``lift3d_core.generate.motionctrl_svd.convert`` into the
matching :class:`ModelSpec`, and compares, float32 on the CPU:

* the sigma schedule (``edm_sigmas`` vs ``EDMDiscretization``, the official 50 steps, sigma_max 700);
* the pose preprocessing (the reference's ``get_RT``, read from its run script, on its 8 pose files, against
  ``motionctrl_conditioning`` of the same rows and of our presets' rows; speed 1.6, axis scale (3, 1, 4));
* the CLIP input (sgm's kornia resize + normalisation) at 576x1024, 768x1024 and the test size;
* the conditioning (CLIP image embedding; KL-encoded noisy frame);
* the raw UNet for random latents, noise levels, embeddings, time ids and camera poses (and without poses);
* the whole sampler (``sample_latents`` vs the engine's sampler + denoiser, a few steps, CFG as a batch of 2);
* the temporal decoder (one frame per call as the reference runs it, and all frames in one call).

``--float64`` runs both sides in float64 (sgm's float32 GroupNorm32 and sinusoids lifted; our sampler's own float32
casts stay), which tells a difference in the maths from float32 round-off.

Usage (nothing is downloaded). REF is AbrahamYabo/LiftImage3D's ``motionctrlsvd`` folder (its ``sgm/``,
``configs/``, ``main/inference/`` and ``examples/camera_poses/`` are used), exported from a checkout outside this
repository; ``--deps`` holds einops, kornia and open-clip-torch, installed with
``pip install --no-deps --target DEPS einops kornia kornia-rs open-clip-torch ftfy wcwidth``; pytorch_lightning and
torchvision are stubbed (sgm only subclasses LightningModule; open_clip's image transforms are not used)::

    OMP_NUM_THREADS=1 python bench/motionctrl_parity.py REF --deps DEPS [--float64] [--out FILE]

Ends with one JSON object of max abs errors, each relative to the reference output's max abs value (poses:
absolute), and ``ok``: every error under 1e-5. Session 15's numbers are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lift3d_core, not an installed one


def _import_reference(root: str, deps: str | None) -> None:
    """Make ``import sgm`` work: the reference root and deps on sys.path, stubs for what the networks never use."""
    import transformers  # noqa: F401  (imported before the torchvision stub, so transformers sees no torchvision)
    from transformers import CLIPTextModel  # noqa: F401

    if deps:
        sys.path.insert(0, deps)
    sys.path.insert(0, root)
    pl = types.ModuleType("pytorch_lightning")  # sgm only subclasses LightningModule
    pl.LightningModule = nn.Module
    pl.LightningDataModule = object
    sys.modules.setdefault("pytorch_lightning", pl)

    class _Anything(type):
        def __getattr__(cls, name):
            return name

    # open_clip imports torchvision for its image transforms, which sgm replaces by its own (kornia) preprocessing.
    names = ["torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
             "torchvision.transforms.functional"]
    for name in names:
        module = types.ModuleType(name)
        module.__getattr__ = lambda n: _Anything(n, (), {})
        sys.modules[name] = module
    import open_clip  # noqa: F401
    for name in names:
        del sys.modules[name]
    import sgm  # noqa: F401


def _tiny_open_clip(width: int, layers: int, head_width: int, embed_dim: int):
    import open_clip

    vision = open_clip.CLIPVisionCfg(layers=layers, width=width, head_width=head_width, mlp_ratio=2.0,
                                     patch_size=14, image_size=224)
    text = open_clip.CLIPTextCfg(context_length=77, vocab_size=64, width=16, heads=2, layers=1)
    return open_clip.CLIP(embed_dim=embed_dim, vision_cfg=vision, text_cfg=text)


def _reference_engine(root: str, frames: int, steps: int, sizes: dict):
    """The reference CameraMotionControl from its own inference config, every width shrunken."""
    import open_clip
    from omegaconf import OmegaConf
    from sgm.util import instantiate_from_config

    # the config's CLIP embedder loads ViT-H/14 weights by name; hand it a tiny random open_clip model instead
    open_clip.create_model_and_transforms = lambda *a, **k: (
        _tiny_open_clip(sizes["clip_width"], sizes["clip_layers"], sizes["clip_head_width"], sizes["context"]),
        None, None)
    cfg = OmegaConf.load(Path(root) / "configs/inference/config_motionctrl_cmcm.yaml")
    p = cfg.model.params
    p.pop("ckpt_path")
    net = p.network_config.params
    net.model_channels = sizes["model_channels"]
    net.channel_mult = sizes["channel_mult"]
    net.attention_resolutions = sizes["attention_resolutions"]
    net.num_head_channels = sizes["head_channels"]
    net.context_dim = sizes["context"]
    net.adm_in_channels = 3 * sizes["time_id"]
    net.num_frames = frames
    net.spatial_transformer_attn_type = "softmax"  # no xformers on the CPU; same maths
    embedders = p.conditioner_config.params.emb_models
    for e in embedders:
        if "outdim" in e.get("params", {}):
            e.params.outdim = sizes["time_id"]
    dd = embedders[3].params.encoder_config.params.ddconfig
    dd.ch, dd.ch_mult, dd.num_res_blocks, dd.attn_type = sizes["vae_ch"], sizes["vae_mult"], sizes["vae_layers"], "vanilla"
    for part in (p.first_stage_config.params.encoder_config, p.first_stage_config.params.decoder_config):
        part.params.ch, part.params.ch_mult = sizes["vae_ch"], sizes["vae_mult"]
        part.params.num_res_blocks = sizes["vae_layers"]
    p.sampler_config.params.num_steps = steps
    p.sampler_config.params.device = "cpu"
    p.sampler_config.params.guider_config.params.num_frames = frames
    return instantiate_from_config(cfg.model).eval()


def _reference_pose_conditioning(root: str, speed: float) -> dict:
    """Preset name -> the reference's ``get_RT`` output ``[16, 12]`` for its example pose files.

    ``get_RT`` and ``to_relative_RT2`` are taken from the reference's run script at run time (parsed with ast, the
    rest of the script, with its cv2 / torchvision / fire imports, is not run).
    """
    import numpy as np

    script = Path(root) / "main/inference/motionctrl_cmcm_run.py"
    tree = ast.parse(script.read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("get_RT", "to_relative_RT2")]
    names = ["D", "U", "L", "R", "I", "O", "Round-RI_90", "Round-RI_f90"]
    scope = {"np": np, "json": json, "torch": torch, "camera_poses": [f"test_camera_{n}" for n in names]}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(script), "exec"), scope)
    rts, got_names = scope["get_RT"](pose_dir=str(Path(root) / "examples/camera_poses"), video_frames=16,
                                      frame_stride=1, speed=speed)
    return dict(zip(got_names, rts, strict=True))


def _perturb(module: nn.Module, seed: int) -> None:
    """Add noise to every parameter so that zero-initialised and identity-initialised layers matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reference", help="the reference's motionctrlsvd folder (with sgm/ and configs/)")
    ap.add_argument("--deps", default=None, help="a folder with einops, kornia, open_clip (pip --target)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON report to this file")
    ap.add_argument("--float64", action="store_true",
                    help="build and run both in float64 (the sampler's own float32 casts stay), to tell round-off "
                         "from a difference in the maths")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    if args.float64:
        torch.set_default_dtype(torch.float64)
    _import_reference(args.reference, args.deps)

    from lift3d_core.generate.motionctrl_svd.config import MotionCtrlSVDConfig
    from lift3d_core.generate.motionctrl_svd.convert import convert_checkpoint
    from lift3d_core.generate.motionctrl_svd.model import ModelSpec, build_model
    from lift3d_core.generate.motionctrl_svd.sampler import edm_sigmas, encode_conditioning, sample_latents

    sizes = dict(model_channels=32, channel_mult=[1, 2, 4, 4], attention_resolutions=[4, 2, 1], head_channels=16,
                 context=32, time_id=8, vae_ch=32, vae_mult=[1, 2, 2, 2], vae_layers=2, clip_width=32,
                 clip_layers=2, clip_head_width=16)
    spec = ModelSpec(
        unet_channels=tuple(sizes["model_channels"] * m for m in sizes["channel_mult"]),
        unet_attention=(True, True, True, False), unet_head_dim=sizes["head_channels"], layers_per_block=2,
        cross_attention_dim=sizes["context"], time_id_dim=sizes["time_id"],
        vae_channels=tuple(sizes["vae_ch"] * m for m in sizes["vae_mult"]), vae_layers_per_block=sizes["vae_layers"],
        clip_width=sizes["clip_width"], clip_layers=sizes["clip_layers"],
        clip_heads=sizes["clip_width"] // sizes["clip_head_width"], clip_mlp=2 * sizes["clip_width"],
        clip_image_size=224, clip_patch=14, clip_text_width=16, clip_vocab=64,
    )
    t, steps = args.frames, args.steps
    torch.manual_seed(args.seed)
    engine = _reference_engine(args.reference, t, steps, sizes)
    _perturb(engine, args.seed + 1)
    official = dict(engine.state_dict())

    ours = build_model(spec, dtype=torch.get_default_dtype())
    target = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    state, missing, unexpected, ignored = convert_checkpoint(official, spec, target)
    ours.load_state_dict(state, strict=True)
    if args.float64:
        # sgm computes sinusoidal embeddings and GroupNorm32 in float32 whatever the weights: same maths in float64
        from sgm.modules.diffusionmodules.util import GroupNorm32

        GroupNorm32.forward = nn.GroupNorm.forward
        for m in [*engine.modules(), *ours.modules()]:
            if isinstance(m, nn.Linear):
                m.register_forward_pre_hook(lambda mod, a: (a[0].to(mod.weight.dtype), *a[1:]))
    report: dict = {"config": {"frames": t, "steps": steps, "size": [args.height, args.width], **sizes},
                    "keys": {"reference": len(official), "converted": len(state), "missing": missing,
                             "unexpected": unexpected, "ignored": len(ignored)}}

    # ---- sigma schedule: the official 50 steps
    from sgm.modules.diffusionmodules.discretizer import EDMDiscretization

    ref_sigmas = EDMDiscretization(sigma_max=700.0)(50)
    report["sigmas_50"] = _rel(edm_sigmas(50, 0.002, 700.0, 7.0), ref_sigmas)

    # ---- pose preprocessing (float64 ours, float32 theirs) on the reference's pose files, and our presets' rows
    import numpy as np

    from lift3d_core.trajectory import motionctrl_conditioning
    from lift3d_core.trajectory.presets import PRESETS

    poses = {}
    for name, ref_rt in _reference_pose_conditioning(args.reference, 1.6).items():
        rows = np.asarray(json.loads((Path(args.reference) / f"examples/camera_poses/test_camera_{name}.json").read_text()))
        ours_rt = torch.from_numpy(motionctrl_conditioning(rows, 1.6, (3.0, 1.0, 4.0)))
        preset_rt = torch.from_numpy(motionctrl_conditioning(PRESETS[name].json_rows(16), 1.6, (3.0, 1.0, 4.0)))
        poses[name] = {"file_rows_abs": float((ours_rt - ref_rt.double()).abs().max()),
                       "preset_rows_abs": float((preset_rt - ref_rt.double()).abs().max()),
                       "max_abs": float(ref_rt.abs().max())}
    report["pose_conditioning"] = poses

    # ---- CLIP preprocessing at the sizes the reference runs (kornia resize with antialias, align_corners)
    from lift3d_core.generate.motionctrl_svd.sampler import _clip_pixels

    clip_embedder = engine.conditioner.embedders[0].open_clip
    gp = torch.Generator().manual_seed(args.seed + 3)
    for ph, pw in ((576, 1024), (768, 1024), (args.height, args.width)):
        px = torch.rand((1, 3, ph, pw), generator=gp) * 2 - 1
        report[f"clip_pixels_{ph}x{pw}"] = _rel(_clip_pixels(px, 224), clip_embedder.preprocess(px))

    # ---- conditioning
    g = torch.Generator().manual_seed(args.seed + 2)
    h, w = args.height, args.width
    image = torch.rand((1, 3, h, w), generator=g) * 2 - 1
    cond_noise = torch.randn((1, 3, h, w), generator=g)
    mc = MotionCtrlSVDConfig(model="tiny", steps=steps, dtype="float32", decode_frames=1)
    batch = {"cond_frames_without_noise": image, "cond_frames": image + mc.cond_aug * cond_noise,
             "fps_id": torch.tensor([mc.fps_id]).repeat(t), "motion_bucket_id": torch.tensor([mc.motion_bucket_id]).repeat(t),
             "cond_aug": torch.tensor([mc.cond_aug]).repeat(t), "num_video_frames": t}
    batch_uc = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    c, uc = engine.conditioner.get_unconditional_conditioning(
        batch, batch_uc=batch_uc, force_uc_zero_embeddings=["cond_frames", "cond_frames_without_noise"])
    latent, embeds = encode_conditioning(ours, image, cond_noise, mc)
    report["clip_embedding"] = _rel(embeds, c["crossattn"])
    report["cond_latent"] = _rel(latent, c["concat"])
    for k in ("crossattn", "concat"):
        c[k] = c[k].repeat_interleave(t, dim=0)
        uc[k] = uc[k].repeat_interleave(t, dim=0)

    # ---- raw UNet, random inputs (batch of 2 clips, different poses)
    unet = engine.model.diffusion_model
    hl, wl = h // 8, w // 8
    b = 2
    x = torch.randn((b * t, 8, hl, wl), generator=g)
    sig = torch.exp(torch.randn((b,), generator=g) * 1.5)
    c_noise = (0.25 * sig.log()).repeat_interleave(t)
    ctx = torch.randn((b, 1, sizes["context"]), generator=g)
    ids = torch.tensor([[10.0, 100.0, 0.1], [6.0, 127.0, 0.02]])
    from sgm.modules.diffusionmodules.util import timestep_embedding

    vector = torch.cat([timestep_embedding(ids[:, i], sizes["time_id"]) for i in range(3)], dim=1)
    pose = torch.randn((b, t, 12), generator=g)
    common = dict(timesteps=c_noise, context=ctx.repeat_interleave(t, 0), y=vector.repeat_interleave(t, 0),
                  num_video_frames=t, image_only_indicator=torch.zeros(b, t))
    ref_out = unet(x, RT=pose, **common)
    our_out = ours.unet_call(x.view(b, t, 8, hl, wl), c_noise.view(b, t)[:, 0], ctx, ids, pose)
    report["unet_with_pose"] = _rel(our_out.reshape(ref_out.shape), ref_out)
    ref_plain = unet(x, RT=None, **common)
    our_plain = ours.unet_call(x.view(b, t, 8, hl, wl), c_noise.view(b, t)[:, 0], ctx, ids, None)
    report["unet_without_pose"] = _rel(our_plain.reshape(ref_plain.shape), ref_plain)
    report["pose_effect"] = _rel(ref_plain, ref_out)  # how much the poses move the output (not an error)

    # ---- whole sampler: same noise, same conditioning, CFG as a batch of 2 with the same poses
    noise = torch.randn((t, 4, hl, wl), generator=g)
    rt = torch.randn((1, t, 12), generator=g) * 0.5
    extra = {"image_only_indicator": torch.zeros(2, t), "num_video_frames": t, "RT": rt.repeat(2, 1, 1)}

    def denoiser(inp, sigma, cond):
        return engine.denoiser(engine.model, inp, sigma, cond, **extra)

    ref_z = engine.sampler(denoiser, noise.clone(), cond=c, uc=uc)
    our_z = sample_latents(ours, noise[None], latent, embeds, rt, mc)[0]
    report["sampler_latents"] = _rel(our_z, ref_z)

    # ---- temporal decoder
    z = torch.randn((t, 4, hl, wl), generator=g)
    engine.en_and_decode_n_samples_a_time = 1
    ref_rgb1 = engine.decode_first_stage(z)
    our_rgb1 = torch.cat([ours.vae.decode(z[i:i + 1] / spec.vae_scale_factor, num_frames=1).sample for i in range(t)])
    report["decoder_1_frame_per_call"] = _rel(our_rgb1, ref_rgb1)
    engine.en_and_decode_n_samples_a_time = t
    ref_rgbt = engine.decode_first_stage(z)
    our_rgbt = ours.vae.decode(z / spec.vae_scale_factor, num_frames=t).sample
    report["decoder_all_frames_per_call"] = _rel(our_rgbt, ref_rgbt)
    # relative errors under 1e-5; the pose conditioning (absolute, values of order 1, the reference in float32) 1e-6
    report["ok"] = (all(v < 1e-5 for k, v in report.items() if isinstance(v, float) and k != "pose_effect")
                    and all(e[k] < 1e-6 for e in report["pose_conditioning"].values()
                            for k in ("file_rows_abs", "preset_rows_abs")))
    report["config"]["float64"] = args.float64
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
