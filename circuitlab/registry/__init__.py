"""Symbolic registry: typed functions over primitives, persisted, and discovered from examples.

from circuitlab.registry import Registry, discover
reg = Registry.open("functions/")     # a directory of JSON records, or sqlite:///catalog.db
ke = discover((X, y), names=["m", "v"], name="KE", registry=reg, register=True)
reg.call("KE", 2.0, 3.0)              # -> 9.0
"""

from circuitlab.registry.dimensions import Units, UnitsError
from circuitlab.registry.discover import (
    DiscoveryConfig,
    DiscoveryError,
    DiscoveryResult,
    discover,
    search,
)
from circuitlab.registry.domains import Domain, Input, Kind, RegistryError
from circuitlab.registry.examples import Examples
from circuitlab.registry.expr import Call, Const, Expr, MathConst, Var, call
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.grid_search import discover_grid
from circuitlab.registry.primitives import Primitive, get_primitive, primitives
from circuitlab.registry.proposer import Proposal, Proposer, UniformProposer
from circuitlab.registry.registry import Registry
from circuitlab.registry.store import FunctionStore, JsonFileStore, MemoryStore

__all__ = [
    "Call",
    "Const",
    "DiscoveryConfig",
    "DiscoveryError",
    "DiscoveryResult",
    "Domain",
    "Examples",
    "Expr",
    "Function",
    "FunctionStore",
    "Input",
    "JsonFileStore",
    "Kind",
    "MathConst",
    "MemoryStore",
    "Primitive",
    "Proposal",
    "Proposer",
    "Provenance",
    "Registry",
    "RegistryError",
    "UniformProposer",
    "Units",
    "UnitsError",
    "Var",
    "call",
    "discover",
    "discover_grid",
    "get_primitive",
    "primitives",
    "search",
]
