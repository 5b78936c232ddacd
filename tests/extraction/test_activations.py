"""Activation collection: batching, positions that matter, bad input."""

from __future__ import annotations

import pytest
import torch

from circuitlab.extraction.activations import (
    ActivationError,
    collect,
    layer_positions,
    mlp_activations,
    task_tokens,
)
from circuitlab.models import ModelConfig, Transformer
from circuitlab.tasks import get_task


def tiny_model(n_layers: int = 2, normalization: str | None = None, **kw) -> Transformer:
    cfg = ModelConfig(
        d_vocab=12,
        d_vocab_out=11,
        n_ctx=kw.pop("n_ctx", 3),
        n_layers=n_layers,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_mlp=24,
        normalization=normalization,
        **kw,
    )
    return Transformer(cfg, seed=1).eval()


def random_tokens(n: int, s: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 12, (n, s), generator=torch.Generator().manual_seed(seed))


def test_collect_is_independent_of_batch_size():
    model = tiny_model(2, "LN")
    tokens = random_tokens(50)
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.1.hook_mlp_out"]
    whole = collect(model, tokens, names, batch_size=1000)
    pieces = collect(model, tokens, names, batch_size=7)
    for name in names:
        assert torch.allclose(whole[name], pieces[name], atol=1e-6)
    assert whole["blocks.1.hook_mlp_out"].shape == (50, 1, 16)  # last block: answers only
    full = collect(model, tokens, names, answers_only=False)
    assert full["blocks.1.hook_mlp_out"].shape == (50, 3, 16)
    assert torch.allclose(full["blocks.1.hook_mlp_out"][:, 2:], whole["blocks.1.hook_mlp_out"])


def test_layer_positions_follow_causality():
    cfg = tiny_model(3, n_ctx=5, answer_positions=(2, 3)).cfg
    assert layer_positions(cfg) == [(0, 1, 2, 3), (0, 1, 2, 3), (2, 3)]
    assert layer_positions(tiny_model(1).cfg) == [(2,)]


@pytest.mark.parametrize("normalization", [None, "LN"])
def test_mlp_activations_match_a_full_forward_pass(normalization):
    model = tiny_model(3, normalization, n_ctx=5, answer_positions=(2, 3))
    tokens = random_tokens(40, 5)
    acts = mlp_activations(model, tokens, batch_size=16)
    _, cache = model.run_with_cache(tokens, answers_only=False)
    assert acts.positions == layer_positions(model.cfg)
    for layer, positions in enumerate(acts.positions):
        cols = list(positions)
        want_in = cache[f"blocks.{layer}.hook_mlp_in"][:, cols]
        want_out = cache[f"blocks.{layer}.hook_mlp_out"][:, cols]
        assert torch.allclose(acts.mlp_in[layer], want_in, atol=1e-5)
        assert torch.allclose(acts.mlp_out[layer], want_out, atol=1e-5)
    assert acts.subset(torch.tensor([0, 3])).mlp_in[0].shape == (2, 4, 16)


def test_bad_tokens_and_names_give_clear_errors():
    model = tiny_model(1)
    with pytest.raises(ActivationError, match="d_vocab=12"):
        collect(model, torch.tensor([[0, 1, 12]]), ["hook_embed"])
    with pytest.raises(ActivationError, match="n_ctx=3"):
        collect(model, torch.zeros(2, 4, dtype=torch.long), ["hook_embed"])
    with pytest.raises(ActivationError, match="integers"):
        collect(model, torch.zeros(2, 3), ["hook_embed"])
    with pytest.raises(ActivationError, match="no hook point"):
        collect(model, torch.zeros(2, 3, dtype=torch.long), ["blocks.5.hook_mlp_in"])
    no_mlp = Transformer(ModelConfig(d_vocab=12, d_vocab_out=11, d_mlp=0, d_model=16))
    with pytest.raises(ActivationError, match="no MLPs"):
        mlp_activations(no_mlp, torch.zeros(2, 3, dtype=torch.long))


def test_task_tokens_samples_deterministically():
    task = get_task("add_mod_13")
    inputs, targets = task_tokens(task)
    assert inputs.shape == (169, 3) and targets.shape == (169, 1)
    a, ta = task_tokens(task, sample=20, seed=3)
    b, _ = task_tokens(task, sample=20, seed=3)
    assert torch.equal(a, b) and a.shape == (20, 3)
    assert torch.equal(ta[:, 0], (a[:, 0] + a[:, 1]) % 13)
