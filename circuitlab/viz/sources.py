"""Where the explorer reads: the catalog, opened per request, and the task-level graph of a
catalog circuit.

The catalog is opened for each request rather than once: SQLite connections belong to the
thread that opened them and the web server answers each request on its own thread; opening a
SQLite catalog takes about a millisecond. The app writes to the catalog only to save a label.
Every failure the user can act on becomes an `ExplorerError`, which the page shows as a one-line
message (never a traceback).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from circuitlab.catalog import Catalog, CatalogError, open_catalog
from circuitlab.catalog import records as rec
from circuitlab.viz.graphview import ViewGraph, node_id, row_of


class ExplorerError(Exception):
    """A problem the page shows as a message: unreachable or empty catalog, unknown id, a run
    directory that is gone, a bad input value."""


class Sources:
    """The catalog URL and runs directory the app reads, with a small cache of circuit records
    (records are content-addressed: only their feature labels change, and the app drops its
    copy when it saves one)."""

    def __init__(self, catalog_url: str, runs_dir: Path | None = None, cache: int = 16) -> None:
        self.catalog_url = catalog_url
        self.runs_dir = runs_dir
        self._records: OrderedDict[str, rec.Circuit] = OrderedDict()
        self._cache = cache
        self._lock = threading.Lock()

    @contextmanager
    def catalog(self) -> Iterator[Catalog]:
        """The catalog, open for one request; CatalogError becomes ExplorerError."""
        try:
            with open_catalog(self.catalog_url, create=False) as cat:
                yield cat
        except CatalogError as exc:
            raise ExplorerError(f"catalog {self.catalog_url}: {exc}") from None

    def describe(self) -> str:
        """One line on what the catalog holds; raises ExplorerError when it cannot be read
        (the command checks this before it starts the server)."""
        with self.catalog() as cat:
            counts = cat.stats().counts
        return (
            f"{counts.get('circuit', 0)} circuits, {counts.get('model', 0)} models, "
            f"{counts.get('task', 0)} tasks"
        )

    def circuit(self, circuit_id: str) -> rec.Circuit:
        """The circuit record with this id (or unique prefix)."""
        with self._lock:
            if circuit_id in self._records:
                self._records.move_to_end(circuit_id)
                return self._records[circuit_id]
        with self.catalog() as cat:
            try:
                kind = cat.kind_of(circuit_id)
            except CatalogError as exc:
                raise ExplorerError(str(exc)) from None
            if kind != "circuit":
                raise ExplorerError(f"{circuit_id[:16]} is a {kind}, not a circuit")
            record = cat.get(circuit_id)
        with self._lock:
            self._records[circuit_id] = record
            while len(self._records) > self._cache:
                self._records.popitem(last=False)
        return record

    def save_label(self, circuit_id: str, feature_id: str, label: str) -> None:
        """Set a feature's label in the catalog. The circuit is put again with the label
        changed: a circuit's id does not depend on its features' labels, so it stays the same
        record, and the feature (shared by every circuit that uses it) carries the new label."""
        with self.catalog() as cat:
            record = cat.get(circuit_id)
            nodes = [n for n in record.nodes if n.feature.id == feature_id]
            if not nodes:
                raise ExplorerError(
                    f"feature {feature_id[:12]} is not in circuit {circuit_id[:12]}"
                )
            for node in nodes:
                node.feature.label = label
            try:
                cat.put(record)
            except CatalogError as exc:
                raise ExplorerError(f"label not saved: {exc}") from None
        with self._lock:
            self._records.pop(circuit_id, None)

    def save_subgraph(self, circuit_id: str, name: str, view: dict[str, Any]) -> list[str]:
        """Store a named view of a circuit (pinned ids, supernodes, mode, input, thresholds) in
        the circuit's `metadata.extra["subgraphs"]`: metadata is not part of a record's id, so
        the circuit stays the same record. Returns the saved names."""
        with self.catalog() as cat:
            record = cat.get(circuit_id)
            saved = dict(record.metadata.extra.get("subgraphs") or {})
            saved[name] = view
            record.metadata.extra = {**record.metadata.extra, "subgraphs": saved}
            try:
                cat.put(record)
            except CatalogError as exc:
                raise ExplorerError(f"subgraph not saved: {exc}") from None
        with self._lock:
            self._records.pop(circuit_id, None)
        return sorted(saved)


def saved_subgraphs(record: rec.Circuit) -> dict[str, dict[str, Any]]:
    """The named views `Sources.save_subgraph` stored with a circuit."""
    saved = record.metadata.extra.get("subgraphs")
    return dict(saved) if isinstance(saved, dict) else {}


def column_names(record: rec.Circuit, n_columns: int) -> list[str]:
    """A name for each token position: the interface's port names and "out" at the answer."""
    names = [f"pos {i}" for i in range(n_columns)]
    if record.interface is not None:
        for port in record.interface.inputs:
            for k, where in enumerate(port.all_positions()):
                if where < n_columns:
                    names[where] = (
                        port.name if len(port.all_positions()) == 1 else f"{port.name}{k}"
                    )
        for where in record.interface.output.all_positions():
            if where < n_columns:
                names[where] = "out"
    return names


def n_layers_of(features: list[rec.Feature]) -> int:
    """Model layers a circuit's nodes span: logits sit at n_layers + 1 (circuit-tracer's
    convention), features at their layer."""
    logits = [f.layer - 1 for f in features if f.node_type == "logit"]
    inner = [f.layer + 1 for f in features if f.node_type not in ("token", "logit")]
    return max(logits + inner + [1])


def circuit_view(record: rec.Circuit) -> ViewGraph:
    """The task-level graph of a catalog circuit: its nodes and averaged edges as stored."""
    features = [n.feature for n in record.nodes]
    n_layers = n_layers_of(features)
    where = [f.position for f in features if f.position is not None]
    if record.interface is not None:
        where += [p for port in record.interface.inputs for p in port.all_positions()]
        where += record.interface.output.all_positions()
    n_columns = max(where, default=0) + 1
    ids: list[str] = []
    seen: set[str] = set()
    for f in features:
        nid = node_id(f.node_type, f.layer, f.index, f.position)
        while nid in seen:  # same layer/index/position from two transcoders
            nid += "'"
        seen.add(nid)
        ids.append(nid)
    lookup = {f.id: i for i, f in enumerate(features)}
    ranked = np.array([f.node_type not in ("token", "logit") for f in features], dtype=bool)
    influence = np.array([n.influence or 0.0 for n in record.nodes], dtype=float)
    src = np.array([lookup[e.source] for e in record.edges], dtype=np.int64)
    dst = np.array([lookup[e.target] for e in record.edges], dtype=np.int64)
    return ViewGraph(
        ids=ids,
        kinds=["feature" if f.node_type in ("neuron", "head") else f.node_type for f in features],
        labels=[f.label or nid for f, nid in zip(features, ids, strict=True)],
        rows=np.array([row_of(f.node_type, f.layer, n_layers) for f in features], dtype=np.int64),
        columns=[f.position for f in features],
        layer=[f.layer for f in features],
        index=[f.index for f in features],
        influence=influence,
        ranked=ranked,
        activation=[n.activation for n in record.nodes],
        in_circuit=np.ones(len(features), dtype=bool),
        catalog_ids=[f.id for f in features],
        src=src,
        dst=dst,
        weight=np.array([e.weight for e in record.edges], dtype=float),
        n_rows=n_layers + 2,
        column_names=column_names(record, n_columns),
    )
