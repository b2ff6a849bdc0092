"""The artifact format: one Zarr v3 group packed as a deterministic zip, plus a JSON manifest.

Layout under the store root::

    <root>/<stage>/<key[:2]>/<key>.<zip_sha[:16]>.zarr.zip   one Zarr v3 group (zip, entries STORED); content-named
    <root>/<stage>/<key[:2]>/<key>.json                      manifest: names the zip; written LAST = the commit point

The zip is named by its own SHA-256, so two writers of one key that made different bytes upload two different
objects and whichever manifest is committed names its own zip: a manifest and a zip can never disagree. Stores
written before content naming hold ``<key>.zarr.zip``; their manifests name it and it still reads.

Integrity: the manifest records the zip's size and SHA-256 and each array's dtype, shape and SHA-256 of its raw
C-order bytes; Zarr's ``crc32c`` codec guards every chunk and shard index, so partial reads are checked too.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from lift3d_core.errors import Lift3DError
from lift3d_core.store.keys import array_digest, key_from_doc

__all__ = ["chunk_layout"]

MANIFEST_FORMAT = "lift3d-artifact/1"
ZIP_SUFFIX = ".zarr.zip"
MANIFEST_SUFFIX = ".json"

# ~1 MiB uncompressed per chunk: one 576x1024 RGB frame (1.7 MB) is one chunk,
# small frames are grouped, and a lazy read of one frame touches one chunk.
_CHUNK_TARGET_BYTES = 1 << 20
# One shard per array up to 64 MiB, bounded because Zarr assembles a whole shard in memory on write.
_SHARD_MAX_BYTES = 64 << 20
# Zip's DOS-time epoch: fixed entry timestamps make the zip bytes deterministic.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# 16 hex digits of the zip's SHA-256 in its name: 64 bits tell apart the few writers of one key.
_ZIP_NAME_DIGITS = 16

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ARRAY_KINDS = "biufc"  # bool, int, uint, float, complex: fixed-size numeric only


def zip_name(key: str, zip_sha256: str) -> str:
    """Content-named file of ``key``'s zip: ``<key>.<sha[:16]>.zarr.zip`` (``zip_sha256`` as ``"sha256:<hex>"``)."""
    return f"{key}.{zip_sha256.split(':')[-1][:_ZIP_NAME_DIGITS]}{ZIP_SUFFIX}"


def zip_name_key(name: str) -> str | None:
    """The key a zip file name belongs to (content-named or legacy ``<key>.zarr.zip``), or None."""
    match = re.fullmatch(rf"([0-9a-f]{{64}})(\.[0-9a-f]{{{_ZIP_NAME_DIGITS}}})?{re.escape(ZIP_SUFFIX)}", name)
    return match.group(1) if match else None


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


def prepare_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
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


def build_zip(path: str, arrays: dict[str, np.ndarray], attrs: dict) -> dict[str, dict]:
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
            "sha256": array_digest(array),
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


def manifest_problem(manifest: Any, stage: str, key: str) -> str | None:
    """What is structurally wrong with a parsed manifest, or None."""
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        return f"not a {MANIFEST_FORMAT} manifest"
    if manifest.get("stage") != stage or manifest.get("key") != key:
        return f"names {manifest.get('stage')}/{manifest.get('key')}, expected {stage}/{key}"
    if key_from_doc(manifest["key_doc"]) != key:
        return "key_doc does not hash to the key"
    zip_record, arrays = manifest.get("zip"), manifest.get("arrays")
    if not isinstance(zip_record, dict) or not {"file", "size_bytes", "sha256"} <= zip_record.keys():
        return "missing zip file/size/sha256"
    if zip_name_key(str(zip_record["file"])) != key:
        return f"zip file {zip_record['file']!r} is not a zip of this key"
    if not isinstance(arrays, dict) or not all({"dtype", "shape", "sha256"} <= m.keys() for m in arrays.values()):
        return "missing per-array dtype/shape/sha256"
    return None


def manifest_bytes(manifest: dict) -> bytes:
    record = dict(manifest)
    record["zip"] = {k: v for k, v in manifest["zip"].items() if k != "path"}
    return (json.dumps(record, indent=1, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def new_manifest(stage: str, key: str, doc: dict, code_version: str, zip_sha256: str, size: int, arrays: dict) -> dict:
    """The manifest of a new artifact whose zip has ``size`` bytes and digest ``zip_sha256``."""
    return {
        "format": MANIFEST_FORMAT,
        "stage": stage,
        "key": key,
        "key_doc": doc,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "code_version": str(code_version),
        "writer": {"zarr": zarr.__version__, "numpy": np.__version__},
        "zip": {"file": zip_name(key, zip_sha256), "size_bytes": size, "sha256": zip_sha256},
        "arrays": arrays,
        "size_bytes": size,
        "raw_bytes": sum(meta["nbytes"] for meta in arrays.values()),
    }
