"""Separability and symmetry of a function that can be queried: which columns interact,
additively or multiplicatively, and which pairs enter only through their difference.

A circuit, or any function discovery is given as an `oracle`, can be evaluated anywhere in
its domain, so the tests AI Feynman runs on a neural-network fit of the data can be run on the
function itself, exactly. Columns i and j interact additively unless, for every pair of values,

    f(a_i', a_j') - f(a_i', a_j) - f(a_i, a_j') + f(a_i, a_j) = 0

(the other columns held at the same values), and multiplicatively unless
f(a_i', a_j') f(a_i, a_j) = f(a_i', a_j) f(a_i, a_j'). The groups are the connected components
of the interaction graph: f = sum_c g_c(x_c) + const, or prod_c g_c(x_c) * const, when there
are two or more. Each pair is tested at TRIALS random points of the domain; a nonzero mixed
difference beyond rounding (TOL times the outputs' scale) at any of them is an interaction.
`translation_pairs` finds the pairs with f(x_i + s, x_j + s) = f(x_i, x_j): f reads x_i - x_j
(sqrt((x2 - x1)^2 + (y2 - y1)^2) has two such pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

TRIALS = 8
TOL = 1e-9
MODES = ("additive", "multiplicative")


def groups(
    oracle: Callable[..., np.ndarray],
    a: np.ndarray,
    b: np.ndarray,
    mode: str,
    tol: float = TOL,
) -> list[list[int]]:
    """The columns in groups that do not interact in `mode` (additive or multiplicative),
    tested at the points `a` (trials, k), each against the values of `b` (same shape): a list
    of column lists in column order, one group when every column interacts."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    t, k = a.shape
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    if not pairs:
        return [list(range(k))]
    # f at a, at a with column i from b, with j from b, with both: one batched call
    X00 = np.repeat(a[None], len(pairs), axis=0)  # (P, t, k)
    X10, X01, X11 = X00.copy(), X00.copy(), X00.copy()
    for p, (i, j) in enumerate(pairs):
        X10[p, :, i] = b[:, i]
        X01[p, :, j] = b[:, j]
        X11[p, :, [i, j]] = b[:, [i, j]].T
    stacked = np.concatenate([X.reshape(-1, k) for X in (X00, X10, X01, X11)])
    with np.errstate(all="ignore"):
        out = np.broadcast_to(np.asarray(oracle(*stacked.T), dtype=np.float64), (len(stacked),))
    f00, f10, f01, f11 = (v.reshape(len(pairs), t) for v in np.split(out, 4))
    if mode == "additive":
        diff = f11 - f10 - f01 + f00
        scale = np.max(np.abs(out)[np.isfinite(out)], initial=0.0)
    else:
        diff = f11 * f00 - f10 * f01
        scale = np.max(np.abs(out)[np.isfinite(out)], initial=0.0) ** 2
    # a non-finite value is no evidence of separability: the pair interacts
    interacts = ~(np.abs(diff) <= tol * max(scale, 1e-300)).all(axis=1)
    parent = list(range(k))

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for (i, j), hit in zip(pairs, interacts, strict=True):
        if hit:
            parent[root(i)] = root(j)
    comps: dict[int, list[int]] = {}
    for c in range(k):
        comps.setdefault(root(c), []).append(c)
    return sorted(comps.values(), key=lambda g: g[0])


def split(
    oracle: Callable[..., np.ndarray],
    sample: Callable[[np.random.Generator, int], np.ndarray],
    rng: np.random.Generator,
    trials: int = TRIALS,
) -> tuple[str, list[list[int]]] | None:
    """(mode, groups) of the first mode in MODES that splits the columns into two or more
    groups, or None. sample(rng, n): n points of the domain, (n, k)."""
    a, b = sample(rng, trials), sample(rng, trials)
    for mode in MODES:
        if mode == "multiplicative":
            with np.errstate(all="ignore"):
                fa = np.asarray(oracle(*a.T), dtype=np.float64)
            if not (np.isfinite(fa).all() and (fa != 0).all()):
                continue  # a product's test needs nonzero outputs
        found = groups(oracle, a, b, mode)
        if len(found) >= 2:
            return mode, found
    return None


def fixed(
    oracle: Callable[..., np.ndarray], group: Sequence[int], ref: np.ndarray
) -> Callable[..., np.ndarray]:
    """The oracle as a function of the columns in `group` only, the others held at `ref`."""
    where = {j: n for n, j in enumerate(group)}

    def sub(*cols: np.ndarray) -> np.ndarray:
        n = len(np.atleast_1d(cols[0]))
        full = [
            np.asarray(cols[where[j]], dtype=np.float64) if j in where else np.full(n, ref[j])
            for j in range(len(ref))
        ]
        return oracle(*full)

    return sub


def translation_pairs(
    oracle: Callable[..., np.ndarray],
    a: np.ndarray,
    shift: np.ndarray,
    tol: float = TOL,
) -> list[tuple[int, int]]:
    """Pairs (i, j), i < j, such that shifting both columns by the same amount leaves f
    unchanged at every point of `a` (trials, k): f then depends on them through x_i - x_j only
    (AI Feynman's translational symmetry). shift: each point's shift (trials,), small against
    the domain. A shift that makes f non-finite is no evidence of symmetry."""
    t, k = a.shape
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    if not pairs:
        return []
    moved = np.repeat(a[None], len(pairs), axis=0)  # (P, t, k)
    for p, (i, j) in enumerate(pairs):
        moved[p, :, i] += shift
        moved[p, :, j] += shift
    pts = np.concatenate([a, moved.reshape(-1, k)])
    with np.errstate(all="ignore"):
        out = np.broadcast_to(np.asarray(oracle(*pts.T), dtype=np.float64), (len(pts),))
    base, after = out[:t], out[t:].reshape(len(pairs), t)
    scale = np.max(np.abs(out)[np.isfinite(out)], initial=0.0)
    same = (np.abs(after - base[None]) <= tol * max(scale, 1e-300)).all(axis=1)
    return [pq for pq, ok in zip(pairs, same, strict=True) if ok]


def on_difference(
    oracle: Callable[..., np.ndarray], i: int, j: int, k: int, at: float
) -> Callable[..., np.ndarray]:
    """The oracle of the problem with x_i - x_j as one column (in x_i's place, x_j removed):
    its columns are d, then the others in order; x_j is held at `at` and x_i = at + d."""
    rest = [c for c in range(k) if c not in (i, j)]

    def sub(d: np.ndarray, *others: np.ndarray) -> np.ndarray:
        d = np.asarray(d, dtype=np.float64)
        cols: list[np.ndarray] = [np.empty(0)] * k
        cols[i], cols[j] = at + d, np.full(len(d), at)
        for c, v in zip(rest, others, strict=True):
            cols[c] = np.asarray(v, dtype=np.float64)
        return oracle(*cols)

    return sub
