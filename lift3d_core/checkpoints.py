"""Every checkpoint lift3d uses: where it lives, where users get it, how it is checked and read.

lift3d never downloads weights. A backend asks :func:`checkpoint_path` for its file
(under ``checkpoints/`` or a path its params section names); a missing file stops the
stage with one :class:`Lift3DError` naming the file and where to get it.

:func:`digest` is the file's SHA-256 (what store keys hash, so new weights recompute
exactly the stages that use them), cached by (path, size, mtime) in
``.lift3d/checkpoint-digests.json`` so a 9.6 GB file is hashed once, not per run.
:func:`load_torch` reads a ``torch.save`` file with ``weights_only=True`` and ``mmap=True``:
only an explicit allow-list of globals may be unpickled, never arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import threading
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lift3d_core.errors import Lift3DError

__all__ = [
    "CHECKPOINTS",
    "CheckpointSpec",
    "checkpoint_path",
    "digest",
    "load_torch",
    "verify",
]

DEFAULT_ROOT = Path("checkpoints")
_DIGEST_CACHE = Path(".lift3d") / "checkpoint-digests.json"
_HASH_BLOCK = 8 << 20


@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint file.

    name: registry name (the stage's ``models`` key); filename: under the checkpoints root;
    source: where users get it; size: bytes, sha256: hex digest of the official file (None where unknown);
    used_by: the backend that reads it.
    """

    name: str
    filename: str
    source: str
    used_by: str
    size: int | None = None
    sha256: str | None = None


CHECKPOINTS: dict[str, CheckpointSpec] = {
    c.name: c
    for c in (
        CheckpointSpec(
            "motionctrl_svd", "motionctrl_svd.ckpt",
            "https://huggingface.co/TencentARC/MotionCtrl (file motionctrl_svd.ckpt)",
            "generate.backend=motionctrl_svd",
        ),
        CheckpointSpec(
            "mast3r", "MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric.pth",
            "https://huggingface.co/naver/MASt3R_ViTLarge_BaseDecoder_512_catmlpdpt_metric "
            "(or https://download.europe.naverlabs.com/ComputerVision/MASt3R/)",
            "calibrate.backend=mast3r",
        ),
        CheckpointSpec(
            "depth_anything_v2", "depth_anything_v2_vitl.pth",
            "https://huggingface.co/depth-anything/Depth-Anything-V2-Large (file depth_anything_v2_vitl.pth)",
            "depth.backend=depth_anything_v2",
        ),
    )
}


def _spec(name: str) -> CheckpointSpec:
    if name not in CHECKPOINTS:
        raise Lift3DError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[name]


def checkpoint_path(name: str, path: str | os.PathLike | None = None, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """The existing file of checkpoint ``name``: ``path`` if given, else ``root / filename``.

    Raises one Lift3DError naming the file and where users get it when it is missing or empty.
    """
    spec = _spec(name)
    file = Path(path) if path is not None else Path(root) / spec.filename
    if not file.is_absolute() and os.environ.get("LIFT3D_PROJECT"):
        # params.yaml's paths are the project's (the CLI sets LIFT3D_PROJECT), wherever the command runs from
        file = Path(os.environ["LIFT3D_PROJECT"]) / file
    if not file.is_file():
        raise Lift3DError(f"checkpoint {file} is missing ({spec.used_by} needs it); get {spec.filename} "
                          f"from {spec.source} and put it there")
    if file.stat().st_size == 0:
        raise Lift3DError(f"checkpoint {file} is empty; download {spec.filename} again from {spec.source}")
    return file


def _cache_file() -> Path:
    return Path(os.environ.get("LIFT3D_DIGEST_CACHE", _DIGEST_CACHE))


def digest(path: str | os.PathLike) -> str:
    """``"sha256:<hex>"`` of a checkpoint file, cached by (absolute path, size, mtime_ns, inode, ctime_ns).

    The cache is a small JSON (``.lift3d/checkpoint-digests.json``, or ``$LIFT3D_DIGEST_CACHE``);
    any change of those re-hashes, so a replaced file gets its own digest.
    """
    path = Path(path).resolve()
    st = path.stat()
    # inode and ctime too: a copy that keeps size and mtime (cp -p, rsync -t, a DVC checkout) is another file
    stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"
    cache_path = _cache_file()
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        cache = {}  # a damaged cache only costs a re-hash
    entry = cache.get(str(path))
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return entry["digest"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    value = "sha256:" + h.hexdigest()
    cache[str(path)] = {"stamp": stamp, "digest": value}
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".tmp{os.getpid()}.{threading.get_ident()}")  # unique per thread (lift3d batch)
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, cache_path)
    except OSError:
        pass  # a read-only project still works, it only hashes again next time
    return value


def load_torch(path: str | os.PathLike, allowed_globals: Iterable[Any] = (), *, source: str | None = None) -> Any:
    """Read a ``torch.save`` file memory-mapped with ``weights_only=True`` (tensors stay on the CPU, lazily).

    allowed_globals: classes/functions the file may reference besides tensors and containers
    (e.g. ``argparse.Namespace``), passed to ``torch.serialization.safe_globals``; anything else
    is refused. source: where users get the file, for the error message.
    Raises Lift3DError for a truncated file, a file that is not a torch checkpoint, or an
    unsafe pickle, each naming the file.
    """
    import torch

    path = Path(path)
    where = f"; get it again from {source}" if source else ""
    if not path.is_file():
        raise Lift3DError(f"checkpoint {path} is missing{where}")
    if not zipfile.is_zipfile(path):
        raise Lift3DError(f"checkpoint {path} is not a torch checkpoint (not a torch.save zip archive) or is "
                          f"truncated{where}")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Lift3DError(f"checkpoint {path} holds objects outside the allowed list, refused without unpickling "
                          f"them ({first[:200]}){where}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Lift3DError(f"checkpoint {path} cannot be read, probably truncated or damaged ({first[:200]})"
                          f"{where}") from None


_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(path: str | os.PathLike, options: tuple, build: Callable[[Path], Any]) -> Any:
    """The model ``build(path)`` makes, built once per process per (file, its size, mtime and inode, ``options``:
    dtype, device, variant...): every backend's "models loaded once per process". A file replaced on disk is built
    again and its stale model dropped (one model per file and options, so a long batch never holds two copies of
    a checkpoint's weights). Thread-safe: two tasks asking at once build it once.
    """
    resolved = Path(path).resolve()
    st = resolved.stat()
    key = (str(resolved), options)
    stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
    with _MODELS_LOCK:
        hit = _MODELS.get(key)
        if hit is None or hit[0] != stamp:
            _MODELS.pop(key, None)  # drop the stale copy before building the new one
            _MODELS[key] = (stamp, build(resolved))
        return _MODELS[key][1]


def resolve_device(name: str | None = "auto"):
    """The torch device a model backend's ``device`` setting names: ``auto`` (or None) is CUDA when present, else
    the CPU. Speed only: no backend hashes it."""
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def clear_model_cache() -> None:
    """Forget every loaded model (frees their memory once nothing else holds them)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def verify(root: str | os.PathLike = DEFAULT_ROOT, *, hash_files: bool = True,
           paths: dict[str, str | os.PathLike] | None = None) -> list[tuple[str, str]]:
    """Each registered checkpoint's status under ``root``: ``[(name, status)]``.

    status: ``"present"`` (a readable torch archive whose size and SHA-256 match what is known, or nothing is
    known), ``"missing"``, ``"damaged: ..."`` (not a torch.save archive, or its index cannot be read: a truncated
    download), or ``"mismatched: ..."`` (size or SHA-256 differ from the official file).
    paths: checkpoint name -> the file params.yaml points at (default: ``root / filename``).
    """
    out = []
    for name, spec in CHECKPOINTS.items():
        file = Path(paths[name]) if paths and name in paths else Path(root) / spec.filename
        if not file.is_file():
            out.append((name, "missing"))
            continue
        size = file.stat().st_size
        if spec.size is not None and size != spec.size:
            out.append((name, f"mismatched: {size} bytes, expected {spec.size}"))
            continue
        if hash_files and spec.sha256 is not None:
            got = digest(file).removeprefix("sha256:")
            if got != spec.sha256:
                out.append((name, f"mismatched: sha256 {got[:16]}..., expected {spec.sha256[:16]}..."))
                continue
        problem = _archive_problem(file)
        out.append((name, f"damaged: {problem}" if problem else "present"))
    return out


def _archive_problem(file: Path) -> str | None:
    """Why ``file`` is not a readable ``torch.save`` archive (its central directory, read without loading any
    tensor: a truncated download fails here), or None."""
    if not zipfile.is_zipfile(file):
        return "not a torch.save archive (truncated or another format)"
    try:
        with zipfile.ZipFile(file) as archive:
            if not any(n.endswith("data.pkl") for n in archive.namelist()):
                return "a zip archive without torch's data.pkl"
    except (zipfile.BadZipFile, OSError) as exc:
        return f"unreadable archive ({exc})"
    return None

