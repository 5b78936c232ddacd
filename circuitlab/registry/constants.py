"""Exact forms of fitted constants: integers, short decimals, p/q and p/q times pi, e, sqrt(k).

A least-squares constant is a float (0.15915494309189535); the formula behind it usually has an
exact one (1/(2*pi)). `forms(value, window)` lists the ways to write a number near `value`, each
with a description length in bits, so that callers can take the shortest one the data still
accept: discovery in exact mode verifies each in turn, approximate mode weighs the bits against
the loss (`build.py`). The code: a decimal costs log2(10) per digit plus log2(20) for where the
point goes; p and q in a fraction a universal code of integers (2 log2 k + 1: small ones are
cheap, 59/6 is not) and one bit for the bar; a multiple of a named constant (pi, e, sqrt(k),
...) that plus which constant and whether it multiplies or divides. Bits on noisy data (the
smaller family): 3: 3.3, 1/2 (written 0.5): 5, 1/3: 6.2, pi: 7, 2/3: 8.2, 4*pi and 1/(4*pi):
11, 3*pi/4: 14.2; a fitted constant known to 4 digits: 17.6; a decimal of 7 digits or more
comes after every exact form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

import numpy as np

from circuitlab.registry import expr as ex

MAX_DENOMINATOR = 16  # q in a plain fraction p/q (p any)
MAX_MULTIPLE = 16  # p and q in p * base / q and p / (q * base)
NOISY_MULTIPLE = 8  # the same on noisy data, where every extra candidate is a chance match
DIGIT_BITS = math.log2(10)
POINT_BITS = math.log2(20)  # where a decimal's point goes: one of ~20 positions (1e-9..1e10)

Alloc = Callable[[float], ex.Expr]  # a constant's value -> a Const node naming it


def _pi(_: Alloc) -> ex.Expr:
    return ex.MathConst("pi")


def _e(_: Alloc) -> ex.Expr:
    return ex.MathConst("e")


def _sqrt(k: int) -> Callable[[Alloc], ex.Expr]:
    return lambda const: ex.call("SQRT", const(float(k)))


# name -> (how to write it, extra bits: composites cost more than pi, e or sqrt(k))
BASES: dict[str, tuple[Callable[[Alloc], ex.Expr], float]] = {
    "pi": (_pi, 0.0),
    "e": (_e, 0.0),
    "sqrt(2)": (_sqrt(2), 0.0),
    "sqrt(3)": (_sqrt(3), 0.0),
    "sqrt(5)": (_sqrt(5), 0.0),
    "sqrt(6)": (_sqrt(6), 0.0),
    "sqrt(7)": (_sqrt(7), 0.0),
    "pi^2": (lambda c: ex.call("SQUARE", _pi(c)), 2.0),
    "sqrt(pi)": (lambda c: ex.call("SQRT", _pi(c)), 2.0),
    "sqrt(2*pi)": (lambda c: ex.call("SQRT", ex.call("MUL", c(2.0), _pi(c))), 3.0),
    "e^2": (lambda c: ex.call("SQUARE", _e(c)), 2.0),
}
# on noisy data the family is smaller: with 1% noise and a family of p, q <= 16 over every base
# a fifth of arbitrary 4-digit constants lie within two standard errors of some member
NOISY_BASES = ("pi", "e", "sqrt(2)", "sqrt(3)", "sqrt(5)", "pi^2", "sqrt(pi)", "sqrt(2*pi)")


def int_bits(k: int) -> float:
    """Universal code of a positive integer (1: 1 bit, 2: 3, 4: 5, 16: 9, 59: 12.8)."""
    return 2 * math.log2(k) + 1


@dataclass(frozen=True)
class Form:
    """One way to write a positive number: a literal (integer or decimal, stored as a constant
    as before), p/q, p * base / q, or p / (q * base)."""

    bits: float  # description length
    literal: float | None = None
    p: int = 1
    q: int = 1
    base: str = ""
    inverse: bool = False  # p / (q * base) rather than p * base / q

    @property
    def exact(self) -> bool:
        """Written as an expression (DIV(1, 3), MUL(4, PI)) rather than a stored literal."""
        return self.literal is None

    @property
    def value(self) -> float:
        """The float the expression evaluates to (bit for bit what the function computes)."""
        return self.literal if self.literal is not None else _value(self)

    def expr(self, const: Alloc) -> ex.Expr:
        if self.literal is not None:
            return const(self.literal)
        if not self.base:
            return ex.call("DIV", const(float(self.p)), const(float(self.q)))
        b = BASES[self.base][0](const)
        if self.inverse:
            den = b if self.q == 1 else ex.call("MUL", const(float(self.q)), b)
            return ex.call("DIV", const(float(self.p)), den)
        num = b if self.p == 1 else ex.call("MUL", const(float(self.p)), b)
        return num if self.q == 1 else ex.call("DIV", num, const(float(self.q)))

    def times(self, e: ex.Expr, const: Alloc) -> ex.Expr:
        """value * e, written e / D when the form is 1 / D (x/3 rather than (1/3)*x)."""
        if self.literal is None and self.p == 1 and (not self.base or self.inverse):
            if not self.base:
                return ex.call("DIV", e, const(float(self.q)))
            b = BASES[self.base][0](const)
            return ex.call("DIV", e, b if self.q == 1 else ex.call("MUL", const(float(self.q)), b))
        return ex.call("MUL", self.expr(const), e)

    def __str__(self) -> str:
        if self.literal is not None:
            return str(int(self.literal)) if self.literal.is_integer() else repr(self.literal)
        if not self.base:
            return f"{self.p}/{self.q}"
        if self.inverse:
            return f"{self.p}/({self.q}*{self.base})" if self.q != 1 else f"{self.p}/{self.base}"
        num = self.base if self.p == 1 else f"{self.p}*{self.base}"
        return num if self.q == 1 else f"{num}/{self.q}"


def write_number(v: float, form: Form | None, const: Alloc) -> ex.Expr:
    """The constant v in its exact form when it has one (DIV(1, 3); NEG of it below 0), else a
    stored constant."""
    if form is None or not form.exact:
        return const(v)
    e = form.expr(const)
    return e if v > 0 else ex.call("NEG", e)


def write_times(v: float, form: Form | None, e: ex.Expr, const: Alloc) -> ex.Expr:
    """v * e: MUL(v, e), or DIV(e, D) when v's exact form is 1/D (NEG of it below 0)."""
    if form is None or not form.exact:
        return ex.call("MUL", const(v), e)
    out = form.times(e, const)
    return out if v > 0 else ex.call("NEG", out)


@cache
def _value(form: Form) -> float:
    consts: dict[str, float] = {}

    def const(v: float) -> ex.Const:
        consts[f"k{len(consts)}"] = v
        return ex.Const(f"k{len(consts) - 1}")

    with np.errstate(all="ignore"):
        return float(ex.evaluate(form.expr(const), [], consts))


@cache
def _base_values() -> dict[str, float]:
    return {name: Form(0, base=name).value for name in BASES}


def _digits(x: float) -> int:
    """Significant digits of the shortest decimal that is x (9.81: 3; 0.05: 1; 120.0: 3)."""
    if float(x).is_integer() and abs(x) < 1e15:
        return len(str(abs(int(x))))
    return len(repr(abs(x)).split("e")[0].replace(".", "").strip("0"))


def literal_bits(x: float) -> float:
    """A stored literal: an integer by its digits or the integer code, whichever is shorter
    (0: 1 bit, 3: 3.3), a decimal by its digits and where the point goes (9.81: 14.3)."""
    if x == 0.0:
        return 1.0
    if float(x).is_integer() and abs(x) < 1e15:
        return min(int_bits(int(abs(x))), DIGIT_BITS * _digits(x))
    return DIGIT_BITS * _digits(x) + POINT_BITS


def forms(
    value: float, window: float | None = None, decimals: int = 15, noisy: bool = False
) -> list[Form]:
    """Forms of |value| within `window` of it (None: no limit), shortest first.

    Candidates: the nearest integer, decimals of 1..`decimals` significant digits, the nearest
    p/q for each q <= MAX_DENOMINATOR, and the nearest p * base / q and p / (q * base) for each
    base and p, q <= MAX_MULTIPLE (`noisy`: NOISY_BASES and NOISY_MULTIPLE). Of forms with the
    same float the first in that order is kept (0.5 rather than 1/2), and a fraction equal to a
    decimal of at most 6 digits is written as that decimal even when decimals are not
    candidates (decimals=0); ties in bits keep the order above.
    """
    v = abs(float(value))
    if not math.isfinite(v) or v == 0.0:
        return [Form(1, literal=0.0)] if v == 0.0 else []
    lim = math.inf if window is None else abs(window)
    out: list[Form] = []
    if v < 1e15:
        out.append(Form(literal_bits(float(round(v))), literal=float(round(v))))
    short = [float(f"{v:.{d}g}") for d in range(1, decimals + 1)]
    out += [Form(literal_bits(x), literal=x) for x in short[:6]]
    for q in range(2, MAX_DENOMINATOR + 1):
        p = round(v * q)
        if p >= 1 and math.gcd(p, q) == 1 and abs(p / q - v) <= lim:
            out.append(Form(int_bits(p) + int_bits(q) + 1, p=p, q=q))
    names = NOISY_BASES if noisy else tuple(BASES)
    top = NOISY_MULTIPLE if noisy else MAX_MULTIPLE
    base_bits = math.log2(len(names)) + 1  # which one, and whether it multiplies or divides
    for name in names:
        bv = _base_values()[name]
        for q in range(1, top + 1):
            for inverse, p in ((False, round(v * q / bv)), (True, round(v * q * bv))):
                if not 1 <= p <= top or math.gcd(p, q) != 1:
                    continue
                approx = p / (q * bv) if inverse else p * bv / q
                if abs(approx - v) > lim:
                    continue
                bits = int_bits(p) + int_bits(q) + 1 + base_bits + BASES[name][1]
                out.append(Form(bits, p=p, q=q, base=name, inverse=inverse))
    out += [Form(literal_bits(x), literal=x) for x in short[6:]]
    # one form per float, the first listed (0.125, not 1/8) but as cheap as the cheapest
    first: dict[float, Form] = {}
    for f in out:
        x = f.value
        if abs(x - v) > lim:
            continue
        if x not in first:
            first[x] = _as_decimal(f)
        elif f.bits < first[x].bits:
            first[x] = replace(first[x], bits=f.bits)
    kept: dict[str, Form] = {}
    for f in sorted(first.values(), key=lambda f: f.bits):  # stable: ties keep the order
        kept.setdefault(f"{f.value:.12e}", f)  # 2/sqrt(2) is sqrt(2), one ulp apart
    return list(kept.values())


def _as_decimal(f: Form) -> Form:
    """p/q as a literal when it is a short decimal (1/2 is 0.5, 5/2 is 2.5; 1/3 stays)."""
    if f.literal is None and not f.base and _digits(f.value) <= 6:
        return Form(f.bits, literal=f.value)
    return f


def fitted_bits(value: float, stderr: float) -> float:
    """A fitted constant: log2(|value| / stderr) bits state it to its standard error (at
    least one digit), plus the point (0.0795 +- 6e-5: 14.6 bits; no standard error: 17 digits)."""
    v = abs(value)
    if v == 0.0:
        return 1.0
    digits = math.log2(v / stderr) if stderr > 0.0 else 17 * DIGIT_BITS
    return min(max(digits, DIGIT_BITS), 17 * DIGIT_BITS) + POINT_BITS
