"""Field validators shared by the record types.

Each takes the value and its dotted field path, returns the normalised value (ints as int,
reals as float, strings checked for valid Unicode) and raises `RecordError` naming the field.
NaN and infinities are refused everywhere: JSON cannot carry them, SQLite turns NaN into NULL,
and Neo4j keeps it, so accepting them would make the backends disagree.

String lengths are bounded only inside `limits()`, which the catalog enters for what it is
given to store (puts and imports): records stored before the limits existed still load, show
and export.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

from circuitlab.catalog.errors import RecordError

T = TypeVar("T")

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_SPACE_RE = re.compile(r"\s")

LABEL_LEN = 1_000
"""Longest label, name, path, signature or other one-line text the catalog accepts."""
TEXT_LEN = 10_000
"""Longest description, expression, or string inside free-form JSON the catalog accepts."""

_LIMITS: ContextVar[bool] = ContextVar("circuitlab_catalog_limits", default=False)


@contextmanager
def limits() -> Iterator[None]:
    """Enforce every string's `max_len` inside the block (see the module docstring)."""
    token = _LIMITS.set(True)
    try:
        yield
    finally:
        _LIMITS.reset(token)


def too_long(value: str, max_len: int) -> bool:
    return len(value) > max_len and _LIMITS.get()


def string(
    value: Any, field: str, *, empty: bool = True, max_len: int = LABEL_LEN, spaces: bool = True
) -> str:
    if not isinstance(value, str):
        raise RecordError(field, f"expected a string, got {type(value).__name__}")
    if not empty and not value:
        raise RecordError(field, "must not be empty")
    if too_long(value, max_len):
        raise RecordError(
            field, f"is {len(value):,} characters long; at most {max_len:,} are allowed"
        )
    if not spaces and _SPACE_RE.search(value):
        raise RecordError(field, f"must not contain whitespace, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(field, "is not valid Unicode (lone surrogate)") from None
    return value


def opt_string(value: Any, field: str, **kw: Any) -> str | None:
    return None if value is None else string(value, field, **kw)


def name(value: Any, field: str) -> str:
    """An identifier-like key (metric names, tags): letters, digits, underscore."""
    value = string(value, field, empty=False, max_len=200)
    if not NAME_RE.match(value):
        raise RecordError(
            field, f"must be letters, digits and '_' (not starting with a digit), got {value!r}"
        )
    return value


def record_id(value: Any, field: str) -> str:
    """A reference to another record: a 64-hex content id, or a task spec (no whitespace)."""
    if isinstance(value, str) and HEX64_RE.match(value):
        return value
    return string(value, field, empty=False, max_len=300, spaces=False)


def integer(value: Any, field: str, *, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise RecordError(field, f"expected an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if lo is not None and value < lo:
        raise RecordError(field, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise RecordError(field, f"must be <= {hi}, got {value}")
    return value


def opt_integer(value: Any, field: str, **kw: Any) -> int | None:
    return None if value is None else integer(value, field, **kw)


def real(value: Any, field: str, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise RecordError(field, f"expected a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise RecordError(
            field, f"must be a finite number, got {value} (use null for a missing value)"
        )
    if lo is not None and value < lo:
        raise RecordError(field, f"must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise RecordError(field, f"must be <= {hi}, got {value}")
    return value


def opt_real(value: Any, field: str, **kw: Any) -> float | None:
    return None if value is None else real(value, field, **kw)


def choice(value: Any, field: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise RecordError(field, f"must be one of {', '.join(allowed)}; got {value!r}")
    return value


def items(value: Any, field: str, check: Callable[[Any, str], T]) -> list[T]:
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, (list, tuple)):
        raise RecordError(field, f"expected a list, got {type(value).__name__}")
    return [check(v, f"{field}[{i}]") for i, v in enumerate(value)]


def unique(values: list[str], field: str) -> list[str]:
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise RecordError(f"{field}[{i}]", f"duplicate {v!r}")
        seen.add(v)
    return values


def real_map(value: Any, field: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise RecordError(
            field, f"expected an object of name -> number, got {type(value).__name__}"
        )
    return {name(k, f"{field} key"): real(v, f"{field}.{k}") for k, v in value.items()}


def json_value(value: Any, field: str, depth: int = 0) -> Any:
    """Free-form JSON (config, details): str keys, finite numbers, valid Unicode, depth <= 32."""
    if depth > 32:
        raise RecordError(field, "nested deeper than 32 levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return string(value, field, max_len=TEXT_LEN)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return real(value, field)
    if isinstance(value, (list, tuple)):
        return [json_value(v, f"{field}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise RecordError(field, f"object keys must be strings, got {k!r}")
            out[string(k, f"{field} key")] = json_value(v, f"{field}.{k}", depth + 1)
        return out
    raise RecordError(field, f"not JSON data: {type(value).__name__}")


def json_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecordError(field, f"expected an object, got {type(value).__name__}")
    return json_value(value, field)


def known_keys(data: Any, field: str, allowed: Iterable[str], required: Iterable[str] = ()) -> dict:
    """Check a dict read from JSON has only known keys and all required ones."""
    if not isinstance(data, dict):
        raise RecordError(field or "record", f"expected an object, got {type(data).__name__}")
    allowed = set(allowed)
    for key in data:
        if key not in allowed:
            raise RecordError(f"{field}.{key}" if field else key, "unknown field")
    for key in required:
        if key not in data:
            raise RecordError(f"{field}.{key}" if field else key, "missing required field")
    return data
