import json
import subprocess
import sys

import pytest

from circuitlab.cli.training import parse_seeds, parse_sweep
from circuitlab.training import read_run


def circuitlab(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_train_then_runs(tmp_path):
    out = tmp_path / "runs"
    res = circuitlab(
        "train",
        "--task",
        "add_mod_13",
        "--seeds",
        "0-1",
        "--set",
        "max_steps=20,30",
        "--out",
        str(out),
        "--workers",
        "1",
    )
    assert res.returncode == 0, res.stderr
    runs = sorted(p.name for p in (out / "add_mod_13").iterdir())
    assert runs == [
        "fast-max_steps20-seed0",
        "fast-max_steps20-seed1",
        "fast-max_steps30-seed0",
        "fast-max_steps30-seed1",
    ]
    assert read_run(out / "add_mod_13" / "fast-max_steps30-seed1").summary["steps"] <= 30
    listing = circuitlab("runs", str(out), "--json")
    assert listing.returncode == 0
    rows = json.loads(listing.stdout)
    assert len(rows) == 4 and {r["seed"] for r in rows} == {0, 1}
    # a second train into the same directories is refused, nothing is replaced
    again = circuitlab("train", "--task", "add_mod_13", "--set", "max_steps=20", "--out", str(out))
    assert again.returncode == 2
    assert "already exists" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--task", "add_mod_12"], "prime"),
        (["train", "--task", "nope"], "unknown task"),
        (["train", "--recipe", "slow"], "unknown recipe"),
        (["train", "--set", "train_fraction=1.5"], "train_fraction"),
        (["train", "--set", "learning_rate=1"], "unknown recipe fields"),
        (["train", "--seeds", "3-1"], "--seeds"),
        (["runs", "/nonexistent/dir"], "no directory"),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(tmp_path, args, message):
    res = circuitlab(*args, "--out", str(tmp_path)) if args[0] == "train" else circuitlab(*args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())  # nothing written


def test_help_is_fast_and_does_not_import_torch():
    code = "import sys; from circuitlab.cli import app; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "False"
    assert circuitlab("--help").returncode == 0


def test_seed_and_sweep_parsing():
    assert parse_seeds("0-3,7") == [0, 1, 2, 3, 7]
    assert parse_sweep(["lr=0.01,0.003", "weight_decay=2"]) == [
        {"lr": 0.01, "weight_decay": 2},
        {"lr": 0.003, "weight_decay": 2},
    ]
