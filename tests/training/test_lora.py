import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from circuitlab.models import Transformer
from circuitlab.tasks import get_task
from circuitlab.training import RunSpec, get_recipe, load_run, read_run, train_stack
from circuitlab.training.lora import (
    LORA_RECIPE,
    AdaptError,
    LoraSpec,
    adapt,
    attach,
    expand_targets,
    load_adapted,
    lr_factor,
)

PeftModel = pytest.importorskip("peft", reason="the lora extra").PeftModel
SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)
SPEC = LoraSpec(rank=2, recipe=LORA_RECIPE.replace(train_fraction=0.6, max_steps=30))


def _train(root, task, seed=0):
    recipe = get_recipe("fast").replace(train_fraction=0.6, max_steps=150, model=SMALL)
    train_stack([RunSpec(task, recipe, seed, root / task)], threads=1)
    return root / task


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    base = _train(root, "add_mod_11")
    adapted = adapt(base, "sub_mod_11", SPEC, root)
    return base, adapted


def test_adapter_starts_at_the_base_model_and_reaches_every_matrix(runs):
    base, _ = runs
    info, model = load_run(base)
    x = torch.as_tensor(get_task("add_mod_11").dataset().inputs)
    before = model(x).detach()
    names = expand_targets(info.model_config, SPEC.targets)
    assert len(names) == 8  # Q, K, V, O, W_in, W_out, W_E, W_U
    wrapped = attach(model, SPEC, names, str(base), "0" * 64)
    assert torch.equal(wrapped(x).detach(), before)  # B = 0 at init
    lora_b = [p for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert len(lora_b) == len(names)
    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.1)
    assert not torch.allclose(wrapped(x).detach(), before)


def test_adapted_run_directory(runs):
    base, result = runs
    run = read_run(result.run_dir)
    parent = run.config["parent"]
    assert run.task == "sub_mod_11" and parent["how"] == "lora" and parent["run"] == str(base)
    assert parent["method"]["rank"] == 2 and len(parent["method"]["targets"]) == 8
    assert 0 < parent["method"]["trainable_fraction"] < 1
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["revision"] == parent["weights_sha256"] and adapter["r"] == 2
    assert adapter["base_model_name_or_path"] == str(base)
    # peft's own loader, then merge: the run's model.safetensors is that merged model
    _, fresh = load_run(base)
    peft_model = PeftModel.from_pretrained(fresh, str(result.run_dir / "adapter"))
    merged = peft_model.merge_and_unload()
    saved = load_file(str(result.run_dir / "model.safetensors"))
    for name, tensor in merged.tl_state_dict().items():
        assert torch.equal(tensor.detach(), saved[name]), name
    check = result.merge
    assert check["identical_predictions"] and check["max_abs_logit_diff"] <= 1e-5
    assert check["n_inputs"] == 121


def test_load_adapted_refuses_another_base(runs, tmp_path):
    base, result = runs
    _, model = load_adapted(base, result.run_dir)  # the run directory or adapter/ both work
    other = _train(tmp_path, "add_mod_11", seed=1)
    with pytest.raises(AdaptError, match="sha256"):
        load_adapted(other, result.run_dir / "adapter")


@pytest.mark.parametrize(
    ("task", "spec", "message"),
    [
        ("sub_mod_13", SPEC, "input tokens"),  # another vocabulary
        ("sub_mod_11", LoraSpec(rank=17), "larger than"),  # d_head is 16
        ("sub_mod_11", LoraSpec(targets=("W_X",)), "names no weight matrix"),
    ],
)
def test_bad_adaptations_write_nothing(runs, tmp_path, task, spec, message):
    base, _ = runs
    with pytest.raises(AdaptError, match=message):
        adapt(base, task, spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def _adapt_cli(base, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", "adapt", str(base), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_adapt_errors_are_one_line(runs, tmp_path):
    base, result = runs
    for args in (
        ["--task", "sub_mod_13"],
        ["--task", "sub_mod_11", "--rank", "99"],
        ["--task", "sub_mod_11", "--adapter", str(tmp_path)],
        ["--task", "sub_mod_11", "--weight-decay", "-1"],
    ):
        res = _adapt_cli(base, *args, "--out", str(tmp_path / "o"))
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()


def test_cli_adapt_weight_decay_reaches_the_adapter_recipe(runs, tmp_path):
    base, _ = runs
    res = _adapt_cli(
        base, "--task", "sub_mod_11", "--rank", "2", "--max-steps", "3", "--weight-decay", "0.5",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (run,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    info = read_run(run)
    assert info.recipe.weight_decay == 0.5
    assert info.recipe.max_steps == 3


def test_targets_may_have_ranks_of_their_own_at_one_scale(runs):
    base, _ = runs
    info, model = load_run(base)
    spec = LoraSpec(rank=2, alpha=8, targets=("W_V", "W_pos"), ranks=(("W_pos", 3),))
    names = expand_targets(info.model_config, spec.targets)
    assert names == ["blocks.0.attn.W_V", "pos_embed.W_pos"]
    assert [spec.rank_of(n) for n in names] == [2, 3]
    wrapped = attach(model, spec, names, str(base), "0" * 64)
    # W_V (2 heads, 32 -> 16): rank 2 per head; W_pos (3 x 32): rank 3
    count = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)
    assert count == 2 * 2 * (32 + 16) + 3 * (3 + 32)
    scalings = {
        float(v) for m in wrapped.modules() if isinstance(getattr(m, "scaling", None), dict)
        for v in m.scaling.values()
    }  # fmt: skip
    assert scalings == {4.0}  # alpha / rank for every adapter
    with pytest.raises(AdaptError, match="not a target"):
        LoraSpec(targets=("W_V",), ranks=(("W_Q", 2),))
    with pytest.raises(AdaptError, match="positive integer"):
        LoraSpec(targets=("W_V",), ranks=(("W_V", 0),))


def test_cli_adapt_takes_ranks_per_target(runs, tmp_path):
    base, _ = runs
    res = _adapt_cli(
        base, "--task", "sub_mod_11", "--rank", "1", "--targets", "W_V:3,W_pos:2",
        "--max-steps", "3", "--out", str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (run,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    text = json.dumps(json.loads((run / "config.json").read_text()))
    assert '"blocks.0.attn.W_V": 3' in text and '"pos_embed.W_pos": 2' in text
    # the same adapter applied from its files records the same ranks
    from circuitlab.training.lora import ADAPTER_DIR

    applied = _adapt_cli(
        base, "--task", "sub_mod_11", "--adapter", str(run / ADAPTER_DIR),
        "--out", str(tmp_path / "applied"),
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    (again,) = [d for d in (tmp_path / "applied").iterdir() if d.is_dir()]
    method = json.loads((run / "config.json").read_text())["parent"]["method"]
    method_again = json.loads((again / "config.json").read_text())["parent"]["method"]
    assert method_again["ranks"] == method["ranks"]
    bad = _adapt_cli(
        base, "--task", "sub_mod_11", "--targets", "W_V:x", "--out", str(tmp_path / "b")
    )
    assert bad.returncode == 2 and "must be an integer" in bad.stderr
    assert not (tmp_path / "b").exists()


def test_lr_decay_is_a_line_to_zero_after_the_warmup():
    recipe = LORA_RECIPE.replace(warmup_steps=10, max_steps=100)
    assert [lr_factor(s, recipe, False) for s in (0, 9, 50, 100)] == [0.1, 1.0, 1.0, 1.0]
    decayed = [lr_factor(s, recipe, True) for s in (0, 9, 50, 100)]
    assert decayed == pytest.approx([0.1, 0.91, 0.5, 0.0])


def test_cli_adapt_decay_reaches_the_adapter_and_is_recorded(runs, tmp_path):
    base, _ = runs
    res = _adapt_cli(
        base, "--task", "sub_mod_11", "--rank", "2", "--max-steps", "20", "--decay",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    (run,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    config = json.loads((run / "config.json").read_text())
    assert json.dumps(config).count("linear decay to 0") == 1
    lrs = [json.loads(line)["lr"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12) and max(lrs) > 0


def test_weight_table_keeps_parameter_names():
    cfg = get_recipe("fast").replace(model=SMALL)
    from circuitlab.models import ModelConfig

    model = Transformer(ModelConfig.for_task(get_task("add_mod_11"), **cfg.model))
    assert Transformer.weight_key("blocks.0.mlp.W_in") == "weights.blocks__0__mlp__W_in"
    names = {n for n, _ in model.named_parameters()}
    assert "weights.blocks__0__mlp__W_in" in names
