"""The distortion-aware fine step's speed switches, in one place: how each piece runs, never what it computes.

Every choice gives the same values up to float rounding (or bfloat16 products, as autocast's), so none enters a
store key. They are process-wide state until a GPU profile picks the defaults (``bench/RESULTS.md``, session 14);
``bench/speed_switches.py`` sets them from a benchmark variant. Read at call time by:

- ``compiled_parts`` (``distortion.field``, ``distortion.lines``, ``field_penalties``): the field's pieces that
  ``compile_field`` compiles, among ``"mlp"``, ``"lines"``, ``"regularisers"``;
- ``regularisers`` (``field_penalties``): uncompiled plane regularisers by ``"autograd"`` or ``"triton"``
  (:mod:`~lift3d_core.splat.regularisers_triton`);
- ``image_motion`` (``train_distortion``): ``"auto"`` runs the view mask and the image-motion price as Triton
  kernels (:mod:`~lift3d_core.splat.image_motion_triton`) where they can run, ``"off"`` in PyTorch;
- ``small_plane_products`` (``field_triton``): the fused field backward's one-hot products also for 8-channel and
  small planes;
- ``mlp`` / ``lines`` (``distortion.field`` / ``distortion.lines``): ``"triton"`` runs the MLP / the frame lines as
  fused kernels (:mod:`~lift3d_core.splat.field_mlp_triton`, :mod:`~lift3d_core.splat.lines_triton`), ``"torch"``
  in PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpeedSwitches:
    compiled_parts: set[str] = field(default_factory=lambda: {"mlp", "lines", "regularisers"})
    regularisers: str = "autograd"
    image_motion: str = "off"
    small_plane_products: bool = False
    mlp: str = "torch"
    lines: str = "torch"


SWITCHES = SpeedSwitches()
