"""Strict conversion of parsed JSON/YAML into frozen dataclasses.

Used for answer_url action documents and for configuration files alike, so both
report errors the same way: a list of (path, reason) pairs, all of them at once,
before anything runs. Types are checked exactly (a bool is not an int, a string
is not a number); unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


@dataclass(frozen=True)
class Detail:
    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason}


class ValidationError(Exception):
    def __init__(self, details: list[Detail], message: str = "invalid") -> None:
        self.details = details
        super().__init__(message + ": " + "; ".join(f"{d.path}: {d.reason}" for d in details))


class _Refused(ValueError):
    """What parse_json's hooks refuse, with the reason to report."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise _Refused(f"number {text[:32]} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return doc


def parse_json(raw: bytes | str, message: str = "invalid body") -> Any:
    """JSON from someone we do not trust (an answer_url, a REST client), or ValidationError.

    Stricter than json.loads, which takes NaN, Infinity and 1e999 (not JSON, or not a
    number we can use), keeps the last of two equal keys (two readers of one document could
    act on different values), and fails outside its documented errors: a deep nest raises
    RecursionError, an integer of more than 4,300 digits a bare ValueError."""
    try:
        # UTF-8 only (RFC 8259, 8.1): given bytes, json.loads would guess UTF-16 or UTF-32 too
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite,
                          object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        reason = f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except UnicodeDecodeError:
        reason = "malformed JSON: not UTF-8"
    except RecursionError:
        reason = "malformed JSON: nested too deeply"
    except _Refused as exc:
        reason = f"malformed JSON: {exc}"
    except ValueError:  # int() refusing a number of more than 4,300 digits
        reason = "malformed JSON: a number too long"
    raise ValidationError([Detail("", reason)], message) from None


Check = Callable[[Any], "str | None"]


def checked(*checks: Check, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with value checks (each returns an error reason or None)."""
    return dataclasses.field(default=default, metadata={"checks": checks}, **kw)


def pattern(regex: str, what: str) -> Check:
    rx = re.compile(regex)
    return lambda v: None if rx.fullmatch(v) else f"must be {what}"


# answer_url, event_url, fallback_url, action_url, play and redirect urls
URL = pattern(r"https?://\S+", "an http:// or https:// URL")


def between(lo: float | None = None, hi: float | None = None) -> Check:
    def check(v: Any) -> str | None:
        if lo is not None and v < lo:
            return f"must be >= {lo}"
        if hi is not None and v > hi:
            return f"must be <= {hi}"
        return None

    return check


def length(lo: int, hi: int) -> Check:
    return lambda v: None if lo <= len(v) <= hi else f"length must be {lo} to {hi}"


_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number"}


def _type_name(tp: Any) -> str:
    return _TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, path: str, errors: list[Detail]) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(get_args(tp)):
            return None
        if len(args) == 1:
            return _convert(args[0], value, path, errors)
        for arg in args:
            trial: list[Detail] = []
            out = _convert(arg, value, path, trial)
            if not trial:
                return out
        errors.append(Detail(path, "must be one of " + ", ".join(_type_name(a) for a in args)))
        return None
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or type(value) is not type(allowed[0]):
            errors.append(Detail(path, "must be one of " + ", ".join(map(repr, allowed))))
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            errors.append(Detail(path, "must be a list"))
            return ()
        (item_tp, *_) = get_args(tp)
        return tuple(_convert(item_tp, v, f"{path}[{i}]", errors) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(Detail(path, "must be an object"))
            return {}
        _, val_tp = get_args(tp)
        return {
            str(k): _convert(val_tp, v, f"{path}.{k}", errors) for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        return build(typing.cast(type[Any], tp), value, path, errors)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    errors.append(Detail(path, f"must be {_type_name(tp)}"))
    return None


Shape = tuple[dict[str, Any], dict[str, "dataclasses.Field[Any]"]]


def _work_out(cls: type[Any]) -> Shape:
    return get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls) if f.init}


# A dataclass's resolved type hints and init fields, worked out once per class: they cannot
# change, and `get_type_hints` re-evaluates every annotation string each time (it was most of
# an answer_url document's validation). Bounded by the dataclasses defined in the code.
_SHAPES: dict[type[Any], Shape] = {}


def _shape(cls: type[Any]) -> Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        shape = _SHAPES[cls] = _work_out(cls)
    return shape


def build(cls: type[T], data: Any, path: str, errors: list[Detail]) -> T:
    """Build `cls` from `data`, appending problems to `errors` (returns a dummy on error)."""
    if not isinstance(data, dict):
        errors.append(Detail(path, "must be an object"))
        return typing.cast(T, None)
    start = len(errors)
    hints, fields = _shape(cls)
    kwargs: dict[str, Any] = {}
    sub = (lambda n: f"{path}.{n}") if path else (lambda n: n)
    for key in data:
        if key not in fields:
            errors.append(Detail(sub(str(key)), "unknown field"))
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                errors.append(Detail(sub(name), "is required"))
            continue
        before = len(errors)
        value = _convert(hints[name], data[name], sub(name), errors)
        if len(errors) == before and value is not None:
            for check in f.metadata.get("checks", ()):
                reason = check(value)
                if reason:
                    errors.append(Detail(sub(name), reason))
                    break
        kwargs[name] = value
    if len(errors) > start:
        return typing.cast(T, None)
    obj = cls(**kwargs)
    # Rules that involve several fields: a `cross_check` method returns (field, reason) pairs.
    for name, reason in getattr(obj, "cross_check", lambda: ())():
        errors.append(Detail(sub(name) if name else path, reason))
    return obj


def parse(cls: type[T], data: Any, path: str = "") -> T:
    errors: list[Detail] = []
    out = build(cls, data, path, errors)
    if errors:
        raise ValidationError(errors)
    return out
