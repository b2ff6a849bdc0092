"""``torch.compile`` wrappers shared by the field, its frame lines and its regularisers."""

from __future__ import annotations

import functools

import torch

# Which of the field's pieces run as compiled graphs when the field is compiled (``compile_field``): the MLP
# (``"mlp"``), the frame lines (``"lines"``) and the plane regularisers (``"regularisers"``). A speed switch only
# (the values are the same up to float rounding), module-level so that benchmarks can time the pieces eagerly
# one at a time (``bench/profile_distortion.py``); each compiled piece costs compile time once and host time per
# call, and saves kernel launches.
COMPILED_PARTS: set[str] = {"mlp", "lines", "regularisers"}


def part_compiled(part: str) -> bool:
    """Whether ``part`` (``"mlp"``, ``"lines"`` or ``"regularisers"``) runs compiled in a compiled field."""
    return part in COMPILED_PARTS


@functools.cache
def compile_once(fn, dynamic: bool | None):
    """``torch.compile(fn)`` made once per function (its graphs are then reused by every field of one shape)."""
    return torch.compile(fn, fullgraph=True, dynamic=dynamic)
