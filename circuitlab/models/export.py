"""Export to TransformerLens (3.x `HookedTransformer`), the field's common analysis model.

Our parameter names and shapes are TransformerLens's, so the export is a config translation
plus a state-dict copy. TransformerLens 4 removed `HookedTransformer`; install the `lens` extra
(transformer-lens 3.9) to use this. TransformerLens always computes every position, so compare
with `model(tokens, answers_only=False)`.
"""

from __future__ import annotations

from typing import Any

from circuitlab.models.transformer import Transformer


class ExportError(RuntimeError):
    """The export target library is missing or cannot represent this model."""


def to_hooked_transformer(model: Transformer) -> Any:
    """A `transformer_lens.HookedTransformer` computing the same logits as `model`."""
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as exc:
        raise ExportError(
            "TransformerLens 3.x is needed for this export: pip install 'circuitlab[lens]' "
            f"(transformer-lens 4 removed HookedTransformer): {exc}"
        ) from None
    cfg = model.cfg
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp if cfg.d_mlp else None,
        attn_only=cfg.d_mlp == 0,
        d_vocab=cfg.d_vocab,
        d_vocab_out=cfg.d_vocab_out,
        n_ctx=cfg.n_ctx,
        act_fn=cfg.act_fn,
        normalization_type=cfg.normalization,
        eps=1e-5,
        positional_embedding_type="standard",
        attention_dir="causal" if cfg.causal else "bidirectional",
        default_prepend_bos=False,
        device="cpu",
        seed=0,
    )
    hooked = HookedTransformer(tl_cfg)
    state = {name: tensor.detach().clone() for name, tensor in model.tl_state_dict().items()}
    # TransformerLens keeps buffers (causal masks, IGNORE) in its state dict: keep its own.
    current = hooked.state_dict()
    missing = [k for k in current if k not in state and not k.endswith(("mask", "IGNORE"))]
    if missing:
        raise ExportError(
            f"TransformerLens expects parameters circuitlab does not have: {missing[:5]}"
        )
    current.update(state)
    hooked.load_state_dict(current, strict=True)
    return hooked
