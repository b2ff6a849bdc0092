"""``torch.compile`` wrappers shared by the field, its frame lines and its regularisers."""

from __future__ import annotations

import functools

import torch


@functools.cache
def compile_once(fn, dynamic: bool | None):
    """``torch.compile(fn)`` made once per function (its graphs are then reused by every field of one shape)."""
    return torch.compile(fn, fullgraph=True, dynamic=dynamic)
