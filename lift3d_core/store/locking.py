"""Per-key locks, so that two runs needing one key compute it once.

Locks only save work: correctness never depends on them, because publication is create-only (a second writer of a
key finds the manifest there and keeps the first artifact). Both kinds survive a crashed holder:

- **local stores**: an OS file lock (``filelock``, ``flock``) on ``<root>/.locks/<stage>/<key>.lock``; the kernel
  releases it when the holder dies, however it dies. Reentrant within a thread, exclusive across threads and
  processes.
- **object stores**: a lease object at the same path, created with a conditional put (``If-None-Match: *``) and
  holding its owner and expiry time. A thread renews it every ``ttl / 3`` seconds while the lock is held; a lease
  not renewed for ``ttl`` seconds (its holder crashed or lost the network) is stale, and a waiter deletes it and
  takes the key. Reentrant within a thread, exclusive across threads, processes and machines (up to clock skew
  between machines, which ``ttl`` must exceed).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import filelock

from lift3d_core.store.backend import Files, LocalFiles, unlink_quietly
from lift3d_core.store.errors import LockTimeoutError

__all__ = ["DEFAULT_LEASE_TTL_S", "key_lock", "lease_is_stale", "remove_unheld_lock"]

LOCK_DIR = ".locks"
LOCK_SUFFIX = ".lock"
# 60 s: several renewals (every 20 s) must fail before another machine takes a live run's key; a crashed run's
# key waits at most this long.
DEFAULT_LEASE_TTL_S = 60.0
_POLL_S = 0.2

# leases this process holds: path -> [owning thread id, depth, lease id, stop event]
_held: dict[str, list] = {}
_held_guard = threading.Lock()


def lock_path(files: Files, stage: str, key: str) -> str:
    return f"{files.root}/{LOCK_DIR}/{stage}/{key}{LOCK_SUFFIX}"


@contextlib.contextmanager
def key_lock(files: Files, stage: str, key: str, timeout: float | None, ttl: float) -> Iterator[None]:
    """Hold the lock of ``stage/key``; LockTimeoutError after ``timeout`` seconds (None: wait forever)."""
    path = lock_path(files, stage, key)
    if isinstance(files, LocalFiles):
        with _file_lock(path, stage, key, timeout):
            yield
    else:
        with _lease(files, path, stage, key, timeout, ttl):
            yield


@contextlib.contextmanager
def _file_lock(path: str, stage: str, key: str, timeout: float | None) -> Iterator[None]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    file_lock = filelock.FileLock(path, is_singleton=True)
    try:
        file_lock.acquire(timeout=-1 if timeout is None else timeout)
    except filelock.Timeout:
        raise _timeout(stage, key, path, timeout) from None
    try:
        yield
    finally:
        file_lock.release()


def _timeout(stage: str, key: str, path: str, timeout: float | None) -> LockTimeoutError:
    return LockTimeoutError(
        f"{stage}/{key} is locked by another run ({path}) for more than {timeout}s; "
        "wait for it, or if no run is active, run `lift3d cache gc`"
    )


@contextlib.contextmanager
def _lease(files: Files, path: str, stage: str, key: str, timeout: float | None, ttl: float) -> Iterator[None]:
    me = threading.get_ident()
    with _held_guard:
        mine = _held.get(path)
        if mine is not None and mine[0] == me:
            mine[1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _held_guard:
                _held[path][1] -= 1
        return
    lease_id = _acquire_lease(files, path, stage, key, timeout, ttl)
    stop = threading.Event()
    with _held_guard:
        _held[path] = [me, 1, lease_id, stop]
    renewer = threading.Thread(target=_renew, args=(files, path, lease_id, ttl, stop), daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        with _held_guard:
            _held.pop(path, None)
        with contextlib.suppress(FileNotFoundError, OSError, ValueError):
            if json.loads(files.cat(path)).get("id") == lease_id:  # never delete a lease another run took over
                files.rm(path)


def _lease_body(lease_id: str, ttl: float) -> bytes:
    return json.dumps({"id": lease_id, "host": socket.gethostname(), "pid": os.getpid(),
                       "expires": time.time() + ttl}).encode()


def _acquire_lease(files: Files, path: str, stage: str, key: str, timeout: float | None, ttl: float) -> str:
    lease_id = uuid.uuid4().hex
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _held_guard:
            held_here = path in _held  # another thread of this process: wait for it, never judge it stale
        if not held_here:
            if files.create_bytes(path, _lease_body(lease_id, ttl)):
                return lease_id
            if lease_is_stale(files, path):
                files.rm(path)  # its holder stopped renewing it: crashed
                continue
        if deadline is not None and time.monotonic() >= deadline:
            raise _timeout(stage, key, files.display(path), timeout)
        time.sleep(_POLL_S)


def _renew(files: Files, path: str, lease_id: str, ttl: float, stop: threading.Event) -> None:
    while not stop.wait(ttl / 3):
        with contextlib.suppress(OSError):
            files.fs.pipe_file(path, _lease_body(lease_id, ttl))


def lease_is_stale(files: Files, path: str) -> bool:
    """True if the lease at ``path`` expired (or is unreadable garbage); False if live or gone."""
    try:
        expires = float(json.loads(files.cat(path))["expires"])
    except FileNotFoundError:
        return False
    except (ValueError, KeyError, TypeError):
        return True
    return time.time() > expires


def remove_unheld_lock(files: Files, path: str) -> bool:
    """Delete a lock file nobody holds right now (local: no OS lock on it; remote: an expired lease)."""
    if not isinstance(files, LocalFiles):
        return lease_is_stale(files, path) and files.rm(path)
    probe = filelock.FileLock(path)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return False
    try:
        unlink_quietly(path)
    finally:
        probe.release()
    return True
