"""Examples: input/output rows for discovery, validated with messages a user can act on."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from circuitlab.registry.domains import Domain, RegistryError, check_name


@dataclass(frozen=True)
class Examples:
    """n rows of k numeric input columns and one numeric output.

    X: (n, k) float64 inputs; y: (n,) float64 outputs; names: k column names.
    """

    X: np.ndarray
    y: np.ndarray
    names: tuple[str, ...]
    output_name: str = "y"

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def k(self) -> int:
        return self.X.shape[1]

    def domains(self) -> list[Domain]:
        return [Domain.infer(self.X[:, j]) for j in range(self.k)]

    def data_hash(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.X).tobytes())
        h.update(np.ascontiguousarray(self.y).tobytes())
        h.update(",".join(self.names).encode())
        return h.hexdigest()

    @classmethod
    def coerce(cls, examples: Any, names: Sequence[str] | None = None) -> Examples:
        """Accept Examples, a pair (X, y) of arrays, or a sequence of (inputs, output) rows."""
        if isinstance(examples, Examples):
            return examples
        if isinstance(examples, tuple) and len(examples) == 2 and not _is_row(examples):
            X, y = examples
            return cls.from_arrays(X, y, names)
        rows = list(examples)
        if not rows:
            raise RegistryError("no examples given")
        inputs, outputs = [], []
        for i, row in enumerate(rows):
            if not (isinstance(row, Sequence) and len(row) == 2):
                raise RegistryError(f"example {i} must be a pair (inputs, output), got {row!r}")
            ins = (
                row[0] if isinstance(row[0], Sequence) and not isinstance(row[0], str) else [row[0]]
            )
            inputs.append(list(ins))
            outputs.append(row[1])
        return cls.from_arrays(inputs, outputs, names)

    @classmethod
    def from_arrays(
        cls, X: Any, y: Any, names: Sequence[str] | None = None, output_name: str = "y"
    ) -> Examples:
        if isinstance(X, list | tuple):
            lengths = {len(r) if isinstance(r, Sequence) else 1 for r in X}
            if len(lengths) > 1:
                raise RegistryError(f"rows have unequal numbers of inputs: {sorted(lengths)}")
        Xa, ya = _numeric(X, "inputs"), _numeric(y, "outputs")
        if Xa.ndim == 1:
            Xa = Xa[:, None]
        if Xa.ndim != 2 or ya.ndim != 1:
            raise RegistryError(
                f"inputs must be (rows, columns) and outputs one value per row; "
                f"got shapes {Xa.shape} and {ya.shape}"
            )
        if len(Xa) != len(ya):
            raise RegistryError(f"{len(Xa)} input rows but {len(ya)} outputs")
        bad = np.flatnonzero(~np.isfinite(ya))
        if bad.size:
            raise RegistryError(f"output of row {bad[0]} is {ya[bad[0]]}: outputs must be finite")
        bad_in = np.argwhere(~np.isfinite(Xa))
        if bad_in.size:
            r, c = bad_in[0]
            raise RegistryError(f"input {c} of row {r} is {Xa[r, c]}: inputs must be finite")
        k = Xa.shape[1]
        if k == 0:
            raise RegistryError(
                "no input columns: a function needs at least one input beside its output column"
            )
        names = tuple(names) if names is not None else tuple(f"x{i}" for i in range(k))
        if len(names) != k:
            raise RegistryError(f"{len(names)} column names for {k} input columns")
        for nm in names:
            check_name(nm, "column name")
        if len(set(names)) != k:
            raise RegistryError(f"column names must be distinct, got {list(names)}")
        if len(ya) < k + 1:
            raise RegistryError(
                f"{len(ya)} rows is fewer than the unknowns: {k} input columns "
                f"need at least {k + 1} rows"
            )
        return cls(Xa, ya, names, check_name(output_name, "output name"))

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], output: str | None = None) -> Examples:
        """A CSV with a header; the output is the named column (default: the last one)."""
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
        except FileNotFoundError:
            raise RegistryError(f"no such file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise RegistryError(f"cannot read {path}: {exc}") from None
        if len(rows) < 2:
            raise RegistryError(f"{path}: needs a header row and at least one data row")
        header = [h.strip() for h in rows[0]]
        for i, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise RegistryError(
                    f"{path}: line {i} has {len(row)} values, the header has {len(header)}"
                )
        out = output if output is not None else header[-1]
        if out not in header:
            raise RegistryError(f"{path}: no column {out!r}; columns are {header}")
        j = header.index(out)
        values = []
        for i, row in enumerate(rows[1:], start=2):
            try:
                values.append([float(c) for c in row])
            except ValueError:
                bad = next(c for c in row if not _is_float(c))
                raise RegistryError(f"{path}: line {i} has a non-numeric value {bad!r}") from None
        data = np.array(values, dtype=np.float64)
        names = [h for i, h in enumerate(header) if i != j]
        return cls.from_arrays(np.delete(data, j, axis=1), data[:, j], names, output_name=out)


def _is_row(obj: tuple) -> bool:
    """(inputs, output) with a scalar output is one row, not an (X, y) pair of arrays."""
    return np.ndim(obj[1]) == 0


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _numeric(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise RegistryError(f"{what} must be numbers; got a non-numeric value") from None
    return arr
