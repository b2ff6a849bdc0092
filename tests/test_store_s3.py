"""The store on S3, against a real S3-compatible server (moto's server mode) that these tests start on loopback:
hits across store objects and processes, create-only publication, crashes mid-write, leases that outlive their
holder, and lazy reads that fetch what they load."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from lift3d_core.store import ArtifactNotFoundError, ArtifactStore, LockTimeoutError, artifact_key
from tests.conftest import REPO

moto_server = pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on 127.0.0.1; the environment a user would set (AWS_ENDPOINT_URL and credentials)."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server.start()
    env = {**_CREDENTIALS, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(name, raising=False)
        yield env
    server.stop()


@pytest.fixture
def s3_url(s3_env):
    import s3fs

    bucket = f"lift3d-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/team-cache"


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "frames": rng.integers(0, 256, (2, 4, 384, 512, 3), dtype=np.uint8),  # [clip, t, H, W, 3]: a chunk a frame
        "c2w": rng.standard_normal((12, 4, 4)),
        "points": rng.standard_normal((300, 3)).astype(np.float32),
    }


KEY, DOC = artifact_key("generate", 1, {"seed": 0}, {"image": "sha256:" + "a" * 64}, {})


def _zips(store: ArtifactStore) -> list[str]:
    return [p for p in store.fs.find(store.root) if p.endswith(".zarr.zip")]


def test_published_on_one_store_object_is_a_verified_hit_on_another(s3_url):
    writer = ArtifactStore(s3_url)
    assert not writer.is_local
    info = writer.write("generate", KEY, DOC, _arrays(), attrs={"fps": 8}, code_version="t")
    assert info.path.startswith(s3_url + "/generate/")
    reader = ArtifactStore(s3_url, skip_instance_cache=True)  # its own connection and caches
    assert reader.exists("generate", KEY) and reader.ls() == [info]
    assert reader.manifest("generate", KEY)["zip"]["etag"]  # the hit check compares it: one HEAD
    assert reader.verify_artifact("generate", KEY) == [] and reader.verify() == []
    with reader.read("generate", KEY) as artifact:
        for name, array in _arrays().items():
            got = artifact.array(name)
            assert got.dtype == array.dtype and got.tobytes() == array.tobytes(), name
        assert artifact.attrs == {"fps": 8}


def test_a_lazy_read_fetches_the_bytes_it_loads_not_the_artifact(s3_url):
    info = ArtifactStore(s3_url).write("generate", KEY, DOC, _arrays())
    reader = ArtifactStore(s3_url, skip_instance_cache=True)
    fetched = []
    real_cat = reader.fs.cat_file

    def counting_cat(path, start=None, end=None, **kw):
        data = real_cat(path, start=start, end=end, **kw)
        fetched.append(len(data))
        return data

    reader.fs.cat_file = counting_cat  # count what crosses the network; the reads themselves are the real ones
    with reader.read("generate", KEY) as artifact:
        c2w = artifact.array("c2w")
        one_frame = artifact.zarr_array("frames")[1, 2]
    np.testing.assert_array_equal(c2w, _arrays()["c2w"])
    np.testing.assert_array_equal(one_frame, _arrays()["frames"][1, 2])
    frames_bytes = _arrays()["frames"].nbytes
    assert sum(fetched) < info.size_bytes / 4 and sum(fetched) < frames_bytes / 4, (fetched, info.size_bytes)


def test_a_second_writer_of_a_committed_key_changes_nothing(s3_url):
    """The manifest is put with If-None-Match: the server refuses the second one, and its zip is removed."""
    store = ArtifactStore(s3_url)
    first = store.write("generate", KEY, DOC, _arrays(0), attrs={"by": "first"})
    other = ArtifactStore(s3_url, skip_instance_cache=True)
    other._publish("generate", KEY, DOC, _arrays(1), {"by": "second"}, "")  # past the lock: race the commit point
    assert _zips(store) == [first.path.removeprefix("s3://")]
    with other.read("generate", KEY) as artifact:
        assert artifact.attrs == {"by": "first"} and artifact.array("points").tobytes() == _arrays(0)[
            "points"].tobytes()


# Writers are plain interpreters (no test module, no torch to import), started together by a file appearing.
_WORKER = """
import os, sys, time
import numpy as np
from lift3d_core.store import ArtifactStore, artifact_key
url, mode, go, log = sys.argv[1:5]
key, doc = artifact_key("generate", 1, {"seed": 0}, {"image": "sha256:" + "a" * 64}, {})
store = ArtifactStore(url)
arrays = {"frames": np.random.default_rng(os.getpid()).integers(0, 256, (4, 384, 512, 3), dtype=np.uint8)}
while not os.path.exists(go):
    time.sleep(0.01)
if mode == "race":  # past the lock: both reach the commit point with different bytes
    store._publish("generate", key, doc, arrays, {"by": os.getpid()}, "")
else:  # the task pattern: look under the key's lock, compute only on a miss
    with store.lock("generate", key):
        if not store.exists("generate", key):
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\\n")
            store.write("generate", key, doc, arrays, {"by": os.getpid()})
"""


def _run_two(mode: str, url: str, s3_env: dict, tmp_path) -> None:
    go, log = tmp_path / "go", tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, url, mode, str(go), str(log)], env=_env(s3_env),
                              stderr=subprocess.PIPE) for _ in range(2)]
    time.sleep(1.0)  # both have imported the store
    go.touch()
    errors = [p.communicate(timeout=120)[1].decode()[-2000:] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors


@pytest.mark.slow
def test_two_processes_racing_one_key_leave_one_consistent_artifact(s3_url, s3_env, tmp_path):
    _run_two("race", s3_url, s3_env, tmp_path)
    store = ArtifactStore(s3_url, skip_instance_cache=True)
    assert store.verify() == []  # the committed manifest names the zip its writer uploaded, and its arrays match
    with store.read("generate", KEY) as artifact:
        frames = artifact.array("frames")
        by = artifact.attrs["by"]
    expected = np.random.default_rng(by).integers(0, 256, (4, 384, 512, 3), dtype=np.uint8)
    assert frames.tobytes() == expected.tobytes()
    store.gc(grace_s=0)
    assert _zips(store) == [store.info("generate", KEY).path.removeprefix("s3://")]


_KILLED_WRITER = """
import os, signal, sys
import numpy as np
from lift3d_core.store import ArtifactStore, artifact_key
from lift3d_core.store.backend import ObjectFiles
create_bytes = ObjectFiles.create_bytes
def die_at_the_manifest(self, path, data):
    if path.endswith(".json"):
        os.kill(os.getpid(), signal.SIGKILL)  # the zip is uploaded, the manifest is not
    return create_bytes(self, path, data)
ObjectFiles.create_bytes = die_at_the_manifest
key, doc = artifact_key("generate", 1, {"seed": 0}, {"image": "sha256:" + "a" * 64}, {})
ArtifactStore(sys.argv[1], lease_ttl_s=1.0).write("generate", key, doc, {"x": np.arange(1000.0)})
"""


def _env(s3_env: dict) -> dict:
    return {**os.environ, **s3_env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_artifact_and_cache_gc_removes_the_leftovers(s3_url, s3_env, tmp_path):
    result = subprocess.run([sys.executable, "-c", _KILLED_WRITER, s3_url], env=_env(s3_env), capture_output=True,
                            timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    store = ArtifactStore(s3_url, skip_instance_cache=True)
    assert len(_zips(store)) == 1  # the uploaded zip, which no manifest names
    assert not store.exists("generate", KEY) and store.ls() == []
    with pytest.raises(ArtifactNotFoundError):
        store.read("generate", KEY)
    time.sleep(1.1)  # the dead writer's lease expires (ttl 1 s)
    gc = subprocess.run([sys.executable, "-m", "flows.cli", "cache", "gc", "--store", s3_url, "--grace-hours", "0"],
                        cwd=tmp_path, env=_env(s3_env), capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr[-2000:]
    assert "removed" in gc.stdout and ".zarr.zip" in gc.stdout, gc.stdout
    assert store.fs.find(store.root) == []  # the zip, and the dead writer's expired lease
    store.write("generate", KEY, DOC, _arrays())  # and the key is written cleanly afterwards
    assert store.verify() == []


@pytest.mark.slow
def test_a_lease_outlives_a_crashed_holder_by_its_ttl_and_excludes_others_meanwhile(s3_url):
    holder = ArtifactStore(s3_url, lease_ttl_s=1.5)
    other = ArtifactStore(s3_url, lease_ttl_s=1.5, skip_instance_cache=True)
    with holder.lock("generate", KEY):
        with holder.lock("generate", KEY):  # reentrant in the holding thread
            pass
        outcome = []

        def contend():
            try:
                with other.lock("generate", KEY, timeout=0.3):
                    outcome.append("acquired")
            except LockTimeoutError:
                outcome.append("timed out")

        thread = threading.Thread(target=contend)
        thread.start()
        thread.join()
        assert outcome == ["timed out"]
    with other.lock("generate", KEY, timeout=1):  # released on exit
        pass
    # a holder that dies without releasing: its lease stays until it expires
    lease = f"{holder.root}/.locks/generate/{KEY}.lock"
    holder.fs.pipe_file(lease, b'{"id": "dead", "expires": %f}' % (time.time() + 1.0))
    t0 = time.monotonic()
    with other.lock("generate", KEY, timeout=10):
        waited = time.monotonic() - t0
    assert 0.5 < waited < 5


@pytest.mark.slow
def test_two_processes_asking_for_one_key_compute_it_once(s3_url, s3_env, tmp_path):
    _run_two("once", s3_url, s3_env, tmp_path)
    assert len((tmp_path / "log").read_text().splitlines()) == 1
    store = ArtifactStore(s3_url, skip_instance_cache=True)
    assert len(store.ls()) == 1 and store.verify() == [] and len(_zips(store)) == 1
