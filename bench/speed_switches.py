"""The distortion-aware trainer's speed switches (:data:`lift3d_core.splat.speed.SWITCHES`), set from a benchmark
variant's ``_``-prefixed keys. Keys, with their defaults:

- ``_compiled_parts`` (``["mlp", "lines", "regularisers"]``): the field's pieces that ``compile_field`` compiles;
- ``_regularisers`` (``"autograd"``): uncompiled plane regularisers by autograd or ``"triton"``;
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
    from lift3d_core.splat.speed import SWITCHES

    over = dict(overrides)
    unknown = sorted(k for k in over if k.startswith("_") and k not in DEFAULTS)
    if unknown:
        raise ValueError(f"unknown speed switches {unknown}; known: {sorted(DEFAULTS)}")
    value = {k: over.pop(k, default) for k, default in DEFAULTS.items()}
    SWITCHES.compiled_parts = set(value["_compiled_parts"])
    SWITCHES.regularisers = value["_regularisers"]
    SWITCHES.image_motion = value["_fused_image_motion"]
    SWITCHES.small_plane_products = bool(value["_small_plane_products"])
    SWITCHES.mlp = value["_mlp_kernel"]
    SWITCHES.lines = value["_lines_kernel"]
    return over
