import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from circuitlab.models import Transformer
from circuitlab.tasks import get_task
from circuitlab.training import load_run, read_run
from circuitlab.training.derived import evaluate
from circuitlab.training.prune import (
    PruneConfig,
    PruneError,
    magnitude_masks,
    prune,
    weight_names,
)
from circuitlab.training.structured import ablation_importance, neuron_means, unit_masks


@pytest.fixture(scope="module")
def run_dir(small_run):
    return small_run("add_mod_11", 200, "add11")


def test_magnitude_masks_by_hand():
    params = {"a": torch.tensor([[1.0, -5.0], [3.0, 0.5]]), "b": torch.tensor([[2.0]])}
    glob = magnitude_masks(params, ["a", "b"], 0.4)  # 2 of 5 entries: 0.5 and 1
    assert glob["a"].tolist() == [[False, True], [True, False]] and glob["b"].item()
    layer = magnitude_masks(params, ["a", "b"], 0.4, scope="layer")  # 2 of 4 in a, 0 of 1 in b
    assert layer["a"].tolist() == [[False, True], [True, False]] and layer["b"].item()
    # iterative: what is gone stays gone, even where the new weights are large
    grown = {"a": torch.tensor([[9.0, -5.0], [3.0, 0.1]]), "b": torch.tensor([[2.0]])}
    more = magnitude_masks(grown, ["a", "b"], 0.6, keep=glob)
    assert more["a"].tolist() == [[False, True], [True, False]] and not more["b"].item()


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_outside_unit_interval_is_refused(bad):
    with pytest.raises(PruneError, match=r"\[0, 1\)"):
        PruneConfig("magnitude", (bad,))


def test_removing_units_equals_ablating_them_with_hooks(run_dir):
    info, model = load_run(run_dir)
    cfg = info.model_config
    params = {n: p.detach() for n, p in model.tl_state_dict().items()}
    data = get_task(info.task).dataset()
    x, y = torch.as_tensor(data.inputs), torch.as_tensor(data.targets)
    for unit, hook, index in (
        ("neurons", "blocks.0.mlp.hook_post", 5),
        ("heads", "blocks.0.attn.hook_z", 1),
    ):
        masks = unit_masks(cfg, unit, {0: [index]})
        pruned = Transformer(cfg)
        pruned.load_tl_state_dict({n: p * masks[n] if n in masks else p for n, p in params.items()})

        def zero(act, name, i=index):
            act = act.clone()
            if name.endswith("hook_z"):
                act[..., i, :] = 0
            else:
                act[..., i] = 0
            return act

        with torch.no_grad(), model.hooks([(hook, zero)]):
            expected = model(x)
        assert torch.allclose(pruned(x).detach(), expected, atol=1e-5)
    # importance is the loss rise of that intervention (neurons: mean ablation)
    means = neuron_means(params, cfg, x)
    imp = ablation_importance(params, cfg, x, y, "neurons")

    def to_mean(act, name):
        act = act.clone()
        act[..., 5] = means[0, 5]
        return act

    with torch.no_grad():
        base = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        with model.hooks([("blocks.0.mlp.hook_post", to_mean)]):
            hit = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    assert imp[0, 5].item() == pytest.approx((hit - base).item(), abs=1e-5)


def test_magnitude_sweep_writes_runs_and_curve(run_dir, tmp_path):
    root, points = prune(run_dir, PruneConfig("magnitude", (0.0, 0.6)), tmp_path)
    assert (root / "curve.json").is_file() and (root / "curve.png").is_file()
    curve = json.loads((root / "curve.json").read_text())
    assert [p["sparsity"] for p in curve["points"]] == [0.0, 0.6]
    parent = read_run(run_dir)
    dense, sparse = (read_run(p.run) for p in points)
    assert points[0].acc_all == pytest.approx(
        evaluate(load_run(run_dir)[1].tl_state_dict(), parent.model_config, "add_mod_11", 0.6, 0)[
            "acc_all"
        ]
    )
    config = sparse.config
    assert config["parent"]["how"] == "prune" and config["parent"]["run"] == str(run_dir)
    assert len(config["parent"]["weights_sha256"]) == 64
    masks = load_file(str(sparse.path / "masks.safetensors"))
    weights = load_file(str(sparse.path / "model.safetensors"))
    names = weight_names(parent.model_config)
    assert set(masks) == set(names)
    assert all(torch.all(weights[n][masks[n] == 0] == 0) for n in names)
    assert points[1].weight_sparsity == pytest.approx(0.6, abs=1e-3)
    assert dense.summary["acc_all"] == points[0].acc_all


def test_masked_finetune_and_lottery_keep_pruned_weights_at_zero(run_dir, tmp_path):
    config = PruneConfig("lottery", (0.5,), rounds=2, max_steps=30)
    _, (point,) = prune(run_dir, config, tmp_path)
    ticket = read_run(point.run)
    masks = load_file(str(ticket.path / "masks.safetensors"))
    weights = load_file(str(ticket.path / "model.safetensors"))
    assert all(torch.all(weights[n][masks[n] == 0] == 0) for n in masks)
    assert point.weight_sparsity == pytest.approx(0.5, abs=1e-3)
    method = ticket.config["parent"]["method"]
    assert method["rounds"] == 2 and method["rewind"] == "init"
    assert len(method["round_history"]) == 1
    # a derived run cannot be rewound: it did not start from its seed's init
    with pytest.raises(PruneError, match="derived"):
        prune(point.run, PruneConfig("lottery", (0.5,)), tmp_path)


def test_neuron_pruning_keeps_accuracy_at_half(run_dir, tmp_path):
    _, points = prune(run_dir, PruneConfig("neurons", (0.25,), finetune=20), tmp_path)
    (p,) = points
    assert p.extra["units_kept"] == 48 and p.extra["units_total"] == 64
    weights = load_file(str(p.run + "/model.safetensors"))
    removed = json.loads((read_run(p.run).path / "config.json").read_text())
    gone = removed["parent"]["method"]["removed"]["0"]
    assert len(gone) == 16 and torch.all(weights["blocks.0.mlp.W_out"][gone] == 0)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_prune_bad_sparsity_writes_nothing(run_dir, tmp_path):
    res = _cli("prune", str(run_dir), "--sparsity", "0.5,1.0", "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "[0, 1)" in res.stderr
    assert not (tmp_path / "o").exists()
