"""Tasks files: the shipped example set is what its generator makes, malformed files are refused
naming the line and field, and `circuitlab solve` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from circuitlab.compose.arc import TaskFormatError, dump_tasks, parse_tasks
from circuitlab.compose.arc_examples import generate_tasks

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "examples" / "arc_tasks.json"


def circuitlab(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *args], capture_output=True, text=True, cwd=cwd
    )


def test_shipped_set_is_the_generators_output(tmp_path):
    tasks = generate_tasks(seed=0)
    data = json.loads(SHIPPED.read_text())
    dump_tasks(tasks, tmp_path / "again.json", data["description"], data["generator"])
    assert (tmp_path / "again.json").read_text() == SHIPPED.read_text()
    steps = [t.steps for t in tasks]
    assert len(tasks) >= 40 and steps.count(None) >= 5
    for kind in ("mod", "grid"):
        assert {t.steps for t in tasks if t.name.startswith(kind)} >= {1, 2, 3}


GOOD = {
    "name": "add",
    "domain": "Z_31",
    "train": [{"input": [3, 5], "output": 8}, {"input": [30, 2], "output": 1}],
    "test": [{"input": [1, 1], "output": 2}],
}


def _file(task: dict) -> str:
    return json.dumps({"tasks": [GOOD, task]}, indent=1)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"tasks": [\n {"name": "a",\n  "train": [}\n]}', ["line 3", "not valid JSON"]),
        (_file({"name": "b", "test": GOOD["test"]}), ["task 1 (b)", "train: required"]),
        (_file({**GOOD, "name": "add"}), ["task 1", "'add' is used twice"]),
        (_file({**GOOD, "name": "c", "colour": 3}), ["task 1 (c)", "unknown field 'colour'"]),
        (_file({**GOOD, "name": "d", "domain": "Z_x"}), ["task 1 (d)", "domain:"]),
        (
            _file({**GOOD, "name": "e", "train": [{"input": [3, 5], "output": "8"}]}),
            ["task 1 (e)", "train[0].output: expected an int or a grid"],
        ),
        (
            _file({**GOOD, "name": "f", "train": [{"input": [[1, 2], [3]], "output": 1}]}),
            ["task 1 (f)", "train[0].input: grid rows have different lengths"],
        ),
        (
            _file({**GOOD, "name": "g", "test": [{"input": [1, 2, 3]}]}),
            ["task 1 (g)", "test[0].input: 3 input(s)", "first demonstration has 2"],
        ),
        (
            _file({**GOOD, "name": "h", "train": [{"input": [40, 1], "output": 2}]}),
            ["task 1 (h)", "40 is outside Z_31"],
        ),
        (_file({**GOOD, "name": "i", "train": [{"input": 3}]}), ["train[0].output: required"]),
        ('{"task": []}', ["line 1", 'expected an object with a "tasks" list']),
    ],
)
def test_malformed_files_name_the_line_and_field(text, expected):
    with pytest.raises(TaskFormatError) as err:
        parse_tasks(text, "bad.json")
    message = str(err.value)
    assert message.startswith("bad.json line ") and "\n" not in message
    for part in expected:
        assert part in message, message
    if "task 1" in message:  # the second task starts on line 18 of the indented file
        assert int(message.split("line ")[1].split(":")[0]) >= 18


def test_an_arc_task_file_loads_as_one_task():
    text = json.dumps({"train": [{"input": [[1, 0]], "output": [[0, 1]]}], "test": GOOD["test"]})
    with pytest.raises(TaskFormatError, match="test\\[0\\].input: 2 input"):
        parse_tasks(text, "007bbfb7.json")
    text = text.replace("[1, 1]", "[[1, 1]]").replace('"output": 2', '"output": [[1, 1]]')
    (task,) = parse_tasks(text, "007bbfb7.json")
    assert task.name == "007bbfb7" and task.train[0][0][0].shape == (1, 2)


TINY = {
    "tasks": [
        {
            "name": "mul_then_add",
            "train": [
                {"input": [3, 5, 7], "output": 22},
                {"input": [4, 4, 1], "output": 17},
                {"input": [10, 3, 2], "output": 1},
            ],
            "test": [{"input": [2, 9, 6], "output": 24}, {"input": [6, 6, 6]}],
            "domain": "Z_31",
        },
        {
            "name": "rot90",
            "train": [
                {
                    "input": [[0, 1, 2], [2, 2, 0], [1, 0, 0]],
                    "output": [[2, 0, 0], [1, 2, 0], [0, 2, 1]],
                }
            ],
            "test": [
                {
                    "input": [[1, 1, 0], [0, 2, 2], [2, 0, 1]],
                    "output": [[0, 2, 1], [1, 2, 0], [1, 0, 2]],
                }
            ],
        },
        {
            "name": "table",
            "train": [
                {"input": [1, 2], "output": 90},
                {"input": [5, 7], "output": 3},
                {"input": [100, 9], "output": 57},
            ],
            "test": [{"input": [3, 3], "output": 8}],
            "domain": "Z_113",
        },
    ]
}


def test_cli_solves_a_tiny_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    res = circuitlab("solve", str(path), "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    by_name = {t["name"]: t for t in out["tasks"]}
    assert by_name["mul_then_add"]["status"] == "solved"
    assert by_name["mul_then_add"]["predictions"] == [24, 11]  # (6 * 6 + 6) mod 31
    assert by_name["rot90"]["correct"] and "ROT90" in by_name["rot90"]["program"]
    assert by_name["table"]["status"] == "no program found"
    assert out["summary"]["correct"] == 1 and out["summary"]["scored"] == 2
    text = circuitlab("solve", str(path), "--depth", "2", "--shots", "2")
    assert text.returncode == 0 and "accuracy:" in text.stdout and "def rot90(x" in text.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json"]  # nothing written


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.json"], "no such file"),
        (["bad.json"], "bad.json line 2: task 0 (x): train: required"),
        (["tiny.json", "--depth", "9"], "--depth must be between 0 and 5"),
        (["tiny.json", "--shots", "0"], "--shots must be at least 1"),
        (["tiny.json", "--catalog", "nowhere.db"], "nowhere.db"),
    ],
)
def test_cli_mistakes_give_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    (tmp_path / "bad.json").write_text('{"tasks": [\n {"name": "x", "test": []}]}')
    before = sorted(tmp_path.iterdir())
    res = circuitlab("solve", *args, cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert sorted(tmp_path.iterdir()) == before and res.stdout == ""
