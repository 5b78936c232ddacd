"""Composition: circuits, models and symbolic functions as typed callables; programs; traces.

    from circuitlab.compose import Library, Program
    with Library("runs/catalog.db") as lib:
        add, mul = lib["add_mod_31"], lib["mul_mod_31"]
        f = Program.trace(lambda a, b, c: add(mul(a, b), c))
        f(3, 4, 5)                                  # -> 17
        value, trace = f.run(3, 4, 5, trace=True)   # each call, and the circuit features fired
        print(f.to_python())

A stage to the right of extraction and the catalog: it loads circuits and functions from them.
"""

from circuitlab.compose.functions import LibraryFunction, Param
from circuitlab.compose.kinds import (
    CircuitFunction,
    ModelFunction,
    PrimitiveFunction,
    SymbolicFunction,
)
from circuitlab.compose.library import Agreement, Library
from circuitlab.compose.program import Call, Program
from circuitlab.compose.trace import FeatureFiring, Step, Trace
from circuitlab.compose.types import CompositionError, DomainError, ValueType

__all__ = [
    "Agreement",
    "Call",
    "CircuitFunction",
    "CompositionError",
    "DomainError",
    "FeatureFiring",
    "Library",
    "LibraryFunction",
    "ModelFunction",
    "Param",
    "PrimitiveFunction",
    "Program",
    "Step",
    "SymbolicFunction",
    "Trace",
    "ValueType",
]
