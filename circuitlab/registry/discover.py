"""Discovery from examples: `discover(examples) -> Function`.

1. Validate the examples (equal rows, numbers only, finite outputs, enough rows for the
   unknowns) and split them (seeded) into training and held-out rows; draw fresh probe inputs
   from each column's observed domain. A table of more than `search_rows` rows is searched on
   a seeded sample of them (`search_sample`: search_rows training rows, half as many held-out
   rows), so memory and time follow the sample; a fit found there is accepted only if it holds,
   constants as fitted, on every row, and one that does not sends the search back to the start
   with the rows where it failed added to the sample (at most MAX_RESTARTS times per stage,
   then such fits are only rejected).
2. Units (`dimensions.py`, when the columns' units are given): dimensional analysis writes
   y = P(x) * f(g), P a monomial with the units of y and g the dimensionless groups; f is
   searched (this whole procedure, on the table (g, y / P)) within UNITS_SHARE of the budget,
   and P * f(g) is taken if it passes the acceptance test on the original rows. Otherwise the
   original problem is searched in the time left. In approximate mode, P * f(g) with f the
   dimensionless problem's approximate fit is the answer.
3. Power law (`powerlaw.py`, automatic staging in exact mode only): y = C * prod x_j^a_j,
   exponents from a least-squares fit of log|y| on log|x_j| rounded to p/q (q <= 3), C by
   least squares and snapped as in 5, taken only if it passes the search's acceptance test on
   every row (exact on all training and held-out rows, defined on the probes). In
   milliseconds it finds what the search reaches only at cost 7 or beyond (mu*q*V/d). An
   exact monomial is the answer, shown as the stage "power law (groups)"; when registered
   functions are offered, the search still runs below the monomial's complexity and a
   smaller formula found there wins. Otherwise the search runs as without it.
4. Search (`search.py`): bottom-up enumeration over primitives and registered functions,
   deduplicated by observational equivalence, with affine constants fitted by least squares.
   A registered function is applied only inside its declared input domains, and at equal cost
   a plain formula wins over a call of a registered function. The search is staged
   (`stages.py`): a sequence of smaller searches, each over a few primitive groups chosen from
   the data (arithmetic first, then integer division, then modular arithmetic with each
   inferred modulus, ...), in rounds of rising cost, stopping at the first exact fit. After
   the first round (real data), output transforms are searched up to its cost: T(y) for T in
   1/y, y^2, sqrt(y), 1/y^2, log(y), arcsin(y), sin(y), artanh(y), the fit inverted
   (1/sqrt(1 - g^2) is cost 7; 1/y = sqrt(1 - g^2) is cost 5). The stages that make a fit
   without enumerating the original problem (2, 3 and the transforms) live in `derived.py`.
5. Simplify each accepted fit: constants snapped to their shortest exact form that keeps exact
   agreement (an integer, a short decimal, p/q, or p/q times pi, e or sqrt(k): 1/(2*pi) rather
   than 0.159155), unit coefficients and zero terms dropped, `x + 1` written INC(x).
6. Decide column relevance by intervention: resample one column at a time across all rows and
   probes; a column is relevant only if the function's output changes. The function's inputs are
   the relevant columns, never chosen by correlation.
7. Return the simplest accepted function (status exact), or, on noisy data when asked, the fit
   with the shortest description length among the Pareto front (status approximate), with a
   PySR-style table (complexity, loss, score, expression, sympy form). Approximate fits keep an
   exact constant (0.5, 1/(4*pi)) or an intercept only as far as the description length says
   (`Builder.refine`); approximate mode searches up to cost 5 unless `max_cost` is given. A
   failed search raises `DiscoveryError` and registers nothing; registering a function the
   registry already holds under that name (same definition) writes nothing and returns the
   stored one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from circuitlab.registry.build import Builder
from circuitlab.registry.derived import (
    METHODS,
    Context,
    power_law_stage,
    transform_stage,
    units_stage,
)
from circuitlab.registry.dimensions import Units
from circuitlab.registry.domains import Domain, Kind, RegistryError
from circuitlab.registry.examples import Examples
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.ops import NUMERIC_GROUPS, build_ops
from circuitlab.registry.proposer import Proposer, UniformProposer
from circuitlab.registry.registration import check_register_name, register_found
from circuitlab.registry.registry import Registry
from circuitlab.registry.results import (
    DiscoveryConfig,
    DiscoveryError,
    DiscoveryResult,
    Entry,
    Found,
    StageRun,
    TableRow,
    check_groups,
    check_moduli,
    pareto_front,
    provenance,
    total_stats,
)
from circuitlab.registry.sampling import (
    Sample,
    check_memory,
    check_search_rows,
    sample_sizes,
    split_rows,
)
from circuitlab.registry.search import (
    Hypothesis,
    Op,
    Rows,
    SearchConfig,
    Searcher,
    SearchOutcome,
    SearchStats,
)
from circuitlab.registry.splits import separable_stage, symmetry_stage
from circuitlab.registry.stages import plan_stages

# re-exported: the discovery API has always been importable from here
__all__ = [
    "NUMERIC_GROUPS",
    "DiscoveryConfig",
    "DiscoveryError",
    "DiscoveryResult",
    "StageRun",
    "TableRow",
    "check_groups",
    "check_memory",
    "check_moduli",
    "check_register_name",
    "check_search_rows",
    "discover",
    "register_found",
    "search",
    "search_sample",
]

ROUND_STEP = 2  # rounds of a staged search raise the cost limit by this much
# searches of one stage begun again with the rows where a fit to the sample failed; after
# that, such fits are rejected and the search goes on
MAX_RESTARTS = 3


# ---------------------------------------------------------------------------------------------
# public API


def discover(
    examples: Any,
    *,
    names: Sequence[str] | None = None,
    name: str = "F",
    registry: Registry | None = None,
    proposer: Proposer | None = None,
    config: DiscoveryConfig | None = None,
    oracle: Callable[..., Any] | None = None,
    register: bool = False,
    units: Units | None = None,
) -> Function:
    """The simplest function that fits `examples` exactly (or approximately, when configured).

    examples: a sequence of (inputs, output) rows, a pair (X, y) of arrays, or `Examples`.
    registry: its functions are offered as building blocks; with `register=True` the result is
    stored there, unless the registry already holds a function of that name with the same
    definition, which is returned instead (re-running a discovery is idempotent); a name held
    by a different function is refused. oracle: a callable of all the columns giving the true
    outputs on the probe inputs, when the examples come from a known process. units: each
    column's and the output's physical units (`dimensions.Units`), for dimensional analysis.
    Raises `DiscoveryError` when nothing fits, leaving the registry untouched.
    """
    data = Examples.coerce(examples, names)
    rtol = (config or DiscoveryConfig()).rtol
    if register:
        if registry is None:
            raise RegistryError("register=True needs a registry")
        check_register_name(registry, name, data, rtol)  # a clear error before any work
    result = search(
        data,
        name=name,
        registry=registry,
        proposer=proposer,
        config=config,
        oracle=oracle,
        units=units,
    )
    if result.function is None:
        raise DiscoveryError(result.message, result)
    if register:
        assert registry is not None
        return register_found(registry, result.function, rtol)[0]
    return result.function


def search(
    examples: Any,
    *,
    names: Sequence[str] | None = None,
    name: str = "F",
    registry: Registry | None = None,
    proposer: Proposer | None = None,
    config: DiscoveryConfig | None = None,
    oracle: Callable[..., Any] | None = None,
    units: Units | None = None,
) -> DiscoveryResult:
    """Like `discover` but returns the full result (statistics, table) and never raises on a
    failed search (only on bad input). It writes nothing, so `name` may be taken: the function
    of that name is then left out of the building blocks (a function is never defined as a
    call of an earlier version of itself).

    The search runs in stages (`stages.plan_stages`: arithmetic, then integer division, then
    modular arithmetic with each candidate modulus, ...), each a separate, smaller search,
    and stops at the first exact fit. With several stages it goes in rounds of rising cost
    limit (`_rounds`: 5, 7, 9), each stage searched in turn within an equal share of the
    round's time, so that a small formula of a later stage is not kept waiting by a deep
    search of an earlier one. A fit found within `stage_cost` is compared with what the
    later stages of its round find up to its cost, and the smallest wins (ties: the earlier
    stage). The statistics add up every stage run; `DiscoveryResult.stages` lists them.
    Approximate mode searches the first stage only.

    Before the stages (exact mode, groups not given) the power law (`powerlaw.py`) fits a
    monomial; an exact one ends the discovery, listed as the first stage, unless registered
    functions are offered: the stages are then searched up to its complexity - 1, and it is
    kept unless they find a smaller fit. `DiscoveryResult.power_law` says what it found.

    With `units`, dimensional analysis comes first (`dimensions.py`): y = P(x) *
    f(g), with P a monomial of the units of y and g the dimensionless groups; f is searched on
    the table (g, y / P) within UNITS_SHARE of the time budget, and P * f(g) taken if it passes
    the acceptance test on the original rows. Otherwise the original problem is searched in
    the time left. In approximate mode the dimensionless problem is searched approximately,
    and its fit, scaled back, is the answer. `DiscoveryResult.units` says what it did.

    With an `oracle` (exact mode, two or more columns), after the power law: translational
    symmetry, then separability (`splits.py`), each splitting the problem into smaller ones
    searched with the oracle; `DiscoveryResult.structure` says what the tests found.

    A table of more than `search_rows` rows is searched on a sample of them (`Sample`), every
    accepted fit checked on all of them; approximate fits are fitted and scored on the sample."""
    cfg = config or DiscoveryConfig()
    data = Examples.coerce(examples, names)
    full, domains = _rows(data, cfg, oracle)
    sample = Sample.of(full, data.n, cfg)
    kinds = [d.kind for d in domains]
    reg = registry if cfg.use_registry else None
    resolve = registry.resolve if registry is not None else None
    prop = proposer or UniformProposer()
    stages = plan_stages(data.X, data.y, kinds, cfg.groups, cfg.moduli)
    if cfg.approximate:
        stages = stages[:1]
    t0 = time.perf_counter()
    ctx = Context(data, sample, domains, resolve, cfg, prop.name, name, search)
    runs: list[StageRun] = []
    units_note = ""
    if units is not None:
        found, tried, units_note = units_stage(ctx, units)
        runs += tried
        if found is not None:
            return _noted(_exact(found, runs, data, sample, cfg, prop.name, t0), units_note)
    # the power law first (automatic staging, exact mode): an exact monomial is the answer,
    # unless registered functions are offered, which may write it smaller: then the search
    # runs below its complexity, and the monomial is kept if it finds nothing smaller
    law: Found | None = None
    note = ""
    search_cfg = cfg
    if cfg.groups is None and not cfg.approximate:
        law, note = power_law_stage(ctx)
        if law is not None:
            runs.append(law.run)
            cap = min(cfg.cost_limit, law.key[0] - 1)
            if not _offers_registered(reg, name) or cap < 1:
                return _noted(_exact(law, runs, data, sample, cfg, prop.name, t0, note), units_note)
            search_cfg = replace(cfg, max_cost=cap)
    structure: list[str] = []  # what the symmetry and separability tests said
    if oracle is not None and data.k >= 2 and not cfg.approximate:
        for stage_fn in (symmetry_stage, separable_stage):
            found, tried, said = stage_fn(ctx, _guarded(oracle))
            runs += tried
            structure += [said] if said else []
            if found is not None:
                result = _exact(found, runs, data, sample, cfg, prop.name, t0, note)
                return _noted(result, units_note, structure)
    transforms = cfg.transforms and "elementary" in stages[0].groups
    rounds = _rounds(search_cfg, len(stages), transforms)
    entries: list[Entry] = []  # approximate fits of the stages that found nothing
    done: set[int] = set()  # stages that a further round cannot help
    for round_no, (limit, share) in enumerate(rounds):
        if round_no == 1 and transforms:
            found, tried = transform_stage(ctx, t0)
            runs += tried
            if found is not None:
                result = _exact(found, runs, data, sample, cfg, prop.name, t0, note)
                return _noted(result, units_note, structure)
        final = limit == search_cfg.cost_limit
        todo = [
            i for i in range(len(stages)) if i not in done and (final or not stages[i].last_resort)
        ]
        best: Found | None = None
        searcher: Searcher | None = None
        builder: Builder | None = None
        for n, i in enumerate(todo):
            left = cfg.max_seconds * share - (time.perf_counter() - t0)
            if left <= 0 and runs:
                break
            stage = stages[i]
            # after a small fit, the later stages are searched up to its cost only: a smaller
            # formula there (ADDMOD(a, 3, p=7) against one made of MOD and FLOORDIV) wins
            cap = limit if best is None else best.run.stats.level
            scfg = SearchConfig(
                max_cost=cap,
                max_seconds=max(left, 1e-3) / (len(todo) - n),
                max_bank=cfg.max_bank,
                memory_bytes=cfg.memory_bytes,
                rtol=cfg.rtol,
                pairs=cfg.pairs,
                seed=cfg.seed,
            )
            ops = build_ops(kinds, reg, cfg, stage, exclude=name)
            searcher = builder = None  # the last stage's bank goes before this one's grows
            searcher, outcome = _search_stage(sample, kinds, ops, prop, scfg)
            run = StageRun(stage, cap, scfg.max_seconds, outcome.stats, bool(outcome.accepted))
            runs.append(run)
            builder = _Builder(searcher, data, domains, resolve)
            prov = provenance(data, sample, cfg, prop.name, runs, stage)
            if cfg.approximate:
                outcome.stats = total_stats(runs, cfg, time.perf_counter() - t0)
                return _conclude(outcome, builder, name, prov, data, cfg, prop.name, runs)
            if outcome.accepted:
                key, fn, rel = _best_exact(outcome, builder, name, prov)
                if best is None or key < best.key:
                    # the table now, while this search's bank is at hand, rather than keeping
                    # the bank alive beside the later stages' (the memory budget is per search)
                    table = _entries(outcome, builder, name, prov, data, exact=fn)
                    best = Found(key, fn, rel, table, run)
                if outcome.stats.level > cfg.stage_cost:
                    break
                continue
            if best is None:
                entries += _entries(outcome, builder, name, prov, data)
                if limit == search_cfg.cost_limit or outcome.stats.stopped.startswith("bank"):
                    done.add(i)
        if best is not None:
            if law is not None and law.key <= best.key:  # a tie: the plain monomial
                best = law
            return _noted(
                _exact(best, runs, data, sample, cfg, prop.name, t0, note), units_note, structure
            )
    if law is not None:
        return _noted(
            _exact(law, runs, data, sample, cfg, prop.name, t0, note), units_note, structure
        )
    stats = total_stats(runs, cfg, time.perf_counter() - t0)
    result = _failed(stats, entries, cfg, prop.name, runs)
    result.power_law = note
    return _noted(result, units_note, structure)


def _guarded(oracle: Callable[..., Any]) -> Callable[..., np.ndarray]:
    """The oracle, its failures (user code) reported as a RegistryError, not a traceback."""

    def call(*cols: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(oracle(*cols), dtype=np.float64)
        except Exception as exc:
            msg = f"the oracle failed on inputs the structure tests chose: {exc}"
            raise RegistryError(msg) from None

    return call


def _noted(result: DiscoveryResult, units: str, structure: Sequence[str] = ()) -> DiscoveryResult:
    result.units = units
    result.structure = result.structure or "; ".join(structure)
    return result


def _exact(
    best: Found,
    runs: list[StageRun],
    data: Examples,
    sample: Sample,
    cfg: DiscoveryConfig,
    proposer: str,
    t0: float,
    note: str = "",
) -> DiscoveryResult:
    """The result of a staged discovery whose best fit is `best`: exact, or, from a derived
    stage in approximate mode (units), approximate."""
    stats = total_stats(runs, cfg, time.perf_counter() - t0)
    stats.level, stats.stopped, stats.refine = (
        best.run.stats.level,
        "",
        best.run.stats.refine,
    )
    prov = provenance(data, sample, cfg, proposer, runs, best.run.stage)
    fn = replace(best.fn, provenance=prov)
    exact = fn.status == "exact"
    table = pareto_front(best.entries, exact)
    method = best.run.stage.method
    how = METHODS.get(method, "the transformed output searched, the fit inverted" if method else "")
    said = (
        f"exact: {fn.render()} after {stats.evaluated:,} candidates"
        if exact
        else f"approximate (loss {table[-1].loss if table else math.nan:.3g}): {fn.render()}"
    )
    return DiscoveryResult(
        fn,
        fn.status,
        stats,
        table,
        best.rel,
        said + (f" ({method}: {how})" if how else ""),
        proposer,
        runs,
        note,
    )


def _offers_registered(registry: Registry | None, name: str) -> bool:
    """Whether a search would offer registered functions (numeric ones, other than `name`)."""
    if registry is None:
        return False
    return any(
        fn.name != name
        and fn.output.kind is not Kind.GRID
        and all(i.domain.kind is not Kind.GRID for i in fn.inputs)
        for fn in registry.functions()
    )


class _Builder(Builder):
    """A `Builder` whose functions are made with every row in view: simplification (outputs
    unchanged), relevance (resampling a column) and the output's domain read all the rows,
    not only those searched; constants and approximate fits stay on the searched rows, where
    the bank's values are."""

    def function(
        self, hyp: Hypothesis, name: str, status: str, provenance: Provenance
    ) -> tuple[Function, dict[str, bool]]:
        self.rows = self.s.all_rows
        try:
            return super().function(hyp, name, status, provenance)
        finally:
            self.rows = self.s.rows


def _search_stage(
    sample: Sample,
    kinds: Sequence[Kind],
    ops: list[Op],
    prop: Proposer,
    scfg: SearchConfig,
) -> tuple[Searcher, SearchOutcome]:
    """One stage's search on the sample. When a fit to the sample fails on the full rows, the
    search stops and begins again with the rows where it failed added to the sample (they
    tell apart candidates the sample had kept as one), at most MAX_RESTARTS times within the
    stage's time; the last attempt rejects such fits and goes on. The statistics add up every
    attempt; `sample` keeps the rows added, for the later stages."""
    t0 = time.perf_counter()
    restarts, candidates, pairs = 0, 0, 0
    while True:
        left = scfg.max_seconds - (time.perf_counter() - t0)
        attempt = replace(
            scfg,
            max_seconds=max(left, 1e-3),
            restart_on_counterexample=sample.full is not None and restarts < MAX_RESTARTS,
        )
        searcher = Searcher(sample.rows, kinds, ops, prop, attempt, full=sample.full)
        outcome = searcher.run()
        restart = attempt.restart_on_counterexample and not outcome.accepted
        restart = restart and bool(searcher.counterexamples)
        if not restart:
            break
        if time.perf_counter() - t0 >= scfg.max_seconds:
            outcome.stats.stopped = (
                f"time budget of {scfg.max_seconds:g} s ran out at cost {outcome.stats.level}"
            )
            break
        sample.add(searcher.counterexamples)
        restarts += 1
        candidates += outcome.stats.candidates
        pairs += outcome.stats.pairs
        searcher = outcome = None  # type: ignore[assignment]  # free the bank first
    if restarts:
        stats = outcome.stats
        stats.candidates += candidates
        stats.pairs += pairs
        stats.restarts = restarts
        stats.seconds = time.perf_counter() - t0
    return searcher, outcome


def _best_exact(
    outcome: SearchOutcome, b: Builder, name: str, prov: Provenance
) -> tuple[tuple[Any, ...], Function, dict[str, bool]]:
    """The simplest of a search's accepted fits, as a function, with its sort key and the
    relevance of each column; at equal size a plain formula beats one calling registered
    functions, and an earlier fit a later one."""
    best: tuple[Any, ...] | None = None
    for order, hyp in enumerate(outcome.accepted):
        fn, rel = b.function(b.snap(hyp), name, "exact", prov)
        key = (fn.complexity, len(fn.constants), bool(fn.uses()), order)
        if best is None or key < best[0]:
            best = (key, fn, rel)
    assert best is not None
    return best[0][:3], best[1], best[2]


def _rounds(
    cfg: DiscoveryConfig, n_stages: int, transforms: bool = False
) -> list[tuple[int, float]]:
    """(cost limit, share of the time budget by the end of the round) of each round of a
    staged search: stage_cost, then every second cost up to the limit (5, 7, 9), so a stage
    searches deeper only after every stage has had its turn at the cost below; one round
    for a single stage, or two (stage_cost, then the limit) when output transforms are
    searched between them."""
    if cfg.stage_cost >= cfg.cost_limit:
        return [(cfg.cost_limit, 1.0)]
    if n_stages == 1:
        return (
            [(cfg.stage_cost, 0.25), (cfg.cost_limit, 1.0)]
            if transforms
            else [(cfg.cost_limit, 1.0)]
        )
    costs = [*range(cfg.stage_cost, cfg.cost_limit, ROUND_STEP), cfg.cost_limit]
    return [(c, (i + 1) / len(costs)) for i, c in enumerate(costs)]


def search_sample(
    examples: Any,
    *,
    names: Sequence[str] | None = None,
    config: DiscoveryConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Which example rows (indices) a discovery evaluates candidates on, training and
    held-out, before any counterexample rows join them: all rows of a table of at most
    search_rows rows, else the first search_rows of the seeded shuffle of the training rows
    and the first search_rows // 2 of the held-out rows (a seeded sample)."""
    cfg = config or DiscoveryConfig()
    data = Examples.coerce(examples, names)
    tr, ho = split_rows(data, cfg, np.random.default_rng(cfg.seed))
    n_tr, n_ho = sample_sizes(data.n, len(tr), len(ho), cfg)
    return tr[:n_tr], ho[:n_ho]


def _rows(
    data: Examples, cfg: DiscoveryConfig, oracle: Callable[..., Any] | None
) -> tuple[Rows, list[Domain]]:
    """All the rows, [training | held-out | probes], and each column's domain."""
    rng = np.random.default_rng(cfg.seed)
    tr, ho = split_rows(data, cfg, rng)
    domains = data.domains()
    probes = (
        np.stack([d.sample(rng, cfg.probes) for d in domains], axis=1)
        if cfg.probes
        else np.zeros((0, data.k))
    )
    X = np.concatenate([data.X[tr], data.X[ho], probes])
    oracle_y = None
    if oracle is not None and cfg.probes:
        try:
            oracle_y = np.broadcast_to(
                np.asarray(oracle(*probes.T), dtype=np.float64), (cfg.probes,)
            ).copy()
        except Exception as exc:  # the oracle is user code: report, don't crash
            raise RegistryError(f"the oracle failed on probe inputs: {exc}") from None
    return Rows(X, data.y[tr], data.y[ho], len(tr), len(ho), oracle_y), domains


# ---------------------------------------------------------------------------------------------
# conclusion and results table


def _conclude(
    outcome: SearchOutcome,
    b: Builder,
    name: str,
    prov: Provenance,
    data: Examples,
    cfg: DiscoveryConfig,
    proposer: str,
    runs: list[StageRun],
) -> DiscoveryResult:
    """The result of the stage that ended the search: its simplest exact fit, or in
    approximate mode its fit with the shortest description length (or a failure)."""
    stats = outcome.stats
    if outcome.accepted:
        _, fn, rel = _best_exact(outcome, b, name, prov)
        table = pareto_front(_entries(outcome, b, name, prov, data, exact=fn), exact=True)
        return DiscoveryResult(
            fn,
            "exact",
            stats,
            table,
            rel,
            f"exact: {fn.render()} after {stats.evaluated:,} candidates",
            proposer,
            runs,
        )
    entries = _entries(outcome, b, name, prov, data, refine=True)
    table = pareto_front(entries, exact=False)
    if not table:
        return _failed(stats, entries, cfg, proposer, runs)
    chosen = next(r for r in table if r.chosen)
    hyp = chosen._hyp  # type: ignore[attr-defined]
    fn, rel = b.function(hyp, name, "approximate", prov)
    return DiscoveryResult(
        fn,
        "approximate",
        stats,
        table,
        rel,
        f"approximate (loss {chosen.loss:.3g}): {fn.render()}; searched to cost "
        f"{stats.level}, {cfg.cost_limit_note}" + _stopped_early(stats),
        proposer,
        runs,
    )


def _failed(
    stats: SearchStats,
    entries: list[Entry],
    cfg: DiscoveryConfig,
    proposer: str,
    runs: list[StageRun],
) -> DiscoveryResult:
    """No exact fit in any stage: the Pareto front of every stage's approximate fits."""
    table = pareto_front(entries, exact=False)
    hint = "" if cfg.approximate else "; ask for an approximate fit (--approximate) on noisy data"
    reason = stats.stopped or "no exact fit"
    best_loss = min((r.loss for r in table), default=float("nan"))
    return DiscoveryResult(
        None,
        "failed",
        stats,
        table,
        {},
        f"no exact function found ({reason}; best approximate loss "
        f"{best_loss:.3g}){hint}; nothing registered",
        proposer,
        runs,
    )


def _stopped_early(stats: SearchStats) -> str:
    """'; stopped: time budget ...' when a budget, not the cost limit, ended the search."""
    return f"; stopped: {stats.stopped}" if stats.stopped.startswith(("time", "bank")) else ""


def _entries(
    outcome: SearchOutcome,
    b: Builder,
    name: str,
    prov: Provenance,
    data: Examples,
    exact: Function | None = None,
    refine: bool = False,
) -> list[Entry]:
    """The best fit per complexity seen by one search, as functions (with `refine`,
    approximate mode, each fit's constants first snapped or dropped by description length,
    `Builder.refine`), and the exact fit if any. Made while that search's bank is at hand."""
    n_ops = max(2, len(b.s.ops) + data.k)
    var = float(np.var(b.rows.y_train)) or 1.0

    def sym(fn: Function) -> str:
        try:
            return str(fn.sympy(b.resolve))
        except Exception:  # sympy cannot render every primitive; the table shows the rest
            return ""

    out = []
    for _, (mse, hyp) in sorted(outcome.approximate.items()):
        try:
            if refine:
                hyp = b.refine(hyp, n_ops)
                mse = hyp.train_mse
            fn, _ = b.function(hyp, name, "approximate", prov)
        except RegistryError:
            continue
        dl = b.description_length(hyp, fn.complexity, n_ops)
        out.append(Entry(fn.complexity, float(mse), fn, hyp, dl, sym(fn), var))
    if exact is not None:
        out.append(Entry(exact.complexity, 0.0, exact, None, -math.inf, sym(exact), var))
    return out
