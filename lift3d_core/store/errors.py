"""The store's error types: all are :class:`Lift3DError`, so the CLI prints them in one line."""

from __future__ import annotations

from lift3d_core.errors import Lift3DError

__all__ = ["ArtifactNotFoundError", "CorruptArtifactError", "LockTimeoutError"]


class ArtifactNotFoundError(Lift3DError):
    """No committed artifact (no manifest) for this stage/key."""


class LockTimeoutError(Lift3DError):
    """Another run held a key's lock longer than the caller's timeout."""


class CorruptArtifactError(Lift3DError):
    """A committed artifact failed verification or could not be read.

    Attributes ``stage``, ``key``, ``path`` (the file that failed) and ``reason``.
    """

    def __init__(self, stage: str, key: str, path: str, reason: str):
        self.stage, self.key, self.path, self.reason = stage, key, path, reason
        super().__init__(
            f"corrupt artifact {stage}/{key} ({path}): {reason}. It was not used; quarantine it "
            f"(ArtifactStore.quarantine or `lift3d cache verify`) so the stage is recomputed."
        )
