"""``params.yaml`` <-> per-stage config dataclasses.

``params.yaml`` is the single source of default parameters, one section per
stage. Each stage owns one frozen dataclass (``TrajectoryConfig``,
``TrainConfig``...); :func:`build_config` maps a section onto it, rejecting
unknown keys and wrong types with one actionable :class:`Lift3DError`.
:func:`apply_overrides` applies ``--set section.key=value`` strings.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lift3d_core.errors import Lift3DError

T = TypeVar("T")


def load_params(path: str | Path) -> dict[str, Any]:
    """Read ``params.yaml`` into a plain dict of sections."""
    path = Path(path)
    if not path.is_file():
        raise Lift3DError(f"params file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise Lift3DError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise Lift3DError(f"{path} must map stage names to sections of key: value")
    return params


def apply_overrides(params: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``params`` with ``section.key[.sub]=value`` overrides applied.

    Values are parsed as YAML scalars/lists (``3``, ``0.5``, ``true``, ``[U, D]``).
    Only existing keys may be overridden: a typo is an error, not a new silent parameter.
    """
    out = copy.deepcopy(params)
    for item in overrides:
        if "=" not in item:
            raise Lift3DError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        path = dotted.strip().split(".")
        if len(path) < 2:
            raise Lift3DError(f"override {item!r} must name a section and a key, e.g. train.iterations=500")
        node = out
        for i, part in enumerate(path[:-1]):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
                raise Lift3DError(f"override {item!r}: unknown {'.'.join(path[: i + 1])!r} (known: {known})")
            node = node[part]
        if not isinstance(node, dict) or path[-1] not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
            raise Lift3DError(f"override {item!r}: unknown key {dotted!r} (known: {known})")
        try:
            node[path[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[path[-1]] = raw
    return out


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert one YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except Lift3DError as exc:
                errors.append(str(exc))
        raise Lift3DError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise Lift3DError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise Lift3DError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if origin is tuple and args:
            if len(args) != len(value):
                raise Lift3DError(f"{where}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
        return origin(value)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise Lift3DError(f"{where}: expected a section, got {value!r}")
        return build_config(annotation, value, where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise Lift3DError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Lift3DError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Lift3DError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise Lift3DError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def build_config(cls: type[T], section: dict[str, Any] | None, where: str | None = None) -> T:
    """Build the frozen config dataclass ``cls`` from a ``params.yaml`` section.

    Unknown keys and ill-typed values raise :class:`Lift3DError`; missing keys take
    the dataclass defaults; the dataclass's own ``__post_init__`` validates ranges.
    """
    where = where or cls.__name__
    section = dict(section or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(section) - set(fields))
    if unknown:
        raise Lift3DError(f"{where}: unknown parameter(s) {unknown}; valid: {sorted(fields)}")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in section.items()}
    try:
        return cls(**kwargs)
    except Lift3DError:
        raise
    except (TypeError, ValueError) as exc:
        raise Lift3DError(f"{where}: {exc}") from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-able dict of a config dataclass (tuples become lists): what store keys hash."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {str(k): convert(x) for k, x in v.items()}
        return v

    return convert(config)


# Precision settings of every model backend, one spelling: torch's names, the short ones accepted as aliases.
DTYPE_NAMES = ("float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def canonical_dtype(name: str, where: str) -> str:
    """``name`` as one of :data:`DTYPE_NAMES` (``bf16`` -> ``bfloat16``...), so a key hashes one spelling; a
    Lift3DError naming ``where`` for anything else."""
    name = _DTYPE_ALIASES.get(name, name)
    if name not in DTYPE_NAMES:
        raise Lift3DError(f"{where} must be one of {', '.join(DTYPE_NAMES)} (or bf16, fp16, fp32), got {name!r}")
    return name



def check_types(section: dict[str, Any], hints: dict[str, Any], where: str) -> None:
    """Check each value of ``section`` whose name has a type in ``hints`` (``typing.get_type_hints`` of a config
    dataclass) the way :func:`build_config` does, for sections parsed by a config's own ``from_params``."""
    for name, value in section.items():
        if name in hints:
            _coerce(value, hints[name], f"{where}.{name}")
