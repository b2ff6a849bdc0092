"""The training progress bar (``progress=True`` of :meth:`lift3d_core.splat.train.Trainer.run`): rich's, when
rich is installed."""

from __future__ import annotations

import warnings


class _progress_bar:
    """A rich progress bar when rich is installed (pyproject lists it); plain silence otherwise."""

    def __init__(self, total: int):
        try:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        except ImportError:
            warnings.warn("progress=True needs the 'rich' package; training without a progress bar", stacklevel=2)
            self._progress = None
            return
        self._progress = Progress(
            TextColumn("train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
        )
        self._task = self._progress.add_task("train", total=total, info="")
        self._progress.start()

    def advance(self):
        if self._progress is not None:
            self._progress.advance(self._task)

    def update(self, step: int, metrics: dict):
        if self._progress is not None:
            info = f"loss {metrics['loss']:.4f}  psnr {metrics['psnr']:.2f}  N {metrics['num_gaussians']}"
            self._progress.update(self._task, advance=1, info=info)

    def close(self):
        if self._progress is not None:
            self._progress.stop()
