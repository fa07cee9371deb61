"""Typed config dataclasses, built from dicts and from ``--section.key value`` command-line overrides.

Unknown keys are rejected with the list of valid ones; strings from the command line are coerced to the
field's declared type (int, float, bool, str, tuples/lists, Optional, Literal).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from typing import Any, Literal, Union

from neuratlas.errors import NeuratlasError

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (often a CLI string) to type ``tp`` or raise a NeuratlasError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return _parse_literal(value) if isinstance(value, str) else value
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in {"none", "null"}):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, where)
            except NeuratlasError as e:
                errors.append(str(e))
        raise NeuratlasError(f"{where}: cannot read {value!r} as {_type_name(tp)}")
    if origin is Literal:
        for a in args:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise NeuratlasError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
    if origin in (tuple, list) or tp in (tuple, list):
        if isinstance(value, str):
            value = _parse_sequence(value)
        if not isinstance(value, (list, tuple)):
            value = [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise NeuratlasError(f"{where}: expected {len(args)} values, got {len(value)}")
            items = [coerce(v, a, where) for v, a in zip(value, args)]
        else:
            inner = args[0] if args else Any
            items = [coerce(v, inner, where) for v in value]
        return tuple(items) if (origin is tuple or tp is tuple) else list(items)
    if origin is dict or tp is dict:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise NeuratlasError(f"{where}: expected a JSON object, got {value!r}") from None
        if not isinstance(value, dict):
            raise NeuratlasError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        s = str(value).lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise NeuratlasError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise NeuratlasError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise NeuratlasError(f"{where}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise NeuratlasError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise NeuratlasError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return build_config(tp, value, where=where)
    return value


def _parse_literal(s: str) -> Any:
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return s


def _parse_sequence(s: str) -> list[Any]:
    s = s.strip()
    if s.startswith("["):
        try:
            return list(json.loads(s))
        except json.JSONDecodeError:
            raise NeuratlasError(f"cannot read {s!r} as a list") from None
    return [p.strip() for p in s.strip("()").split(",") if p.strip()]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def unknown_key_error(key: str, valid: list[str], where: str) -> NeuratlasError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return NeuratlasError(f"{where}: unknown option {key!r}.{hint} Valid options: {', '.join(sorted(valid))}")


def check_range(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a finite number in the range (``None`` passes
    when ``optional``). Config dataclasses call it from ``__post_init__`` for each numeric option, so a bad
    value is refused at the config boundary, before any work starts."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    ):
        left = "-inf" if lo is None else str(lo)
        right = "inf" if hi is None else str(hi)
        allowed = f"{'(' if lo_open or lo is None else '['}{left}, {right}{')' if hi_open or hi is None else ']'}"
        raise ValueError(f"{name} must be in {allowed}, got {value!r}")


def build_config(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``values``, coercing types and rejecting unknown keys."""
    hints = field_types(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise unknown_key_error(key, names, where or cls.__name__)
        kwargs[key] = coerce(value, hints[key], f"{where or cls.__name__}.{key}")
        if key.endswith("batch_size") and isinstance(kwargs[key], int) and kwargs[key] < 1:
            raise NeuratlasError(f"{where or cls.__name__}.{key}: a batch size must be ≥ 1, got {kwargs[key]}")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise NeuratlasError(f"{where or cls.__name__}: {e}") from None
    except ValueError as e:  # __post_init__ validation
        raise NeuratlasError(f"{where or cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> Any:
    """A JSON-serialisable view of a (possibly nested) config."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def parse_overrides(args: list[str]) -> dict[str, str]:
    """``["--optimizer.lr", "3e-4", "--model.depth=50", "--trainer.compile"]`` -> {"optimizer.lr": "3e-4", ...}.

    A flag with no value means ``true``.
    """
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise NeuratlasError(f"unexpected argument {a!r}: overrides look like --section.key value")
        key = a[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not (args[i + 1].startswith("--") and not _is_number(args[i + 1])):
            value = args[i + 1]
            i += 2
        else:
            value = "true"
            i += 1
        if "." not in key:
            raise NeuratlasError(f"override --{key}: expected --section.key (e.g. --optimizer.lr 3e-4)")
        out[key] = value
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
