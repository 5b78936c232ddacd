"""`Library`: circuits, models, registry functions and primitives by name, as callables.

    lib = Library("runs/catalog.db")
    add = lib["add_mod_113"]             # the task's most sufficient circuit in the catalog
    add(7, 3)                            # -> array(10)
    lib.circuit("3fa2c1"), lib.model("runs/x/fast-seed0"), lib.function("KE")
    lib.primitive("ADDMOD", p=31), lib.primitive("ROT90")
    lib.verify(add, lib.function("ADDMOD_113"))   # agreement, recorded on IMPLEMENTS

A program stores each call's `ref`; `Library.resolve` turns a ref back into the callable.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from circuitlab.compose.functions import LibraryFunction
from circuitlab.compose.kinds import (
    CircuitFunction,
    ModelFunction,
    PrimitiveFunction,
    SymbolicFunction,
)
from circuitlab.compose.types import CompositionError, ValueType

MAX_EXHAUSTIVE = 2_000_000  # verify on every input up to this many, else on a sample
_PRIMITIVE_REF = re.compile(r"primitive:(\w+)(?:\((.*)\))?")


@dataclass
class Agreement:
    """How often `function` equals `reference`, on every input or a stated sample."""

    function: str
    reference: str
    agreement: float
    n_examples: int
    exhaustive: bool
    mismatches: list[dict[str, Any]] = field(default_factory=list)  # the first few
    recorded: str | None = None  # id of the Implements record written, if any


class Library:
    """Callables over one catalog (and the registry of functions it holds)."""

    def __init__(self, catalog: Any = None) -> None:
        from circuitlab.catalog import CatalogError, open_catalog
        from circuitlab.registry import Registry
        from circuitlab.registry.catalog_store import CatalogStore

        if catalog is None or isinstance(catalog, str | os.PathLike):
            try:
                catalog = open_catalog(catalog, create=False)  # a typo is not a new catalog
            except CatalogError as exc:
                raise CompositionError(f"catalog: {exc}") from None
        self.catalog = catalog
        self.store = CatalogStore(catalog)
        self.registry = Registry(self.store)
        self._cache: dict[str, LibraryFunction] = {}

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookup ---------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> LibraryFunction:
        """A task spec gives the task's most sufficient circuit; any other name a registry
        function."""
        hits = self.catalog.search(task=name, order_by="sufficiency", limit=20)
        for hit in hits:
            record = self.catalog.get(hit.id)
            if record.artifact is not None:
                return self.circuit(hit.id)
        if name in self.registry:
            return self.function(name)
        raise CompositionError(
            f"{name!r} is neither a task with a runnable circuit in {self.catalog.url} nor a "
            "registry function; `circuitlab catalog search` lists circuits, "
            "`circuitlab registry list` functions"
        )

    def circuit(self, circuit_id: str, mode: str = "circuit") -> CircuitFunction:
        """The circuit with this catalog id (or unique prefix); `mode="model"` runs its model."""
        from circuitlab.extraction.artifact import Circuit, CircuitLoadError

        key = f"circuit:{circuit_id}:{mode}"
        if key not in self._cache:
            try:
                loaded = Circuit.load(circuit_id, catalog=self.catalog)
            except CircuitLoadError as exc:
                raise CompositionError(str(exc)) from None
            self._cache[key] = CircuitFunction(loaded, mode=mode)
        return self._cache[key]

    def model(self, run_dir: str | Path) -> ModelFunction:
        """The trained model of a run directory, called through its task's interface."""
        from circuitlab.models import CheckpointError
        from circuitlab.training import RunDirError

        try:
            return ModelFunction(run_dir)
        except (RunDirError, CheckpointError) as exc:
            raise CompositionError(str(exc)) from None

    def function(self, name: str, version: int | None = None) -> SymbolicFunction:
        """A registry function of the catalog's registry."""
        from circuitlab.registry import RegistryError

        try:
            fn = self.registry.get(name, version)
        except RegistryError as exc:
            raise CompositionError(str(exc)) from None
        return SymbolicFunction(fn, self.registry, self.store.record_id(fn.name, fn.version))

    def primitive(self, name: str, **params: int) -> PrimitiveFunction:
        """A registry primitive with its parameters fixed, e.g. ("ADDMOD", p=31), ("ROT90")."""
        from circuitlab.registry import RegistryError

        try:
            return PrimitiveFunction(name, **params)
        except RegistryError as exc:
            raise CompositionError(str(exc)) from None

    def resolve(self, ref: str) -> LibraryFunction:
        """The callable a program's stored reference names."""
        kind, _, rest = ref.partition(":")
        if kind == "circuit":
            circuit_id, _, mode = rest.partition(":")
            return self.circuit(circuit_id, mode or "circuit")
        if kind == "function":
            name, _, version = rest.partition("@")
            return self.function(name, int(version) if version else None)
        if kind == "primitive" and (m := _PRIMITIVE_REF.fullmatch(ref)):
            params = dict(kv.split("=") for kv in m[2].split(",")) if m[2] else {}
            return self.primitive(m[1], **{k: int(v) for k, v in params.items()})
        if kind == "model":
            return self.model(rest)
        raise CompositionError(
            f"unknown function reference {ref!r} (expected circuit:ID, function:NAME@VERSION, "
            "primitive:NAME(...) or model:RUN_DIR)"
        )

    def circuits(self) -> list[CircuitFunction]:
        """Every runnable circuit in the catalog."""
        out = []
        for cid in self.catalog.ids("circuit"):
            if self.catalog.get(cid).artifact is not None:
                out.append(self.circuit(cid))
        return out

    def functions(self) -> list[SymbolicFunction]:
        """The latest version of every registry function in the catalog."""
        return [self.function(fn.name, fn.version) for fn in self.registry.functions()]

    # -- programs -------------------------------------------------------------------------------

    def save(self, program: Any) -> str:
        """Put a Program into the catalog (with CALLS to the circuits and functions it uses)."""
        from circuitlab.catalog import CatalogError

        try:
            return self.catalog.put(program.to_record())
        except CatalogError as exc:
            raise CompositionError(f"catalog refused program {program.name}: {exc}") from None

    def program(self, key: str) -> Any:
        """A stored program by catalog id (or unique prefix) or by name (the latest put)."""
        from circuitlab.catalog import CatalogError
        from circuitlab.compose.program import Program

        try:
            record = self.catalog.get(key)
        except CatalogError:
            named = [r for r in self.catalog.records("program") if r.name == key]
            if not named:
                raise CompositionError(
                    f"no program {key!r} (by id or name) in {self.catalog.url}"
                ) from None
            record = max(named, key=lambda r: r.metadata.created)
        if record.kind != "program":
            raise CompositionError(f"{key!r} is a {record.kind}, not a program")
        return Program.from_dict(record.body, self)

    # -- verification ---------------------------------------------------------------------------

    def verify(
        self,
        function: LibraryFunction,
        reference: LibraryFunction,
        *,
        sample: int | None = None,
        seed: int = 0,
        record: bool = True,
    ) -> Agreement:
        """Agreement of `function` with `reference` on every input of its domains (or on
        `sample` random inputs when asked or when there are more than MAX_EXHAUSTIVE). A circuit
        checked against a catalog function is recorded as (Circuit)-[:IMPLEMENTS]->(Function)."""
        if reference.result_type(tuple(p.type for p in function.params)) is None:
            raise CompositionError(
                f"cannot compare {function.signature()} with {reference.signature()}: "
                "their inputs differ"
            )
        args, exhaustive = domain_inputs(function, sample, seed)
        got, want = function(*args), reference(*args)
        same = got == want
        if function.output.is_grid:
            same = same.reshape(len(same), -1).all(axis=1)
        bad = np.flatnonzero(~same)[:5]
        result = Agreement(
            function.name,
            reference.name,
            float(same.mean()) if len(same) else 0.0,
            int(len(same)),
            exhaustive,
            [
                {
                    "inputs": [np.asarray(a[i]).tolist() for a in args],
                    "got": np.asarray(got[i]).tolist(),
                    "expected": np.asarray(want[i]).tolist(),
                }
                for i in bad
            ],
        )
        if record and function.kind == "circuit" and reference.catalog_id and function.catalog_id:
            from circuitlab.catalog import Implements

            edge = Implements(
                circuit=function.catalog_id,
                function=reference.catalog_id,
                agreement=result.agreement,
                n_examples=result.n_examples,
                details={"exhaustive": exhaustive, "seed": seed, "by": "Library.verify"},
            )
            result.recorded = self.catalog.put(edge)
        return result


def domain_inputs(
    fn: LibraryFunction, sample: int | None = None, seed: int = 0
) -> tuple[list[np.ndarray], bool]:
    """Every combination of the parameters' values (up to MAX_EXHAUSTIVE), or a seeded sample
    of `sample` of them; and whether it is every combination."""
    sizes = [p.type.size for p in fn.params]
    total = int(np.prod([s for s in sizes if s is not None], dtype=object)) if all(sizes) else None
    if sample is None and total is not None and total <= MAX_EXHAUSTIVE:
        if any(p.type.is_grid for p in fn.params):
            from circuitlab.tasks.grid import sample_grids

            grids = [sample_grids(*p.type.shape, p.type.n, size=MAX_EXHAUSTIVE) for p in fn.params]
            combos = list(itertools.product(*(range(len(g)) for g in grids)))
            index = np.array(combos).T
            return [g[i] for g, i in zip(grids, index, strict=True)], True
        grid = np.meshgrid(*(p.type.values() for p in fn.params), indexing="ij")
        return [g.reshape(-1) for g in grid], True
    n = sample or 10_000
    rng = np.random.default_rng(seed)
    args = []
    for p in fn.params:
        t: ValueType = p.type
        if t.is_grid:
            if t.shape is None or t.n is None:
                raise CompositionError(f"cannot sample {p.name}: {t} has no fixed shape")
            args.append(rng.integers(0, t.n, (n, *t.shape)))
        elif t.size is not None:
            args.append(t.values()[rng.integers(0, t.size, n)])
        else:
            raise CompositionError(f"cannot sample {p.name}: {t} is unbounded")
    return args, False
