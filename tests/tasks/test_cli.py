"""`circuitlab tasks`: the listing, --show/--json, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from circuitlab.cli import app
from circuitlab.tasks import families

runner = CliRunner()


def test_lists_every_family_with_sizes() -> None:
    result = runner.invoke(app, ["tasks"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for family in families():
        assert family.example in result.output
        assert f"{family.name}:" in result.output
    assert "12,769" in result.output  # add_mod_113: 113^2 pairs
    assert "14,400" in result.output  # s5_compose: 120^2 pairs
    assert "19,683" in result.output  # grid_rot90_3x3: 3^9 grids


def test_json_and_show() -> None:
    result = runner.invoke(app, ["tasks", "sub_mod_5", "s3_compose", "--json", "--show", "3"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert [r["spec"] for r in records] == ["sub_mod_5", "s3_compose"]
    assert records[0]["examples"] == 25 and records[1]["examples"] == 36
    for line in records[0]["samples"]:
        a, b, eq, arrow, c = line.split()
        assert (eq, arrow) == ("=", "->") and (int(a) - int(b)) % 5 == int(c)
    assert len(records[1]["samples"]) == 3


def test_show_renders_grids_as_rows() -> None:
    result = runner.invoke(app, ["tasks", "grid_mirror_3x4_c2", "--show", "2"])
    assert result.exit_code == 0, result.output
    lines = [ln.strip() for ln in result.output.splitlines() if "->" in ln and "/" in ln]
    assert len(lines) == 2
    for line in lines:
        left, right = line.split(" -> ")
        assert [row[::-1] for row in left.split("/")] == right.split("/")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    code = "from circuitlab.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_bad_spec_is_one_line_and_exit_2() -> None:
    for spec, words in [
        ("add_mod_100", "p must be a prime"),
        ("grid_rot90_3x4", "square grid"),
        ("nonsense", "unknown task"),
        ("synth_mod_7[a+b-b]", "ill-posed"),
    ]:
        proc = _run("tasks", spec)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in proc.stderr
        assert proc.stdout == ""
