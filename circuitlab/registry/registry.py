"""Registry: named functions over the primitives, on top of a store.

The registry is the vocabulary of the search: every function it holds can be called inside new
expressions and is offered to `discover` as a building block. It refuses names that clash with
primitives or with existing functions (a new version must be asked for), refuses calls of unknown
functions, and assigns each function its layer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from circuitlab._location import path_kind, sqlite_url
from circuitlab.registry.domains import Kind, RegistryError, check_name
from circuitlab.registry.function import Function
from circuitlab.registry.primitives import is_primitive
from circuitlab.registry.store import FunctionStore, JsonFileStore, MemoryStore


class Registry:
    """Functions by name and version, persisted through a `FunctionStore`."""

    def __init__(self, store: FunctionStore | None = None) -> None:
        self.store: FunctionStore = store if store is not None else MemoryStore()
        self._cache: dict[tuple[str, int], Function] = {}

    @classmethod
    def open(cls, location: str | os.PathLike[str] | None) -> Registry:
        """A registry at a directory of JSON files, or in a catalog for a catalog URL or file.

        `sqlite:///...`, `neo4j://...` and `bolt://...` store functions in the circuit catalog as
        `Function` records, and so does a SQLite file path (an existing regular file, or a path
        ending in `.db` or `.sqlite`); any other path is a directory of JSON files (see
        `circuitlab._location`); None keeps the registry in memory.
        """
        if location is None:
            return cls()
        text = os.fspath(location)
        is_url = "://" in text or text.lower().startswith("sqlite:")
        if is_url or path_kind(text) == "file":
            from circuitlab.registry.catalog_store import CatalogStore

            try:
                url = text if is_url else sqlite_url(text)
            except RuntimeError:  # ~user of an unknown user
                raise RegistryError(
                    f"registry path {text!r}: cannot find that home directory"
                ) from None
            return cls(CatalogStore.open(url))
        return cls(JsonFileStore(text))

    # -- lookup --------------------------------------------------------------------------------

    def get(self, name: str, version: int | None = None) -> Function:
        if version is not None and (name, version) in self._cache:
            return self._cache[(name, version)]
        fn = self.store.get(name, version)
        if fn is None:
            known = ", ".join(sorted({f.name for f in self.store.all()})) or "none"
            what = name if version is None else f"{name}@{version}"
            raise RegistryError(f"no function {what} in the registry (known: {known})")
        self._cache[(fn.name, fn.version)] = fn
        return fn

    def resolve(self, name: str, version: int | None) -> Function:
        """The resolver that expression evaluation uses for calls of registered functions."""
        return self.get(name, version)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.store.versions(name))

    def functions(self) -> list[Function]:
        """The latest version of every function, by layer then name."""
        latest: dict[str, Function] = {}
        for fn in self.store.all():
            if fn.name not in latest or fn.version > latest[fn.name].version:
                latest[fn.name] = fn
        return sorted(latest.values(), key=lambda f: (f.layer, f.name))

    def __iter__(self) -> Iterator[Function]:
        return iter(self.functions())

    def __len__(self) -> int:
        return len(self.functions())

    # -- writing -------------------------------------------------------------------------------

    def check_new_name(self, name: str, *, taken_ok: bool = False) -> None:
        """Refuse names of primitives and (unless `taken_ok`) of existing functions (a clear
        error, nothing written)."""
        check_name(name)
        if is_primitive(name):
            raise RegistryError(f"{name} is a primitive; choose another function name")
        if not taken_ok and name in self:
            raise RegistryError(
                f"a function named {name} already exists (versions {self.store.versions(name)}); "
                "choose another name or register a new version explicitly"
            )

    def same_as(self, fn: Function, rtol: float = 1e-9) -> Function | None:
        """The stored version of `fn.name` with the same definition as `fn`, or None.

        Same definition: the same inputs (names and domains) and output domain, and the same
        expression and constants or, failing that, the same outputs (within `rtol`) on 256
        seeded points of the input domains. Version, layer and provenance do not count, so
        re-running a discovery finds the function it registered the first time.
        """
        for version in reversed(self.store.versions(fn.name)):
            stored = self.get(fn.name, version)
            if stored.inputs != fn.inputs or stored.output != fn.output:
                continue
            if stored.expr == fn.expr and stored.constants == fn.constants:
                return stored
            if self._same_outputs(stored, fn, rtol):
                return stored
        return None

    def _same_outputs(self, a: Function, b: Function, rtol: float) -> bool:
        domains = [i.domain for i in a.inputs]
        if a.output.kind is Kind.GRID or any(d.kind is Kind.GRID for d in domains):
            return False
        rng = np.random.default_rng(0)
        try:
            args = [d.sample(rng, 256) for d in domains]
            with np.errstate(all="ignore"):
                ya = np.asarray(a.evaluate(*args, resolve=self.resolve), dtype=np.float64)
                yb = np.asarray(b.evaluate(*args, resolve=self.resolve), dtype=np.float64)
        except RegistryError:  # an unbounded domain, or a call this registry cannot resolve
            return False
        if not np.array_equal(np.isnan(ya), np.isnan(yb)):
            return False
        ya, yb = ya[~np.isnan(ya)], yb[~np.isnan(yb)]
        scale = max(np.abs(ya).max(initial=0.0), np.abs(yb).max(initial=0.0), 1e-300)
        return bool(np.all(np.abs(ya - yb) <= rtol * scale))

    def register(self, fn: Function, *, new_version: bool = False) -> Function:
        """Store `fn` (as a new version of an existing name only when `new_version`).

        Every function it calls must already be registered; its layer becomes one more than the
        highest layer it uses. Returns the stored function (with its version and layer set).
        """
        if new_version and fn.name in self:
            version = self.store.versions(fn.name)[-1] + 1
        else:
            self.check_new_name(fn.name)
            version = 1
        layer = 1
        for name, ver in fn.uses():
            if ver is None:
                raise RegistryError(f"{fn.name} calls {name} without a pinned version")
            dep = self.get(name, ver)
            layer = max(layer, dep.layer + 1)
        stored = fn.with_(version=version, layer=layer)
        self.store.put(stored)
        self._cache[(stored.name, stored.version)] = stored
        return stored

    # -- calling -------------------------------------------------------------------------------

    def call(self, name: str, *args: Any, version: int | None = None) -> np.ndarray:
        """Evaluate a registered function on inputs (scalars or arrays over rows)."""
        return self.get(name, version).evaluate(*args, resolve=self.resolve)
