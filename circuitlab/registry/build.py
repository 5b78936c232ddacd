"""From an accepted hypothesis to a `Function`: constants, expression, simplification, inputs.

1. Snap each fitted constant to its shortest exact form (`constants.forms`: an integer, a short
   decimal, p/q, or p/q times pi, e or sqrt(k)) that still passes the search's acceptance test
   (training and held-out rows, probes, oracle), so 1/(2*pi) is written as such, not 0.159155.
   Approximate fits instead keep a form, or drop the intercept, only when that does not lengthen
   the description (`refine`, `description_length`).
2. Write the expression (positive terms first, SUB for negative ones, INC/DEC for +-1; a form
   1/D as a division: DIV(x, MUL(2, PI))).
3. Simplify by rewrites, each kept only if it shrinks the expression and leaves every output
   bit-for-bit unchanged on all rows.
4. Decide column relevance by intervention (resample one column, see if the output moves); the
   function's inputs are the relevant columns.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry.constants import Form, fitted_bits, forms, write_number, write_times
from circuitlab.registry.domains import Domain, Input, Kind, RegistryError, join
from circuitlab.registry.examples import Examples
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.search import Hypothesis, Rows, Searcher, literal_value

ZERO = Form(0.0, literal=0.0)  # no intercept: nothing to write


class Finisher:
    """Steps 3-4 for an expression made by anyone (a search's fit, the power law): simplify
    it, decide column relevance, make the `Function`. Needs only the rows, not a search."""

    def __init__(
        self,
        rows: Rows,
        data: Examples,
        domains: list[Domain],
        resolve: ex.Resolver | None,
        seed: int,
    ) -> None:
        self.rows, self.data, self.domains, self.resolve = rows, data, domains, resolve
        self.seed = seed  # of the resampling that decides relevance

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

    def relevance(self, expr: ex.Expr, consts: dict[str, float]) -> dict[int, bool]:
        """Column j is relevant iff resampling it (all rows and probes) changes the output."""
        X = self.rows.X
        cols = list(X.T)
        base = np.asarray(ex.evaluate(expr, cols, consts, self.resolve), dtype=np.float64)
        base = np.broadcast_to(base, (len(X),))
        rng = np.random.default_rng(self.seed + 1)
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

    def finish(
        self,
        expr: ex.Expr,
        consts: dict[str, float],
        name: str,
        status: str,
        provenance: Provenance,
    ) -> tuple[Function, dict[str, bool]]:
        """The function of `expr` (simplified; its inputs the relevant columns), and the
        relevance of every column."""
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


class Builder(Finisher):
    """Steps 1-2 for a search's accepted fits (`Hypothesis` over its bank), then `finish`."""

    def __init__(
        self, searcher: Searcher, data: Examples, domains: list[Domain], resolve: ex.Resolver | None
    ) -> None:
        super().__init__(searcher.rows, data, domains, resolve, searcher.cfg.seed)
        self.s = searcher

    def function(
        self, hyp: Hypothesis, name: str, status: str, provenance: Provenance
    ) -> tuple[Function, dict[str, bool]]:
        return self.finish(*self.expression(hyp), name, status, provenance)

    # -- exact fits ----------------------------------------------------------------------------

    def snap(self, hyp: Hypothesis) -> Hypothesis:
        """Replace each fitted constant by its shortest form that keeps the fit accepted."""
        refs = [r for _, r in hyp.terms]
        inner = [hyp.wrap[1]] if hyp.wrap else []
        coefs = inner + [c for c, _ in hyp.terms] + [hyp.intercept]

        def make(values: list[float]) -> Hypothesis:
            wrap = (hyp.wrap[0], values[0]) if hyp.wrap else None
            body = values[len(inner) :]
            return Hypothesis(
                list(zip(body[:-1], refs, strict=True)), body[-1], hyp.train_mse, wrap
            )

        chosen: dict[float, Form] = {}
        for i in range(len(coefs)):
            if coefs[i] == 0.0:
                continue
            for form in forms(coefs[i], self._window(make, coefs, i)):
                trial = coefs.copy()
                trial[i] = math.copysign(form.value, coefs[i])
                if self.s.verify(make(trial)):
                    coefs = trial
                    if form.exact:
                        chosen[form.value] = form
                    break
        out = make(coefs)
        out.terms = [(c, r) for c, r in out.terms if c != 0.0]
        out.forms = chosen
        return out

    def _window(
        self, make: Callable[[list[float]], Hypothesis], coefs: list[float], i: int
    ) -> float | None:
        """How far constant i can move before the predictions move by more than the tolerance
        (a generous bound from a finite difference: only forms inside it are verified)."""
        n = self.rows.n_train + self.rows.n_hold
        h = abs(coefs[i]) * 1e-6
        trial = coefs.copy()
        trial[i] += h
        with np.errstate(all="ignore"):
            slope = np.abs(self.s.predict(make(trial))[:n] - self.s.predict(make(coefs))[:n]) / h
        top = float(np.nanmax(slope, initial=0.0))
        return 8 * self.s.tol / top if top > 0 and math.isfinite(top) else None

    # -- approximate fits: description length --------------------------------------------------

    def refine(self, hyp: Hypothesis, n_ops: int) -> Hypothesis:
        """Approximate fit: fix a constant to an exact form (0.5, 1/(4*pi)), or drop the
        intercept, whenever that does not lengthen the description; the constants still free
        are refitted by least squares after each step, the best step first.

        The loss of fixing constant j at v + d, the others refitted, is known in closed form
        (sse + d^2 / [(A'A)^-1]_jj), so candidates are ranked by it plus their bits and only
        the best few per constant are scored in full (expression size, refitted digits)."""
        if hyp.wrap is not None or not hyp.terms:
            return hyp
        refs = [r for _, r in hyp.terms]
        m, n, node = len(refs), self.rows.n_train, math.log2(n_ops)
        fixed: dict[int, tuple[float, Form]] = {}
        cur, values = self._fit_linear(refs, fixed)
        best_dl = self.description_length(cur, ex.size(self.expression(cur)[0]), n_ops)
        while True:
            step: tuple[float, int, float, Form] | None = None
            stderr, inv_diag = self._stderr(cur.train_mse, refs, fixed)
            sse = max(cur.train_mse * n, 1e-300)
            for j in range(m + 1):
                if j in fixed:
                    continue
                v = values[j]
                # a step saves at most this constant's digits and three nodes (MUL c or ADD c)
                save = fitted_bits(v, stderr[j]) + 3 * node
                window = math.sqrt(max(inv_diag[j] * sse * (2 ** (2 * save / n) - 1), 0.0))
                options = forms(v, window, decimals=6, noisy=True) if v != 0 else []
                if j == m and abs(v) <= window:
                    options.append(ZERO)
                curvature = max(inv_diag[j] * sse, 1e-300)
                ranked = []
                for form in options:
                    grown = 0.5 * n * math.log2(1 + (form.value - abs(v)) ** 2 / curvature)
                    nodes = 3 * node if form.value in (0.0, 1.0) else 0.0  # MUL c, ADD c gone
                    if form.bits + grown - nodes <= save - 3 * node + 1e-9:
                        ranked.append((form.bits + grown - nodes, len(ranked), form))
                for _, _, form in sorted(ranked)[:4]:
                    trial = {**fixed, j: (math.copysign(form.value, v), form)}
                    h, _ = self._fit_linear(refs, trial)
                    dl = self.description_length(h, ex.size(self.expression(h)[0]), n_ops)
                    if dl <= best_dl + 1e-9 and (step is None or dl < step[0]):
                        step = (dl, j, trial[j][0], form)
            if step is None:
                return cur
            best_dl, j, value, form = step
            fixed[j] = (value, form)
            cur, values = self._fit_linear(refs, fixed)

    def description_length(self, hyp: Hypothesis, complexity: int, n_ops: int) -> float:
        """Bits to send the training outputs with this formula (two-part MDL): the residuals
        (Gaussian, relative to the variance of y), each node of the expression (one of n_ops
        symbols) and each constant: an exact form's bits (`constants.forms`: 0.5: 5, 1/(4*pi):
        11), a fitted constant's digits to its standard error (1 part in 10^4: 17.6 bits)."""
        n = self.rows.n_train
        var = float(np.var(self.rows.y_train)) or 1.0
        data = 0.5 * n * math.log2(max(hyp.train_mse, 1e-30 * var) / var)
        return data + complexity * math.log2(n_ops) + self._constant_bits(hyp)

    def _constant_bits(self, hyp: Hypothesis) -> float:
        if hyp.wrap is not None:
            shown = [hyp.wrap[1], *(c for c, _ in hyp.terms if abs(c) != 1), hyp.intercept]
            return sum(fitted_bits(c, 0.0) for c in shown if c not in (0.0, 1.0, -1.0))
        refs = [r for _, r in hyp.terms]
        values = [c for c, _ in hyp.terms] + [hyp.intercept]
        fixed = {j: (v, hyp.forms[abs(v)]) for j, v in enumerate(values) if abs(v) in hyp.forms}
        if hyp.intercept == 0.0:  # no intercept: not a constant to fit
            fixed[len(refs)] = (0.0, ZERO)
        stderr, _ = self._stderr(hyp.train_mse, refs, fixed)
        bits = 0.0
        for j, v in enumerate(values):
            shown = v not in (0.0, 1.0, -1.0) if j == len(refs) else abs(v) != 1.0 and v != 0
            if shown:
                bits += fixed[j][1].bits if j in fixed else fitted_bits(v, stderr[j])
        return bits

    def _design(self, refs: list[tuple[int, int]]) -> np.ndarray:
        tr = self.rows.train
        cols = [self.s.bank.value(r)[tr] for r in refs]
        return np.stack([*cols, np.ones(self.rows.n_train)], axis=1)

    def _fit_linear(
        self, refs: list[tuple[int, int]], fixed: dict[int, tuple[float, Form]]
    ) -> tuple[Hypothesis, list[float]]:
        """sum(a_j f_j) + b with the fixed constants set and the others by least squares; also
        every constant in order (a_1..a_m, b), zeros included."""
        A, y = self._design(refs), self.rows.y_train
        coef = np.zeros(A.shape[1])
        for j, (v, _) in fixed.items():
            coef[j] = v
        free = [j for j in range(A.shape[1]) if j not in fixed]
        if free:
            sol, *_ = np.linalg.lstsq(A[:, free], y - A @ coef, rcond=None)
            coef[free] = sol
        mse = float(((A @ coef - y) ** 2).mean())
        terms = [(float(c), r) for c, r in zip(coef[:-1], refs, strict=True) if c != 0.0]
        forms_ = {abs(v): f for v, f in fixed.values() if v != 0.0}
        return Hypothesis(terms, float(coef[-1]), mse, forms=forms_), [float(c) for c in coef]

    def _stderr(
        self, mse: float, refs: list[tuple[int, int]], fixed: dict[int, tuple[float, Form]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Standard errors of the free constants (and diag of (A'A)^-1), zero for fixed ones."""
        A = self._design(refs)
        k = A.shape[1]
        stderr, inv_diag = np.zeros(k), np.zeros(k)
        free = [j for j in range(k) if j not in fixed]
        if not free:
            return stderr, inv_diag
        n = self.rows.n_train
        s2 = mse * n / max(n - len(free), 1)
        inv_diag[free] = np.diag(np.linalg.pinv(A[:, free].T @ A[:, free]))
        stderr[free] = np.sqrt(np.maximum(s2 * inv_diag[free], 0.0))
        return stderr, inv_diag

    # -- expression ----------------------------------------------------------------------------

    def expression(self, hyp: Hypothesis) -> tuple[ex.Expr, dict[str, float]]:
        consts: dict[str, float] = {}

        def const(v: float) -> ex.Const:
            key = f"c{len(consts)}"
            consts[key] = float(v)
            return ex.Const(key)

        def number(v: float) -> ex.Expr:
            return write_number(v, hyp.forms.get(abs(v)), const)

        def times(v: float, e: ex.Expr) -> ex.Expr:
            return write_times(v, hyp.forms.get(abs(v)), e, const)

        bound: dict[int, ex.Const] = {}

        def bind(e: ex.Expr) -> ex.Expr:
            """A candidate's integer literals (the 3 of ADDMOD(a, 3, p=7)) as named constants,
            one per value."""
            v = literal_value(e)
            if v is not None:
                if v not in bound:
                    bound[v] = const(v)
                return bound[v]
            if isinstance(e, ex.Call) and e.args:
                return ex.Call(e.op, tuple(bind(a) for a in e.args), e.params, e.version)
            return e

        ordered = sorted(hyp.terms, key=lambda t: (t[0] < 0, t[1]))
        parts = [
            (c, self._wrapped(bind(self.s.bank.expr(r, self.s.ops)), hyp, number, times))
            for c, r in ordered
        ]
        acc: ex.Expr | None = None
        for coef, e in parts:
            if acc is None:
                acc = e if coef == 1 else ex.call("NEG", e) if coef == -1 else times(coef, e)
                continue
            term = e if abs(coef) == 1 else times(abs(coef), e)
            acc = ex.call("ADD" if coef > 0 else "SUB", acc, term)
        b = hyp.intercept
        if acc is None:
            return number(b), consts
        if b > 0 and all(c < 0 for c, _ in parts) and hyp.wrap is None:  # b - f, not -f + b
            pos = Hypothesis([(-c, r) for c, r in hyp.terms], 0.0, forms=hyp.forms)
            inner, inner_consts = self.expression(pos)
            consts = {}
            head = number(b)
            renamed = {k: f"c{len(consts) + i}" for i, k in enumerate(inner_consts)}
            for k, v in inner_consts.items():
                consts[renamed[k]] = v
            return ex.call("SUB", head, ex.rename_constants(inner, renamed)), consts
        if b == 1:
            acc = ex.call("INC", acc)
        elif b == -1:
            acc = ex.call("DEC", acc)
        elif b != 0:
            acc = ex.call("ADD" if b > 0 else "SUB", acc, number(abs(b)))
        return acc, consts

    @staticmethod
    def _wrapped(
        e: ex.Expr,
        hyp: Hypothesis,
        number: Callable[[float], ex.Expr],
        times: Callable[[float, ex.Expr], ex.Expr],
    ) -> ex.Expr:
        if hyp.wrap is None:
            return e
        name, c = hyp.wrap
        if name == "POW":
            return ex.call("POW", e, number(c))
        return ex.call(name, e if c == 1 else times(c, e))


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
