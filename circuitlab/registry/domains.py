"""Value kinds and domains: the type system of registry functions.

Numeric kinds form a chain BOOL < INT < REAL: a boolean column is also an integer column, and any
integer is also real. Grids are batches of 2-D integer colour arrays, the representation of the
grid tasks (`circuitlab.tasks.grid`). Numeric values are carried as float64 arrays (exact for
integers below 2**53); grids as int64 arrays of shape (n, H, W).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class RegistryError(ValueError):
    """A user mistake with the registry (bad name, clash, bad input); says what is allowed."""


class Kind(StrEnum):
    BOOL = "bool"
    INT = "int"
    REAL = "real"
    GRID = "grid"

    @property
    def numeric(self) -> bool:
        return self is not Kind.GRID


_ORDER = {Kind.BOOL: 0, Kind.INT: 1, Kind.REAL: 2}


def join(*kinds: Kind) -> Kind | None:
    """Smallest kind containing all of `kinds` (None when numeric and grid are mixed)."""
    if all(k is Kind.GRID for k in kinds):
        return Kind.GRID
    if any(k is Kind.GRID for k in kinds):
        return None
    return max(kinds, key=_ORDER.__getitem__)


def is_subkind(a: Kind, b: Kind) -> bool:
    """True when every value of kind `a` is a valid value of kind `b`."""
    if a is Kind.GRID or b is Kind.GRID:
        return a is b
    return _ORDER[a] <= _ORDER[b]


@dataclass(frozen=True)
class Domain:
    """A kind with optional bounds: Z[1..7], R[-100, 100], Z_113, B, Grid[3x3, 10 colours]."""

    kind: Kind
    lo: float | None = None
    hi: float | None = None
    modulus: int | None = None
    shape: tuple[int, int] | None = None  # grids only
    colours: int | None = None  # grids only

    def __str__(self) -> str:
        if self.kind is Kind.BOOL:
            return "B"
        if self.kind is Kind.GRID:
            shape = f"{self.shape[0]}x{self.shape[1]}" if self.shape else "HxW"
            return f"Grid[{shape}" + (f", {self.colours} colours]" if self.colours else "]")
        if self.modulus is not None:
            return f"Z_{self.modulus}"
        letter = "Z" if self.kind is Kind.INT else "R"
        if self.lo is None or self.hi is None:
            return letter
        if self.kind is Kind.INT:
            return f"Z[{int(self.lo)}..{int(self.hi)}]"
        return f"R[{self.lo:g}, {self.hi:g}]"

    def to_dict(self) -> dict:
        out: dict = {"kind": self.kind.value}
        for key in ("lo", "hi", "modulus", "colours"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.shape is not None:
            out["shape"] = list(self.shape)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Domain:
        try:
            kind = Kind(data["kind"])
        except (KeyError, ValueError):
            kinds = [k.value for k in Kind]
            raise RegistryError(f"domain needs a kind in {kinds}, got {data!r}") from None
        shape = tuple(data["shape"]) if data.get("shape") is not None else None
        return cls(
            kind, data.get("lo"), data.get("hi"), data.get("modulus"), shape, data.get("colours")
        )

    @classmethod
    def infer(cls, values: np.ndarray) -> Domain:
        """The tightest domain of observed values: B for {0, 1}, Z[lo..hi] for integers, else R."""
        values = np.asarray(values)
        if values.ndim == 3:
            return cls(
                Kind.GRID,
                shape=(values.shape[1], values.shape[2]),
                colours=int(values.max()) + 1 if values.size else None,
            )
        lo, hi = float(values.min()), float(values.max())
        if np.all((values == 0) | (values == 1)):
            return cls(Kind.BOOL, 0.0, 1.0)
        if np.all(values == np.round(values)):
            return cls(Kind.INT, lo, hi)
        return cls(Kind.REAL, lo, hi)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` fresh values from the domain (for probes); needs bounds for numeric kinds."""
        if self.kind is Kind.BOOL:
            return rng.integers(0, 2, n).astype(np.float64)
        if self.kind is Kind.GRID:
            if self.shape is None or self.colours is None:
                raise RegistryError(f"cannot sample grids from {self} without shape and colours")
            return rng.integers(0, self.colours, (n, *self.shape))
        if self.modulus is not None:
            return rng.integers(0, self.modulus, n).astype(np.float64)
        if self.lo is None or self.hi is None:
            raise RegistryError(f"cannot sample from unbounded domain {self}")
        if self.kind is Kind.INT:
            return rng.integers(int(self.lo), int(self.hi) + 1, n).astype(np.float64)
        return rng.uniform(self.lo, self.hi, n)


@dataclass(frozen=True)
class Input:
    """A named, typed input of a function."""

    name: str
    domain: Domain

    def to_dict(self) -> dict:
        return {"name": self.name, "domain": self.domain.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Input:
        return cls(str(data["name"]), Domain.from_dict(data["domain"]))


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(name: str, what: str = "function name") -> str:
    """Names are identifiers (they appear inside expressions); refuse anything else."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise RegistryError(f"{what} must be an identifier like KE or total_energy, got {name!r}")
    return name
