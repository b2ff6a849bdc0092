"""Artifact keys: the SHA-256 of a canonical JSON *key document*, and the digests that go into it.

A key document is ``{"stage", "stage_version", "params", "inputs": {name: upstream key | file digest},
"models": {name: checkpoint digest}}``, so a key names exactly what produced the bytes, and changing one
parameter changes that stage's key and (through ``inputs``) every key downstream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np

from lift3d_core.errors import Lift3DError

__all__ = ["artifact_key", "canonical_json", "file_digest", "key_from_doc"]

_HASH_BLOCK = 1 << 20
KEY_RE = re.compile(r"^[0-9a-f]{64}$")
STAGE_RE = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,63}$")


def normalise(obj: Any, where: str, allow_nan: bool) -> Any:
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
        return normalise(dataclasses.asdict(obj), where, allow_nan)
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise Lift3DError(f"{where}: dict key {k!r} is {type(k).__name__}; keys must be str")
            out[k] = normalise(v, f"{where}.{k}", allow_nan)
        return out
    if isinstance(obj, (list, tuple)):
        return [normalise(v, f"{where}[{i}]", allow_nan) for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        return normalise(obj.tolist(), where, allow_nan)
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
    plain = normalise(obj, "$", allow_nan=False)
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
    check_stage(stage)
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


def array_digest(array: np.ndarray) -> str:
    """``"sha256:<hex>"`` of the raw C-order bytes of ``array``."""
    return "sha256:" + hashlib.sha256(np.require(array, requirements="C")).hexdigest()


def check_stage(stage: str) -> None:
    if not isinstance(stage, str) or not STAGE_RE.match(stage):
        raise Lift3DError(f"stage name {stage!r} must match {STAGE_RE.pattern} (lowercase, no leading dot)")


def check_key(key: str) -> None:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise Lift3DError(f"artifact key {key!r} is not 64 lowercase hex chars; build it with artifact_key()")
