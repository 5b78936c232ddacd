"""Function: one registry entry, a named, typed, versioned expression with its provenance.

A function's layer is one more than the highest layer among the functions it calls (primitives
have layer 0), so the registry grows in layers: what was learned becomes vocabulary for the next
search. A function stores everything needed to evaluate it again in a fresh process with
bitwise-identical results: the expression, constants as exact floats (JSON round-trips float64
exactly), and pinned versions of every function it calls.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry.domains import Domain, Input, Kind, RegistryError, check_name

STATUSES = ("exact", "approximate")
SCHEMA = 1


@dataclass(frozen=True)
class Provenance:
    """Where a function came from: enough to rerun the search that found it."""

    source: str = "manual"  # manual | discovered
    data_hash: str | None = None  # sha256 of the examples it was fitted to
    seed: int | None = None
    search: Mapping[str, Any] = field(default_factory=dict)  # settings and search statistics
    created: str | None = None  # ISO-8601 UTC
    package_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "data_hash": self.data_hash,
            "seed": self.seed,
            "search": dict(self.search),
            "created": self.created,
            "package_version": self.package_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provenance:
        return cls(
            data.get("source", "manual"),
            data.get("data_hash"),
            data.get("seed"),
            dict(data.get("search") or {}),
            data.get("created"),
            data.get("package_version"),
        )


@dataclass(frozen=True)
class Function:
    """A registry function. Build with `Function.new(...)`; the registry assigns its layer."""

    name: str
    inputs: tuple[Input, ...]
    expr: ex.Expr
    output: Domain
    constants: tuple[tuple[str, float], ...] = ()
    version: int = 1
    status: str = "exact"
    layer: int = 1
    provenance: Provenance = field(default_factory=Provenance)
    description: str = ""

    @classmethod
    def new(
        cls,
        name: str,
        inputs: Sequence[Input | str],
        expr: ex.Expr,
        *,
        output: Domain | None = None,
        constants: Mapping[str, float] | None = None,
        status: str = "exact",
        provenance: Provenance | None = None,
        description: str = "",
    ) -> Function:
        """Validate and build; plain strings as inputs mean real-valued inputs of that name."""
        check_name(name)
        ins = tuple(
            i if isinstance(i, Input) else Input(check_name(i, "input name"), Domain(Kind.REAL))
            for i in inputs
        )
        if len({i.name for i in ins}) != len(ins):
            names = [i.name for i in ins]
            raise RegistryError(f"{name}: input names must be distinct, got {names}")
        consts = {str(k): float(v) for k, v in (constants or {}).items()}
        for k, v in consts.items():
            if not math.isfinite(v):
                raise RegistryError(f"{name}: constant {k} must be finite, got {v}")
        missing = ex.constants_used(expr) - set(consts)
        if missing:
            raise RegistryError(f"{name}: expression uses undefined constants {sorted(missing)}")
        bad = [i for i in ex.variables(expr) if i >= len(ins)]
        if bad:
            raise RegistryError(f"{name}: expression reads inputs {bad} but has {len(ins)} inputs")
        if status not in STATUSES:
            raise RegistryError(f"{name}: status must be one of {STATUSES}, got {status!r}")
        return cls(
            name,
            ins,
            expr,
            output or Domain(Kind.REAL),
            tuple(sorted(consts.items())),
            status=status,
            provenance=provenance or Provenance(),
            description=description,
        )

    # -- views ---------------------------------------------------------------------------------

    @property
    def arity(self) -> int:
        return len(self.inputs)

    @property
    def constant_dict(self) -> dict[str, float]:
        return dict(self.constants)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def complexity(self) -> int:
        return ex.size(self.expr)

    def uses(self) -> list[tuple[str, int | None]]:
        """Registered functions this one calls, in slot order (pre-order of the expression)."""
        return ex.function_calls(self.expr)

    def render(self) -> str:
        return ex.render(self.expr, [i.name for i in self.inputs], self.constant_dict)

    def signature(self) -> str:
        args = ", ".join(f"{i.name}: {i.domain}" for i in self.inputs)
        return f"{self.name}({args}) -> {self.output}"

    def sympy(self, resolve: ex.Resolver | None = None) -> Any:
        return ex.to_sympy(self.expr, [i.name for i in self.inputs], self.constant_dict, resolve)

    def __str__(self) -> str:
        """`KE(m, v) = 0.5*m*v^2`: the closed form when sympy gives one, else the expression."""
        head = f"{self.name}({', '.join(i.name for i in self.inputs)})"
        try:
            body = str(self.sympy()).replace("**", "^")
        except Exception:  # a call of another registered function has no closed form here
            body = self.render()
        return f"{head} = {body}"

    # -- evaluation ----------------------------------------------------------------------------

    def __call__(self, *args: Any) -> np.ndarray:
        """`f(7, 3)`: evaluate on scalars or arrays (a function calling other registered
        functions is called through its Registry, which resolves them)."""
        if self.uses():
            raise RegistryError(
                f"{self.name} calls registered functions {[n for n, _ in self.uses()]}; "
                f"call it as registry.call({self.name!r}, ...)"
            )
        return self.evaluate(*args)

    def on_columns(
        self, table: Any, columns: Sequence[str] | None = None, resolve: ex.Resolver | None = None
    ) -> np.ndarray:
        """Evaluate on rows laid out as the examples it was discovered from: `table` is a 2-D
        array (rows x columns) or a mapping of column name to values; `columns` names the
        array's columns (default: the columns recorded at discovery, junk ones included)."""
        if isinstance(table, Mapping):
            source = {str(k): np.asarray(v) for k, v in table.items()}
        else:
            array = np.asarray(table)
            names = list(columns or self.provenance.search.get("columns") or [])
            if array.ndim != 2 or array.shape[1] != len(names):
                raise RegistryError(
                    f"{self.name}: expected a 2-D table with columns {names}, got shape "
                    f"{array.shape}"
                )
            source = {n: array[:, i] for i, n in enumerate(names)}
        missing = [i.name for i in self.inputs if i.name not in source]
        if missing:
            raise RegistryError(f"{self.name}: the table has no column(s) {missing}")
        return self.evaluate(*(source[i.name] for i in self.inputs), resolve=resolve)

    def evaluate(self, *args: Any, resolve: ex.Resolver | None = None) -> np.ndarray:
        """Outputs for inputs given positionally (scalars or arrays over rows, broadcast).

        Numeric inputs are converted to float64, grids to int64 arrays of shape (..., H, W).
        Calls of other functions need `resolve` (a Registry provides it).
        """
        if len(args) != self.arity:
            raise RegistryError(
                f"{self.name} takes {self.arity} inputs "
                f"({', '.join(i.name for i in self.inputs)}), got {len(args)}"
            )
        arrays = []
        for inp, a in zip(self.inputs, args, strict=True):
            arr = np.asarray(a)
            if inp.domain.kind is Kind.GRID:
                if arr.ndim < 2 or arr.dtype.kind not in "iub":
                    raise RegistryError(f"{self.name}: input {inp.name} must be an integer grid")
                arrays.append(arr.astype(np.int64))
            else:
                if arr.dtype.kind not in "iufb":
                    raise RegistryError(f"{self.name}: input {inp.name} must be numeric")
                arrays.append(arr.astype(np.float64))
        out = ex.evaluate(self.expr, arrays, self.constant_dict, resolve)
        if self.output.kind is not Kind.GRID and arrays:
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
            out = np.broadcast_to(np.asarray(out, dtype=np.float64), shape)
        return np.asarray(out)

    # -- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "version": self.version,
            "arity": self.arity,
            "inputs": [i.to_dict() for i in self.inputs],
            "output": self.output.to_dict(),
            "expr": ex.to_json(self.expr),
            "constants": dict(self.constants),
            "status": self.status,
            "layer": self.layer,
            "uses": [{"name": n, "version": v, "slot": s} for s, (n, v) in enumerate(self.uses())],
            "provenance": self.provenance.to_dict(),
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Function:
        try:
            if data.get("schema", 1) > SCHEMA:
                raise RegistryError(
                    f"function record has schema {data['schema']}, newer than "
                    f"this circuitlab understands ({SCHEMA}); upgrade circuitlab"
                )
            return cls(
                name=check_name(data["name"]),
                inputs=tuple(Input.from_dict(i) for i in data["inputs"]),
                expr=ex.from_json(data["expr"]),
                output=Domain.from_dict(data["output"]),
                constants=tuple(sorted((str(k), float(v)) for k, v in data["constants"].items())),
                version=int(data["version"]),
                status=str(data["status"]),
                layer=int(data["layer"]),
                provenance=Provenance.from_dict(data.get("provenance") or {}),
                description=str(data.get("description", "")),
            )
        except KeyError as exc:
            raise RegistryError(f"function record is missing field {exc.args[0]!r}") from None

    def content_hash(self) -> str:
        """Hash of what the function computes (not of when or how it was found)."""
        core = {
            k: v
            for k, v in self.to_dict().items()
            if k in ("name", "version", "inputs", "output", "expr", "constants")
        }
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()

    def with_(self, **changes: Any) -> Function:
        return replace(self, **changes)
