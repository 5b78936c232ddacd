"""`training.tune`: an Optuna study over recipes, resumable after a kill, and saved recipes.

The task is a 3x3 two-colour mirror with a tiny model: a trial of two seeds reaches 99%
validation accuracy within ~30-60 steps, so steps-to-99% discriminates between trials and a
study of a few trials takes seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("optuna")

from circuitlab.training import RunSpec, find_runs, get_recipe, read_run, recipes, train_stack
from circuitlab.training.recipe import RecipeError
from circuitlab.training.saved_recipes import read_saved, save_recipe
from circuitlab.training.tune import (
    DEFAULT_SPACE,
    Dim,
    TuneError,
    parse_dim,
    parse_space,
    prepare,
    seed_score,
    study_results,
    trials_dir,
    tune,
)

TASK = "grid_mirror_3x3_c2"
SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)
BASE = get_recipe("fast").replace(
    train_fraction=0.5, max_steps=60, eval_every=5, checkpoint_every=20, model=SMALL
)
SPACE = ["lr=1e-3:1e-2:log", "weight_decay=0.5:3"]
KW = dict(space=SPACE, seeds=[0, 1], base_recipe=BASE, threads=1)


def tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(autouse=True)
def recipe_dir(tmp_path, monkeypatch):
    folder = tmp_path / "saved-recipes"
    monkeypatch.setenv("CIRCUITLAB_RECIPES", str(folder))
    return folder


# --- the space ---------------------------------------------------------------------------
def test_space_parsing():
    assert parse_dim("lr=1e-4:1e-2:log") == Dim("lr", "float", 1e-4, 1e-2, True)
    assert parse_dim("weight_decay=0.1:3") == Dim("weight_decay", "float", 0.1, 3.0, False)
    assert parse_dim("warmup_steps=0:100") == Dim("warmup_steps", "int", 0, 100, False)
    assert parse_dim("model.n_layers=1,2") == Dim("model.n_layers", "choice", choices=(1, 2))
    assert parse_dim("n_layers=1,2,1").key == "model.n_layers"  # bare model field, no repeats
    assert parse_dim("n_layers=1,2,1").choices == (1, 2)
    assert parse_dim("optimizer=adamw,lion").choices == ("adamw", "lion")
    assert len(parse_space(DEFAULT_SPACE)) == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ("learning_rate=1:2", "unknown --space key 'learning_rate'"),
        ("model.d_vocab=10:20", "the task fixes it"),
        ("max_steps=10:100", "cannot vary max_steps"),
        ("lr=1e-2:1e-4", "empty range"),
        ("lr=0.01:0.01", "empty range"),
        ("lr=0:0.1:log", "log range"),
        ("warmup_steps=0:10.5", "integer"),
        ("lr=a:b", "must be numbers"),
        ("lr", "expects KEY=LO:HI"),
        ("lr=1,,2", "expects KEY=LO:HI"),
    ],
)
def test_space_refusals(text, message):
    with pytest.raises(TuneError, match=message):
        parse_dim(text)


def test_space_values_are_checked_against_task_and_recipe(tmp_path):
    for space, message in (
        (["train_fraction=0.1:1.5"], "train_fraction"),
        (["model.n_layers=1,0"], "n_layers"),
        (["optimizer=adamw,sgd"], "optimizer"),
    ):
        with pytest.raises(TuneError, match=message):
            prepare(TASK, 2, tmp_path / "s.journal", space=space, base_recipe=BASE)
    with pytest.raises(TuneError, match="space names lr more than once"):
        prepare(TASK, 2, tmp_path / "s.journal", space=["lr=0.1:1", "lr=0.2:1"])
    assert not any(p.name != "saved-recipes" for p in tmp_path.iterdir())


def test_unreached_scores_worse_than_any_reached():
    assert seed_score(40, 1.0, 60) == 40
    assert seed_score(60, 0.99, 60) < seed_score(None, 0.999, 60) < seed_score(None, 0.5, 60)


# --- a study -----------------------------------------------------------------------------
def test_study_finds_best_trial_in_ordinary_run_directories(tmp_path):
    study = tmp_path / "runs" / "mirror.journal"
    ended = []
    result = tune(TASK, 3, study, prune=False, on_trial_end=ended.append, **KW)
    assert [t.state for t in result.trials] == ["COMPLETE"] * 3
    assert result.ran == [0, 1, 2] and [t.number for t in ended] == [0, 1, 2]
    assert len({t.params["lr"] for t in result.trials}) == 3  # TPE sampled distinct points
    values = [t.value for t in result.trials]
    assert result.best.value == min(values)
    for t in result.trials:  # the median over seeds of steps to 99% (or the penalty)
        pairs = zip(t.steps_to_99, t.best_val_acc, strict=True)
        scores = [seed_score(s, a, 60) for s, a in pairs]
        assert t.value == sum(scores) / 2
    assert all(s is not None for s in result.best.steps_to_99)
    assert trials_dir(study) == tmp_path / "runs" / "mirror"
    runs = find_runs(tmp_path / "runs")
    assert len(runs) == 6  # every trial and seed is a finished, readable run directory
    run = read_run(trials_dir(study) / f"trial-{result.best.key}-seed1")
    assert run.summary["grokked_at"] == result.best.steps_to_99[1]
    assert run.recipe.lr == result.best.params["lr"]
    assert run.recipe.stop_val_acc == 0.99 and run.model_config.d_model == 32

    # the same budget again runs nothing; one more trial runs exactly one
    again = tune(TASK, 3, study, **KW)
    assert again.ran == [] and len(again.trials) == 3
    more = tune(TASK, 4, study, prune=False, **KW)
    assert more.ran == [3] and more.finished == 4

    # the study file records its task and settings: others are refused, nothing written
    before = tree(tmp_path)
    with pytest.raises(TuneError, match=f"made for task {TASK}, not add_mod_11"):
        tune("add_mod_11", 5, study, threads=1)
    with pytest.raises(TuneError, match="another --seeds"):
        tune(TASK, 5, study, seeds=[0], threads=1)
    with pytest.raises(TuneError, match="another --space"):
        tune(TASK, 5, study, space=["lr=1e-3:1e-1:log"], threads=1)
    assert tree(tmp_path) == before
    # settings left out are the recorded ones
    assert prepare(TASK, 5, study).settings.seeds == (0, 1)


KILL_SCRIPT = """
import os, signal, sys, torch
torch.set_num_threads(1)
from circuitlab.training import get_recipe
from circuitlab.training.tune import tune
base = get_recipe("fast").replace(train_fraction=0.5, max_steps=60, eval_every=5,
                                  checkpoint_every=20, model={small!r})

def on_step(number, step, max_steps, acc):
    if number == 1 and step >= 25:  # after the checkpoint at step 20: a hard kill
        os.kill(os.getpid(), signal.SIGKILL)

tune({task!r}, 2, sys.argv[1], space={space!r}, seeds=[0, 1], base_recipe=base, threads=1,
     prune=False, on_step=on_step)
"""


def test_resume_after_kill_reruns_exactly_the_missing_trial(tmp_path):
    study = tmp_path / "kill.journal"
    script = textwrap.dedent(KILL_SCRIPT).format(small=SMALL, task=TASK, space=SPACE)
    res = subprocess.run(
        [sys.executable, "-c", script, str(study)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == -9, res.stderr
    killed = study_results(study)
    assert [t.state for t in killed.trials] == ["COMPLETE", "RUNNING"]
    params = killed.trials[1].params
    folder = trials_dir(study)
    assert (folder / "trial-1-seed0.partial" / "checkpoint").is_dir()

    steps = []
    result = tune(TASK, 2, study, prune=False, on_step=lambda *a: steps.append(a[:2]), **KW)
    assert [t.state for t in result.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert result.ran == [2]  # exactly the killed trial, once
    resumed = result.trials[2]
    assert resumed.params == params and resumed.key == 1 and resumed.resumes == 1
    assert steps[0] == (2, 25)  # continued from the checkpoint at step 20, not from 0
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["trial-0-seed0", "trial-0-seed1", "trial-1-seed0", "trial-1-seed1"]

    # the resumed runs are the runs an uninterrupted trial would have written
    recipe = result.settings.trial_recipe(params, 1)
    fresh = train_stack([RunSpec(TASK, recipe, s, tmp_path / f"fresh{s}") for s in (0, 1)])
    for s, run in zip((0, 1), fresh, strict=True):
        info = read_run(folder / f"trial-1-seed{s}")
        assert info.summary["grokked_at"] == run.grokked_at == resumed.steps_to_99[s]
        assert info.summary["steps"] == run.steps
        ours = load_file(str(folder / f"trial-1-seed{s}" / "model.safetensors"))
        theirs = load_file(str(run.run_dir / "model.safetensors"))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_ctrl_c_requeues_the_trial(tmp_path):
    study = tmp_path / "int.journal"

    def interrupt(number, step, max_steps, acc):
        if step >= 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(TASK, 1, study, prune=False, on_step=interrupt, **KW)
    states = [(t.state, t.resumes) for t in study_results(study).trials]
    assert states == [("FAIL", None), ("WAITING", 0)]  # failed, and queued to run again
    result = tune(TASK, 1, study, prune=False, **KW)
    assert result.ran == [1] and result.trials[1].key == 0
    assert result.trials[1].params == result.trials[0].params
    assert len(find_runs(tmp_path)) == 2


def test_pruned_trials_leave_no_half_written_run(tmp_path, monkeypatch):
    import optuna
    from optuna.trial import TrialState

    study = tmp_path / "prune.journal"
    kw = dict(
        space=["lr=1e-4:3e-2:log"],
        seeds=[0, 1],
        base_recipe=BASE,
        threads=1,
        prune_startup=1,
        prune_warmup=10,
    )
    # the first pruned trial is interrupted after its runs were marked, before Optuna is told
    real_tell = optuna.study.Study.tell

    def tell(self, trial, *args, **kwargs):
        if kwargs.get("state") == TrialState.PRUNED:
            monkeypatch.setattr(optuna.study.Study, "tell", real_tell)
            raise KeyboardInterrupt
        return real_tell(self, trial, *args, **kwargs)

    monkeypatch.setattr(optuna.study.Study, "tell", tell)
    with pytest.raises(KeyboardInterrupt):
        tune(TASK, 4, study, **kw)
    interrupted = study_results(study).trials
    assert interrupted[-2].state == "FAIL" and interrupted[-1].state == "WAITING"
    steps = []
    result = tune(TASK, 4, study, on_step=lambda *a: steps.append(a[0]), **kw)
    again = result.trials[len(interrupted) - 1]
    # recorded as pruned again from its marked runs, without training
    assert again.state == "PRUNED" and again.resumes == interrupted[-2].number
    assert again.number not in steps

    pruned = [t for t in result.trials if t.state == "PRUNED"]
    assert result.finished == 4 and result.best.state == "COMPLETE"
    folder = trials_dir(study)
    for t in pruned:
        assert t.pruned_at >= 10 and t.value is None
        for s in (0, 1):
            marked = folder / f"trial-{t.key}-seed{s}.pruned"
            assert (marked / "pruned.json").is_file()
            assert json.loads((marked / "pruned.json").read_text())["pruned_at"] == t.pruned_at
            assert not (marked / "checkpoint").exists()
    assert not list(folder.glob("*.partial")) and not list(folder.glob("*.lock"))
    assert len(find_runs(folder)) == 2 * (4 - len(pruned))  # pruned runs are not runs


# --- saved recipes ---------------------------------------------------------------------------
def test_saved_recipe_is_found_by_get_recipe(tmp_path, recipe_dir):
    study = tmp_path / "save.journal"
    result = tune(TASK, 2, study, prune=False, save_recipe_as="mirror-best", **KW)
    assert result.saved == recipe_dir / "mirror-best.json"
    recipe = get_recipe("mirror-best")
    best = result.best
    assert recipe.lr == best.params["lr"] and recipe.weight_decay == best.params["weight_decay"]
    # the tuned fields only: the base recipe's step budget and stopping rule stay
    assert recipe.max_steps == BASE.max_steps and recipe.stop_val_acc == BASE.stop_val_acc
    assert recipe.model == SMALL
    measured = read_saved(result.saved).measured
    assert measured["task"] == TASK and measured["seeds"] == [0, 1]
    assert measured["steps_to_99"] == best.steps_to_99 and measured["budget"] == 2
    assert set(recipes()) == {"nanda", "fast", "deep", "synth3", "conj", "mirror-best"}
    # the same study may update its saved best; another study may not take the name
    tune(TASK, 3, study, prune=False, save_recipe_as="mirror-best", **KW)
    with pytest.raises(TuneError, match="from another study"):
        prepare(TASK, 1, tmp_path / "other.journal", save_recipe_as="mirror-best")
    with pytest.raises(TuneError, match="built in"):
        prepare(TASK, 1, tmp_path / "other.journal", save_recipe_as="fast")
    assert not (tmp_path / "other.journal").exists()


def test_saved_recipe_files_are_checked(recipe_dir):
    with pytest.raises(RecipeError, match="built in"):
        save_recipe(BASE.replace(name="nanda"), {})
    save_recipe(BASE.replace(name="ok"), {"task": TASK})
    with pytest.raises(RecipeError, match="already saved"):
        save_recipe(BASE.replace(name="ok"), {})
    assert not list(recipe_dir.glob("*.tmp"))
    (recipe_dir / "broken.json").write_text("{not json")
    with pytest.raises(RecipeError, match="broken.json is unreadable"):
        get_recipe("broken")
    with pytest.raises(RecipeError, match="broken.json"):
        recipes()
    assert get_recipe("ok").lr == BASE.lr  # other names still load
    os.remove(recipe_dir / "broken.json")
    clash = json.loads((recipe_dir / "ok.json").read_text())
    clash["recipe"]["name"] = "fast"
    (recipe_dir / "fast.json").write_text(json.dumps(clash))
    assert get_recipe("fast").max_steps == 5000  # the built-in wins
    with pytest.raises(RecipeError, match="built-in recipe 'fast'"):
        recipes()
    os.remove(recipe_dir / "fast.json")
    known = "nanda, fast, deep, synth3, conj, ok"  # built-ins first, then saved ones
    with pytest.raises(RecipeError, match=f"unknown recipe 'nope'; known: {known}"):
        get_recipe("nope")
    with pytest.raises(RecipeError, match="unknown recipe"):
        get_recipe("../ok")
