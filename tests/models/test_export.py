import warnings

import pytest
import torch

from circuitlab.models import ModelConfig, Transformer
from circuitlab.models.export import to_hooked_transformer

transformer_lens = pytest.importorskip("transformer_lens")


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # Nanda's shape: no LayerNorm, ReLU
        dict(normalization="LN", n_layers=2, act_fn="gelu"),
        dict(d_mlp=0, n_layers=2),  # attention only
    ],
)
def test_hooked_transformer_logits_match(overrides):
    base = dict(
        d_vocab=30,
        d_vocab_out=29,
        n_ctx=5,
        answer_positions=(4,),
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
    )
    cfg = ModelConfig(**(base | overrides))
    model = Transformer(cfg, seed=7)
    with torch.no_grad():  # non-zero biases so their mapping is checked too
        for name, p in model.tl_state_dict().items():
            if ".b_" in name or name.endswith(".b"):
                p.normal_(0, 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.x warns that 4.0 drops it
        hooked = to_hooked_transformer(model)
    assert isinstance(hooked, transformer_lens.HookedTransformer)
    tokens = torch.randint(0, 30, (16, 5), generator=torch.Generator().manual_seed(0))
    ours = model(tokens, answers_only=False)
    theirs = hooked(tokens)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    # the hook names agree too: the same activation under the same name
    _, our_cache = model.run_with_cache(tokens)
    _, tl_cache = hooked.run_with_cache(tokens)
    for name in ("blocks.0.attn.hook_pattern", "blocks.0.hook_resid_pre", "blocks.0.hook_attn_out"):
        torch.testing.assert_close(tl_cache[name], our_cache[name], atol=1e-5, rtol=0)
