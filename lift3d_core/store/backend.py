"""Where a store's objects live: a local directory or an fsspec object store, behind one small interface.

The store needs few operations, and two of them carry its guarantees:

- **create-only publication** (:meth:`Files.create_file`, :meth:`Files.create_bytes`): the object appears whole
  or not at all, and only if nothing is at that path yet. Locally: a fsynced temp file beside the target, then
  ``os.link`` (which fails if the target exists). On S3: a PUT with ``If-None-Match: *`` (s3fs ``mode="create"``),
  which the server refuses with 412 when the object exists; a PUT is never visible half-written. Other fsspec
  filesystems get fsspec's own ``mode="create"`` (an existence check, then the write: not atomic).
- **ranged reads** (:meth:`Files.reader`): a lazy Zarr read fetches the bytes of the chunks it decodes, not the
  whole artifact.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

__all__ = ["Files", "LocalFiles", "ObjectFiles", "RangeReader", "open_files"]

TMP_PREFIX = ".tmp-"
# fsspec caches directory listings on object stores; a store must see another writer's commit at once
_NO_LISTINGS_CACHE = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


def open_files(url: str, **storage_options: Any) -> Files:
    """The :class:`Files` of a store URL: a local path, ``file://...``, or any fsspec URL (``s3://bucket/prefix``).

    S3 reads its endpoint and credentials from the usual environment (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, or a profile).
    """
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    if protocol in _NO_LISTINGS_CACHE:
        storage_options = {"use_listings_cache": False, **storage_options}
    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    cls = LocalFiles if isinstance(fs, LocalFileSystem) else ObjectFiles
    return cls(fs, root.rstrip("/"))


class Files:
    """Paths are the filesystem's own (no protocol); :meth:`display` gives the URL a user can paste."""

    is_local = False

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str):
        self.fs, self.root = fs, root

    def display(self, path: str) -> str:
        return self.fs.unstrip_protocol(path)

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def cat(self, path: str) -> bytes:
        """Whole object; FileNotFoundError if absent."""
        return self.fs.cat_file(path)

    def stat(self, path: str) -> tuple[int, str | None]:
        """``(size in bytes, the object store's ETag or None)``; FileNotFoundError if absent."""
        info = self.fs.info(path)
        tag = info.get("ETag") or info.get("etag")
        return int(info["size"]), (str(tag).strip('"') if tag else None)

    def reader(self, path: str) -> RangeReader:
        """Ranged reads of ``path`` (close it when done)."""
        return RangeReader(lambda start, end: self.fs.cat_file(path, start=start, end=end))

    def create_file(self, local_path: str, path: str) -> bool:
        """Publish the local file at ``path`` unless something is there; False (nothing changed) if it was."""
        raise NotImplementedError

    def create_bytes(self, path: str, data: bytes) -> bool:
        """Publish ``data`` at ``path`` unless something is there; False (nothing changed) if it was."""
        raise NotImplementedError

    def rm(self, path: str) -> bool:
        try:
            self.fs.rm_file(path)
            return True
        except FileNotFoundError:
            return False

    def find(self, top: str) -> dict[str, dict]:
        """Every file under ``top`` with its info dict (empty if ``top`` does not exist)."""
        if not self.fs.exists(top or "/"):
            return {}
        return self.fs.find(top or "/", detail=True)


class LocalFiles(Files):
    is_local = True

    def display(self, path: str) -> str:
        return path

    def reader(self, path: str) -> RangeReader:
        fd = os.open(path, os.O_RDONLY)  # one descriptor for the artifact's life; pread is thread-safe
        return RangeReader(lambda start, end: os.pread(fd, end - start, start), lambda: os.close(fd))

    def temp_path(self, path: str, stem: str) -> str:
        """A ``.tmp-`` name beside ``path`` (same directory, so publishing it is a link, not a copy)."""
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        return f"{directory}/{TMP_PREFIX}{stem}-{uuid.uuid4().hex[:8]}{os.path.splitext(path)[1]}"

    def create_file(self, local_path: str, path: str) -> bool:
        """``local_path`` must be fsynced and in the same directory (see :meth:`temp_path`); it is left in place."""
        try:
            os.link(local_path, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            # no hard links on this filesystem: check, then rename (callers hold the key's lock)
            if os.path.exists(path):
                return False
            os.replace(local_path, path)
        _fsync_dir(os.path.dirname(path))
        return True

    def create_bytes(self, path: str, data: bytes) -> bool:
        tmp = self.temp_path(path, os.path.basename(path).split(".")[0])
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return self.create_file(tmp, path)
        finally:
            unlink_quietly(tmp)


class ObjectFiles(Files):
    def create_file(self, local_path: str, path: str) -> bool:
        return self._create(path, lambda: self.fs.put_file(local_path, path, mode="create"))

    def create_bytes(self, path: str, data: bytes) -> bool:
        return self._create(path, lambda: self.fs.pipe_file(path, data, mode="create"))

    def _create(self, path: str, put: Any) -> bool:
        try:
            put()
        except FileExistsError:  # S3: 412 Precondition Failed on If-None-Match
            return False
        except OSError:
            # S3 answers 409 ConditionalRequestConflict while another conditional write of the path is in flight
            if self.fs.exists(path):
                return False
            raise
        return True


class RangeReader:
    """``read(start, end)`` -> bytes ``[start, end)`` of one object; ``close()`` releases it (idempotent). A read
    after ``close`` raises: a closed file descriptor's number may already name another open file."""

    def __init__(self, read: Any, close: Any = None):
        self._read, self._close, self.closed = read, close, False

    def read(self, start: int, end: int) -> bytes:
        if self.closed:
            raise ValueError("read of a closed artifact (keep the Artifact, or its zarr arrays, while reading)")
        return self._read(start, end)

    def close(self) -> None:
        self.closed = True
        close, self._close = self._close, None
        if close is not None:
            close()


def unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(directory: str) -> None:
    """Persist renames and links in ``directory`` (POSIX); best effort elsewhere."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
