"""Discovery from examples: `discover(examples) -> Function`.

1. Validate the examples (equal rows, numbers only, finite outputs, enough rows for the
   unknowns) and split them (seeded) into training and held-out rows; draw fresh probe inputs
   from each column's observed domain. A table of more than `search_rows` rows is searched on
   a seeded sample of them (`search_sample`: search_rows training rows, half as many held-out
   rows), so memory and time follow the sample; a fit found there is accepted only if it holds,
   constants as fitted, on every row, and one that does not sends the search back to the start
   with the rows where it failed added to the sample (at most MAX_RESTARTS times per stage,
   then such fits are only rejected).
2. Power law (`powerlaw.py`, automatic staging in exact mode only): y = C * prod x_j^a_j,
   exponents from a least-squares fit of log|y| on log|x_j| rounded to p/q (q <= 3), C by
   least squares and snapped as in 4, taken only if it passes the search's acceptance test on
   every row (exact on all training and held-out rows, defined on the probes). In
   milliseconds it finds what the search reaches only at cost 7 or beyond (mu*q*V/d). An
   exact monomial is the answer, shown as the stage "power law (groups)"; when registered
   functions are offered, the search still runs below the monomial's complexity and a
   smaller formula found there wins. Otherwise the search runs as without it.
3. Search (`search.py`): bottom-up enumeration over primitives and registered functions,
   deduplicated by observational equivalence, with affine constants fitted by least squares.
   A registered function is applied only inside its declared input domains, and at equal cost
   a plain formula wins over a call of a registered function. The search is staged
   (`stages.py`): a sequence of smaller searches, each over a few primitive groups chosen from
   the data (arithmetic first, then integer division, then modular arithmetic with each
   inferred modulus, ...), in rounds of rising cost, stopping at the first exact fit.
4. Simplify each accepted fit: constants snapped to their shortest exact form that keeps exact
   agreement (an integer, a short decimal, p/q, or p/q times pi, e or sqrt(k): 1/(2*pi) rather
   than 0.159155), unit coefficients and zero terms dropped, `x + 1` written INC(x).
5. Decide column relevance by intervention: resample one column at a time across all rows and
   probes; a column is relevant only if the function's output changes. The function's inputs are
   the relevant columns, never chosen by correlation.
6. Return the simplest accepted function (status exact), or, on noisy data when asked, the fit
   with the shortest description length among the Pareto front (status approximate), with a
   PySR-style table (complexity, loss, score, expression, sympy form). Approximate fits keep an
   exact constant (0.5, 1/(4*pi)) or an intercept only as far as the description length says
   (`Builder.refine`); approximate mode searches up to cost 5 unless `max_cost` is given. A
   failed search raises `DiscoveryError` and registers nothing; registering a function the
   registry already holds under that name (same definition) writes nothing and returns the
   stored one.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from circuitlab import __version__
from circuitlab.registry import expr as ex
from circuitlab.registry.build import Builder, Finisher
from circuitlab.registry.dimensions import Units, reduce
from circuitlab.registry.domains import Domain, Kind, RegistryError
from circuitlab.registry.examples import Examples
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.ops import NUMERIC_GROUPS, build_ops
from circuitlab.registry.powerlaw import groups_of, power_law
from circuitlab.registry.proposer import Proposer, UniformProposer
from circuitlab.registry.registration import check_register_name, register_found
from circuitlab.registry.registry import Registry
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
    agrees,
    tolerance,
)
from circuitlab.registry.stages import Stage, plan_stages

# the share of the time budget the dimensionless problem gets when units are given; the
# original problem has the rest
UNITS_SHARE = 0.5
ROUND_STEP = 2  # rounds of a staged search raise the cost limit by this much
# searches of one stage begun again with the rows where a fit to the sample failed; after
# that, such fits are rejected and the search goes on
MAX_RESTARTS = 3


class DiscoveryError(RegistryError):
    """No function fits the examples within the search budget; nothing was registered."""

    def __init__(self, message: str, result: DiscoveryResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class DiscoveryConfig:
    """Settings of one discovery (recorded in the function's provenance)."""

    seed: int = 0
    holdout: float = 0.25  # fraction of rows held out for acceptance (none below 4 rows)
    probes: int = 64  # fresh in-domain inputs every accepted function must be defined on
    max_cost: int | None = None  # None: 9, or approximate_max_cost in approximate mode
    max_seconds: float = 60.0
    max_bank: int = 400_000  # ~330 MB of float64 values at 100 rows
    # bytes a search may hold (its bank of candidate values and pair-fit vectors, and its
    # evaluation batches): the bank keeps at most min(max_bank, what fits) candidates. A size
    # such as "512M" or "2G" (powers of 1024) is accepted too
    memory_bytes: int = 2 * 1024**3
    # training rows every candidate is evaluated on: a seeded sample of them when there are
    # more (and at most search_rows // 2 held-out rows), so a 10,000-row table costs what 256
    # rows do; an accepted fit is still checked on every row (see the module docstring)
    search_rows: int = 256
    rtol: float = 1e-9
    pairs: bool = True
    approximate: bool = False  # on failure, return the best fit by description length
    # approximate mode never stops at an exact fit, so it would use the whole budget: a lower
    # default limit, used only when max_cost is not given
    approximate_max_cost: int = 5
    # primitive groups searched, all at once (a comma list is accepted too); None: a staged
    # search, groups chosen from the data (stages.py)
    groups: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ("POW",)  # primitives left out by name (POW: fitted only)
    # moduli of the modular operations, each tried in its own stage in this order (an int or
    # a comma list is accepted too); None: inferred from the data (stages.infer_moduli)
    moduli: tuple[int, ...] | None = None
    use_registry: bool = True  # offer registered functions as building blocks
    # the cost limit of a staged search's first round (every stage up to this cost, so that a
    # small modular formula is not kept waiting by a deep arithmetic search); each later round
    # raises it by ROUND_STEP, up to cost_limit
    stage_cost: int = 5
    # after the first round finds nothing, search transforms of the output (1/y, y^2, log y,
    # arcsin y, ...) up to stage_cost and invert the fit (`_transform_stage`; real data, exact
    # mode)
    transforms: bool = True

    def __post_init__(self) -> None:
        if self.max_cost is not None and self.max_cost < 1:
            raise RegistryError(f"max_cost must be at least 1, got {self.max_cost}")
        if not 0 <= self.holdout < 1:
            raise RegistryError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.stage_cost < 1:
            raise RegistryError(f"stage_cost must be at least 1, got {self.stage_cost}")
        self.search_rows = check_search_rows(self.search_rows)
        self.memory_bytes = check_memory(self.memory_bytes)
        if self.groups is not None:
            self.groups = check_groups(self.groups)
        if self.moduli is not None:
            self.moduli = check_moduli(self.moduli)
            if self.groups is not None and "modular" not in self.groups:
                raise RegistryError(
                    "moduli are for the modular group, which the groups given leave out; "
                    "add modular to them"
                )

    @property
    def cost_limit(self) -> int:
        """The highest cost searched: max_cost when given, else 9 (approximate mode: 5)."""
        if self.max_cost is not None:
            return self.max_cost
        return self.approximate_max_cost if self.approximate else 9

    @property
    def cost_limit_note(self) -> str:
        """The limit and where it comes from (said in the output, never applied silently)."""
        if self.max_cost is None and self.approximate:
            return (
                f"cost limit {self.cost_limit} (the approximate-mode default; raise it with "
                "--max-cost)"
            )
        return f"cost limit {self.cost_limit}"


def check_groups(groups: Sequence[str] | str) -> tuple[str, ...]:
    """`groups` (names, or one comma list) as a tuple without repeats; refuses an empty list
    or a name that is not a numeric primitive group, naming the known ones."""
    items = groups.split(",") if isinstance(groups, str) else groups
    out = tuple(dict.fromkeys(str(g).strip() for g in items))
    unknown = [g for g in out if g not in NUMERIC_GROUPS]
    if unknown or not out:
        what = f"unknown primitive group {', '.join(map(repr, unknown))}" if unknown else "no group"
        raise RegistryError(f"{what}; the groups are {', '.join(NUMERIC_GROUPS)}")
    return out


def check_moduli(moduli: Sequence[Any] | int | str) -> tuple[int, ...]:
    """`moduli` (integers, one integer, or a comma list) as a tuple of ints without repeats;
    refuses anything not an integer in [2, 2**31)."""
    if isinstance(moduli, str):
        moduli = moduli.split(",")
    elif isinstance(moduli, int | np.integer):
        moduli = [moduli]
    out: list[int] = []
    for m in moduli:
        try:
            if isinstance(m, bool) or not isinstance(m, int | np.integer | str):
                raise ValueError
            value = int(m.strip() if isinstance(m, str) else m)
        except ValueError:
            raise RegistryError(f"a modulus must be an integer, got {m!r}") from None
        if not 2 <= value < 2**31:
            raise RegistryError(f"a modulus must be in [2, 2**31), got {value}")
        out.append(value)
    if not out:
        raise RegistryError("no modulus given")
    return tuple(dict.fromkeys(out))


@dataclass
class TableRow:
    complexity: int
    loss: float  # mean squared error on the training rows
    score: float  # -d ln(loss) / d complexity against the previous row (PySR's score)
    expression: str
    sympy: str
    chosen: bool = False


@dataclass
class DiscoveryResult:
    function: Function | None
    status: str  # exact | approximate | failed
    stats: SearchStats
    table: list[TableRow] = field(default_factory=list)
    relevance: dict[str, bool] = field(default_factory=dict)
    message: str = ""
    proposer: str = "uniform"
    stages: list[StageRun] = field(default_factory=list)  # the searches run, in order
    # the power-law stage's outcome (powerlaw.py): "exact: ...", why it was no monomial, or
    # "" when it was not tried (given groups, approximate mode); listed in `stages` only
    # when exact
    power_law: str = ""
    # dimensional analysis (dimensions.py): "y = P * f(g): exact", why it found nothing, or ""
    # when no units were given
    units: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "function": self.function.render() if self.function else None,
            "candidates": self.stats.candidates,
            "pairs": self.stats.pairs,
            "evaluated": self.stats.evaluated,
            "bank": self.stats.bank,
            "level": self.stats.level,
            "max_cost": self.stats.max_cost,
            "stopped": self.stats.stopped,
            "refine": self.stats.refine,
            "restarts": self.stats.restarts,
            "seconds": round(self.stats.seconds, 4),
            "relevance": self.relevance,
            "proposer": self.proposer,
            "stages": [r.to_dict() for r in self.stages],
            "power_law": self.power_law,
            "units": self.units,
            "message": self.message,
        }


@dataclass
class StageRun:
    """One search of a staged discovery: its stage, cost limit, time budget and outcome."""

    stage: Stage
    max_cost: int
    budget: float  # seconds allowed
    stats: SearchStats
    found: bool

    @property
    def outcome(self) -> str:
        if self.found:
            return "exact"
        return self.stats.stopped or f"no exact fit up to cost {self.max_cost}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage.label,
            "groups": list(self.stage.groups),
            "modulus": self.stage.modulus,
            "max_cost": self.max_cost,
            "level": self.stats.level,
            "candidates": self.stats.candidates,
            "pairs": self.stats.pairs,
            "seconds": round(self.stats.seconds, 4),
            "outcome": self.outcome,
        }


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

    With `units` (exact mode), dimensional analysis comes first (`dimensions.py`): y = P(x) *
    f(g), with P a monomial of the units of y and g the dimensionless groups; f is searched on
    the table (g, y / P) within UNITS_SHARE of the time budget, and P * f(g) taken if it passes
    the acceptance test on the original rows. Otherwise the original problem is searched in
    the time left. `DiscoveryResult.units` says what it did.

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
    runs: list[StageRun] = []
    units_note = ""
    if units is not None and not cfg.approximate:
        found, run, units_note = _units_stage(
            data, units, sample, domains, resolve, cfg, prop.name, name
        )
        if run is not None:
            runs.append(run)
        if found is not None:
            return _noted(_exact(found, runs, data, sample, cfg, prop.name, t0, ""), units_note)
    # the power law first (automatic staging, exact mode): an exact monomial is the answer,
    # unless registered functions are offered, which may write it smaller: then the search
    # runs below its complexity, and the monomial is kept if it finds nothing smaller
    law: _Found | None = None
    note = ""
    search_cfg = cfg
    if cfg.groups is None and not cfg.approximate:
        law, note = _power_law(data, sample, domains, resolve, cfg, prop.name, name)
        if law is not None:
            runs.append(law.run)
            cap = min(cfg.cost_limit, law.key[0] - 1)
            if not _offers_registered(reg, name) or cap < 1:
                return _noted(_exact(law, runs, data, sample, cfg, prop.name, t0, note), units_note)
            search_cfg = replace(cfg, max_cost=cap)
    transforms = cfg.transforms and "elementary" in stages[0].groups
    rounds = _rounds(search_cfg, len(stages), transforms)
    entries: list[_Entry] = []  # approximate fits of the stages that found nothing
    done: set[int] = set()  # stages that a further round cannot help
    for round_no, (limit, share) in enumerate(rounds):
        if round_no == 1 and transforms:
            found, tried = _transform_stage(
                data, sample, domains, resolve, cfg, prop.name, name, t0
            )
            runs += tried
            if found is not None:
                return _noted(
                    _exact(found, runs, data, sample, cfg, prop.name, t0, note), units_note
                )
        final = limit == search_cfg.cost_limit
        todo = [
            i for i in range(len(stages)) if i not in done and (final or not stages[i].last_resort)
        ]
        best: _Found | None = None
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
            prov = _provenance(data, sample, cfg, prop.name, runs, stage)
            if cfg.approximate:
                outcome.stats = _total(runs, cfg, time.perf_counter() - t0)
                return _conclude(outcome, builder, name, prov, data, cfg, prop.name, runs)
            if outcome.accepted:
                key, fn, rel = _best_exact(outcome, builder, name, prov)
                if best is None or key < best.key:
                    # the table now, while this search's bank is at hand, rather than keeping
                    # the bank alive beside the later stages' (the memory budget is per search)
                    table = _entries(outcome, builder, name, prov, data, exact=fn)
                    best = _Found(key, fn, rel, table, run)
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
            return _noted(_exact(best, runs, data, sample, cfg, prop.name, t0, note), units_note)
    if law is not None:
        return _noted(_exact(law, runs, data, sample, cfg, prop.name, t0, note), units_note)
    stats = _total(runs, cfg, time.perf_counter() - t0)
    result = _failed(stats, entries, cfg, prop.name, runs)
    result.power_law = note
    return _noted(result, units_note)


def _noted(result: DiscoveryResult, units: str) -> DiscoveryResult:
    result.units = units
    return result


def _exact(
    best: _Found,
    runs: list[StageRun],
    data: Examples,
    sample: Sample,
    cfg: DiscoveryConfig,
    proposer: str,
    t0: float,
    note: str,
) -> DiscoveryResult:
    """The result of a staged discovery whose best exact fit is `best`."""
    stats = _total(runs, cfg, time.perf_counter() - t0)
    stats.level, stats.stopped, stats.refine = (
        best.run.stats.level,
        "",
        best.run.stats.refine,
    )
    prov = _provenance(data, sample, cfg, proposer, runs, best.run.stage)
    fn = replace(best.fn, provenance=prov)
    table = _front(best.entries, True)
    method = best.run.stage.method
    how = METHODS.get(method, "the transformed output searched, the fit inverted" if method else "")
    return DiscoveryResult(
        fn,
        "exact",
        stats,
        table,
        best.rel,
        f"exact: {fn.render()} after {stats.evaluated:,} candidates"
        + (f" ({best.run.stage.method}: {how})" if how else ""),
        proposer,
        runs,
        note,
    )


# how a stage that is not an enumerative search made its fit, for the result's message
METHODS = {
    "power law": "a monomial fitted in log space",
    "units": "a dimensionless problem searched, then scaled back",
}


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


def _power_law(
    data: Examples,
    sample: Sample,
    domains: list[Domain],
    resolve: ex.Resolver | None,
    cfg: DiscoveryConfig,
    proposer: str,
    name: str,
) -> tuple[_Found | None, str]:
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
    prov = _provenance(data, sample, cfg, proposer, [run], stage)
    try:
        fn, rel = finisher.finish(law.expr, law.consts, name, "exact", prov)
    except RegistryError as exc:  # a column it reads but does not depend on: not taken
        return None, f"not taken: {exc}"
    stats.seconds = time.perf_counter() - t0
    return _found(fn, rel, run, sample, resolve), note


def _found(
    fn: Function,
    rel: dict[str, bool],
    run: StageRun,
    sample: Sample,
    resolve: ex.Resolver | None,
) -> _Found:
    """An exact function made without a search (power law, units) as the best fit of its
    stage; its cost level is the formula's complexity (not bounded by the cost limit)."""
    try:
        sym = str(fn.sympy(resolve))
    except Exception:  # as in `_entries`: the table shows the rest
        sym = ""
    run.stats.level = run.max_cost = fn.complexity
    var = float(np.var(sample.rows.y_train)) or 1.0
    entry = _Entry(fn.complexity, 0.0, fn, None, -math.inf, sym, var)
    key = (fn.complexity, len(fn.constants), bool(fn.uses()))
    return _Found(key, fn, rel, [entry], run)


def _units_stage(
    data: Examples,
    units: Units,
    sample: Sample,
    domains: list[Domain],
    resolve: ex.Resolver | None,
    cfg: DiscoveryConfig,
    proposer: str,
    name: str,
) -> tuple[_Found | None, StageRun | None, str]:
    """Dimensional analysis as a stage (see `search`): the exact function P * f(g), or None;
    the stage run (None when there was nothing to reduce); and a note."""
    red = reduce(units, data.names, data.output_name)
    if not red.changes:
        return None, None, "units: every column is dimensionless and so is the output"
    note = f"units: {data.output_name} = {red.render(data.names)}"
    G, yr = red.table(data.X, data.y)
    if not (np.isfinite(G).all() and np.isfinite(yr).all()):
        return None, None, f"{note}: not finite on some row (a zero column?), not searched"
    t0 = time.perf_counter()
    sub = Examples.from_arrays(G, yr, red.names, data.output_name)
    sub_cfg = replace(cfg, max_seconds=cfg.max_seconds * UNITS_SHARE, use_registry=False)
    inner = search(sub, name=name, config=sub_cfg)
    stats = replace(inner.stats, seconds=time.perf_counter() - t0)
    run = StageRun(
        Stage(("arithmetic",), method="units"), stats.level, sub_cfg.max_seconds, stats, False
    )
    if inner.function is None:
        return None, run, f"{note}: no exact f ({inner.stats.stopped})"
    f = inner.function
    expr, consts = red.lift(f.expr, dict(f.constants), [i.name for i in f.inputs])
    found, why = _lifted(expr, consts, run, data, sample, domains, resolve, cfg, proposer, name)
    if found is None:
        return None, run, f"{note}: f = {f.render()} {why}"
    return found, found.run, f"{note}, f = {f.render()}"


def _lifted(
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
) -> tuple[_Found | None, str]:
    """A formula of the original columns made from a fit to a derived problem (units, an
    output transform), taken only if it passes the acceptance test on every original row;
    `run` is the derived search's. None and why when it does not."""
    rows = sample.full or sample.rows
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
    prov = _provenance(data, sample, cfg, proposer, [run], run.stage)
    try:
        fn, rel = finisher.finish(expr, consts, name, "exact", prov)
    except RegistryError as exc:  # a column it reads but does not depend on: not taken
        return None, f"not taken: {exc}"
    return _found(fn, rel, run, sample, resolve), ""


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


def _transform_stage(
    data: Examples,
    sample: Sample,
    domains: list[Domain],
    resolve: ex.Resolver | None,
    cfg: DiscoveryConfig,
    proposer: str,
    name: str,
    t0: float,
) -> tuple[_Found | None, list[StageRun]]:
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
        inner = search(sub, name=name, config=replace(sub_cfg, max_seconds=budget))
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
        found, _ = _lifted(expr, consts, run, data, sample, domains, resolve, cfg, proposer, name)
        if found is not None:
            runs[-1] = found.run
            return found, runs
    return None, runs


def _ops(e: ex.Expr) -> set[str]:
    return {n.op for n in ex.walk(e) if isinstance(n, ex.Call)}


def _fresh_const(taken: dict[str, float]) -> str:
    i = 0
    while f"t{i}" in taken:
        i += 1
    return f"t{i}"


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


@dataclass
class _Found:
    """The best exact fit of a round so far, with the search that found it."""

    key: tuple[Any, ...]  # smaller is better: complexity, constants, registered calls
    fn: Function
    rel: dict[str, bool]
    entries: list[_Entry]  # its search's fits for the results table, this one included
    run: StageRun


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


def _provenance(
    data: Examples,
    sample: Sample,
    cfg: DiscoveryConfig,
    proposer: str,
    runs: list[StageRun],
    stage: Stage,
) -> Provenance:
    stats = _total(runs, cfg, sum(r.stats.seconds for r in runs))
    rows = sample.full or sample.rows
    return Provenance(
        source="discovered",
        data_hash=data.data_hash(),
        seed=cfg.seed,
        search={
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "proposer": proposer,
            "cost_limit": cfg.cost_limit,
            "stage": stage.label,  # the groups (and modulus) it was found with
            "stages_run": len(runs),
            "candidates": stats.candidates,
            "pairs": stats.pairs,
            "restarts": stats.restarts,
            "seconds": round(stats.seconds, 4),
            "columns": list(data.names),  # the row layout it was found on (see on_columns)
            "rows": {
                "train": rows.n_train,
                "held_out": rows.n_hold,
                "probes": int(rows.X.shape[0] - rows.n_train - rows.n_hold),
                # those every candidate was evaluated on (all, at most search_rows rows)
                "searched_train": sample.rows.n_train,
                "searched_held_out": sample.rows.n_hold,
            },
        },
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        package_version=__version__,
    )


def _total(runs: list[StageRun], cfg: DiscoveryConfig, seconds: float) -> SearchStats:
    """The statistics of a staged search: counts added up over its runs, the level reached by
    the last one, and why it stopped (said of the whole search, not of one stage)."""
    last = runs[-1]
    out = SearchStats(
        candidates=sum(r.stats.candidates for r in runs),
        pairs=sum(r.stats.pairs for r in runs),
        bank=max(r.stats.bank for r in runs),
        level=last.stats.level,
        max_cost=cfg.cost_limit,
        seconds=seconds,
        stopped=last.stats.stopped,
        refine=last.stats.refine,
        restarts=sum(r.stats.restarts for r in runs),
    )
    if last.found:
        return out
    if last.stats.stopped.startswith("time") or seconds >= cfg.max_seconds:
        out.stopped = f"time budget of {cfg.max_seconds:g} s ran out at cost {last.stats.level}"
        if len(runs) > 1:
            out.stopped += f" of {last.stage.label}, after {len(runs)} stage searches"
    elif len(runs) > 1:
        full = {r.stage for r in runs if r.max_cost == cfg.cost_limit}
        banked = [r for r in runs if r.stats.stopped.startswith("bank")]
        bank = sorted({r.stage.label for r in banked})
        out.stopped = f"no exact fit up to cost {cfg.cost_limit} in {len(full)} stages" + (
            f" (in {'; '.join(bank)}: {banked[-1].stats.stopped})" if bank else ""
        )
    return out


# ---------------------------------------------------------------------------------------------
# rows and operations


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
        table = _front(_entries(outcome, b, name, prov, data, exact=fn), exact=True)
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
    table = _front(entries, exact=False)
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
    entries: list[_Entry],
    cfg: DiscoveryConfig,
    proposer: str,
    runs: list[StageRun],
) -> DiscoveryResult:
    """No exact fit in any stage: the Pareto front of every stage's approximate fits."""
    table = _front(entries, exact=False)
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


@dataclass
class _Entry:
    """A fit for the results table: its function, loss, and description length (bits)."""

    complexity: int
    loss: float
    fn: Function
    hyp: Any
    dl: float
    sympy: str
    var: float  # variance of the training outputs (the scale of the scores)


def _entries(
    outcome: SearchOutcome,
    b: Builder,
    name: str,
    prov: Provenance,
    data: Examples,
    exact: Function | None = None,
    refine: bool = False,
) -> list[_Entry]:
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
        out.append(_Entry(fn.complexity, float(mse), fn, hyp, dl, sym(fn), var))
    if exact is not None:
        out.append(_Entry(exact.complexity, 0.0, exact, None, -math.inf, sym(exact), var))
    return out


def _front(entries: list[_Entry], exact: bool) -> list[TableRow]:
    """Pareto front of the fits (lower loss at every step up in complexity), with PySR's
    score; the exact fit (the last row) is chosen, else the row with the shortest
    description length."""
    ordered = sorted(entries, key=lambda e: (e.complexity, e.loss))
    front: list[_Entry] = []
    for e in ordered:
        if not front or e.loss < front[-1].loss * (1 - 1e-9):
            if front and e.complexity == front[-1].complexity:
                front[-1] = e
            else:
                front.append(e)
    floor = 1e-30 * (front[0].var if front else 1.0)
    rows: list[TableRow] = []
    for i, e in enumerate(front):
        if i == 0:
            score = 0.0
        else:
            pc, pl = front[i - 1].complexity, front[i - 1].loss
            score = -(math.log(max(e.loss, floor)) - math.log(max(pl, floor))) / max(
                e.complexity - pc, 1
            )
        row = TableRow(e.complexity, e.loss, score, e.fn.render(), e.sympy)
        row._hyp = e.hyp  # type: ignore[attr-defined]
        rows.append(row)
    if rows:
        if exact:
            rows[-1].chosen = True
        else:
            rows[int(np.argmin([e.dl for e in front]))].chosen = True
    return rows
