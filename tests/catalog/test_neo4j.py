"""Neo4j backend specifics: URLs, credentials and unreachable servers give one-line errors."""

from __future__ import annotations

import socket

import pytest

from circuitlab.catalog import CatalogError, SchemaVersionError, open_catalog

pytest.importorskip("neo4j")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_is_one_clear_error() -> None:
    url = f"bolt://127.0.0.1:{_closed_port()}"
    with pytest.raises(CatalogError, match="cannot reach Neo4j at bolt://127.0.0.1") as err:
        open_catalog(url)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "url, message",
    [
        ("bolt://127.0.0.1:notaport", "bad port"),
        ("neo4j://", "no host"),
        ("bolt://user:secret@127.0.0.1:7687", "NEO4J_USER and NEO4J_PASSWORD"),
        ("bolt://127.0.0.1:7687/a/b", "malformed"),
        ("bolt://127.0.0.1:7687?x=1", "malformed"),
    ],
)
def test_malformed_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        open_catalog(url)


@pytest.fixture
def bolt_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The session's local ArcadeDB Bolt server, with its credentials in the environment."""
    pytest.importorskip("arcadedb_embedded")
    from circuitlab.catalog.arcadedb import LocalBoltServer

    arcadedb_server = request.getfixturevalue("arcadedb_server")
    for key, value in LocalBoltServer.env().items():
        monkeypatch.setenv(key, value)
    return arcadedb_server


def test_wrong_credentials_are_one_clear_error(
    bolt_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEO4J_PASSWORD", "not-the-password")
    with pytest.raises(CatalogError, match="refused the credentials \\(user 'root'\\)") as err:
        open_catalog(bolt_env)
    assert "\n" not in str(err.value)


def test_a_newer_schema_on_the_server_is_refused(bolt_env: str) -> None:
    cat = open_catalog(bolt_env)
    try:
        cat.backend._rows("MATCH (m:CatalogMeta {key: 'schema'}) SET m.version = 99")
        with pytest.raises(SchemaVersionError, match="newer than this circuitlab"):
            open_catalog(bolt_env)
    finally:
        cat.backend._rows("MATCH (m:CatalogMeta {key: 'schema'}) SET m.version = 1")
        cat.close()


def test_constraints_are_created_idempotently(bolt_env: str) -> None:
    for _ in range(2):
        with open_catalog(bolt_env) as cat:
            rows = cat.backend._rows("SHOW CONSTRAINTS")
    names = sorted(r["name"] for r in rows if r["name"].startswith("catalog_"))
    assert names == sorted(
        [
            "catalog_task_id",
            "catalog_model_id",
            "catalog_circuit_id",
            "catalog_feature_id",
            "catalog_function_id",
            "catalog_program_id",
            "catalog_meta_key",
        ]
    )
