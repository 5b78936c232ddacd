"""Value types of composition: what flows between circuits, models and symbolic functions.

One small type language covers every callable in the library:

- `Z_113`: integers mod 113 (a modular task's operands and answer; the registry's Z_p)
- `S_5`: permutations of 5 elements, as their lexicographic rank 0..119 (the permutation tasks)
- `grid[3x3]:Z_3`: 3 x 3 grids of 3 colours (the grid tasks; the registry's Grid[3x3, 3 colours])
- `Z`, `Z[0..9]`, `R`, `B`: unbounded or bounded integers, reals, booleans (registry functions)
- `tokens[114]`: raw token ids of a task with no better description

A value of a type is carried as a numpy array: scalars as int64 (float64 for `R`) of any batch
shape, grids as int64 of shape (..., H, W). `ValueType.parse` reads both the interface notation
and the registry's, so a circuit's port and a registry function's input compare directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

KINDS = ("mod", "perm", "grid", "int", "real", "bool", "tokens")


class CompositionError(ValueError):
    """A user mistake in composition: a value outside a domain, a type mismatch, a bad program.
    The message names the port or call, what was given and what is allowed."""


class DomainError(CompositionError):
    """A value outside the domain of the port it was passed to."""


_MOD = re.compile(r"Z_(\d+)")
_PERM = re.compile(r"S_(\d+)")
_GRID = re.compile(r"grid\[(\d+)x(\d+)\]:Z_(\d+)")
_REG_GRID = re.compile(r"Grid\[(\d+)x(\d+)(?:, (\d+) colours)?\]")
_RANGE = re.compile(r"Z\[(-?\d+)\.\.(-?\d+)\]")
_TOKENS = re.compile(r"tokens\[(\d+)\]")


@dataclass(frozen=True)
class ValueType:
    """A value domain. `n`: modulus (mod), degree (perm), colours (grid), vocabulary (tokens);
    `shape`: (H, W) of a grid; `lo`/`hi`: bounds of a bounded integer range."""

    kind: str
    n: int | None = None
    shape: tuple[int, int] | None = None
    lo: int | None = None
    hi: int | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> ValueType:
        """Read `Z_113`, `S_5`, `grid[3x3]:Z_3`, `Grid[3x3, 3 colours]`, `Z[0..9]`, `Z`, `R`,
        `B`, `tokens[114]`."""
        text = text.strip()
        if m := _MOD.fullmatch(text):
            return cls("mod", int(m[1]))
        if m := _PERM.fullmatch(text):
            return cls("perm", int(m[1]))
        if m := _GRID.fullmatch(text):
            return cls("grid", int(m[3]), (int(m[1]), int(m[2])))
        if m := _REG_GRID.fullmatch(text):
            return cls("grid", int(m[3]) if m[3] else None, (int(m[1]), int(m[2])))
        if m := _RANGE.fullmatch(text):
            return cls("int", lo=int(m[1]), hi=int(m[2]))
        if m := _TOKENS.fullmatch(text):
            return cls("tokens", int(m[1]))
        simple = {"Z": "int", "R": "real", "B": "bool"}
        if text in simple:
            return cls(simple[text])
        raise CompositionError(
            f"unknown domain {text!r}; expected e.g. Z_113, S_5, grid[3x3]:Z_3, Z[0..9], Z, R, B"
        )

    @classmethod
    def of(cls, value: ValueType | str) -> ValueType:
        return value if isinstance(value, ValueType) else cls.parse(value)

    @classmethod
    def from_registry(cls, domain) -> ValueType:
        """The type of a registry `Domain` (circuitlab.registry.Domain)."""
        from circuitlab.registry import Kind

        if domain.kind is Kind.GRID:
            return cls("grid", domain.colours, tuple(domain.shape) if domain.shape else None)
        if domain.modulus is not None:
            return cls("mod", int(domain.modulus))
        if domain.kind is Kind.BOOL:
            return cls("bool")
        if domain.kind is Kind.INT:
            if domain.lo is not None and domain.hi is not None:
                return cls("int", lo=int(domain.lo), hi=int(domain.hi))
            return cls("int")
        return cls("real")

    # -- views --------------------------------------------------------------------------------

    def __str__(self) -> str:
        if self.kind == "mod":
            return f"Z_{self.n}"
        if self.kind == "perm":
            return f"S_{self.n}"
        if self.kind == "grid":
            h, w = self.shape or ("H", "W")
            return f"grid[{h}x{w}]:Z_{self.n if self.n else 'K'}"
        if self.kind == "tokens":
            return f"tokens[{self.n}]"
        if self.kind == "int" and self.lo is not None:
            return f"Z[{self.lo}..{self.hi}]"
        return {"int": "Z", "real": "R", "bool": "B"}[self.kind]

    def __repr__(self) -> str:
        return f"ValueType({str(self)!r})"

    @property
    def is_grid(self) -> bool:
        return self.kind == "grid"

    @property
    def item_ndim(self) -> int:
        """Dimensions of one value: 2 for a grid, 0 for a scalar."""
        return 2 if self.is_grid else 0

    @property
    def size(self) -> int | None:
        """Number of distinct values (None when unbounded)."""
        if self.kind in ("mod", "tokens"):
            return self.n
        if self.kind == "perm":
            return int(np.prod(np.arange(1, self.n + 1)))
        if self.kind == "bool":
            return 2
        if self.kind == "int" and self.lo is not None:
            return self.hi - self.lo + 1
        if self.kind == "grid" and self.n and self.shape:
            return self.n ** (self.shape[0] * self.shape[1])
        return None

    def values(self) -> np.ndarray:
        """Every value of a finite scalar type, in order."""
        if self.is_grid or self.size is None:
            raise CompositionError(f"{self} has no enumerable list of values")
        start = self.lo if self.kind == "int" else 0
        return np.arange(start, start + self.size, dtype=np.int64)

    def accepts(self, other: ValueType) -> bool:
        """True when every value of `other` is a valid value here (outputs flow into inputs)."""
        if self == other:
            return True
        if self.kind == "real":
            return other.kind in ("mod", "int", "bool", "real")
        if self.kind == "int":
            if other.kind not in ("mod", "int", "bool"):
                return False
            if self.lo is None:
                return True
            lo, hi = bounds(other)
            return lo is not None and self.lo <= lo and hi <= self.hi
        if self.kind == "grid" and other.kind == "grid":
            shape_ok = self.shape is None or self.shape == other.shape
            colours_ok = self.n is None or (other.n is not None and other.n <= self.n)
            return shape_ok and colours_ok
        return False

    # -- values -------------------------------------------------------------------------------

    def check(self, value, port: str) -> np.ndarray:
        """`value` (int, list, numpy or torch array) as a numpy array of this type; a value
        outside the domain raises DomainError naming the port, the domain and the value."""
        arr = _as_array(value, port)
        if self.kind == "real":
            if arr.dtype.kind not in "iufb":
                raise DomainError(f"{port}: expected numbers ({self}), got {arr.dtype} values")
            return arr.astype(np.float64)
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                bad = arr.flat[int(np.argmax(~np.isfinite(arr) | (arr != np.round(arr))))]
                raise DomainError(f"{port}: {bad!r} is not an integer; {port} takes {self}")
            arr = arr.astype(np.int64)
        elif arr.dtype.kind not in "iub":
            raise DomainError(f"{port}: expected integers ({self}), got {arr.dtype} values")
        arr = arr.astype(np.int64, copy=False)
        wrong_shape = self.shape is not None and arr.shape[-2:] != self.shape
        if self.is_grid and (arr.ndim < 2 or wrong_shape):
            raise DomainError(
                f"{port}: expected grids of shape {self.shape} ({self}), got an array of "
                f"shape {arr.shape}"
            )
        lo, hi = bounds(self)
        if arr.size and lo is not None:
            bad = (arr < lo) | (arr > hi)
            if bad.any():
                raise DomainError(
                    f"{port}: {int(arr[bad].flat[0])} is outside {self} (values {lo}..{hi})"
                )
        return arr


def bounds(t: ValueType) -> tuple[int | None, int | None]:
    """Smallest and largest valid scalar (a grid's cell), or (None, None) when unbounded."""
    if t.kind in ("mod", "tokens", "grid"):
        return (0, t.n - 1) if t.n else (None, None)
    if t.kind == "perm":
        return 0, t.size - 1
    if t.kind == "bool":
        return 0, 1
    if t.kind == "int" and t.lo is not None:
        return t.lo, t.hi
    return None, None


def _as_array(value, port: str) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise DomainError(f"{port}: cannot read {type(value).__name__} as values: {exc}") from None
    if arr.dtype == object:
        raise DomainError(f"{port}: expected numbers or arrays of numbers, got {value!r:.60}")
    return arr
