"""From an accepted hypothesis to a `Function`: constants, expression, simplification, inputs.

1. Snap each fitted constant to the shortest decimal or small fraction that keeps exact
   agreement on the training and held-out rows.
2. Write the expression (positive terms first, SUB for negative ones, INC/DEC for +-1).
3. Simplify by rewrites, each kept only if it shrinks the expression and leaves every output
   bit-for-bit unchanged on all rows.
4. Decide column relevance by intervention (resample one column, see if the output moves); the
   function's inputs are the relevant columns.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry.domains import Domain, Input, Kind, RegistryError, join
from circuitlab.registry.examples import Examples
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.search import Hypothesis, Searcher


class Builder:
    def __init__(
        self, searcher: Searcher, data: Examples, domains: list[Domain], resolve: ex.Resolver | None
    ) -> None:
        self.s, self.data, self.domains, self.resolve = searcher, data, domains, resolve
        self.rows = searcher.rows

    def snap(self, hyp: Hypothesis) -> Hypothesis:
        """Replace each fitted constant by the shortest value that keeps exact agreement."""
        refs = [r for _, r in hyp.terms]
        inner = [hyp.wrap[1]] if hyp.wrap else []
        coefs = inner + [c for c, _ in hyp.terms] + [hyp.intercept]

        def make(values: list[float]) -> Hypothesis:
            wrap = (hyp.wrap[0], values[0]) if hyp.wrap else None
            body = values[len(inner) :]
            return Hypothesis(
                list(zip(body[:-1], refs, strict=True)), body[-1], hyp.train_mse, wrap
            )

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
        parts = [
            (c, self._wrapped(self.s.bank.expr(r, self.s.ops), hyp, const)) for c, r in ordered
        ]
        acc: ex.Expr | None = None
        for coef, e in parts:
            if acc is None:
                acc = (
                    e
                    if coef == 1
                    else ex.call("NEG", e)
                    if coef == -1
                    else ex.call("MUL", const(coef), e)
                )
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
                return np.broadcast_to(
                    np.asarray(ex.evaluate(e, cols, consts, self.resolve), dtype=np.float64),
                    (len(self.rows.X),),
                )

        target = out(expr)
        changed = True
        while changed:
            changed = False
            for candidate in _rewrites(expr):
                if ex.size(candidate) < ex.size(expr) and np.array_equal(
                    out(candidate), target, equal_nan=True
                ):
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
                trial[j] = np.concatenate(
                    [rng.permutation(X[:, j]), self.domains[j].sample(rng, 64)]
                )[: len(X)]
                if len(trial[j]) < len(X):
                    continue
                got = np.broadcast_to(
                    np.asarray(ex.evaluate(expr, trial, consts, self.resolve), dtype=np.float64),
                    (len(X),),
                )
                same = np.isclose(got, base, rtol=1e-12, atol=0.0) | (
                    np.isnan(got) & np.isnan(base)
                )
                if not same.all():
                    changed = True
                    break
            out[j] = changed
        return out

    def function(
        self, hyp: Hypothesis, name: str, status: str, provenance: Provenance
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
        fn = Function.new(
            name,
            inputs,
            expr,
            output=out_dom,
            constants=consts,
            status=status,
            provenance=provenance,
        )
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
