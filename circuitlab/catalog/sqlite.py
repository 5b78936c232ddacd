"""Embedded SQLite backend (standard library): the default catalog.

Normalised tables with JSON columns for the parts nobody filters on; FTS5 for text search (fed
with tokens made in Python, see `catalog.tokenize`, so it matches the Neo4j backend exactly); WAL
mode so readers (the explorer) run while a writer writes; the schema version in
`PRAGMA user_version` with forward migrations, each in one transaction. Every put and delete is
one `BEGIN IMMEDIATE` transaction: a crash mid-put leaves the file as it was before.

A new catalog is created only where no file exists, and appears whole; an existing file that is
not a catalog (empty, foreign, corrupt) is refused untouched. A catalog we may not write (another
user's) is opened read-only and never gets files created beside it.

Features and circuits get integer keys inside the file, so the big tables (a circuit's nodes
and edges) hold small integers rather than 64-character ids.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from circuitlab.catalog.backend import Backend, Link, Loaded, Plan, Query
from circuitlab.catalog.errors import CatalogError, NotFoundError, SchemaVersionError

# Each entry migrates the file from version i to i + 1 (index i). Never edit a released entry:
# append a new one.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE records (
            id TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, data TEXT NOT NULL
        ) WITHOUT ROWID""",
        "CREATE INDEX records_kind ON records(kind, id)",
        """CREATE TABLE circuits (
            ck INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, task TEXT NOT NULL,
            model TEXT NOT NULL, complexity TEXT, summary TEXT NOT NULL
        )""",
        "CREATE INDEX circuits_task ON circuits(task, id)",
        "CREATE INDEX circuits_model ON circuits(model, id)",
        """CREATE TABLE circuit_tags (
            tag TEXT NOT NULL, ck INTEGER NOT NULL, PRIMARY KEY (tag, ck)
        ) WITHOUT ROWID""",
        "CREATE INDEX circuit_tags_ck ON circuit_tags(ck)",
        """CREATE TABLE circuit_domains (
            domain TEXT NOT NULL, side TEXT NOT NULL, ck INTEGER NOT NULL, port TEXT NOT NULL,
            PRIMARY KEY (domain, side, ck, port)
        ) WITHOUT ROWID""",
        "CREATE INDEX circuit_domains_ck ON circuit_domains(ck)",
        """CREATE TABLE circuit_metrics (
            name TEXT NOT NULL, ck INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY (name, ck)
        ) WITHOUT ROWID""",
        "CREATE INDEX circuit_metrics_ck ON circuit_metrics(ck)",
        "CREATE VIRTUAL TABLE circuit_text USING fts5("
        "body, tokenize='unicode61 remove_diacritics 0')",
        """CREATE TABLE features (
            fk INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, model TEXT NOT NULL,
            node_type TEXT NOT NULL, layer INTEGER NOT NULL, idx INTEGER NOT NULL,
            position INTEGER, transcoder TEXT NOT NULL, label TEXT NOT NULL,
            description TEXT NOT NULL, stats TEXT NOT NULL
        )""",
        "CREATE INDEX features_identity ON features(model, layer, idx)",
        """CREATE TABLE circuit_features (
            ck INTEGER NOT NULL, ordinal INTEGER NOT NULL, fk INTEGER NOT NULL,
            activation REAL, influence REAL, PRIMARY KEY (ck, ordinal)
        ) WITHOUT ROWID""",
        "CREATE INDEX circuit_features_fk ON circuit_features(fk, ck)",
        """CREATE TABLE attributions (
            ck INTEGER NOT NULL, ordinal INTEGER NOT NULL, src INTEGER NOT NULL,
            dst INTEGER NOT NULL, weight REAL NOT NULL, PRIMARY KEY (ck, ordinal)
        ) WITHOUT ROWID""",
        """CREATE TABLE links (
            src TEXT NOT NULL, rel TEXT NOT NULL, dst TEXT NOT NULL, src_kind TEXT NOT NULL,
            dst_kind TEXT NOT NULL, ordinal INTEGER NOT NULL, props TEXT NOT NULL,
            PRIMARY KEY (src, rel, dst)
        ) WITHOUT ROWID""",
        "CREATE INDEX links_dst ON links(dst, rel, src)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)

_FEATURE_COLUMNS = {
    "model": "model",
    "node_type": "node_type",
    "layer": "layer",
    "index": "idx",
    "position": "position",
    "transcoder": "transcoder",
}
_CHUNK = 500  # ids per IN (...) list, well under SQLite's parameter limit


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _chunks(items: list[Any]) -> Iterator[list[Any]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _upgrade(db: sqlite3.Connection, version: int) -> None:
    """Run the migrations from `version` on, inside the caller's transaction."""
    for step in range(version, len(MIGRATIONS)):  # read at call time: a test may add a step
        for statement in MIGRATIONS[step]:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {step + 1}")


def _build(path: Path) -> None:
    """A new, empty catalog file in WAL mode (readers run while a writer writes)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("BEGIN IMMEDIATE")
        _upgrade(db, 0)
        db.execute("COMMIT")
    finally:
        db.close()


def _create(path: Path) -> None:
    """Make a new catalog at `path`, whole or not at all: built under a temporary name, then
    hard-linked into place, which fails if the path exists. So nobody opens a half-made
    catalog, an existing file is never initialised, and of racing creators one wins."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.new")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _build(tmp)
        with suppress(FileExistsError):  # a racing creator linked its catalog first
            os.link(tmp, path)
    except (OSError, sqlite3.Error) as exc:
        raise CatalogError(f"cannot create catalog {path}: {exc}") from None
    finally:
        for leftover in ("", "-wal", "-shm"):
            Path(f"{tmp}{leftover}").unlink(missing_ok=True)


def _writable(path: Path) -> bool:
    """Whether we may write the file and, for SQLite's -wal and -shm files, its directory."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    """A connection to an existing file. One we may not write is opened read-only, and also
    immutable unless a writer's WAL is beside it: reading a WAL file needs a -shm file that a
    read-only directory cannot hold. (Immutable reads assume nobody writes meanwhile.)"""
    if not read_only:
        return sqlite3.connect(path, isolation_level=None, timeout=30.0)
    uri = path.resolve().as_uri() + "?mode=ro"
    if not Path(f"{path}-wal").exists():
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0)


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, path: Path, create: bool = True) -> None:
        """Open the catalog at `path`; with `create`, make a new one if nothing is there. An
        existing file that is not a catalog is refused and left as it was."""
        self.path = Path(path)
        try:
            self.url = f"sqlite:///{self.path.resolve()}"
            if self.path.is_dir():
                raise CatalogError(f"catalog path {self.path} is a directory, not a SQLite file")
            if not self.path.exists():
                if not create:
                    raise NotFoundError(f"no catalog at {self.path}")
                _create(self.path)
            self.read_only = not _writable(self.path)
            self._db = _connect(self.path, self.read_only)
        except (OSError, sqlite3.Error) as exc:
            raise CatalogError(f"cannot open catalog {self.path}: {exc}") from None
        try:
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise self._not_a_catalog(f"SQLite: {exc}") from None
        except CatalogError:
            self._db.close()
            raise

    # -- connection plumbing -------------------------------------------------------------------

    def _not_a_catalog(self, why: str) -> CatalogError:
        return CatalogError(
            f"{self.path} is not a circuitlab catalog ({why}); the file was not changed"
        )

    def _migrate(self) -> None:
        """Refuse a file that is not a catalog or is newer than us; upgrade an older one."""
        latest = len(MIGRATIONS)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master")}
        if not version or "records" not in tables:
            if tables:
                raise self._not_a_catalog("a SQLite database with other tables")
            empty = self.path.stat().st_size == 0
            raise self._not_a_catalog(
                "an empty file" if empty else "a SQLite database with no catalog tables"
            )
        if version > latest:
            raise SchemaVersionError(
                f"catalog {self.path} has schema version {version}, newer than this circuitlab "
                f"supports ({latest}): upgrade circuitlab"
            )
        if version == latest:
            return
        if self.read_only:
            raise CatalogError(
                f"catalog {self.path} has schema version {version}, older than this "
                f"circuitlab's ({latest}), and is read-only here: open it once with write "
                "access to upgrade it"
            )
        with self._tx() as db:
            _upgrade(db, db.execute("PRAGMA user_version").fetchone()[0])  # maybe done by now

    @contextmanager
    def _tx(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; rolled back on any exception (a killed process leaves the WAL
        uncommitted, which SQLite discards on the next open)."""
        if immediate and self.read_only:
            raise CatalogError(
                f"catalog {self.path} is read-only here (no write permission for the file or "
                "its directory)"
            )
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            yield db
        except BaseException as exc:
            db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from None
            raise
        else:
            try:
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                raise self._error(exc) from None

    def _read(self) -> Any:
        return self._tx(immediate=False)

    def _error(self, exc: sqlite3.Error) -> CatalogError:
        return CatalogError(f"catalog {self.path}: SQLite error: {exc}")

    def close(self) -> None:
        self._db.close()

    # -- writes --------------------------------------------------------------------------------

    def write_many(self, plans: list[Plan]) -> None:
        with self._tx() as db:
            for plan in plans:
                self._write_one(db, plan)

    def _write_one(self, db: sqlite3.Connection, plan: Plan) -> None:
        for rid, allowed in plan.requires:
            row = db.execute("SELECT kind FROM records WHERE id = ?", (rid,)).fetchone()
            if row is None or row[0] not in allowed:
                what = "nothing" if row is None else f"a {row[0]}"
                raise NotFoundError(
                    f"{plan.kind} {plan.id[:12]} refers to {rid!r}, which is {what} in the "
                    f"catalog (expected a {' or '.join(allowed)}): put it first"
                )
        old = db.execute("SELECT kind FROM records WHERE id = ?", (plan.id,)).fetchone()
        if old is not None:
            self._delete_one(db, plan.id, old[0], keep_implements=True)
        db.execute(
            "INSERT INTO records (id, kind, name, data) VALUES (?, ?, ?, ?)",
            (plan.id, plan.kind, plan.name, _dumps(plan.data)),
        )
        if plan.kind == "circuit":
            self._write_circuit(db, plan)
        db.executemany(
            "INSERT OR REPLACE INTO links (src, rel, dst, src_kind, dst_kind, ordinal, props) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (k.src, k.rel, k.dst, k.src_kind, k.dst_kind, k.ordinal, _dumps(k.props))
                for k in plan.links
            ],
        )

    def _write_circuit(self, db: sqlite3.Connection, plan: Plan) -> None:
        complexity = plan.data["tags"]["complexity"]
        ck = db.execute(
            "INSERT INTO circuits (id, task, model, complexity, summary) VALUES (?, ?, ?, ?, ?)",
            (plan.id, plan.task, plan.model, complexity, _dumps(plan.summary)),
        ).lastrowid
        db.executemany(
            "INSERT INTO features (id, model, node_type, layer, idx, position, transcoder, "
            "label, description, stats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET label = excluded.label, "
            "description = excluded.description, stats = excluded.stats "
            "WHERE label != excluded.label OR description != excluded.description "
            "OR stats != excluded.stats",
            [
                (
                    f["id"],
                    f["model"],
                    f["node_type"],
                    f["layer"],
                    f["index"],
                    f["position"],
                    f["transcoder"],
                    f["label"],
                    f["description"],
                    _dumps(f["stats"]) if f["stats"] else "{}",
                )
                for f in plan.features
            ],
        )
        fk = self._feature_keys(db, [f["id"] for f in plan.features])
        db.executemany(
            "INSERT INTO circuit_features (ck, ordinal, fk, activation, influence) "
            "VALUES (?, ?, ?, ?, ?)",
            [(ck, i, fk[f], a, inf) for i, (f, a, inf) in enumerate(plan.nodes)],
        )
        db.executemany(
            "INSERT INTO attributions (ck, ordinal, src, dst, weight) VALUES (?, ?, ?, ?, ?)",
            ((ck, i, fk[s], fk[t], w) for i, (s, t, w) in enumerate(plan.edges)),
        )
        db.executemany(
            "INSERT INTO circuit_tags (tag, ck) VALUES (?, ?)", [(t, ck) for t in plan.tags]
        )
        db.executemany(
            "INSERT OR IGNORE INTO circuit_domains (domain, side, ck, port) VALUES (?, ?, ?, ?)",
            [(dom, side, ck, port) for side, port, dom in plan.domains],
        )
        db.executemany(
            "INSERT INTO circuit_metrics (name, ck, value) VALUES (?, ?, ?)",
            [(k, ck, v) for k, v in plan.metrics.items()],
        )
        db.execute(
            "INSERT INTO circuit_text (rowid, body) VALUES (?, ?)", (ck, " ".join(plan.tokens))
        )

    def _feature_keys(self, db: sqlite3.Connection, ids: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for chunk in _chunks(ids):
            out.update(
                db.execute(f"SELECT id, fk FROM features WHERE id IN ({_marks(len(chunk))})", chunk)
            )
        return out

    def delete(self, targets: list[tuple[str, str]]) -> None:
        with self._tx() as db:
            for rid, kind in targets:
                self._delete_one(db, rid, kind, keep_implements=False)

    def _delete_one(
        self, db: sqlite3.Connection, rid: str, kind: str, keep_implements: bool
    ) -> None:
        """Remove a record's rows. Replacing a circuit or function keeps the IMPLEMENTS links
        (and their records) that other puts made; deleting removes them."""
        if kind == "feature":
            db.execute("DELETE FROM features WHERE id = ?", (rid,))
            return
        db.execute("DELETE FROM records WHERE id = ?", (rid,))
        if kind == "implements":
            db.execute(
                "DELETE FROM links WHERE rel = 'IMPLEMENTS' AND json_extract(props, '$.id') = ?",
                (rid,),
            )
            return
        if keep_implements:
            db.execute("DELETE FROM links WHERE src = ? AND rel != 'IMPLEMENTS'", (rid,))
        else:
            implements = db.execute(
                "SELECT json_extract(props, '$.id') FROM links WHERE rel = 'IMPLEMENTS' "
                "AND (src = ? OR dst = ?)",
                (rid, rid),
            ).fetchall()
            db.executemany("DELETE FROM records WHERE id = ?", implements)
            db.execute(
                "DELETE FROM links WHERE src = ? OR (dst = ? AND rel = 'IMPLEMENTS')", (rid, rid)
            )
        if kind != "circuit":
            return
        ck = db.execute("SELECT ck FROM circuits WHERE id = ?", (rid,)).fetchone()[0]
        fks = [r[0] for r in db.execute("SELECT fk FROM circuit_features WHERE ck = ?", (ck,))]
        for table in (
            "circuit_features",
            "attributions",
            "circuit_tags",
            "circuit_domains",
            "circuit_metrics",
        ):
            db.execute(f"DELETE FROM {table} WHERE ck = ?", (ck,))
        db.execute("DELETE FROM circuit_text WHERE rowid = ?", (ck,))
        db.execute("DELETE FROM circuits WHERE ck = ?", (ck,))
        for chunk in _chunks(fks):
            db.execute(
                f"DELETE FROM features WHERE fk IN ({_marks(len(chunk))}) "
                "AND NOT EXISTS (SELECT 1 FROM circuit_features cf WHERE cf.fk = features.fk)",
                chunk,
            )

    # -- reads ---------------------------------------------------------------------------------

    def kinds(self, ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self._read() as db:
            for chunk in _chunks(list(ids)):
                m = _marks(len(chunk))
                out.update(db.execute(f"SELECT id, kind FROM records WHERE id IN ({m})", chunk))
                out.update(
                    db.execute(f"SELECT id, 'feature' FROM features WHERE id IN ({m})", chunk)
                )
        return out

    def resolve(self, prefix: str, limit: int) -> list[tuple[str, str]]:
        hi = prefix + "\U0010ffff"
        with self._read() as db:
            rows = db.execute(
                "SELECT id, kind FROM records WHERE id >= ? AND id < ? "
                "UNION ALL SELECT id, 'feature' FROM features WHERE id >= ? AND id < ? "
                "ORDER BY 1 LIMIT ?",
                (prefix, hi, prefix, hi, limit),
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def load(self, id: str, kind: str, edges: bool = True) -> Loaded | None:
        with self._read() as db:
            if kind == "feature":
                row = db.execute(
                    f"SELECT {_FEATURE_SELECT} FROM features f WHERE id = ?", (id,)
                ).fetchone()
                return None if row is None else Loaded("feature", id, _feature_json(row))
            row = db.execute(
                "SELECT data FROM records WHERE id = ? AND kind = ?", (id, kind)
            ).fetchone()
            if row is None:
                return None
            loaded = Loaded(kind, id, json.loads(row[0]))
            if kind != "circuit":
                return loaded
            ck = db.execute("SELECT ck FROM circuits WHERE id = ?", (id,)).fetchone()[0]
            fid: dict[int, str] = {}
            for r in db.execute(
                f"SELECT f.fk, f.id, {_FEATURE_SELECT}, cf.activation, cf.influence "
                "FROM circuit_features cf JOIN features f ON f.fk = cf.fk WHERE cf.ck = ? "
                "ORDER BY cf.ordinal",
                (ck,),
            ):
                fid[r[0]] = r[1]
                loaded.node_ids.append(r[1])
                loaded.nodes.append((_feature_json(r[2:11]), r[11], r[12]))
            if not edges:
                return loaded
            loaded.edges = [
                (fid[s], fid[t], w)
                for s, t, w in db.execute(
                    "SELECT src, dst, weight FROM attributions WHERE ck = ? ORDER BY ordinal", (ck,)
                )
            ]
            return loaded

    def names(self, ids: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self._read() as db:
            for chunk in _chunks(list(ids)):
                m = _marks(len(chunk))
                out.update(db.execute(f"SELECT id, name FROM records WHERE id IN ({m})", chunk))
        return out

    def ids(self, kind: str, limit: int | None, offset: int) -> list[str]:
        lim = -1 if limit is None else limit
        with self._read() as db:
            if kind == "feature":
                rows = db.execute(
                    "SELECT id FROM features ORDER BY id LIMIT ? OFFSET ?", (lim, offset)
                )
            else:
                rows = db.execute(
                    "SELECT id FROM records WHERE kind = ? ORDER BY id LIMIT ? OFFSET ?",
                    (kind, lim, offset),
                )
            return [r[0] for r in rows]

    def search(self, query: Query) -> list[str]:
        where: list[str] = []
        args: list[Any] = []
        join = ""
        for column in ("task", "model", "complexity"):
            value = getattr(query, column)
            if value is not None:
                where.append(f"c.{column} = ?")
                args.append(value)
        for tag in query.tags:
            where.append("EXISTS (SELECT 1 FROM circuit_tags t WHERE t.tag = ? AND t.ck = c.ck)")
            args.append(tag)
        if query.domain is not None:
            where.append(
                "EXISTS (SELECT 1 FROM circuit_domains d WHERE d.domain = ? AND d.ck = c.ck)"
            )
            args.append(query.domain)
        if query.tokens:
            where.append("c.ck IN (SELECT rowid FROM circuit_text WHERE circuit_text MATCH ?)")
            args.append(" ".join(f'"{t}"' for t in query.tokens))
        if query.feature is not None:
            where.append(
                "c.ck IN (SELECT cf.ck FROM circuit_features cf JOIN features f ON f.fk = cf.fk "
                "WHERE f.id = ?)"
            )
            args.append(query.feature)
        for bounds, op in ((query.minimum, ">="), (query.maximum, "<=")):
            for name, value in sorted(bounds.items()):
                where.append(
                    "EXISTS (SELECT 1 FROM circuit_metrics m WHERE m.name = ? AND m.ck = c.ck "
                    f"AND m.value {op} ?)"
                )
                args += [name, value]
        if query.order_by == "id":
            order = "c.id"
        elif query.order_by == "task":
            order = "c.task, c.id"
        else:
            join = "LEFT JOIN circuit_metrics om ON om.ck = c.ck AND om.name = ?"
            args.insert(0, query.order_by)
            order = "om.value IS NULL, om.value DESC, c.id"
        sql = f"SELECT c.id FROM circuits c {join}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order} LIMIT ? OFFSET ?"
        args += [-1 if query.limit is None else query.limit, query.offset]
        with self._read() as db:
            return [r[0] for r in db.execute(sql, args)]

    def summaries(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self._read() as db:
            for chunk in _chunks(list(ids)):
                rows = db.execute(
                    f"SELECT id, summary FROM circuits WHERE id IN ({_marks(len(chunk))})", chunk
                )
                out.update((i, json.loads(s)) for i, s in rows)
        return out

    def metric_names(self) -> list[str]:
        with self._read() as db:
            rows = db.execute("SELECT DISTINCT name FROM circuit_metrics ORDER BY name")
            return [r[0] for r in rows]

    def find_features(self, filters: dict[str, Any], limit: int | None) -> list[str]:
        where = [f"{_FEATURE_COLUMNS[k]} = ?" for k in sorted(filters)]
        args = [filters[k] for k in sorted(filters)]
        sql = "SELECT id FROM features"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id LIMIT ?"
        with self._read() as db:
            return [r[0] for r in db.execute(sql, [*args, -1 if limit is None else limit])]

    def graph_edges(
        self, circuit: str, min_abs_weight: float, top_k: int | None
    ) -> list[tuple[str, str, float]]:
        with self._read() as db:
            return [
                (s, t, w)
                for s, t, w in db.execute(
                    "SELECT fs.id, ft.id, a.weight FROM attributions a "
                    "JOIN circuits c ON c.ck = a.ck JOIN features fs ON fs.fk = a.src "
                    "JOIN features ft ON ft.fk = a.dst WHERE c.id = ? AND abs(a.weight) >= ? "
                    "ORDER BY abs(a.weight) DESC, a.ordinal LIMIT ?",
                    (circuit, min_abs_weight, -1 if top_k is None else top_k),
                )
            ]

    def links(self, ids: list[str], rel: str, direction: str) -> list[Link]:
        column = "src" if direction == "out" else "dst"
        out: list[Link] = []
        with self._read() as db:
            for chunk in _chunks(list(ids)):
                rows = db.execute(
                    "SELECT rel, src, src_kind, dst, dst_kind, props, ordinal FROM links "
                    f"WHERE rel = ? AND {column} IN ({_marks(len(chunk))})",
                    [rel, *chunk],
                )
                out += [Link(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6]) for r in rows]
        return sorted(out, key=lambda k: (k.src, k.dst))

    def compatible(self, circuit: str, direction: str) -> list[tuple[str, str, str, str]]:
        side = "cu" if direction == "downstream" else "cd"
        sql = (
            "SELECT cu.id, cd.id, din.port, din.domain FROM circuit_domains dout "
            "JOIN circuit_domains din ON din.domain = dout.domain AND din.side = 'in' "
            "JOIN circuits cu ON cu.ck = dout.ck JOIN circuits cd ON cd.ck = din.ck "
            f"WHERE dout.side = 'out' AND {side}.id = ? ORDER BY cu.id, cd.id, din.port"
        )
        with self._read() as db:
            return [tuple(r) for r in db.execute(sql, (circuit,))]

    def counts(self) -> dict[str, int]:
        with self._read() as db:
            out = dict(db.execute("SELECT kind, count(*) FROM records GROUP BY kind").fetchall())
            out["feature"] = db.execute("SELECT count(*) FROM features").fetchone()[0]
            out["HAS_FEATURE"] = db.execute("SELECT count(*) FROM circuit_features").fetchone()[0]
            out["ATTRIBUTES"] = db.execute("SELECT count(*) FROM attributions").fetchone()[0]
            out.update(db.execute("SELECT rel, count(*) FROM links GROUP BY rel").fetchall())
        return out


_FEATURE_SELECT = (
    "f.model, f.node_type, f.layer, f.idx, f.position, f.transcoder, f.label, f.description, "
    "f.stats"
)


def _feature_json(row: tuple[Any, ...]) -> dict[str, Any]:
    model, node_type, layer, idx, position, transcoder, label, description, stats = row
    return {
        "model": model,
        "node_type": node_type,
        "layer": layer,
        "index": idx,
        "position": position,
        "transcoder": transcoder,
        "label": label,
        "description": description,
        "stats": {} if stats == "{}" else json.loads(stats),
    }
