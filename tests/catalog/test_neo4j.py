"""Neo4j backend specifics: URLs, credentials and unreachable servers give one-line errors."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from circuitlab.catalog import CatalogError, SchemaVersionError, open_catalog, synthetic

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
    server = request.getfixturevalue("arcadedb_server")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return server.url


def test_the_local_server_password_is_fresh_and_off_the_command_line(
    request: pytest.FixtureRequest,
) -> None:
    pytest.importorskip("arcadedb_embedded")
    from circuitlab.catalog import arcadedb

    server = request.getfixturevalue("arcadedb_server")
    password = server.env()["NEO4J_PASSWORD"]
    assert len(password) >= 32 and not hasattr(arcadedb, "ROOT_PASSWORD")
    assert password not in Path(f"/proc/{server._proc.pid}/cmdline").read_text(errors="replace")


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


def test_a_circuit_stored_with_leftover_links_is_a_clear_error(bolt_env: str) -> None:
    """Catalogs written before the ArcadeDB delete workaround may hold duplicate HAS_FEATURE
    links: reading such a circuit says so instead of failing on a duplicate feature later."""
    world = synthetic.world(3)
    with open_catalog(bolt_env) as cat:
        cat.backend.wipe()
        for record in (world.task, world.model, world.child, *world.circuits):
            cat.put(record)
        circuit = world.circuits[1]
        cat.backend._rows(
            "MATCH (c:Circuit {id: $id})-[h:HAS_FEATURE]->(f:Feature) WITH c, h, f LIMIT 3 "
            "CREATE (c)-[:HAS_FEATURE {ordinal: h.ordinal}]->(f)",
            id=circuit.id,
        )
        for read in (cat.get, cat.graph):
            with pytest.raises(CatalogError, match="23 HAS_FEATURE links for 20 features") as err:
                read(circuit.id)
            assert "put the circuit again" in str(err.value)
        cat.put(circuit)  # the repair the message suggests
        assert cat.get(circuit.id) == circuit
        cat.backend.wipe()


def test_a_transient_conflict_is_retried(bolt_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """ArcadeDB refuses concurrent changes to one page with DeadlockDetected, "Please retry the
    operation": a put replays its transaction, as it does after a uniqueness conflict."""
    import neo4j

    world = synthetic.world(3)
    with open_catalog(bolt_env) as cat:
        cat.backend.wipe()
        original = type(cat.backend)._write_many
        failures = [1, 1]

        def flaky(self, plans):  # type: ignore[no-untyped-def]
            if failures:
                failures.pop()
                with self._guard():
                    raise neo4j.exceptions.TransientError("Please retry the operation")
            return original(self, plans)

        monkeypatch.setattr(type(cat.backend), "_write_many", flaky)
        cat.put(world.task)
        assert not failures and cat.exists(world.task.id)
        cat.backend.wipe()
