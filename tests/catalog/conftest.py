"""Catalog fixtures: `cat` is an empty catalog on every available backend.

SQLite always; the Neo4j backend against a real ArcadeDB Bolt server started on loopback for the
test session (when `arcadedb-embedded` is installed); and against a real Neo4j when NEO4J_URI is
set. WARNING: with NEO4J_URI set, the tests delete every catalog node in that database.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from circuitlab.catalog import Catalog, open_catalog, synthetic

if TYPE_CHECKING:
    from circuitlab.catalog.arcadedb import LocalBoltServer


def _backends() -> list[str]:
    names = ["sqlite"]
    needed = ("arcadedb_embedded", "neo4j", "circuitlab.catalog.arcadedb")
    if all(importlib.util.find_spec(m) is not None for m in needed):
        names.append("arcadedb")
    if os.environ.get("NEO4J_URI"):
        names.append("neo4j")
    return names


BACKENDS = _backends()


@pytest.fixture(scope="session")
def arcadedb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBoltServer]:
    from circuitlab.catalog.arcadedb import LocalBoltServer

    root = tmp_path_factory.mktemp("arcadedb")
    with LocalBoltServer(root) as server:
        yield server


def _wipe(catalog: Catalog) -> None:
    catalog.backend.wipe()  # Neo4j backend only: delete every catalog node


@pytest.fixture(params=BACKENDS)
def cat(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Catalog]:
    if request.param == "sqlite":
        catalog = open_catalog(tmp_path / "catalog.db")
    elif request.param == "arcadedb":
        server = request.getfixturevalue("arcadedb_server")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        catalog = open_catalog(server.url)
        _wipe(catalog)
    else:
        catalog = open_catalog(os.environ["NEO4J_URI"])
        _wipe(catalog)
    try:
        yield catalog
    finally:
        catalog.close()


@pytest.fixture
def world() -> synthetic.World:
    return synthetic.world()
