"""Discovery from examples: `discover(examples) -> Function`.

1. Validate the examples (equal rows, numbers only, finite outputs, enough rows for the
   unknowns) and split them (seeded) into training and held-out rows; draw fresh probe inputs
   from each column's observed domain.
2. Search (`search.py`): bottom-up enumeration over primitives and registered functions,
   deduplicated by observational equivalence, with affine constants fitted by least squares.
   A registered function is applied only inside its declared input domains, and at equal cost
   a plain formula wins over a call of a registered function.
3. Simplify each accepted fit: constants snapped to their shortest exact form that keeps exact
   agreement (an integer, a short decimal, p/q, or p/q times pi, e or sqrt(k): 1/(2*pi) rather
   than 0.159155), unit coefficients and zero terms dropped, `x + 1` written INC(x).
4. Decide column relevance by intervention: resample one column at a time across all rows and
   probes; a column is relevant only if the function's output changes. The function's inputs are
   the relevant columns, never chosen by correlation.
5. Return the simplest accepted function (status exact), or, on noisy data when asked, the fit
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from circuitlab import __version__
from circuitlab.registry import expr as ex
from circuitlab.registry.build import Builder
from circuitlab.registry.domains import Domain, Kind, RegistryError, is_subkind
from circuitlab.registry.examples import Examples
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.primitives import GROUPS, Primitive, primitives
from circuitlab.registry.proposer import Proposer, UniformProposer
from circuitlab.registry.registry import Registry
from circuitlab.registry.search import (
    Op,
    Rows,
    SearchConfig,
    Searcher,
    SearchOutcome,
    SearchStats,
)

NUMERIC_GROUPS = ("arithmetic", "modular", "bitwise", "comparison", "control", "elementary")
DEFAULT_GROUPS = ("arithmetic", "modular", "bitwise", "comparison", "elementary")


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
    rtol: float = 1e-9
    pairs: bool = True
    approximate: bool = False  # on failure, return the best fit by description length
    # approximate mode never stops at an exact fit, so it would use the whole budget: a lower
    # default limit, used only when max_cost is not given
    approximate_max_cost: int = 5
    groups: tuple[str, ...] = DEFAULT_GROUPS  # primitive groups searched
    exclude: tuple[str, ...] = ("POW",)  # primitives left out by name (POW: fitted only)
    moduli: tuple[int, ...] | None = None  # None: inferred (max(y) + 1 for integer outputs)
    use_registry: bool = True  # offer registered functions as building blocks

    def __post_init__(self) -> None:
        if self.max_cost is not None and self.max_cost < 1:
            raise RegistryError(f"max_cost must be at least 1, got {self.max_cost}")
        if not 0 <= self.holdout < 1:
            raise RegistryError(f"holdout must be in [0, 1), got {self.holdout}")
        unknown = set(self.groups) - set(GROUPS)
        if unknown:
            raise RegistryError(f"unknown primitive groups {sorted(unknown)}; known: {GROUPS}")

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
            "seconds": round(self.stats.seconds, 4),
            "relevance": self.relevance,
            "proposer": self.proposer,
            "message": self.message,
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
) -> Function:
    """The simplest function that fits `examples` exactly (or approximately, when configured).

    examples: a sequence of (inputs, output) rows, a pair (X, y) of arrays, or `Examples`.
    registry: its functions are offered as building blocks; with `register=True` the result is
    stored there, unless the registry already holds a function of that name with the same
    definition, which is returned instead (re-running a discovery is idempotent); a name held
    by a different function is refused. oracle: a callable of all the columns giving the true
    outputs on the probe inputs, when the examples come from a known process. Raises
    `DiscoveryError` when nothing fits, leaving the registry untouched.
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
    )
    if result.function is None:
        raise DiscoveryError(result.message, result)
    if register:
        assert registry is not None
        return register_found(registry, result.function, rtol)[0]
    return result.function


def check_register_name(registry: Registry, name: str, data: Examples, rtol: float = 1e-9) -> None:
    """Refuse, before any search, a name that `data`'s function cannot be registered under: not
    an identifier, a primitive, or held by functions that cannot be the one `data` defines.

    A stored version may be that function when its inputs are columns of `data` with the
    domains `data` gives them and, if exact, it reproduces every output; such a name is left to
    `register_found`, after the search, so that re-running a discovery is not an error.
    """
    registry.check_new_name(name, taken_ok=True)
    if name not in registry:
        return
    if not any(
        _may_define(registry.get(name, v), data, registry, rtol)
        for v in registry.store.versions(name)
    ):
        raise RegistryError(_taken(registry, name, "does not fit these examples"))


def register_found(registry: Registry, fn: Function, rtol: float = 1e-9) -> tuple[Function, bool]:
    """`fn` stored in `registry`, or the stored version with the same definition (see
    `Registry.same_as`) with nothing written: (the registered function, whether it is new).
    A name held by a different function is refused."""
    same = registry.same_as(fn, rtol)
    if same is not None:
        return same, False
    if fn.name in registry:
        raise RegistryError(_taken(registry, fn.name, f"differs from the one found, {fn.render()}"))
    return registry.register(fn), True


def _may_define(fn: Function, data: Examples, registry: Registry, rtol: float) -> bool:
    column = {n: j for j, n in enumerate(data.names)}
    domains = data.domains()
    for i in fn.inputs:
        if i.name not in column or domains[column[i.name]] != i.domain:
            return False
    if fn.status != "exact":
        return True  # an approximate fit: only a new search can tell
    try:
        with np.errstate(all="ignore"):
            pred = fn.evaluate(
                *(data.X[:, column[i.name]] for i in fn.inputs), resolve=registry.resolve
            )
    except RegistryError:
        return False
    tol = rtol * max(float(np.abs(data.y).max()), 1e-300)
    return bool(np.all(np.abs(np.asarray(pred, dtype=np.float64) - data.y) <= tol))


def _taken(registry: Registry, name: str, why: str) -> str:
    latest = registry.get(name)
    return (
        f"a function named {name} already exists ({latest.ref} = {latest.render()}) and {why}; "
        "choose another name (--name) or do not register it (--no-register)"
    )


def search(
    examples: Any,
    *,
    names: Sequence[str] | None = None,
    name: str = "F",
    registry: Registry | None = None,
    proposer: Proposer | None = None,
    config: DiscoveryConfig | None = None,
    oracle: Callable[..., Any] | None = None,
) -> DiscoveryResult:
    """Like `discover` but returns the full result (statistics, table) and never raises on a
    failed search (only on bad input). It writes nothing, so `name` may be taken: the function
    of that name is then left out of the building blocks (a function is never defined as a
    call of an earlier version of itself)."""
    cfg = config or DiscoveryConfig()
    data = Examples.coerce(examples, names)
    rows, domains = _rows(data, cfg, oracle)
    kinds = [d.kind for d in domains]
    ops = build_ops(kinds, data.y, registry if cfg.use_registry else None, cfg, exclude=name)
    scfg = SearchConfig(
        max_cost=cfg.cost_limit,
        max_seconds=cfg.max_seconds,
        max_bank=cfg.max_bank,
        rtol=cfg.rtol,
        pairs=cfg.pairs,
        seed=cfg.seed,
    )
    prop = proposer or UniformProposer()
    searcher = Searcher(rows, kinds, ops, prop, scfg)
    outcome = searcher.run()
    resolve = registry.resolve if registry is not None else None
    builder = Builder(searcher, data, domains, resolve)
    provenance = Provenance(
        source="discovered",
        data_hash=data.data_hash(),
        seed=cfg.seed,
        search={
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "proposer": prop.name,
            "cost_limit": cfg.cost_limit,
            "candidates": outcome.stats.candidates,
            "pairs": outcome.stats.pairs,
            "seconds": round(outcome.stats.seconds, 4),
            "columns": list(data.names),  # the row layout it was found on (see on_columns)
            "rows": {
                "train": rows.n_train,
                "held_out": rows.n_hold,
                "probes": int(rows.X.shape[0] - rows.n_train - rows.n_hold),
            },
        },
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        package_version=__version__,
    )
    return _conclude(outcome, builder, name, provenance, data, cfg, prop.name)


# ---------------------------------------------------------------------------------------------
# rows and operations


def _rows(
    data: Examples, cfg: DiscoveryConfig, oracle: Callable[..., Any] | None
) -> tuple[Rows, list[Domain]]:
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(data.n)
    n_hold = int(round(cfg.holdout * data.n)) if data.n >= 4 else 0
    n_hold = min(n_hold, data.n - max(2, data.k + 1)) if n_hold else 0
    n_hold = max(n_hold, 0)
    tr, ho = order[: data.n - n_hold], order[data.n - n_hold :]
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


def _infer_moduli(y: np.ndarray, cfg: DiscoveryConfig) -> tuple[int, ...]:
    if cfg.moduli is not None:
        return tuple(cfg.moduli)
    if np.all(y == np.round(y)) and y.min() >= 0 and 2 <= y.max() + 1 < 2**31:
        return (int(y.max()) + 1,)
    return ()


def build_ops(
    kinds: Sequence[Kind],
    y: np.ndarray,
    registry: Registry | None,
    cfg: DiscoveryConfig,
    exclude: str | None = None,
) -> list[Op]:
    """The operations a numeric search may apply: primitives of the chosen groups (modular ones
    once per candidate modulus) and every numeric registered function but `exclude`."""
    ops: list[Op] = []
    if registry is not None:
        for fn in registry.functions():
            if fn.output.kind is Kind.GRID or any(i.domain.kind is Kind.GRID for i in fn.inputs):
                continue
            if fn.name == exclude:
                continue
            ops.append(_function_op(fn, registry))
    moduli = _infer_moduli(y, cfg)
    for prim in primitives().values():
        if prim.group not in cfg.groups or prim.group not in NUMERIC_GROUPS:
            continue
        if prim.name in cfg.exclude or prim.name == "LOOP":
            continue
        if prim.params == ("p",):
            ops += [_prim_op(prim, {"p": p}) for p in moduli]
        elif not prim.params:
            ops.append(_prim_op(prim, {}))
    return ops


def _prim_op(prim: Primitive, params: dict[str, int]) -> Op:
    label = prim.name + (
        "[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else ""
    )
    return Op(
        label,
        prim.group,
        prim.arity,
        prim.out_kind,
        lambda *a: prim.fn(*a, **params),
        lambda args: ex.call(prim.name, *args, **params),
        prim.commutative,
        param_cost=len(params),
    )


def _function_op(fn: Function, registry: Registry) -> Op:
    """A registered function as an operation, defined (not NaN) only where every argument lies
    in its input's declared domain: a function is never extrapolated beyond what it was
    declared (or discovered) on, and the search drops candidates undefined anywhere."""
    want = tuple(i.domain.kind for i in fn.inputs)
    out = Kind.REAL if fn.output.kind is Kind.REAL else fn.output.kind

    def rule(kinds: tuple[Kind, ...]) -> Kind | None:
        if len(kinds) != len(want):
            return None
        return (
            out
            if all(is_subkind(k, w) or w is Kind.REAL for k, w in zip(kinds, want, strict=True))
            else None
        )

    def apply(*args: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = np.asarray(
                ex.evaluate(fn.expr, list(args), fn.constant_dict, registry.resolve),
                dtype=np.float64,
            ) + np.zeros_like(args[0])
        inside = np.ones(out.shape, dtype=bool)
        for a, i in zip(args, fn.inputs, strict=True):
            inside &= _inside(a, i.domain)
        return np.where(inside, out, np.nan)

    return Op(
        fn.ref,
        "registered",
        fn.arity,
        rule,
        apply,
        lambda args: ex.call(fn.name, *args, version=fn.version),
    )


def _inside(values: np.ndarray, domain: Domain) -> np.ndarray:
    """Which values lie in `domain`: its kind (0/1, integers), modulus and bounds."""
    ok = np.isfinite(values)
    if domain.kind is Kind.BOOL:
        return ok & ((values == 0) | (values == 1))
    if domain.kind is Kind.INT or domain.modulus is not None:
        ok &= values == np.round(values)
    if domain.modulus is not None:
        ok &= (values >= 0) & (values < domain.modulus)
    if domain.lo is not None:
        ok &= values >= domain.lo
    if domain.hi is not None:
        ok &= values <= domain.hi
    return ok


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
) -> DiscoveryResult:
    stats = outcome.stats
    if outcome.accepted:
        best: tuple[Any, ...] | None = None
        for order, hyp in enumerate(outcome.accepted):
            fn, rel = b.function(b.snap(hyp), name, "exact", prov)
            # at equal size, a plain formula beats one calling registered functions
            key = (fn.complexity, len(fn.constants), bool(fn.uses()), order)
            if best is None or key < best[0]:
                best = (key, fn, rel)
        assert best is not None
        _, fn, rel = best
        table = _table(outcome, b, name, prov, data, exact=fn)
        return DiscoveryResult(
            fn,
            "exact",
            stats,
            table,
            rel,
            f"exact: {fn.render()} after {stats.evaluated:,} candidates",
            proposer,
        )
    table = _table(outcome, b, name, prov, data, refine=cfg.approximate)
    hint = "" if cfg.approximate else "; ask for an approximate fit (--approximate) on noisy data"
    reason = stats.stopped or "no exact fit"
    if cfg.approximate and table:
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
        )
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
    )


def _stopped_early(stats: SearchStats) -> str:
    """'; stopped: time budget ...' when a budget, not the cost limit, ended the search."""
    return f"; stopped: {stats.stopped}" if stats.stopped.startswith(("time", "bank")) else ""


def _table(
    outcome: SearchOutcome,
    b: Builder,
    name: str,
    prov: Provenance,
    data: Examples,
    exact: Function | None = None,
    refine: bool = False,
) -> list[TableRow]:
    """Pareto front of the fits seen (lower loss at every step up in complexity); with `refine`
    (approximate mode) each fit's constants are first snapped or dropped by description length
    (`Builder.refine`), and the row with the shortest description length is chosen."""
    n_ops = max(2, len(b.s.ops) + data.k)
    entries = []
    for _, (mse, hyp) in sorted(outcome.approximate.items()):
        try:
            if refine:
                hyp = b.refine(hyp, n_ops)
                mse = hyp.train_mse
            fn, _ = b.function(hyp, name, "approximate", prov)
        except RegistryError:
            continue
        entries.append((fn.complexity, float(mse), fn, hyp))
    if exact is not None:
        entries.append((exact.complexity, 0.0, exact, None))
    entries.sort(key=lambda e: (e[0], e[1]))
    front: list[tuple[int, float, Function, Any]] = []
    for e in entries:
        if not front or e[1] < front[-1][1] * (1 - 1e-9):
            if front and e[0] == front[-1][0]:
                front[-1] = e
            else:
                front.append(e)
    var = float(np.var(b.rows.y_train)) or 1.0
    floor = 1e-30 * var
    rows: list[TableRow] = []
    for i, (c, loss, fn, hyp) in enumerate(front):
        if i == 0:
            score = 0.0
        else:
            pc, pl = front[i - 1][0], front[i - 1][1]
            score = -(math.log(max(loss, floor)) - math.log(max(pl, floor))) / max(c - pc, 1)
        resolve = b.resolve
        try:
            sym = str(fn.sympy(resolve))
        except Exception:  # sympy cannot render every primitive; the table still shows the rest
            sym = ""
        row = TableRow(c, loss, score, fn.render(), sym)
        row._hyp = hyp  # type: ignore[attr-defined]
        rows.append(row)
    if rows:
        if exact is not None:
            rows[-1].chosen = True
        else:
            dl = [
                b.description_length(r._hyp, r.complexity, n_ops)  # type: ignore[attr-defined]
                for r in rows
            ]
            rows[int(np.argmin(dl))].chosen = True
    return rows
