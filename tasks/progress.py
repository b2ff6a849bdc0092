"""Rich progress bars for long stages (quiet when stdout is not a terminal)."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tasks.common import stage_logger


@contextmanager
def stage_progress(label: str, total: int):
    """Yield ``advance(done, total=None, phase=None)``, a callback for lift3d_core's ``progress=`` arguments
    (:mod:`lift3d_core.progress`). A named phase relabels the bar and restarts its count and ETA, and is logged
    once as it starts, so a log (a batch, a terminal-less run) shows which phase a long stage is in."""
    columns = (TextColumn("[bold]{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    current: str | None = None
    with Progress(*columns, transient=True) as bar:
        task_id = bar.add_task(label, total=total)

        def advance(done: int, total_: int | None = None, phase: str | None = None) -> None:
            nonlocal current
            size = total if total_ is None else total_  # a phase may have nothing to do (0)
            if phase is not None and phase != current:
                current = phase
                bar.reset(task_id, total=size, description=f"{label}: {phase}")
                stage_logger().info("%-10s %s: %d to do", label, phase, size)
            bar.update(task_id, completed=done, total=size)

        yield advance
