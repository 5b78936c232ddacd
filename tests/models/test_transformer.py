import dataclasses

import pytest
import torch

from circuitlab.models import CheckpointError, ModelConfig, ModelConfigError, Transformer
from circuitlab.models import functional as Fn


def small_config(**overrides) -> ModelConfig:
    base = dict(d_vocab=12, d_vocab_out=11, n_ctx=3, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    return ModelConfig(**(base | overrides))


def tokens(cfg: ModelConfig, n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, cfg.d_vocab, (n, cfg.n_ctx), generator=torch.Generator().manual_seed(seed)
    )


@pytest.mark.parametrize("normalization", [None, "LN"])
@pytest.mark.parametrize("n_layers", [1, 2])
def test_answer_only_logits_equal_full_forward(normalization, n_layers):
    cfg = small_config(
        normalization=normalization, n_layers=n_layers, n_ctx=4, answer_positions=(1, 3)
    )
    model = Transformer(cfg, seed=3)
    x = tokens(cfg)
    full = model(x, answers_only=False)
    assert full.shape == (64, 4, 11)
    torch.testing.assert_close(model(x), full[:, [1, 3]], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("normalization", [None, "LN"])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize(
    "shape",
    [
        dict(answer_positions=(2,)),
        dict(answer_positions=(0, 2)),
        # a 3x3 grid task: 9 answers after 9 cells, so attention mixes values by matmul
        dict(d_vocab=4, d_vocab_out=3, n_ctx=18, answer_positions=tuple(range(9, 18))),
    ],
    ids=["tail", "two-answers", "grid"],
)
@pytest.mark.parametrize("batch", [10, 200])  # gathered q and k / tabled scores
def test_vocabulary_tables_match_per_example_path(normalization, n_layers, shape, batch):
    # Without hooks block 0 uses per-token tables; with a no-op hook it computes per example.
    cfg = small_config(normalization=normalization, n_layers=n_layers, **shape)
    assert Fn.score_table_pays(cfg.d_vocab, batch, cfg.d_head) == (batch == 200)
    params = {
        n: torch.stack([Fn.init_params(cfg, seed)[n] for seed in (1, 2)]).requires_grad_()
        for n in Fn.param_shapes(cfg)
    }
    x = torch.stack([tokens(cfg, n=batch, seed=s) for s in (0, 1)])

    def logits_and_grads(hook):
        out = Fn.forward(params, cfg, x, hook=hook)
        grads = torch.autograd.grad(out.pow(2).sum(), list(params.values()))
        return out, grads

    fast, fast_grads = logits_and_grads(None)
    slow, slow_grads = logits_and_grads(lambda name, a: a)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n_ctx", [3, 18])  # values mixed by multiply-and-sum / by matmul
def test_sdpa_backend_matches_explicit(n_ctx):
    cfg = small_config(n_layers=2, n_ctx=n_ctx, answer_positions=(n_ctx - 1,))
    x = tokens(cfg)
    explicit = Transformer(cfg, seed=0)(x, answers_only=False)
    sdpa_model = Transformer(dataclasses.replace(cfg, attention_backend="sdpa"), seed=0)
    torch.testing.assert_close(sdpa_model(x, answers_only=False), explicit, atol=1e-5, rtol=1e-5)


def test_backend_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert Fn.resolve_backend(small_config(), cpu, need_pattern=False) == "explicit"
    long_ctx = small_config(n_ctx=128, answer_positions=(127,))
    assert Fn.resolve_backend(long_ctx, cpu, need_pattern=False) == "sdpa"
    assert Fn.resolve_backend(long_ctx, cpu, need_pattern=True) == "explicit"
    flash = small_config(attention_backend="flash")
    assert Fn.resolve_backend(flash, cpu, need_pattern=False) == "sdpa"  # no CUDA here


def test_forward_accepts_numpy_arrays_and_lists():
    import numpy as np

    cfg = small_config()
    model = Transformer(cfg, seed=1)
    x = tokens(cfg, n=5)
    expected = model(x)
    for other in (x.numpy(), x.numpy().astype(np.int32), x.tolist()):
        torch.testing.assert_close(model(other), expected)
    logits, cache = model.run_with_cache(x.numpy())
    torch.testing.assert_close(logits, model(x, answers_only=False))
    assert "blocks.0.mlp.hook_post" in cache


def test_hooks_see_named_activations_and_are_removed():
    cfg = small_config(normalization="LN")
    model = Transformer(cfg)
    x = tokens(cfg, n=5)
    logits, cache = model.run_with_cache(x)
    assert set(cache) == set(Fn.hook_names(cfg))
    assert cache["blocks.0.attn.hook_pattern"].shape == (5, 2, 3, 3)
    # causal: no attention to later positions, rows sum to one
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.all(pattern.triu(1) == 0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(5, 2, 3))
    assert not any(p.active for p in model.hook_dict.values())


def test_hook_can_patch_an_activation():
    cfg = small_config()
    model = Transformer(cfg)
    x = tokens(cfg, n=8)
    with model.hooks([("blocks.0.mlp.hook_post", lambda a, name: torch.zeros_like(a))]):
        ablated = model(x, answers_only=False)
    _, cache = model.run_with_cache(x)
    resid = cache["blocks.0.hook_resid_mid"]
    expected = resid + model.param("blocks.0.mlp.b_out")
    expected = expected @ model.param("unembed.W_U") + model.param("unembed.b_U")
    torch.testing.assert_close(ablated, expected, atol=1e-5, rtol=1e-5)


def test_unknown_hook_name_is_refused():
    model = Transformer(small_config())
    with (
        pytest.raises(KeyError, match="no hook point"),
        model.hooks([("blocks.9.hook_nope", print)]),
    ):
        pass


def test_same_seed_same_weights_different_seed_differs():
    cfg = small_config()
    a, b, c = Transformer(cfg, seed=5), Transformer(cfg, seed=5), Transformer(cfg, seed=6)
    for name, tensor in a.tl_state_dict().items():
        assert torch.equal(tensor, b.tl_state_dict()[name])
    assert not torch.equal(a.param("embed.W_E"), c.param("embed.W_E"))


def test_save_load_round_trip_and_mismatch(tmp_path):
    cfg = small_config()
    model = Transformer(cfg, seed=2)
    model.save(tmp_path)
    loaded = Transformer.load(tmp_path / "model.safetensors", cfg)
    x = tokens(cfg)
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(CheckpointError, match="shape"):
        Transformer.load(tmp_path / "model.safetensors", dataclasses.replace(cfg, d_mlp=64))
    with pytest.raises(CheckpointError, match="missing"):
        Transformer.load(tmp_path / "model.safetensors", dataclasses.replace(cfg, n_layers=2))
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes((tmp_path / "model.safetensors").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read"):
        Transformer.load(truncated, cfg)


def test_config_validation_names_the_field():
    with pytest.raises(ModelConfigError, match="answer_positions"):
        small_config(answer_positions=(3,))
    with pytest.raises(ModelConfigError, match="act_fn"):
        small_config(act_fn="tanh")
    cfg = small_config()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.n_params == sum(t.numel() for t in Transformer(cfg).tl_state_dict().values())
    ln = small_config(normalization="LN", n_layers=2)
    assert ln.n_params == sum(t.numel() for t in Transformer(ln).tl_state_dict().values())


def test_config_for_task_refuses_a_model_that_cannot_read_the_task():
    from circuitlab.tasks import get_task

    task = get_task("add_mod_13")
    assert ModelConfig.for_task(task, d_model=64).d_vocab == 14
    with pytest.raises(ModelConfigError, match="n_ctx=2 is too small for task add_mod_13"):
        ModelConfig.for_task(task, n_ctx=2)
    with pytest.raises(ModelConfigError, match="d_vocab=5"):
        ModelConfig.for_task(task, d_vocab=5)
