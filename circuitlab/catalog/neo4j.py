"""Neo4j backend: the catalog graph in a Bolt + Cypher server, through the official driver.

URLs: `neo4j://host:7687` or `bolt://host:7687`, optionally with a database name as the path
(`bolt://host:7687/catalog`; else $NEO4J_DATABASE, else the server's default). Credentials come
from $NEO4J_USER (or $NEO4J_USERNAME) and $NEO4J_PASSWORD, never from the URL.

Graph layout (DESIGN.md): nodes Task, Model, Circuit, Feature, Function, Program, each with `id`
(unique constraint, created idempotently), `name` and the record JSON in `data`; circuits also
carry their search columns (task, model, tags, domains, tokens, metrics as `m_<name>`) and a
copy of their edges as lists (`edge_src`, `edge_dst`, `edge_w`) for fast loading.
Relationships: TRAINED_ON, DERIVED_FROM {how}, EXTRACTED_FROM, HAS_FEATURE {ordinal, activation,
influence}, ATTRIBUTES {circuit, ordinal, weight}, IMPLEMENTS {id, agreement, data}, COMPOSES
{slot}, CALLS. ATTRIBUTES carries its circuit's id because two circuits may weigh the same pair of
features differently.

Every query is a constant Cypher text with parameters; the only composition is picking labels
and relationship types from the fixed tables below, never from user input. A put is one explicit
transaction (edges sent in UNWIND batches); any error rolls it back, and a client that dies
mid-put leaves an open transaction that the server rolls back when the connection drops. The
Cypher is the subset that Neo4j 5 and ArcadeDB's Bolt plugin both run (see NOTES.md).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from circuitlab.catalog.backend import Backend, Link, Loaded, Plan, Query
from circuitlab.catalog.errors import CatalogError, NotFoundError, SchemaVersionError

SCHEMA_VERSION = 1
LABELS = {
    "task": "Task",
    "model": "Model",
    "circuit": "Circuit",
    "feature": "Feature",
    "function": "Function",
    "program": "Program",
}
KIND_OF_LABEL = {v: k for k, v in LABELS.items()}
_NODE_KINDS = ("task", "model", "circuit", "function", "program")
# (rel, source kind, target kind) of every link a record can own.
_LINK_SHAPES = [
    ("TRAINED_ON", "model", "task"),
    ("DERIVED_FROM", "model", "model"),
    ("EXTRACTED_FROM", "circuit", "model"),
    ("IMPLEMENTS", "circuit", "function"),
    ("COMPOSES", "function", "function"),
    ("CALLS", "program", "function"),
    ("CALLS", "program", "circuit"),
]
_OWNED = {  # links a record owns (replaced when it is put again); IMPLEMENTS is put on its own
    "model": ["TRAINED_ON", "DERIVED_FROM"],
    "circuit": ["EXTRACTED_FROM"],
    "function": ["COMPOSES"],
    "program": ["CALLS"],
    "task": [],
}
_LINK_ENDS = {
    "TRAINED_ON": ("Model", "Task"),
    "DERIVED_FROM": ("Model", "Model"),
    "EXTRACTED_FROM": ("Circuit", "Model"),
    "IMPLEMENTS": ("Circuit", "Function"),
    "COMPOSES": ("Function", "Function"),
    "CALLS": ("Program", ""),
}


def _paged(query: str) -> dict[bool, str]:
    """The query with and without `LIMIT $limit` (an unbounded search must not pass a huge
    LIMIT: ArcadeDB sizes a top-k heap by it)."""
    return {True: f"{query} LIMIT $limit", False: query}


# -- constant Cypher ------------------------------------------------------------------------------

_CONSTRAINTS = [
    f"CREATE CONSTRAINT catalog_{label.lower()}_id IF NOT EXISTS "
    f"FOR (n:{label}) REQUIRE n.id IS UNIQUE"
    for label in LABELS.values()
] + ["CREATE CONSTRAINT catalog_meta_key IF NOT EXISTS FOR (n:CatalogMeta) REQUIRE n.key IS UNIQUE"]
_SCHEMA = (
    "MERGE (m:CatalogMeta {key: 'schema'}) ON CREATE SET m.version = $version "
    "RETURN m.version AS version"
)
_EXISTS = {k: f"MATCH (n:{LABELS[k]}) WHERE n.id IN $ids RETURN n.id AS id" for k in _NODE_KINDS}
_KINDS = " UNION ALL ".join(
    [
        f"MATCH (n:{label}) WHERE n.id IN $ids RETURN n.id AS id, '{kind}' AS kind"
        for kind, label in LABELS.items()
    ]
    + [
        "MATCH (:Circuit)-[r:IMPLEMENTS]->(:Function) WHERE r.id IN $ids "
        "RETURN r.id AS id, 'implements' AS kind"
    ]
)
_RESOLVE = " UNION ALL ".join(
    [
        f"MATCH (n:{label}) WHERE n.id >= $lo AND n.id < $hi RETURN n.id AS id, '{kind}' AS kind"
        for kind, label in LABELS.items()
    ]
    + [
        "MATCH (:Circuit)-[r:IMPLEMENTS]->(:Function) WHERE r.id >= $lo AND r.id < $hi "
        "RETURN r.id AS id, 'implements' AS kind"
    ]
)
_NAMES = " UNION ALL ".join(
    f"MATCH (n:{LABELS[k]}) WHERE n.id IN $ids RETURN n.id AS id, n.name AS name"
    for k in _NODE_KINDS
) + (
    " UNION ALL MATCH (:Circuit)-[r:IMPLEMENTS]->(:Function) WHERE r.id IN $ids "
    "RETURN r.id AS id, r.name AS name"
)
_IDS = {
    k: _paged(f"MATCH (n:{LABELS[k]}) RETURN n.id AS id ORDER BY id SKIP $offset") for k in LABELS
}
_IDS["implements"] = _paged(
    "MATCH (:Circuit)-[r:IMPLEMENTS]->(:Function) RETURN r.id AS id ORDER BY id SKIP $offset"
)
_PUT_NODE = {k: f"MERGE (n:{LABELS[k]} {{id: $id}}) SET n = $props" for k in _NODE_KINDS}
_LOAD_NODE = {k: f"MATCH (n:{LABELS[k]} {{id: $id}}) RETURN n.data AS data" for k in _NODE_KINDS}
_CREATE_LINK = {
    (rel, src, dst): f"UNWIND $rows AS r MATCH (a:{LABELS[src]} {{id: r.src}}), "
    f"(b:{LABELS[dst]} {{id: r.dst}}) CREATE (a)-[x:{rel}]->(b) SET x += r.props"
    for rel, src, dst in _LINK_SHAPES
}


# ArcadeDB (26.10) deletes only some of the relationships a streaming `MATCH ... DELETE r`
# matches when an edge of the same vertex was deleted earlier in the transaction: re-putting a
# circuit dropped its EXTRACTED_FROM link, then only half its HAS_FEATURE links, which piled up
# put after put (200 -> 300 -> 399). Every relationship delete therefore collects its matches
# first and deletes the list, which deletes them all on ArcadeDB and Neo4j alike.
def _delete_all(match: str) -> str:
    """Delete every relationship `r` of a MATCH, collected before the first delete."""
    return f"{match} WITH collect(DISTINCT r) AS rs UNWIND rs AS r DELETE r"


_DROP_OWNED = {
    (kind, rel): _delete_all(f"MATCH (n:{LABELS[kind]} {{id: $id}})-[r:{rel}]->()")
    for kind, rels in _OWNED.items()
    for rel in rels
}
_DETACH = {k: f"MATCH (n:{LABELS[k]} {{id: $id}}) DETACH DELETE n" for k in _NODE_KINDS}


def _links_query(rel: str, direction: str) -> str:
    src, dst = _LINK_ENDS[rel]
    dst_pattern = f"b:{dst}" if dst else "b"
    anchor = "a" if direction == "out" else "b"
    return (
        f"MATCH (a:{src})-[r:{rel}]->({dst_pattern}) WHERE {anchor}.id IN $ids "
        "RETURN a.id AS src, labels(a) AS src_labels, b.id AS dst, labels(b) AS dst_labels, "
        "r.props AS props, r.ordinal AS ordinal"
    )


_LINKS = {(rel, d): _links_query(rel, d) for rel in _LINK_ENDS for d in ("out", "in")}

_COUNTS = " UNION ALL ".join(
    [f"MATCH (n:{label}) RETURN '{kind}' AS k, count(n) AS n" for kind, label in LABELS.items()]
    + [
        f"MATCH ()-[r:{rel}]->() RETURN '{rel}' AS k, count(r) AS n"
        for rel in ("HAS_FEATURE", "ATTRIBUTES", *_LINK_ENDS)
    ]
)

_CIRCUIT_STRUCTURE_FEATURES = (
    "MATCH (c:Circuit {id: $id})-[:HAS_FEATURE]->(f:Feature) RETURN f.id AS id"
)
_DROP_ATTRIBUTES = _delete_all(
    "MATCH (c:Circuit {id: $id})-[:HAS_FEATURE]->(:Feature)-[r:ATTRIBUTES]->(:Feature) "
    "WHERE r.circuit = $id"
)
_DROP_HAS_FEATURE = _delete_all("MATCH (c:Circuit {id: $id})-[r:HAS_FEATURE]->(:Feature)")
_DROP_ORPHANS = (
    "MATCH (f:Feature) WHERE f.id IN $ids AND NOT EXISTS { MATCH ()-[:HAS_FEATURE]->(f) } "
    "DETACH DELETE f"
)
# UNWIND + MATCH by id seeks the unique index per id (ArcadeDB scans for `f.id IN $list`).
_FEATURE_ELEMENT_IDS = (
    "UNWIND $ids AS i MATCH (f:Feature {id: i}) RETURN i AS id, elementId(f) AS e, f.data AS data"
)
_CIRCUIT_ELEMENT_IDS = (
    "UNWIND $ids AS i MATCH (c:Circuit {id: i}) RETURN i AS id, elementId(c) AS e, null AS data"
)
_CREATE_FEATURES = (
    "UNWIND $rows AS r CREATE (f:Feature) SET f = r RETURN r.id AS id, elementId(f) AS e"
)
_SET_FEATURE_DATA = "UNWIND $rows AS r MATCH (f:Feature {id: r.id}) SET f.data = r.data"
# Rows name their nodes by elementId (looked up once per batch).
_PUT_HAS_FEATURE = (
    "UNWIND $rows AS r MATCH (c) WHERE elementId(c) = r[0] MATCH (f) WHERE elementId(f) = r[1] "
    "CREATE (c)-[h:HAS_FEATURE {ordinal: r[2]}]->(f) SET h.activation = r[3], h.influence = r[4]"
)
_PUT_ATTRIBUTES = (
    "UNWIND $rows AS r MATCH (a) WHERE elementId(a) = r[0] MATCH (b) WHERE elementId(b) = r[1] "
    "CREATE (a)-[:ATTRIBUTES {circuit: r[2], ordinal: r[3], weight: r[4]}]->(b)"
)
_DROP_IMPLEMENTS = _delete_all("MATCH (:Circuit)-[r:IMPLEMENTS]->(:Function) WHERE r.id = $id")
_LOAD_IMPLEMENTS = (
    "MATCH (:Circuit)-[r:IMPLEMENTS]->(:Function) WHERE r.id = $id RETURN r.data AS data"
)
_LOAD_FEATURE = (
    "MATCH (f:Feature {id: $id}) RETURN f.model AS model, f.node_type AS node_type, "
    "f.layer AS layer, f.idx AS idx, f.position AS position, f.transcoder AS transcoder, "
    "f.data AS data"
)
# One record holding a list: far less driver overhead than a record per node or edge.
_LOAD_NODES = (
    "MATCH (c:Circuit {id: $id})-[h:HAS_FEATURE]->(f:Feature) WITH f, h ORDER BY h.ordinal "
    "RETURN collect([f.id, f.model, f.node_type, f.layer, f.idx, f.position, f.transcoder, "
    "f.data, h.activation, h.influence]) AS nodes"
)
# A circuit node also keeps its edges as three lists (source and target node positions,
# weights): loading them is one property read, where matching ATTRIBUTES by their `circuit`
# property walks the edges of every circuit sharing the features (no relationship index on
# ArcadeDB). ATTRIBUTES stay the graph that Cypher users query; both are written together.
_PUT_EDGE_LISTS = (
    "MATCH (c:Circuit {id: $id}) SET c.edge_src = $src, c.edge_dst = $dst, c.edge_w = $w"
)
_LOAD_EDGES = (
    "MATCH (c:Circuit {id: $id}) RETURN c.edge_src AS src, c.edge_dst AS dst, c.edge_w AS w"
)
_NODE_COLUMNS = ("model", "node_type", "layer", "idx", "position", "transcoder", "data")
_SEARCH_TAIL = (
    " WHERE ($task IS NULL OR c.task = $task)"
    " AND ($model IS NULL OR c.model = $model)"
    " AND ($complexity IS NULL OR c.complexity = $complexity)"
    " AND ($domain IS NULL OR $domain IN c.domains)"
    " AND ALL(t IN $tags WHERE t IN c.tags)"
    " AND ALL(w IN $tokens WHERE w IN c.tokens)"
    " AND ALL(b IN $minimum WHERE c[b.key] >= b.value)"
    " AND ALL(b IN $maximum WHERE c[b.key] <= b.value)"
    " WITH c, CASE WHEN $by_task THEN c.task ELSE '' END AS k1,"
    " CASE WHEN $metric IS NULL THEN null ELSE c[$metric] END AS k2"
    " RETURN c.id AS id ORDER BY k1, (k2 IS NULL), k2 DESC, c.id SKIP $offset"
)
_SEARCH = _paged("MATCH (c:Circuit)" + _SEARCH_TAIL)
_SEARCH_FEATURE = _paged(
    "MATCH (:Feature {id: $feature})<-[:HAS_FEATURE]-(c:Circuit)" + _SEARCH_TAIL
)
_SUMMARIES = "MATCH (c:Circuit) WHERE c.id IN $ids RETURN c.id AS id, c.summary AS summary"
_METRIC_KEYS = (
    "MATCH (c:Circuit) UNWIND keys(c) AS k WITH DISTINCT k WHERE k STARTS WITH 'm_' RETURN k"
)
_FIND_FEATURES = _paged(
    "MATCH (f:Feature) WHERE ($model IS NULL OR f.model = $model)"
    " AND ($node_type IS NULL OR f.node_type = $node_type)"
    " AND ($layer IS NULL OR f.layer = $layer) AND ($index IS NULL OR f.idx = $index)"
    " AND ($position IS NULL OR f.position = $position)"
    " AND ($transcoder IS NULL OR f.transcoder = $transcoder)"
    " RETURN f.id AS id ORDER BY id"
)
_NODE_IDS = (
    "MATCH (c:Circuit {id: $id})-[h:HAS_FEATURE]->(f:Feature) WITH f, h ORDER BY h.ordinal "
    "RETURN collect(f.id) AS ids"
)
_COMPATIBLE = {
    "downstream": (
        "MATCH (a:Circuit {id: $id}) WHERE a.domain_out IS NOT NULL "
        "MATCH (b:Circuit) WHERE a.domain_out IN b.domains_in "
        "UNWIND range(0, size(b.ports_in) - 1) AS i WITH a, b, i "
        "WHERE b.domains_in[i] = a.domain_out "
        "RETURN a.id AS up, b.id AS down, b.ports_in[i] AS port, a.domain_out AS domain "
        "ORDER BY up, down, port"
    ),
    "upstream": (
        "MATCH (b:Circuit {id: $id}) MATCH (a:Circuit) WHERE a.domain_out IS NOT NULL "
        "AND a.domain_out IN b.domains_in "
        "UNWIND range(0, size(b.ports_in) - 1) AS i WITH a, b, i "
        "WHERE b.domains_in[i] = a.domain_out "
        "RETURN a.id AS up, b.id AS down, b.ports_in[i] AS port, a.domain_out AS domain "
        "ORDER BY up, down, port"
    ),
}
_WIPE = {
    label: f"MATCH (n:{label}) WITH n LIMIT 20000 DETACH DELETE n RETURN count(*) AS n"
    for label in (*LABELS.values(), "CatalogMeta")
}


_RETRIES = 6


class _Conflict(CatalogError):
    """A concurrent writer got in the way: a uniqueness constraint refused a feature it created
    first, or the server reports a transient conflict (ArcadeDB: DeadlockDetected, "Please retry
    the operation", when two transactions change one page). Replaying the put succeeds."""


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class Neo4jBackend(Backend):
    name = "neo4j"
    edge_batch = 20_000  # rows per UNWIND statement (fewer, bigger statements are faster)

    def __init__(self, url: str) -> None:
        try:
            import neo4j
        except ImportError:
            raise CatalogError(
                "the Neo4j backend needs the neo4j driver: pip install 'circuitlab[neo4j]'"
            ) from None
        self._neo4j = neo4j
        parsed = urlparse(url)
        if parsed.username or parsed.password:
            raise CatalogError(
                "put Neo4j credentials in NEO4J_USER and NEO4J_PASSWORD, not in the URL"
            )
        try:
            port = parsed.port
        except ValueError:
            raise CatalogError(f"malformed Neo4j URL {url!r}: bad port") from None
        if not parsed.hostname:
            raise CatalogError(f"malformed Neo4j URL {url!r}: no host")
        database = parsed.path.strip("/") or os.environ.get("NEO4J_DATABASE") or None
        if parsed.query or parsed.fragment or (database and "/" in database):
            raise CatalogError(
                f"malformed Neo4j URL {url!r}: expected scheme://host:port[/database]"
            )
        self.database = database
        self.url = f"{parsed.scheme}://{parsed.hostname}:{port or 7687}" + (
            f"/{database}" if database else ""
        )
        user = os.environ.get("NEO4J_USER") or os.environ.get("NEO4J_USERNAME")
        password = os.environ.get("NEO4J_PASSWORD", "")
        self._user = user
        auth = (user, password) if user else None
        driver_url = f"{parsed.scheme}://{parsed.hostname}:{port or 7687}"
        try:
            self._driver = neo4j.GraphDatabase.driver(
                driver_url,
                auth=auth,
                connection_timeout=10.0,
                max_transaction_retry_time=0.0,
                notifications_min_severity="OFF",
            )
        except (ValueError, neo4j.exceptions.ConfigurationError) as exc:
            raise CatalogError(f"malformed Neo4j URL {url!r}: {_one_line(exc)}") from None
        try:
            with self._guard():
                self._driver.verify_connectivity()
                self._setup()
        except BaseException:
            self._driver.close()
            raise

    # -- plumbing ------------------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Driver errors become one-line CatalogErrors naming the server."""
        exc_mod = self._neo4j.exceptions
        try:
            yield
        except exc_mod.AuthError:
            who = f"user {self._user!r}" if self._user else "no credentials"
            raise CatalogError(
                f"Neo4j at {self.url} refused the credentials ({who}): set NEO4J_USER and "
                "NEO4J_PASSWORD"
            ) from None
        except exc_mod.ConstraintError as exc:
            raise _Conflict(f"Neo4j at {self.url}: {_one_line(exc.message or exc)}") from None
        except exc_mod.ServiceUnavailable as exc:
            raise CatalogError(f"cannot reach Neo4j at {self.url}: {_one_line(exc)}") from None
        except (exc_mod.Neo4jError, exc_mod.DriverError) as exc:
            message = getattr(exc, "message", None) or exc
            error = _Conflict if exc.is_retryable() else CatalogError  # e.g. a transient deadlock
            raise error(f"Neo4j at {self.url}: {_one_line(message)}") from None
        except OSError as exc:
            raise CatalogError(f"cannot reach Neo4j at {self.url}: {_one_line(exc)}") from None

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One explicit transaction; rolled back on any exception."""
        with self._guard(), self._driver.session(database=self.database) as session:
            tx = session.begin_transaction()
            try:
                yield tx
            except BaseException:
                if not tx.closed():
                    tx.rollback()
                raise
            else:
                tx.commit()

    def _rows(self, query: str, **params: Any) -> list[dict[str, Any]]:
        with self._tx() as tx:
            return [r.data() for r in tx.run(query, params)]

    def _setup(self) -> None:
        with self._driver.session(database=self.database) as session:
            for statement in _CONSTRAINTS:
                session.run(statement).consume()
            version = session.run(_SCHEMA, version=SCHEMA_VERSION).single()["version"]
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"catalog at {self.url} has schema version {version}, newer than this "
                f"circuitlab supports ({SCHEMA_VERSION}): upgrade circuitlab"
            )

    def close(self) -> None:
        self._driver.close()

    def wipe(self) -> None:
        """Delete every catalog node and relationship (tests and benchmarks only)."""
        for query in _WIPE.values():
            while self._rows(query)[0]["n"]:
                pass

    # -- writes --------------------------------------------------------------------------------

    def write_many(self, plans: list[Plan]) -> None:
        for attempt in range(_RETRIES):
            try:
                self._write_many(plans)
                return
            except _Conflict:  # a concurrent writer got in the way
                if attempt == _RETRIES - 1:
                    raise
                time.sleep(random.uniform(0.05, 0.2) * 2**attempt)  # then replay on top of it

    def _write_many(self, plans: list[Plan]) -> None:
        with self._tx() as tx:
            known: set[str] = set()  # ids checked or written in this transaction
            orphans: list[str] = []
            circuits: list[Plan] = []
            links: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
            for plan in plans:  # in order: a record may refer to one earlier in the batch
                self._check_requires(tx, plan, known)
                known.add(plan.id)
                if plan.kind == "implements":
                    self._write_implements(tx, plan)
                    continue
                if tx.run(_EXISTS[plan.kind], ids=[plan.id]).data():
                    orphans += self._clear_owned(tx, plan.kind, plan.id)
                tx.run(_PUT_NODE[plan.kind], id=plan.id, props=self._node_props(plan)).consume()
                if plan.kind == "circuit":
                    circuits.append(plan)
                for k in plan.links:
                    props = {**k.props, "props": _dumps(k.props), "ordinal": k.ordinal}
                    links.setdefault((k.rel, k.src_kind, k.dst_kind), []).append(
                        {"src": k.src, "dst": k.dst, "props": props}
                    )
            for shape, rows in links.items():
                tx.run(_CREATE_LINK[shape], rows=rows).consume()
            if circuits:
                self._write_circuits(tx, circuits)
            if orphans:
                tx.run(_DROP_ORPHANS, ids=sorted(set(orphans))).consume()

    def _write_implements(self, tx: Any, plan: Plan) -> None:
        tx.run(_DROP_IMPLEMENTS, id=plan.id).consume()
        link = plan.links[0]
        props = {
            **link.props,
            "props": _dumps(link.props),
            "ordinal": 0,
            "name": plan.name,
            "data": _dumps(plan.data),
        }
        rows = [{"src": link.src, "dst": link.dst, "props": props}]
        tx.run(_CREATE_LINK[("IMPLEMENTS", "circuit", "function")], rows=rows).consume()

    def _check_requires(self, tx: Any, plan: Plan, known: set[str]) -> None:
        for rid, allowed in plan.requires:
            if rid in known:
                continue
            found = [k for k in allowed if tx.run(_EXISTS[k], ids=[rid]).data()]
            if not found:
                raise NotFoundError(
                    f"{plan.kind} {plan.id[:12]} refers to {rid!r}, which is not a "
                    f"{' or '.join(allowed)} in the catalog: put it first"
                )
            known.add(rid)

    def _node_props(self, plan: Plan) -> dict[str, Any]:
        props: dict[str, Any] = {"id": plan.id, "name": plan.name, "data": _dumps(plan.data)}
        if plan.kind == "model":
            props["task"] = plan.task
        if plan.kind == "circuit":
            ins = [(port, dom) for side, port, dom in plan.domains if side == "in"]
            out = [dom for side, _, dom in plan.domains if side == "out"]
            props.update(
                task=plan.task,
                model=plan.model,
                complexity=plan.data["tags"]["complexity"],
                tags=plan.tags,
                tokens=plan.tokens,
                summary=_dumps(plan.summary),
                domains=sorted({dom for _, _, dom in plan.domains}),
                ports_in=[p for p, _ in ins],
                domains_in=[d for _, d in ins],
                domain_out=out[0] if out else None,
                **{f"m_{k}": v for k, v in plan.metrics.items()},
            )
        return {k: v for k, v in props.items() if v is not None}

    def _element_ids(self, tx: Any, query: str, ids: list[str]) -> dict[str, tuple[str, Any]]:
        """id -> (elementId, data) of the stored nodes among `ids`."""
        out: dict[str, tuple[str, Any]] = {}
        for start in range(0, len(ids), self.edge_batch):
            rows = tx.run(query, ids=ids[start : start + self.edge_batch])
            out.update((r["id"], (r["e"], r["data"])) for r in rows)
        return out

    def _write_circuits(self, tx: Any, plans: list[Plan]) -> None:
        """Features, HAS_FEATURE and ATTRIBUTES of several circuits in UNWIND batches. Rows
        name nodes by elementId, so a batch needs no per-row index lookup by content id.
        Features are looked up first, then the new ones created and changed annotations set
        (cheaper than MERGE on ArcadeDB; the unique constraint still guards against races)."""
        identity = ("model", "node_type", "layer", "index", "position", "transcoder")
        features: dict[str, dict[str, Any]] = {}
        for plan in plans:
            for f in plan.features:
                row = {("idx" if k == "index" else k): f[k] for k in identity if f[k] is not None}
                row["id"] = f["id"]
                row["data"] = _dumps({k: f[k] for k in ("label", "description", "stats")})
                features[f["id"]] = row
        found = self._element_ids(tx, _FEATURE_ELEMENT_IDS, list(features))
        fe = {fid: e for fid, (e, _) in found.items()}
        changed = [
            {"id": fid, "data": features[fid]["data"]}
            for fid, (_, data) in found.items()
            if data != features[fid]["data"]
        ]
        new = [row for fid, row in features.items() if fid not in found]
        for start in range(0, len(new), self.edge_batch):
            rows = tx.run(_CREATE_FEATURES, rows=new[start : start + self.edge_batch])
            fe.update((r["id"], r["e"]) for r in rows)
        for start in range(0, len(changed), self.edge_batch):
            tx.run(_SET_FEATURE_DATA, rows=changed[start : start + self.edge_batch]).consume()
        ce = {
            k: e
            for k, (e, _) in self._element_ids(
                tx, _CIRCUIT_ELEMENT_IDS, [p.id for p in plans]
            ).items()
        }
        batch: list[list[Any]] = []

        def flush(query: str) -> None:
            if batch:
                tx.run(query, rows=batch).consume()
                batch.clear()

        for plan in plans:
            c = ce[plan.id]
            for i, (fid, a, inf) in enumerate(plan.nodes):
                batch.append([c, fe[fid], i, a, inf])
                if len(batch) >= self.edge_batch:
                    flush(_PUT_HAS_FEATURE)
        flush(_PUT_HAS_FEATURE)
        lists: dict[str, dict[str, list[Any]]] = {}
        for plan in plans:
            edges = plan.edges
            at = {fid: i for i, (fid, _, _) in enumerate(plan.nodes)}
            copy = lists[plan.id] = {"src": [], "dst": [], "w": []}
            for start in range(0, len(edges), self.edge_batch):
                chunk = edges[start : start + self.edge_batch]  # sliced: never all in memory twice
                batch.extend(
                    [fe[s], fe[t], plan.id, start + j, w] for j, (s, t, w) in enumerate(chunk)
                )
                for s, t, w in chunk:
                    copy["src"].append(at[s])
                    copy["dst"].append(at[t])
                    copy["w"].append(w)
                if len(batch) >= self.edge_batch:
                    flush(_PUT_ATTRIBUTES)
        flush(_PUT_ATTRIBUTES)
        for cid, copy in lists.items():
            tx.run(_PUT_EDGE_LISTS, id=cid, src=copy["src"], dst=copy["dst"], w=copy["w"]).consume()

    def _clear_owned(self, tx: Any, kind: str, rid: str) -> list[str]:
        """Remove what a record owns before it is written again; returns its old features."""
        for rel in _OWNED[kind]:
            tx.run(_DROP_OWNED[(kind, rel)], id=rid).consume()
        if kind != "circuit":
            return []
        features = [r["id"] for r in tx.run(_CIRCUIT_STRUCTURE_FEATURES, id=rid)]
        tx.run(_DROP_ATTRIBUTES, id=rid).consume()
        tx.run(_DROP_HAS_FEATURE, id=rid).consume()
        return features

    def delete(self, targets: list[tuple[str, str]]) -> None:
        with self._tx() as tx:
            orphans: list[str] = []
            for rid, kind in targets:
                if kind == "implements":
                    tx.run(_DROP_IMPLEMENTS, id=rid).consume()
                elif kind == "feature":
                    tx.run("MATCH (f:Feature {id: $id}) DETACH DELETE f", id=rid).consume()
                else:
                    orphans += self._clear_owned(tx, kind, rid)
                    tx.run(_DETACH[kind], id=rid).consume()
            if orphans:
                tx.run(_DROP_ORPHANS, ids=sorted(set(orphans))).consume()

    # -- reads ---------------------------------------------------------------------------------

    def kinds(self, ids: list[str]) -> dict[str, str]:
        return {r["id"]: r["kind"] for r in self._rows(_KINDS, ids=list(ids))}

    def resolve(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        rows = self._rows(_RESOLVE, lo=prefix, hi=prefix + "\U0010ffff")
        return sorted((r["id"], r["kind"]) for r in rows)[:limit]

    def load(self, id: str, kind: str, edges: bool = True) -> Loaded | None:
        with self._tx() as tx:
            if kind == "feature":
                row = tx.run(_LOAD_FEATURE, id=id).single()
                return None if row is None else Loaded("feature", id, _feature_json(row))
            query = _LOAD_IMPLEMENTS if kind == "implements" else _LOAD_NODE[kind]
            row = tx.run(query, id=id).single()
            if row is None:
                return None
            loaded = Loaded(kind, id, json.loads(row["data"]))
            if kind != "circuit":
                return loaded
            for n in tx.run(_LOAD_NODES, id=id).single()["nodes"]:
                loaded.node_ids.append(n[0])
                loaded.nodes.append(
                    (_feature_json(dict(zip(_NODE_COLUMNS, n[1:8], strict=True))), n[8], n[9])
                )
            self._check_nodes(id, loaded.node_ids)
            if not edges:
                return loaded
            loaded.edges = self._edge_lists(tx, id, loaded.node_ids)
            return loaded

    def _check_nodes(self, cid: str, node_ids: list[str]) -> None:
        """Refuse a circuit whose HAS_FEATURE links repeat features (left by puts before the
        ArcadeDB workaround above): its nodes, and the edges indexing them, are wrong."""
        features = len(set(node_ids))
        if features != len(node_ids):
            raise CatalogError(
                f"catalog at {self.url}: circuit {cid[:12]} is stored inconsistently "
                f"({len(node_ids)} HAS_FEATURE links for {features} features); put the circuit "
                "again (e.g. re-run its extraction) to rewrite it"
            )

    @staticmethod
    def _edge_lists(tx: Any, cid: str, node_ids: list[str]) -> list[tuple[str, str, float]]:
        row = tx.run(_LOAD_EDGES, id=cid).single()
        if row is None or row["src"] is None:
            return []
        return [
            (node_ids[s], node_ids[t], w)
            for s, t, w in zip(row["src"], row["dst"], row["w"], strict=True)
        ]

    def names(self, ids: list[str]) -> dict[str, str]:
        return {r["id"]: r["name"] for r in self._rows(_NAMES, ids=list(ids))}

    def ids(self, kind: str, limit: int | None, offset: int) -> list[str]:
        rows = self._rows(_IDS[kind][limit is not None], offset=offset, limit=limit)
        return [r["id"] for r in rows]

    def search(self, query: Query) -> list[str]:
        metric = None if query.order_by in ("id", "task") else f"m_{query.order_by}"
        params = {
            "task": query.task,
            "model": query.model,
            "complexity": query.complexity,
            "domain": query.domain,
            "tags": query.tags,
            "tokens": query.tokens,
            "minimum": [{"key": f"m_{k}", "value": v} for k, v in sorted(query.minimum.items())],
            "maximum": [{"key": f"m_{k}", "value": v} for k, v in sorted(query.maximum.items())],
            "by_task": query.order_by == "task",
            "metric": metric,
            "offset": query.offset,
            "limit": query.limit,
            "feature": query.feature,
        }
        cypher = (_SEARCH if query.feature is None else _SEARCH_FEATURE)[query.limit is not None]
        return [r["id"] for r in self._rows(cypher, **params)]

    def summaries(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        return {r["id"]: json.loads(r["summary"]) for r in self._rows(_SUMMARIES, ids=list(ids))}

    def metric_names(self) -> list[str]:
        return sorted(r["k"][2:] for r in self._rows(_METRIC_KEYS))

    def find_features(self, filters: dict[str, Any], limit: int | None) -> list[str]:
        params = {
            k: filters.get(k)
            for k in ("model", "node_type", "layer", "index", "position", "transcoder")
        }
        rows = self._rows(_FIND_FEATURES[limit is not None], limit=limit, **params)
        return [r["id"] for r in rows]

    def graph_edges(
        self, circuit: str, min_abs_weight: float, top_k: int | None
    ) -> list[tuple[str, str, float]]:
        with self._tx() as tx:
            node_ids = tx.run(_NODE_IDS, id=circuit).single()["ids"]
            self._check_nodes(circuit, node_ids)
            edges = self._edge_lists(tx, circuit, node_ids)
        order = sorted(range(len(edges)), key=lambda i: (-abs(edges[i][2]), i))
        kept = [edges[i] for i in order if abs(edges[i][2]) >= min_abs_weight]
        return kept if top_k is None else kept[:top_k]

    def links(self, ids: list[str], rel: str, direction: str) -> list[Link]:
        rows = self._rows(_LINKS[(rel, direction)], ids=list(ids))
        out = [
            Link(
                rel,
                r["src"],
                _kind(r["src_labels"]),
                r["dst"],
                _kind(r["dst_labels"]),
                json.loads(r["props"]),
                r["ordinal"],
            )
            for r in rows
        ]
        return sorted(out, key=lambda k: (k.src, k.dst))

    def compatible(self, circuit: str, direction: str) -> list[tuple[str, str, str, str]]:
        rows = self._rows(_COMPATIBLE[direction], id=circuit)
        return [(r["up"], r["down"], r["port"], r["domain"]) for r in rows]

    def counts(self) -> dict[str, int]:
        out = {r["k"]: r["n"] for r in self._rows(_COUNTS)}
        out["implements"] = out.get("IMPLEMENTS", 0)
        return out


def _kind(labels: list[str]) -> str:
    for label in labels:
        if label in KIND_OF_LABEL:
            return KIND_OF_LABEL[label]
    raise CatalogError(f"node with unexpected labels {labels}")


def _feature_json(row: Any) -> dict[str, Any]:
    return {
        "model": row["model"],
        "node_type": row["node_type"],
        "layer": row["layer"],
        "index": row["idx"],
        "position": row["position"],
        "transcoder": row["transcoder"],
        **json.loads(row["data"]),
    }
