"""Discovery from examples: `discover(examples) -> Function`.

1. Validate the examples (equal rows, numbers only, finite outputs, enough rows for the
   unknowns) and split them (seeded) into training and held-out rows; draw fresh probe inputs
   from each column's observed domain.
2. Search (`search.py`): bottom-up enumeration over primitives and registered functions,
   deduplicated by observational equivalence, with affine constants fitted by least squares.
3. Simplify each accepted fit: constants snapped to the shortest decimal or small fraction that
   keeps exact agreement, unit coefficients and zero terms dropped, `x + 1` written INC(x).
4. Decide column relevance by intervention: resample one column at a time across all rows and
   probes; a column is relevant only if the function's output changes. The function's inputs are
   the relevant columns, never chosen by correlation.
5. Return the simplest accepted function (status exact), or, on noisy data when asked, the fit
   with the shortest description length among the Pareto front (status approximate), with a
   PySR-style table (complexity, loss, score, expression, sympy form). A failed search raises
   `DiscoveryError` and registers nothing.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from circuitlab import __version__
from circuitlab.registry import expr as ex
from circuitlab.registry.domains import Domain, Input, Kind, RegistryError, is_subkind, join
from circuitlab.registry.examples import Examples
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.primitives import GROUPS, Primitive, primitives
from circuitlab.registry.proposer import Proposer, UniformProposer
from circuitlab.registry.registry import Registry
from circuitlab.registry.search import (
    Hypothesis,
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
    max_cost: int = 9
    max_seconds: float = 60.0
    max_bank: int = 400_000  # ~330 MB of float64 values at 100 rows
    rtol: float = 1e-9
    pairs: bool = True
    approximate: bool = False  # on failure, return the best fit by description length
    approximate_max_cost: int = 5
    groups: tuple[str, ...] = DEFAULT_GROUPS  # primitive groups searched
    exclude: tuple[str, ...] = ("POW",)  # primitives left out by name (POW: fitted only)
    moduli: tuple[int, ...] | None = None  # None: inferred (max(y) + 1 for integer outputs)
    use_registry: bool = True  # offer registered functions as building blocks

    def __post_init__(self) -> None:
        if not 0 <= self.holdout < 1:
            raise RegistryError(f"holdout must be in [0, 1), got {self.holdout}")
        unknown = set(self.groups) - set(GROUPS)
        if unknown:
            raise RegistryError(f"unknown primitive groups {sorted(unknown)}; known: {GROUPS}")


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
            "status": self.status, "function": self.function.render() if self.function else None,
            "candidates": self.stats.candidates, "pairs": self.stats.pairs,
            "evaluated": self.stats.evaluated, "bank": self.stats.bank,
            "level": self.stats.level, "seconds": round(self.stats.seconds, 4),
            "relevance": self.relevance, "proposer": self.proposer, "message": self.message,
        }


# ---------------------------------------------------------------------------------------------
# public API


def discover(
    examples: Any, *, names: Sequence[str] | None = None, name: str = "F",
    registry: Registry | None = None, proposer: Proposer | None = None,
    config: DiscoveryConfig | None = None, oracle: Callable[..., Any] | None = None,
    register: bool = False,
) -> Function:
    """The simplest function that fits `examples` exactly (or approximately, when configured).

    examples: a sequence of (inputs, output) rows, a pair (X, y) of arrays, or `Examples`.
    registry: its functions are offered as building blocks; with `register=True` the result is
    stored there (the name must be new). oracle: a callable of all the columns giving the true
    outputs on the probe inputs, when the examples come from a known process. Raises
    `DiscoveryError` when nothing fits, leaving the registry untouched.
    """
    result = search(examples, names=names, name=name, registry=registry, proposer=proposer,
                    config=config, oracle=oracle)
    if result.function is None:
        raise DiscoveryError(result.message, result)
    if register:
        if registry is None:
            raise RegistryError("register=True needs a registry")
        return registry.register(result.function)
    return result.function


def search(
    examples: Any, *, names: Sequence[str] | None = None, name: str = "F",
    registry: Registry | None = None, proposer: Proposer | None = None,
    config: DiscoveryConfig | None = None, oracle: Callable[..., Any] | None = None,
) -> DiscoveryResult:
    """Like `discover` but returns the full result (statistics, table) and never raises on a
    failed search (only on bad input)."""
    cfg = config or DiscoveryConfig()
    data = Examples.coerce(examples, names)
    if registry is not None and name in registry:
        registry.check_new_name(name)  # a clear error before any work
    rows, domains = _rows(data, cfg, oracle)
    kinds = [d.kind for d in domains]
    ops = build_ops(kinds, data.y, registry if cfg.use_registry else None, cfg)
    scfg = SearchConfig(
        max_cost=min(cfg.max_cost, cfg.approximate_max_cost) if cfg.approximate else cfg.max_cost,
        max_seconds=cfg.max_seconds, max_bank=cfg.max_bank, rtol=cfg.rtol, pairs=cfg.pairs,
        seed=cfg.seed,
    )
    prop = proposer or UniformProposer()
    searcher = Searcher(rows, kinds, ops, prop, scfg)
    outcome = searcher.run()
    resolve = registry.resolve if registry is not None else None
    builder = _Builder(searcher, data, domains, resolve)
    provenance = Provenance(
        source="discovered", data_hash=data.data_hash(), seed=cfg.seed,
        search={**{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                "proposer": prop.name, "candidates": outcome.stats.candidates,
                "pairs": outcome.stats.pairs, "seconds": round(outcome.stats.seconds, 4),
                "rows": {"train": rows.n_train, "held_out": rows.n_hold,
                         "probes": int(rows.X.shape[0] - rows.n_train - rows.n_hold)}},
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        package_version=__version__,
    )
    return _conclude(outcome, builder, name, provenance, data, cfg, prop.name)


# ---------------------------------------------------------------------------------------------
# rows and operations


def _rows(data: Examples, cfg: DiscoveryConfig, oracle: Callable[..., Any] | None
          ) -> tuple[Rows, list[Domain]]:
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(data.n)
    n_hold = int(round(cfg.holdout * data.n)) if data.n >= 4 else 0
    n_hold = min(n_hold, data.n - max(2, data.k + 1)) if n_hold else 0
    n_hold = max(n_hold, 0)
    tr, ho = order[: data.n - n_hold], order[data.n - n_hold :]
    domains = data.domains()
    probes = np.stack([d.sample(rng, cfg.probes) for d in domains], axis=1) if cfg.probes \
        else np.zeros((0, data.k))
    X = np.concatenate([data.X[tr], data.X[ho], probes])
    oracle_y = None
    if oracle is not None and cfg.probes:
        try:
            oracle_y = np.broadcast_to(np.asarray(oracle(*probes.T), dtype=np.float64),
                                       (cfg.probes,)).copy()
        except Exception as exc:  # the oracle is user code: report, don't crash
            raise RegistryError(f"the oracle failed on probe inputs: {exc}") from None
    return Rows(X, data.y[tr], data.y[ho], len(tr), len(ho), oracle_y), domains


def _infer_moduli(y: np.ndarray, cfg: DiscoveryConfig) -> tuple[int, ...]:
    if cfg.moduli is not None:
        return tuple(cfg.moduli)
    if np.all(y == np.round(y)) and y.min() >= 0 and 2 <= y.max() + 1 < 2**31:
        return (int(y.max()) + 1,)
    return ()


def build_ops(kinds: Sequence[Kind], y: np.ndarray, registry: Registry | None,
              cfg: DiscoveryConfig) -> list[Op]:
    """The operations a numeric search may apply: primitives of the chosen groups (modular ones
    once per candidate modulus) and every numeric registered function."""
    ops: list[Op] = []
    if registry is not None:
        for fn in registry.functions():
            if fn.output.kind is Kind.GRID or any(i.domain.kind is Kind.GRID for i in fn.inputs):
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
    label = prim.name + ("[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]"
                         if params else "")
    return Op(label, prim.group, prim.arity, prim.out_kind,
              lambda *a: prim.fn(*a, **params),
              lambda args: ex.call(prim.name, *args, **params), prim.commutative,
              param_cost=len(params))


def _function_op(fn: Function, registry: Registry) -> Op:
    want = tuple(i.domain.kind for i in fn.inputs)
    out = Kind.REAL if fn.output.kind is Kind.REAL else fn.output.kind

    def rule(kinds: tuple[Kind, ...]) -> Kind | None:
        if len(kinds) != len(want):
            return None
        return out if all(is_subkind(k, w) or w is Kind.REAL for k, w in zip(kinds, want,
                                                                            strict=True)) \
            else None

    def apply(*args: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.asarray(ex.evaluate(fn.expr, list(args), fn.constant_dict,
                                          registry.resolve), dtype=np.float64) + \
                np.zeros_like(args[0])

    return Op(fn.ref, "registered", fn.arity, rule, apply,
              lambda args: ex.call(fn.name, *args, version=fn.version))


# ---------------------------------------------------------------------------------------------
# from a hypothesis to a function


class _Builder:
    def __init__(self, searcher: Searcher, data: Examples, domains: list[Domain],
                 resolve: ex.Resolver | None) -> None:
        self.s, self.data, self.domains, self.resolve = searcher, data, domains, resolve
        self.rows = searcher.rows

    def snap(self, hyp: Hypothesis) -> Hypothesis:
        """Replace each fitted constant by the shortest value that keeps exact agreement."""
        refs = [r for _, r in hyp.terms]
        inner = [hyp.wrap[1]] if hyp.wrap else []
        coefs = inner + [c for c, _ in hyp.terms] + [hyp.intercept]

        def make(values: list[float]) -> Hypothesis:
            wrap = (hyp.wrap[0], values[0]) if hyp.wrap else None
            body = values[len(inner):]
            return Hypothesis(list(zip(body[:-1], refs, strict=True)), body[-1], hyp.train_mse,
                              wrap)

        for i in range(len(coefs)):
            for candidate in _nice(coefs[i]):
                trial = coefs.copy()
                trial[i] = candidate
                if self._fits(make(trial)):
                    coefs = trial
                    break
        out = make(coefs)
        out.terms = [(c, r) for c, r in out.terms if c != 0.0]
        return out

    def _fits(self, hyp: Hypothesis) -> bool:
        pred = self.s.predict(hyp)
        n = self.rows.n_train + self.rows.n_hold
        y = np.concatenate([self.rows.y_train, self.rows.y_hold])
        return bool(np.abs(pred[:n] - y).max() <= self.s.tol)

    def expression(self, hyp: Hypothesis) -> tuple[ex.Expr, dict[str, float]]:
        consts: dict[str, float] = {}

        def const(v: float) -> ex.Const:
            key = f"c{len(consts)}"
            consts[key] = float(v)
            return ex.Const(key)

        ordered = sorted(hyp.terms, key=lambda t: (t[0] < 0, t[1]))
        parts = [(c, self._wrapped(self.s.bank.expr(r, self.s.ops), hyp, const))
                 for c, r in ordered]
        acc: ex.Expr | None = None
        for coef, e in parts:
            if acc is None:
                acc = e if coef == 1 else ex.call("NEG", e) if coef == -1 else \
                    ex.call("MUL", const(coef), e)
                continue
            term = e if abs(coef) == 1 else ex.call("MUL", const(abs(coef)), e)
            acc = ex.call("ADD" if coef > 0 else "SUB", acc, term)
        b = hyp.intercept
        if acc is None:
            return const(b), consts
        if b > 0 and all(c < 0 for c, _ in parts) and hyp.wrap is None:  # b - f, not -f + b
            pos = Hypothesis([(-c, r) for c, r in hyp.terms], 0.0)
            inner, inner_consts = self.expression(pos)
            consts = {}
            head = const(b)
            renamed = {k: f"c{i + 1}" for i, k in enumerate(inner_consts)}
            for k, v in inner_consts.items():
                consts[renamed[k]] = v
            return ex.call("SUB", head, _rename_consts(inner, renamed)), consts
        if b == 1:
            acc = ex.call("INC", acc)
        elif b == -1:
            acc = ex.call("DEC", acc)
        elif b != 0:
            acc = ex.call("ADD" if b > 0 else "SUB", acc, const(abs(b)))
        return acc, consts

    def simplify(self, expr: ex.Expr, consts: dict[str, float]) -> ex.Expr:
        """Apply algebraic rewrites, each kept only if it shrinks the expression and leaves its
        outputs on every row (training, held-out, probes) bit-for-bit unchanged."""
        cols = list(self.rows.X.T)

        def out(e: ex.Expr) -> np.ndarray:
            with np.errstate(all="ignore"):
                return np.broadcast_to(np.asarray(ex.evaluate(e, cols, consts, self.resolve),
                                                  dtype=np.float64), (len(self.rows.X),))

        target = out(expr)
        changed = True
        while changed:
            changed = False
            for candidate in _rewrites(expr):
                if ex.size(candidate) < ex.size(expr) and np.array_equal(out(candidate), target,
                                                                         equal_nan=True):
                    expr, changed = candidate, True
                    break
        return expr

    @staticmethod
    def _wrapped(e: ex.Expr, hyp: Hypothesis, const: Callable[[float], ex.Const]) -> ex.Expr:
        if hyp.wrap is None:
            return e
        name, c = hyp.wrap
        if name == "POW":
            return ex.call("POW", e, const(c))
        return ex.call(name, e if c == 1 else ex.call("MUL", const(c), e))

    def relevance(self, expr: ex.Expr, consts: dict[str, float]) -> dict[int, bool]:
        """Column j is relevant iff resampling it (all rows and probes) changes the output."""
        X = self.rows.X
        cols = list(X.T)
        base = np.asarray(ex.evaluate(expr, cols, consts, self.resolve), dtype=np.float64)
        base = np.broadcast_to(base, (len(X),))
        rng = np.random.default_rng(self.s.cfg.seed + 1)
        out = {}
        for j in range(X.shape[1]):
            changed = False
            for _ in range(3):
                trial = cols.copy()
                trial[j] = np.concatenate([rng.permutation(X[:, j]),
                                           self.domains[j].sample(rng, 64)])[: len(X)]
                if len(trial[j]) < len(X):
                    continue
                got = np.broadcast_to(np.asarray(ex.evaluate(expr, trial, consts, self.resolve),
                                                 dtype=np.float64), (len(X),))
                same = np.isclose(got, base, rtol=1e-12, atol=0.0) | (np.isnan(got) &
                                                                      np.isnan(base))
                if not same.all():
                    changed = True
                    break
            out[j] = changed
        return out

    def function(self, hyp: Hypothesis, name: str, status: str, provenance: Provenance
                 ) -> tuple[Function, dict[str, bool]]:
        expr, consts = self.expression(hyp)
        expr = self.simplify(expr, consts)
        rel = self.relevance(expr, consts)
        used = sorted(ex.variables(expr))
        keep = [j for j in used if rel[j]]
        if len(keep) != len(used):  # an input the output does not depend on: not an input
            raise RegistryError("internal: expression reads a column it does not depend on")
        mapping = {j: ex.Var(i) for i, j in enumerate(keep)}
        expr = ex.substitute(expr, mapping)
        inputs = [Input(self.data.names[j], self.domains[j]) for j in keep]
        y = np.concatenate([self.rows.y_train, self.rows.y_hold])
        out_dom = Domain.infer(y)
        if out_dom.kind is Kind.BOOL and join(*(d.kind for d in self.domains)) is Kind.REAL:
            out_dom = Domain(Kind.INT, 0.0, 1.0)
        fn = Function.new(name, inputs, expr, output=out_dom, constants=consts, status=status,
                          provenance=provenance)
        return fn, {self.data.names[j]: rel[j] for j in range(self.data.k)}


def _rename_consts(e: ex.Expr, names: dict[str, str]) -> ex.Expr:
    if isinstance(e, ex.Const):
        return ex.Const(names.get(e.name, e.name))
    if isinstance(e, ex.Call):
        return ex.Call(e.op, tuple(_rename_consts(a, names) for a in e.args), e.params, e.version)
    return e


def _local_rewrites(e: ex.Expr) -> list[ex.Expr]:
    """Smaller forms of one node (candidates only: the caller verifies them numerically)."""
    if not isinstance(e, ex.Call) or not e.args:
        return []
    a = e.args[0]
    b = e.args[1] if len(e.args) > 1 else None
    inner = a.args[0] if isinstance(a, ex.Call) and a.args else None
    out: list[ex.Expr] = []
    if e.op == "NEG" and isinstance(a, ex.Call) and a.op == "NEG":
        out.append(inner)
    if e.op == "DEC" and isinstance(a, ex.Call) and a.op == "NEG":
        out.append(ex.call("BNOT", inner))  # -x - 1 == ~x on integers
    if (e.op, getattr(a, "op", None)) in (("INC", "DEC"), ("DEC", "INC")):
        out.append(inner)
    if e.op in ("ADD", "SUB") and isinstance(b, ex.Call) and b.op == "NEG":
        out.append(ex.call("SUB" if e.op == "ADD" else "ADD", a, b.args[0]))
    if e.op == "ADD" and isinstance(a, ex.Call) and a.op == "NEG" and b is not None:
        out.append(ex.call("SUB", b, inner))
    if e.op == "MUL" and b is not None and a == b:
        out.append(ex.call("SQUARE", a))
    return [o for o in out if o is not None]


def _rewrites(e: ex.Expr) -> list[ex.Expr]:
    """Every expression obtained from `e` by rewriting one node."""
    out = _local_rewrites(e)
    if isinstance(e, ex.Call):
        for i, arg in enumerate(e.args):
            for r in _rewrites(arg):
                args = list(e.args)
                args[i] = r
                out.append(ex.Call(e.op, tuple(args), e.params, e.version))
    return out


def _nice(value: float) -> list[float]:
    """Candidate replacements for a fitted constant, shortest description first."""
    out: list[float] = []
    if abs(value) < 1e15:
        out.append(float(round(value)))
    for digits in range(1, 7):
        out.append(float(f"{value:.{digits}g}"))
    frac = Fraction(value).limit_denominator(16)
    out.append(frac.numerator / frac.denominator)
    for digits in range(7, 16):
        out.append(float(f"{value:.{digits}g}"))
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------------
# conclusion and results table


def _conclude(outcome: SearchOutcome, b: _Builder, name: str, prov: Provenance, data: Examples,
              cfg: DiscoveryConfig, proposer: str) -> DiscoveryResult:
    stats = outcome.stats
    if outcome.accepted:
        best: tuple[Any, ...] | None = None
        for order, hyp in enumerate(outcome.accepted):
            fn, rel = b.function(b.snap(hyp), name, "exact", prov)
            key = (fn.complexity, len(fn.constants), order)
            if best is None or key < best[0]:
                best = (key, fn, rel)
        assert best is not None
        _, fn, rel = best
        table = _table(outcome, b, name, prov, data, exact=fn)
        return DiscoveryResult(fn, "exact", stats, table, rel,
                               f"exact: {fn.render()} after {stats.evaluated:,} candidates",
                               proposer)
    table = _table(outcome, b, name, prov, data)
    hint = "" if cfg.approximate else "; ask for an approximate fit (--approximate) on noisy data"
    reason = stats.stopped or "no exact fit"
    if cfg.approximate and table:
        chosen = next(r for r in table if r.chosen)
        hyp = chosen._hyp  # type: ignore[attr-defined]
        fn, rel = b.function(hyp, name, "approximate", prov)
        return DiscoveryResult(fn, "approximate", stats, table, rel,
                               f"approximate (loss {chosen.loss:.3g}): {fn.render()}", proposer)
    best_loss = min((r.loss for r in table), default=float("nan"))
    return DiscoveryResult(None, "failed", stats, table, {},
                           f"no exact function found ({reason}; best approximate loss "
                           f"{best_loss:.3g}){hint}; nothing registered", proposer)


def _table(outcome: SearchOutcome, b: _Builder, name: str, prov: Provenance, data: Examples,
           exact: Function | None = None) -> list[TableRow]:
    """Pareto front of the fits seen (lower loss at every step up in complexity)."""
    entries = []
    for _, (mse, hyp) in sorted(outcome.approximate.items()):
        try:
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
    n = b.rows.n_train
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
            n_ops = max(2, len(b.s.ops) + data.k)
            dl = [0.5 * n * math.log2(max(r.loss, floor) / var) + r.complexity * math.log2(n_ops)
                  for r in rows]
            rows[int(np.argmin(dl))].chosen = True
    return rows
