import json
import os
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


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "lr="], "--set expects"),
        (["--set", "=3"], "--set expects"),
        (["--set", "lr=abc"], "lr must be a number"),
        (["--set", "lr=inf"], "lr must be finite"),
        (["--set", "stop_val_acc=abc"], "stop_val_acc"),
        (["--set", "batch_size=2.5"], "batch_size must be an integer"),
        (["--set", "name=x/../../../../escaped"], "recipe name"),
        (["--threads", "-1"], "--threads"),
        (["--seeds", "0-100000000"], "more than"),
        (["--out", "/proc/circuitlab"], "cannot create --out"),
    ],
)
def test_train_refuses_bad_input_in_one_line(tmp_path, args, message):
    res = circuitlab("train", "--task", "add_mod_7", "--out", str(tmp_path / "out"), *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("*.partial"))


def test_set_reaches_model_fields(tmp_path):
    out = tmp_path / "runs"
    res = circuitlab(
        "train", "--task", "add_mod_7", "--set", "max_steps=5", "--set", "n_layers=1,2",
        "--set", "model.d_mlp=32", "--out", str(out), "--workers", "1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    runs = sorted((out / "add_mod_7").iterdir())
    assert len(runs) == 2
    layers = sorted(read_run(r).model_config.n_layers for r in runs)
    assert layers == [1, 2] and {read_run(r).model_config.d_mlp for r in runs} == {32}
    bad = circuitlab("train", "--task", "add_mod_7", "--set", "model.depth=2", "--out", str(out))
    assert bad.returncode == 2 and "model fields" in bad.stderr and "n_layers" in bad.stderr


def test_train_refuses_an_out_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    res = circuitlab("train", "--task", "add_mod_7", "--out", str(tmp_path / "file"))
    assert res.returncode == 2 and "is a file" in res.stderr


def test_a_slash_in_the_task_spec_stays_one_directory(tmp_path):
    out = tmp_path / "out"
    res = circuitlab(
        "train", "--task", "synth_mod_7[a/b+c]", "--set", "max_steps=2", "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    (task_dir,) = out.iterdir()
    assert task_dir.name == "synth_mod_7[a%2Fb+c]"
    # three operands: the family's own recipe, synth3
    assert read_run(task_dir / "synth3-max_steps2-seed0").task == "synth_mod_7[a/b+c]"
    listing = subprocess.run(  # brackets are data, not rich markup
        [sys.executable, "-m", "circuitlab", "runs", str(out)],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "400"},
        timeout=120,
    )
    assert listing.returncode == 0, listing.stderr
    assert "synth_mod_7[a/b+c]" in listing.stdout


def test_train_refuses_what_cannot_fit_in_memory(tmp_path):
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuitlab",
            "train",
            "--task",
            "add_mod_7",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=os.environ | {"CIRCUITLAB_MEMORY_LIMIT": "50M"},
        timeout=120,
    )
    assert res.returncode == 2 and "needs about" in res.stderr and "batch_size" in res.stderr


def test_a_family_with_its_own_recipe_trains_with_it_unless_another_is_named(tmp_path):
    from circuitlab.tasks import get_task
    from circuitlab.training import get_recipe
    from circuitlab.training.recipe import recipe_for

    assert recipe_for(get_task("synth_mod_5[a*b+c]")) == "synth3"
    assert recipe_for(get_task("synth_mod_5[a*b]")) == "fast"  # two operands: the default
    assert recipe_for(get_task("add_mod_13")) == "fast"
    assert recipe_for(get_task("s5_conj")) == "conj"
    assert recipe_for(get_task("s4_conj")) == recipe_for(get_task("s5_compose")) == "fast"
    assert get_recipe("synth3").train_fraction > get_recipe("fast").train_fraction
    out = tmp_path / "runs"
    res = circuitlab(
        "train", "--task", "synth_mod_5[a*b+c]", "--set", "max_steps=3", "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    assert "recipe synth3" in res.stdout
    (run,) = (out / "synth_mod_5[a*b+c]").iterdir()
    assert run.name == "synth3-max_steps3-seed0"
    assert read_run(run).recipe.train_fraction == get_recipe("synth3").train_fraction
    named = circuitlab(
        "train", "-t", "synth_mod_5[a*b+c]", "-r", "fast", "--set", "max_steps=3", "--out", str(out)
    )
    assert named.returncode == 0, named.stderr
    assert (out / "synth_mod_5[a*b+c]" / "fast-max_steps3-seed0" / "summary.json").is_file()
