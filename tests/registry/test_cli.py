"""`circuitlab discover` and `circuitlab registry`: results, registration, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from circuitlab.cli import app
from circuitlab.registry import Registry

runner = CliRunner()


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def ke_csv(tmp_path: Path) -> Path:
    rows = [
        f"{m},{v},{(m * 37 + v * 11) % 23 - 11.5},{0.5 * m * v * v}"
        for m in range(1, 6)
        for v in range(1, 6)
    ]
    return _csv(tmp_path / "ke.csv", "m,v,junk,ke", rows)


def test_discover_registers_and_lists(ke_csv: Path, tmp_path: Path):
    reg = tmp_path / "reg"
    res = runner.invoke(app, ["discover", str(ke_csv), "--registry", str(reg)])
    assert res.exit_code == 0, res.output
    assert "MUL(0.5, MUL(m, SQUARE(v)))" in res.output and "junk" in res.output
    fn = Registry.open(reg).get("KE")
    assert [i.name for i in fn.inputs] == ["m", "v"] and fn.provenance.source == "discovered"
    res = runner.invoke(app, ["registry", "list", "--registry", str(reg)])
    assert res.exit_code == 0 and "KE@1" in res.output
    res = runner.invoke(app, ["registry", "show", "KE", "--registry", str(reg)])
    assert json.loads(res.output)["constants"] == {"c0": 0.5}


def test_discover_json_output(ke_csv: Path, tmp_path: Path):
    res = runner.invoke(
        app,
        [
            "discover",
            str(ke_csv),
            "--registry",
            str(tmp_path / "r"),
            "--no-register",
            "--json",
            "--name",
            "KIN",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["status"] == "exact" and out["registered"] is None
    assert out["relevance"] == {"m": True, "v": True, "junk": False}
    assert out["record"]["name"] == "KIN" and out["table"][-1]["chosen"]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "header, rows, message",
    [
        ("a,b,y", ["1,2,3", "2,3", "3,4,7", "4,5,9"], "line 3 has 2 values"),
        ("a,b,y", ["1,2,3", "2,x,5", "3,4,7", "4,5,9"], "non-numeric value 'x'"),
        ("a,b,y", ["1,2,3", "2,3,nan", "3,4,7", "4,5,9"], "outputs must be finite"),
        ("a,b,y", ["1,2,3", "2,3,inf", "3,4,7", "4,5,9"], "outputs must be finite"),
        ("a,b,c,y", ["1,2,3,4", "2,3,4,5"], "fewer than the unknowns"),
        ("a,b,y", [], "at least one data row"),
        ("y", ["1", "2", "3", "4"], "no input columns"),
    ],
)
def test_bad_csv_is_one_line_and_exit_2(tmp_path: Path, header, rows, message):
    path = _csv(tmp_path / "bad.csv", header, rows)
    res = runner.invoke(app, ["discover", str(path), "--registry", str(tmp_path / "r")])
    assert res.exit_code != 0
    assert message in str(res.exception) or message in res.output


def test_cli_errors_are_one_line_without_traceback(tmp_path: Path, ke_csv: Path):
    exe = Path(sys.executable).with_name("circuitlab")
    reg = tmp_path / "reg"
    cmd = [str(exe), "discover", str(ke_csv), "--registry", str(reg)]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    other = _csv(tmp_path / "other.csv", "m,v,ke", ["1,2,2", "2,3,6", "3,4,12", "4,5,20", "5,1,5"])
    taken = subprocess.run(
        [str(exe), "discover", str(other), "--registry", str(reg)], capture_output=True, text=True
    )
    assert taken.returncode == 2 and "already exists" in taken.stderr
    assert "Traceback" not in taken.stderr and len(taken.stderr.strip().splitlines()) == 1
    missing = subprocess.run(
        [str(exe), "discover", str(tmp_path / "nope.csv")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "no such file" in missing.stderr
    rng = np.random.default_rng(0)
    noisy = _csv(
        tmp_path / "noise.csv",
        "a,b,y",
        [f"{a:.3f},{b:.3f},{c:.3f}" for a, b, c in rng.uniform(-1, 1, (30, 3))],
    )
    failed = subprocess.run(
        [str(exe), "discover", str(noisy), "--registry", str(reg), "--max-cost", "3"],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 2 and "nothing registered" in failed.stderr
    assert [f.name for f in Registry.open(reg)] == ["KE"]


def test_discover_with_the_guide_and_approximate_fit(tmp_path: Path):
    rng = np.random.default_rng(1)
    rows = [
        f"{m:.4f},{v:.4f},{0.5 * m * v * v + e:.4f}"
        for m, v, e in zip(*rng.uniform(1, 10, (2, 80)), rng.normal(0, 0.3, 80), strict=True)
    ]
    path = _csv(tmp_path / "noisy.csv", "m,v,ke", rows)
    res = runner.invoke(
        app,
        [
            "discover",
            str(path),
            "--registry",
            str(tmp_path / "r"),
            "--approximate",
            "--proposer",
            "guide",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["status"] == "approximate" and out["proposer"] == "guide"
    assert Registry.open(tmp_path / "r").get("KE").status == "approximate"
    res = runner.invoke(app, ["discover", str(path), "--proposer", "magic", "--no-register"])
    assert res.exit_code != 0 and "uniform or guide" in str(res.exception)


def _product_csv(tmp_path: Path) -> Path:
    rows = [f"{m},{v},{m * v}" for m in range(1, 6) for v in range(1, 6)]
    return _csv(tmp_path / "product.csv", "m,v,ke", rows)


def test_no_register_never_refuses_a_taken_name(ke_csv: Path, tmp_path: Path):
    reg = tmp_path / "reg"
    assert runner.invoke(app, ["discover", str(ke_csv), "--registry", str(reg)]).exit_code == 0
    other = _product_csv(tmp_path)  # a different function under the taken name KE
    res = runner.invoke(app, ["discover", str(other), "--registry", str(reg), "--no-register"])
    assert res.exit_code == 0, res.output
    assert "MUL(m, v)" in res.output and "KE@1 is a different function" in res.output
    res = runner.invoke(
        app, ["discover", str(other), "--registry", str(reg), "--no-register", "--name", "KE"]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in reg.iterdir()) == ["KE@1.json"]


def test_rerun_on_the_same_csv_is_idempotent(ke_csv: Path, tmp_path: Path):
    reg = tmp_path / "reg"
    cmd = ["discover", str(ke_csv), "--registry", str(reg)]
    assert runner.invoke(app, cmd).exit_code == 0
    before = (reg / "KE@1.json").read_bytes()
    res = runner.invoke(app, cmd)
    assert res.exit_code == 0, res.output
    assert "already registered as KE@1 (same definition); nothing written" in res.output
    assert "MUL(0.5, MUL(m, SQUARE(v)))" in res.output  # found again, not as a call of KE
    out = json.loads(runner.invoke(app, [*cmd, "--json"]).output)
    assert out["registered"] == "KE@1" and out["written"] is False
    out = json.loads(runner.invoke(app, [*cmd, "--json", "--no-register"]).output)
    assert out["registered"] == "KE@1" and out["written"] is False
    assert sorted(p.name for p in reg.iterdir()) == ["KE@1.json"]
    assert (reg / "KE@1.json").read_bytes() == before


def test_a_name_taken_by_a_different_function_is_refused_with_what_to_do(
    ke_csv: Path, tmp_path: Path
):
    reg = tmp_path / "reg"
    assert runner.invoke(app, ["discover", str(ke_csv), "--registry", str(reg)]).exit_code == 0
    res = runner.invoke(app, ["discover", str(_product_csv(tmp_path)), "--registry", str(reg)])
    message = str(res.exception)
    assert res.exit_code != 0 and "a function named KE already exists" in message
    assert "--name" in message and "--no-register" in message
    assert sorted(p.name for p in reg.iterdir()) == ["KE@1.json"]


def test_excel_csv_with_a_byte_order_mark_and_units_in_the_header(tmp_path: Path):
    rows = [f"{m},{v},{0.5 * m * v * v}" for m in range(1, 6) for v in range(1, 6)]
    path = tmp_path / "excel.csv"
    path.write_text("\n".join(["mass (kg),speed (m/s),energy (J)", *rows]) + "\n", "utf-8-sig")
    reg = tmp_path / "reg"
    res = runner.invoke(app, ["discover", str(path), "--registry", str(reg)])
    assert res.exit_code == 0, res.output
    assert "'mass (kg)' -> mass_kg, 'speed (m/s)' -> speed_m_s, 'energy (J)' -> energy_J" in (
        res.output
    )
    fn = Registry.open(reg).get("ENERGY_J")
    assert [i.name for i in fn.inputs] == ["mass_kg", "speed_m_s"]
    assert fn.render() == "MUL(0.5, MUL(mass_kg, SQUARE(speed_m_s)))"
    for output in ("energy (J)", "energy_J"):  # the header or its identifier
        res = runner.invoke(
            app, ["discover", str(path), "-y", output, "--no-register", "--json", "--name", "E"]
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.output)["renamed"]["energy (J)"] == "energy_J"


@pytest.mark.parametrize(
    "header, message",
    [
        ("mass (kg),mass_kg,y", "columns 'mass (kg)' and 'mass_kg' both become the identifier"),
        ("a,a,y", "the header names column 'a' twice"),
    ],
)
def test_colliding_column_names_are_refused(tmp_path: Path, header: str, message: str):
    path = _csv(tmp_path / "c.csv", header, ["1,2,3", "2,3,5", "3,4,7", "4,5,9"])
    res = runner.invoke(app, ["discover", str(path), "--no-register"])
    assert res.exit_code != 0 and message in str(res.exception)


@pytest.mark.parametrize(
    "lines, message",
    [
        (["a,b,y", "", "1,2,3", "2,x,5", "3,4,7"], "line 4 has a non-numeric value 'x'"),
        (["a,b,y", "1,2,3", "", "2,3,nan", "3,4,7", "4,5,9"], "line 4 has 'nan' in column 'y'"),
        (["a,b,y", "1,2,3", "inf,3,5", "3,4,7", "4,5,9"], "line 3 has 'inf' in column 'a'"),
        (["a,b,y", '1,"2', '",3', "", "2,3"], "line 5 has 2 values"),
        (["a,b,y", "1,,3", "2,3,5"], "line 2 has an empty value in column 'b'"),
    ],
)
def test_row_messages_name_the_line_of_the_file(tmp_path: Path, lines: list[str], message: str):
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    res = runner.invoke(app, ["discover", str(path), "--no-register"])
    assert res.exit_code != 0 and message in str(res.exception)


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("a,b,y\n1,2,3\n2,3,caf\u00e9\n".encode("latin-1"))
    res = runner.invoke(app, ["discover", str(path), "--no-register"])
    assert res.exit_code != 0 and "line 3 is not UTF-8 text" in str(res.exception)
