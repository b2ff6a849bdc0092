"""Listing, quarantine and garbage collection of a store (local or remote), and their records."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lift3d_core.store.backend import TMP_PREFIX
from lift3d_core.store.errors import ArtifactNotFoundError, CorruptArtifactError, LockTimeoutError
from lift3d_core.store.keys import KEY_RE, STAGE_RE, check_stage
from lift3d_core.store.layout import MANIFEST_SUFFIX, ZIP_SUFFIX, zip_name_key
from lift3d_core.store.locking import LOCK_DIR, LOCK_SUFFIX, remove_unheld_lock

if TYPE_CHECKING:
    from lift3d_core.store.core import ArtifactStore

__all__ = ["ArtifactInfo", "Problem"]

CORRUPT_DIR = ".corrupt"
DEFAULT_GC_GRACE_S = 3600.0


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """One committed artifact: ``size_bytes`` of its zip, ``created`` UTC ISO-8601, ``path`` of the zip."""

    stage: str
    key: str
    size_bytes: int
    created: str | None
    path: str


@dataclasses.dataclass(frozen=True)
class Problem:
    """A verification failure found by ``ArtifactStore.verify``: which artifact, which file, what failed."""

    stage: str
    key: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.stage}/{self.key} ({self.path}): {self.reason}"


def info_of(manifest: dict) -> ArtifactInfo:
    zip_record = manifest["zip"]
    return ArtifactInfo(manifest["stage"], manifest["key"], zip_record["size_bytes"], manifest["created"],
                        zip_record["path"])


def committed(store: ArtifactStore, stage: str | None) -> list[tuple[str, str]]:
    """``(stage, key)`` of every manifest under the root (or one stage), sorted."""
    if stage is not None:
        check_stage(stage)
    found = []
    for path in store.fs.glob(f"{store.root}/{stage or '*'}/??/*{MANIFEST_SUFFIX}"):
        parts = path.rstrip("/").split("/")
        st, prefix, key = parts[-3], parts[-2], parts[-1][: -len(MANIFEST_SUFFIX)]
        if STAGE_RE.match(st) and KEY_RE.match(key) and key[:2] == prefix:
            found.append((st, key))
    return sorted(found)


def ls(store: ArtifactStore, stage: str | None) -> list[ArtifactInfo]:
    infos = []
    for st, key in committed(store, stage):
        try:
            infos.append(store.info(st, key))
        except CorruptArtifactError:
            zips = _zips_of(store, st, key)
            size = sum(info["size"] for info in zips.values())
            shown = store.files.display(min(zips)) if zips else store.paths(st, key)[0]
            infos.append(ArtifactInfo(st, key, size, None, shown))
    return infos


def quarantine(store: ArtifactStore, stage: str, key: str) -> list[str]:
    """Move the manifest, then every zip of ``stage/key``, under ``.corrupt/``; the caller holds the key's lock."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target_dir = f"{store.root}/{CORRUPT_DIR}/{stage}"
    manifest_path = store.paths(stage, key)[1]
    moved = []
    for path in [manifest_path, *sorted(_zips_of(store, stage, key))]:
        if store.files.exists(path):
            suffix = MANIFEST_SUFFIX if path == manifest_path else ZIP_SUFFIX
            target = f"{target_dir}/{key}.{stamp}{suffix}"
            store.fs.makedirs(target_dir, exist_ok=True)
            store.fs.mv(path, target)
            moved.append(store.files.display(target))
    return moved


def _zips_of(store: ArtifactStore, stage: str, key: str) -> dict[str, dict]:
    directory = f"{store.root}/{stage}/{key[:2]}"
    if not store.fs.exists(directory):
        return {}
    return {path: info for path, info in store.fs.find(directory, detail=True).items()
            if zip_name_key(path.rsplit("/", 1)[-1]) == key}


def gc(store: ArtifactStore, dry_run: bool, grace_s: float, include_quarantined: bool) -> list[str]:
    now = time.time()
    candidates = []
    for path, info in sorted(store.files.find(store.root).items()):
        kind, stage, key = _classify(store, path)
        wanted = kind is not None and (kind != "quarantined" or include_quarantined)
        if wanted and now - _mtime(info, now) >= grace_s:
            candidates.append((kind == "lock", path, kind, stage, key))
    removed = []
    # lock files last: removing a tmp/orphan takes (and may recreate) its key's lock file
    for _, path, kind, stage, key in sorted(candidates):
        if dry_run or _remove_garbage(store, path, kind, stage, key):
            removed.append(store.files.display(path))
    return removed


def _classify(store: ArtifactStore, path: str) -> tuple[str | None, str | None, str | None]:
    """``(kind, stage, key)`` of a garbage file, kind in tmp/orphan/lock/quarantined, or Nones."""
    parts = path[len(store.root) :].strip("/").split("/")
    name = parts[-1]
    if parts[0] == CORRUPT_DIR:
        return "quarantined", None, None
    if parts[0] == LOCK_DIR:
        return ("lock", None, None) if name.endswith(LOCK_SUFFIX) else (None, None, None)
    if name.startswith(TMP_PREFIX):
        stem = name[len(TMP_PREFIX) : len(TMP_PREFIX) + 64]
        layout_ok = len(parts) == 3 and STAGE_RE.match(parts[0]) and KEY_RE.match(stem)
        return ("tmp", parts[0], stem) if layout_ok else ("tmp", None, None)
    key = zip_name_key(name)
    if len(parts) == 3 and STAGE_RE.match(parts[0]) and key and parts[1] == key[:2]:
        return ("orphan", parts[0], key) if not _is_named(store, parts[0], key, name) else (None, None, None)
    return None, None, None


def _is_named(store: ArtifactStore, stage: str, key: str, zip_file: str) -> bool:
    """True if ``stage/key`` is committed with the zip ``zip_file`` (or its manifest is unreadable: keep it)."""
    try:
        return store.manifest(stage, key)["zip"]["file"] == zip_file
    except ArtifactNotFoundError:
        return False
    except CorruptArtifactError:
        return True


def _remove_garbage(store: ArtifactStore, path: str, kind: str, stage: str | None, key: str | None) -> bool:
    """Remove one garbage file unless a live writer holds its key; True if removed."""
    if kind == "lock":
        return remove_unheld_lock(store.files, path)
    if stage is None:
        return store.files.rm(path)
    try:
        with store.lock(stage, key, timeout=0):
            if kind == "orphan" and _is_named(store, stage, key, path.rsplit("/", 1)[-1]):
                return False  # committed while we looked
            return store.files.rm(path)
    except LockTimeoutError:
        return False


def _mtime(info: Mapping[str, Any], default: float) -> float:
    """Modification time (POSIX seconds) from an fsspec info dict, across backends."""
    for field in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(field)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return dt.datetime.fromisoformat(value).timestamp()
            except ValueError:
                continue
    return default
