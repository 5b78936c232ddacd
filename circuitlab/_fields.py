"""Type checks for config fields that arrive from JSON files and `--set` strings.

A dataclass annotation is not a check: `d_model: int` happily holds "abc" or 128.5, and the
mistake surfaces as a traceback deep inside training. Configs call these in `__post_init__`
so a bad value is refused where it enters, with its name.
"""

from __future__ import annotations

import math
from typing import Any


def integer(
    name: str, value: Any, error: type[Exception], lo: int = 0, hi: int | None = None
) -> int:
    """`value` as an int in [lo, hi]; integral floats (2.0) pass, bools and 2.5 do not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi:,}]"
        raise error(f"{name} must be {bound}, got {value!r}")
    return value


def number(
    name: str,
    value: Any,
    error: type[Exception],
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """`value` as a finite float in the interval; NaN, inf, strings and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{name} must be finite, got {value!r}")
    below = value <= lo if lo_open else value < lo
    above = value >= hi if hi_open else value > hi
    if below or above:
        if math.isinf(hi):
            bound = f"{'>' if lo_open else '>='} {lo:g}"
        else:
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            bound = f"in {left}{lo:g}, {hi:g}{right}"
        raise error(f"{name} must be {bound}, got {value!r}")
    return value


def text(name: str, value: Any, error: type[Exception], max_len: int = 200) -> str:
    if not isinstance(value, str):
        raise error(f"{name} must be a string, got {value!r}")
    if len(value) > max_len:
        raise error(f"{name} must be at most {max_len} characters, got {len(value):,}")
    return value
