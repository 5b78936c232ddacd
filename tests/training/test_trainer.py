import json

import pytest
import torch
from safetensors.torch import load_file

from circuitlab import _precision
from circuitlab.training import Recipe, RecipeError, RunDirError, RunSpec, read_run, train_stack
from circuitlab.training.rundir import partial_path

NEEDS_BF16 = pytest.mark.skipif(
    _precision.bf16_unsupported("cpu") is not None, reason="this CPU has no native bf16 matmul"
)
SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)


def recipe(**changes) -> Recipe:
    base = Recipe(name="test", lr=3e-3, max_steps=40, eval_every=10, stop_val_acc=2.0, model=SMALL)
    return base.replace(**changes)


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("batch_size", [0, 16])
def test_model_trained_in_a_stack_equals_model_trained_alone(tmp_path, batch_size, precision):
    # Different seeds and hyperparameters in one stack, Grokfast and clipping on: each model
    # must end bit-for-bit where it ends when trained alone, in either precision (bf16: see
    # BF16_MIN_WORK in models/functional.py for the matmuls that would otherwise differ).
    base = recipe(batch_size=batch_size, grokfast_lambda=1.0, grad_clip=1.0, precision=precision)
    variants = [base, base.replace(lr=1e-2, weight_decay=0.5), base.replace(betas=(0.8, 0.99))]
    specs = [
        RunSpec("add_mod_13", r, seed, tmp_path / f"stack{seed}") for seed, r in enumerate(variants)
    ]
    train_stack(specs)
    for spec in specs:
        alone = tmp_path / f"alone{spec.seed}"
        train_stack([RunSpec(spec.task, spec.recipe, spec.seed, alone)])
        assert_same_weights(spec.run_dir, alone)


def test_stacked_nanda_size_models_equal_models_alone(tmp_path):
    # A 7-way output layer makes each model's logits slice start off a 64-byte boundary: MKL
    # then took another kernel for models 1 and 3 until circuitlab asked it for strict
    # reproducibility (circuitlab/__init__.py).
    nanda = Recipe(name="test", lr=1e-2, max_steps=3, eval_every=10, stop_val_acc=2.0)
    specs = [RunSpec("add_mod_7", nanda, seed, tmp_path / f"stack{seed}") for seed in range(4)]
    train_stack(specs)
    for spec in specs[1:]:
        alone = tmp_path / f"alone{spec.seed}"
        train_stack([RunSpec(spec.task, spec.recipe, spec.seed, alone)])
        assert_same_weights(spec.run_dir, alone)


def test_lion_stack_equals_alone(tmp_path):
    r = recipe(optimizer="lion", lr=3e-4)
    specs = [RunSpec("sub_mod_11", r, s, tmp_path / f"s{s}") for s in range(2)]
    train_stack(specs)
    train_stack([RunSpec("sub_mod_11", r, 1, tmp_path / "alone")])
    assert_same_weights(tmp_path / "s1", tmp_path / "alone")


def test_early_stopped_model_leaves_the_stack(tmp_path):
    fast = recipe(lr=1e-2, max_steps=20)
    slow = recipe(lr=1e-2, max_steps=40)
    a, b = tmp_path / "a", tmp_path / "b"
    results = train_stack([RunSpec("add_mod_13", fast, 0, a), RunSpec("add_mod_13", slow, 1, b)])
    assert [r.steps for r in results] == [20, 40]
    assert read_run(a).summary["steps"] == 20
    # the model that kept training is the same as if it had been alone all along
    train_stack([RunSpec("add_mod_13", slow, 1, tmp_path / "alone")])
    assert_same_weights(b, tmp_path / "alone")


class Interrupt(Exception):
    pass


def interrupt_at(step: int, spec: RunSpec) -> None:
    """Train `spec` and stop it (as a crash would) at the first evaluation at or after `step`."""

    def stop(at, max_steps, rows):
        if at >= step:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_stack([spec], progress=stop)


def test_annealing_decays_lr_to_zero_after_the_stop_accuracy_then_stops(tmp_path):
    # stop_val_acc 0 is met at the first evaluation (step 0): the lr then falls linearly to 0
    # over anneal_steps (25, off the eval grid) and the model stops there; its stack-mate runs
    # on, and both end bit-for-bit where they end alone.
    annealed = recipe(lr=1e-2, stop_val_acc=0.0, anneal_steps=25)
    plain = recipe(lr=1e-2)
    a, b = tmp_path / "a", tmp_path / "b"
    results = train_stack(
        [RunSpec("add_mod_13", annealed, 0, a), RunSpec("add_mod_13", plain, 1, b)]
    )
    assert [r.steps for r in results] == [25, 40]
    summary = read_run(a).summary
    assert summary["annealed_from"] == 0 and read_run(b).summary["annealed_from"] is None
    rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 10, 20, 25]
    for r in rows:
        s = max(r["step"], 1)
        expected = 1e-2 * min(1.0, s / 10) * (1 - (s - 1) / 25)
        assert r["lr"] == pytest.approx(expected, rel=1e-6)
    for spec_recipe, seed, run in ((annealed, 0, a), (plain, 1, b)):
        alone = tmp_path / f"alone{seed}"
        train_stack([RunSpec("add_mod_13", spec_recipe, seed, alone)])
        assert_same_weights(run, alone)


def test_run_interrupted_while_annealing_resumes_to_the_same_weights(tmp_path):
    r = recipe(lr=1e-2, stop_val_acc=0.0, anneal_steps=35, checkpoint_every=10)
    full, cut = tmp_path / "full", tmp_path / "cut"
    train_stack([RunSpec("add_mod_13", r, 0, full)])
    interrupt_at(25, RunSpec("add_mod_13", r, 0, cut))
    train_stack([RunSpec("add_mod_13", r, 0, cut)], resume=True)
    assert_same_weights(full, cut)
    assert read_run(cut).summary["steps"] == 35


@pytest.mark.parametrize("batch_size", [0, 16])
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=NEEDS_BF16)])
def test_resumed_run_ends_with_the_same_weights(tmp_path, batch_size, precision):
    r = recipe(batch_size=batch_size, checkpoint_every=10, grokfast_lambda=2.0, precision=precision)
    full = tmp_path / "full"
    train_stack([RunSpec("add_mod_13", r, 0, full)])
    cut = tmp_path / "cut"
    interrupt_at(25, RunSpec("add_mod_13", r, 0, cut))
    assert not cut.exists() and partial_path(cut).is_dir()  # nothing under the final name
    with pytest.raises(RunDirError, match="resume"):
        read_run(cut)
    train_stack([RunSpec("add_mod_13", r, 0, cut)], resume=True)
    assert_same_weights(full, cut)
    steps = [json.loads(line)["step"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 10, 20, 30, 40]
    assert not partial_path(cut).exists() and not (cut / "checkpoint").exists()
    assert read_run(cut).summary["precision"] == precision


def test_run_directory_contents(tmp_path):
    run = tmp_path / "run"
    (result,) = train_stack([RunSpec("add_mod_13", recipe(), 4, run)])
    info = read_run(run)
    assert info.config["task"] == "add_mod_13" and info.config["seed"] == 4
    assert info.config["recipe"]["lr"] == 3e-3 and info.config["model"]["d_model"] == 32
    assert "torch" in info.config["versions"]
    assert info.summary["steps"] == 40 == result.steps
    assert (run / "curves.png").stat().st_size > 1000
    assert 0.0 <= info.summary["final"]["val_acc"] <= 1.0


def test_existing_run_is_not_overwritten_without_permission(tmp_path):
    run = tmp_path / "run"
    train_stack([RunSpec("add_mod_13", recipe(max_steps=10), 0, run)])
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(RunDirError, match="already exists"):
        train_stack([RunSpec("add_mod_13", recipe(max_steps=10), 1, run)])
    assert (run / "model.safetensors").read_bytes() == before
    train_stack([RunSpec("add_mod_13", recipe(max_steps=10), 1, run)], overwrite=True)
    assert read_run(run).config["seed"] == 1


def test_incompatible_runs_cannot_share_a_stack(tmp_path):
    with pytest.raises(RecipeError, match="batch_size"):
        train_stack(
            [
                RunSpec("add_mod_13", recipe(), 0, tmp_path / "a"),
                RunSpec("add_mod_13", recipe(batch_size=8), 1, tmp_path / "b"),
            ]
        )


def test_recipe_validation():
    with pytest.raises(RecipeError, match="train_fraction"):
        recipe(train_fraction=1.5)
    with pytest.raises(RecipeError, match="optimizer"):
        recipe(optimizer="sgd")
    with pytest.raises(RecipeError, match="unknown recipe fields"):
        recipe().replace(learning_rate=1)
    with pytest.raises(RecipeError, match=r"precision must be one of \('fp32', 'bf16'\)"):
        recipe(precision="fp16")
    r = recipe(betas=(0.8, 0.9))
    assert Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.precision == "fp32"  # the default, also for recipes saved before the field
    bf16 = recipe(precision="bf16")
    assert bf16.to_dict()["precision"] == "bf16"
    assert Recipe.from_dict(json.loads(json.dumps(bf16.to_dict()))) == bf16
    old = {k: v for k, v in r.to_dict().items() if k != "precision"}
    assert Recipe.from_dict(old) == r


def test_deep_recipe_builds_a_two_layer_model_for_a_task():
    from circuitlab.models import ModelConfig
    from circuitlab.tasks import get_task
    from circuitlab.training import get_recipe

    deep = get_recipe("deep")
    assert deep.model == {"n_layers": 2} and deep.lr < get_recipe("fast").lr
    config = ModelConfig.for_task(get_task("add_mod_59"), **deep.model)
    assert config.n_layers == 2 and config.d_vocab_out == 59


def test_builtin_recipes_list_what_their_benchmarks_measured():
    # the numbers `circuitlab recipes` shows for the built-ins are the committed results
    from pathlib import Path

    from circuitlab.training.recipe import _RECIPES, BUILTIN_MEASURED

    results = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    assert set(BUILTIN_MEASURED) == set(_RECIPES)
    grok = json.loads((results / "training.json").read_text())["grok"]
    for name in ("nanda", "fast"):
        (m,) = BUILTIN_MEASURED[name]
        assert m["steps_to_99"] == grok[name]["steps_to_99"]
        assert m["median_steps_to_99"] == grok[name]["median_steps"]
    deep = json.loads((results / "deep.json").read_text())["runs"]
    for m in BUILTIN_MEASURED["deep"]:
        runs = sorted((r for r in deep if r["task"] == m["task"]), key=lambda r: r["seed"])
        assert [r["seed"] for r in runs] == m["seeds"]
        assert [r["grokked_at"] for r in runs] == m["steps_to_99"]
    families = json.loads((results / "recipes.json").read_text())["families"]
    for row in families:
        if "measured" not in row:
            continue
        name = row["measured"]["recipe"]["name"]
        (m,) = BUILTIN_MEASURED[name]
        runs = row["measured"]["runs"]
        assert m["task"] == row["task"] and m["seeds"] == [r["seed"] for r in runs]
        assert m["steps_to_99"] == [r["steps_to_99"] for r in runs]
        assert m["median_steps_to_99"] == row["measured"]["median_steps_to_99"]
