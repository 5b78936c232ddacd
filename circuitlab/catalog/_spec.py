"""Declarative field specs: how each record field is validated, dumped to JSON and loaded back.

A record dataclass declares every field with `fld(spec, ...)`; `dump` walks the fields, validates
and returns plain JSON data (the form that is hashed and stored), `load` does the reverse from a
JSON object and refuses unknown or missing fields. Keeping this in one place means every record
type gets the same error messages (they name the dotted field path) and the same normalisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from circuitlab.catalog import _check as check
from circuitlab.catalog.errors import RecordError

T = TypeVar("T")


class Spec:
    """A pair of functions (value, path) -> value: `dump` for Python -> JSON, `load` back."""

    def __init__(
        self, dump: Callable[[Any, str], Any], load: Callable[[Any, str], Any] | None = None
    ):
        self.dump = dump
        self.load = load or dump


def prim(fn: Callable[..., Any], **kw: Any) -> Spec:
    return Spec(lambda v, p: fn(v, p, **kw))


def optional(spec: Spec) -> Spec:
    return Spec(
        lambda v, p: None if v is None else spec.dump(v, p),
        lambda v, p: None if v is None else spec.load(v, p),
    )


def listof(spec: Spec) -> Spec:
    return Spec(
        lambda v, p: check.items(v, p, spec.dump), lambda v, p: check.items(v, p, spec.load)
    )


def nested(cls: type) -> Spec:
    def _dump(value: Any, path: str) -> Any:
        if isinstance(value, dict):  # accept plain dicts too, as JSON would give them
            value = load(cls, value, path)
        if not isinstance(value, cls):
            raise RecordError(path, f"expected {cls.__name__}, got {type(value).__name__}")
        return dump(value, path)

    return Spec(_dump, lambda v, p: load(cls, v, p))


def fld(spec: Spec, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    kw: dict[str, Any] = {"metadata": {"spec": spec}}
    if default is not dataclasses.MISSING:
        kw["default"] = default
    if factory is not dataclasses.MISSING:
        kw["default_factory"] = factory
    return dataclasses.field(**kw)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class Fast(Exception):
    """Raised by a fast-path validator to hand over to the slow one, which names the field."""


def fast(slow: Spec, dump_fast: Callable[[Any], Any]) -> Spec:
    """`slow`, with a fast path for big lists (a circuit's edges): `dump_fast(value)` returns
    the JSON form or raises `Fast`, and then `slow` runs to produce the precise error."""

    def _dump(value: Any, path: str) -> Any:
        try:
            return dump_fast(value)
        except Fast:
            return slow.dump(value, path)

    return Spec(_dump, slow.load)


_FIELDS: dict[type, tuple[list[tuple[str, Spec]], list[str]]] = {}


def _fields(cls: type) -> tuple[list[tuple[str, Spec]], list[str]]:
    found = _FIELDS.get(cls)
    if found is None:
        fields = dataclasses.fields(cls)
        required = [
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        found = _FIELDS[cls] = ([(f.name, f.metadata["spec"]) for f in fields], required)
    return found


def dump(obj: Any, path: str = "") -> dict[str, Any]:
    """Validate `obj` and return its JSON form; cross-field checks run in `obj._check`."""
    out: dict[str, Any] = {}
    for name, spec in _fields(type(obj))[0]:
        out[name] = spec.dump(getattr(obj, name), _join(path, name))
    extra = getattr(obj, "_check", None)
    if extra is not None:
        extra(out, path)
    return out


def load(cls: type[T], data: Any, path: str = "") -> T:
    specs, required = _fields(cls)
    check.known_keys(data, path, [name for name, _ in specs], required)
    kwargs = {
        name: spec.load(data[name], _join(path, name)) for name, spec in specs if name in data
    }
    return cls(**kwargs)


def canonical_json(data: Any) -> str:
    """The one JSON text of `data`: sorted keys, no spaces, UTF-8 characters kept, no NaN."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def content_hash(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()
