"""`circuitlab tune` and `circuitlab recipes` as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("optuna")

TASK = "grid_mirror_3x3_c2"
SMALL = ["--set", "d_model=32", "--set", "n_heads=2", "--set", "d_head=16", "--set", "d_mlp=64"]


def circuitlab(*args: str, recipes=None, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if recipes is not None:
        env["CIRCUITLAB_RECIPES"] = str(recipes)
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A two-trial study on the default model (a small budget: 30 steps, one seed), its best
    saved as recipe `mirror-best`."""
    root = tmp_path_factory.mktemp("tune")
    res = circuitlab(
        "tune",
        TASK,
        "--budget",
        "2",
        "--space",
        "lr=3e-3:3e-2:log",
        "--seeds",
        "0",
        "--max-steps",
        "30",
        "--out",
        str(root / "runs"),
        "--save-recipe",
        "mirror-best",
        "--threads",
        "1",
        recipes=root / "recipes",
    )
    assert res.returncode == 0, res.stderr
    return root, res


def test_tune_prints_trials_and_saves_recipe(tuned):
    root, res = tuned
    study = root / "runs" / TASK / "tune-default.journal"
    assert study.is_file()
    assert "trial 0: complete" in res.stdout and "trial 1: complete" in res.stdout
    assert "(best)" in res.stdout and "saved recipe 'mirror-best'" in res.stdout
    runs = json.loads(circuitlab("runs", str(root / "runs"), "--json").stdout)
    assert sorted(r["recipe"] for r in runs) == ["fast-trial-0", "fast-trial-1"]
    saved = json.loads((root / "recipes" / "mirror-best.json").read_text())
    assert saved["measured"]["task"] == TASK and saved["measured"]["seeds"] == [0]

    listing = circuitlab("recipes", "--json", recipes=root / "recipes")
    assert listing.returncode == 0, listing.stderr
    rows = {r["name"]: r for r in json.loads(listing.stdout)}
    assert list(rows) == ["nanda", "fast", "deep", "synth3", "conj", "mirror-best"]
    assert rows["synth3"]["default_for"] == "synth_mod_p[expr] with 3 operands"
    assert rows["fast"]["default_for"] == "any other task"
    assert rows["nanda"]["default_for"] is None and rows["mirror-best"]["default_for"] is None
    assert (
        rows["mirror-best"]["recipe"]["lr"] == saved["recipe"]["lr"] != rows["fast"]["recipe"]["lr"]
    )
    assert [m["task"] for m in rows["mirror-best"]["measured"]] == [TASK]
    table = circuitlab("recipes", recipes=root / "recipes")
    assert "mirror-best" in table.stdout and TASK in table.stdout

    # the same command again: the study is complete, nothing is trained
    before = tree(root / "runs")
    again = circuitlab(
        "tune", TASK, "--budget", "2", "--out", str(root / "runs"), recipes=root / "recipes"
    )
    assert again.returncode == 0, again.stderr
    assert "2/2 trials finished" in again.stdout and "trial 0:" not in again.stdout
    assert tree(root / "runs") == before


def test_train_uses_a_saved_recipe(tuned, tmp_path):
    root, _ = tuned
    res = circuitlab(
        "train",
        "--task",
        TASK,
        "--recipe",
        "mirror-best",
        "--set",
        "max_steps=5",
        *SMALL,
        "--out",
        str(tmp_path),
        "--workers",
        "1",
        "--threads",
        "1",
        recipes=root / "recipes",
    )
    assert res.returncode == 0, res.stderr
    (run,) = [p for p in (tmp_path / TASK).iterdir() if p.name.startswith("mirror-best")]
    config = json.loads((run / "config.json").read_text())
    saved = json.loads((root / "recipes" / "mirror-best.json").read_text())["recipe"]
    assert config["recipe"]["name"] == "mirror-best"
    assert config["recipe"]["lr"] == saved["lr"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "0"], "--budget"),
        (["--budget", "2", "--space", "learning_rate=1e-3:1e-2"], "unknown --space key"),
        (["--budget", "2", "--space", "lr=1e-2:1e-3"], "empty range"),
        (["--budget", "2", "--space", "weight_decay=2:2"], "empty range"),
        (["--budget", "2", "--seeds", "3-1"], "--seeds"),
        (["--budget", "2", "--recipe", "slow"], "unknown recipe"),
        (["--budget", "2", "--save-recipe", "nanda"], "built in"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, message):
    res = circuitlab("tune", TASK, *args, "--out", str(tmp_path / "out"), recipes=tmp_path / "r")
    assert res.returncode == 2, res.stdout
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert tree(tmp_path) == []


def test_unknown_task_and_another_tasks_study_are_refused(tuned, tmp_path):
    root, _ = tuned
    res = circuitlab("tune", "nope", "--budget", "1", "--out", str(tmp_path))
    assert res.returncode == 2 and "unknown task 'nope'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    study = root / "runs" / TASK / "tune-default.journal"
    before = tree(root)
    res = circuitlab("tune", "add_mod_11", "--budget", "3", "--study", str(study))
    assert res.returncode == 2
    assert f"was made for task {TASK}, not add_mod_11" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert tree(root) == before and tree(tmp_path) == []
