"""Stages that make a fit without enumerating the original problem: the power law (a
monomial fitted in log space, `powerlaw.py`), dimensional analysis (the dimensionless problem
searched, `dimensions.py`) and output transforms (T(y) searched, the fit inverted). Each gives
a `Found` that `discover.search` weighs like a search's, and each fit passes the search's
acceptance test on every original row before it is taken (`lifted`).

The derived problems are searched by `discover.search` itself, passed in as `search_fn` (this
module is below discover.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry import separable
from circuitlab.registry.build import Finisher
from circuitlab.registry.constants import Alloc, Form, forms, write_number, write_times
from circuitlab.registry.dimensions import Units, reductions
from circuitlab.registry.domains import Domain, RegistryError
from circuitlab.registry.examples import Examples
from circuitlab.registry.function import Function
from circuitlab.registry.powerlaw import groups_of, power_law
from circuitlab.registry.results import (
    DiscoveryConfig,
    DiscoveryResult,
    Entry,
    Found,
    StageRun,
    provenance,
)
from circuitlab.registry.sampling import Sample
from circuitlab.registry.search import SearchStats, agrees, tolerance
from circuitlab.registry.stages import Stage

SearchFn = Callable[..., DiscoveryResult]
# the share of the time budget the dimensionless problem gets when units are given; the
# original problem has the rest
UNITS_SHARE = 0.5


# how a stage that is not an enumerative search made its fit, for the result's message
METHODS = {
    "power law": "a monomial fitted in log space",
    "units": "a dimensionless problem searched, then scaled back",
    "separable": "groups of columns that do not interact searched apart, then combined",
    "symmetry": "a pair of columns read through their difference, one column fewer",
}


def power_law_stage(
    data: Examples,
    sample: Sample,
    domains: list[Domain],
    resolve: ex.Resolver | None,
    cfg: DiscoveryConfig,
    proposer: str,
    name: str,
) -> tuple[Found | None, str]:
    """The power-law stage (powerlaw.py) as a stage run: its exact monomial as a function,
    or None; and its note. Fitted on the rows searched, checked on every row."""
    t0 = time.perf_counter()
    rows = sample.full or sample.rows
    law, note = power_law(sample.rows, rows, cfg.rtol, cfg.exclude, data.names)
    if law is None:
        return None, note
    stage = Stage(law.groups, method="power law")
    stats = SearchStats(candidates=law.checked, max_cost=cfg.cost_limit)
    run = StageRun(stage, 0, cfg.max_seconds, stats, True)
    finisher = Finisher(rows, data, domains, resolve, cfg.seed)
    prov = provenance(data, sample, cfg, proposer, [run], stage)
    try:
        fn, rel = finisher.finish(law.expr, law.consts, name, "exact", prov)
    except RegistryError as exc:  # a column it reads but does not depend on: not taken
        return None, f"not taken: {exc}"
    stats.seconds = time.perf_counter() - t0
    return found_fit(fn, rel, run, sample, resolve), note


def found_fit(
    fn: Function,
    rel: dict[str, bool],
    run: StageRun,
    sample: Sample,
    resolve: ex.Resolver | None,
) -> Found:
    """A function made without a search (power law, units) as the best fit of its stage; its
    cost level is the formula's complexity (not bounded by the cost limit). Its loss: the mean
    squared error on the training rows (0 for an exact fit)."""
    try:
        sym = str(fn.sympy(resolve))
    except Exception:  # as in `_entries`: the table shows the rest
        sym = ""
    run.stats.level = run.max_cost = fn.complexity
    rows = sample.rows
    var = float(np.var(rows.y_train)) or 1.0
    loss = 0.0
    if fn.status != "exact":
        with np.errstate(all="ignore"):
            pred = fn.on_columns(rows.X[rows.train], None, resolve)
        loss = float(np.mean((pred - rows.y_train) ** 2))
    entry = Entry(fn.complexity, loss, fn, None, -math.inf, sym, var)
    key = (fn.complexity, len(fn.constants), bool(fn.uses()))
    return Found(key, fn, rel, [entry], run)


def units_stage(
    data: Examples,
    units: Units,
    sample: Sample,
    domains: list[Domain],
    resolve: ex.Resolver | None,
    cfg: DiscoveryConfig,
    proposer: str,
    name: str,
    search_fn: SearchFn,
) -> tuple[Found | None, list[StageRun], str]:
    """Dimensional analysis as a stage (see `search`): the exact function P * f(g), or None;
    the stage runs, one per reduction searched (none when there was nothing to reduce); and
    a note. Which columns become the pivots decides how f reads ((1 - a*b)/sqrt(1 - b^2) or
    (a - b)/sqrt(1 - b^2) for I.15.3x), and the data cannot say which is simpler, so each
    distinct reduction of `dimensions.reductions` is searched in turn, within an equal part
    of UNITS_SHARE of the budget; the first exact one wins."""
    magnitudes = np.median(np.abs(data.X), axis=0)
    options = reductions(units, data.names, data.output_name, magnitudes)
    red = options[0]
    if not red.changes:
        return None, [], "units: every column is dimensionless and so is the output"
    if not red.groups:  # y = C * P: a monomial, the power law's to find
        return None, [], f"units: {data.output_name} = C * {red.render(data.names)}"
    runs: list[StageRun] = []
    notes: list[str] = []
    share = cfg.max_seconds * UNITS_SHARE / len(options)
    for red in options:
        note = f"{data.output_name} = {red.render(data.names)}"
        G, yr = red.table(data.X, data.y)
        if not (np.isfinite(G).all() and np.isfinite(yr).all()):
            notes.append(f"{note}: not finite on some row (a zero column?), not searched")
            continue
        t0 = time.perf_counter()
        sub = Examples.from_arrays(G, yr, red.names, data.output_name)
        sub_cfg = replace(cfg, max_seconds=share, use_registry=False)
        inner = search_fn(sub, name=name, config=sub_cfg)
        stats = replace(inner.stats, seconds=time.perf_counter() - t0)
        run = StageRun(Stage(("arithmetic",), method="units"), stats.level, share, stats, False)
        runs.append(run)
        if inner.function is None:
            notes.append(f"{note}: no exact f ({inner.stats.stopped})")
            continue
        f = inner.function
        expr, consts = red.lift(f.expr, dict(f.constants), [i.name for i in f.inputs])
        found, why = lifted(expr, consts, run, data, sample, domains, resolve, cfg, proposer, name)
        if found is None:
            notes.append(f"{note}: f = {f.render()} {why}")
            continue
        runs[-1] = found.run
        return found, runs, f"units: {note}, f = {f.render()}"
    return None, runs, "units: " + "; ".join(notes)


def lifted(
    expr: ex.Expr,
    consts: dict[str, float],
    run: StageRun,
    data: Examples,
    sample: Sample,
    domains: list[Domain],
    resolve: ex.Resolver | None,
    cfg: DiscoveryConfig,
    proposer: str,
    name: str,
) -> tuple[Found | None, str]:
    """A formula of the original columns made from a fit to a derived problem (units, an
    output transform), taken only if it passes the acceptance test on every original row;
    `run` is the derived search's. None and why when it does not. In approximate mode (the
    derived fit is approximate too) there is no acceptance test: it is the answer."""
    rows = sample.full or sample.rows
    if not cfg.approximate:
        scale, tol = tolerance(rows, cfg.rtol)
        with np.errstate(all="ignore"):
            pred = np.broadcast_to(
                np.asarray(ex.evaluate(expr, list(rows.X.T), consts, resolve), dtype=np.float64),
                (len(rows.X),),
            )
        if not agrees(pred, rows, tol, cfg.rtol, scale):
            return None, "fails on the original rows"
    run = replace(run, stage=replace(run.stage, groups=groups_of(expr)), found=True)
    finisher = Finisher(rows, data, domains, resolve, cfg.seed)
    prov = provenance(data, sample, cfg, proposer, [run], run.stage)
    status = "approximate" if cfg.approximate else "exact"
    try:
        fn, rel = finisher.finish(expr, consts, name, status, prov)
    except RegistryError as exc:  # a column it reads but does not depend on: not taken
        return None, f"not taken: {exc}"
    return found_fit(fn, rel, run, sample, resolve), ""


# output transforms: (name, whether it applies to y, T(y), the inverse as a formula of f = T(y))
TRANSFORM_SHARE = 0.04  # of the time budget, each
TRANSFORMS: tuple[tuple[str, Callable[[np.ndarray], bool], Callable, Callable], ...] = (
    ("1/y", lambda y: bool((y != 0).all()), lambda y: 1 / y, lambda f, one: ex.call("DIV", one, f)),
    ("y^2", lambda y: bool((y > 0).all()), np.square, lambda f, one: ex.call("SQRT", f)),
    ("sqrt(y)", lambda y: bool((y > 0).all()), np.sqrt, lambda f, one: ex.call("SQUARE", f)),
    (
        "1/y^2",
        lambda y: bool((y > 0).all()),
        lambda y: 1 / np.square(y),
        lambda f, one: ex.call("DIV", one, ex.call("SQRT", f)),
    ),
    ("log(y)", lambda y: bool((y > 0).all()), np.log, lambda f, one: ex.call("EXP", f)),
    (
        "arcsin(y)",
        lambda y: bool((np.abs(y) <= 1).all()),
        np.arcsin,
        lambda f, one: ex.call("SIN", f),
    ),
    ("sin(y)", lambda y: True, np.sin, lambda f, one: ex.call("ASIN", f)),
    (
        "artanh(y)",
        lambda y: bool((np.abs(y) < 1).all()),
        np.arctanh,
        lambda f, one: ex.call("TANH", f),
    ),
)


def transform_stage(
    data: Examples,
    sample: Sample,
    domains: list[Domain],
    resolve: ex.Resolver | None,
    cfg: DiscoveryConfig,
    proposer: str,
    name: str,
    t0: float,
    search_fn: SearchFn,
) -> tuple[Found | None, list[StageRun]]:
    """Search T(y) for each output transform T up to stage_cost (TRANSFORM_SHARE of the budget
    each, the power law included), and write y = T^-1(f) in the original columns: AI Feynman's
    brute force tries the same inverses. 1/sqrt(1 - g^2) is cost 7 for the search, but
    1/y^2 = 1 - g^2 is cost 4. The first that passes the acceptance test on every row wins."""
    runs: list[StageRun] = []
    banned = set(cfg.exclude) - {"POW"}  # POW is left out of the enumeration, not banned
    sub_cfg = replace(
        cfg,
        max_cost=min(cfg.stage_cost, cfg.cost_limit),
        transforms=False,
        use_registry=False,
    )
    for label, applies, forward, inverse in TRANSFORMS:
        left = cfg.max_seconds - (time.perf_counter() - t0)
        if left <= 0:
            break
        if not applies(data.y) or _ops(inverse(ex.Var(0), ex.Var(0))) & banned:
            continue
        with np.errstate(all="ignore"):
            ty = forward(data.y)
        if not np.isfinite(ty).all():
            continue
        started = time.perf_counter()
        sub = Examples.from_arrays(data.X, ty, data.names, data.output_name)
        budget = min(left, cfg.max_seconds * TRANSFORM_SHARE)
        inner = search_fn(sub, name=name, config=replace(sub_cfg, max_seconds=budget))
        stats = replace(inner.stats, seconds=time.perf_counter() - started)
        run = StageRun(
            Stage(("arithmetic",), method=f"y from {label}"), stats.level, budget, stats, False
        )
        runs.append(run)
        f = inner.function
        if f is None:
            continue
        consts = dict(f.constants)
        one = ex.Const(_fresh_const(consts))
        consts[one.name] = 1.0
        mapping = {i: ex.Var(data.names.index(inp.name)) for i, inp in enumerate(f.inputs)}
        expr = inverse(ex.substitute(f.expr, mapping), one)
        found, _ = lifted(expr, consts, run, data, sample, domains, resolve, cfg, proposer, name)
        if found is not None:
            runs[-1] = found.run
            return found, runs
    return None, runs


SEPARABLE_SHARE = 0.5  # of the time budget, for the groups' searches together
SYMMETRY_SHARE = 0.5  # of the time budget, for the problem with one column fewer


def separable_stage(
    data: Examples,
    sample: Sample,
    domains: list[Domain],
    resolve: ex.Resolver | None,
    cfg: DiscoveryConfig,
    proposer: str,
    name: str,
    oracle: Callable[..., np.ndarray],
    search_fn: SearchFn,
) -> tuple[Found | None, list[StageRun], str]:
    """Split a function that can be queried into groups of columns that do not interact
    (`separable.split`: f = sum_c g_c(x_c) + C, or prod_c g_c(x_c) * C), search each g_c on
    the data's values of its columns with the other columns held at a reference point (their
    medians; the oracle gives the outputs and checks the probes), and combine:
    sum_c g_c - (m - 1) f(ref), or prod_c g_c / f(ref)^(m - 1). Each group's search is itself
    a full discovery with the oracle, so a group splits again where it can (q * (Ef + B*v) is
    q times a sum). The combination passes the acceptance test on every row, or is not taken.
    Returns the fit or None, the runs, and a note."""
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
    for g in parts:
        X = np.repeat(ref[None], data.n, axis=0)
        X[:, g] = data.X[:, g]
        with np.errstate(all="ignore"):
            yg = np.broadcast_to(np.asarray(oracle(*X.T), dtype=np.float64), (data.n,))
        if not np.isfinite(yg).all():
            return None, runs, f"{note}: a group's outputs are not finite"
        t0 = time.perf_counter()
        sub = Examples.from_arrays(data.X[:, g], yg, [data.names[j] for j in g], data.output_name)
        inner = search_fn(
            sub,
            name=name,
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
            rename[c] = _fresh_const(consts)
            consts[rename[c]] = v
        mapping = {i: ex.Var(data.names.index(inp.name)) for i, inp in enumerate(f.inputs)}
        terms.append(ex.rename_constants(ex.substitute(f.expr, mapping), rename))
    why = ""
    for expr, cs in (
        _refitted(terms, consts, mode, sample, resolve),
        _combined(terms, consts, mode, f_ref, len(parts)),
    ):
        if expr is None:
            continue
        fit, why = lifted(expr, cs, runs[-1], data, sample, domains, resolve, cfg, proposer, name)
        if fit is not None:
            runs[-1] = fit.run
            return fit, runs, note
    return None, runs, f"{note}: the combination {why}"


def symmetry_stage(
    data: Examples,
    sample: Sample,
    domains: list[Domain],
    resolve: ex.Resolver | None,
    cfg: DiscoveryConfig,
    proposer: str,
    name: str,
    oracle: Callable[..., np.ndarray],
    search_fn: SearchFn,
) -> tuple[Found | None, list[StageRun], str]:
    """Translational symmetry of a function that can be queried (`separable.translation_pairs`):
    when f(x_i + s, x_j + s) = f(x), search the problem with one column x_i - x_j in place of
    the two (with its own oracle, so further pairs are found in turn) within SYMMETRY_SHARE of
    the budget, and write the fit back with SUB(x_i, x_j). Returns the fit or None, the runs,
    and a note."""
    rng = np.random.default_rng(cfg.seed + 1)
    a = np.stack([d.sample(rng, separable.TRIALS) for d in domains], axis=1)
    spread = np.ptp(data.X, axis=0).max(initial=0.0) or 1.0
    shift = rng.uniform(0.05, 0.2, separable.TRIALS) * spread
    pairs = separable.translation_pairs(oracle, a, shift)
    if not pairs:
        return None, [], ""
    i, j = pairs[0]
    ni, nj = data.names[i], data.names[j]
    rest = [c for c in range(data.k) if c not in (i, j)]
    label = _fresh_name(f"{ni}_minus_{nj}", data.names)
    note = f"symmetry: f reads {ni} - {nj}"
    X = np.concatenate([(data.X[:, i] - data.X[:, j])[:, None], data.X[:, rest]], axis=1)
    sub = Examples.from_arrays(X, data.y, [label, *(data.names[c] for c in rest)], data.output_name)
    at = float(np.median(data.X[:, j]))
    t0 = time.perf_counter()
    budget = cfg.max_seconds * SYMMETRY_SHARE
    inner = search_fn(
        sub,
        name=name,
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
    mapping = {n: back[sub.names.index(inp.name)] for n, inp in enumerate(f.inputs)}
    expr = ex.substitute(f.expr, mapping)
    fit, why = lifted(
        expr, dict(f.constants), run, data, sample, domains, resolve, cfg, proposer, name
    )
    if fit is None:
        return None, [run], f"{note}: {why}"
    return fit, [fit.run], f"{note}; {inner.power_law}" if inner.power_law else note


def _fresh_name(stem: str, taken: Sequence[str]) -> str:
    out = stem
    while out in taken:
        out = "_" + out
    return out


def _combined(
    terms: list[ex.Expr], consts: dict[str, float], mode: str, f_ref: float, m: int
) -> tuple[ex.Expr, dict[str, float]]:
    """sum_c g_c - (m - 1) f(ref), or prod_c g_c / f(ref)^(m - 1), as the groups' fits are."""
    op, inverse = ("ADD", "SUB") if mode == "additive" else ("MUL", "DIV")
    out = dict(consts)
    expr = _chain(op, terms)
    rest = (m - 1) * f_ref if mode == "additive" else f_ref ** (m - 1)
    if rest != (0.0 if mode == "additive" else 1.0):
        key = _fresh_const(out)
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
        key = _fresh_const(out)
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


def _ops(e: ex.Expr) -> set[str]:
    return {n.op for n in ex.walk(e) if isinstance(n, ex.Call)}


def _fresh_const(taken: dict[str, float]) -> str:
    i = 0
    while f"t{i}" in taken:
        i += 1
    return f"t{i}"
