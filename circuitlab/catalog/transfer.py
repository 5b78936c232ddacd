"""Export a whole catalog to one JSON Lines file and import it into any backend.

Format: the first line is a header `{"format": "circuitlab-catalog", "schema": N, "counts":
{...}}`; every other line is one record's `to_dict()` JSON, in an order that puts referenced
records first (tasks, models parents-first, functions inner-first, circuits, implements,
programs), each kind by id. Features travel inside their circuits. The file has no timestamp,
so the same catalog exports to the same bytes whichever backend holds it: SQLite -> Neo4j ->
SQLite round trips can be checked with a byte comparison.

Export writes to a temporary file and renames it (atomic). Import reads the whole file once to
validate every record (`check_export`: a bad file is refused before anything is written, with the
line number), then puts the records in file order, each in its own transaction.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab.catalog._check import limits
from circuitlab.catalog.catalog import Catalog
from circuitlab.catalog.errors import CatalogError, SchemaVersionError
from circuitlab.catalog.records import SCHEMA_VERSION, record_from_dict

FORMAT = "circuitlab-catalog"
ORDER = ("task", "model", "function", "circuit", "implements", "program")


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def _parents_first(cat: Catalog, kind: str, parents: Any) -> Iterator[Any]:
    """Records of one kind ordered so that every record comes after those it refers to."""
    pending = {r.id: r for r in cat.records(kind)}
    done: set[str] = set()
    while pending:
        ready = sorted(
            i for i, r in pending.items() if all(p in done or p not in pending for p in parents(r))
        )
        if not ready:
            raise CatalogError(
                f"{kind} records refer to each other in a cycle: {sorted(pending)[:3]}"
            )
        for rid in ready:
            yield pending.pop(rid)
            done.add(rid)


def export_catalog(cat: Catalog, path: str | os.PathLike[str]) -> dict[str, int]:
    """Write every record of `cat` to `path` (JSON Lines); returns the number per kind."""
    path = Path(path)
    counts = {kind: len(cat.ids(kind)) for kind in ORDER}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_line({"format": FORMAT, "schema": SCHEMA_VERSION, "counts": counts}))
            sources = {
                "model": _parents_first(cat, "model", lambda m: [m.parent] if m.parent else []),
                "function": _parents_first(
                    cat, "function", lambda f: [s.function for s in f.composes]
                ),
            }
            for kind in ORDER:
                for record in sources.get(kind) or cat.records(kind):
                    out.write(_line(record.to_dict()))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return counts


def _read(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read {path}: {exc.strerror}") from None
    with handle:
        try:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise CatalogError(f"{path} line {number}: not JSON ({exc.msg})") from None
                yield number, data
        except UnicodeDecodeError:
            raise CatalogError(f"{path} is not UTF-8 text, not a catalog export") from None


@dataclass(frozen=True)
class CheckedExport:
    """An export file whose every line passed validation (`check_export`); `counts` is the
    number of records per kind."""

    path: Path
    counts: dict[str, int]

    def put_into(self, cat: Catalog) -> dict[str, int]:
        """Put the file's records into `cat` in file order; returns `counts`."""
        lines = _read(self.path)
        next(lines, None)  # the header
        for number, data in lines:
            try:
                cat.put(record_from_dict(data))
            except CatalogError as exc:
                raise CatalogError(f"{self.path} line {number}: {exc}") from None
        return self.counts


def check_export(path: str | os.PathLike[str]) -> CheckedExport:
    """Validate a whole export file (header, every record, the catalog's text limits) without
    writing anything, so that a bad file is refused before a catalog is even created."""
    path = Path(path)
    lines = _read(path)
    first = next(lines, None)
    if first is None:
        raise CatalogError(f"{path} is empty, not a catalog export")
    _, header = first
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CatalogError(f"{path} is not a circuitlab catalog export (no header line)")
    schema = header.get("schema")
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has schema version {schema}, newer than this circuitlab supports "
            f"({SCHEMA_VERSION}): upgrade circuitlab"
        )
    counts = dict.fromkeys(ORDER, 0)
    for number, data in lines:
        try:
            with limits():
                record = record_from_dict(data)
        except SchemaVersionError as exc:
            raise SchemaVersionError(f"{path} line {number}: {exc}") from None
        except CatalogError as exc:
            raise CatalogError(f"{path} line {number}: {exc}") from None
        counts[record.kind] = counts.get(record.kind, 0) + 1
    return CheckedExport(path, counts)


def import_catalog(cat: Catalog, path: str | os.PathLike[str]) -> dict[str, int]:
    """Put every record of an exported file into `cat` (all checked first); returns the number
    per kind."""
    return check_export(path).put_into(cat)
