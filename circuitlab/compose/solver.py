"""Few-shot program search: the shortest program over library functions that explains every
demonstration, and its predictions on the test inputs.

    from circuitlab.compose.arc import primitive_library
    sol = solve([((3, 5), 15), ((2, 7), 14), ((4, 4), 16)], [(6, 6)], primitive_library([31]))
    sol.message, sol.predictions     # 'MULMOD_31(a, b): 1 call(s), ...', [array(5)]
    print(sol.program.to_python())   # a Program: runnable, traceable, storable

Typed, depth-limited, bottom-up enumeration (`circuitlab.compose.enumeration`): a program's
depth is its number of calls, and each candidate is computed on every demonstration and test
input at once. Pruned by types (`result_type`) and by observational equivalence (values equal
on every demonstration are one). Fewer calls win, then calls of core primitives over circuits
and models (prior tags), then the proposer's order. The default proposer is exact enumeration,
offline; any object with the registry proposer's interface can reorder or filter the library.

Never a guess. With no program exact on every pair the answer is "no program found". A fit is
"ambiguous", with no predictions, when an equally short and preferred program also explains
every pair but predicts otherwise on a test input, or when chance would explain it: the
distinct hypotheses tried against the possible output vectors (9 one-call programs tried on a
single demonstration mod 31: about 9/31 chance fits expected; MAX_CHANCE allows 0.01).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from circuitlab.compose.enumeration import INT, Search, untyped
from circuitlab.compose.functions import LibraryFunction, Param
from circuitlab.compose.program import Program, identifier
from circuitlab.compose.trace import Trace
from circuitlab.compose.types import CompositionError, ValueType
from circuitlab.registry.proposer import Proposal

MAX_CHANCE = 0.01  # largest expected number of chance fits a solution may have
MAX_CANDIDATES = 5_000_000  # search budget per task (all typings)
_KIND_RANK = {"primitive": 0, "function": 1, "circuit": 2, "model": 3}


# -- the proposer interface (as in circuitlab.registry.proposer) -------------------------------


@dataclass(frozen=True)
class FunctionInfo:
    """What a proposer knows about a library function. `name` is its ref (what a Proposal's
    costs are keyed by); `group` its kind, as the registry's OpInfo."""

    name: str
    group: str
    arity: int
    label: str
    priors: tuple[str, ...] = ()
    generality: float | None = None


@dataclass(frozen=True)
class ExamplesView:
    """The demonstrations as a proposer sees them: per input position an array over the pairs
    (N,) or (N, H, W), and the outputs."""

    inputs: tuple[np.ndarray, ...]
    outputs: np.ndarray


@runtime_checkable
class Proposer(Protocol):
    name: str

    def propose(self, task: ExamplesView, ops: Sequence[FunctionInfo]) -> Proposal:
        """Cost (>= 1; left out = not searched) and tie-break order of `ops` for this task."""


class ExactProposer:
    """Exact enumeration: every function costs one call; core primitives first, then by prior
    tags (Core_* before others before none), kind and generality."""

    name = "exact"

    def propose(self, task: ExamplesView, ops: Sequence[FunctionInfo]) -> Proposal:
        def rank(o: FunctionInfo) -> tuple:
            prior = 0 if any(p.startswith("Core_") for p in o.priors) else 1 if o.priors else 2
            return (prior, _KIND_RANK.get(o.group, 4), -(o.generality or 0.0))

        ordered = sorted(ops, key=rank)  # stable: library order breaks ties
        return Proposal({o.name: 1 for o in ops}, tuple(o.name for o in ordered))


# -- results -----------------------------------------------------------------------------------


@dataclass
class Solution:
    """predictions: one per test input, or None unless status is "solved". hypotheses_tested:
    candidate programs evaluated (after type pruning); depth: the program's cost (calls);
    circuit_calls: candidates that ran a circuit or model (each on all inputs at once)."""

    predictions: list[np.ndarray] | None
    program: Program | None
    trace: Trace | None
    hypotheses_tested: int
    depth: int | None
    seconds: float
    circuit_calls: int
    status: str  # solved | no program found | ambiguous
    message: str
    per_depth: list[int] = field(default_factory=list)  # hypotheses tested at each cost
    chance: float | None = None  # expected chance fits among the hypotheses tried

    @property
    def solved(self) -> bool:
        return self.status == "solved"


# -- typing the task ---------------------------------------------------------------------------


def _stack(values: Sequence[Any], what: str) -> np.ndarray:
    arrays = [np.asarray(v) for v in values]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise CompositionError(f"{what} has values of several shapes {sorted(shapes)}")
    if arrays and arrays[0].dtype.kind not in "iub":
        raise CompositionError(f"{what}: expected integers or grids of integers")
    return np.stack(arrays).astype(np.int64)


def _typings(
    columns: list[np.ndarray], out: np.ndarray, functions: Sequence[LibraryFunction], domain: Any
) -> list[tuple[tuple[ValueType, ...], ValueType]]:
    """Candidate types of the inputs and the output: the domain hint, else grids by shape and
    colours, and integers as each Z_p of the library that holds every value (smallest first)."""
    if domain is not None:
        t = ValueType.of(domain)
        for i, col in enumerate([*columns, out]):
            where = f"input {i}" if i < len(columns) else "output"
            if t.is_grid != (col.ndim == 3):
                what = "grids" if col.ndim == 3 else "numbers"
                raise CompositionError(f"domain {t}: {where} holds {what}")
            t.check(col, f"domain {t}: {where}")
        return [(tuple(t for _ in columns), t)]
    ints = [c for c in [*columns, out] if c.ndim == 1]
    grids = [c for c in [*columns, out] if c.ndim == 3]
    colours = int(max(g.max() for g in grids)) + 1 if grids else None

    def grid_type(c: np.ndarray) -> ValueType:
        return ValueType("grid", colours, (c.shape[1], c.shape[2]))

    lo = min((int(c.min()) for c in ints), default=0)
    hi = max((int(c.max()) for c in ints), default=0)
    scalars: list[ValueType] = []
    if ints:
        mods = {p.type for f in functions for p in f.params if p.type.kind == "mod"}
        scalars = sorted((t for t in mods if lo >= 0 and hi < t.n), key=lambda t: t.n)
        if any(p.type.accepts(ValueType("int")) for f in functions for p in f.params):
            scalars.append(ValueType("int"))
    else:
        scalars = [ValueType("int")]  # unused
    return [
        (
            tuple(grid_type(c) if c.ndim == 3 else s for c in columns),
            grid_type(out) if out.ndim == 3 else s,
        )
        for s in scalars
    ]


# -- the entry point ---------------------------------------------------------------------------


def solve(
    train_pairs: Sequence[tuple[Any, Any]],
    test_inputs: Sequence[Any],
    library_functions: Sequence[LibraryFunction],
    *,
    max_depth: int = 3,
    proposer: Proposer | None = None,
    domain: str | ValueType | None = None,
    constants: Sequence[int] = (),
    typed: bool = True,
    exhaustive: bool = False,
    max_chance: float | None = MAX_CHANCE,
    max_candidates: int = MAX_CANDIDATES,
    name: str = "program",
) -> Solution:
    """The cheapest program over `library_functions` exact on every pair, and its predictions.

    train_pairs: (inputs, output) with inputs a tuple (one entry per argument; anything else is
    one argument), each an int or a grid (2-D). domain: the type of every input and the output
    (e.g. "Z_31"); by default grids are typed by shape and colours and integers try each Z_p of
    the library that holds them. typed=False enumerates without static types (every function on
    every tuple of values, run-time failures rejected): the baseline typed pruning is measured
    against. exhaustive: search every cost up to max_depth even after a fit (to count the space).
    """
    started = time.perf_counter()
    columns, target, n_tests = _columns(train_pairs, test_inputs)
    n_in, n_train = len(columns), len(target)
    fns = _ordered(library_functions, proposer, columns, target)
    names = ["x"] if n_in == 1 else [chr(97 + i) if n_in <= 26 else f"x{i}" for i in range(n_in)]
    sol = Solution(None, None, None, 0, None, 0.0, 0, "no program found", "")
    chance = 0.0  # expected chance fits so far, over every typing tried
    typings = _typings(columns, target, [f for f, _ in fns], domain)
    for in_types, out_type in typings:
        scalar = next((t for t in in_types if not t.is_grid), INT)
        leaves = [
            (n, t if typed else untyped(t), c)
            for n, t, c in zip(names, in_types, columns, strict=True)
        ]
        leaves += [(int(c), scalar, np.full(len(columns[0]), int(c))) for c in constants]
        search = Search(
            fns,
            target,
            out_type if typed else untyped(out_type),
            typed=typed,
            exhaustive=exhaustive,
            budget=max_candidates - sol.hypotheses_tested,
        )
        search.run(leaves, max_depth)
        sol.hypotheses_tested += search.tested
        sol.circuit_calls += search.circuit_calls
        sol.per_depth = [
            a + b for a, b in itertools.zip_longest(sol.per_depth, search.per_depth, fillvalue=0)
        ]
        found = search.found
        chance += _chance(found.distinct if found else search.distinct_out, out_type, n_train)
        sol.chance = chance
        if found is None:
            if search.stopped:
                sol.message = f"the search budget of {max_candidates:,} hypotheses ran out"
                break
            continue
        expr = search.expression(found.node)
        if search.ambiguous and not exhaustive:
            sol.status = "ambiguous"
            sol.message = (
                f"{expr} explains the {n_train} demonstration(s), but so do other programs of "
                f"{found.cost} call(s) that predict otherwise on the test inputs; give more "
                "demonstrations"
            )
            break
        if max_chance is not None and chance > max_chance:
            sol.status = "ambiguous"
            sol.message = (
                f"{expr} explains the {n_train} demonstration(s), but among the "
                f"{found.distinct:,} distinct {out_type} hypotheses tried about {chance:.2g} "
                "would fit them by chance; give more demonstrations"
            )
            break
        sol.status, sol.depth = "solved", found.cost
        sol.predictions = [np.asarray(r) for r in found.data[n_train:]]
        sol.message = f"{expr}: {found.cost} call(s), {sol.hypotheses_tested:,} hypotheses tested"
        if typed:
            params = [Param(n, t) for n, t in zip(names, in_types, strict=True)]
            sol.program = search.program(
                found.node, params, identifier(name or "program", prefix="task_")
            )
            run_on = [c[n_train:] if n_tests else c[:n_train] for c in columns]
            out, sol.trace = sol.program.run(*run_on, trace=True)
            if n_tests and not np.array_equal(out, found.data[n_train:]):
                raise AssertionError(f"{expr}: the program disagrees with the search")
        break
    if not typings:
        ints = np.concatenate([c for c in [*columns, target] if c.ndim == 1])
        sol.message = (
            f"no library function takes integers from {ints.min()} to {ints.max()} (no Z_p "
            "of the library holds them all)"
        )
    elif sol.status == "no program found" and not sol.message:
        sol.message = (
            f"nothing up to depth {max_depth} explains all {n_train} demonstration(s) "
            f"({sol.hypotheses_tested:,} hypotheses tested)"
        )
    if sol.status != "solved":
        sol.message = f"{sol.status}: {sol.message}"
    sol.seconds = time.perf_counter() - started
    return sol


def _columns(
    train_pairs: Sequence[tuple[Any, Any]], test_inputs: Sequence[Any]
) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Per input position one array over the pairs then the test inputs; the outputs."""
    if not train_pairs:
        raise CompositionError("solve needs at least one demonstration")
    pairs = [(i if isinstance(i, tuple) else (i,), o) for i, o in train_pairs]
    tests = [t if isinstance(t, tuple) else (t,) for t in test_inputs]
    n_in = len(pairs[0][0])
    every = [(f"pair {k}", p[0]) for k, p in enumerate(pairs)]
    every += [(f"test input {k}", t) for k, t in enumerate(tests)]
    for where, args in every:
        if len(args) != n_in:
            raise CompositionError(f"{where} has {len(args)} inputs, the first pair {n_in}")
    columns = [_stack([args[i] for _, args in every], f"input {i}") for i in range(n_in)]
    target = _stack([o for _, o in pairs], "output")
    for i, col in enumerate([*columns, target]):
        if col.ndim not in (1, 3):
            where = "output" if i == n_in else f"input {i}"
            raise CompositionError(f"{where}: expected integers or 2-D grids")
    return columns, target, len(tests)


def _ordered(
    functions: Sequence[LibraryFunction],
    proposer: Proposer | None,
    columns: list[np.ndarray],
    target: np.ndarray,
) -> list[tuple[LibraryFunction, int]]:
    """The library (one entry per ref) in the proposer's order, each with its cost."""
    by_ref: dict[str, LibraryFunction] = {}
    for f in functions:  # values are integers and grids: real-valued functions cannot fit
        if f.arity >= 1 and f.output.kind != "real":
            by_ref.setdefault(f.ref, f)
    infos = [
        FunctionInfo(ref, f.kind, f.arity, f.name, tuple(f.priors), _generality(f))
        for ref, f in by_ref.items()
    ]
    view = ExamplesView(tuple(c[: len(target)] for c in columns), target)
    proposer = proposer or ExactProposer()
    proposal = proposer.propose(view, infos)
    order = [r for r in proposal.order if r in proposal.costs and r in by_ref]
    order += [r for r in proposal.costs if r in by_ref and r not in order]
    out = []
    for ref in order:
        cost = proposal.costs[ref]
        if not isinstance(cost, int) or cost < 1:
            raise CompositionError(f"proposer {proposer.name}: cost of {ref} must be an int >= 1")
        out.append((by_ref[ref], cost))
    return out


def _generality(f: LibraryFunction) -> float | None:
    record = getattr(getattr(f, "circuit", None), "record", None)
    return getattr(getattr(record, "tags", None), "generality", None)


def _chance(distinct: int, out_type: ValueType, n_train: int) -> float:
    """Expected number of chance fits among `distinct` hypotheses when each output vector on
    the demonstrations is one of size(out_type) ** n_train."""
    size = out_type.size
    if distinct == 0:
        return 0.0
    if size is None or size <= 1:
        return 0.0 if size is None else float(distinct)
    return math.exp(math.log(distinct) - n_train * math.log(size))
