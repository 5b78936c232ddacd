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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry.build import Finisher
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
from circuitlab.registry.search import Rows, SearchStats, agrees, tolerance
from circuitlab.registry.stages import Stage

SearchFn = Callable[..., DiscoveryResult]
# the share of the time budget the dimensionless problem gets when units are given; the
# original problem has the rest
UNITS_SHARE = 0.5


@dataclass(frozen=True)
class Context:
    """What every stage of one discovery reads: the examples, the rows (`sample`: those
    searched and all of them), each column's domain, the resolver of registered functions,
    the configuration, the proposer's name, the function's name, and `discover.search` for
    the derived problems."""

    data: Examples
    sample: Sample
    domains: list[Domain]
    resolve: ex.Resolver | None
    cfg: DiscoveryConfig
    proposer: str
    name: str
    search_fn: SearchFn

    @property
    def rows(self) -> Rows:
        """Every row, [training | held-out | probes] (the sample's when there is no more)."""
        return self.sample.full or self.sample.rows

    def finish(
        self, expr: ex.Expr, consts: dict[str, float], status: str, run: StageRun
    ) -> tuple[Function, dict[str, bool]]:
        """The function of a fit made by stage `run` (simplified, its inputs the relevant
        columns, with this discovery's provenance); RegistryError when it reads a column it
        does not depend on."""
        finisher = Finisher(self.rows, self.data, self.domains, self.resolve, self.cfg.seed)
        prov = provenance(self.data, self.sample, self.cfg, self.proposer, [run], run.stage)
        return finisher.finish(expr, consts, self.name, status, prov)


# how a stage that is not an enumerative search made its fit, for the result's message
METHODS = {
    "power law": "a monomial fitted in log space",
    "units": "a dimensionless problem searched, then scaled back",
    "separable": "groups of columns that do not interact searched apart, then combined",
    "symmetry": "a pair of columns read through their difference, one column fewer",
}


def power_law_stage(ctx: Context) -> tuple[Found | None, str]:
    """The power-law stage (powerlaw.py) as a stage run: its exact monomial as a function,
    or None; and its note. Fitted on the rows searched, checked on every row."""
    t0 = time.perf_counter()
    cfg = ctx.cfg
    law, note = power_law(ctx.sample.rows, ctx.rows, cfg.rtol, cfg.exclude, ctx.data.names)
    if law is None:
        return None, note
    stats = SearchStats(candidates=law.checked, max_cost=cfg.cost_limit)
    run = StageRun(Stage(law.groups, method="power law"), 0, cfg.max_seconds, stats, True)
    try:
        fn, rel = ctx.finish(law.expr, law.consts, "exact", run)
    except RegistryError as exc:  # a column it reads but does not depend on: not taken
        return None, f"not taken: {exc}"
    stats.seconds = time.perf_counter() - t0
    return found_fit(ctx, fn, rel, run), note


def found_fit(ctx: Context, fn: Function, rel: dict[str, bool], run: StageRun) -> Found:
    """A function made without a search (power law, units) as the best fit of its stage; its
    cost level is the formula's complexity (not bounded by the cost limit). Its loss: the mean
    squared error on the training rows (0 for an exact fit)."""
    sample, resolve = ctx.sample, ctx.resolve
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


def units_stage(ctx: Context, units: Units) -> tuple[Found | None, list[StageRun], str]:
    """Dimensional analysis as a stage (see `search`): the exact function P * f(g), or None;
    the stage runs, one per reduction searched (none when there was nothing to reduce); and
    a note. Which columns become the pivots decides how f reads ((1 - a*b)/sqrt(1 - b^2) or
    (a - b)/sqrt(1 - b^2) for I.15.3x), and the data cannot say which is simpler, so each
    distinct reduction of `dimensions.reductions` is searched in turn, within an equal part
    of UNITS_SHARE of the budget; the first exact one wins."""
    data, cfg, name, search_fn = ctx.data, ctx.cfg, ctx.name, ctx.search_fn
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
        found, why = lifted(ctx, expr, consts, run)
        if found is None:
            notes.append(f"{note}: f = {f.render()} {why}")
            continue
        runs[-1] = found.run
        return found, runs, f"units: {note}, f = {f.render()}"
    return None, runs, "units: " + "; ".join(notes)


def written_over(f: Function, columns: Mapping[str, ex.Expr]) -> ex.Expr:
    """f's formula with each input read from `columns` (the input's name -> a formula of the
    original columns): how a fit to a derived table is written back in the original one."""
    return ex.substitute(f.expr, {i: columns[inp.name] for i, inp in enumerate(f.inputs)})


def lifted(
    ctx: Context, expr: ex.Expr, consts: dict[str, float], run: StageRun
) -> tuple[Found | None, str]:
    """A formula of the original columns made from a fit to a derived problem (units, an
    output transform), taken only if it passes the acceptance test on every original row;
    `run` is the derived search's. None and why when it does not. In approximate mode (the
    derived fit is approximate too) there is no acceptance test: it is the answer."""
    rows, cfg = ctx.rows, ctx.cfg
    used = ex.constants_used(expr)  # a derived formula may not use every constant offered
    consts = {k: v for k, v in consts.items() if k in used}
    if not cfg.approximate:
        scale, tol = tolerance(rows, cfg.rtol)
        with np.errstate(all="ignore"):
            out = ex.evaluate(expr, list(rows.X.T), consts, ctx.resolve)
            pred = np.broadcast_to(np.asarray(out, dtype=np.float64), (len(rows.X),))
        if not agrees(pred, rows, tol, cfg.rtol, scale):
            return None, "fails on the original rows"
    run = replace(run, stage=replace(run.stage, groups=groups_of(expr)), found=True)
    try:
        fn, rel = ctx.finish(expr, consts, "approximate" if cfg.approximate else "exact", run)
    except RegistryError as exc:  # a column it reads but does not depend on: not taken
        return None, f"not taken: {exc}"
    return found_fit(ctx, fn, rel, run), ""


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


def transform_stage(ctx: Context, t0: float) -> tuple[Found | None, list[StageRun]]:
    """Search T(y) for each output transform T up to stage_cost (TRANSFORM_SHARE of the budget
    each, the power law included), and write y = T^-1(f) in the original columns: AI Feynman's
    brute force tries the same inverses. 1/sqrt(1 - g^2) is cost 7 for the search, but
    1/y^2 = 1 - g^2 is cost 4. The first that passes the acceptance test on every row wins."""
    data, cfg, name, search_fn = ctx.data, ctx.cfg, ctx.name, ctx.search_fn
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
        if not applies(data.y) or ex.operations(inverse(ex.Var(0), ex.Var(0))) & banned:
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
        one = ex.Const(ex.fresh_name(consts, "t"))
        consts[one.name] = 1.0
        expr = inverse(written_over(f, {n: ex.Var(j) for j, n in enumerate(data.names)}), one)
        found, _ = lifted(ctx, expr, consts, run)
        if found is not None:
            runs[-1] = found.run
            return found, runs
    return None, runs
