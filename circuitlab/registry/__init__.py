"""Symbolic registry: typed functions over primitives, persisted, and discovered from examples.

    from circuitlab.registry import Registry, discover
    reg = Registry.open("functions/")            # a directory of JSON records, or a catalog URL
    ke = discover(([[2, 3], [4, 1], ...], [9.0, 2.0, ...]), names=["m", "v"], name="KE")
    reg.register(ke)
"""

from circuitlab.registry.domains import Domain, Input, Kind, RegistryError
from circuitlab.registry.expr import Call, Const, Expr, Var, call
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.primitives import Primitive, get_primitive, primitives
from circuitlab.registry.registry import Registry
from circuitlab.registry.store import FunctionStore, JsonFileStore, MemoryStore

__all__ = [
    "Call", "Const", "Domain", "Expr", "Function", "FunctionStore", "Input", "JsonFileStore",
    "Kind", "MemoryStore", "Primitive", "Provenance", "Registry", "RegistryError", "Var", "call",
    "get_primitive", "primitives",
]
