"""The artifact store: commit, find, open and verify artifacts under their keys, on a local disk or S3.

Publication. A writer builds the zip (locally, under a ``.tmp-`` name), publishes it create-only under its
content name, then publishes the manifest create-only: the manifest is the commit point, written last. On S3 both
are PUTs with ``If-None-Match: *``, so of two writers of one key exactly one manifest is committed, and it names
the zip its writer uploaded; the other writer finds the key committed, removes its own zip and returns the
winner's artifact. A reader never sees a partial artifact: an artifact exists iff its manifest does, and a
manifest only ever appears after its zip is complete. A crash leaves only garbage (a temp file, a zip no manifest
names) that :meth:`ArtifactStore.gc` removes.

Verification is the same on every store. Opening an artifact checks its manifest and the zip's size (and on S3
the ETag recorded when the zip was uploaded); each array is checked against its SHA-256 when loaded, and every
chunk against its CRC32C, so a stage that reads two arrays of a large artifact fetches and checks those two.
:meth:`ArtifactStore.verify_artifact` is the hit check a task runs before reusing an artifact: locally it hashes
the whole zip (cheap on a local disk); on an object store it compares the zip's ETag, the server's own checksum,
with the one the manifest recorded, in one HEAD request, without downloading the artifact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

from lift3d_core.errors import Lift3DError
from lift3d_core.store import maintenance
from lift3d_core.store.artifact import Artifact, ZipRangeStore
from lift3d_core.store.backend import LocalFiles, open_files, unlink_quietly
from lift3d_core.store.errors import ArtifactNotFoundError, CorruptArtifactError
from lift3d_core.store.keys import canonical_json, check_key, check_stage, file_digest, key_from_doc, normalise
from lift3d_core.store.layout import (
    MANIFEST_SUFFIX,
    ZIP_SUFFIX,
    build_zip,
    manifest_bytes,
    manifest_problem,
    new_manifest,
    prepare_arrays,
)
from lift3d_core.store.locking import DEFAULT_LEASE_TTL_S, key_lock
from lift3d_core.store.maintenance import ArtifactInfo, Problem

__all__ = ["DEFAULT_URL", "ArtifactStore"]

DEFAULT_URL = "data/artifacts"
_HASH_BLOCK = 1 << 20


class ArtifactStore:
    """Content-addressed store of immutable Zarr-zip artifacts (see the module docstring).

    ``url``: a local path (default ``data/artifacts``), ``file://...``, or any fsspec URL (``s3://bucket/prefix``,
    ``memory://team``); ``storage_options`` go to fsspec. ``lease_ttl_s``: how long an object store's per-key lock
    outlives a crashed holder.
    """

    def __init__(self, url: str | os.PathLike = DEFAULT_URL, lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
                 **storage_options: Any):
        self.url = os.fspath(url)
        self.files = open_files(self.url, **storage_options)
        self.fs, self.root, self.is_local = self.files.fs, self.files.root, self.files.is_local
        self.lease_ttl_s = lease_ttl_s

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # ---------------------------------------------------------------- paths

    def _manifest_path(self, stage: str, key: str) -> str:
        check_stage(stage)
        check_key(key)
        return f"{self.root}/{stage}/{key[:2]}/{key}{MANIFEST_SUFFIX}"

    def paths(self, stage: str, key: str) -> tuple[str, str]:
        """``(zip_path, manifest_path)`` of ``stage/key`` in the store's filesystem.

        The zip is content-named, so its path is the one the committed manifest names; for a key not committed
        (or whose manifest is unreadable) it is the legacy ``<key>.zarr.zip``.
        """
        manifest_path = self._manifest_path(stage, key)
        try:
            name = self.manifest(stage, key)["zip"]["file"]
        except Lift3DError:
            name = key + ZIP_SUFFIX
        return f"{os.path.dirname(manifest_path)}/{name}", manifest_path

    def _zip_path(self, manifest: dict) -> str:
        return f"{self.root}/{manifest['stage']}/{manifest['key'][:2]}/{manifest['zip']['file']}"

    def _display(self, path: str) -> str:
        return self.files.display(path)

    # ----------------------------------------------------------- read side

    def exists(self, stage: str, key: str) -> bool:
        """True iff ``stage/key`` is committed (its manifest exists). Does not verify."""
        return self.files.exists(self._manifest_path(stage, key))

    def manifest(self, stage: str, key: str) -> dict[str, Any]:
        """The parsed, structurally checked manifest of ``stage/key``; ``manifest["zip"]["path"]`` is the zip's URL."""
        manifest_path = self._manifest_path(stage, key)
        try:
            raw = self.files.cat(manifest_path)
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"no artifact {stage}/{key} in {self.url} (no {manifest_path})") from None
        try:
            manifest = json.loads(raw)
            problem = manifest_problem(manifest, stage, key)
        except (ValueError, TypeError, AttributeError, KeyError, Lift3DError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            raise CorruptArtifactError(stage, key, self._display(manifest_path), f"bad manifest: {problem}")
        manifest["zip"]["path"] = self._display(self._zip_path(manifest))
        return manifest

    def info(self, stage: str, key: str) -> ArtifactInfo:
        """:class:`ArtifactInfo` of a committed artifact (from its manifest)."""
        return maintenance.info_of(self.manifest(stage, key))

    def read(self, stage: str, key: str, verify: bool = True) -> Artifact:
        """Open committed ``stage/key`` for lazy reads.

        ``verify=True`` checks the zip's size (and recorded ETag) now, and each array's dtype/shape/SHA-256 when
        it is loaded; chunk CRC32Cs are always checked. Raises ArtifactNotFoundError if not committed,
        CorruptArtifactError on any mismatch or unreadable byte.
        """
        manifest = self.manifest(stage, key)
        zip_path, shown = self._zip_path(manifest), manifest["zip"]["path"]
        size = self._checked_size(stage, key, zip_path, manifest) if verify else self._size(stage, key, zip_path,
                                                                                                   shown)
        reader = self.files.reader(zip_path)
        try:
            store = ZipRangeStore(reader, size)
        except Exception as exc:
            reader.close()
            raise CorruptArtifactError(stage, key, shown, f"cannot open zip: {type(exc).__name__}: {exc}") from exc
        return Artifact(stage, key, manifest, store, verify)

    def _size(self, stage: str, key: str, zip_path: str, shown: str) -> int:
        return self._stat(stage, key, zip_path, shown)[0]

    def _stat(self, stage: str, key: str, zip_path: str, shown: str) -> tuple[int, str | None]:
        try:
            return self.files.stat(zip_path)
        except FileNotFoundError:
            raise CorruptArtifactError(stage, key, shown, "zip file is missing") from None

    def _checked_size(self, stage: str, key: str, zip_path: str, manifest: dict) -> int:
        """The zip's size, after checking it (and the ETag, where the manifest has one) against the manifest."""
        expected, shown = manifest["zip"], manifest["zip"]["path"]
        size, etag = self._stat(stage, key, zip_path, shown)
        if size != expected["size_bytes"]:
            reason = f"zip is {size} bytes, manifest says {expected['size_bytes']} (truncated?)"
            raise CorruptArtifactError(stage, key, shown, reason)
        if expected.get("etag") and etag and etag != expected["etag"]:
            reason = f"zip ETag {etag} != manifest {expected['etag']}: the object was replaced after its commit"
            raise CorruptArtifactError(stage, key, shown, reason)
        return size

    def verify_artifact(self, stage: str, key: str, deep: bool = False) -> list[Problem]:
        """Check one committed artifact; ``[]`` when intact, else one :class:`Problem`.

        ``deep=False`` is the hit check: the manifest, the zip's size, and its SHA-256 (local stores and object
        stores without ETags) or its ETag against the manifest's (S3: one HEAD, nothing downloaded).
        ``deep=True`` also decodes every array (chunk CRC32C) and checks its dtype, shape and SHA-256, and on an
        object store the whole zip's SHA-256. A missing artifact raises ArtifactNotFoundError.
        """
        try:
            manifest = self.manifest(stage, key)
            zip_path = self._zip_path(manifest)
            self._checked_size(stage, key, zip_path, manifest)
            if deep or self.is_local or not manifest["zip"].get("etag"):
                digest = self._zip_digest(zip_path)
                if digest != manifest["zip"]["sha256"]:
                    reason = f"zip {digest} != manifest {manifest['zip']['sha256']}"
                    raise CorruptArtifactError(stage, key, manifest["zip"]["path"], reason)
            if deep:
                with self.read(stage, key, verify=True) as artifact:
                    for name in artifact.names:
                        artifact.array(name)
        except CorruptArtifactError as exc:
            return [Problem(stage, key, exc.path, exc.reason)]
        return []

    def _zip_digest(self, zip_path: str) -> str:
        if self.is_local:
            return file_digest(zip_path)
        digest = hashlib.sha256()
        with self.fs.open(zip_path, "rb", block_size=8 << 20) as f:
            while block := f.read(_HASH_BLOCK * 8):
                digest.update(block)
        return "sha256:" + digest.hexdigest()

    # ---------------------------------------------------------- write side

    def write(
        self,
        stage: str,
        key: str,
        key_doc: Mapping[str, Any],
        arrays: Mapping[str, Any],
        attrs: Mapping[str, Any] | None = None,
        code_version: str = "",
    ) -> ArtifactInfo:
        """Commit ``arrays`` + ``attrs`` as ``stage/key``; a no-op if it already exists.

        ``key`` must equal ``key_from_doc(key_doc)`` (use :func:`artifact_key`). ``arrays``: name (``"frames"``,
        ``"gaussians/means"``) -> numeric array of any shape; stored sharded, zstd-compressed, crc32c-checksummed,
        and read back with identical dtype and bytes (big-endian input is stored little-endian). ``attrs``:
        JSON-able dict (numpy scalars allowed) stored as the group's attributes. ``code_version`` is recorded in
        the manifest. An OS error (a full disk, a refused upload) raises one-line Lift3DError, nothing committed.
        """
        doc = self._check_key_doc(stage, key, key_doc)
        prepared = prepare_arrays(arrays)
        group_attrs = json.loads(json.dumps(normalise(dict(attrs or {}), "attrs", allow_nan=True), sort_keys=True))
        with self.lock(stage, key):
            if self.exists(stage, key):
                return self.info(stage, key)
            try:
                self._publish(stage, key, doc, prepared, group_attrs, code_version)
            except OSError as exc:
                reason = exc.strerror or str(exc) or type(exc).__name__
                hint = " (disk full?)" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
                raise Lift3DError(f"cannot write {stage}/{key[:12]} to {self.url}: {reason}{hint}; "
                                  "nothing was committed") from exc
        return self.info(stage, key)

    def _check_key_doc(self, stage: str, key: str, key_doc: Mapping[str, Any]) -> dict[str, Any]:
        self._manifest_path(stage, key)
        doc = json.loads(canonical_json(key_doc))
        if doc.get("stage") != stage:
            raise Lift3DError(f"key_doc is for stage {doc.get('stage')!r}, not {stage!r}")
        if key_from_doc(doc) != key:
            raise Lift3DError(
                f"key {key} is not the hash of key_doc ({key_from_doc(doc)}); build both with artifact_key()"
            )
        return doc

    def _publish(self, stage: str, key: str, doc: dict, arrays: dict, attrs: dict, code_version: str) -> None:
        """Zip (create-only, content-named), then manifest (create-only): see the module docstring."""
        manifest_path = self._manifest_path(stage, key)
        with self._build_dir(manifest_path, key) as tmp_zip:
            array_meta = build_zip(tmp_zip, arrays, attrs)
            size, sha = os.path.getsize(tmp_zip), file_digest(tmp_zip)
            manifest = new_manifest(stage, key, doc, code_version, sha, size, array_meta)
            zip_path = self._zip_path(manifest)
            created_zip = self.files.create_file(tmp_zip, zip_path)  # False: the same bytes are already there
        try:
            if not self.is_local:
                manifest["zip"]["etag"] = self.files.stat(zip_path)[1]
            if self.files.create_bytes(manifest_path, manifest_bytes(manifest)):
                return
            winner = self.manifest(stage, key)["zip"]["file"]  # another writer committed first
        except BaseException:
            if created_zip:
                with contextlib.suppress(OSError):
                    self.files.rm(zip_path)
            raise
        if created_zip and winner != manifest["zip"]["file"]:
            self.files.rm(zip_path)

    @contextlib.contextmanager
    def _build_dir(self, manifest_path: str, key: str) -> Iterator[str]:
        """A temp path to build the zip at: beside its target locally (publishing is a link), else a temp dir."""
        if isinstance(self.files, LocalFiles):
            tmp = self.files.temp_path(manifest_path[: -len(MANIFEST_SUFFIX)] + ZIP_SUFFIX, key)
            try:
                yield tmp
            finally:
                unlink_quietly(tmp)
        else:
            with tempfile.TemporaryDirectory(prefix="lift3d-upload-") as tmp_dir:
                yield os.path.join(tmp_dir, key + ZIP_SUFFIX)

    # ------------------------------------------------------------- locking

    @contextlib.contextmanager
    def lock(self, stage: str, key: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the per-key lock of ``stage/key`` (see :mod:`lift3d_core.store.locking`).

        Exclusive across processes and threads, reentrant within a thread, freed when its holder dies (locally by
        the OS, on an object store when its lease expires). ``timeout`` seconds (None = wait forever), then
        LockTimeoutError.
        """
        self._manifest_path(stage, key)
        with key_lock(self.files, stage, key, timeout, self.lease_ttl_s):
            yield

    # ------------------------------------------------------- maintenance

    def delete(self, stage: str, key: str) -> bool:
        """Remove ``stage/key`` (manifest first, so it stops existing atomically). True if anything was removed."""
        zip_path, manifest_path = self.paths(stage, key)
        with self.lock(stage, key):
            removed = [self.files.rm(path) for path in (manifest_path, zip_path)]
        return any(removed)

    def quarantine(self, stage: str, key: str) -> list[str]:
        """Move ``stage/key`` to ``<root>/.corrupt/<stage>/`` (manifest first); return the new paths.

        Afterwards the key does not exist, so the stage is recomputed; the bad files stay for inspection until
        ``gc(include_quarantined=True)``.
        """
        with self.lock(stage, key):
            return maintenance.quarantine(self, stage, key)

    def ls(self, stage: str | None = None) -> list[ArtifactInfo]:
        """Committed artifacts (all stages, or one), sorted by stage then key; an unreadable manifest is listed
        with ``created=None`` (``verify`` says what is wrong with it)."""
        return maintenance.ls(self, stage)

    def verify(self, stage: str | None = None, quarantine: bool = False) -> list[Problem]:
        """Fully check every committed artifact (``verify_artifact(deep=True)``); the problems found (empty ==
        clean). With ``quarantine=True`` each corrupt artifact is also moved aside so it will be recomputed."""
        problems = []
        for st, key in maintenance.committed(self, stage):
            found = self.verify_artifact(st, key, deep=True)
            problems += found
            if found and quarantine:
                self.quarantine(st, key)
        return problems

    def gc(self, dry_run: bool = False, grace_s: float = maintenance.DEFAULT_GC_GRACE_S,
           include_quarantined: bool = False) -> list[str]:
        """Remove garbage older than ``grace_s`` seconds; return the paths removed (or that would be).

        Garbage: ``.tmp-*`` files of crashed local writes, zips no manifest names (a crash or a lost race between
        the two publications), unheld lock files and expired leases, and with ``include_quarantined`` everything
        under ``.corrupt/``. Committed artifacts are never touched, nor a zip whose key a live writer holds.
        """
        return maintenance.gc(self, dry_run, grace_s, include_quarantined)
