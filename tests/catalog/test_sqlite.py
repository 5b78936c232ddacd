"""SQLite backend specifics: file handling, WAL, schema versions, concurrent reader."""

from __future__ import annotations

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


def test_corrupt_and_foreign_files_are_refused_untouched(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    content = b"this is not a database at all\n" * 200
    garbage.write_bytes(content)
    with pytest.raises(CatalogError, match="not a readable catalog"):
        open_catalog(garbage)
    assert garbage.read_bytes() == content
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE people (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(CatalogError, match="not a circuitlab catalog"):
        open_catalog(foreign)
    db = sqlite3.connect(foreign)
    assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("people",)]
    db.close()


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
