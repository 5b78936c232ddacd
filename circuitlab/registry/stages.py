"""Staged discovery: which primitive groups and moduli to search, chosen from the examples.

Searching every group at once multiplies the candidates at each cost by the number of
operations, so a product of four integer columns (cost 7) is out of reach when the modular,
bitwise and comparison operations are offered beside arithmetic, although arithmetic alone
finds it in under a second. Discovery therefore runs a sequence of smaller searches (stages)
and stops at the first exact fit:

1. arithmetic (with the elementary functions unless outputs and some inputs are integers;
   on booleans, with the bitwise operations, which are logic there);
2. + integer division (FLOORDIV(a, b), and a // k for k in DIVISORS);
3. + modular arithmetic, one stage per candidate modulus (`infer_moduli`), most plausible
   first, with small integer constants inside (ADDMOD(a, 3, p=7), MULMOD(5, a, p=11));
4. + bitwise operations, when the data look bitwise (`looks_bitwise`: each output bit a
   function of the input bits at the same position, or power-of-two input ranges; right
   after arithmetic when the outputs themselves are bit-local), and
   + comparisons when they look piecewise (`looks_piecewise`: two output values, or every
   output equal to one of the inputs, as max(a, b) is);
5. + elementary functions, last, for integer outputs.
Before them, `discover.search` tries a power law (powerlaw.py: a monomial fitted in log
space), listed as a stage of its own when it is exact. It runs the stages in rounds of rising
cost limit (5, 7, 9). A fit found within the first round's cost is compared with what the
later stages find up to its cost, and the smallest formula wins (ADDMOD(a, 3, p=7) over one
made of MOD and FLOORDIV); a fit found deeper ends the search, even where a later stage has a
smaller formula: the order is the order of plausibility. Given groups
(`DiscoveryConfig.groups`) are searched as they are, in one stage (one per modulus when they
include modular ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from circuitlab.registry.domains import Kind

# constant divisors of FLOORDIV(a, k): halves to fifths, bytes and decimal digits (each one
# more unary operation at every cost: all of 2..10 made the integer stage twice as slow)
DIVISORS: tuple[int, ...] = (2, 3, 4, 5, 8, 10)
MAX_MODULI = 5  # candidate moduli kept (each is one stage)
MAX_PERIOD = 4096  # largest period looked for
BIT_ROWS = 4096  # rows the bit-locality test reads (it holds rows x columns x bits)
SMALL = 12  # constants 1..SMALL (and p-SMALL..p-1) inside modular operations


@dataclass(frozen=True)
class Stage:
    """One search of a staged discovery.

    groups: the primitive groups offered; modulus: the modulus p of the modular operations
    (None without them); constants: the integer constants k offered inside them, as in
    ADDMOD(a, k, p) and MULMOD(k, a, p).
    """

    groups: tuple[str, ...]
    modulus: int | None = None
    constants: tuple[int, ...] = ()
    last_resort: bool = False  # searched only once every other stage has had its full turn
    # "" for an enumerative search over the groups; else how the fit was made instead, as
    # "power law" (powerlaw.py: the groups are those of the primitives its formula uses)
    method: str = ""

    @property
    def label(self) -> str:
        groups = "+".join(self.groups) + (f" p={self.modulus}" if self.modulus else "")
        return f"{self.method} ({groups})" if self.method else groups


def plan_stages(
    X: np.ndarray,
    y: np.ndarray,
    kinds: Sequence[Kind],
    groups: tuple[str, ...] | None = None,
    moduli: tuple[int, ...] | None = None,
) -> list[Stage]:
    """The stages to search, in order (see the module docstring).

    groups, moduli: as given by the user (None: chosen from the data). Given moduli are
    tried in the order given, each in its own stage."""
    mods = tuple(moduli) if moduli is not None else infer_moduli(X, y, kinds)
    if groups is not None:
        if "modular" in groups and mods:
            return [Stage(tuple(groups), m, modular_constants(X, y, kinds, m)) for m in mods]
        return [Stage(tuple(groups))]
    y_int = _integral(y)
    ints = [j for j, k in enumerate(kinds) if k in (Kind.BOOL, Kind.INT)]
    logic = y_int and bool(ints) and set(np.unique(y)) <= {0.0, 1.0}
    logic = logic and all(kinds[j] is Kind.BOOL for j in ints)
    if logic:
        base: tuple[str, ...] = ("arithmetic", "bitwise")
    elif y_int and ints:
        base = ("arithmetic",)
    else:
        base = ("arithmetic", "elementary")
    stages = [Stage(base)]
    bit_local = bool(ints) and y_int and not logic and _bit_local(X, y, kinds)
    if bit_local:
        stages.append(Stage(("arithmetic", "bitwise")))
    if ints and (y_int or moduli is not None):
        if y_int:
            stages.append(Stage((*base, "integer")))
        for m in mods:
            groups_m = (*base, "integer", "modular") if y_int else (*base, "modular")
            stages.append(Stage(groups_m, m, modular_constants(X, y, kinds, m)))
    if ints and y_int and not logic and not bit_local and looks_bitwise(X, y, kinds):
        stages.append(Stage(("arithmetic", "bitwise")))
    piecewise = looks_piecewise(X, y)
    if piecewise:
        extra = ("comparison", "control") if piecewise == "selection" else ("comparison",)
        stages.append(Stage((*base, *extra)))
    if "elementary" not in base:
        stages.append(Stage(("arithmetic", "elementary"), last_resort=True))
    return stages


# ---------------------------------------------------------------------------------------------
# moduli


def infer_moduli(
    X: np.ndarray, y: np.ndarray, kinds: Sequence[Kind], limit: int = MAX_MODULI
) -> tuple[int, ...]:
    """Candidate moduli for integer outputs, most plausible first (at most `limit`):

    1. periods of y in an integer input x (y(x + m) == y(x) on every pair of rows that agree
       on the other integer inputs, with enough pairs that chance agreement is unlikely): the
       smallest period above max(y) (x^2 mod 7 takes only 0, 1, 2, 4 but has period 7), then
       the smallest period (a mod 3 + b);
    2. max(y) + 1 (the range of y when it is not all non-negative);
    3. max(x) + 1 of a non-negative integer input whose values start at 0 (a lane 0..7 gives
       8), powers of two and primes first;
    4. the smallest prime and the smallest power of two above max(y).
    The guesses of 4 are kept only when y could be residues: a modulus no larger than the
    number of rows, or outputs spread evenly over [0, m) (a Kolmogorov-Smirnov test; a
    product of four columns, mostly small, is not).
    """
    if not _integral(y) or len(y) < 2:
        return ()
    n, k = X.shape
    lo, hi = int(y.min()), int(y.max())
    out: list[int] = []
    cols = [j for j in range(k) if kinds[j] is Kind.INT]
    periods = [_periods(X, y, kinds, j) for j in cols]
    if lo >= 0:
        out += sorted({min(p for p in ps if p > hi) for ps in periods if any(p > hi for p in ps)})
    out += sorted({ps[0] for ps in periods if ps})
    out.append(hi + 1 if lo >= 0 else hi - lo + 1)
    ranges = []
    for j in cols:
        x = X[:, j]
        if x.min() == 0 and x.max() >= 1:
            m = int(x.max()) + 1
            ranges.append((not (_is_pow2(m) or _is_prime(m)), m))
    out += [m for _, m in sorted(ranges)]
    if lo >= 0:
        out += [
            m for m in (_next_prime(hi), 1 << max(hi, 1).bit_length()) if _could_be_residues(y, m)
        ]
    kept = list(dict.fromkeys(m for m in out if 2 <= m < 2**31))
    return tuple(kept[:limit])


def _could_be_residues(y: np.ndarray, m: int) -> bool:
    """True when y (integers in [0, m)) may be residues mod m: m is at most the number of
    rows, or y passes a Kolmogorov-Smirnov test (1% level) against the uniform on [0, m)."""
    n = len(y)
    if m <= n:
        return True
    ys = np.sort(y)
    below = np.arange(n) / n  # the empirical CDF just below each value...
    at = np.arange(1, n + 1) / n  # ... and at it
    cdf_before, cdf_at = ys / m, (ys + 1) / m
    d = max(float(np.max(np.abs(at - cdf_at))), float(np.max(np.abs(below - cdf_before))))
    return d <= 1.63 / np.sqrt(n)


def _periods(X: np.ndarray, y: np.ndarray, kinds: Sequence[Kind], j: int) -> list[int]:
    """The periods m >= 2 of y in column j (ascending): y(x + m) == y(x) on every pair of rows
    whose column j differs by m and whose other integer columns agree. Only when y is a
    function of those columns (real columns ignored) that moves with column j, and the pairs
    are enough that chance agreement is below 1e-3."""
    x = X[:, j].astype(np.int64)
    # periods up to MAX_PERIOD, and no more than about 5e7 look-ups in all
    span = min(int(x.max() - x.min()), MAX_PERIOD, max(2, 50_000_000 // max(len(x), 1)))
    if span < 2:
        return []
    others = [i for i in range(X.shape[1]) if i != j and kinds[i] in (Kind.BOOL, Kind.INT)]
    # y as a function of x alone when it is one (others may be junk), else of all integer columns
    for cols in ([], others) if others else ([],):
        if cols:
            _, group = np.unique(X[:, cols], axis=0, return_inverse=True)
            group = group.reshape(-1).astype(np.int64)
        else:
            group = np.zeros(len(x), dtype=np.int64)
        key = group * (int(x.max() - x.min()) + 1) + (x - x.min())
        order = np.argsort(key, kind="stable")
        ks, ys = key[order], y[order]
        same = ks[1:] == ks[:-1]
        if np.any(same & (ys[1:] != ys[:-1])):
            continue  # not a function of these columns
        by_group = np.unique(np.stack([group, y]), axis=1).shape[1]
        if by_group == len(np.unique(group)):
            return []  # y never moves with x: any m would look like a period
        ukeys, first = np.unique(ks, return_index=True)
        uy = ys[first]
        _, counts = np.unique(uy, return_counts=True)
        q = float(((counts / counts.sum()) ** 2).sum())  # chance that two outputs agree
        if q >= 1:
            return []
        need = max(3, int(np.ceil(np.log(1e-3) / np.log(q))))
        out = []
        for m in range(2, span + 1):
            pos = np.searchsorted(ukeys, ukeys + m)
            pos = np.minimum(pos, len(ukeys) - 1)
            hit = ukeys[pos] == ukeys + m
            if hit.sum() >= need and np.array_equal(uy[pos[hit]], uy[hit]):
                out.append(m)
        return out
    return []


def modular_constants(
    X: np.ndarray, y: np.ndarray, kinds: Sequence[Kind], p: int
) -> tuple[int, ...]:
    """Integer constants offered inside the modular operations of modulus p: 1..p-1 for small
    p, else 1..12 and p-12..p-1 (adding p - k subtracts k), and the k the data suggest: y
    equal to (x + k) mod p or (k * x) mod p for an integer input x."""
    if p - 1 <= 2 * SMALL:
        ks = set(range(1, p))
    else:
        ks = set(range(1, SMALL + 1)) | set(range(p - SMALL, p))
    if _integral(y):
        yi = y.astype(np.int64)
        for j, kind in enumerate(kinds):
            if kind is not Kind.INT:
                continue
            x = X[:, j].astype(np.int64)
            d = np.unique(np.mod(yi - x, p))
            if len(d) == 1 and d[0] > 0:
                ks.add(int(d[0]))
            if p <= 4096:
                head = slice(0, 256)
                cand = np.arange(2, p, dtype=np.int64)
                ok = np.all(np.mod(cand[:, None] * x[None, head], p) == yi[None, head], axis=1)
                ks.update(int(c) for c in cand[ok][:4])
    return tuple(sorted(ks))


# ---------------------------------------------------------------------------------------------
# what the data look like


def looks_bitwise(X: np.ndarray, y: np.ndarray, kinds: Sequence[Kind]) -> bool:
    """Bit-local outputs (`_bit_local`), also once shifted to start at 0 (AND(a, b) + 1), or
    outputs within the bit width of non-negative integer inputs of which one spans a
    power-of-two range (0..255)."""
    if not _integral(y):
        return False
    if _bit_local(X, y, kinds) or _bit_local(X, y - y.min(), kinds):
        return True
    ints = [j for j, k in enumerate(kinds) if k is Kind.INT and X[:, j].min() >= 0]
    if not ints:
        return False
    top = int(X[:, ints].max())
    width = 1 << max(top, 1).bit_length()
    pow2 = any(X[:, j].max() >= 3 and _is_pow2(int(X[:, j].max()) + 1) for j in ints)
    yi = y.astype(np.int64)
    inside = bool(np.all((yi >= 0) & (yi < width)) or np.all((yi < 0) & (yi >= -width)))
    return pow2 and inside


def _bit_local(X: np.ndarray, y: np.ndarray, kinds: Sequence[Kind]) -> bool:
    """True when each bit of y is the same function of the integer inputs' bits at that
    position, at every position (what AND, OR, XOR and NOT compose to), with at least twice
    as many observations as input bit patterns, so that the test can fail."""
    cols = [j for j, k in enumerate(kinds) if k in (Kind.BOOL, Kind.INT)]
    if not cols or len(cols) > 16 or not _integral(y):
        return False
    ints = X[:BIT_ROWS, cols].astype(np.int64)
    yi = y[:BIT_ROWS].astype(np.int64)
    top = int(max(np.abs(ints).max(), np.abs(yi).max(), 1))
    width = top.bit_length() + 1  # + the sign bit: two's complement, so NOT is bit-local
    if width > 62:
        return False
    shifts = np.arange(width, dtype=np.int64)
    bits_in = (ints[:, :, None] >> shifts) & 1  # (n, c, w)
    pattern = (bits_in << np.arange(len(cols), dtype=np.int64)[None, :, None]).sum(axis=1)
    bit_y = (yi[:, None] >> shifts) & 1  # (n, w)
    pattern, bit_y = pattern.reshape(-1), bit_y.reshape(-1)
    uniq, inverse = np.unique(pattern, return_inverse=True)
    if len(pattern) < 2 * len(uniq) or len(np.unique(bit_y)) < 2:
        return False
    ones = np.bincount(inverse, weights=bit_y, minlength=len(uniq))
    total = np.bincount(inverse, minlength=len(uniq))
    return bool(np.all((ones == 0) | (ones == total)))


def looks_piecewise(X: np.ndarray, y: np.ndarray) -> str | None:
    """'selection' when every output equals one of the inputs but no single input is the
    output (max, min, a if a < b else b); 'two-valued' when the outputs take two values (a
    comparison, possibly scaled); else None."""
    if len(np.unique(y)) == 2:
        return "two-valued"
    equal = y[:, None] == X
    if X.shape[1] >= 2 and equal.any(axis=1).all() and not equal.all(axis=0).any():
        return "selection"
    return None


# ---------------------------------------------------------------------------------------------
# numbers


def _integral(y: np.ndarray) -> bool:
    return bool(np.all(y == np.round(y)) and np.abs(y).max(initial=0.0) < 2**53)


def _is_pow2(m: int) -> bool:
    return m >= 2 and m & (m - 1) == 0


def _is_prime(m: int) -> bool:
    if m < 2:
        return False
    if m < 4:
        return True
    if m % 2 == 0:
        return False
    f = 3
    while f * f <= m:
        if m % f == 0:
            return False
        f += 2
    return True


def is_prime(m: int) -> bool:
    """True for a prime m (DIVMOD, division in Z_p, needs one)."""
    return _is_prime(m)


def _next_prime(m: int) -> int:
    """The smallest prime above m."""
    c = m + 1
    while not _is_prime(c):
        c += 1
    return c
