"""Training checkpoints: a killed training run resumes where it stopped instead of starting over.

A :class:`TrainCheckpoint` is one file (``torch.save``, written to a temporary name and renamed, so a kill while
writing leaves the previous checkpoint whole). It holds the trainer's :meth:`~lift3d_core.splat.train.Trainer.
state_dict` (step, Gaussians, optimiser moments, densification statistics, random generators; the distortion
trainer adds its field and the field's optimiser) and the run's bookkeeping (loss curve so far, Gaussian counts).
It is read back with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only.

A checkpoint only resumes the run it was written by: its ``fingerprint`` (the caller's key, e.g. the train stage's
store key, plus the trainer's config and the frames' shape) must match, or it is ignored with a log line and the run
starts over. Resuming changes no number: on the CPU the resumed run equals the uninterrupted one bit for bit; on a
GPU it differs only as two uninterrupted GPU runs do (atomic sums). Writing it costs a device sync and a copy of
the Gaussians (tens of MB at 100k Gaussians), so it is written every ``every_seconds`` of wall time, not per step.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class TrainCheckpoint:
    """One resumable training run's checkpoint file.

    Args:
        path: the file (its directory is created on first save).
        key: what identifies the run beyond the trainer's own config (the stage key; any string).
        every_seconds: wall time between saves (0: after every step; tests).
    """

    def __init__(self, path: str | Path, key: str = "", every_seconds: float = 120.0):
        self.path = Path(path)
        self.key = key
        self.every_seconds = float(every_seconds)
        self._last = time.monotonic()
        self.saves = 0
        self.resumed_step: int | None = None

    def fingerprint(self, trainer) -> str:
        cfg = getattr(trainer, "dcfg", trainer.cfg)
        text = f"{self.key}|{cfg!r}|{tuple(trainer.frames.shape)}|{trainer.device.type}"
        return hashlib.sha256(text.encode()).hexdigest()

    def due(self, step: int, total: int) -> bool:
        """Whether to save after ``step`` of ``total`` (never after the last: the result is saved instead)."""
        return step < total and time.monotonic() - self._last >= self.every_seconds

    def save(self, trainer, run: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save({"fingerprint": self.fingerprint(trainer), "trainer": trainer.state_dict(), "run": run}, tmp)
        os.replace(tmp, self.path)
        self._last = time.monotonic()
        self.saves += 1

    def load(self, trainer) -> dict | None:
        """Restore ``trainer`` from the file and return the run's bookkeeping, or None (no file, another run's,
        or unreadable: then the run starts over and the file is overwritten at the next save)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file must not stop training
            log.warning("train checkpoint %s unreadable (%s: %s): starting over", self.path, type(exc).__name__, exc)
            return None
        if state.get("fingerprint") != self.fingerprint(trainer):
            log.warning("train checkpoint %s belongs to another run: starting over", self.path)
            return None
        trainer.load_state_dict(state["trainer"])
        self.resumed_step = trainer.step
        self._last = time.monotonic()
        log.info("train: resumed at step %d from %s", trainer.step, self.path)
        return state["run"]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
