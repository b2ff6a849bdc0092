"""The progress callback that long library functions accept (``progress=``), and how they call it.

A callback is called as ``progress(done, total, phase)``: ``done`` of ``total`` units of the named ``phase`` are
finished (``phase`` None for a function with one phase). ``done`` restarts from 0 when the phase changes; within a
phase it never decreases, and a phase ends with ``done == total``. The library never draws anything itself:
``tasks/progress.py`` turns the calls into a progress bar, tests into assertions.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[..., None]


def report(progress: Progress | None, done: int, total: int, phase: str | None = None) -> None:
    """Call ``progress(done, total, phase)`` when there is a callback (``phase`` passed only when named)."""
    if progress is None:
        return
    if phase is None:
        progress(done, total)
    else:
        progress(done, total, phase)


__all__ = ["Progress", "report"]
