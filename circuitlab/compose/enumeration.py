"""Bottom-up enumeration behind `solve` (circuitlab.compose.solver): values, their classes
under observational equivalence, and the first fit.

Every value is an input (cost 0) or a library function applied to earlier values (cost: one per
call, a subterm used twice counted twice), held as an array over all demonstrations and test
inputs. A level (one cost) is enumerated by increasing preference penalty, then in the
proposer's order, one block per (function, argument groups): the block's every tuple of argument
values is evaluated in one vectorised call. A value equal on every demonstration to an earlier
one of its type is dropped; its class keeps the cheapest, most preferred member.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from circuitlab.compose.functions import LibraryFunction, Param
from circuitlab.compose.kinds import PrimitiveFunction
from circuitlab.compose.program import Call, Program
from circuitlab.compose.types import CompositionError, ValueType, bounds

BLOCK = 1 << 20  # array elements per argument in one vectorised evaluation
INT = ValueType("int")


@dataclass
class _Group:
    """Values of one type, cost and penalty: data (G, N, *item) over all N examples, ids."""

    type: ValueType
    cost: int
    penalty: int
    data: np.ndarray
    ids: np.ndarray


@dataclass
class Found:
    """The preferred first fit: its value's node, cost, penalty and type."""

    node: int
    cost: int
    penalty: int
    out_type: ValueType
    distinct: int  # distinct output-typed values tested up to and including this one
    data: np.ndarray  # its values on every demonstration and test input


def _same_domain(want: ValueType, got: ValueType) -> bool:
    """Can a value of type `got` be compared with outputs of type `want`?"""
    if want.kind != got.kind:
        return want.kind in ("int", "real") and got.kind in ("mod", "int", "bool")
    if want.is_grid:
        return got.shape is None or want.shape == got.shape
    return want.kind != "mod" or want.n == got.n


def _bounds_ok(t: ValueType, arr: np.ndarray) -> np.ndarray:
    """Per candidate row: all values inside the domain `t` (a safety net for non-primitives)."""
    flat = arr.reshape(len(arr), -1)
    ok = np.ones(len(arr), dtype=bool)
    lo, hi = bounds(t)
    if lo is not None:
        ok &= (flat >= lo).all(1) & (flat <= hi).all(1)
    return ok


def _apply(f: LibraryFunction, args: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """f on P candidates x N examples at once: outputs (P, N, ...) and per candidate whether it
    is defined everywhere. Primitives run directly (NaN = undefined, e.g. division by 0); other
    functions on the valid rows, bisecting a batch that fails down to the candidates at fault."""
    p, n = args[0].shape[:2]
    if isinstance(f, PrimitiveFunction):
        with np.errstate(all="ignore"):
            out = np.asarray(f.primitive.fn(*args, **f.fixed))
        if out.dtype.kind != "f":
            return out.astype(np.int64), np.ones(p, dtype=bool)
        good = np.isfinite(out)
        return np.where(good, np.rint(out), 0).astype(np.int64), good.reshape(p, -1).all(1)
    valid = np.ones(p, dtype=bool)
    for param, a in zip(f.params, args, strict=True):
        valid &= _bounds_ok(param.type, a)
    item = f.output.shape if f.output.is_grid and f.output.shape else ()
    out = np.zeros((p, n, *item), dtype=np.int64)
    stack = [np.flatnonzero(valid)]
    while stack:
        rows = stack.pop()
        if len(rows) == 0:
            continue
        try:
            res = f.evaluate_flat([a[rows].reshape(len(rows) * n, *a.shape[2:]) for a in args])
            out[rows] = np.asarray(res).astype(np.int64).reshape(len(rows), n, *item)
        except (CompositionError, ValueError, IndexError, RuntimeError):
            if len(rows) == 1:
                valid[rows] = False
            else:
                stack += [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    return out, valid


def _runs(f: LibraryFunction, groups: Sequence[_Group]) -> bool:
    """Untyped enumeration: would the call run at all? An elementwise primitive needs arguments
    of one shape (numbers, or grids cell by cell); anything else a grid for a grid parameter."""
    shapes = [g.type.shape if g.type.is_grid else () for g in groups]
    if isinstance(f, PrimitiveFunction) and not f.is_grid:
        return len(set(shapes)) == 1
    for param, shape in zip(f.params, shapes, strict=True):
        if param.type.is_grid != bool(shape):
            return False
        if param.type.is_grid and param.type.shape and param.type.shape != shape:
            return False
    return True


def _compositions(total: int, k: int):
    """Every k-tuple of non-negative costs summing to `total`."""
    if k == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in _compositions(total - first, k - 1):
            yield (first, *rest)


def untyped(t: ValueType) -> ValueType:
    """What untyped enumeration knows of a value: a number, or a grid of some shape."""
    return ValueType("grid", None, t.shape) if t.is_grid else ValueType("int")


# -- the search --------------------------------------------------------------------------------

_Pending = dict[tuple[ValueType, int], list[tuple[np.ndarray, np.ndarray]]]


def _penalty(f: LibraryFunction) -> int:
    """How much less a call of f is preferred: 0 a primitive, then by prior tags (Core_*, any
    other, none). Among programs of equal cost the smallest total penalty wins."""
    if f.kind == "primitive":
        return 0
    return 1 if any(p.startswith("Core_") for p in f.priors) else 2 if f.priors else 3


class Search:
    """Bottom-up enumeration for one typing of the task (see the module docstring). Each cost
    is enumerated by increasing penalty, then in the proposer's order, so the first value of
    each class of observationally equal values, and the first fit, is the preferred one."""

    def __init__(
        self,
        fns: list[tuple[LibraryFunction, int]],
        target: np.ndarray,
        out_type: ValueType,
        *,
        typed: bool,
        exhaustive: bool,
        budget: int,
    ) -> None:
        self.fns, self.typed, self.exhaustive, self.budget = fns, typed, exhaustive, budget
        self.pens = [_penalty(f) for f, _ in fns]
        self.n_train = len(target)
        self.target = target.reshape(-1)
        self.target_item = target.shape[1:]
        self.out_type = out_type
        self.nodes: list[tuple[Any, ...]] = []  # ("leaf", name | int) or (fn index, *arg ids)
        self.groups: list[_Group] = []
        self.seen: dict[ValueType, dict[bytes, tuple[int, int, bytes, int]]] = {}
        self.types: dict[tuple[int, tuple[ValueType, ...]], ValueType | None] = {}
        self.tested = self.circuit_calls = self.distinct_out = 0
        self.per_depth: list[int] = []
        self.found: Found | None = None
        self.fit_tests: set[bytes] = set()  # test predictions of the fits as preferred as it
        self.split: set[int] = set()  # values with an equally preferred twin unlike on tests
        self.stopped = False  # the budget is spent
        self.cost = self.pen = 0

    @property
    def ambiguous(self) -> bool:
        """Do fits as short and preferred as the one found disagree on the test inputs?"""
        return self.found is not None and (len(self.fit_tests) > 1 or self.found.node in self.split)

    def run(self, leaves: list[tuple[str | int, ValueType, np.ndarray]], max_depth: int) -> None:
        pending: _Pending = {}
        for label, t, data in leaves:  # cost 0: inputs (tried as the answer) and constants
            self.tested += not isinstance(label, int)
            self._keep(t, data[None], np.ones(1, bool), lambda j, x=label: ("leaf", x), pending)
        self._close(pending)
        self.per_depth.append(self.tested)
        for cost in range(1, max_depth + 1):
            if self.stopped or (self.found is not None and not self.exhaustive):
                break
            self.cost, before, pending = cost, self.tested, {}
            self._level(pending)
            self._close(pending)
            self.per_depth.append(self.tested - before)

    def _level(self, pending: _Pending) -> None:
        """Every value of cost exactly `self.cost`; after a fit, only as preferred ones."""
        blocks = []
        for fi, (f, fcost) in enumerate(self.fns):
            for parts in _compositions(self.cost - fcost, f.arity) if self.cost >= fcost else ():
                choices = [[g for g in self.groups if g.cost == c] for c in parts]
                for combo in itertools.product(*choices):
                    blocks.append((self.pens[fi] + sum(g.penalty for g in combo), fi, combo))
        blocks.sort(key=lambda b: b[0])  # stable: the proposer's order within a penalty
        for pen, fi, combo in blocks:
            if self.found is not None and not self.exhaustive and pen > self.found.penalty:
                return
            self.pen = pen
            self._block(fi, self.fns[fi][0], combo, pending)
            if self.stopped:
                return

    def _block(self, fi: int, f: LibraryFunction, combo: tuple[_Group, ...], pending: _Pending):
        """f on every tuple of values from `combo` (one group per argument), in chunks."""
        sizes = [len(g.ids) for g in combo]
        total = math.prod(sizes)
        out_t: ValueType | None = None
        if self.typed:
            key = (fi, tuple(g.type for g in combo))
            if key not in self.types:
                self.types[key] = f.result_type(key[1])
            if (out_t := self.types[key]) is None:
                return  # pruned by types: never evaluated
        if self.tested + total > self.budget:
            self.stopped = True
            return
        self.tested += total
        if not self.typed and not _runs(f, combo):
            return  # tried, and it fails at run time
        if f.kind in ("circuit", "model"):
            self.circuit_calls += total
        chunk = max(1, BLOCK // max(int(np.prod(g.data.shape[1:])) for g in combo))
        for start in range(0, total, chunk):
            index = np.unravel_index(np.arange(start, min(total, start + chunk)), sizes)
            out, valid = _apply(f, [g.data[i] for g, i in zip(combo, index, strict=True)])
            if not self.typed:
                out_t = ValueType("grid", None, out.shape[2:]) if out.ndim == 4 else INT
            ids = [g.ids[i] for g, i in zip(combo, index, strict=True)]
            self._keep(
                out_t, out, valid, lambda j, ids=ids: (fi, *(int(a[j]) for a in ids)), pending
            )

    def _keep(self, t: ValueType, out: np.ndarray, valid: np.ndarray, node, pending) -> None:
        """Keep the rows of `out` new on the demonstrations and note the fits. A pruned twin as
        short and preferred that differs on the test inputs marks its class (and what is built
        on it) split: an equally good program would predict something else."""
        n, rows = len(out), np.ascontiguousarray(out[:, : self.n_train]).reshape(len(out), -1)
        tests = np.ascontiguousarray(out[:, self.n_train :]).reshape(n, -1)
        buf, width = rows.tobytes(), rows.shape[1] * 8
        tbuf, twidth = tests.tobytes(), tests.shape[1] * 8
        seen = self.seen.setdefault(t, {})
        keep: dict[int, int] = {}  # row -> node id
        for j in np.flatnonzero(valid).tolist():
            key, test = buf[j * width : (j + 1) * width], tbuf[j * twidth : (j + 1) * twidth]
            entry = seen.get(key)
            if entry is None:
                keep[j] = len(self.nodes)
                seen[key] = (self.cost, self.pen, test, keep[j])
                self.nodes.append(node(j))
                if self.nodes[-1][0] != "leaf" and any(a in self.split for a in self.nodes[-1][1:]):
                    self.split.add(keep[j])
            elif entry[:2] == (self.cost, self.pen) and entry[2] != test:
                self.split.add(entry[3])
        if keep:
            ids = np.fromiter(keep.values(), dtype=np.int64, count=len(keep))
            pending.setdefault((t, self.pen), []).append((out[list(keep)], ids))
        first = node(0)
        if (first[0] == "leaf" and isinstance(first[1], int)) or not (
            _same_domain(self.out_type, t) and out.shape[2:] == self.target_item
        ):
            return
        if self.found is None or (self.found.cost, self.found.penalty) == (self.cost, self.pen):
            candidates = np.flatnonzero(valid)
            for h in candidates[(rows[candidates] == self.target).all(1)].tolist():
                self.fit_tests.add(tbuf[h * twidth : (h + 1) * twidth])
                if self.found is None:
                    ahead = self.distinct_out + sum(1 for j in keep if j <= h)
                    node_id = seen[buf[h * width : (h + 1) * width]][3]
                    self.found = Found(node_id, self.cost, self.pen, t, ahead, out[h])
        self.distinct_out += len(keep)

    def _close(self, pending: _Pending) -> None:
        for (t, pen), parts in pending.items():
            data, ids = np.concatenate([d for d, _ in parts]), np.concatenate([i for _, i in parts])
            self.groups.append(_Group(t, self.cost, pen, data, ids))

    # -- reading the result ------------------------------------------------------------------

    def expression(self, node: int) -> str:
        """The value `node` as one nested call, e.g. ADDMOD_31(c, MULMOD_31(a, b))."""
        entry = self.nodes[node]
        if entry[0] == "leaf":
            return str(entry[1])
        f = self.fns[entry[0]][0]
        return f"{f.name}({', '.join(self.expression(a) for a in entry[1:])})"

    def program(self, node: int, inputs: list[Param], name: str) -> Program:
        """The value `node` as a Program (a subterm used twice is computed once)."""
        calls: list[Call] = []
        ids: dict[int, str] = {}
        functions: dict[str, LibraryFunction] = {}

        def visit(n: int) -> str | int:
            entry = self.nodes[n]
            if entry[0] == "leaf":
                return entry[1]
            if n not in ids:
                f = self.fns[entry[0]][0]
                args = tuple(visit(a) for a in entry[1:])
                ids[n] = f"v{len(calls) + 1}"
                calls.append(Call(ids[n], f.ref, args))
                functions[f.ref] = f
            return ids[n]

        return Program.build(name, inputs, calls, str(visit(node)), functions)
