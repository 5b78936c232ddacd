"""`circuitlab catalog ...`: tables, JSON output, export/import, one-line errors with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from circuitlab.catalog import open_catalog, synthetic
from circuitlab.cli import app

runner = CliRunner()


@pytest.fixture
def filled(tmp_path: Path) -> tuple[str, synthetic.World]:
    world = synthetic.world()
    path = str(tmp_path / "cat.db")
    with open_catalog(path) as cat:
        for record in world.records():
            cat.put(record)
    return path, world


def _run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, ["catalog", *args], env={"COLUMNS": "250", **(env or {})})
    assert result.exit_code == 0, result.output
    return result


def test_list_search_show_stats_as_json(filled) -> None:  # type: ignore[no-untyped-def]
    path, world = filled
    listed = json.loads(_run("-c", path, "list", "--json", "--limit", "100").output)
    assert [c["id"] for c in listed] == sorted(c.id for c in world.circuits)
    tasks = json.loads(_run("-c", path, "list", "--kind", "task", "--json").output)
    assert tasks == [{"id": "add_mod_113", "name": "add_mod_113"}]
    hits = json.loads(
        _run(
            "-c",
            path,
            "search",
            "--min",
            "sufficiency=0.5",
            "--order-by",
            "sufficiency",
            "--tag",
            "Logic",
            "--json",
        ).output
    )
    expect = sorted(
        (c for c in world.circuits if c.metrics.sufficiency >= 0.5 and "Logic" in c.tags.priors),
        key=lambda c: (-c.metrics.sufficiency, c.id),
    )
    assert [h["id"] for h in hits] == [c.id for c in expect] and hits
    c = world.circuits[3]
    shown = json.loads(_run("-c", path, "show", c.id[:8], "--json").output)
    assert shown == json.loads(json.dumps(c.to_dict()))
    stats = json.loads(_run("-c", path, "stats", "--json").output)
    assert stats["backend"] == "sqlite" and stats["counts"]["circuit"] == len(world.circuits)
    lineage = json.loads(_run("-c", path, "lineage", world.child.id[:10], "--json").output)
    kinds = {n["kind"] for n in lineage["nodes"]}
    assert kinds == {"task", "model", "circuit"}


def test_tables_for_people(filled) -> None:  # type: ignore[no-untyped-def]
    path, world = filled
    c = world.circuits[1]
    out = _run("-c", path, "show", c.id, "--top", "3").output
    assert c.interpretation.label in out and "strongest 3 edges" in out
    assert "interface (a: Z_113 @0, b: Z_113 @1) -> Z_113 @2" in out
    out = _run("-c", path, "list").output
    assert c.id[:12] in out and "suff." in out
    out = _run("-c", path, "show", "add_mod_113").output
    assert "(a + b) mod 113" in out
    assert "TRAINED_ON" in _run("-c", path, "stats").output


def test_env_var_selects_the_catalog(filled) -> None:  # type: ignore[no-untyped-def]
    path, world = filled
    out = _run("list", "--json", env={"CIRCUITLAB_CATALOG": path}).output
    assert len(json.loads(out)) == len(world.circuits)


def test_export_import_and_delete(filled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, world = filled
    dump = tmp_path / "all.jsonl"
    _run("-c", path, "export", str(dump))
    other = str(tmp_path / "copy.db")
    assert "imported" in _run("-c", other, "import", str(dump)).output
    again = tmp_path / "again.jsonl"
    _run("-c", other, "export", str(again))
    assert again.read_bytes() == dump.read_bytes()
    out = _run("-c", other, "delete", world.child.id, "--cascade").output
    assert "deleted" in out
    with open_catalog(other) as cat:
        assert not cat.exists(world.child.id)


@pytest.mark.parametrize(
    "args, message",
    [
        (["show", "ffff"], "no record with id 'ffff'"),
        (["search", "--min", "sufficiency"], "--min expects NAME=NUMBER"),
        (["search", "--text", "!!"], "no words"),
        (["list", "--kind", "galaxy"], "kind must be one of"),
        (["delete", "add_mod_113"], "referenced by"),
        (["import", "/nonexistent/file.jsonl"], "cannot read"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(filled, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    path, _ = filled
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from circuitlab.cli import main; main()",
            "catalog",
            "-c",
            path,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_missing_catalog_is_not_created_by_reading(tmp_path: Path) -> None:
    target = tmp_path / "none.db"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from circuitlab.cli import main; main()",
            "catalog",
            "-c",
            str(target),
            "stats",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "no catalog at" in proc.stderr
    assert not target.exists()


def test_bad_import_files_are_refused_before_writing(tmp_path: Path) -> None:
    good = synthetic.world(3)
    lines = [json.dumps({"format": "circuitlab-catalog", "schema": 1, "counts": {}})]
    lines += [json.dumps(r.to_dict()) for r in good.records()]
    broken = json.loads(lines[5])
    broken["edges"][2]["weight"] = "heavy"
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines[:5] + [json.dumps(broken)] + lines[6:]) + "\n")
    target = str(tmp_path / "target.db")
    result = runner.invoke(app, ["catalog", "-c", target, "import", str(bad)])
    assert result.exit_code != 0
    assert "line 6: circuit.edges[2].weight: expected a number" in str(result.exception)
    with open_catalog(target) as cat:
        assert sum(cat.stats().counts.values()) == 0
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"format": "circuitlab-catalog", "schema": 99}) + "\n")
    result = runner.invoke(app, ["catalog", "-c", target, "import", str(newer)])
    assert "newer than this circuitlab" in str(result.exception)
