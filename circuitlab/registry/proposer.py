"""Proposers: the pluggable search order of discovery.

Discovery enumerates expressions by cost, cheapest first; a proposer decides what each operation
costs and, among equal costs, which is tried first (the search still tries every primitive
before any registered function of the same cost, so ties go to the plain formula). It sees the
examples (inputs *and* outputs) and the available operations (primitives and registered
functions) and returns a `Proposal`.
`UniformProposer` gives every operation cost 1 in a fixed order: the ablation baseline that any
learned guide (`circuitlab.registry.guide`) is measured against, in candidates evaluated until
the solution is found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from circuitlab.registry.domains import Kind


@dataclass(frozen=True)
class OpInfo:
    """What a proposer knows about an operation."""

    name: str  # "ADD", "ADDMOD[p=113]", or "KE@1" for a registered function
    group: str  # primitive group, or "registered"
    arity: int


@dataclass(frozen=True)
class TaskView:
    """The training examples as a proposer sees them.

    X: (n, k) inputs; y: (n,) outputs; kinds: the kind of each input column.
    """

    X: np.ndarray
    y: np.ndarray
    kinds: tuple[Kind, ...]


@dataclass(frozen=True)
class Proposal:
    """costs: op name -> integer cost >= 1 (ops left out are not searched); order: tie-break."""

    costs: dict[str, int]
    order: tuple[str, ...]


@runtime_checkable
class Proposer(Protocol):
    name: str

    def propose(self, task: TaskView, ops: Sequence[OpInfo]) -> Proposal:
        """Costs and order of `ops` for this task."""


class UniformProposer:
    """Every operation costs 1; primitives in table order, then registered functions (the
    order the search keeps anyway: at equal cost, a plain formula wins)."""

    name = "uniform"

    def propose(self, task: TaskView, ops: Sequence[OpInfo]) -> Proposal:
        ordered = [o.name for o in ops if o.group != "registered"]
        ordered += [o.name for o in ops if o.group == "registered"]
        return Proposal({o.name: 1 for o in ops}, tuple(ordered))
