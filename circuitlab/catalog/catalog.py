"""`Catalog`: the one API over every backend, and `open_catalog(url)` that picks the backend.

The catalog validates records, derives their ids and storage plans, and implements the
domain-level operations (lineage, deletion rules, search arguments) once; backends only store
plans and answer queries (see `backend.py`).

Where the catalog lives: `open_catalog()` with no URL uses $CIRCUITLAB_CATALOG if set, else
`~/.circuitlab/catalog.db` (SQLite). URLs: `sqlite:///abs/path.db`, `sqlite:rel/path.db`, a plain
file path, `neo4j://host:7687` or `bolt://host:7687` (credentials from NEO4J_USER / NEO4J_PASSWORD,
database from NEO4J_DATABASE). A plain path that is a directory (an existing one, or one ending in
`/`) is refused: that is a registry's folder of JSON functions (`circuitlab._location`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from circuitlab.catalog import records as rec
from circuitlab.catalog._check import NAME_RE, limits
from circuitlab.catalog._plan import plan_record, rebuild, tokenize
from circuitlab.catalog.backend import BLOCKING_RELS, RELS, Backend, Link, Plan, Query
from circuitlab.catalog.errors import CatalogError, NotFoundError, RecordError

DEFAULT_PATH = Path("~/.circuitlab/catalog.db")
ENV_VAR = "CIRCUITLAB_CATALOG"


def default_url() -> str:
    """$CIRCUITLAB_CATALOG, else the SQLite file ~/.circuitlab/catalog.db."""
    return os.environ.get(ENV_VAR) or f"sqlite:///{DEFAULT_PATH.expanduser()}"


@dataclass
class Summary:
    """A circuit as a search result shows it (without its graph)."""

    id: str
    task: str
    model: str
    label: str
    n_nodes: int
    n_edges: int
    metrics: dict[str, float]
    tags: list[str]
    inputs: list[str]
    output: str | None
    signature: str | None


@dataclass
class CircuitGraph:
    """A circuit's graph pruned by edge weight: kept edges (strongest first) and their nodes
    (in the circuit's node order)."""

    circuit: str
    nodes: list[rec.Node]
    edges: list[rec.Edge]


@dataclass
class Lineage:
    """Everything upstream and downstream of one record.

    Upstream: the model chain and task a circuit or model comes from; the circuits and functions
    a function or program is built on. Downstream: derived models, extracted circuits, the
    functions circuits implement, composites and programs using them.
    nodes: id -> (kind, name); links: the relationships between them, ordered.
    """

    root: str
    nodes: dict[str, tuple[str, str]]
    links: list[Link]

    def of_kind(self, kind: str) -> list[str]:
        return sorted(i for i, (k, _) in self.nodes.items() if k == kind)


@dataclass
class Compatibility:
    """`upstream`'s output can feed input `port` of `downstream` (equal `domain`)."""

    upstream: str
    downstream: str
    port: str
    domain: str


@dataclass
class Stats:
    url: str
    backend: str
    counts: dict[str, int] = field(default_factory=dict)


# (kind, rel, direction) rules for walking lineage: up from a record, down from a record.
_UP = {
    "model": [("TRAINED_ON", "out"), ("DERIVED_FROM", "out")],
    "circuit": [("EXTRACTED_FROM", "out")],
    "function": [("IMPLEMENTS", "in"), ("COMPOSES", "out")],
    "program": [("CALLS", "out")],
}
_DOWN = {
    "task": [("TRAINED_ON", "in")],
    "model": [("DERIVED_FROM", "in"), ("EXTRACTED_FROM", "in")],
    "circuit": [("IMPLEMENTS", "out"), ("CALLS", "in")],
    "function": [("COMPOSES", "in"), ("CALLS", "in")],
}


class Catalog:
    """Tasks, models, circuits, features, functions and programs, with their relationships.

    Open with `open_catalog(url)`; use as a context manager or call `close()`.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def url(self) -> str:
        return self.backend.url

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self.backend.url!r})"

    # -- writing -------------------------------------------------------------------------------

    def put(self, record: rec.Record) -> str:
        """Store a record (validated first) and return its id. Idempotent: the same content
        gives the same id and replaces the stored copy. One transaction: on any failure the
        catalog is left as it was."""
        plan = self._plan(record)
        self.backend.write(plan)
        return plan.id

    def put_many(self, records: Iterable[rec.Record], max_edges: int = 100_000) -> list[str]:
        """Put records in batches, each batch one transaction (all or nothing), which is much
        faster than one `put` per record on a server. A batch closes once it holds `max_edges`
        circuit edges. Records may refer to records earlier in the same call. Returns the ids."""
        ids: list[str] = []
        batch: dict[str, Plan] = {}
        edges = 0
        for record in records:
            plan = self._plan(record, {p.id: p.kind for p in batch.values()})
            batch.pop(plan.id, None)  # the same record twice: the later copy wins
            batch[plan.id] = plan
            ids.append(plan.id)
            edges += len(plan.edges)
            if edges >= max_edges:
                self.backend.write_many(list(batch.values()))
                batch, edges = {}, 0
        if batch:
            self.backend.write_many(list(batch.values()))
        return ids

    def delete(self, id: str, cascade: bool = False) -> list[str]:
        """Delete a record and return the ids deleted.

        Refused while other records reference it (models trained on a task, circuits extracted
        from a model, programs calling a circuit...) unless `cascade`, which deletes those too.
        Features used by other circuits survive a circuit's deletion; unused ones go with it.
        IMPLEMENTS relationships go with either end.
        """
        root_id, root_kind = self._resolve(id)
        targets = {root_id: root_kind}
        frontier = [(root_id, root_kind)]
        while frontier:
            refs = [r for t in frontier for r in self._referrers(*t) if r[0] not in targets]
            if refs and not cascade:
                shown = ", ".join(f"{k} {i[:12]}" for i, k in refs[:3])
                more = f" and {len(refs) - 3} more" if len(refs) > 3 else ""
                raise CatalogError(
                    f"{root_kind} {root_id[:12]} is referenced by {shown}{more}; "
                    "delete those first or use cascade"
                )
            frontier = []
            for ref_id, ref_kind in refs:
                if ref_id not in targets:
                    targets[ref_id] = ref_kind
                    frontier.append((ref_id, ref_kind))
        self.backend.delete(sorted(targets.items()))
        return sorted(targets)

    # -- reading -------------------------------------------------------------------------------

    def get(self, id: str) -> rec.Record:
        """The record with this id (or unique id prefix of at least 4 characters)."""
        rid, kind = self._resolve(id)
        loaded = self.backend.load(rid, kind)
        if loaded is None:
            raise NotFoundError(f"no record with id {id!r}")
        return rebuild(loaded)

    def kind_of(self, id: str) -> str:
        return self._resolve(id)[1]

    def exists(self, id: str) -> bool:
        return bool(self.backend.kinds([id]))

    def ids(self, kind: str, limit: int | None = None, offset: int = 0) -> list[str]:
        """Ids of one kind (task, model, circuit, feature, function, program, implements)."""
        _check_kind(kind)
        return self.backend.ids(kind, limit, offset)

    def records(self, kind: str) -> Iterator[rec.Record]:
        """Every record of one kind, by id (loaded one at a time)."""
        for rid in self.ids(kind):
            loaded = self.backend.load(rid, kind)
            if loaded is not None:
                yield rebuild(loaded)

    def search(
        self,
        *,
        task: str | None = None,
        model: str | None = None,
        tags: Iterable[str] = (),
        domain: str | None = None,
        complexity: str | None = None,
        text: str | None = None,
        feature: str | None = None,
        minimum: dict[str, float] | None = None,
        maximum: dict[str, float] | None = None,
        order_by: str = "id",
        limit: int | None = 100,
        offset: int = 0,
    ) -> list[Summary]:
        """Circuits matching every given filter, as summaries.

        text: words that must all occur in the label, description, task, tags or signature.
        minimum / maximum: metric bounds, e.g. {"sufficiency": 0.9}; metric names are those of
        `Metrics` (sufficiency, necessity, accuracy, replacement_score, completeness), its
        `extra` keys, and "generality". order_by: "id", "task" or a metric name (best first).
        """
        query = Query(
            task=task,
            model=model,
            tags=sorted(set(tags)),
            domain=domain,
            complexity=complexity,
            feature=feature,
            minimum=_bounds(minimum, "minimum"),
            maximum=_bounds(maximum, "maximum"),
            order_by=order_by,
            limit=limit,
            offset=offset,
        )
        if feature is not None:  # accept a unique prefix, as everywhere else
            query.feature, kind = self._resolve(feature)
            if kind != "feature":
                raise CatalogError(f"{feature!r} is a {kind}, not a feature")
        if text is not None:
            query.tokens = sorted(set(tokenize(text)))
            if not query.tokens:
                raise CatalogError(f"search text {text!r} has no words to search for")
        if order_by not in ("id", "task") and not NAME_RE.match(order_by):
            raise CatalogError(f"order_by must be 'id', 'task' or a metric name; got {order_by!r}")
        if limit is not None and limit < 0 or offset < 0:
            raise CatalogError("limit and offset must be >= 0")
        return self.summaries(self.backend.search(query))

    def metric_names(self) -> list[str]:
        """Names of the metrics some circuit in the catalog has (search bounds and order)."""
        return self.backend.metric_names()

    def summaries(self, ids: list[str]) -> list[Summary]:
        found = self.backend.summaries(ids)
        return [Summary(id=i, **found[i]) for i in ids if i in found]

    def features(
        self,
        *,
        model: str | None = None,
        node_type: str | None = None,
        layer: int | None = None,
        index: int | None = None,
        position: int | None = None,
        transcoder: str | None = None,
        limit: int | None = 1000,
    ) -> list[str]:
        """Ids of features with these identity values (None = any), by id."""
        filters = {
            k: v
            for k, v in dict(
                model=model,
                node_type=node_type,
                layer=layer,
                index=index,
                position=position,
                transcoder=transcoder,
            ).items()
            if v is not None
        }
        return self.backend.find_features(filters, limit)

    def circuits_using(self, feature: str) -> list[Summary]:
        """Circuits that have this feature among their nodes, by id."""
        fid, kind = self._resolve(feature)
        if kind != "feature":
            raise CatalogError(f"{feature!r} is a {kind}, not a feature")
        return self.search(feature=fid, limit=None)

    def graph(
        self, circuit: str, min_abs_weight: float = 0.0, top_k: int | None = None
    ) -> CircuitGraph:
        """A circuit's edges with |weight| >= min_abs_weight (strongest first, at most top_k)
        and the nodes they touch."""
        cid, kind = self._resolve(circuit)
        if kind != "circuit":
            raise CatalogError(f"{circuit!r} is a {kind}, not a circuit")
        if min_abs_weight < 0 or (top_k is not None and top_k < 0):
            raise CatalogError("min_abs_weight and top_k must be >= 0")
        edges = [
            rec.Edge(s, t, w) for s, t, w in self.backend.graph_edges(cid, min_abs_weight, top_k)
        ]
        loaded = self.backend.load(cid, "circuit", edges=False)
        if loaded is None:
            raise NotFoundError(f"no circuit with id {circuit!r}")
        touched = {e.source for e in edges} | {e.target for e in edges}
        nodes = [
            rec.Node(rec.Feature(**f), a, i)
            for fid, (f, a, i) in zip(loaded.node_ids, loaded.nodes, strict=True)
            if fid in touched
        ]
        return CircuitGraph(cid, nodes, edges)

    def lineage(self, id: str) -> Lineage:
        """Upstream and downstream of a record (see `Lineage`)."""
        root, kind = self._resolve(id)
        nodes: dict[str, str] = {root: kind}
        links: dict[tuple[str, str, str], Link] = {}
        for rules in (_UP, _DOWN):
            seen = {root}
            frontier = {root: kind}
            while frontier:
                nxt: dict[str, str] = {}
                by_kind: dict[str, list[str]] = {}
                for i, k in frontier.items():
                    by_kind.setdefault(k, []).append(i)
                for k, ids in by_kind.items():
                    for rel, direction in rules.get(k, []):
                        for link in self.backend.links(sorted(ids), rel, direction):
                            links[(link.src, link.rel, link.dst)] = link
                            other, other_kind = (
                                (link.dst, link.dst_kind)
                                if direction == "out"
                                else (link.src, link.src_kind)
                            )
                            nodes[other] = other_kind
                            if other not in seen:
                                seen.add(other)
                                nxt[other] = other_kind
                frontier = nxt
        names = self.backend.names(sorted(nodes))
        return Lineage(
            root,
            {i: (k, names.get(i, "")) for i, k in sorted(nodes.items())},
            [links[key] for key in sorted(links)],
        )

    def compatible(self, circuit: str, direction: str = "downstream") -> list[Compatibility]:
        """Which circuits this one can feed ("downstream") or be fed by ("upstream"): an output
        domain equal to an input port's domain."""
        if direction not in ("downstream", "upstream"):
            raise CatalogError(f"direction must be 'downstream' or 'upstream'; got {direction!r}")
        cid, kind = self._resolve(circuit)
        if kind != "circuit":
            raise CatalogError(f"{circuit!r} is a {kind}, not a circuit")
        return [Compatibility(*row) for row in self.backend.compatible(cid, direction)]

    def stats(self) -> Stats:
        counts = dict.fromkeys((*rec.KINDS, "HAS_FEATURE", "ATTRIBUTES", *RELS), 0)
        counts.update(self.backend.counts())
        return Stats(self.backend.url, self.backend.name, counts)

    # -- internals -----------------------------------------------------------------------------

    def _resolve(self, id: str) -> tuple[str, str]:
        if not isinstance(id, str) or not id:
            raise CatalogError(f"expected a record id, got {id!r}")
        exact = self.backend.kinds([id])
        if exact:
            return id, exact[id]
        if len(id) < 4:
            raise NotFoundError(f"no record with id {id!r} (prefixes need at least 4 characters)")
        found = self.backend.resolve(id, 2)
        if not found:
            raise NotFoundError(f"no record with id {id!r}")
        if len(found) > 1:
            raise CatalogError(f"id prefix {id!r} is ambiguous: give more characters")
        return found[0]

    def _referrers(self, id: str, kind: str) -> list[tuple[str, str]]:
        refs = [
            (link.src, link.src_kind)
            for rel in BLOCKING_RELS
            for link in self.backend.links([id], rel, "in")
        ]
        if kind == "task":
            refs += [(i, "circuit") for i in self.backend.search(Query(task=id, limit=None))]
        if kind == "feature":
            refs += [(i, "circuit") for i in self.backend.search(Query(feature=id, limit=None))]
        return sorted(set(refs))

    def _plan(self, record: rec.Record, pending: dict[str, str] | None = None) -> Plan:
        """The storage plan of a validated record, its text within the catalog's limits;
        `pending` (id -> kind) are records planned earlier in the same batch, which a program
        may call."""
        if not isinstance(record, tuple(rec.RECORD_TYPES.values())):
            raise RecordError("record", f"not a catalog record: {type(record).__name__}")
        if isinstance(record, rec.Feature):
            raise RecordError(
                "feature", "features are stored by putting the circuits that use them"
            )
        with limits():
            data = record.to_dict()
        return plan_record(data, self.backend.kinds, pending or {})


def _bounds(bounds: dict[str, float] | None, what: str) -> dict[str, float]:
    out = {}
    for key, value in (bounds or {}).items():
        if not isinstance(key, str) or not NAME_RE.match(key):
            raise CatalogError(f"{what}: metric name must be letters, digits and '_'; got {key!r}")
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise CatalogError(f"{what}.{key}: expected a number, got {value!r}") from None
        if out[key] != out[key]:
            raise CatalogError(f"{what}.{key}: NaN is not a bound")
    return out


def _check_kind(kind: str) -> None:
    if kind not in rec.KINDS:
        raise CatalogError(f"kind must be one of {', '.join(rec.KINDS)}; got {kind!r}")


def open_catalog(url: str | os.PathLike[str] | None = None, *, create: bool = True) -> Catalog:
    """Open the catalog at `url` (see the module docstring; None = the default location).

    create=False refuses to create a new SQLite file (for read-only commands). A SQLite catalog
    is only ever created where no file exists; one we may not write opens read-only.
    """
    if url is None:
        url = default_url()
    url = os.fspath(url)
    if not url.strip():
        raise CatalogError("empty catalog URL")
    if "\x00" in url:
        raise CatalogError(f"catalog URL {url!r} contains a NUL character")
    try:
        parsed = urlparse(url)
    except ValueError as exc:  # e.g. an unbalanced `[` read as an IPv6 host
        raise CatalogError(f"malformed catalog URL {url!r}: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme in ("neo4j", "bolt", "neo4j+s", "neo4j+ssc", "bolt+s", "bolt+ssc"):
        from circuitlab.catalog.neo4j import Neo4jBackend

        return Catalog(Neo4jBackend(url))
    if scheme == "sqlite":
        path = url[len("sqlite:") :]
        if path.startswith("///"):
            path = path[2:]
        elif path.startswith("//"):
            raise CatalogError(
                f"malformed SQLite URL {url!r}: use sqlite:///absolute/path.db or sqlite:rel.db"
            )
    elif scheme and len(scheme) > 1:  # one letter would be a Windows drive
        raise CatalogError(
            f"unsupported catalog URL {url!r}: use a file path, sqlite:///path.db, "
            "neo4j://host:7687 or bolt://host:7687"
        )
    else:
        from circuitlab._location import path_kind

        path = url
        if path_kind(path) == "directory":
            raise CatalogError(
                f"catalog path {path} is a directory: a catalog is a SQLite file or a URL "
                "(sqlite:///path.db, neo4j://, bolt://); a folder of JSON function files is a "
                "registry (--registry)"
            )
    if not path:
        raise CatalogError(f"malformed SQLite URL {url!r}: no file path")
    from circuitlab.catalog.sqlite import SqliteBackend

    try:
        where = Path(path).expanduser()
    except RuntimeError:  # ~user of an unknown user
        raise CatalogError(f"catalog path {path!r}: cannot find that home directory") from None
    return Catalog(SqliteBackend(where, create=create))
