"""Hooks and caches behave as TransformerLens's do: the same names hold the same activations,
hooks written for TransformerLens (`hook.name`, `hook.layer()`) run unchanged, and the cache
takes TransformerLens's short keys."""

import warnings

import pytest
import torch

from circuitlab.models import ModelConfig, Transformer
from circuitlab.models.hooks import act_name


def _model(**overrides) -> Transformer:
    base = dict(
        d_vocab=14, d_vocab_out=13, n_ctx=3, answer_positions=(2,), d_model=32, n_heads=4,
        d_head=8, d_mlp=64, n_layers=2,
    )  # fmt: skip
    model = Transformer(ModelConfig(**(base | overrides)), seed=5)
    with torch.no_grad():  # LayerNorm gains and biases away from 1 and 0, as after training
        for name, p in model.tl_state_dict().items():
            if name.rsplit(".", 1)[1] in ("w", "b"):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.3)
    return model


@pytest.mark.parametrize("overrides", [dict(), dict(normalization="LN", act_fn="gelu")])
def test_every_shared_hook_name_holds_the_same_activation(overrides):
    pytest.importorskip("transformer_lens")
    from circuitlab.models.export import to_hooked_transformer

    model = _model(**overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hooked = to_hooked_transformer(model)
    tokens = torch.randint(0, 14, (6, 3), generator=torch.Generator().manual_seed(0))
    _, ours = model.run_with_cache(tokens)
    _, theirs = hooked.run_with_cache(tokens)
    shared = set(ours) & set(theirs.keys())
    # everything TransformerLens caches, we cache (hook_pos_embed with its batch size too)
    assert set(theirs.keys()) <= set(ours), sorted(set(theirs.keys()) - set(ours))
    for name in sorted(shared):
        if name.endswith("hook_mlp_in") and model.cfg.normalization:
            # the one documented difference: ours is what the MLP reads (after ln2 and its
            # gain and bias, what a transcoder reads), TransformerLens's the residual before
            # ln2; TransformerLens has no hook on the MLP's input, only on the normalized
            # residual before the gain and bias
            layer = name.split(".")[1]
            gain, bias = (model.param(f"blocks.{layer}.ln2.{x}") for x in "wb")
            normalized = theirs[f"blocks.{layer}.ln2.hook_normalized"]
            torch.testing.assert_close(ours[name], normalized * gain + bias, atol=1e-5, rtol=0)
            assert not torch.allclose(ours[name], normalized, atol=1e-3)
            continue
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=0, msg=name)


def test_hooks_take_transformer_lens_signature_and_short_cache_keys():
    model = _model()
    seen = []

    def tl_style(act, hook):  # a hook written for TransformerLens
        seen.append((hook.name, hook.layer()))
        return act * 0 if hook.name.endswith("hook_pattern") else None

    tokens = torch.tensor([[1, 2, 13]])
    with model.hooks([(lambda n: n.endswith("hook_pattern"), tl_style)]):
        ablated = model(tokens)
    assert seen == [("blocks.0.attn.hook_pattern", 0), ("blocks.1.attn.hook_pattern", 1)]
    assert not torch.allclose(ablated, model(tokens))  # the returned activation was used
    _, cache = model.run_with_cache(tokens)
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_post", 0] is cache["blocks.0.hook_resid_post"]
    assert cache["embed"] is cache["hook_embed"] and ("post", 1) in cache
    assert cache["hook_pos_embed"].shape == (1, 3, 32)
    with pytest.raises(KeyError, match="needs a layer"):
        cache["pattern"]


def test_short_names_match_transformer_lens():
    utils = pytest.importorskip("transformer_lens.utils")
    for args in [
        ("pattern", 0), ("attn", 1), ("attn_scores", 0), ("q", 2), ("z", 0), ("resid_pre", 3),
        ("resid_mid", 0), ("resid_post", 1), ("attn_out", 0), ("mlp_out", 0), ("mlp_in", 1),
        ("pre", 0), ("post", 1), ("scale", 0, "ln1"), ("normalized", 1, "ln2"), ("embed",),
        ("pos_embed",), ("scale",), ("blocks.0.hook_resid_pre",),
    ]:  # fmt: skip
        assert act_name(*args) == utils.get_act_name(*args), args
