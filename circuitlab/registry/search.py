"""Enumerative search over expressions, deduplicated by observational equivalence.

Method (bottom-up enumeration as in TRANSIT / EUSolver / BUSTLE, with fitted linear constants):
1. Rows. The examples are split (seeded) into training and held-out rows; fresh in-domain probe
   inputs are drawn from each column's observed domain. Every candidate is evaluated on all three
   at once (a (candidates, rows) array), but only the training outputs guide the search. On a
   large table the search runs on a seeded sample of those rows (`discover.py`, search_rows),
   so memory and time follow the sample, not the table; the full rows (`Searcher.full`) only
   check what the sample accepts (4).
2. Bank. Cost 1 holds the input columns. Cost c holds every application of an operation of cost
   o to arguments whose costs sum to c - o, for every operation the proposer offers (primitives
   and registered functions, the latter after every primitive of the same cost so that a tie
   goes to the plain formula) and every tuple of type-compatible arguments: no cap on which
   columns are routed where. A candidate whose values on all rows equal an earlier one's
   (observational equivalence) is dropped, as is one undefined (NaN) anywhere or constant.
3. Forms. Each new candidate f is tested as `f` and as `a*f + b` (least squares, closed form,
   vectorised); after each cost level, every pair of candidates up to that cost is tested as
   `a*f1 + b*f2 + c`: a scalar-triple-product test on three random projections orthogonal to the
   constant vector finds the pairs whose span contains y, then least squares confirms them.
   Candidates equal up to an affine map are represented once for these fits (once among those
   made by primitives, once among those made by registered functions). Three cost levels
   after a candidate's own, it is also tried inside EXP/SIN/COS(c*f) and f**c with c found by
   a vectorised grid of starts and scipy's least_squares (a and b solved exactly for each c).
4. Acceptance. A fit must agree exactly (within rtol of max|y| over all rows) on every training
   row, on the held-out rows, be defined on every probe, and match the oracle on the probes when
   one is given. When the search runs on a sample, a fit accepted there is then checked, with
   its constants as fitted on the sample, on every training and held-out row of the full data
   (its candidates rebuilt there from how the bank made them, `Bank.replay`); one that fails is
   rejected and its worst rows kept as counterexamples (`Searcher.counterexamples`), for which
   `discover.py` restarts the search on the sample plus those rows (`restart_on_counterexample`):
   two candidates equal on the sample were kept once, and the extra rows tell them apart.
5. The search stops at the end of the first batch that yields an accepted hypothesis (when that
   fit has constants, after the level's registered functions, which may give a smaller one),
   or when the cost, candidate or time budget runs out; it then reports the best approximate
   fits seen. The candidate budget is the smaller of max_bank and what memory_bytes holds: each
   candidate keeps its values on every search row and, as the representative of an affine
   class, a unit vector over the training rows (`Searcher.bank_limit`); the evaluation batches
   (`chunk`) and the pair tests are sized within the same budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from circuitlab._memory import format_bytes
from circuitlab.registry import expr as ex
from circuitlab.registry.bank import Bank, Pages, Ref, _affine_keys, _keys, _new_keys
from circuitlab.registry.constants import Form
from circuitlab.registry.domains import Kind
from circuitlab.registry.proposer import OpInfo, Proposal, Proposer, TaskView, UniformProposer

KINDS = (Kind.BOOL, Kind.INT, Kind.REAL)
KCODE = {k: i for i, k in enumerate(KINDS)}

# memory of one candidate beside its values: its keys in the hash sets, kind, how it was
# built, its pair projections and its share of a pair-test block (16 rows per representative)
CANDIDATE_OVERHEAD = 512
WORK_COPIES = 16  # arrays the size of one evaluation batch alive at once (arguments, keys, fits)
# candidates' values on the full rows kept for the checks (at most memory_bytes / 16)
FULL_CACHE_BYTES = 64 * 1024**2
COUNTEREXAMPLES = 4  # rows kept from a fit that fails on the full rows, worst first


# An integer literal inside a candidate, such as the 3 of ADDMOD(a, 3, p=7), is a Const whose
# name is this prefix and the value; the builder gives it a proper name (c0) and value.
LITERAL = "#"


def literal(value: int) -> ex.Const:
    """The integer `value` as an argument of a candidate (see `literal_value`)."""
    return ex.Const(f"{LITERAL}{int(value)}")


def literal_value(node: ex.Expr) -> int | None:
    """The value of a node made by `literal`, else None."""
    if isinstance(node, ex.Const) and node.name.startswith(LITERAL):
        return int(node.name[len(LITERAL) :])
    return None


@dataclass
class Op:
    """An operation the search can apply: a primitive (with fixed parameters) or a function."""

    name: str
    group: str
    arity: int
    kind_rule: Callable[[tuple[Kind, ...]], Kind | None]
    apply: Callable[..., np.ndarray]  # vectorised: (m, N) arrays -> (m, N)
    build: Callable[[Sequence[ex.Expr]], ex.Expr]
    commutative: bool = False
    cost: int = 1
    param_cost: int = 0  # fixed parameters (a modulus) count like constants


@dataclass
class Hypothesis:
    """y = sum(coef * term) + intercept over bank entries (an empty sum: a constant)."""

    terms: list[tuple[float, Ref]]
    intercept: float
    train_mse: float = 0.0
    # a*u(c*f) + b (u = EXP, SIN, COS) or a*f**c + b (u = POW): one term, constant c inside
    wrap: tuple[str, float] | None = None
    # how constants are written, by absolute value (set by build.py: 1/(2*pi), not 0.159...)
    forms: dict[float, Form] = field(default_factory=dict)

    @property
    def n_constants(self) -> int:
        return sum(1 for c, _ in self.terms if c != 1.0) + (self.intercept != 0.0)


@dataclass
class SearchStats:
    candidates: int = 0  # single candidates evaluated (before deduplication)
    pairs: int = 0  # pair fits tested
    bank: int = 0  # distinct candidates kept
    level: int = 0  # highest cost level reached
    max_cost: int = 0  # the cost limit in force
    seconds: float = 0.0
    stopped: str = ""  # why the search ended without an exact answer
    refine: int = 0  # candidates tried after the first solution, looking for a smaller one
    restarts: int = 0  # searches begun again with rows where a fit to the sample failed

    @property
    def evaluated(self) -> int:
        return self.candidates + self.pairs


@dataclass
class Rows:
    """The row layout of every value array: [train | held-out | probes]."""

    X: np.ndarray  # (N, k) inputs on all rows
    y_train: np.ndarray
    y_hold: np.ndarray
    n_train: int
    n_hold: int
    oracle_y: np.ndarray | None = None  # outputs of the oracle on the probe rows

    @property
    def train(self) -> slice:
        return slice(0, self.n_train)

    @property
    def hold(self) -> slice:
        return slice(self.n_train, self.n_train + self.n_hold)

    @property
    def probes(self) -> slice:
        return slice(self.n_train + self.n_hold, None)

    def subset(self, train: np.ndarray, hold: np.ndarray) -> Rows:
        """These training and held-out rows (positions within each part) and every probe."""
        X = np.concatenate(
            [self.X[self.train][train], self.X[self.hold][hold], self.X[self.probes]]
        )
        return Rows(X, self.y_train[train], self.y_hold[hold], len(train), len(hold), self.oracle_y)


@dataclass
class SearchConfig:
    max_cost: int = 9  # highest cost level enumerated
    max_seconds: float = 60.0
    max_bank: int = 400_000  # distinct candidates kept in memory at most (~330 MB at 100 rows)
    # bytes the bank (values on every row, pair-fit vectors) and the evaluation batches may take:
    # the bank's limit is the smaller of max_bank and what fits (`Searcher.bank_limit`)
    memory_bytes: int = 2 * 1024**3
    rtol: float = 1e-9  # exact means |error| <= rtol * max|y|
    pairs: bool = True  # test a*f1 + b*f2 + c
    chunk: int = 1 << 20  # values per evaluation batch (rows x candidates; less on a small budget)
    seed: int = 0
    track_approximate: bool = True
    nonlinear_max_cost: int = 2  # levels whose candidates are tried inside EXP/SIN/COS/POW
    nonlinear_limit: int = 200  # representatives per level tried that way
    refine_candidates: int = 20_000  # budget for a smaller single after a fitted-term solution
    # on a sample of the rows: stop at the first fit that fails on the full rows, so that the
    # caller can search again with its counterexample rows (else reject it and go on)
    restart_on_counterexample: bool = False


@dataclass
class SearchOutcome:
    accepted: list[Hypothesis]
    stats: SearchStats
    approximate: dict[int, tuple[float, Hypothesis]] = field(default_factory=dict)


class Searcher:
    """One search: rows, operations and proposer fixed; call `run()`."""

    def __init__(
        self,
        rows: Rows,
        kinds: Sequence[Kind],
        ops: Sequence[Op],
        proposer: Proposer | None = None,
        config: SearchConfig | None = None,
        full: Rows | None = None,
    ) -> None:
        """rows: where candidates are evaluated; full: all the rows, when `rows` is a sample
        of them (the same probes): an accepted fit must hold there too (`_verify_full`)."""
        self.rows, self.col_kinds, self.cfg = rows, tuple(kinds), config or SearchConfig()
        self.full = full if full is not None and full is not rows else None
        self.all_rows = self.full or rows
        # positions in the full [training | held-out] rows where a fit to the sample failed
        self.counterexamples: list[int] = []
        self._full_cache: dict[Ref, np.ndarray] = {}
        if self.full is not None:
            f = self.full
            self._full_X = f.X[: f.n_train + f.n_hold]
            self._full_y = np.concatenate([f.y_train, f.y_hold])
        self._size_budget()
        self.proposer = proposer or UniformProposer()
        view = TaskView(rows.X[rows.train], rows.y_train, self.col_kinds)
        infos = [OpInfo(o.name, o.group, o.arity) for o in ops]
        proposal: Proposal = self.proposer.propose(view, infos)
        rank = {name: i for i, name in enumerate(proposal.order)}
        chosen = [o for o in ops if o.name in proposal.costs]
        for o in chosen:
            o.cost = max(1, int(proposal.costs[o.name])) + o.param_cost
        # at each cost, plain operations before registered functions: the bank keeps the first
        # of equivalent candidates and the search stops at the first fit, so a tie goes to the
        # plain formula whatever order the proposer gives
        self.ops = sorted(
            chosen,
            key=lambda o: (o.group == "registered", rank.get(o.name, len(rank)), o.name),
        )
        self.bank = Bank()
        self.seen: set[int] = set()
        # affine classes, one set for candidates made by plain operations and one for those
        # made by registered functions: PE(m, h) = 9.81*MUL(m, h) is then a representative
        # beside MUL(m, h), so pair fits can use whichever gives the smaller expression
        self.affine_seen: dict[bool, set[int]] = {False: set(), True: set()}
        self.stats = SearchStats()
        y = rows.y_train
        # exact is relative to max|y| over every row, sampled or not
        self.scale, self.tol = tolerance(self.all_rows, self.cfg.rtol)
        # pair stage state: representatives of affine classes (train rows, centred, unit norm)
        self.rep_refs: list[Ref] = []
        self.rep_unit = Pages(rows.n_train)  # (representatives, n_train) unit vectors
        self.rep_proj: list[np.ndarray] = []  # blocks of (m, 3) projections
        self.rep_akeys: list[np.ndarray] = []  # blocks of affine keys
        self.rep_registered: list[np.ndarray] = []  # blocks: made by a registered function?
        rng = np.random.default_rng(self.cfg.seed + 7919)
        n = rows.n_train
        U = rng.standard_normal((n, 3))
        U -= U.mean(axis=0, keepdims=True)  # orthogonal to the constant vector
        self.U = np.linalg.qr(U)[0] if n > 3 else U
        yc = y - y.mean()
        self.y_unit = yc / (np.linalg.norm(yc) or 1.0)
        self.y_proj = self.y_unit @ self.U
        self.approx: dict[int, tuple[float, Hypothesis]] = {}
        self.accepted: list[Hypothesis] = []
        self.t0 = 0.0
        self._refine_limit: int | None = None

    def _size_budget(self) -> None:
        """Fit the search in memory_bytes: evaluation batches (`chunk` values, several arrays
        of that size alive at once) take at most a quarter, and the bank what is left, at
        8 bytes per row of each candidate's values and of its pair-fit unit vector
        (training rows) plus CANDIDATE_OVERHEAD; `bank_limit` is that or max_bank."""
        mem, n = self.cfg.memory_bytes, self.rows.X.shape[0]
        work = min(self.cfg.chunk * 8 * WORK_COPIES, mem // 4)
        self.chunk = max(n, work // (8 * WORK_COPIES))  # values per batch: at least one candidate
        per = 8 * (n + self.rows.n_train) + CANDIDATE_OVERHEAD
        fits = max(0, mem - work) // per
        self.bank_limit = min(self.cfg.max_bank, fits)
        self.bank_bound = "candidates" if self.cfg.max_bank <= fits else "bytes"

    def bank_message(self, level: int) -> str:
        """Why the bank is full: which limit bound it, and what to raise."""
        head = f"bank limit of {self.bank_limit:,} distinct candidates reached at cost {level}"
        if self.bank_bound == "candidates":
            return f"{head}, set by max_bank (raise it to search further)"
        n = self.rows.X.shape[0]
        budget = format_bytes(self.cfg.memory_bytes)
        return (
            f"{head}, set by the memory budget of {budget} at {n} rows "
            "per candidate (raise memory_bytes, --memory, or lower search_rows, --search-rows)"
        )

    # -- public --------------------------------------------------------------------------------

    def run(self) -> SearchOutcome:
        with np.errstate(all="ignore"):
            return self._run()

    def _run(self) -> SearchOutcome:
        self.t0 = time.perf_counter()
        self.stats.max_cost = self.cfg.max_cost
        y = self.rows.y_train
        if np.all(y == y[0]):
            hyp = Hypothesis([], float(y[0]))
            if self._verify_constant(hyp):
                return self._done([hyp])
        try:
            for level in range(1, self.cfg.max_cost + 1):
                self.stats.level = level
                if self._level(level):
                    return self._done(self.accepted)
                self.bank.finish(level)
                if self.cfg.pairs and self.rows.n_train >= 5 and self._pairs(level):
                    self._refine(level + 1)
                    return self._done(self.accepted)
                # a*u(c*f) + b costs about 3 more than f: try it after level cost(f) + 3
                inner = level - 3
                if (
                    1 <= inner <= self.cfg.nonlinear_max_cost
                    and self.rows.n_train >= 5
                    and self._nonlinear(inner)
                ):
                    self._refine(level + 1)
                    return self._done(self.accepted)
            self.stats.stopped = f"no exact fit up to cost {self.cfg.max_cost}"
        except _Budget as stop:
            if self.accepted:  # out of budget while trying the level's registered functions
                return self._done(self.accepted)
            self.stats.stopped = str(stop)
        return self._done([])

    def _refine(self, level: int) -> None:
        """After a fit with fitted terms, look one cost level further for a single expression
        (often much smaller: SUBMOD(a, b) rather than a - b + p*[a < b]), within a small budget.
        Its candidates are counted apart (stats.refine): they come after the first solution."""
        if level > self.cfg.max_cost or self.cfg.refine_candidates <= 0:
            return
        before = self.stats.candidates
        self._refine_limit = before + self.cfg.refine_candidates
        try:
            self._level(level)
        except _Budget:
            pass
        finally:
            self._refine_limit = None
            self.stats.refine = self.stats.candidates - before
            self.stats.candidates = before

    # -- enumeration ---------------------------------------------------------------------------

    def _level(self, level: int) -> bool:
        if level == 1:
            vals = self.rows.X.T.copy()
            kinds = np.array([KCODE[k] for k in self.col_kinds], dtype=np.int8)
            picks = np.arange(len(self.col_kinds))[None, :]
            return self._accept_batch(level, vals, kinds, -1, (), picks, count=len(kinds))
        found = False
        for oi, op in enumerate(self.ops):
            rest = level - op.cost
            if rest < op.arity or (found and op.group != "registered"):
                continue
            for split in _compositions(rest, op.arity):
                if any(self.bank.size_of(c) == 0 for c in split):
                    continue
                if op.commutative and list(split) != sorted(split):
                    continue
                if self._apply(level, oi, op, split):
                    # a bare candidate is as small as this level gets; a fit with constants
                    # (9.81*MUL(m, h)) may still lose to a registered call (PE(m, h)), which
                    # comes after every plain operation of the level: try those too
                    if any(_bare(h) for h in self.accepted):
                        return True
                    found = True
                    break
        return found

    def _apply(self, level: int, oi: int, op: Op, split: tuple[int, ...]) -> bool:
        groups = []
        for c in split:
            kinds = self.bank.kinds[c]
            groups.append({k: np.flatnonzero(kinds == KCODE[k]) for k in KINDS})
        found = False
        for combo in _product([list(KINDS)] * op.arity):
            out_kind = op.kind_rule(tuple(combo))
            if out_kind is None or out_kind is Kind.GRID:
                continue
            idx = [groups[a][combo[a]] for a in range(op.arity)]
            if any(len(i) == 0 for i in idx):
                continue
            found |= self._apply_indices(level, oi, op, split, idx, out_kind)
        return found

    def _apply_indices(
        self,
        level: int,
        oi: int,
        op: Op,
        split: tuple[int, ...],
        idx: list[np.ndarray],
        out_kind: Kind,
    ) -> bool:
        N = self.rows.X.shape[0]
        shape = tuple(len(i) for i in idx)
        total = int(np.prod(shape))
        step = max(1, self.chunk // N)
        found = False
        for start in range(0, total, step):
            flat = np.arange(start, min(total, start + step))
            sub = np.unravel_index(flat, shape)
            picks = [idx[a][sub[a]] for a in range(op.arity)]
            if op.commutative:  # equal-cost arguments: keep one order (i <= j)
                keep = np.ones(len(flat), dtype=bool)
                for a in range(op.arity - 1):
                    if split[a] == split[a + 1]:
                        keep &= picks[a] <= picks[a + 1]
                picks = [p[keep] for p in picks]
            if len(picks[0]) == 0:
                continue
            args = [self.bank.vals[split[a]].take(picks[a]) for a in range(op.arity)]
            vals = op.apply(*args)
            kinds = np.full(len(vals), KCODE[out_kind], dtype=np.int8)
            found |= self._accept_batch(
                level, vals, kinds, oi, split, np.stack(picks), count=len(vals)
            )
            if found:
                return True
        return found

    def _accept_batch(
        self,
        level: int,
        vals: np.ndarray,
        kinds: np.ndarray,
        oi: int,
        split: tuple[int, ...],
        picks: np.ndarray,
        count: int,
    ) -> bool:
        """Deduplicate new values into the bank and test them as `f` and `a*f + b`."""
        self.stats.candidates += count
        self._check_budget()
        with np.errstate(all="ignore"):
            ok = (np.abs(vals) < 1e100).all(axis=1)  # also rejects NaN; beyond 1e100 = overflow
        ok &= vals.max(axis=1) > vals.min(axis=1)  # constants are covered by the intercept
        idx = np.flatnonzero(ok)
        keep = idx[_new_keys(_keys(vals[idx]), self.seen)]
        if len(keep) == 0:
            return False
        vals, kinds = vals[keep], kinds[keep]
        start = self.bank.add(level, vals, kinds, oi, split, picks[:, keep])
        self.stats.bank += len(vals)
        refs = [(level, start + i) for i in range(len(vals))]
        self._add_reps(vals, refs, oi >= 0 and self.ops[oi].group == "registered")
        return self._test_singles(vals, refs)

    def _add_reps(self, vals: np.ndarray, refs: list[Ref], registered: bool = False) -> None:
        tr = self.rows.train
        akeys, varies = _affine_keys(vals)
        train_c = vals[:, tr] - vals[:, tr].mean(axis=1, keepdims=True)
        tnorm = np.linalg.norm(train_c, axis=1)
        ok = varies & (tnorm > 1e-12 * (np.abs(vals[:, tr]).max(axis=1) + 1e-300))
        idx = np.flatnonzero(ok)
        new = idx[_new_keys(akeys[idx], self.affine_seen[registered])]
        if len(new) == 0:
            return
        unit = train_c[new] / tnorm[new][:, None]
        self.rep_refs.extend(refs[i] for i in new)
        self.rep_unit.append(unit)
        self.rep_proj.append(unit @ self.U)
        self.rep_akeys.append(akeys[new])
        self.rep_registered.append(np.full(len(new), registered))

    def _test_singles(self, vals: np.ndarray, refs: list[Ref]) -> bool:
        tr, y = self.rows.train, self.rows.y_train
        F = vals[:, tr]
        exact = np.abs(F - y).max(axis=1) <= self.tol
        Fc = F - F.mean(axis=1, keepdims=True)
        denom = (Fc**2).sum(axis=1)
        yc = y - y.mean()
        with np.errstate(all="ignore"):
            a = (Fc @ yc) / np.where(denom > 0, denom, np.nan)
        resid = yc[None, :] - a[:, None] * Fc
        sse = (resid**2).sum(axis=1)
        affine = (np.abs(resid).max(axis=1) <= self.tol) & (denom > 0)
        if self.cfg.track_approximate:
            self._track(sse, a, F, refs)
        hits = np.flatnonzero(exact | affine)
        added = False
        for i in hits:
            if exact[i]:
                hyp = Hypothesis([(1.0, refs[i])], 0.0)
            else:
                b = float(y.mean() - a[i] * F[i].mean())
                hyp = Hypothesis([(float(a[i]), refs[i])], b)
            if self._verify(hyp):
                self.accepted.append(hyp)
                added = True
        return added

    def _track(self, sse: np.ndarray, a: np.ndarray, F: np.ndarray, refs: list[Ref]) -> None:
        """Best affine fit per complexity, for the approximate (noisy data) results table."""
        n = self.rows.n_train
        finite = np.isfinite(sse)
        if not finite.any():
            return
        i = int(np.nanargmin(np.where(finite, sse, np.nan)))
        level = refs[i][0]
        complexity = level + 4  # a*f + b: MUL, a, ADD, b
        mse = float(sse[i]) / n
        best = self.approx.get(complexity)
        if best is None or mse < best[0]:
            b = float(self.rows.y_train.mean() - a[i] * F[i].mean())
            self.approx[complexity] = (mse, Hypothesis([(float(a[i]), refs[i])], b, mse))

    # -- pairs ---------------------------------------------------------------------------------

    def _pairs(self, level: int) -> bool:
        """Test a*f1 + b*f2 + c for every new representative against all earlier ones.

        The new representatives made by registered functions go first (reuse is what makes a
        search with a registry cheap); an accepted pair is then also refitted with the plain
        twin of each registered term (`_plain_twins`), so a plain formula still wins a tie.
        """
        if not self.rep_refs:
            return False
        levels = np.array([r[0] for r in self.rep_refs])
        new = np.flatnonzero(levels == level)
        if len(new) == 0:
            return False
        P = _stack(self.rep_proj)  # (M, 3)
        if self.cfg.track_approximate:
            self._track_pairs(self.rep_unit)
        q = np.cross(self.y_proj[None, :], P[new])  # (a, 3): det[y, f1, f2] = f2 . (y x f1)
        M = len(P)
        # small row chunks: the search stops at the first chunk with an accepted pair, so the
        # count of pairs tested reflects the proposer's order rather than the chunk size
        step = max(1, min(16, self.chunk // max(M, 1)))
        registered = _stack(self.rep_registered)[new]
        earlier, reg, plain = np.flatnonzero(levels < level), new[registered], new[~registered]
        # (rows, columns, pair a row only with earlier columns): every pair once, those of two
        # registered functions (or one and an earlier level) first, then registered x plain
        blocks = (
            (reg, np.concatenate([earlier, reg]), True),
            (reg, plain, False),
            (plain, np.concatenate([earlier, plain]), True),
        )
        for rows_all, cols, ordered in blocks:
            if len(rows_all) == 0 or len(cols) == 0:
                continue
            Pc = P[cols]
            for s in range(0, len(rows_all), step):
                rows = rows_all[s : s + step]
                D = q[np.searchsorted(new, rows)] @ Pc.T  # (chunk, columns)
                valid = cols[None, :] < rows[:, None] if ordered else np.ones(D.shape, bool)
                self.stats.pairs += int(valid.sum())
                self._check_budget()
                hits = np.argwhere((np.abs(D) <= 1e-9) & valid)
                for hi, jc in hits[:5000]:
                    hyp = self._fit_pair(self.rep_refs[rows[hi]], self.rep_refs[cols[jc]])
                    if hyp is not None and self._verify(hyp):
                        self.accepted.append(hyp)
                if self.accepted:
                    self._plain_twins()
                    return True
        return False

    def _plain_twins(self) -> None:
        """Refit every accepted pair with, in place of each term made by a registered function,
        the plain representative equal to it up to a*f + b (AND for NAND = 1 - AND), if any:
        the smaller of the two expressions is chosen later, and a plain one wins a tie."""
        keys, registered = _stack(self.rep_akeys), _stack(self.rep_registered)
        index = {ref: i for i, ref in enumerate(self.rep_refs)}
        for hyp in list(self.accepted):
            if len(hyp.terms) != 2 or hyp.wrap is not None:
                continue
            options = []
            for _, ref in hyp.terms:
                i = index.get(ref)
                twin = (
                    np.flatnonzero((keys == keys[i]) & ~registered)[:1]
                    if i is not None and registered[i]
                    else []
                )
                options.append([ref, *(self.rep_refs[t] for t in twin)])
            for r1 in options[0]:
                for r2 in options[1]:
                    if (r1, r2) == (hyp.terms[0][1], hyp.terms[1][1]) or r1 == r2:
                        continue
                    twin_hyp = self._fit_pair(r1, r2)
                    if twin_hyp is not None and self._verify(twin_hyp):
                        self.accepted.append(twin_hyp)

    def _fit_pair(self, r1: Ref, r2: Ref) -> Hypothesis | None:
        tr, y = self.rows.train, self.rows.y_train
        f1, f2 = self.bank.value(r1)[tr], self.bank.value(r2)[tr]
        A = np.stack([f1, f2, np.ones_like(f1)], axis=1)
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        if np.abs(A @ coef - y).max() > self.tol or min(abs(coef[0]), abs(coef[1])) == 0:
            return None
        return Hypothesis([(float(coef[0]), r1), (float(coef[1]), r2)], float(coef[2]))

    def _track_pairs(self, Uall: Pages) -> None:
        """Best pair fit (by R^2) per complexity among the candidates most correlated with y.

        Only for the approximate table: exact pairs are found by the triple-product test over
        all pairs; here the K = 400 representatives with the highest |correlation| stand in.
        """
        r = Uall.matvec(self.y_unit)
        top = np.argsort(-np.abs(r))[:400]
        Ut = Uall.take(top)
        G = Ut @ Ut.T
        ri, rj = r[top][:, None], r[top][None, :]
        with np.errstate(all="ignore"):
            r2 = (ri**2 + rj**2 - 2 * ri * rj * G) / (1 - G**2)
        r2 = np.where((np.abs(G) < 1 - 1e-9) & np.triu(np.ones_like(G, dtype=bool), 1), r2, -np.inf)
        levels = np.array([self.rep_refs[t][0] for t in top])
        cplx = levels[:, None] + levels[None, :] + 7
        for c in np.unique(cplx):
            masked = np.where(cplx == c, r2, -np.inf)
            if not np.isfinite(masked).any():
                continue
            a, b = np.unravel_index(int(np.argmax(masked)), masked.shape)
            hyp = self._fit_pair_ls(self.rep_refs[top[a]], self.rep_refs[top[b]])
            best = self.approx.get(int(c))
            if best is None or hyp.train_mse < best[0]:
                self.approx[int(c)] = (hyp.train_mse, hyp)

    def _fit_pair_ls(self, r1: Ref, r2: Ref) -> Hypothesis:
        tr, y = self.rows.train, self.rows.y_train
        f1, f2 = self.bank.value(r1)[tr], self.bank.value(r2)[tr]
        A = np.stack([f1, f2, np.ones_like(f1)], axis=1)
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        mse = float(((A @ coef - y) ** 2).mean())
        return Hypothesis([(float(coef[0]), r1), (float(coef[1]), r2)], float(coef[2]), mse)

    # -- acceptance ----------------------------------------------------------------------------

    def predict(self, hyp: Hypothesis) -> np.ndarray:
        out = np.full(self.rows.X.shape[0], hyp.intercept, dtype=np.float64)
        for coef, ref in hyp.terms:
            f = self.bank.value(ref)
            if hyp.wrap is not None:
                with np.errstate(all="ignore"):
                    f = NONLINEAR[hyp.wrap[0]](f, hyp.wrap[1])
            out = out + coef * f
        return out

    # -- constants inside nonlinear functions ----------------------------------------------------

    def _nonlinear(self, level: int) -> bool:
        """Test a*u(c*f) + b and a*f**c + b for the representatives of cost `level`.

        a and b enter linearly, so for each trial c they are solved in closed form (variable
        projection) and only c is searched: a grid of starting values for every candidate at
        once (vectorised), then scipy's least_squares from the two best starts of each
        candidate whose best start already explains most of the variance.
        """
        from scipy.optimize import least_squares

        tr, y = self.rows.train, self.rows.y_train
        refs = [r for r in self.rep_refs if r[0] == level][: self.cfg.nonlinear_limit]
        if not refs:
            return False
        F = np.stack([self.bank.value(r)[tr] for r in refs])  # (R, n)
        yc = y - y.mean()
        syy = float(yc @ yc) or 1.0
        ones = np.ones(len(y))
        for name, u in NONLINEAR.items():
            starts = np.array(_NONLINEAR_STARTS[name])
            ok = (F > 0).all(axis=1) if name == "POW" else np.ones(len(F), dtype=bool)
            if not ok.any():
                continue
            self.stats.candidates += int(ok.sum())
            self._check_budget()
            # (R', K, n) values at a time: blocks of candidates within one evaluation batch
            block = max(1, self.chunk // (len(starts) * len(y)))
            r2_blocks = []
            for sel in np.array_split(np.flatnonzero(ok), -(-int(ok.sum()) // block)):
                G = u(F[sel][:, None, :], starts[None, :, None])  # (R', K, n)
                Gc = G - G.mean(axis=2, keepdims=True)
                gg = (Gc**2).sum(axis=2)
                gy = Gc @ yc
                del G, Gc
                r2_blocks.append(np.where(np.isfinite(gg) & (gg > 0), gy**2 / (gg * syy), 0.0))
            r2 = np.nan_to_num(np.concatenate(r2_blocks), nan=0.0)
            for i_ok, i in enumerate(np.flatnonzero(ok)):
                best = np.argsort(-r2[i_ok])[:2]
                if r2[i_ok, best[0]] < 0.5:
                    continue
                f = F[i]

                def resid(c: np.ndarray, f: np.ndarray = f, u: Callable = u) -> np.ndarray:
                    g = u(f, c[0])
                    if not np.isfinite(g).all():
                        return np.full_like(y, 1e30)
                    A = np.stack([g, ones], axis=1)
                    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
                    return A @ coef - y

                for k in best:
                    sol = least_squares(
                        resid, x0=[starts[k]], xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=200
                    )
                    if np.abs(sol.fun).max() > self.tol:
                        continue
                    c = float(sol.x[0])
                    coef, *_ = np.linalg.lstsq(np.stack([u(f, c), ones], axis=1), y, rcond=None)
                    hyp = Hypothesis([(float(coef[0]), refs[i])], float(coef[1]), wrap=(name, c))
                    if coef[0] != 0 and self._verify(hyp):
                        self.accepted.append(hyp)
                        return True
        return False

    def verify(self, hyp: Hypothesis) -> bool:
        """The acceptance test: exact on training and held-out rows (all of them, when the
        search runs on a sample), defined on the probes. Records no counterexample: the
        builder tries constants here that are meant to fail."""
        return self._verify(hyp, record=False)

    def _verify(self, hyp: Hypothesis, record: bool = True) -> bool:
        if not agrees(self.predict(hyp), self.rows, self.tol, self.cfg.rtol, self.scale):
            return False
        return self.full is None or self._verify_full(self.predict_full(hyp), record)

    def _verify_constant(self, hyp: Hypothesis) -> bool:
        r = self.rows
        if np.abs(r.y_hold - hyp.intercept).max(initial=0.0) > self.tol:
            return False
        if r.oracle_y is not None and not np.all(r.oracle_y == hyp.intercept):
            return False
        if self.full is None:
            return True
        return self._verify_full(np.full(len(self._full_y), hyp.intercept), record=True)

    def predict_full(self, hyp: Hypothesis) -> np.ndarray:
        """`predict` on the full training and held-out rows (a search on a sample), with the
        constants as fitted on the sample: each term rebuilt there by `Bank.replay`."""
        assert self.full is not None
        X = self._full_X
        if len(self._full_cache) * 8 * len(X) > min(FULL_CACHE_BYTES, self.cfg.memory_bytes // 16):
            self._full_cache.clear()
        out = np.full(len(X), hyp.intercept, dtype=np.float64)
        for coef, ref in hyp.terms:
            with np.errstate(all="ignore"):
                f = self.bank.replay(ref, self.ops, X, self._full_cache)
                if hyp.wrap is not None:
                    f = NONLINEAR[hyp.wrap[0]](f, hyp.wrap[1])
                out = out + coef * f
        return out

    def _verify_full(self, pred: np.ndarray, record: bool) -> bool:
        """Exact (within the same tolerance) and defined on every full row; else, when
        `record`, keep the worst rows as counterexamples for a new search."""
        with np.errstate(all="ignore"):
            err = np.abs(pred - self._full_y)
        bad = np.flatnonzero(~(err <= self.tol))  # NaN and inf fail too
        if len(bad) == 0:
            return True
        if record:
            worst = bad[np.argsort(-np.nan_to_num(err[bad], nan=np.inf), kind="stable")]
            known = set(self.counterexamples)
            self.counterexamples += [int(i) for i in worst[:COUNTEREXAMPLES] if int(i) not in known]
        return False

    def _check_budget(self) -> None:
        if self._refine_limit is not None and self.stats.candidates > self._refine_limit:
            raise _Budget("refinement budget spent")
        if time.perf_counter() - self.t0 > self.cfg.max_seconds:
            raise _Budget(
                f"time budget of {self.cfg.max_seconds:g} s ran out at cost {self.stats.level}"
            )
        if self.stats.bank > self.bank_limit:
            raise _Budget(self.bank_message(self.stats.level))
        if self.counterexamples and self.cfg.restart_on_counterexample and not self.accepted:
            raise _Budget(
                f"counterexample: a fit to the {self.rows.n_train + self.rows.n_hold} rows "
                f"searched failed on the full rows at cost {self.stats.level}"
            )

    def _done(self, accepted: list[Hypothesis]) -> SearchOutcome:
        self.stats.seconds = time.perf_counter() - self.t0
        return SearchOutcome(accepted, self.stats, self.approx)


def tolerance(rows: Rows, rtol: float) -> tuple[float, float]:
    """(scale, tol) of the acceptance test on `rows`: exact means |error| <= tol = rtol * scale,
    scale = max|y| over the training and held-out rows."""
    scale = float(max(np.abs(rows.y_train).max(), np.abs(rows.y_hold).max(initial=0.0), 1e-300))
    return scale, rtol * scale


def agrees(pred: np.ndarray, rows: Rows, tol: float, rtol: float, scale: float) -> bool:
    """The acceptance test of a prediction on `rows` [training | held-out | probes]: within
    `tol` on every training and held-out row (NaN fails), finite on every probe, and within
    rtol * max(max|oracle|, scale) of the oracle on the probes when there is one. Every fit
    passes it: the search's (`Searcher.verify`) and the power law's (`powerlaw.py`)."""
    with np.errstate(all="ignore"):
        if not (np.abs(pred[rows.train] - rows.y_train) <= tol).all():
            return False
        if not (np.abs(pred[rows.hold] - rows.y_hold) <= tol).all():
            return False
        if not np.isfinite(pred[rows.probes]).all():
            return False
        if rows.oracle_y is not None:
            oracle_tol = rtol * max(np.abs(rows.oracle_y).max(initial=0.0), scale)
            if not (np.abs(pred[rows.probes] - rows.oracle_y) <= oracle_tol).all():
                return False
    return True


def _bare(hyp: Hypothesis) -> bool:
    """A hypothesis that is one candidate as it is, without constants."""
    return hyp.wrap is None and hyp.intercept == 0.0 and [c for c, _ in hyp.terms] == [1.0]


def _stack(blocks: list[np.ndarray]) -> np.ndarray:
    """Concatenate blocks in place of the list (so later calls start from one block)."""
    if len(blocks) > 1:
        blocks[:] = [np.concatenate(blocks)]
    return blocks[0]


class _Budget(Exception):
    pass


NONLINEAR: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "EXP": lambda f, c: np.exp(c * f),
    "SIN": lambda f, c: np.sin(c * f),
    "COS": lambda f, c: np.cos(c * f),
    "POW": lambda f, c: np.power(f, c),
}
# angular frequencies: a grid, and the multiples of pi that physical laws use (sin(2*pi*t*E/h)
# spans tens of radians on the benchmark's ranges, where no grid point is close enough for the
# least-squares refinement to reach it)
_ANGULAR = tuple(np.round(np.geomspace(0.05, 20, 24), 4)) + tuple(
    k * math.pi for k in (0.5, 1.0, 2.0, 4.0)
)
_NONLINEAR_STARTS: dict[str, tuple[float, ...]] = {
    "EXP": (-1.0, -0.1, 0.1, 1.0),
    "SIN": _ANGULAR,
    "COS": _ANGULAR,
    "POW": (-2.0, -0.5, 0.5, 1.5, 3.0),
}


def _compositions(total: int, parts: int) -> list[tuple[int, ...]]:
    """Ordered ways to write total as `parts` positive integers, smallest first part first."""
    if parts == 1:
        return [(total,)]
    out = []
    for first in range(1, total - parts + 2):
        out += [(first, *rest) for rest in _compositions(total - first, parts - 1)]
    return out


def _product(lists: list[list[Any]]) -> list[list[Any]]:
    out: list[list[Any]] = [[]]
    for options in lists:
        out = [o + [x] for o in out for x in options]
    return out
