"""Examples: input/output rows for discovery, validated with messages a user can act on."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import math
import os
import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
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
    renamed: tuple[tuple[str, str], ...] = ()  # (CSV header, identifier) for renamed columns

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
        """A CSV with a header; the output is the named column (default: the last one).

        Read as UTF-8 with or without a byte-order mark (Excel writes one). Headers that are
        not identifiers (`mass (kg)`) are renamed to identifiers (`mass_kg`), since columns
        appear in expressions; `renamed` records each change. `output` may name a column by
        its header or by its identifier. Every message about a row names its line in the file
        (1-based, the header is line 1).
        """
        records = _read_csv(path)
        if len(records) < 2:
            raise RegistryError(f"{path}: needs a header row and at least one data row")
        header = [h.strip() for h in records[0][1]]
        idents = _identifiers(header, path)
        for line, row in records[1:]:
            if len(row) != len(header):
                raise RegistryError(
                    f"{path}: line {line} has {len(row)} values, the header has {len(header)}"
                )
        out = output if output is not None else header[-1]
        if out in header:
            j = header.index(out)
        elif out in idents:
            j = idents.index(out)
        else:
            raise RegistryError(f"{path}: no column {out!r}; columns are {header}")
        values = []
        for line, row in records[1:]:
            try:
                values.append([float(c) for c in row])
            except ValueError:
                c = next(c for c, cell in enumerate(row) if not _is_float(cell))
                what = "an empty value" if not row[c].strip() else f"a non-numeric value {row[c]!r}"
                raise RegistryError(
                    f"{path}: line {line} has {what} in column {header[c]!r}"
                ) from None
            for c, v in enumerate(values[-1]):
                if not math.isfinite(v):
                    role = "outputs" if c == j else "inputs"
                    raise RegistryError(
                        f"{path}: line {line} has {row[c].strip()!r} in column {header[c]!r}: "
                        f"{role} must be finite"
                    )
        data = np.array(values, dtype=np.float64)
        names = [h for i, h in enumerate(idents) if i != j]
        examples = cls.from_arrays(
            np.delete(data, j, axis=1), data[:, j], names, output_name=idents[j]
        )
        renamed = tuple((h, i) for h, i in zip(header, idents, strict=True) if h != i)
        return replace(examples, renamed=renamed)


def _read_csv(path: str | os.PathLike[str]) -> list[tuple[int, list[str]]]:
    """The non-blank records of a CSV file, each with the line it starts on (1-based)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise RegistryError(f"no such file: {path}") from None
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # positions count from after the byte-order mark
        line = raw.removeprefix(codecs.BOM_UTF8)[: exc.start].count(b"\n") + 1
        raise RegistryError(
            f"{path}: line {line} is not UTF-8 text; save the file as CSV UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            if any(c.strip() for c in row):
                records.append((start, row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise RegistryError(f"{path}: line {start}: {exc}") from None
    return records


def unused_name(stem: str, taken: Collection[str]) -> str:
    """`stem`, with underscores put before it until no column in `taken` has that name (a
    derived table's new column beside the original ones)."""
    out = stem
    while out in taken:
        out = "_" + out
    return out


def _identifiers(header: Sequence[str], path: str | os.PathLike[str]) -> list[str]:
    """Each header as an identifier, deterministically: kept when it is one already, else
    accents dropped, runs of other characters made `_` (`mass (kg)` -> mass_kg), `col_`
    before a leading digit, and `colN` (N its 1-based position) when nothing is left.
    Refuses two headers that end up the same."""
    out: list[str] = []
    for pos, h in enumerate(header, start=1):
        if _is_identifier(h):
            ident = h
        else:
            ascii_ = unicodedata.normalize("NFKD", h).encode("ascii", "ignore").decode()
            ident = re.sub(r"[^A-Za-z0-9_]+", "_", ascii_).strip("_")
            ident = f"col_{ident}" if ident[:1].isdigit() else ident or f"col{pos}"
        if ident in out:
            first = header[out.index(ident)]
            if first == h:
                raise RegistryError(f"{path}: the header names column {h!r} twice")
            raise RegistryError(
                f"{path}: columns {first!r} and {h!r} both become the identifier {ident}; "
                "rename one of them"
            )
        out.append(ident)
    return out


def _is_identifier(text: str) -> bool:
    try:
        check_name(text)
    except RegistryError:
        return False
    return True


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
