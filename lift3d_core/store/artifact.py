"""Reading an artifact: a read-only Zarr store over ranged reads of the zip, and the verified :class:`Artifact`.

The zip's entries are STORED (chunks are already zstd-compressed), so every Zarr key is a byte range of the zip:
its central directory is read once (the zip's tail), and each chunk Zarr decodes is one ranged read, a pread
locally and a ranged GET on S3. A stage that loads two arrays of a big artifact fetches those two arrays' bytes.
"""

from __future__ import annotations

import asyncio
import io
import struct
import weakref
import zipfile
from collections.abc import AsyncIterator, Iterable
from typing import Any, Self

import numpy as np
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from lift3d_core.store.backend import RangeReader
from lift3d_core.store.errors import CorruptArtifactError
from lift3d_core.store.keys import array_digest

__all__ = ["Artifact", "ZipRangeStore"]

# The end-of-central-directory record is the zip's last 22 bytes plus a comment of up to 64 KiB; our zips have
# no comment, and one read of this tail also holds the central directory of an artifact of a few hundred entries.
_TAIL_BYTES = 64 << 10
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
_LOCAL_SIGNATURE = b"PK\x03\x04"


class _TailFile(io.RawIOBase):
    """A seekable file over a :class:`RangeReader` that serves reads inside the zip's cached tail from memory."""

    def __init__(self, reader: RangeReader, size: int):
        self._reader, self._size, self._pos = reader, size, 0
        self._tail_start = max(0, size - _TAIL_BYTES)
        self._tail = reader.read(self._tail_start, size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        end = min(self._size, self._pos + len(buffer))
        if end <= self._pos:
            return 0
        if self._pos >= self._tail_start:
            data = self._tail[self._pos - self._tail_start : end - self._tail_start]
        else:
            data = self._reader.read(self._pos, end)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class ZipRangeStore(Store):
    """Read-only Zarr v3 store over a STORED zip of ``size`` bytes that ``reader`` reads by byte ranges.

    Raises ``zipfile.BadZipFile`` (or OSError) at construction when the zip's central directory cannot be read.
    """

    supports_writes = False
    supports_deletes = False
    supports_listing = True
    supports_partial_writes = False

    def __init__(self, reader: RangeReader, size: int):
        super().__init__(read_only=True)
        self._reader = reader
        # the descriptor lives as long as the store: a lazy zarr array read after its Artifact is gone still holds it
        self._release = weakref.finalize(self, reader.close)
        with zipfile.ZipFile(_TailFile(reader, size)) as zf:
            self._entries = {info.filename: info for info in zf.infolist()}
        for info in self._entries.values():
            if info.compress_type != zipfile.ZIP_STORED:
                raise zipfile.BadZipFile(f"entry {info.filename!r} is compressed; lift3d zips are STORED")
        self._data_start: dict[str, int] = {}
        self._is_open = True

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = object.__hash__

    def close(self) -> None:
        self._release()
        super().close()

    def _start(self, name: str) -> int:
        """Absolute offset of ``name``'s data: after its local header, whose extra field may differ from the
        central directory's."""
        if name not in self._data_start:
            info = self._entries[name]
            signature, name_len, extra_len = _LOCAL_HEADER.unpack(
                self._reader.read(info.header_offset, info.header_offset + _LOCAL_HEADER.size)
            )
            if signature != _LOCAL_SIGNATURE:
                raise zipfile.BadZipFile(f"bad local header for entry {name!r}")
            self._data_start[name] = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        return self._data_start[name]

    def _read(self, name: str, byte_range: ByteRequest | None) -> bytes | None:
        info = self._entries.get(name)
        if info is None:
            return None
        size = info.file_size
        if byte_range is None:
            lo, hi = 0, size
        elif isinstance(byte_range, RangeByteRequest):
            lo, hi = byte_range.start, byte_range.end
        elif isinstance(byte_range, OffsetByteRequest):
            lo, hi = byte_range.offset, size
        elif isinstance(byte_range, SuffixByteRequest):
            lo, hi = size - byte_range.suffix, size
        else:
            raise TypeError(f"unexpected byte range {byte_range!r}")
        lo, hi = max(0, min(lo, size)), max(0, min(hi, size))
        start = self._start(name)
        data = self._reader.read(start + lo, start + hi) if hi > lo else b""
        if len(data) != hi - lo:
            raise zipfile.BadZipFile(f"entry {name!r}: read {len(data)} bytes of {hi - lo} (truncated zip?)")
        return data

    async def get(self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None) -> Buffer | None:
        data = await asyncio.to_thread(self._read, key, byte_range)  # ranged GETs of one read run in parallel
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(key, prototype, rng) for key, rng in key_ranges)))

    async def exists(self, key: str) -> bool:
        return key in self._entries

    async def set(self, key: str, value: Buffer) -> None:
        raise ValueError("a lift3d artifact is immutable")

    async def delete(self, key: str) -> None:
        raise ValueError("a lift3d artifact is immutable")

    async def list(self) -> AsyncIterator[str]:
        for key in self._entries:
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key in self._entries:
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        base = f"{prefix}/" if prefix else ""
        seen = set()
        for key in self._entries:
            if key.startswith(base) and key != base:
                child = key[len(base) :].split("/")[0]
                if child not in seen:
                    seen.add(child)
                    yield child


class Artifact:
    """A verified, read-only artifact.

    ``arrays`` loads every array (dict name -> np.ndarray); ``array(name)`` loads
    one; both check dtype, shape and SHA-256 against the manifest when the
    artifact was read with ``verify=True``. ``zarr_array(name)`` is lazy (slices
    decode only the chunks they touch; chunk CRC32C still checked). Close it
    (or use ``with``) to release the zip file.
    """

    def __init__(self, stage: str, key: str, manifest: dict, store: ZipRangeStore, verify: bool):
        self.stage, self.key, self.manifest = stage, key, manifest
        self._store = store  # closed by close() / with; otherwise when the last of it and its zarr arrays goes
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
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require(self, name: str) -> None:
        if name not in self.manifest["arrays"]:
            raise KeyError(f"{self.stage}/{self.key} has no array {name!r}; it has {self.names}")

    def _check(self, name: str, array: np.ndarray) -> None:
        meta = self.manifest["arrays"][name]
        got = {"dtype": array.dtype.str, "shape": list(array.shape), "sha256": array_digest(array)}
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
