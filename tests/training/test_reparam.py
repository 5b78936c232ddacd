"""The principal basis is the same model in other coordinates, and one magnitude pruning can
read: the logits must not move, the residual's principal axes must be what the weights now
write along, and (on a trained model) pruning in it must keep more accuracy than in the trained
basis."""

import pytest
import torch

from circuitlab.models import ModelConfig, Transformer
from circuitlab.tasks import get_task
from circuitlab.training import load_run, read_run
from circuitlab.training.prune import (
    PruneConfig,
    PruneError,
    apply_masks,
    magnitude_masks,
    prune,
    weight_names,
)
from circuitlab.training.reparam import ReparamError, principal_basis, varimax


@pytest.fixture(scope="module")
def run_dir(small_run):
    return small_run("add_mod_11", 200, "add11")


def _logits(params, cfg, tokens):
    model = Transformer(cfg)
    model.load_tl_state_dict(params)
    with torch.no_grad():
        return model(tokens, answers_only=False)


@pytest.mark.parametrize("act_fn", ["relu", "gelu"])
def test_the_principal_basis_computes_the_same_function(act_fn):
    cfg = ModelConfig(
        d_vocab=7, d_vocab_out=7, n_ctx=4, n_layers=2, d_model=16, n_heads=2, d_head=4, d_mlp=24,
        answer_positions=(2, 3), act_fn=act_fn,
    )  # fmt: skip
    params = {n: p.detach() for n, p in Transformer(cfg, seed=5).tl_state_dict().items()}
    params = {n: p + 0.05 * torch.randn_like(p) for n, p in params.items()}  # biases non-zero
    tokens = torch.randint(0, 7, (64, 4), generator=torch.Generator().manual_seed(0))
    new = principal_basis(params, cfg, tokens)
    before, after = _logits(params, cfg, tokens), _logits(new, cfg, tokens)
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()
    assert any(not torch.allclose(new[n], params[n]) for n in weight_names(cfg))
    # inputs the statistics never saw get the same logits too: the change is exact
    other = torch.randint(0, 7, (32, 4), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(_logits(new, cfg, other), _logits(params, cfg, other), atol=1e-4)


def test_layernorm_models_are_refused():
    cfg = ModelConfig(d_vocab=5, d_vocab_out=5, n_ctx=3, d_model=8, n_heads=2, d_head=4,
                      d_mlp=8, answer_positions=(2,), normalization="LN")  # fmt: skip
    params = Transformer(cfg).tl_state_dict()
    with pytest.raises(ReparamError, match="LayerNorm"):
        principal_basis(params, cfg, torch.zeros(2, 3, dtype=torch.long))


def test_varimax_finds_the_sparse_rotation():
    sparse = torch.zeros(40, 4, dtype=torch.float64)
    sparse[torch.arange(40), torch.arange(40) % 4] = torch.linspace(1, 2, 40, dtype=torch.float64)
    q, _ = torch.linalg.qr(
        torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    mixed = sparse @ q
    recovered = mixed @ varimax(mixed)
    # each row loads on one column again (up to the columns' order and signs)
    share = recovered.pow(2).max(1).values / recovered.pow(2).sum(1)
    assert share.min() > 0.999
    assert torch.allclose(varimax(mixed) @ varimax(mixed).T, torch.eye(4, dtype=torch.float64))


def test_pruning_in_the_principal_basis_keeps_more(run_dir, tmp_path):
    info, model = load_run(run_dir)
    task = get_task(info.task)
    tokens = torch.as_tensor(task.dataset().inputs)
    targets = torch.as_tensor(task.dataset().targets[:, 0])
    params = {n: p.detach() for n, p in model.tl_state_dict().items()}
    new = principal_basis(params, model.cfg, tokens)
    names = weight_names(model.cfg)

    def accuracy(ps):
        masks = magnitude_masks(ps, names, 0.8)
        logits = _logits(apply_masks(ps, masks), model.cfg, tokens)
        return float((logits[:, 2].argmax(-1) == targets).float().mean())

    assert accuracy(new) > accuracy(params) + 0.1
    # through prune(): the basis is recorded and the sweep is labelled by it
    root, (point,) = prune(run_dir, PruneConfig("magnitude", (0.8,), basis="principal"), tmp_path)
    assert root.name.endswith("magnitude-principal")
    assert read_run(point.run).config["parent"]["method"]["basis"] == "principal"
    assert point.acc_all == pytest.approx(
        accuracy(
            principal_basis(
                params,
                model.cfg,
                torch.as_tensor(task.split(info.recipe.train_fraction, info.seed).train.inputs),
            )
        ),
        abs=1e-6,
    )


def test_bad_basis_requests_are_refused():
    with pytest.raises(PruneError, match="basis must be"):
        PruneConfig("magnitude", (0.5,), basis="fourier")
    with pytest.raises(PruneError, match="magnitude pruning only"):
        PruneConfig("lottery", (0.5,), basis="principal")
    with pytest.raises(PruneError, match="finetune_lr"):
        PruneConfig("magnitude", (0.5,), finetune=10, finetune_lr=-1.0)


def test_cli_bad_basis_is_one_line_and_writes_nothing(run_dir, tmp_path):
    import subprocess
    import sys

    for args in (["--basis", "fourier"], ["--finetune", "5", "--finetune-lr", "-1"]):
        res = subprocess.run(
            [sys.executable, "-m", "circuitlab", "prune", str(run_dir), *args,
             "--out", str(tmp_path / "o")],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert res.returncode == 2, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
        assert not (tmp_path / "o").exists()
