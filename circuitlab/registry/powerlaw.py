"""Power law: y = C * prod_j x_j^a_j with small rational exponents, fitted in log space before
any search.

Many physical laws are monomials (F = q1*q2/(4*pi*eps*r^2), v = sqrt(g*p/rho)). The enumerative
search reaches one of four or more columns only at cost 7 or beyond, after the pair fits of
cost 6 have used its time; a least-squares fit of the logarithms finds it in milliseconds:

1. Fit (`fit`). On the training rows searched where y is nonzero, and so is every column
   considered, regress log|y| on log|x_j| with an intercept (columns whose log|x| does not
   vary there, such as 0/1 columns, are left out). Round each exponent to the nearest p/q
   with q in DENOMINATORS and |p/q| <= MAX_EXPONENT; if one is farther than ROUND_TOL from
   it, the data are not such a monomial and nothing more is done. An exponent rounded to 0
   drops its column; all of them 0 is not a power law (a constant is the search's).
2. Formula (`layouts`). The monomial is written with the existing nodes, so it prints,
   simplifies and evaluates like any found function: columns grouped by |exponent|
   (SQUARE(MUL(a, b)), not MUL(SQUARE(a), SQUARE(b))); 1/2 as SQRT, 2 as SQUARE, 4 as
   SQUARE(SQUARE), any other power as POW(x, p/q) with p/q written DIV(p, q) when it is
   not an integer; negative exponents in a denominator. Of a few layouts (groups of both
   signs split or as one quotient, negative powers inline) the smallest comes first.
3. Constant. With the exponents fixed, C by least squares on y itself, on the training rows
   (signs included: a column of both signs under an integer power carries its sign, so
   y = x0^2 * x1 with x1 < 0 keeps C = 1).
4. Acceptance: the search's own test (`search.agrees`) on every row, not only on the sample
   searched: within rtol * max|y| on all training and held-out rows, finite on every probe,
   equal to the oracle on them when one is given. A monomial that fails is not taken (y =
   x0 + x1 rounds to some monomial and fails here). C is then snapped to the shortest exact
   form that still passes (`constants.forms`: 1/(4*pi), not 0.0796), as the builder snaps a
   search's constants.

`discover.search` runs this first (automatic staging only, exact mode only) and shows an
exact monomial as a stage of its own ("power law (arithmetic)", with the groups of the
primitives the formula uses). Deterministic: no random numbers.

Extending it: `fit` takes the columns to use, so a later stage can fit a monomial of some
columns and search for what multiplies it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry.constants import Form, forms, write_number, write_times
from circuitlab.registry.primitives import get_primitive
from circuitlab.registry.search import Rows, agrees, tolerance

DENOMINATORS = (1, 2, 3)  # q of the exponents p/q tried
MAX_EXPONENT = 6  # |p/q| at most
# a fitted exponent farther than this from every p/q: not a monomial (on data exact to
# 1e-9 the fit is within ~1e-9 of the true exponents; 1.7 is 0.033 from 5/3)
ROUND_TOL = 0.01
# primitives a monomial may use even when DiscoveryConfig.exclude names them: POW is left out
# of the enumeration by default (its exponent is a fitted constant), not out of fitted forms
FITTED = ("POW",)

Alloc = Callable[[float], ex.Const]


@dataclass(frozen=True)
class Monomial:
    """C * prod x_j^exponents[j] (exponent 0: column j is not used)."""

    exponents: tuple[Fraction, ...]
    coef: float = 1.0

    @property
    def columns(self) -> list[int]:
        return [j for j, a in enumerate(self.exponents) if a != 0]

    def render(self, names: Sequence[str] | None = None) -> str:
        """`0.0795775 * q1 * q2 * eps^-1 * r^-2` (columns x0, x1, ... without names)."""
        names = names or [f"x{j}" for j in range(len(self.exponents))]
        parts = [names[j] + (f"^{a}" if a != 1 else "") for j, a in enumerate(self.exponents) if a]
        return " * ".join([f"{self.coef:.6g}", *parts] if self.coef != 1 else parts)

    def __str__(self) -> str:
        return self.render()


@dataclass
class PowerLaw:
    """An accepted monomial: its formula and constants, and what it took."""

    monomial: Monomial
    expr: ex.Expr
    consts: dict[str, float]
    groups: tuple[str, ...]  # of the primitives the formula uses
    checked: int  # formulas put to the acceptance test
    seconds: float


def fit(X: np.ndarray, y: np.ndarray, columns: Sequence[int] | None = None) -> Monomial | None:
    """The monomial in `columns` (default: all) whose log fits log|y| on these rows, exponents
    rounded (module docstring, step 1); its coefficient is left at 1 (`power_law` fits C on
    the formula as written). None when the rows say it is not one."""
    k = X.shape[1]
    cols = list(range(k)) if columns is None else list(columns)
    with np.errstate(all="ignore"):
        logx = np.log(np.abs(X[:, cols]))
        logy = np.log(np.abs(y))
    finite = np.isfinite(logx)
    # columns whose nonzero values vary in magnitude (0/1 columns and constants cannot be told
    # from the intercept)
    varies = [
        i
        for i in range(len(cols))
        if finite[:, i].any()
        and np.ptp(logx[finite[:, i], i]) > 1e-12 * (1 + np.abs(logx[finite[:, i], i]).max())
    ]
    ok = np.isfinite(logy) & finite[:, varies].all(axis=1)
    if not varies or ok.sum() < len(varies) + 2:
        return None
    A = np.concatenate([logx[ok][:, varies], np.ones((int(ok.sum()), 1))], axis=1)
    sol, *_ = np.linalg.lstsq(A, logy[ok], rcond=None)
    exponents = [Fraction(0)] * k
    for i, a in zip(varies, sol[:-1], strict=True):
        r = _rational(float(a))
        if r is None:
            return None
        exponents[cols[i]] = r
    if not any(exponents):
        return None
    return Monomial(tuple(exponents))


def _rational(a: float) -> Fraction | None:
    """The nearest p/q to a with q in DENOMINATORS (the smaller q on a tie), or None when it
    is farther than ROUND_TOL or beyond MAX_EXPONENT."""
    if not math.isfinite(a):
        return None
    best = min(
        (Fraction(round(a * q), q) for q in DENOMINATORS),
        key=lambda r: (abs(a - r), r.denominator),
    )
    if abs(a - best) > ROUND_TOL or abs(best) > MAX_EXPONENT:
        return None
    return best


# ---------------------------------------------------------------------------------------------
# the formula


STYLES = ("split", "quotient", "inline")


def layouts(m: Monomial, value: float, form: Form | None) -> list[tuple[str, ex.Expr, dict]]:
    """(style, formula, constants) of each way to write the monomial with coefficient `value`
    (in `form` when that is exact), smallest first, ties in the order of STYLES: groups of
    both signs split into numerator and denominator, or kept as one quotient under their
    power, or negative powers inline as POW(x, -p/q). A style that writes the same formula
    as an earlier one is left out."""
    out: list[tuple[int, int, str, ex.Expr, dict[str, float]]] = []
    seen: set[ex.Expr] = set()
    for order, style in enumerate(STYLES):
        e, consts = write(m, value, form, style)
        if e not in seen:
            seen.add(e)
            out.append((ex.size(e), order, style, e, consts))
    out.sort(key=lambda t: (t[0], t[1]))
    return [(style, e, c) for _, _, style, e, c in out]


def write(
    m: Monomial, value: float, form: Form | None, style: str = "split"
) -> tuple[ex.Expr, dict[str, float]]:
    """The monomial with coefficient `value` in one style (see `layouts`), and its constants
    (c0, c1, ...)."""
    consts: dict[str, float] = {}

    def const(v: float) -> ex.Const:
        key = f"c{len(consts)}"
        consts[key] = float(v)
        return ex.Const(key)

    return write_with(m, value, form, style, const), consts


def write_with(m: Monomial, value: float, form: Form | None, style: str, const: Alloc) -> ex.Expr:
    """`write`, its constants made by `const` (a caller that has constants of its own names
    them apart)."""
    # columns grouped by |exponent|, the groups in the order of their first column
    groups: dict[Fraction, tuple[list[int], list[int]]] = {}
    for j in m.columns:
        a = m.exponents[j]
        groups.setdefault(abs(a), ([], []))[a < 0].append(j)
    num: list[ex.Expr] = []
    den: list[ex.Expr] = []
    for mag, (pos, neg) in groups.items():
        if style == "quotient" and pos and neg:
            num.append(_power(ex.call("DIV", _prod(pos), _prod(neg)), mag, const))
            continue
        if pos:
            num.append(_power(_prod(pos), mag, const))
        if neg:
            if style == "inline":
                num.append(ex.call("POW", _prod(neg), _exponent(-mag, const)))
            else:
                den.append(_power(_prod(neg), mag, const))
    if not num:  # C / (...)
        return ex.call("DIV", write_number(value, form, const), _chain(den))
    body = _chain(num) if not den else ex.call("DIV", _chain(num), _chain(den))
    if value == 1.0:
        return body
    if value == -1.0:
        return ex.call("NEG", body)
    return write_times(value, form, body, const)


def _prod(cols: list[int]) -> ex.Expr:
    return _chain([ex.Var(j) for j in cols])


def _chain(factors: list[ex.Expr]) -> ex.Expr:
    """MUL(a, MUL(b, c)), the smaller factors first (as the search writes a product: x1 *
    SQUARE(x0) is MUL(x1, SQUARE(x0))), else in column order."""
    factors = sorted(factors, key=ex.size)  # stable: column order among equals
    out = factors[-1]
    for f in reversed(factors[:-1]):
        out = ex.call("MUL", f, out)
    return out


def _power(base: ex.Expr, mag: Fraction, const: Alloc) -> ex.Expr:
    if mag == 1:
        return base
    if mag == 2:
        return ex.call("SQUARE", base)
    if mag == 4:
        return ex.call("SQUARE", ex.call("SQUARE", base))
    if mag == Fraction(1, 2):
        return ex.call("SQRT", base)
    return ex.call("POW", base, _exponent(mag, const))


def _exponent(a: Fraction, const: Alloc) -> ex.Expr:
    """p/q as DIV(p, q) (a rational for sympy: x**(3/2), not x**1.5), an integer as itself."""
    if a.denominator == 1:
        return const(float(a))
    return ex.call("DIV", const(float(a.numerator)), const(float(a.denominator)))


def groups_of(e: ex.Expr) -> tuple[str, ...]:
    """The primitive groups of the operations in `e`, arithmetic first."""
    found = {get_primitive(n.op).group for n in ex.walk(e) if isinstance(n, ex.Call)}
    return tuple(g for g in ("arithmetic", "elementary") if g in found) or ("arithmetic",)


# ---------------------------------------------------------------------------------------------
# fit, write, accept


def power_law(
    rows: Rows,
    full: Rows,
    rtol: float,
    exclude: Sequence[str] = (),
    names: Sequence[str] | None = None,
) -> tuple[PowerLaw | None, str]:
    """The monomial of the data, accepted by the search's test on every row, or None; and a
    note on what happened. rows: those searched (the exponents and C are fitted on their
    training rows); full: every row, [training | held-out | probes] (the same as `rows` when
    the search runs on all of them); exclude: primitives it may not use (but POW); names:
    of the columns, for the note."""
    t0 = time.perf_counter()
    tr = rows.train
    m = fit(rows.X[tr], rows.y_train)
    if m is None:
        return None, "not a monomial (log fit)"
    scale, tol = tolerance(full, rtol)
    cols_all = list(full.X.T)
    cols_fit = list(rows.X[tr].T)
    banned = set(exclude) - set(FITTED)
    checked = 0

    def evaluate(e: ex.Expr, consts: dict[str, float], cols: list[np.ndarray]) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = np.asarray(ex.evaluate(e, cols, consts), dtype=np.float64)
        return np.broadcast_to(out, (len(cols[0]),))

    def accepted(e: ex.Expr, consts: dict[str, float]) -> bool:
        nonlocal checked
        checked += 1
        return agrees(evaluate(e, consts, cols_all), full, tol, rtol, scale)

    # C by least squares on y, with the formula as written (C = 1 in it)
    unit = [(e, c) for _, e, c in layouts(m, 1.0, None) if not ex.operations(e) & banned]
    if not unit:
        return None, f"a monomial, but it needs excluded primitives ({', '.join(sorted(banned))})"
    M = evaluate(*unit[0], cols_fit)
    y = rows.y_train
    with np.errstate(all="ignore"):
        mm = float(M @ M)
        coef = float(M @ y) / mm if math.isfinite(mm) and mm > 0 else math.nan
    if not math.isfinite(coef) or coef == 0.0:
        return None, f"not exact: {m.render(names)} (undefined on training rows, or C = 0)"
    m = Monomial(m.exponents, coef)
    chosen: tuple[str, ex.Expr, dict[str, float]] | None = None
    for style, e, c in layouts(m, coef, None):
        if not ex.operations(e) & banned and accepted(e, c):
            chosen = (style, e, c)
            break
    if chosen is None:
        return None, f"not exact: {m.render(names)}"
    # C's shortest exact form that still passes (the builder's `snap`)
    style = chosen[0]
    n = full.n_train + full.n_hold
    top = float(np.abs(evaluate(*unit[0], cols_all)[:n]).max(initial=0.0))
    window = 8 * tol / top if top > 0 and math.isfinite(top) else None
    for form in forms(coef, window):
        value = math.copysign(form.value, coef)
        e, c = write(m, value, form, style)
        if not ex.operations(e) & banned and accepted(e, c):
            chosen, m = (style, e, c), Monomial(m.exponents, value)
            break
    _, e, c = chosen
    return PowerLaw(
        m, e, c, groups_of(e), checked, time.perf_counter() - t0
    ), f"exact: {m.render(names)}"
