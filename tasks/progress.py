"""Rich progress bars for long stages (quiet when stdout is not a terminal)."""

from __future__ import annotations

from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def stage_progress(label: str, total: int):
    """Yield ``advance(done, total)``, a callback for lift3d_core's ``progress=`` arguments."""
    columns = (TextColumn(f"[bold]{label:<10}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task_id = bar.add_task(label, total=total)

        def advance(done: int, total_: int | None = None) -> None:
            bar.update(task_id, completed=done, total=total_ or total)

        yield advance
