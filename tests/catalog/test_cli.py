"""`circuitlab catalog ...`: tables, JSON output, export/import, one-line errors with exit 2."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from circuitlab.catalog import Function, export_catalog, open_catalog, synthetic
from circuitlab.cli import app, main

runner = CliRunner()


@pytest.fixture
def filled(tmp_path: Path) -> tuple[str, synthetic.World]:
    world = synthetic.world()
    path = str(tmp_path / "cat.db")
    with open_catalog(path) as cat:
        for record in world.records():
            cat.put(record)
    return path, world


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(directory, catalog, its export) for tests that only read them."""
    root = tmp_path_factory.mktemp("shared")
    with open_catalog(root / "cat.db") as cat:
        for record in synthetic.world().records():
            cat.put(record)
        export_catalog(cat, root / "all.jsonl")
    return root, root / "cat.db", root / "all.jsonl"


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


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `circuitlab catalog ARGS` in this process through `main` (which turns user errors
    into exit 2 and one line); any other exception propagates and fails the test."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["circuitlab", "catalog", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
    return exit_.value.code or 0, capsys.readouterr().err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "args, message",
    [
        (["-c", "mysql://x/y", "list"], "unsupported catalog URL"),
        (["-c", "bolt://127.0.0.1:{port}", "stats"], "cannot reach Neo4j"),
        (["-c", "bolt://127.0.0.1:notaport", "list"], "bad port"),
        (["-c", "bolt://[/x]:7687/db", "list"], "malformed catalog URL"),
        (["-c", "~no_such_user_xyz/cat.db", "stats"], "no_such_user_xyz"),
        (["-c", "bad\x00name.db", "stats"], "NUL"),
        (["-c", "{tmp}", "stats"], "is a directory"),
        (["-c", "{tmp}/absent.db", "list"], "no catalog at"),
        (["-c", "/proc/no/such/dir/cat.db", "import", "{dump}"], "cannot create catalog"),
        (["search", "--min", "necessity=abc"], "--min expects NAME=NUMBER"),
        (["search", "--max", "=1"], "--max expects NAME=NUMBER"),
        (["search", "--min", "necessity=nan"], "NaN is not a bound"),
        (["search", "--min", "no such metric=1"], "metric name must be"),
        (["search", "--order-by", "no such metric"], "order_by must be"),
        (["search", "--min", "sufficency=0.9"], "no circuit has a metric 'sufficency'"),
        (["search", "--order-by", "sufficency"], "known: accuracy, generality, necessity"),
        (["search", "--feature", "add_mod_113"], "is a task, not a feature"),
        (["show", "ffffffff"], "no record with id 'ffffffff'"),
        (["show", "ab"], "at least 4 characters"),
        (["lineage", "ffffffff"], "no record with id"),
        (["delete", "ffffffff"], "no record with id"),
        (["export", "{tmp}"], "Is a directory"),
        (["import", "{tmp}"], "cannot read"),
        (["import", "{db}"], "not UTF-8 text"),
    ],
)
def test_every_command_turns_mistakes_into_one_line(
    shared: tuple[Path, Path, Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    tmp_path, path, dump = shared
    values = {"tmp": tmp_path, "db": path, "dump": dump, "port": _closed_port()}
    args = [a.format(**values) for a in args]
    if args[0] != "-c":
        args = ["-c", str(path), *args]
    code, err = _main(capsys, *args)
    assert code == 2 and message in err, err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


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
    target = tmp_path / "no" / "such" / "target.db"
    result = runner.invoke(app, ["catalog", "-c", str(target), "import", str(bad)])
    assert result.exit_code != 0
    assert "line 6: circuit.edges[2].weight: expected a number" in str(result.exception)
    assert not (tmp_path / "no").exists()  # nothing is created for a file that is refused
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"format": "circuitlab-catalog", "schema": 99}) + "\n")
    result = runner.invoke(app, ["catalog", "-c", str(target), "import", str(newer)])
    assert "newer than this circuitlab" in str(result.exception)
    broken = json.loads(lines[5])
    broken["interpretation"]["label"] = "x" * 5_000
    bad.write_text("\n".join(lines[:5] + [json.dumps(broken)] + lines[6:]) + "\n")
    result = runner.invoke(app, ["catalog", "-c", str(target), "import", str(bad)])
    assert "line 6: circuit.interpretation.label: is 5,000 characters long" in str(result.exception)
    assert not (tmp_path / "no").exists()


HOSTILE = "[link=http://evil]x[/link] [/bold] \x1b[31mred"
SHOWN = r"[link=http://evil]x[/link] [/bold] \x1b[31mred"  # as text, ESC as a visible escape


def test_catalog_text_is_shown_as_text_never_as_markup(tmp_path: Path) -> None:
    world = synthetic.world(3)
    circuit = copy.deepcopy(world.circuits[1])
    circuit.interpretation.label = HOSTILE
    circuit.interpretation.description = HOSTILE + "\x07\r\x9b"
    for node in circuit.nodes:
        node.feature.label = HOSTILE
    function = Function(name=HOSTILE, description=HOSTILE)
    where = tmp_path / "[/bold]" / "[link=http://evil]cat.db"
    with open_catalog(where) as cat:
        for record in (world.task, world.model, world.child, circuit, function):
            cat.put(record)
    runs = [
        ["list"],
        ["list", "--kind", "function"],
        ["search", "--text", "evil"],
        ["show", circuit.id, "--top", "100"],
        ["show", circuit.nodes[0].feature.id],
        ["show", function.id],
        ["lineage", circuit.id],
        ["stats"],
        ["export", str(where.parent / "[/x].jsonl")],
    ]
    for args in runs:
        out = _run("-c", str(where), *args).output
        assert not set(out) & set("\x1b\x07\r\x9b"), args
        if args[0] not in ("stats", "export"):  # table cells may wrap between the two halves
            assert "[link=http://evil]x[/link] [/bold]" in out and r"\x1b[31mred" in out, args
    assert (where.parent / "[/x].jsonl").exists()
    out = _run("-c", str(where), "show", circuit.id).output
    assert f"  {SHOWN}\n" in out and SHOWN + r"\x07\r\x9b" in out
    for args in (["show", circuit.id, "--json"], ["list", "--json"]):
        out = _run("-c", str(where), *args).output
        assert not set(out) & set("\x1b\x9b")
        assert any(HOSTILE in str(v) for v in _strings(json.loads(out)))


def _strings(data: object) -> list[str]:
    if isinstance(data, dict):
        return [s for v in data.values() for s in _strings(v)]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return [data] if isinstance(data, str) else []


def test_long_stored_text_is_cut_when_shown(tmp_path: Path) -> None:
    """Catalogs written before the length limits may hold huge text: it shows quickly, cut."""
    from circuitlab.catalog._plan import plan_record

    long = "x" * 1_000_000  # no spaces: rich took minutes to wrap this
    world = synthetic.world(3)
    world.task.description = long
    circuit = copy.deepcopy(world.circuits[1])
    circuit.interpretation.label = circuit.interpretation.description = long
    circuit.nodes[0].feature.label = long
    path = str(tmp_path / "cat.db")
    with open_catalog(path) as cat:  # stored as an older circuitlab did, without limits
        for record in (world.task, world.model, world.child, circuit):
            cat.backend.write(plan_record(record.to_dict(), cat.backend.kinds, {}))
    runs = [  # a circuit's lines and edge table, another record's field table, a summary table
        ["show", circuit.id, "--top", "100"],
        ["show", world.task.id],
        ["list"],
    ]
    for args in runs:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", "from circuitlab.cli import main; main()", "catalog"]
            + ["-c", path, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "160"},
        )
        assert proc.returncode == 0, proc.stderr
        assert time.monotonic() - started < 20, args
        assert "… (1,000,000 characters)" in proc.stdout, args
        assert len(proc.stdout) < 100_000
    shown = json.loads(_run("-c", path, "show", circuit.id, "--json").output)
    assert shown["interpretation"]["label"] == long


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write read-only files")
def test_reading_commands_work_on_a_read_only_catalog(filled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, world = filled
    Path(path).chmod(0o444)
    Path(path).parent.chmod(0o555)
    try:
        for args in (
            ["stats"],
            ["list"],
            ["search", "--tag", "Logic"],
            ["show", world.circuits[1].id],
            ["export", str(tmp_path.parent / f"{tmp_path.name}-export.jsonl")],
        ):
            _run("-c", path, *args)
    finally:
        Path(path).parent.chmod(0o755)
        Path(path).chmod(0o644)


def test_catalog_goes_after_the_subcommand_like_every_option(filled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, world = filled
    before = json.loads(_run("-c", path, "list", "--json", "--limit", "100").output)
    after = json.loads(_run("list", "--json", "--limit", "100", "--catalog", path).output)
    assert after == before and len(after) == len(world.circuits)
    assert json.loads(_run("list", "-c", path, "-c", path, "--json").output)
    assert json.loads(_run("-c", path, "list", "-c", path, "--json").output)  # same: fine
    c = world.circuits[3]
    assert json.loads(_run("show", c.id[:8], "-c", path, "--json").output)["id"] == c.id
    assert json.loads(_run("stats", "--json", "-c", path).output)["backend"] == "sqlite"
    assert _run("search", "--tag", "Logic", "-c", path).output
    assert _run("lineage", world.child.id[:10], "-c", path).output
    dump, other = tmp_path / "all.jsonl", tmp_path / "copy.db"
    _run("export", str(dump), "-c", path)
    assert "imported" in _run("import", str(dump), "--catalog", str(other)).output
    assert "deleted" in _run("delete", world.child.id, "--cascade", "-c", str(other)).output


def test_two_different_catalogs_are_one_line_and_exit_2(filled, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path, _ = filled
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from circuitlab.cli import main; main()",
            "catalog",
            "-c",
            path,
            "list",
            "--catalog",
            str(tmp_path / "other.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--catalog given twice" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert not (tmp_path / "other.db").exists()


@pytest.mark.parametrize("form", ["existing", "slash"])
@pytest.mark.parametrize("command", [["catalog", "stats"], ["catalog", "import"], ["run", "p"]])
def test_a_directory_is_never_a_catalog(
    shared: tuple[Path, Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    form: str,
    command: list[str],
) -> None:
    """A folder (existing, or a path ending in /) is a registry's JSON folder: every command
    that opens a catalog refuses it in one line, and creates nothing."""
    _, _, dump = shared
    folder = tmp_path / "functions"
    if form == "existing":
        folder.mkdir()
    given = str(folder) if form == "existing" else f"{folder}/"
    args = [*command, *([str(dump)] if command[-1] == "import" else []), "-c", given]
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(sys, "argv", ["circuitlab", *args])
        with pytest.raises(SystemExit) as exit_:
            main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "is a directory: a catalog is a SQLite file or a URL" in err
    assert "a folder of JSON function files is a registry" in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert folder.exists() == (form == "existing")
    assert not folder.exists() or not any(folder.iterdir())
