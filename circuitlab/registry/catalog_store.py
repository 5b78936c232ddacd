"""Functions in the circuit catalog: registry entries as `Function` records with `COMPOSES` edges.

Each registry function becomes one catalog `Function` record: its name, typed signature, readable
expression and domains fill the record's fields, the full registry record (expression DAG,
constants, version, layer, provenance) sits losslessly in `properties["registry"]`, and every
registered function it calls becomes a `COMPOSES {slot}` relationship to that function's record,
so the catalog's lineage runs from circuits through the functions they implement to the functions
composed from them. The catalog is content-addressed; this store keeps the registry's rule that a
name@version is written once.
"""

from __future__ import annotations

from typing import Any

from circuitlab.registry.domains import RegistryError
from circuitlab.registry.function import Function


class CatalogStore:
    """A `FunctionStore` on a `circuitlab.catalog.Catalog` (SQLite or Neo4j)."""

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog
        self._index: dict[tuple[str, int], str] = {}  # (name, version) -> catalog id
        self._loaded: dict[str, Function] = {}  # catalog id -> function

    @classmethod
    def open(cls, url: str) -> CatalogStore:
        from circuitlab.catalog import CatalogError, open_catalog

        try:
            return cls(open_catalog(url))
        except CatalogError as exc:
            raise RegistryError(f"cannot open catalog {url}: {exc}") from None

    def close(self) -> None:
        self.catalog.close()

    # -- mapping -------------------------------------------------------------------------------

    def to_record(self, fn: Function) -> Any:
        from circuitlab.catalog import Function as FunctionRecord
        from circuitlab.catalog import Metadata, Slot

        slots = []
        for i, (name, version) in enumerate(fn.uses()):
            if version is None or (name, version) not in self._index:
                self._refresh()
            dep = self._index.get((name, version or -1))
            if dep is None:
                raise RegistryError(
                    f"{fn.name} calls {name}@{version}, which is not in the "
                    f"catalog {self.catalog.url}"
                )
            slots.append(Slot(slot=f"s{i}", function=dep))
        data = fn.to_dict()
        return FunctionRecord(
            name=fn.name,
            signature=fn.signature(),
            expression=fn.render(),
            input_domains=[str(i.domain) for i in fn.inputs],
            output_domain=str(fn.output),
            description=fn.description,
            composes=slots,
            properties={
                "registry": data,
                "version": fn.version,
                "layer": fn.layer,
                "status": fn.status,
                "arity": fn.arity,
            },
            metadata=Metadata(extra={"source": fn.provenance.source}),
        )

    @staticmethod
    def from_record(record: Any) -> Function | None:
        data = (record.properties or {}).get("registry")
        return Function.from_dict(data) if isinstance(data, dict) else None

    def _refresh(self) -> None:
        """Index every Function record that carries a registry entry."""
        from circuitlab.catalog import CatalogError

        try:
            for rid in self.catalog.ids("function"):
                if rid in self._loaded:
                    continue
                fn = self.from_record(self.catalog.get(rid))
                if fn is not None:
                    self._loaded[rid] = fn
                    self._index[(fn.name, fn.version)] = rid
        except CatalogError as exc:
            raise RegistryError(f"catalog {self.catalog.url}: {exc}") from None

    # -- FunctionStore -------------------------------------------------------------------------

    def put(self, fn: Function) -> None:
        from circuitlab.catalog import CatalogError

        self._refresh()
        if (fn.name, fn.version) in self._index:
            raise RegistryError(f"{fn.ref} is already stored in {self.catalog.url}")
        try:
            rid = self.catalog.put(self.to_record(fn))
        except CatalogError as exc:
            raise RegistryError(f"catalog refused {fn.ref}: {exc}") from None
        self._index[(fn.name, fn.version)] = rid
        self._loaded[rid] = fn

    def record_id(self, name: str, version: int) -> str | None:
        """The catalog id of name@version (for IMPLEMENTS links from circuits)."""
        self._refresh()
        return self._index.get((name, version))

    def get(self, name: str, version: int | None = None) -> Function | None:
        vs = self.versions(name)
        if not vs:
            return None
        version = vs[-1] if version is None else version
        rid = self._index.get((name, version))
        return self._loaded[rid] if rid is not None else None

    def versions(self, name: str) -> list[int]:
        self._refresh()
        return sorted(v for n, v in self._index if n == name)

    def all(self) -> list[Function]:
        self._refresh()
        return [self._loaded[self._index[k]] for k in sorted(self._index)]
