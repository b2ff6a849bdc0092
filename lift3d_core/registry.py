"""The backend registry every multi-backend stage uses (generate, calibrate, depth).

A stage's config holds ``backend`` (a name) and one sub-section per backend; its ``BACKENDS`` maps each name to a
:class:`Backend`: where the function lives (imported on first use, so a backend's heavy dependencies load only when
it is chosen), which sub-section holds its settings, the pip extra its imports need and the checkpoints it reads.
The three things every stage does with it are here once: the key document of the active sub-section
(:func:`section_key`), the digests of its checkpoints (:func:`checkpoint_digests`), and the import with an error a
user can act on (:meth:`Backend.load`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lift3d_core.config import config_to_dict
from lift3d_core.errors import Lift3DError


@dataclass(frozen=True)
class Backend:
    """factory: ``"module:function"``. section: the stage config's field holding this backend's settings (None: it
    has none). extra: the ``lift3d[...]`` extra its imports need (None: the base install). checkpoints: checkpoint
    name (:data:`lift3d_core.checkpoints.CHECKPOINTS`) -> the section's field holding that file's path.
    version: the backend's own output version, moved when its outputs change (a fix in one backend re-keys that
    backend's artifacts only, not the stage's other backends'): it extends the stage's code version in the key
    (``pipeline.StageSpec.code_version``; the stage must name its registry in ``STAGES``), and
    "1" adds nothing, so backends that never moved keep the keys they had before the field existed
    (:func:`version_suffix`)."""

    factory: str
    section: str | None = None
    extra: str | None = None
    checkpoints: Mapping[str, str] = field(default_factory=dict)
    version: str = "1"

    def __post_init__(self):
        if not isinstance(self.version, str) or not self.version:
            raise Lift3DError(f"Backend {self.factory}: version must be a non-empty string, got {self.version!r}")

    def load(self, stage: str, name: str) -> Callable[..., Any]:
        """The backend's function, imported now; a missing package raises one Lift3DError saying what to install."""
        module, attr = self.factory.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            hint = f"pip install 'lift3d[{self.extra}]'" if self.extra else "reinstall lift3d (pip install -e .)"
            raise Lift3DError(f"{stage}.backend={name} needs the Python package {exc.name!r}, which is not installed: "
                              f"{hint}") from None


def check_backend(stage: str, name: str, backends: Mapping[str, Backend]) -> None:
    """One Lift3DError listing the choices when ``name`` is not one of the stage's backends."""
    if name not in backends:
        raise Lift3DError(f"{stage}.backend {name!r} is unknown; available: {', '.join(backends)}")


def active_section(cfg: Any, backends: Mapping[str, Backend]) -> Any:
    """The active backend's settings (a config dataclass), or None."""
    name = backends[cfg.backend].section
    return None if name is None else getattr(cfg, name)


def version_suffix(name: str, backends: Mapping[str, Backend]) -> str:
    """What the active backend ``name`` adds to its stage's code version: ``"+name.version"``, nothing for "1"."""
    version = backends[name].version
    return "" if version == "1" else f"+{name}.{version}"


def section_key(section: Any) -> dict[str, Any]:
    """What a key hashes of a backend's section: its own ``key_params()`` (which leaves out what only changes the
    speed, and checkpoint paths, whose digests are hashed instead) or, without one, every field."""
    return section.key_params() if hasattr(section, "key_params") else config_to_dict(section)


def checkpoint_digests(cfg: Any, backends: Mapping[str, Backend]) -> dict[str, str]:
    """Checkpoint name -> SHA-256 digest of every file the active backend reads (for ``pipeline.plan``'s models);
    a missing file, or one whose digest is not the official file's (where :data:`CHECKPOINTS` knows it), raises
    one Lift3DError naming it and where users get it."""
    spec = backends[cfg.backend]
    if not spec.checkpoints:
        return {}
    from lift3d_core.checkpoints import CHECKPOINTS, checkpoint_path, digest

    section = active_section(cfg, backends)
    out = {}
    for name, attr in spec.checkpoints.items():
        path = checkpoint_path(name, getattr(section, attr))
        out[name] = digest(path)
        known = CHECKPOINTS[name].sha256
        if known is not None and out[name] != f"sha256:{known}":  # a damaged or substituted file
            raise Lift3DError(f"checkpoint {path} has SHA-256 {out[name][7:23]}..., not the official file's "
                              f"{known[:16]}...; get {CHECKPOINTS[name].filename} again from {CHECKPOINTS[name].source}")
    return out


__all__ = ["Backend", "active_section", "check_backend", "checkpoint_digests", "section_key"]
