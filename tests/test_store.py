"""The artifact store: keys, exact round trips, corruption, crashes, concurrency, fsspec."""

import errno
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path

import fsspec
import numpy as np
import pytest

from lift3d_core.errors import Lift3DError
from lift3d_core.store import (
    ArtifactNotFoundError,
    ArtifactStore,
    CorruptArtifactError,
    LockTimeoutError,
    artifact_key,
    canonical_json,
    chunk_layout,
    file_digest,
    key_from_doc,
)

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"iters": 3000, "lr": {"means": 1.6e-4, "sh0": 0.0025}, "sh_degree": 3, "bg": [0.0, 0.0, 0.0]}
INPUTS = {"frames": "a" * 64, "image": "sha256:" + "b" * 64}
MODELS = {"svd": "sha256:" + "c" * 64}


def _key(stage="train", version=1, params=PARAMS, inputs=INPUTS, models=MODELS):
    return artifact_key(stage, version, params, inputs, models)


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "frames": rng.integers(0, 256, (2, 3, 16, 20, 3), dtype=np.uint8),  # [clip, t, H, W, 3]
        "c2w": rng.standard_normal((6, 4, 4)),  # float64 [N, 4, 4]
        "points": rng.standard_normal((50, 3)).astype(np.float32),
        "gaussians/means": rng.standard_normal((40, 3)).astype(np.float32),
        "gaussians/opacity_logits": rng.standard_normal(40).astype(np.float32),
        "valid": rng.random((5, 7)) > 0.5,
        "frame_index": np.arange(7, dtype=np.int64),
        "scale": np.array(0.1234567890123),
        "empty": np.zeros((0, 3), np.float32),
    }


def _write(store, stage="train", seed=0, **key_overrides):
    key, doc = _key(stage=stage, **key_overrides)
    info = store.write(stage, key, doc, _arrays(seed), attrs={"loss": [0.5, 0.25], "n": np.int64(3)}, code_version="v1")
    return key, info


def _data_offset(zip_path, entry):
    """Byte offset of ``entry``'s data in the zip (local header is 30 bytes + name + extra)."""
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo(entry)
    with open(zip_path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), "<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len), info.compress_size


def _flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _files(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------- keys


def test_canonical_json_is_compact_sorted_and_rejects_nan():
    assert canonical_json({"b": [1, 2.5, None, True], "a": (np.float32(0.5), np.int64(7))}) == (
        b'{"a":[0.5,7],"b":[1,2.5,null,true]}'
    )
    assert canonical_json({"x": 0.1}) == b'{"x":0.1}'  # shortest round-trip repr
    assert canonical_json(1) != canonical_json(1.0)
    for bad in (float("nan"), float("inf"), {1: "int key"}, {"p": Path("/tmp")}, {"o": object()}):
        with pytest.raises(Lift3DError):
            canonical_json(bad)


def test_key_changes_iff_stage_version_params_inputs_models_change():
    key, doc = _key()
    assert len(key) == 64 and key == key_from_doc(doc)
    assert key == hashlib.sha256(canonical_json(doc)).hexdigest()
    reordered = {k: PARAMS[k] for k in reversed(list(PARAMS))}
    reordered["lr"] = {"sh0": 0.0025, "means": 1.6e-4}
    assert _key(params=reordered)[0] == key
    assert _key(inputs=dict(reversed(list(INPUTS.items()))))[0] == key
    assert _key(params={**PARAMS, "bg": (0.0, 0.0, 0.0)})[0] == key  # tuple == list
    changed = [
        _key(version=2),
        _key(stage="calibrate"),
        _key(params={**PARAMS, "iters": 3001}),
        _key(params={**PARAMS, "lr": {"means": 1.6e-4, "sh0": 0.0026}}),
        _key(inputs={**INPUTS, "frames": "d" * 64}),
        _key(models={"svd": "sha256:" + "e" * 64}),
        _key(models={}),
    ]
    assert len({k for k, _ in changed} | {key}) == len(changed) + 1


def test_file_digest_streams_sha256(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # spans several read blocks
    (tmp_path / "f.bin").write_bytes(data)
    assert file_digest(tmp_path / "f.bin") == "sha256:" + hashlib.sha256(data).hexdigest()


def test_chunk_layout_keeps_frames_whole_and_shards_whole_arrays():
    assert chunk_layout((16, 16, 576, 1024, 3), 1) == ((1, 1, 576, 1024, 3), (2, 16, 576, 1024, 3))
    assert chunk_layout((2, 3, 16, 20, 3), 1) == ((2, 3, 16, 20, 3), (2, 3, 16, 20, 3))
    assert chunk_layout((241, 4, 4), 8) == ((241, 4, 4), (241, 4, 4))
    chunks, shards = chunk_layout((1_000_000, 3), 4)
    assert chunks[1] == 3 and chunks[0] * 12 <= 1 << 20 and shards == (1_048_576 // 12 * 12, 3)
    assert chunk_layout((), 8) == ((), None)


# ------------------------------------------------------------------ round trips


def test_round_trip_preserves_bytes_dtypes_attrs_and_manifest(tmp_path):
    store = ArtifactStore(tmp_path)
    key, info = _write(store)
    assert info.stage == "train" and info.key == key and info.size_bytes == os.path.getsize(info.path)
    sha = file_digest(info.path)
    assert info.path == str(tmp_path / "train" / key[:2] / f"{key}.{sha[7:23]}.zarr.zip")  # content-named
    expected = _arrays()
    with store.read("train", key) as artifact:
        assert sorted(artifact.arrays) == sorted(expected)
        for name, array in expected.items():
            got = artifact.array(name)
            assert got.dtype == array.dtype and got.shape == array.shape, name
            assert got.tobytes() == array.tobytes(), name
        assert artifact.attrs == {"loss": [0.5, 0.25], "n": 3}
        assert artifact.key_doc == _key()[1]
        manifest = artifact.manifest
        assert manifest["code_version"] == "v1" and manifest["created"].endswith("Z")
        assert manifest["arrays"]["c2w"]["dtype"] == "<f8"
        assert manifest["arrays"]["frames"]["shape"] == [2, 3, 16, 20, 3]
        assert manifest["zip"]["sha256"] == file_digest(info.path)
        assert manifest["raw_bytes"] == sum(a.nbytes for a in expected.values())
        lazy = artifact.zarr_array("frames")
        np.testing.assert_array_equal(lazy[1, 2], expected["frames"][1, 2])
    with zipfile.ZipFile(info.path) as zf:
        meta = json.loads(zf.read("frames/zarr.json"))
    shard_codec = meta["codecs"][0]
    assert shard_codec["name"] == "sharding_indexed"
    assert [c["name"] for c in shard_codec["configuration"]["codecs"]] == ["bytes", "zstd", "crc32c"]
    assert [c["name"] for c in shard_codec["configuration"]["index_codecs"]][-1] == "crc32c"


def test_a_lazy_array_outlives_its_artifact_and_a_closed_one_never_reads_another_file(tmp_path):
    """The zip's descriptor lives as long as the lazy zarr array that reads it (the viewer keeps only the array): a
    garbage-collected Artifact must not close it, or its number is recycled by the next open file and the array
    reads that file's bytes. After an explicit close, a read raises instead."""
    import gc

    store = ArtifactStore(tmp_path)
    key, _ = _write(store)
    expected = _arrays()["frames"]
    lazy = store.read("train", key).zarr_array("frames")  # the Artifact itself is dropped at once
    gc.collect()
    others = [open(__file__, "rb") for _ in range(4)]  # take the lowest free descriptor numbers
    try:
        np.testing.assert_array_equal(lazy[1, 2], expected[1, 2])
    finally:
        for f in others:
            f.close()
    artifact = store.read("train", key)
    closed = artifact.zarr_array("frames")
    artifact.close()
    others = [open(__file__, "rb") for _ in range(4)]
    try:
        with pytest.raises(Exception, match="closed"):
            closed[0, 0]
    finally:
        for f in others:
            f.close()


def test_one_artifact_is_two_files_and_writing_twice_is_a_noop(tmp_path):
    store = ArtifactStore(tmp_path)
    key, info = _write(store)
    stage_files = [f for f in _files(tmp_path) if f.startswith("train/")]
    zip_file = Path(info.path).name
    assert stage_files == sorted([f"train/{key[:2]}/{key}.json", f"train/{key[:2]}/{zip_file}"])
    before = {f: (tmp_path / f).stat().st_mtime_ns for f in stage_files}
    again = store.write("train", key, _key()[1], _arrays(seed=1), attrs={"other": 1}, code_version="v2")
    assert again == info
    assert {f: (tmp_path / f).stat().st_mtime_ns for f in stage_files} == before
    with store.read("train", key) as artifact:
        assert artifact.attrs["n"] == 3 and artifact.manifest["code_version"] == "v1"
    assert store.ls() == [info] and store.ls("train") == [info] and store.ls("depth") == []


def test_zip_bytes_are_deterministic(tmp_path):
    a = _write(ArtifactStore(tmp_path / "a"))[1]
    b = _write(ArtifactStore(tmp_path / "b"))[1]
    assert file_digest(a.path) == file_digest(b.path)


def test_write_rejects_mismatched_key_and_bad_arrays(tmp_path):
    store = ArtifactStore(tmp_path)
    key, doc = _key()
    with pytest.raises(Lift3DError, match="not the hash"):
        store.write("train", _key(version=9)[0], doc, {"x": np.zeros(2)})
    with pytest.raises(Lift3DError, match="stage"):
        store.write("depth", key, doc, {"x": np.zeros(2)})
    for bad in ({"x": np.array(["a"])}, {"../x": np.zeros(2)}, {"a": np.zeros(1), "a/b": np.zeros(1)}):
        with pytest.raises(Lift3DError):
            store.write("train", key, doc, bad)
    assert not store.exists("train", key) and _files(tmp_path) == []


# ------------------------------------------------------------------- corruption


def test_flipped_byte_is_detected_by_read_verify_and_chunk_checksums(tmp_path):
    store = ArtifactStore(tmp_path)
    key, info = _write(store)
    offset, size = _data_offset(info.path, "frames/c/0/0/0/0/0")
    _flip_byte(info.path, offset + size // 2)
    with store.read("train", key) as artifact, pytest.raises(CorruptArtifactError, match="frames") as err:
        artifact.array("frames")  # opening reads no data; loading the array checks it
    assert err.value.stage == "train" and err.value.key == key and err.value.path == info.path
    with store.read("train", key, verify=False) as artifact:  # chunk-level checks still fire
        np.testing.assert_array_equal(artifact.array("c2w"), _arrays()["c2w"])
        with pytest.raises(CorruptArtifactError, match="frames"):
            artifact.array("frames")
    problems = store.verify()
    assert [(p.stage, p.key, p.path) for p in problems] == [("train", key, info.path)]
    assert store.verify_artifact("train", key, deep=False)[0].reason.startswith("zip sha256:")  # the hit check
    assert key in str(problems[0])
    moved = store.quarantine("train", key)
    assert len(moved) == 2 and all("/.corrupt/train/" in p for p in moved)
    assert not store.exists("train", key) and store.ls() == [] and store.verify() == []
    assert all("/.locks/" in p for p in store.gc(grace_s=0))  # only the now-unheld lock file
    assert len(store.gc(grace_s=0, include_quarantined=True)) == 2
    _write(store)  # recomputed cleanly
    assert store.verify() == []


def test_truncated_zip_and_bad_manifest_are_detected(tmp_path):
    store = ArtifactStore(tmp_path)
    key, info = _write(store)
    with open(info.path, "r+b") as f:
        f.truncate(info.size_bytes // 2)
    with pytest.raises(CorruptArtifactError, match="truncated"):
        store.read("train", key)
    with pytest.raises(CorruptArtifactError, match="BadZipFile"):
        store.read("train", key, verify=False)
    key2, _ = _write(store, stage="depth")
    Path(store.paths("depth", key2)[1]).write_text('{"format": "lift3d-artifact/1", "stage": "dep')
    with pytest.raises(CorruptArtifactError, match="bad manifest"):
        store.read("depth", key2)
    assert {i.key: i.created for i in store.ls()} == {key: store.info("train", key).created, key2: None}
    assert sorted(p.key for p in store.verify()) == sorted([key, key2])


# ----------------------------------------------------------------------- crashes

_CRASH_SCRIPT = """
import os, sys
import numpy as np
from lift3d_core.store import ArtifactStore, artifact_key
real_link = os.link
def crash_on_manifest(src, dst):
    if dst.endswith(".json"):
        os._exit(17)  # die between publishing the zip and publishing the manifest
    real_link(src, dst)
os.link = crash_on_manifest
key, doc = artifact_key("train", 1, {"crash": True}, {}, {})
ArtifactStore(sys.argv[1]).write("train", key, doc, {"x": np.arange(10.0)})
"""


def test_crash_leaves_only_invisible_garbage_that_gc_removes(tmp_path):
    store = ArtifactStore(tmp_path)
    committed_key, committed = _write(store)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(tmp_path)], env=env, capture_output=True)
    assert result.returncode == 17, result.stderr.decode()
    key, _ = artifact_key("train", 1, {"crash": True}, {}, {})
    stage_dir = tmp_path / "train" / key[:2]
    leftovers = sorted(p.name for p in stage_dir.iterdir())
    assert any(n.startswith(key) and n.endswith(".zarr.zip") for n in leftovers)
    assert any(n.startswith(".tmp-") and n.endswith(".json") for n in leftovers)
    assert not store.exists("train", key) and store.ls() == [committed]
    with pytest.raises(ArtifactNotFoundError):
        store.read("train", key)
    assert store.gc() == []  # younger than the 1 h grace period
    would = store.gc(dry_run=True, grace_s=0)
    assert sorted(Path(p).name for p in would if "/.locks/" not in p) == leftovers
    assert sorted(p.name for p in stage_dir.iterdir()) == leftovers
    removed = store.gc(grace_s=0)
    assert sorted(removed) == sorted(would)
    assert not stage_dir.exists() or list(stage_dir.iterdir()) == []
    assert store.ls() == [committed] and store.verify() == []
    assert store.exists("train", committed_key)


# -------------------------------------------------------------------- concurrency


def test_lock_is_reentrant_in_a_thread_and_exclusive_across_threads(tmp_path):
    store = ArtifactStore(tmp_path)
    key, doc = _key()
    outcome = []

    def contender():
        try:
            with store.lock("train", key, timeout=0.1):
                outcome.append("acquired")
        except LockTimeoutError:
            outcome.append("timed out")

    with store.lock("train", key):
        store.write("train", key, doc, {"x": np.zeros(3)})  # write re-takes the same lock
        thread = threading.Thread(target=contender)
        thread.start()
        thread.join()
    assert outcome == ["timed out"]
    contender()
    assert outcome == ["timed out", "acquired"]


def _compute_once(store, key, doc, log_path):
    """The task pattern: look in the store under the key's lock, compute only on a miss."""
    with store.lock("train", key):
        if not store.exists("train", key):
            with open(log_path, "a") as log:
                log.write(f"{os.getpid()}-{threading.get_ident()}\n")
            store.write("train", key, doc, _arrays(), attrs={"by": os.getpid()})
    return store.info("train", key)


def test_threads_writing_one_key_compute_once_and_leave_one_artifact(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    key, doc = _key()
    barrier = threading.Barrier(4)
    infos = []

    def worker(i):
        barrier.wait()
        if i % 2:
            infos.append(_compute_once(store, key, doc, tmp_path / "log"))
        else:  # bare writes race on the lock inside write()
            infos.append(store.write("train", key, doc, _arrays(), attrs={"by": i}))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(infos) == 4 and len(set(infos)) == 1
    assert len([f for f in _files(tmp_path / "store") if f.startswith("train/")]) == 2
    assert store.verify() == []


def _process_worker(root, barrier, log_path):
    key, doc = _key()
    barrier.wait()
    _compute_once(ArtifactStore(root), key, doc, log_path)


def test_processes_writing_one_key_compute_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_process_worker, args=(str(tmp_path / "store"), barrier, str(tmp_path / "log")))]
    procs.append(ctx.Process(target=_process_worker, args=(str(tmp_path / "store"), barrier, str(tmp_path / "log"))))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len((tmp_path / "log").read_text().splitlines()) == 1
    store = ArtifactStore(tmp_path / "store")
    assert len(store.ls()) == 1 and store.verify() == []
    assert len([f for f in _files(tmp_path / "store") if f.startswith("train/")]) == 2


# ------------------------------------------------------------------------ fsspec


@pytest.fixture
def memory_url():
    url = f"memory://lift3d-test-{uuid.uuid4().hex[:8]}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_fsspec_store_round_trip_corruption_and_gc(memory_url):
    store = ArtifactStore(memory_url)
    assert not store.is_local
    key, info = _write(store)
    assert info.path.startswith("memory://") and store.exists("train", key)
    with store.read("train", key) as artifact:
        for name, array in _arrays().items():
            assert artifact.array(name).tobytes() == array.tobytes() and artifact.array(name).dtype == array.dtype
        assert artifact.attrs == {"loss": [0.5, 0.25], "n": 3}
    assert store.ls() == [info] and store.verify() == []
    fs, zip_path = store.fs, store.paths("train", key)[0]
    data = bytearray(fs.cat_file(zip_path))
    data[len(data) // 3] ^= 0xFF
    fs.pipe_file(zip_path, bytes(data))
    assert store.verify_artifact("train", key) != []  # no ETag on memory://: the hit check hashes the zip
    assert [p.key for p in store.verify(quarantine=True)] == [key]
    assert not store.exists("train", key)
    orphan_key, _ = _write(store, stage="depth")
    orphan_zip, orphan_manifest = store.paths("depth", orphan_key)
    fs.rm_file(orphan_manifest)  # crash between zip upload and manifest upload
    assert store.ls() == [] and store.gc(grace_s=0) == [store.fs.unstrip_protocol(orphan_zip)]


def test_concurrent_remote_writers_of_deterministic_data_agree(memory_url):
    store = ArtifactStore(memory_url)
    key, doc = _key()
    barrier = threading.Barrier(3)

    def worker():
        barrier.wait()
        store.write("train", key, doc, _arrays(), attrs={"loss": [0.5, 0.25], "n": 3})

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.ls()) == 1 and store.verify() == []


def test_missing_artifact_and_bad_names(tmp_path):
    store = ArtifactStore(tmp_path)
    key, _ = _key()
    assert not store.exists("train", key) and store.ls() == [] and store.verify() == [] and store.gc() == []
    with pytest.raises(ArtifactNotFoundError):
        store.read("train", key)
    assert store.delete("train", key) is False
    for stage, bad_key in (("train", "../../etc"), (".corrupt", key), ("Train", key)):
        with pytest.raises(Lift3DError):
            store.exists(stage, bad_key)
    _write(store)
    assert store.delete("train", key) is True and not store.exists("train", key)


# ------------------------------------------------------------ crashes (processes)

_LOCK_HOLDER = """
import os, signal, sys
from lift3d_core.store import ArtifactStore, artifact_key
key, doc = artifact_key("train", 1, {"holder": True}, {}, {})
store = ArtifactStore(sys.argv[1])
with store.lock("train", key):
    open(sys.argv[2], "w").close()
    os.kill(os.getpid(), signal.SIGKILL)  # dies holding the lock
"""

_BIG_WRITER = """
import sys
import numpy as np
from lift3d_core.store import ArtifactStore, artifact_key
key, doc = artifact_key("train", 1, {"big": True}, {}, {})
frames = np.random.default_rng(0).integers(0, 256, (64, 576, 1024, 3), dtype=np.uint8)  # ~113 MB, seconds to zip
ArtifactStore(sys.argv[1]).write("train", key, doc, {"frames": frames})
"""


def _script_env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_a_lock_whose_holder_was_sigkilled_is_free_at_once(tmp_path):
    held = tmp_path / "held"
    result = subprocess.run([sys.executable, "-c", _LOCK_HOLDER, str(tmp_path / "store"), str(held)],
                            env=_script_env(), capture_output=True, timeout=120)
    assert result.returncode == -9 and held.exists(), result.stderr.decode()[-2000:]
    key, _ = artifact_key("train", 1, {"holder": True}, {}, {})
    with ArtifactStore(tmp_path / "store").lock("train", key, timeout=1):  # the OS released it with the process
        pass


@pytest.mark.slow
def test_sigkill_while_writing_leaves_nothing_visible_and_cache_gc_cleans_up(tmp_path):
    root = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", _BIG_WRITER, str(root)], env=_script_env(),
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(root.rglob(".tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.1)  # the temp zip is being written
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.kill()
    proc.wait()
    store = ArtifactStore(root)
    assert store.ls() == [] and list(root.rglob("*.json")) == []
    leftovers = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name.startswith(".tmp-") for p in leftovers)
    gc = subprocess.run([sys.executable, "-m", "flows.cli", "cache", "gc", "--store", str(root), "--grace-hours", "0"],
                        cwd=tmp_path, env=_script_env(), capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0 and ".tmp-" in gc.stdout.replace("\n", ""), gc.stdout + gc.stderr[-2000:]
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_a_full_disk_fails_the_write_in_one_line_with_nothing_committed(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    key, doc = _key()
    real_writestr = zipfile.ZipFile.writestr
    calls = []

    def disk_fills_up(self, entry, data, *args, **kwargs):
        calls.append(entry)
        if len(calls) > 2:  # a few entries are on disk, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_writestr(self, entry, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", disk_fills_up)
    with pytest.raises(Lift3DError) as err:
        store.write("train", key, doc, _arrays())
    message = str(err.value)
    assert "\n" not in message and "No space left on device" in message and "nothing was committed" in message
    assert not store.exists("train", key)
    assert [f for f in _files(tmp_path) if not f.startswith(".locks/")] == []  # the partial temp zip is gone
    monkeypatch.undo()
    _write(store)  # space again: the same key writes cleanly
    assert store.verify() == []
