"""Dimensional analysis: a problem in physical units made into a smaller dimensionless one.

When each column's units are known (as exponents of base dimensions: m, s, kg, ...), a
physical law y = F(x_1..x_k) can always be written y = P(x) * f(g_1, ..., g_r), where P is a
monomial of the inputs with the units of y and the g_i are dimensionless monomials, r = k minus
the rank of the units matrix (Buckingham's pi theorem; AI Feynman's first step). f has fewer
inputs than F and often a much smaller formula: m_0/sqrt(1 - v^2/c^2) becomes
m_0 * f(v/c) with f(g) = 1/sqrt(1 - g^2), cost 6 in one variable instead of 9 in three.

`reduce(units, names, output)` finds P and the g_i:
- P solves U p = u_y (U: base dimensions x columns), with free columns set to 0;
- the g_i are a basis of the null space of U (sympy's, exact rationals), scaled to integer
  exponents, each with exponent 1 on its own free column.
Which columns are free decides how the groups read. The columns of larger typical size are
taken first in the elimination, so they become the pivots and the groups read small over
large (v/c, with c the larger velocity, rather than c/v); without sizes, or on a tie, the later
column goes first. The data cannot always tell which reading gives the smaller f, so
`reductions` also gives those of two other pivot orders (later columns first, earlier columns
first), and discovery searches each. A column with no units is a group by itself.

`Reduction.table` gives the dimensionless table (g, y / P), `Reduction.lift` turns a formula of
it back into one of the original columns. The caller (`discover.search`) accepts the lifted
formula only through the usual acceptance test on the original rows.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry.domains import RegistryError
from circuitlab.registry.examples import unused_name
from circuitlab.registry.powerlaw import Alloc, Monomial, write_with


class UnitsError(RegistryError):
    """A units table that cannot be read, or a column it does not cover."""


@dataclass(frozen=True)
class Units:
    """Each variable's units as exponents of the base dimensions `base`."""

    base: tuple[str, ...]
    table: Mapping[str, tuple[Fraction, ...]]

    def of(self, name: str) -> tuple[Fraction, ...]:
        try:
            return self.table[name]
        except KeyError:
            raise UnitsError(
                f"the units table has no row for {name!r}; add one (dimensionless: all zeros)"
            ) from None

    def covers(self, names: Sequence[str]) -> bool:
        return all(n in self.table for n in names)

    @classmethod
    def read(cls, path: str | Path) -> Units:
        """A CSV table: a header row, then one row a variable: its name in the first column,
        optional text columns (a description such as "Velocity"), then one numeric column per
        base dimension (the header names it). A byte-order mark and empty trailing columns
        (as spreadsheets write them) are accepted."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UnitsError(f"cannot read the units table {path}: {exc}") from None
        rows = [r for r in csv.reader(text.splitlines()) if any(c.strip() for c in r)]
        if len(rows) < 2:
            raise UnitsError(f"{path}: the units table needs a header row and one row a variable")
        header, body = [h.strip() for h in rows[0]], rows[1:]
        width = len(header)
        while width and not header[width - 1] and all(not _cell(r, width - 1) for r in body):
            width -= 1  # empty trailing columns

        def numeric(j: int) -> bool:
            return all(_number(_cell(r, j)) is not None for r in body if _cell(r, 0))

        base_cols = [j for j in range(1, width) if numeric(j)]
        if not base_cols or base_cols != list(range(base_cols[0], width)):
            raise UnitsError(
                f"{path}: after the name (and any description) every column must be a number "
                "per base dimension"
            )
        table: dict[str, tuple[Fraction, ...]] = {}
        for line, r in enumerate(body, start=2):
            name = _cell(r, 0)
            if not name:
                continue
            if name in table:
                raise UnitsError(f"{path} line {line}: {name!r} is listed twice")
            table[name] = tuple(_number(_cell(r, j)) or Fraction(0) for j in base_cols)
        return cls(tuple(header[j] or f"d{j}" for j in base_cols), table)


def _cell(row: Sequence[str], j: int) -> str:
    return row[j].strip() if j < len(row) else ""


def _number(s: str) -> Fraction | None:
    try:
        return Fraction(s) if s else Fraction(0)
    except (ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True)
class Reduction:
    """y = prefactor(x) * f(groups(x)): the dimensionless problem of a table with units."""

    prefactor: Monomial  # over the original columns, coefficient 1
    groups: tuple[Monomial, ...]  # dimensionless monomials of the original columns
    names: tuple[str, ...]  # of the groups, as columns of the dimensionless table

    @property
    def changes(self) -> bool:
        """Whether the dimensionless problem differs from the original (fewer columns, or a
        prefactor to divide out)."""
        return any(self.prefactor.exponents) or any(
            sum(1 for a in g.exponents if a) != 1 or max(g.exponents) != 1 for g in self.groups
        )

    def table(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(groups, y / prefactor) on the rows of X."""
        with np.errstate(all="ignore"):
            G = np.stack([_value(g, X) for g in self.groups], axis=1) if self.groups else None
            yr = y / _value(self.prefactor, X)
        if G is None:  # no group: y / P is a constant
            G = np.zeros((len(y), 0))
        return G, yr

    def lift(
        self, expr: ex.Expr, consts: Mapping[str, float], inputs: Sequence[str]
    ) -> tuple[ex.Expr, dict[str, float]]:
        """The formula in the original columns of f = `expr`, whose Var(i) reads the group
        named inputs[i]: prefactor * f(groups), with f's constants and the exponents' own."""
        out = dict(consts)

        def alloc(v: float) -> ex.Const:
            key = ex.fresh_name(out, "u")
            out[key] = float(v)
            return ex.Const(key)

        by_name = dict(zip(self.names, self.groups, strict=True))
        mapping = {i: _formula(by_name[n], alloc) for i, n in enumerate(inputs)}
        body = ex.substitute(expr, mapping)
        if not any(self.prefactor.exponents):
            return body, out
        return ex.call("MUL", _formula(self.prefactor, alloc), body), out

    def render(self, names: Sequence[str]) -> str:
        """`m_0 * f(v/c)`; the prefactor alone when there is no group (y = C * P)."""
        pre = _text(self.prefactor, names)
        if not self.groups:
            return pre
        args = ", ".join(_text(g, names) for g in self.groups)
        return f"{pre} * f({args})" if pre != "1" else f"f({args})"


def _value(m: Monomial, X: np.ndarray) -> np.ndarray:
    out = np.ones(len(X))
    for j in m.columns:
        a = m.exponents[j]
        out = out * (X[:, j] ** int(a) if a.denominator == 1 else np.abs(X[:, j]) ** float(a))
    return out


def _formula(m: Monomial, alloc: Alloc) -> ex.Expr:
    return write_with(m, 1.0, None, "split", alloc)


def _text(m: Monomial, names: Sequence[str]) -> str:
    num = [names[j] + (f"^{a}" if a != 1 else "") for j in m.columns if (a := m.exponents[j]) > 0]
    den = [names[j] + (f"^{-a}" if a != -1 else "") for j in m.columns if (a := m.exponents[j]) < 0]
    top = "*".join(num) or "1"
    if not den:
        return top
    return f"{top}/{den[0]}" if len(den) == 1 else f"{top}/({'*'.join(den)})"


def reductions(
    units: Units,
    names: Sequence[str],
    output: str,
    magnitudes: Sequence[float] | None = None,
) -> list[Reduction]:
    """The distinct reductions of three pivot orders, in this order: the columns of larger
    typical size first (`magnitudes`, the median |x| of each; then the later column), the
    later columns first, the earlier columns first. The first is `reduce`'s."""
    k = len(names)
    size = list(magnitudes) if magnitudes is not None else [0.0] * k
    orders = [
        sorted(range(k), key=lambda j: (-size[j], -j)),
        list(reversed(range(k))),
        list(range(k)),
    ]
    out: list[Reduction] = []
    for order in orders:
        red = reduce(units, names, output, order=order)
        if red not in out:
            out.append(red)
    return out


def reduce(
    units: Units,
    names: Sequence[str],
    output: str,
    magnitudes: Sequence[float] | None = None,
    order: Sequence[int] | None = None,
) -> Reduction:
    """The prefactor and dimensionless groups of columns `names` for output `output` (module
    docstring). The columns taken first in the elimination become the pivots: `order` when
    given, else the columns of larger typical size first (`magnitudes`: the median |x| of
    each, when the data are at hand), so that a group reads small over large (v/c, c the
    larger velocity); on a tie, or without magnitudes, the later column first. Raises
    UnitsError when a name has no units or when no monomial of the inputs has the output's
    units (the table or the data is then not a physical law in these units)."""
    import sympy

    k = len(names)
    if order is None:
        size = list(magnitudes) if magnitudes is not None else [0.0] * k
        order = sorted(range(k), key=lambda j: (-size[j], -j))
    order = list(order)
    U = sympy.Matrix(
        [[sympy.Rational(units.of(names[j])[d]) for j in order] for d in range(len(units.base))]
    )
    b = sympy.Matrix([sympy.Rational(a) for a in units.of(output)])
    try:
        sol, params = U.gauss_jordan_solve(b)
    except ValueError:
        raise UnitsError(
            f"no product of powers of {', '.join(names)} has the units of {output}: "
            "check the units table"
        ) from None
    sol = sol.subs({p: 0 for p in params})
    prefactor = [Fraction(0)] * k
    for pos, j in enumerate(order):
        prefactor[j] = Fraction(int(sol[pos].p), int(sol[pos].q))
    groups: list[Monomial] = []
    for vec in U.nullspace():
        scale = math.lcm(*(int(sympy.Rational(v).q) for v in vec))
        exps = [Fraction(0)] * k
        for pos, j in enumerate(order):
            exps[j] = Fraction(sympy.Rational(vec[pos]) * scale)
        g = math.gcd(*(e.numerator for e in exps if e))
        groups.append(Monomial(tuple(e / g for e in exps)))
    groups.sort(key=lambda m: min(m.columns))  # in column order of their first column
    labels = _group_names(groups, names)
    return Reduction(Monomial(tuple(prefactor)), tuple(groups), labels)


def _group_names(groups: Sequence[Monomial], names: Sequence[str]) -> tuple[str, ...]:
    """A dimensionless column keeps its name; a compound group is named pi1, pi2, ... (made
    distinct from the column names)."""
    out: list[str] = []
    n = 0
    for g in groups:
        cols = g.columns
        if len(cols) == 1 and g.exponents[cols[0]] == 1:
            out.append(names[cols[0]])
            continue
        n += 1
        out.append(unused_name(f"pi{n}", [*names, *out]))
    return tuple(out)
