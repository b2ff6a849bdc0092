"""The distortion-aware trainer's module-level speed switches, set from a variant's ``_``-prefixed keys.

Each switch changes how a piece of the fine step runs, never what it computes (the same values up to float
rounding, or bfloat16 products as autocast's), so none enters a store key; they live as module globals until a GPU
profile picks the defaults (``bench/RESULTS.md``, session 14). Keys, with their defaults:

- ``_compiled_parts`` (``["mlp", "lines", "regularisers"]``): the field's pieces that ``compile_field`` compiles;
- ``_regularisers`` (``"autograd"``): uncompiled plane regularisers by autograd, ``"closed_form"`` or ``"triton"``;
- ``_fused_image_motion`` (``"off"``): ``"auto"`` runs the view mask and the image-motion price as Triton kernels;
- ``_small_plane_products`` (``False``): the fused field backward's one-hot products for 8-channel and small planes;
- ``_mlp_kernel`` / ``_lines_kernel`` (``"torch"``): ``"triton"`` runs the MLP / the frame lines as fused kernels.
"""

from __future__ import annotations

DEFAULTS = {
    "_compiled_parts": ("mlp", "lines", "regularisers"),
    "_regularisers": "autograd",
    "_fused_image_motion": "off",
    "_small_plane_products": False,
    "_mlp_kernel": "torch",
    "_lines_kernel": "torch",
}


def apply(overrides: dict) -> dict:
    """Sets every switch (the ones ``overrides`` names, the others back to their defaults) and returns
    ``overrides`` without them (the config overrides)."""
    from lift3d_core.splat import field_penalties, field_triton, train_distortion
    from lift3d_core.splat.distortion import compiled
    from lift3d_core.splat.distortion import field as distortion_field
    from lift3d_core.splat.distortion import lines as distortion_lines

    over = dict(overrides)
    unknown = sorted(k for k in over if k.startswith("_") and k not in DEFAULTS)
    if unknown:
        raise ValueError(f"unknown speed switches {unknown}; known: {sorted(DEFAULTS)}")
    value = {k: over.pop(k, default) for k, default in DEFAULTS.items()}
    compiled.COMPILED_PARTS.clear()
    compiled.COMPILED_PARTS.update(value["_compiled_parts"])
    field_penalties.EAGER_REGULARISERS = value["_regularisers"]
    train_distortion.FUSED_IMAGE_MOTION = value["_fused_image_motion"]
    field_triton.SMALL_PLANE_PRODUCTS = bool(value["_small_plane_products"])
    distortion_field.MLP_KERNEL = value["_mlp_kernel"]
    distortion_lines.LINES_KERNEL = value["_lines_kernel"]
    return over
