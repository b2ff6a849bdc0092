#!/usr/bin/env python
"""Store throughput: write and read a frames artifact of the default tree's size, locally and through S3.

    python bench/store_throughput.py --out bench/results/store_throughput_cpu.json
    python bench/store_throughput.py --frames 24          # a quick look

The artifact is ``frames [241, 576, 1024, 3] uint8`` (426 MB raw), a camera pan over the bundled photograph (so it
compresses like a video, not like noise). Rows: ``write`` (``ArtifactStore.write``: Zarr encode, zip, SHA-256,
publish), ``read`` (``read`` + ``array("frames")``: every chunk's CRC32C and the array's SHA-256 checked, as a
stage reads it), ``one frame`` (a lazy read of one frame) and ``hit check`` (``verify_artifact``, what a task runs
before reusing an artifact). MB/s is raw array bytes over wall seconds, best of ``--repeats``; the read row also
gives its best CPU seconds (all threads; with a moto server in this process, its threads too). The S3 rows go through a
moto server that this script starts on 127.0.0.1 (an S3 server on the same machine: no network in the way), or
through ``--s3-url`` with the usual AWS_* environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lift3d_core.store import ArtifactStore, artifact_key


def pan_frames(n: int, height: int, width: int) -> np.ndarray:
    """``[n, H, W, 3] uint8``: the astronaut photograph panned 3 px a frame, with a little sensor noise."""
    from skimage import data, transform

    image = transform.resize(data.astronaut(), (height, width), preserve_range=True).astype(np.uint8)
    rng = np.random.default_rng(0)
    frames = np.stack([np.roll(image, 3 * i, axis=1) for i in range(n)])
    frames += rng.integers(0, 3, frames.shape, dtype=np.uint8)  # wraps at 255: fine for a throughput test
    return frames


def best(fn, repeats: int) -> tuple[float, object]:
    """Best wall seconds of ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def cpu_seconds(fn, repeats: int) -> float:
    """Best CPU seconds of ``repeats`` calls, all threads of this process (on a shared, loaded machine wall time
    overstates what a call costs)."""
    times = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return min(times)


def measure(url: str, frames: np.ndarray, repeats: int, **options) -> list[dict]:
    mb = frames.nbytes / 1e6
    rows = []

    def write():
        key, doc = artifact_key("generate", 1, {"run": uuid.uuid4().hex}, {}, {})  # a new key each time
        ArtifactStore(url, **options).write("generate", key, doc, {"frames": frames})
        return key

    seconds, key = best(write, repeats)
    store = ArtifactStore(url, **options)
    size = store.info("generate", key).size_bytes
    rows.append({"op": "write", "seconds": seconds, "MB_per_s": mb / seconds, "zip_MB": size / 1e6})

    def read():
        with store.read("generate", key) as artifact:
            return artifact.array("frames")

    seconds, got = best(read, repeats)
    assert got.tobytes() == frames.tobytes()
    cpu = cpu_seconds(read, repeats)
    rows.append({"op": "read", "seconds": seconds, "MB_per_s": mb / seconds, "cpu_s": cpu, "MB_per_cpu_s": mb / cpu})

    def one_frame():
        with store.read("generate", key) as artifact:
            return artifact.zarr_array("frames")[len(frames) // 2]

    seconds, got = best(one_frame, repeats)
    assert got.tobytes() == frames[len(frames) // 2].tobytes()
    rows.append({"op": "one frame", "seconds": seconds})
    seconds, problems = best(lambda: store.verify_artifact("generate", key), repeats)
    assert problems == []
    rows.append({"op": "hit check", "seconds": seconds})
    return rows


def moto_url() -> tuple[str, object]:
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    import s3fs

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("lift3d-bench")
    return "s3://lift3d-bench/store", server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=241)
    parser.add_argument("--height", type=int, default=576)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--s3-url", default=None, help="an existing bucket/prefix (default: a moto server here)")
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    frames = pan_frames(args.frames, args.height, args.width)
    results = {"frames_shape": list(frames.shape), "raw_MB": frames.nbytes / 1e6, "repeats": args.repeats,
               "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(),
                           "platform": platform.platform(), "load_avg_1m": os.getloadavg()[0]},
               "rows": {}}
    with tempfile.TemporaryDirectory(prefix="lift3d-bench-") as tmp:
        results["rows"]["local"] = measure(tmp, frames, args.repeats)
    if not args.no_s3:
        server = None
        url = args.s3_url
        if url is None:
            url, server = moto_url()
            results["s3_server"] = "moto (ThreadedMotoServer) on 127.0.0.1"
        try:
            results["rows"]["s3"] = measure(url, frames, args.repeats)
        finally:
            if server is not None:
                server.stop()
    print(f"frames {tuple(frames.shape)} uint8, {frames.nbytes / 1e6:.0f} MB raw; best of {args.repeats}")
    print(f"{'store':<6} {'op':<10} {'seconds':>8} {'MB/s':>8} {'MB/cpu-s':>9}")
    for where, rows in results["rows"].items():
        for row in rows:
            rate = f"{row['MB_per_s']:8.0f}" if "MB_per_s" in row else " " * 8
            per_cpu = f"{row['MB_per_cpu_s']:9.0f}" if "MB_per_cpu_s" in row else ""
            print(f"{where:<6} {row['op']:<10} {row['seconds']:8.3f} {rate} {per_cpu}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
