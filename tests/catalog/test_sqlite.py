"""SQLite backend specifics: file handling, WAL, schema versions, concurrent reader."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from circuitlab.catalog import (
    CatalogError,
    NotFoundError,
    SchemaVersionError,
    default_url,
    open_catalog,
    synthetic,
)
from circuitlab.catalog.sqlite import SCHEMA_VERSION


def test_new_file_gets_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "cat.db"
    with open_catalog(f"sqlite:///{path}") as cat:
        assert cat.url == f"sqlite:///{path.resolve()}"
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_url_forms_and_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_catalog("sqlite:rel.db") as cat:
        assert cat.url.endswith("/rel.db")
    with open_catalog(tmp_path / "plain.db") as cat:
        assert cat.backend.name == "sqlite"
    monkeypatch.setenv("CIRCUITLAB_CATALOG", str(tmp_path / "env.db"))
    assert default_url() == str(tmp_path / "env.db")
    with open_catalog() as cat:
        assert cat.url.endswith("/env.db")
    monkeypatch.delenv("CIRCUITLAB_CATALOG")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_url() == f"sqlite:///{tmp_path}/home/.circuitlab/catalog.db"
    for bad in ("", "sqlite://host/x.db", "mysql://x/y", "sqlite:"):
        with pytest.raises(CatalogError):
            open_catalog(bad)


def test_missing_file_is_not_created_when_reading(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no catalog at"):
        open_catalog(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(CatalogError, match="directory"):
        open_catalog(tmp_path)


def _foreign_db(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE people (name TEXT)")
    db.commit()
    db.close()


def _empty_db(path: Path) -> None:
    """A valid SQLite file holding nothing (what a half-made catalog looked like)."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.close()


@pytest.mark.parametrize("create", [False, True])
@pytest.mark.parametrize(
    "make, what",
    [
        (lambda p: p.write_bytes(b""), "an empty file"),
        (
            lambda p: p.write_bytes(b"this is not a database at all\n" * 200),
            "file is not a database",
        ),
        (_foreign_db, "other tables"),
        (_empty_db, "no catalog tables"),
    ],
)
def test_files_that_are_not_catalogs_are_refused_untouched(
    tmp_path: Path, make, what: str, create: bool
) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.db"
    make(path)
    before = path.read_bytes()
    with pytest.raises(CatalogError, match="is not a circuitlab catalog") as err:
        open_catalog(path, create=create)
    assert what in str(err.value) and "\n" not in str(err.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.db"]


def _unwritable(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Make `path` and its directory look read-only to us (as another user's catalog is)."""
    real = os.access

    def access(p, mode, **kw):  # type: ignore[no-untyped-def]
        if mode & os.W_OK and Path(p).resolve() in (path.resolve(), path.resolve().parent):
            return False
        return real(p, mode, **kw)

    monkeypatch.setattr(os, "access", access)


def _filled(path: Path) -> synthetic.World:
    world = synthetic.world(4)
    with open_catalog(path) as cat:
        for record in world.records():
            cat.put(record)
    return world


def _read_everything(path: Path, world: synthetic.World, tmp_path: Path) -> None:
    from circuitlab.catalog import export_catalog

    with open_catalog(path, create=False) as cat:
        assert cat.stats().counts["circuit"] == 4
        assert cat.get(world.circuits[1].id) == world.circuits[1]
        assert len(cat.search(task="add_mod_113")) == 4
        export_catalog(cat, tmp_path / "out" / "all.jsonl")
        with pytest.raises(CatalogError, match="read-only"):
            cat.put(synthetic.circuit(world.model, seed=50, n_features=10, n_edges=20))


def test_a_catalog_we_cannot_write_is_read_without_a_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cat" / "cat.db"
    world = _filled(path)
    before = path.read_bytes()
    _unwritable(monkeypatch, path)
    _read_everything(path, world, tmp_path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["cat.db"]  # no -wal or -shm made


def test_a_catalog_we_cannot_write_shows_what_its_writer_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cat.db"
    world = _filled(path)
    extra = synthetic.circuit(world.model, seed=60, n_features=10, n_edges=20)
    with open_catalog(path) as writer:  # its WAL holds the latest commits until it closes
        writer.put(extra)
        assert Path(f"{path}-wal").exists()
        _unwritable(monkeypatch, path)
        with open_catalog(path, create=False) as reader:
            assert reader.get(extra.id) == extra


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only files")
def test_a_read_only_catalog_in_a_read_only_directory(tmp_path: Path) -> None:
    path = tmp_path / "cat" / "cat.db"
    world = _filled(path)
    path.chmod(0o444)
    path.parent.chmod(0o555)
    try:
        _read_everything(path, world, tmp_path)
    finally:
        path.parent.chmod(0o755)
        path.chmod(0o644)


def test_a_new_catalog_appears_whole_even_to_racing_creators(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "new" / "cat.db"

    def create(_: int) -> int:
        with open_catalog(path) as cat:
            return cat.stats().counts["task"]

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(create, range(8))) == [0] * 8
    assert [p.name for p in path.parent.iterdir()] == ["cat.db"]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cat.db"
    with open_catalog(path) as cat:
        cat.put(synthetic.task())
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(SchemaVersionError, match="newer than this circuitlab"):
        open_catalog(path)


def test_a_truncated_file_gives_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "cat.db"
    with open_catalog(path) as cat:
        world = synthetic.world(6)
        for record in world.records():
            cat.put(record)
    data = path.read_bytes()
    page = 4096  # keep the header page, scramble the b-tree pages behind it
    path.write_bytes(data[:page] + bytes((i * 7 + 3) % 251 for i in range(len(data) - page)))
    with pytest.raises(CatalogError), open_catalog(path) as cat:
        for cid in cat.ids("circuit"):
            cat.get(cid)
        cat.stats()


def test_a_reader_sees_committed_data_while_a_writer_writes(tmp_path: Path) -> None:
    path = tmp_path / "cat.db"
    world = synthetic.world(4)
    writer = open_catalog(path)
    reader = open_catalog(path, create=False)
    for record in world.records():
        writer.put(record)
    # The writer holds a write transaction open; the reader still reads the last commit.
    writer.backend._db.execute("BEGIN IMMEDIATE")
    writer.backend._db.execute("DELETE FROM records")
    assert reader.get(world.circuits[0].id) == world.circuits[0]
    assert reader.stats().counts["circuit"] == 4
    writer.backend._db.execute("ROLLBACK")
    writer.close()
    reader.close()


def _version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_migrations_run_forward_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from circuitlab.catalog import sqlite as backend

    world = synthetic.world(4)
    paths = [tmp_path / "good.db", tmp_path / "bad.db"]
    for path in paths:
        with open_catalog(path) as cat:
            for record in world.records():
                cat.put(record)
    base = list(backend.MIGRATIONS)
    step = ["ALTER TABLE circuits ADD COLUMN note TEXT", "UPDATE circuits SET note = 'v2'"]
    monkeypatch.setattr(backend, "MIGRATIONS", [*base, step])
    with open_catalog(paths[0]) as cat:
        assert cat.get(world.circuits[1].id) == world.circuits[1]
        notes = cat.backend._db.execute("SELECT DISTINCT note FROM circuits").fetchall()
    assert notes == [("v2",)] and _version(paths[0]) == SCHEMA_VERSION + 1
    # A step that fails half-way leaves the file at the old version, data untouched.
    monkeypatch.setattr(backend, "MIGRATIONS", [*base, [step[0], "THIS IS NOT SQL"]])
    with pytest.raises(CatalogError, match="syntax error"):
        open_catalog(paths[1])
    assert _version(paths[1]) == SCHEMA_VERSION
    monkeypatch.setattr(backend, "MIGRATIONS", base)
    with open_catalog(paths[1]) as cat:
        columns = [r[1] for r in cat.backend._db.execute("PRAGMA table_info(circuits)")]
        assert "note" not in columns
        assert cat.get(world.circuits[2].id) == world.circuits[2]
