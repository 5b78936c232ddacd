"""The storage contract between `Catalog` and a backend (SQLite, Neo4j).

`Catalog` validates records and turns each one into a `Plan` (the rows and relationships it
stores); a backend writes a plan in one transaction and answers a fixed set of queries natively
(SQL or Cypher). All ordering rules live here in words and are the same for every backend, so
the same data gives the same ordered answers whatever stores it:

- id lists are ordered by id (byte order of the lowercase hex / ASCII spec);
- search results are ordered by the requested key, numbers descending with missing values last,
  then by id;
- a circuit's nodes and edges come back in the order they were put.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

# Relationship types of the catalog graph (DESIGN.md). HAS_FEATURE and ATTRIBUTES are held by
# circuits and stored apart; these are the others, kept as (src)-[rel]->(dst) links.
RELS = ("TRAINED_ON", "DERIVED_FROM", "EXTRACTED_FROM", "IMPLEMENTS", "COMPOSES", "CALLS")
# A record cannot be deleted while a link of these types points at it (unless cascading).
BLOCKING_RELS = ("TRAINED_ON", "DERIVED_FROM", "EXTRACTED_FROM", "COMPOSES", "CALLS")


@dataclass
class Link:
    """(src)-[rel {props}]->(dst); `ordinal` keeps list order (Program.calls, Function.composes)."""

    rel: str
    src: str
    src_kind: str
    dst: str
    dst_kind: str
    props: dict[str, Any] = field(default_factory=dict)
    ordinal: int = 0


@dataclass
class Plan:
    """Everything one record stores. Built by `Catalog` from a validated record.

    kind, id, name: the record; `name` is what listings show (spec, label, function name).
    data: the record's JSON (for circuits, without nodes and edges, which are stored as rows).
    requires: (id, allowed kinds) that must exist when the record is written.
    links: relationships the record owns (replaced when it is put again).
    Circuits only: features (id, identity columns, annotation JSON), nodes (feature id,
    activation, influence) and edges (source id, target id, weight) in order, plus the search
    columns: task, model, tags, domains (side "in"/"out", port, domain), metrics, tokens, and
    summary (the JSON a search result shows).
    """

    kind: str
    id: str
    name: str
    data: dict[str, Any]
    requires: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    features: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[tuple[str, float | None, float | None]] = field(default_factory=list)
    edges: list[tuple[str, str, float]] = field(default_factory=list)
    task: str = ""
    model: str = ""
    tags: list[str] = field(default_factory=list)
    domains: list[tuple[str, str, str]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class Loaded:
    """A stored record as read back: its JSON, and for circuits the rows to rebuild it."""

    kind: str
    id: str
    data: dict[str, Any]
    # circuits: [(feature JSON incl. annotations, without id, activation, influence)] and
    # [(source id, target id, weight)]
    nodes: list[tuple[dict[str, Any], float | None, float | None]] = field(default_factory=list)
    node_ids: list[str] = field(default_factory=list)
    edges: list[tuple[str, str, float]] = field(default_factory=list)


@dataclass
class Query:
    """A circuit search. All given filters must hold (AND).

    task, model: exact match. tags: every tag present (priors or labels). domain: some input or
    the output has this domain. complexity: exact match. tokens: every token in the circuit's
    searchable text (label, description, task, tags, signature). feature: uses this feature id.
    minimum / maximum: metric name -> bound (inclusive; a circuit without the metric fails).
    order_by: "id", "task" or a metric name (descending, missing last); then id.
    """

    task: str | None = None
    model: str | None = None
    tags: list[str] = field(default_factory=list)
    domain: str | None = None
    complexity: str | None = None
    tokens: list[str] = field(default_factory=list)
    feature: str | None = None
    minimum: dict[str, float] = field(default_factory=dict)
    maximum: dict[str, float] = field(default_factory=dict)
    order_by: str = "id"
    limit: int | None = 100
    offset: int = 0


class Backend(ABC):
    """Storage for `Catalog`. Every method is one transaction; writes are all-or-nothing."""

    name: str
    url: str

    @abstractmethod
    def close(self) -> None: ...

    def write(self, plan: Plan) -> None:
        """Store the record, replacing any with the same id, after checking `plan.requires`;
        raise NotFoundError (and store nothing) when a required record is missing."""
        self.write_many([plan])

    @abstractmethod
    def write_many(self, plans: list[Plan]) -> None:
        """`write` each plan in order, all in one transaction (all or nothing); a plan may
        require a record written earlier in the list."""

    @abstractmethod
    def delete(self, targets: list[tuple[str, str]]) -> None:
        """Delete these (id, kind) records with their owned rows and links, links pointing at
        them, and features no remaining circuit uses. The caller has checked references."""

    @abstractmethod
    def kinds(self, ids: list[str]) -> dict[str, str]:
        """id -> kind for those of `ids` that are stored."""

    @abstractmethod
    def resolve(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        """(id, kind) of records whose id starts with `prefix`, by id, at most `limit`."""

    @abstractmethod
    def load(self, id: str, kind: str, edges: bool = True) -> Loaded | None:
        """The stored record; for a circuit without its edges when `edges` is False."""

    @abstractmethod
    def names(self, ids: list[str]) -> dict[str, str]: ...

    @abstractmethod
    def ids(self, kind: str, limit: int | None, offset: int) -> list[str]:
        """Ids of one kind, ordered by id."""

    @abstractmethod
    def search(self, query: Query) -> list[str]:
        """Circuit ids matching `query`, in its order."""

    @abstractmethod
    def summaries(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """id -> the summary JSON of those circuits."""

    @abstractmethod
    def metric_names(self) -> list[str]:
        """Names of the metrics some circuit has, sorted."""

    @abstractmethod
    def find_features(self, filters: dict[str, Any], limit: int | None) -> list[str]:
        """Feature ids whose identity columns equal `filters` (model, node_type, layer, index,
        position, transcoder; absent keys are free), by id."""

    @abstractmethod
    def graph_edges(
        self, circuit: str, min_abs_weight: float, top_k: int | None
    ) -> list[tuple[str, str, float]]:
        """Edges of a circuit with |weight| >= min_abs_weight, by |weight| descending then put
        order, at most top_k."""

    @abstractmethod
    def links(self, ids: list[str], rel: str, direction: str) -> list[Link]:
        """Links of type `rel` leaving (direction "out") or entering ("in") any of `ids`, ordered
        by (src, dst)."""

    @abstractmethod
    def compatible(self, circuit: str, direction: str) -> list[tuple[str, str, str, str]]:
        """(upstream circuit, downstream circuit, input port, domain) where the upstream's
        output domain equals one of the downstream's input domains, with `circuit` on the given
        side ("downstream": circuit is upstream). Ordered by (upstream, downstream, port)."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Numbers of records per kind and of HAS_FEATURE, ATTRIBUTES and each link type."""
