"""``torch.compile`` with an eager fallback: :func:`compiled_or_eager` warms a compiled function up (forward and
backward) and says whether training may use it (the trainers' ``compile_loss`` and ``compile_field`` settings)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

from lift3d_core.errors import Lift3DError


def compiled_or_eager(setting: str, what: str, warm_up: Callable[[], object],
                      seconds: dict[str, float] | None = None) -> bool:
    """Whether a ``torch.compile``'d function can be used: runs ``warm_up`` (which must compile the forward *and*
    the backward, e.g. by ``torch.autograd.grad``: AOTAutograd compiles the backward lazily, at the first backward
    pass, which would be outside any try). On failure (a missing compiler or Triton) raises if ``setting`` is
    ``"on"``, else warns and returns False, so that training goes on eagerly. ``seconds[what]``, if given, gets
    the warm-up's wall time (the compile, or a hit of torch's on-disk compile caches)."""
    t0 = time.perf_counter()
    try:
        warm_up()
        if seconds is not None:
            seconds[what] = round(time.perf_counter() - t0, 2)
        return True
    except Exception as exc:
        if setting == "on":
            raise Lift3DError(f"{what}: on, but torch.compile failed: {exc}") from exc
        warnings.warn(f"torch.compile for {what} failed ({type(exc).__name__}: {exc}); running eagerly",
                      RuntimeWarning, stacklevel=3)
        return False
