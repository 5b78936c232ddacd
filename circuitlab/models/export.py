"""Export to TransformerLens (3.x `HookedTransformer`), the field's common analysis model.

Our parameter names and shapes are TransformerLens's, so the export is a config translation
plus a state-dict copy. TransformerLens 4 removed `HookedTransformer`; install the `lens` extra
(transformer-lens 3.9) to use this. TransformerLens always computes every position, so compare
with `model(tokens, answers_only=False)`.

The two agree to float32 rounding, which grows with the logits: on a grokked add_mod_113
(logits up to ~50) they differ by ~1.5e-5, both ~3e-5 from a float64 reference. The bound
that holds is relative, |ours - theirs| <= LOGIT_RTOL * max |logit| (+ 1e-6).

On disk (`save_hooked_transformer`): `model.safetensors` (TransformerLens's whole state dict,
its buffers included, so `load_state_dict` is strict) and `config.json` (the
HookedTransformerConfig fields). `use_hook_mlp_in` is on, so sae-lens transcoders can read
`hook_mlp_in` (with it off, sae-lens silently reads `hook_mlp_out` instead).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from circuitlab.models.transformer import Transformer

LOGIT_RTOL = 2e-6  # see the module docstring: float32 rounding relative to the largest logit


class ExportError(RuntimeError):
    """The export target library is missing or cannot represent this model."""


def _transformer_lens() -> Any:
    try:
        import transformer_lens
    except ImportError as exc:
        raise ExportError(
            "TransformerLens 3.x is needed for this export: pip install 'circuitlab[lens]' "
            f"(transformer-lens 4 removed HookedTransformer): {exc}"
        ) from None
    if not hasattr(transformer_lens, "HookedTransformer"):
        raise ExportError(
            "this TransformerLens has no HookedTransformer (4.x removed it): "
            "pip install 'transformer-lens<4'"
        )
    return transformer_lens


def hooked_config(model: Transformer) -> dict[str, Any]:
    """The HookedTransformerConfig fields of `model`'s TransformerLens twin (JSON-ready)."""
    cfg = model.cfg
    return dict(
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
        use_hook_mlp_in=True,
        device="cpu",
        seed=0,
    )


def to_hooked_transformer(model: Transformer) -> Any:
    """A `transformer_lens.HookedTransformer` computing the same logits as `model`."""
    tl = _transformer_lens()
    hooked = tl.HookedTransformer(tl.HookedTransformerConfig(**hooked_config(model)))
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


def save_hooked_transformer(model: Transformer, directory: str | Path) -> Path:
    """Write `model` as TransformerLens loads it (see the module docstring); returns the
    directory. `load_hooked_transformer` reads it back with TransformerLens's own classes."""
    from safetensors.torch import save_file

    hooked = to_hooked_transformer(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in hooked.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "transformer-lens"})
    (directory / "config.json").write_text(json.dumps(hooked_config(model), indent=2) + "\n")
    return directory


def load_hooked_transformer(directory: str | Path) -> Any:
    """The HookedTransformer `save_hooked_transformer` wrote: what a TransformerLens user runs,
    `HookedTransformer(HookedTransformerConfig(**config))` and a strict `load_state_dict`."""
    from safetensors.torch import load_file

    tl = _transformer_lens()
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    hooked = tl.HookedTransformer(tl.HookedTransformerConfig(**config))
    hooked.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return hooked.eval()
