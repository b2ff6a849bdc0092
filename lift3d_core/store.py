"""Content-addressed, immutable artifact store.

Every stage output is stored under a key that is the SHA-256 of a canonical
JSON *key document*::

    {"stage", "stage_version", "params", "inputs": {name: upstream key | file digest},
     "models": {name: checkpoint digest}}

so a key names exactly what produced the bytes, and changing one parameter
changes that stage's key and (through ``inputs``) every key downstream.

Layout under the store root (a local directory or any fsspec URL)::

    <root>/<stage>/<key[:2]>/<key>.zarr.zip   one Zarr v3 group (zip store, entries STORED)
    <root>/<stage>/<key[:2]>/<key>.json       manifest; written LAST = the commit marker
    <root>/.locks/<stage>/<key>.lock          per-key inter-process lock (local stores only)
    <root>/.corrupt/<stage>/<key>.<utc>.*     quarantined artifacts (kept for inspection)

An artifact exists iff its manifest exists. Files are built under a ``.tmp-``
name beside their target, fsynced and renamed, so a crash leaves only garbage
that :meth:`ArtifactStore.gc` removes; a reader never sees a half-written
artifact. Artifacts are immutable: writing an existing key is a no-op.

Integrity has three layers: the manifest's SHA-256 (and size) of the whole zip,
checked on :meth:`ArtifactStore.read`; a SHA-256 of each array's raw C-order
bytes, checked when the array is loaded; and Zarr's ``crc32c`` codec on every
chunk and shard index (plus zip's own CRC-32 per entry), which also protects
lazy partial reads. Any failure raises :class:`CorruptArtifactError`; callers
quarantine and recompute, never use the bytes.

Concurrency. Local stores: :meth:`ArtifactStore.lock` is a per-key file lock
(``filelock``; reentrant within a thread, exclusive across threads and
processes, released by the OS if a process dies), and :meth:`ArtifactStore.write`
takes it too, so two runs that wrap "exists? else compute and write" in
``lock()`` compute a key once. Remote (fsspec) stores have no lock: both runs
compute, each uploads whole objects (zip, then manifest) and the last manifest
wins. The zip bytes are a deterministic function of the arrays and attrs (sorted
entries, fixed timestamps, deterministic codecs), so deterministic stages race
harmlessly; if a non-deterministic stage races on a remote store, the surviving
manifest may not match the surviving zip, which :meth:`ArtifactStore.read`
reports as corrupt (never silently used) and a recompute repairs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import re
import tempfile
import time
import uuid
import weakref
import zipfile
from collections.abc import Iterator, Mapping
from typing import Any, Self

import filelock
import fsspec
import numpy as np
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.codecs import Crc32cCodec, ZstdCodec

from lift3d_core.errors import Lift3DError

__all__ = [
    "Artifact",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "CorruptArtifactError",
    "LockTimeoutError",
    "Problem",
    "artifact_key",
    "canonical_json",
    "chunk_layout",
    "file_digest",
    "key_from_doc",
]

DEFAULT_URL = "data/artifacts"
MANIFEST_FORMAT = "lift3d-artifact/1"
ZIP_SUFFIX = ".zarr.zip"
MANIFEST_SUFFIX = ".json"
TMP_PREFIX = ".tmp-"
CORRUPT_DIR = ".corrupt"
LOCK_DIR = ".locks"
DEFAULT_GC_GRACE_S = 3600.0

# ~1 MiB uncompressed per chunk: one 576x1024 RGB frame (1.7 MB) is one chunk,
# small frames are grouped, and a lazy read of one frame touches one chunk.
_CHUNK_TARGET_BYTES = 1 << 20
# One shard per array up to 64 MiB. Bounded because Zarr assembles a whole shard in
# memory on write, and because Python's zipfile seeks forward by reading, so a lazy
# read of one chunk costs a pass over its shard (~0.7 ms/MB on CPython 3.11).
_SHARD_MAX_BYTES = 64 << 20
# Zip's DOS-time epoch: fixed entry timestamps make the zip bytes deterministic.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_HASH_BLOCK = 1 << 20

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_STAGE_RE = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,63}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ARRAY_KINDS = "biufc"  # bool, int, uint, float, complex: fixed-size numeric only


# --------------------------------------------------------------------------- errors


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


# ------------------------------------------------------------------- keys & digests


def _normalise(obj: Any, where: str, allow_nan: bool) -> Any:
    """Return ``obj`` as plain JSON types (dict/list/str/int/float/bool/None).

    numpy scalars and arrays become Python values/lists, tuples become lists,
    dataclass instances become dicts. Raises Lift3DError for anything else.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        if not allow_nan and not math.isfinite(value):
            raise Lift3DError(f"{where} is {value}: NaN/inf have no canonical JSON; use None or a string")
        return value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _normalise(dataclasses.asdict(obj), where, allow_nan)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise Lift3DError(f"{where}: dict key {k!r} is {type(k).__name__}; keys must be str")
            out[k] = _normalise(v, f"{where}.{k}", allow_nan)
        return out
    if isinstance(obj, (list, tuple)):
        return [_normalise(v, f"{where}[{i}]", allow_nan) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return _normalise(obj.tolist(), where, allow_nan)
    if isinstance(obj, os.PathLike):
        raise Lift3DError(
            f"{where} is a path ({obj}); a path would make the key machine-dependent: "
            "put file_digest(path) in `inputs` instead"
        )
    raise Lift3DError(f"{where} has type {type(obj).__name__}, which is not JSON-able")


def canonical_json(obj: Any) -> bytes:
    """Canonical JSON bytes of ``obj``: sorted keys, no whitespace, ASCII.

    Floats use Python's shortest round-trip ``repr`` (so ``0.1`` -> ``0.1`` on
    every platform); ``1`` and ``1.0`` stay distinct. NaN/inf and non-str dict
    keys raise :class:`Lift3DError`.
    """
    plain = _normalise(obj, "$", allow_nan=False)
    return json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def key_from_doc(key_doc: Mapping[str, Any]) -> str:
    """SHA-256 hex of ``canonical_json(key_doc)``: the artifact key of a key document."""
    return hashlib.sha256(canonical_json(key_doc)).hexdigest()


def artifact_key(
    stage: str,
    stage_version: str | int,
    params: Mapping[str, Any],
    inputs: Mapping[str, str],
    models: Mapping[str, str],
) -> tuple[str, dict[str, Any]]:
    """Key of a stage output: ``(key_hex [64 chars], key_doc)``.

    ``params``: this stage's parameters only (a dict or a config dataclass).
    ``inputs``: name -> upstream artifact key or ``file_digest`` of an input file.
    ``models``: name -> checkpoint digest. The returned ``key_doc`` is the
    normalised document that was hashed; pass it to :meth:`ArtifactStore.write`.
    """
    _check_stage(stage)
    if not isinstance(stage_version, (str, int)) or isinstance(stage_version, bool):
        raise Lift3DError(f"stage_version of {stage!r} must be a str or int, got {stage_version!r}")
    for what, mapping in (("inputs", inputs), ("models", models)):
        for name, ref in mapping.items():
            if not isinstance(ref, str) or not ref:
                raise Lift3DError(f"{stage}: {what}[{name!r}] must be a key or digest string, got {ref!r}")
    doc = {"stage": stage, "stage_version": stage_version, "params": params, "inputs": inputs, "models": models}
    key_doc = json.loads(canonical_json(doc))
    return key_from_doc(key_doc), key_doc


def file_digest(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a file, streamed in 1 MiB blocks (local path or fsspec URL)."""
    digest = hashlib.sha256()
    name = os.fspath(path)
    with fsspec.open(name, "rb") if "://" in name else open(name, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _array_digest(array: np.ndarray) -> str:
    """``"sha256:<hex>"`` of the raw C-order bytes of ``array``."""
    return "sha256:" + hashlib.sha256(np.require(array, requirements="C")).hexdigest()


def _check_stage(stage: str) -> None:
    if not isinstance(stage, str) or not _STAGE_RE.match(stage):
        raise Lift3DError(f"stage name {stage!r} must match {_STAGE_RE.pattern} (lowercase, no leading dot)")


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise Lift3DError(f"artifact key {key!r} is not 64 lowercase hex chars; build it with artifact_key()")


# --------------------------------------------------------------- array layout


def chunk_layout(shape: tuple[int, ...], itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Chunk and shard shapes for an array: ``(chunks, shards | None)``.

    Trailing "frame" axes are never split: ``[..., H, W, C<=4]`` keeps ``H, W, C``
    (ndim >= 4), other ndim >= 3 arrays keep the last two (``[F, H, W]``,
    ``[N, 4, 4]``), 2-D arrays keep rows (``[P, 3]``). Leading axes are grouped
    to about 1 MiB per chunk, e.g. frames ``[clip, t, H, W, 3]`` get one frame per
    chunk once a frame reaches 1 MiB. One shard holds the whole array unless it
    exceeds 64 MiB. 0-d arrays are neither chunked nor sharded.
    """
    ndim = len(shape)
    if ndim == 0:
        return (), None
    frame_ndim = {1: 0, 2: 1}.get(ndim, 3 if ndim >= 4 and shape[-1] <= 4 else 2)
    chunks = _group_leading(shape, ndim - frame_ndim, itemsize, _CHUNK_TARGET_BYTES)
    chunks = tuple(max(1, c) for c in chunks)
    grid = tuple(max(1, math.ceil(s / c)) for s, c in zip(shape, chunks, strict=True))
    padded = tuple(g * c for g, c in zip(grid, chunks, strict=True))
    chunk_bytes = math.prod(chunks) * itemsize
    shard_grid = _group_leading(grid, ndim, chunk_bytes, _SHARD_MAX_BYTES)
    shards = tuple(max(1, g) * c for g, c in zip(shard_grid, chunks, strict=True))
    return chunks, tuple(min(s, p) for s, p in zip(shards, padded, strict=True))


def _group_leading(shape: tuple[int, ...], n_free: int, itemsize: int, target: int) -> tuple[int, ...]:
    """Block shape over ``shape``: split the first ``n_free`` axes so a block is <= ``target`` bytes."""
    block = list(shape)
    for axis in range(n_free):
        inner = max(1, math.prod(shape[axis + 1 :]) * itemsize)
        if inner * shape[axis] <= target:
            break
        block[axis] = max(1, min(shape[axis], target // inner))
        if inner <= target:
            break
    return tuple(block)


def _prepare_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validate names and dtypes; return name -> C-contiguous little-endian array, sorted by name."""
    for name in arrays:
        segments = name.split("/") if isinstance(name, str) else [None]
        if not all(isinstance(s, str) and _SEGMENT_RE.match(s) for s in segments) or "zarr.json" in segments:
            raise Lift3DError(
                f"array name {name!r}: use '/'-separated segments of [A-Za-z0-9_.-], e.g. 'gaussians/means'"
            )
    out: dict[str, np.ndarray] = {}
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        if array.dtype.kind not in _ARRAY_KINDS:
            raise Lift3DError(f"array {name!r} has dtype {array.dtype}; store only bool/int/uint/float/complex arrays")
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))  # Zarr returns native (little) order
        out[name] = np.require(array, requirements="C")
    for name in out:
        clash = [other for other in out if other.startswith(name + "/")]
        if clash:
            raise Lift3DError(f"array name {name!r} is also a group holding {clash[0]!r}; rename one")
    return out


# ------------------------------------------------------------- info records


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
    """A verification failure found by :meth:`ArtifactStore.verify`: which artifact, which file, what failed."""

    stage: str
    key: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.stage}/{self.key} ({self.path}): {self.reason}"


class Artifact:
    """A verified, read-only artifact.

    ``arrays`` loads every array (dict name -> np.ndarray); ``array(name)`` loads
    one; both check dtype, shape and SHA-256 against the manifest when the
    artifact was read with ``verify=True``. ``zarr_array(name)`` is lazy (slices
    decode only the chunks they touch; chunk CRC32C still checked). Close it
    (or use ``with``) to release the zip file.
    """

    def __init__(self, stage: str, key: str, manifest: dict, store: Any, cleanup: Any, verify: bool):
        self.stage, self.key, self.manifest = stage, key, manifest
        self._closer = weakref.finalize(self, _close_quietly, store, cleanup)
        self._verify = verify
        self._loaded: dict[str, np.ndarray] = {}
        try:
            self._group = self._guard("Zarr group", lambda: zarr.open_group(store, mode="r"))
            self.attrs: dict[str, Any] = self._guard("group attributes", lambda: self._group.attrs.asdict())
        except CorruptArtifactError:
            self.close()
            raise

    @property
    def key_doc(self) -> dict[str, Any]:
        return self.manifest["key_doc"]

    @property
    def names(self) -> list[str]:
        return sorted(self.manifest["arrays"])

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return {name: self.array(name) for name in self.names}

    def zarr_array(self, name: str) -> Any:
        """Lazy ``zarr.Array`` for ``name``, e.g. ``zarr_array("frames")[clip, t]`` reads one frame.

        No digest check (only the chunks read are decoded); a corrupt chunk raises
        Zarr's own error (crc32c ValueError or zipfile.BadZipFile) at slicing time.
        """
        self._require(name)
        return self._guard(f"array {name!r}", lambda: self._group[name])

    def array(self, name: str) -> np.ndarray:
        """Load ``name`` fully as an np.ndarray, verified against the manifest.

        The array is cached on the artifact and returned as is: copy it before
        modifying it in place.
        """
        if name not in self._loaded:
            self._require(name)
            array = self._guard(f"array {name!r}", lambda: np.asarray(self._group[name][...]))
            if self._verify:
                self._check(name, array)
            self._loaded[name] = array
        return self._loaded[name]

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require(self, name: str) -> None:
        if name not in self.manifest["arrays"]:
            raise KeyError(f"{self.stage}/{self.key} has no array {name!r}; it has {self.names}")

    def _check(self, name: str, array: np.ndarray) -> None:
        meta = self.manifest["arrays"][name]
        got = {"dtype": array.dtype.str, "shape": list(array.shape), "sha256": _array_digest(array)}
        for field, value in got.items():
            if value != meta[field]:
                raise self._corrupt(f"array {name!r}: {field} {value} != manifest {meta[field]}")

    def _guard(self, what: str, load: Any) -> Any:
        try:
            return load()
        except Exception as exc:  # any decode/zip/zarr failure means the bytes are bad
            raise self._corrupt(f"cannot read {what}: {type(exc).__name__}: {exc}") from exc

    def _corrupt(self, reason: str) -> CorruptArtifactError:
        return CorruptArtifactError(self.stage, self.key, self.manifest["zip"]["path"], reason)


# ------------------------------------------------------------------- the store


class ArtifactStore:
    """Content-addressed store of immutable Zarr-zip artifacts (see module docstring).

    ``url``: a local path (default ``data/artifacts``), ``file://...``, or any
    fsspec URL (``memory://team``, ``s3://bucket/prefix``); ``storage_options``
    go to fsspec.
    """

    def __init__(self, url: str | os.PathLike = DEFAULT_URL, **storage_options: Any):
        self.url = os.fspath(url)
        self.fs, root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.url!r})"

    # ---------------------------------------------------------------- paths

    def paths(self, stage: str, key: str) -> tuple[str, str]:
        """``(zip_path, manifest_path)`` of ``stage/key`` in the store's filesystem."""
        _check_stage(stage)
        _check_key(key)
        base = f"{self.root}/{stage}/{key[:2]}/{key}"
        return base + ZIP_SUFFIX, base + MANIFEST_SUFFIX

    def _display(self, path: str) -> str:
        return path if self.is_local else self.fs.unstrip_protocol(path)

    # ----------------------------------------------------------- read side

    def exists(self, stage: str, key: str) -> bool:
        """True iff ``stage/key`` is committed (its manifest exists). Does not verify."""
        return self.fs.exists(self.paths(stage, key)[1])

    def manifest(self, stage: str, key: str) -> dict[str, Any]:
        """The parsed, structurally checked manifest of ``stage/key``."""
        zip_path, manifest_path = self.paths(stage, key)
        try:
            raw = self.fs.cat_file(manifest_path)
        except FileNotFoundError:
            raise ArtifactNotFoundError(f"no artifact {stage}/{key} in {self.url} (no {manifest_path})") from None
        try:
            manifest = json.loads(raw)
            problem = _manifest_problem(manifest, stage, key)
        except (ValueError, TypeError, AttributeError, KeyError, Lift3DError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            raise CorruptArtifactError(stage, key, self._display(manifest_path), f"bad manifest: {problem}")
        manifest["zip"]["path"] = self._display(zip_path)
        return manifest

    def info(self, stage: str, key: str) -> ArtifactInfo:
        """:class:`ArtifactInfo` of a committed artifact (from its manifest)."""
        return self._info(self.manifest(stage, key))

    def read(self, stage: str, key: str, verify: bool = True) -> Artifact:
        """Open committed ``stage/key``.

        ``verify=True`` checks the zip's size and SHA-256 against the manifest now,
        and each array's dtype/shape/SHA-256 when it is loaded. Raises
        ArtifactNotFoundError if not committed, CorruptArtifactError on any
        mismatch or unreadable file.
        """
        manifest = self.manifest(stage, key)
        zip_path = self.paths(stage, key)[0]
        local_zip, cleanup = self._local_copy(stage, key, zip_path)
        try:
            if verify:
                self._check_zip(stage, key, local_zip, manifest)
            store = zarr.storage.ZipStore(local_zip, mode="r")
        except CorruptArtifactError:
            cleanup()
            raise
        except Exception as exc:
            cleanup()
            reason = f"cannot open zip: {type(exc).__name__}: {exc}"
            raise CorruptArtifactError(stage, key, self._display(zip_path), reason) from exc
        return Artifact(stage, key, manifest, store, cleanup, verify)

    def _local_copy(self, stage: str, key: str, zip_path: str) -> tuple[str, Any]:
        """A local file path for the zip and a cleanup callable (downloads remote zips to a temp file)."""
        if self.is_local:
            return zip_path, lambda: None
        fd, tmp = tempfile.mkstemp(prefix=f"lift3d-{stage}-{key[:12]}-", suffix=ZIP_SUFFIX)
        os.close(fd)
        try:
            self.fs.get_file(zip_path, tmp)
        except Exception as exc:
            os.unlink(tmp)
            reason = f"cannot download zip: {type(exc).__name__}: {exc}"
            raise CorruptArtifactError(stage, key, self._display(zip_path), reason) from exc
        return tmp, lambda: _unlink_quietly(tmp)

    def _check_zip(self, stage: str, key: str, local_zip: str, manifest: dict) -> None:
        expected = manifest["zip"]
        if not os.path.exists(local_zip):
            raise CorruptArtifactError(stage, key, expected["path"], "zip file is missing")
        size = os.path.getsize(local_zip)
        if size != expected["size_bytes"]:
            reason = f"zip is {size} bytes, manifest says {expected['size_bytes']} (truncated?)"
            raise CorruptArtifactError(stage, key, expected["path"], reason)
        digest = file_digest(local_zip)
        if digest != expected["sha256"]:
            raise CorruptArtifactError(stage, key, expected["path"], f"zip {digest} != manifest {expected['sha256']}")

    # ---------------------------------------------------------- write side

    def write(
        self,
        stage: str,
        key: str,
        key_doc: Mapping[str, Any],
        arrays: Mapping[str, np.ndarray],
        attrs: Mapping[str, Any] | None = None,
        code_version: str = "",
    ) -> ArtifactInfo:
        """Commit ``arrays`` + ``attrs`` as ``stage/key``; a no-op if it already exists.

        ``key`` must equal ``key_from_doc(key_doc)`` (use :func:`artifact_key`).
        ``arrays``: name (``"frames"``, ``"gaussians/means"``) -> numeric array of
        any shape; stored sharded, zstd-compressed, crc32c-checksummed, and read
        back with identical dtype and bytes (big-endian input is stored
        little-endian). ``attrs``: JSON-able dict (numpy scalars allowed) stored as
        the group's attributes. ``code_version`` is recorded in the manifest.
        """
        doc = self._check_key_doc(stage, key, key_doc)
        prepared = _prepare_arrays(arrays)
        group_attrs = json.loads(json.dumps(_normalise(dict(attrs or {}), "attrs", allow_nan=True), sort_keys=True))
        with self.lock(stage, key):
            if self.exists(stage, key):
                return self.info(stage, key)
            if self.is_local:
                return self._write_local(stage, key, doc, prepared, group_attrs, code_version)
            return self._write_remote(stage, key, doc, prepared, group_attrs, code_version)

    def _check_key_doc(self, stage: str, key: str, key_doc: Mapping[str, Any]) -> dict[str, Any]:
        self.paths(stage, key)
        doc = json.loads(canonical_json(key_doc))
        if doc.get("stage") != stage:
            raise Lift3DError(f"key_doc is for stage {doc.get('stage')!r}, not {stage!r}")
        if key_from_doc(doc) != key:
            raise Lift3DError(
                f"key {key} is not the hash of key_doc ({key_from_doc(doc)}); build both with artifact_key()"
            )
        return doc

    def _write_local(
        self, stage: str, key: str, doc: dict, arrays: dict, attrs: dict, code_version: str
    ) -> ArtifactInfo:
        zip_path, manifest_path = self.paths(stage, key)
        directory = os.path.dirname(zip_path)
        os.makedirs(directory, exist_ok=True)
        tmp_zip = f"{directory}/{TMP_PREFIX}{key}-{uuid.uuid4().hex[:8]}{ZIP_SUFFIX}"
        try:
            array_meta = _build_zip(tmp_zip, arrays, attrs)
            manifest = self._new_manifest(stage, key, doc, code_version, tmp_zip, array_meta)
            os.replace(tmp_zip, zip_path)
            _atomic_write(manifest_path, _manifest_bytes(manifest), tmp_stem=f"{TMP_PREFIX}{key}")
            _fsync_dir(directory)
        finally:
            _unlink_quietly(tmp_zip)
        return self.info(stage, key)

    def _write_remote(
        self, stage: str, key: str, doc: dict, arrays: dict, attrs: dict, code_version: str
    ) -> ArtifactInfo:
        zip_path, manifest_path = self.paths(stage, key)
        with tempfile.TemporaryDirectory(prefix="lift3d-upload-") as tmp_dir:
            tmp_zip = os.path.join(tmp_dir, key + ZIP_SUFFIX)
            array_meta = _build_zip(tmp_zip, arrays, attrs)
            manifest = self._new_manifest(stage, key, doc, code_version, tmp_zip, array_meta)
            if self.exists(stage, key):  # another writer committed while we computed
                return self.info(stage, key)
            self.fs.makedirs(os.path.dirname(zip_path), exist_ok=True)
            self.fs.put_file(tmp_zip, zip_path)
            self.fs.pipe_file(manifest_path, _manifest_bytes(manifest))
        return self.info(stage, key)

    def _new_manifest(self, stage: str, key: str, doc: dict, code_version: str, zip_file: str, arrays: dict) -> dict:
        size = os.path.getsize(zip_file)
        return {
            "format": MANIFEST_FORMAT,
            "stage": stage,
            "key": key,
            "key_doc": doc,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "code_version": str(code_version),
            "writer": {"zarr": zarr.__version__, "numpy": np.__version__},
            "zip": {"file": key + ZIP_SUFFIX, "size_bytes": size, "sha256": file_digest(zip_file)},
            "arrays": arrays,
            "size_bytes": size,
            "raw_bytes": sum(meta["nbytes"] for meta in arrays.values()),
        }

    def _info(self, manifest: dict) -> ArtifactInfo:
        zip_record = manifest["zip"]
        return ArtifactInfo(
            manifest["stage"], manifest["key"], zip_record["size_bytes"], manifest["created"], zip_record["path"]
        )

    # ------------------------------------------------------------- locking

    @contextlib.contextmanager
    def lock(self, stage: str, key: str, timeout: float | None = None) -> Iterator[None]:
        """Hold the per-key lock of ``stage/key`` (local stores; a no-op on remote ones).

        Exclusive across processes and threads, reentrant within a thread, released
        by the OS if the holder dies. ``timeout`` seconds (None = wait forever)
        then LockTimeoutError. Remote stores: no lock, see the module docstring.
        """
        self.paths(stage, key)
        if not self.is_local:
            yield
            return
        lock_path = f"{self.root}/{LOCK_DIR}/{stage}/{key}.lock"
        os.makedirs(os.path.dirname(lock_path), exist_ok=True)
        file_lock = filelock.FileLock(lock_path, is_singleton=True)
        try:
            file_lock.acquire(timeout=-1 if timeout is None else timeout)
        except filelock.Timeout:
            raise LockTimeoutError(
                f"{stage}/{key} is locked by another run ({lock_path}) for more than {timeout}s; "
                "wait for it, or if no run is active, run `lift3d cache gc`"
            ) from None
        try:
            yield
        finally:
            file_lock.release()

    # ------------------------------------------------------- maintenance

    def delete(self, stage: str, key: str) -> bool:
        """Remove ``stage/key`` (manifest first, so it stops existing atomically). True if anything was removed."""
        zip_path, manifest_path = self.paths(stage, key)
        with self.lock(stage, key):
            removed = [self._rm(path) for path in (manifest_path, zip_path)]
        return any(removed)

    def quarantine(self, stage: str, key: str) -> list[str]:
        """Move ``stage/key`` to ``<root>/.corrupt/<stage>/`` (manifest first); return the new paths.

        Afterwards the key does not exist, so the stage is recomputed; the bad files
        stay for inspection until ``gc(include_quarantined=True)``.
        """
        zip_path, manifest_path = self.paths(stage, key)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target_dir = f"{self.root}/{CORRUPT_DIR}/{stage}"
        moved = []
        with self.lock(stage, key):
            for path, suffix in ((manifest_path, MANIFEST_SUFFIX), (zip_path, ZIP_SUFFIX)):
                if self.fs.exists(path):
                    target = f"{target_dir}/{key}.{stamp}{suffix}"
                    self.fs.makedirs(target_dir, exist_ok=True)
                    self.fs.mv(path, target)
                    moved.append(self._display(target))
        return moved

    def ls(self, stage: str | None = None) -> list[ArtifactInfo]:
        """Committed artifacts (all stages, or one), sorted by stage then key.

        An artifact whose manifest is unreadable is listed with ``created=None``
        (``verify`` says what is wrong with it).
        """
        infos = []
        for st, key in self._committed(stage):
            try:
                infos.append(self.info(st, key))
            except CorruptArtifactError:
                zip_path = self.paths(st, key)[0]
                size = self.fs.size(zip_path) if self.fs.exists(zip_path) else 0
                infos.append(ArtifactInfo(st, key, size, None, self._display(zip_path)))
        return infos

    def verify(self, stage: str | None = None, quarantine: bool = False) -> list[Problem]:
        """Fully check every committed artifact (zip digest, every array's digest and chunk CRCs).

        Returns the problems found (empty list == clean); with ``quarantine=True``
        each corrupt artifact is also moved aside so it will be recomputed.
        """
        problems = []
        for st, key in self._committed(stage):
            found = self.verify_artifact(st, key)
            problems += found
            if found and quarantine:
                self.quarantine(st, key)
        return problems

    def verify_artifact(self, stage: str, key: str, deep: bool = True) -> list[Problem]:
        """Check one committed artifact; ``[]`` when intact, else one :class:`Problem`.

        ``deep=False`` checks the manifest and the zip's size and SHA-256 only (any
        flipped or missing byte, no decoding); ``deep=True`` also decodes every
        array (chunk CRC32C) and checks its dtype, shape and SHA-256. A missing
        artifact raises ArtifactNotFoundError.
        """
        try:
            with self.read(stage, key, verify=True) as artifact:
                for name in artifact.names if deep else ():
                    artifact.array(name)
        except CorruptArtifactError as exc:
            return [Problem(stage, key, exc.path, exc.reason)]
        return []

    def gc(
        self, dry_run: bool = False, grace_s: float = DEFAULT_GC_GRACE_S, include_quarantined: bool = False
    ) -> list[str]:
        """Remove garbage older than ``grace_s`` seconds; return the paths removed (or that would be).

        Garbage: ``.tmp-*`` files from crashed writes, zips without a manifest
        (crash between the two renames), unheld lock files, and with
        ``include_quarantined`` everything under ``.corrupt/``. Committed
        artifacts are never touched, and on local stores a zip whose key is
        locked by a live writer is skipped.
        """
        now = time.time()
        candidates = []
        for path, info in sorted(self._all_files().items()):
            kind, stage, key = self._classify(path)
            wanted = kind is not None and (kind != "quarantined" or include_quarantined)
            if wanted and now - _mtime(info, now) >= grace_s:
                candidates.append((kind == "lock", path, kind, stage, key))
        removed = []
        # lock files last: removing a tmp/orphan takes (and may recreate) its key's lock file
        for _, path, kind, stage, key in sorted(candidates):
            if dry_run or self._remove_garbage(path, kind, stage, key):
                removed.append(self._display(path))
        return removed

    # ------------------------------------------------------------ helpers

    def _committed(self, stage: str | None) -> list[tuple[str, str]]:
        """``(stage, key)`` of every manifest under the root (or one stage), sorted."""
        if stage is not None:
            _check_stage(stage)
        pattern = f"{self.root}/{stage or '*'}/??/*{MANIFEST_SUFFIX}"
        found = []
        for path in self.fs.glob(pattern):
            parts = path.rstrip("/").split("/")
            st, prefix, key = parts[-3], parts[-2], parts[-1][: -len(MANIFEST_SUFFIX)]
            if _STAGE_RE.match(st) and _KEY_RE.match(key) and key[:2] == prefix:
                found.append((st, key))
        return sorted(found)

    def _all_files(self) -> dict[str, dict]:
        top = self.root or "/"
        if not self.fs.exists(top):
            return {}
        return self.fs.find(top, detail=True)

    def _classify(self, path: str) -> tuple[str | None, str | None, str | None]:
        """``(kind, stage, key)`` of a garbage file, kind in tmp/orphan/lock/quarantined, or Nones."""
        parts = path[len(self.root) :].strip("/").split("/")
        name = parts[-1]
        if parts[0] == CORRUPT_DIR:
            return "quarantined", None, None
        if parts[0] == LOCK_DIR:
            return ("lock", None, None) if name.endswith(".lock") else (None, None, None)
        if name.startswith(TMP_PREFIX):
            stem = name[len(TMP_PREFIX) : len(TMP_PREFIX) + 64]
            layout_ok = len(parts) == 3 and _STAGE_RE.match(parts[0]) and _KEY_RE.match(stem)
            return ("tmp", parts[0], stem) if layout_ok else ("tmp", None, None)
        key = name[: -len(ZIP_SUFFIX)] if name.endswith(ZIP_SUFFIX) else ""
        if len(parts) == 3 and _STAGE_RE.match(parts[0]) and _KEY_RE.match(key) and parts[1] == key[:2]:
            manifest_path = path[: -len(ZIP_SUFFIX)] + MANIFEST_SUFFIX
            return ("orphan", parts[0], key) if not self.fs.exists(manifest_path) else (None, None, None)
        return None, None, None

    def _remove_garbage(self, path: str, kind: str, stage: str | None, key: str | None) -> bool:
        """Remove one garbage file unless a live local writer holds its key; True if removed."""
        if not self.is_local:
            return self._rm(path)
        if kind == "lock":
            return _remove_unheld_lock(path)
        if stage is None:
            return self._rm(path)
        try:
            with self.lock(stage, key, timeout=0):
                if kind == "orphan" and self.exists(stage, key):
                    return False  # committed while we looked
                return self._rm(path)
        except LockTimeoutError:
            return False

    def _rm(self, path: str) -> bool:
        try:
            self.fs.rm_file(path)
            return True
        except FileNotFoundError:
            return False


# ------------------------------------------------------------ file helpers


def _build_zip(path: str, arrays: dict[str, np.ndarray], attrs: dict) -> dict[str, dict]:
    """Write a Zarr v3 group with ``arrays`` and ``attrs`` as a deterministic zip at ``path``.

    The group is built in a MemoryStore and then packed (sorted entries, fixed
    timestamps, STORED since chunks are already zstd-compressed); the file is
    fsynced. Returns the manifest's per-array records.
    """
    entries: dict[str, Any] = {}
    group = zarr.create_group(zarr.storage.MemoryStore(store_dict=entries), attributes=attrs)
    meta = {}
    for name, array in arrays.items():
        chunks, shards = chunk_layout(array.shape, array.dtype.itemsize)
        z = group.create_array(
            name=name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=chunks,
            shards=shards,
            # crc32c after zstd: corruption is caught before decompression is attempted
            compressors=[ZstdCodec(level=3), Crc32cCodec()],
        )
        z[...] = array
        meta[name] = {
            "dtype": array.dtype.str,
            "shape": list(array.shape),
            "chunks": list(chunks),
            "shards": None if shards is None else list(shards),
            "nbytes": int(array.nbytes),
            "sha256": _array_digest(array),
        }
    with open(path, "wb") as f:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in sorted(entries):
                entry = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
                entry.external_attr = 0o644 << 16
                zf.writestr(entry, entries[name].to_bytes())
        f.flush()
        os.fsync(f.fileno())
    return meta


def _manifest_problem(manifest: Any, stage: str, key: str) -> str | None:
    """What is structurally wrong with a parsed manifest, or None."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return f"not a {MANIFEST_FORMAT} manifest"
    if manifest.get("stage") != stage or manifest.get("key") != key:
        return f"names {manifest.get('stage')}/{manifest.get('key')}, expected {stage}/{key}"
    if key_from_doc(manifest["key_doc"]) != key:
        return "key_doc does not hash to the key"
    zip_record, arrays = manifest.get("zip"), manifest.get("arrays")
    if not isinstance(zip_record, dict) or not {"size_bytes", "sha256"} <= zip_record.keys():
        return "missing zip size/sha256"
    if not isinstance(arrays, dict) or not all({"dtype", "shape", "sha256"} <= m.keys() for m in arrays.values()):
        return "missing per-array dtype/shape/sha256"
    return None


def _manifest_bytes(manifest: dict) -> bytes:
    record = dict(manifest)
    record["zip"] = {k: v for k, v in manifest["zip"].items() if k != "path"}
    return (json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def _atomic_write(path: str, data: bytes, tmp_stem: str) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file beside it and os.replace."""
    directory = os.path.dirname(path)
    tmp = f"{directory}/{tmp_stem}-{uuid.uuid4().hex[:8]}{os.path.splitext(path)[1]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        _unlink_quietly(tmp)


def _fsync_dir(directory: str) -> None:
    """Persist renames in ``directory`` (POSIX); best effort elsewhere."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_unheld_lock(path: str) -> bool:
    """Delete a lock file only if nobody holds it right now."""
    probe = filelock.FileLock(path)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return False
    try:
        _unlink_quietly(path)
    finally:
        probe.release()
    return True


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _close_quietly(store: Any, cleanup: Any) -> None:
    with contextlib.suppress(Exception):
        store.close()
    cleanup()


def _mtime(info: Mapping[str, Any], default: float) -> float:
    """Modification time (POSIX seconds) from an fsspec info dict, across backends."""
    for field in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(field)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return dt.datetime.fromisoformat(value).timestamp()
    return default
