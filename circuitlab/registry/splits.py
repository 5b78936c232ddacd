"""Stages that split a problem for a function discovery can query (an oracle: a circuit, a
Python callable): translational symmetry (a pair of columns read through their difference
becomes one column) and separability (groups of columns that do not interact are searched
apart and combined). The tests themselves are in `separable.py`; like the stages of
`derived.py`, each fit passes the acceptance test on every original row (`derived.lifted`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry import separable
from circuitlab.registry.constants import Alloc, Form, forms, write_number, write_times
from circuitlab.registry.derived import Context, lifted, written_over
from circuitlab.registry.examples import Examples, unused_name
from circuitlab.registry.results import Found, StageRun
from circuitlab.registry.sampling import Sample
from circuitlab.registry.stages import Stage

SEPARABLE_SHARE = 0.5  # of the time budget, for the groups' searches together
SYMMETRY_SHARE = 0.5  # of the time budget, for the problem with one column fewer


def separable_stage(
    ctx: Context, oracle: Callable[..., np.ndarray]
) -> tuple[Found | None, list[StageRun], str]:
    """Split a function that can be queried into groups of columns that do not interact
    (`separable.split`: f = sum_c g_c(x_c) + C, or prod_c g_c(x_c) * C), search each g_c on
    the data's values of its columns with the other columns held at a reference point (their
    medians; the oracle gives the outputs and checks the probes), and combine:
    sum_c g_c - (m - 1) f(ref), or prod_c g_c / f(ref)^(m - 1). Each group's search is itself
    a full discovery with the oracle, so a group splits again where it can (q * (Ef + B*v) is
    q times a sum). The combination passes the acceptance test on every row, or is not taken.
    Returns the fit or None, the runs, and a note."""
    data, cfg, domains = ctx.data, ctx.cfg, ctx.domains
    rng = np.random.default_rng(cfg.seed)

    def points(r: np.random.Generator, n: int) -> np.ndarray:
        return np.stack([d.sample(r, n) for d in domains], axis=1)

    found = separable.split(oracle, points, rng)
    if found is None:
        return None, [], "separability: no split"
    mode, parts = found
    names = [", ".join(data.names[j] for j in g) for g in parts]
    note = f"separability: {mode} in ({'), ('.join(names)})"
    ref = np.median(data.X, axis=0)
    with np.errstate(all="ignore"):
        f_ref = float(np.asarray(oracle(*[np.array([v]) for v in ref]), dtype=np.float64)[0])
    if not np.isfinite(f_ref) or (mode == "multiplicative" and f_ref == 0):
        return None, [], f"{note}: f is not finite (or 0) at the reference point"
    runs: list[StageRun] = []
    terms: list[ex.Expr] = []
    consts: dict[str, float] = {}
    share = cfg.max_seconds * SEPARABLE_SHARE / len(parts)
    columns = {n: ex.Var(j) for j, n in enumerate(data.names)}
    for g in parts:
        X = np.repeat(ref[None], data.n, axis=0)
        X[:, g] = data.X[:, g]
        with np.errstate(all="ignore"):
            yg = np.broadcast_to(np.asarray(oracle(*X.T), dtype=np.float64), (data.n,))
        if not np.isfinite(yg).all():
            return None, runs, f"{note}: a group's outputs are not finite"
        t0 = time.perf_counter()
        sub = Examples.from_arrays(data.X[:, g], yg, [data.names[j] for j in g], data.output_name)
        inner = ctx.search_fn(
            sub,
            name=ctx.name,
            config=replace(cfg, max_seconds=share, use_registry=False),
            oracle=separable.fixed(oracle, g, ref),
        )
        stats = replace(inner.stats, seconds=time.perf_counter() - t0)
        runs.append(
            StageRun(Stage(("arithmetic",), method="separable"), stats.level, share, stats, False)
        )
        f = inner.function
        if f is None:
            return None, runs, f"{note}: no exact fit for ({', '.join(sub.names)})"
        rename: dict[str, str] = {}
        for c, v in f.constants:
            rename[c] = ex.fresh_name(consts, "t")
            consts[rename[c]] = v
        terms.append(ex.rename_constants(written_over(f, columns), rename))
    why = ""
    for expr, cs in (
        _refitted(terms, consts, mode, ctx.sample, ctx.resolve),
        _combined(terms, consts, mode, f_ref, len(parts)),
    ):
        if expr is None:
            continue
        fit, why = lifted(ctx, expr, cs, runs[-1])
        if fit is not None:
            runs[-1] = fit.run
            return fit, runs, note
    return None, runs, f"{note}: the combination {why}"


def symmetry_stage(
    ctx: Context, oracle: Callable[..., np.ndarray]
) -> tuple[Found | None, list[StageRun], str]:
    """Translational symmetry of a function that can be queried (`separable.translation_pairs`):
    when f(x_i + s, x_j + s) = f(x), search the problem with one column x_i - x_j in place of
    the two (with its own oracle, so further pairs are found in turn) within SYMMETRY_SHARE of
    the budget, and write the fit back with SUB(x_i, x_j). Returns the fit or None, the runs,
    and a note."""
    data, cfg = ctx.data, ctx.cfg
    rng = np.random.default_rng(cfg.seed + 1)
    domains = ctx.domains
    a = np.stack([d.sample(rng, separable.TRIALS) for d in domains], axis=1)
    spread = np.ptp(data.X, axis=0).max(initial=0.0) or 1.0
    shift = rng.uniform(0.05, 0.2, separable.TRIALS) * spread
    pairs = separable.translation_pairs(oracle, a, shift)
    if not pairs:
        return None, [], ""
    i, j = pairs[0]
    ni, nj = data.names[i], data.names[j]
    rest = [c for c in range(data.k) if c not in (i, j)]
    label = unused_name(f"{ni}_minus_{nj}", data.names)
    note = f"symmetry: f reads {ni} - {nj}"
    X = np.concatenate([(data.X[:, i] - data.X[:, j])[:, None], data.X[:, rest]], axis=1)
    sub = Examples.from_arrays(X, data.y, [label, *(data.names[c] for c in rest)], data.output_name)
    at = float(np.median(data.X[:, j]))
    t0 = time.perf_counter()
    budget = cfg.max_seconds * SYMMETRY_SHARE
    inner = ctx.search_fn(
        sub,
        name=ctx.name,
        config=replace(cfg, max_seconds=budget, use_registry=False),
        oracle=separable.on_difference(oracle, i, j, data.k, at),
    )
    stats = replace(inner.stats, seconds=time.perf_counter() - t0)
    run = StageRun(Stage(("arithmetic",), method="symmetry"), stats.level, budget, stats, False)
    f = inner.function
    if f is None:
        return None, [run], f"{note}: no exact fit of the smaller problem"
    # sub's columns: the difference, then `rest`
    back = [ex.call("SUB", ex.Var(i), ex.Var(j)), *(ex.Var(c) for c in rest)]
    expr = written_over(f, dict(zip(sub.names, back, strict=True)))
    fit, why = lifted(ctx, expr, dict(f.constants), run)
    if fit is None:
        return None, [run], f"{note}: {why}"
    return fit, [fit.run], f"{note}; {inner.power_law}" if inner.power_law else note


def _combined(
    terms: list[ex.Expr], consts: dict[str, float], mode: str, f_ref: float, m: int
) -> tuple[ex.Expr, dict[str, float]]:
    """sum_c g_c - (m - 1) f(ref), or prod_c g_c / f(ref)^(m - 1), as the groups' fits are."""
    op, inverse = ("ADD", "SUB") if mode == "additive" else ("MUL", "DIV")
    out = dict(consts)
    expr = _chain(op, terms)
    rest = (m - 1) * f_ref if mode == "additive" else f_ref ** (m - 1)
    if rest != (0.0 if mode == "additive" else 1.0):
        key = ex.fresh_name(out, "t")
        out[key] = rest
        expr = ex.call(inverse, expr, ex.Const(key))
    return expr, out


def _refitted(
    terms: list[ex.Expr],
    consts: dict[str, float],
    mode: str,
    sample: Sample,
    resolve: ex.Resolver | None,
) -> tuple[ex.Expr | None, dict[str, float]]:
    """The combination with its constants gathered: each group's fit loses its outer constant
    offset and factor (which hold the other groups' values at the reference point), and the
    coefficients of the sum (a_c, and an intercept) or of the product (one factor) are fitted
    again by least squares on the training rows, each written in its shortest exact form.
    x1*y1 + x2*y2 rather than ((x1*y1 + 18.02) + (x2*y2 + 18.29)) - 36.31. None when a
    group's fit is only a constant."""
    bare = [_bare(t, mode) for t in terms]
    if any(ex.is_constant(b) for b in bare):
        return None, {}
    rows = sample.rows
    cols = list(rows.X[rows.train].T)
    with np.errstate(all="ignore"):
        H = np.stack(
            [np.broadcast_to(ex.evaluate(b, cols, consts, resolve), (len(cols[0]),)) for b in bare]
        )
    y = rows.y_train
    if not np.isfinite(H).all():
        return None, {}
    out = {k: v for k, v in consts.items() if any(k in ex.constants_used(b) for b in bare)}

    def alloc(v: float) -> ex.Const:
        key = ex.fresh_name(out, "t")
        out[key] = float(v)
        return ex.Const(key)

    if mode == "additive":
        A = np.concatenate([H.T, np.ones((len(y), 1))], axis=1)
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        a = coef[:-1]
        if len(a) > 1 and np.allclose(a, a[0], rtol=1e-9, atol=0.0):
            # one factor for the whole sum: a * (h_1 + h_2), which a product can strip
            expr = _times(float(a.mean()), _chain("ADD", bare), alloc)
            if expr is None:
                return None, {}
        else:
            scaled = [_times(float(c), b, alloc) for c, b in zip(a, bare, strict=True)]
            expr = _chain("ADD", [t for t in scaled if t is not None])
        b0 = float(coef[-1])
        if abs(b0) > 1e-12 * max(float(np.abs(y).max()), 1e-300):
            expr = ex.call("ADD", expr, write_number(_snap(b0), _form(b0), alloc))
        return expr, out
    P = np.prod(H, axis=0)
    pp = float(P @ P)
    if not (math.isfinite(pp) and pp > 0):
        return None, {}
    expr = _times(float(P @ y) / pp, _chain("MUL", bare), alloc)
    return expr, out


def _bare(e: ex.Expr, mode: str) -> ex.Expr:
    """`e` without its outer constant factors (and, in a sum, its outer constant offsets)."""
    while isinstance(e, ex.Call) and len(e.args) in (1, 2):
        a = e.args
        if e.op == "NEG":
            e = a[0]
        elif len(a) == 1:
            break
        elif e.op == "MUL" and ex.is_constant(a[0]):
            e = a[1]
        elif ex.is_constant(a[1]) and (
            e.op in ("MUL", "DIV") or (mode == "additive" and e.op in ("ADD", "SUB"))
        ):
            e = a[0]
        elif mode == "additive" and e.op == "ADD" and ex.is_constant(a[0]):
            e = a[1]
        else:
            break
    return e


def _form(v: float) -> Form | None:
    """The shortest exact form within rounding of v (None: keep the float)."""
    found = forms(v, 1e-12 * abs(v))
    return found[0] if found else None


def _snap(v: float) -> float:
    f = _form(v)
    return math.copysign(f.value, v) if f is not None else v


def _times(a: float, e: ex.Expr, alloc: Alloc) -> ex.Expr | None:
    v = _snap(a)
    if v == 0.0:
        return None
    if v == 1.0:
        return e
    if v == -1.0:
        return ex.call("NEG", e)
    return write_times(v, _form(a), e, alloc)


def _chain(op: str, terms: list[ex.Expr]) -> ex.Expr:
    expr = terms[-1]
    for t in reversed(terms[:-1]):
        expr = ex.call(op, t, expr)
    return expr
