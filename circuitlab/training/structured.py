"""Structured pruning: whole MLP neurons and attention heads, ranked by ablation importance.

1. A unit's importance is the rise in training loss when it alone is removed: its output
   weights zeroed (W_out row, W_O head), and for a neuron its mean output folded into b_out
   (mean ablation), so every ablation is a model of its own and many run as one stacked
   forward of the functional core.
2. The least important fraction is removed: input and output weights and biases
   (`unit_masks`); removed neurons' means go into b_out (`fold_means`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from circuitlab.models import ModelConfig
from circuitlab.models import functional as Fn

Masks = dict[str, torch.Tensor]  # name -> bool tensor, True = kept


def unit_masks(cfg: ModelConfig, unit: str, removed: Mapping[int, Sequence[int]]) -> Masks:
    """Masks removing whole units: `removed[layer]` lists MLP neurons (their W_in column, b_in
    entry and W_out row) or attention heads (their Q/K/V/O weights and biases)."""
    shapes = Fn.param_shapes(cfg)
    masks: Masks = {}
    for layer, units in removed.items():
        index = torch.as_tensor(list(units), dtype=torch.long)
        b = f"blocks.{layer}"
        if unit == "neurons":
            where = {
                f"{b}.mlp.W_in": (slice(None), index),
                f"{b}.mlp.b_in": (index,),
                f"{b}.mlp.W_out": (index,),
            }
        else:
            where = {f"{b}.attn.{w}_{x}": (index,) for x in "QKV" for w in "Wb"}
            where[f"{b}.attn.W_O"] = (index,)
        for name, at in where.items():
            mask = torch.ones(shapes[name], dtype=torch.bool)
            mask[at] = False
            masks[name] = mask
    return masks


# --- structured importance ---------------------------------------------------------------


@torch.no_grad()
def ablation_importance(
    params: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    tokens: torch.Tensor,  # (B, S)
    targets: torch.Tensor,  # (B, Q)
    unit: str,
    models_per_pass: int = 16,
    chunk: int = 4096,
) -> torch.Tensor:  # (n_layers, n_units): loss with the unit removed - loss of the full model
    """Ablation importance of every MLP neuron (mean-ablated) or attention head (zeroed).

    Removing a unit is zeroing its output weights (W_out row, W_O head), and a neuron's mean
    output is folded into b_out (`neuron_means`), so each ablation is a model of its own:
    `models_per_pass` ablated copies run as one stacked forward."""
    n_units = cfg.d_mlp if unit == "neurons" else cfg.n_heads
    name = "blocks.{}.mlp.W_out" if unit == "neurons" else "blocks.{}.attn.W_O"
    jobs = [(layer, u) for layer in range(cfg.n_layers) for u in range(n_units)]
    means = neuron_means(params, cfg, tokens) if unit == "neurons" else None

    def losses(variants: list[tuple[int, int] | None]) -> torch.Tensor:
        stacked = {
            n: p.unsqueeze(0).repeat(len(variants), *[1] * p.dim()) for n, p in params.items()
        }
        for i, v in enumerate(variants):
            if v is None:
                continue
            w = stacked[name.format(v[0])]
            if means is not None:
                stacked[f"blocks.{v[0]}.mlp.b_out"][i] += means[v[0]][v[1]] * w[i, v[1]]
            w[i, v[1]] = 0.0
        total = torch.zeros(len(variants), dtype=torch.float64)
        for start in range(0, len(tokens), chunk):
            x = tokens[start : start + chunk].expand(len(variants), -1, -1)
            logits = Fn.forward(stacked, cfg, x)
            y = targets[start : start + chunk].expand(len(variants), -1, -1)
            loss = F.cross_entropy(logits.flatten(0, 2), y.flatten(), reduction="none")
            total += loss.view(len(variants), -1).sum(1).double()
        return total / targets.numel()

    base = losses([None])[0]
    out = torch.zeros(cfg.n_layers, n_units, dtype=torch.float64)
    for start in range(0, len(jobs), models_per_pass):
        batch = jobs[start : start + models_per_pass]
        for (layer, u), loss in zip(batch, losses(list(batch)), strict=True):
            out[layer, u] = loss - base
    return out


@torch.no_grad()
def neuron_means(
    params: Mapping[str, torch.Tensor], cfg: ModelConfig, tokens: torch.Tensor
) -> torch.Tensor:  # (n_layers, d_mlp)
    """Mean post-activation of every MLP neuron over `tokens` (every position it runs at)."""
    from circuitlab.models import Transformer

    model = Transformer(cfg)
    model.load_tl_state_dict(dict(params))
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(cfg.n_layers)]
    _, cache = model.run_with_cache(tokens, names=lambda n: n in names, answers_only=True)
    return torch.stack([cache[n].flatten(0, -2).mean(0) for n in names])


def fold_means(
    params: Mapping[str, torch.Tensor], means: torch.Tensor, removed: Mapping[int, Sequence[int]]
) -> dict[str, torch.Tensor]:
    """Removed neurons replaced by their mean output, folded into b_out (mean ablation)."""
    out = {n: p.clone() for n, p in params.items()}
    for layer, units in removed.items():
        index = torch.as_tensor(list(units), dtype=torch.long)
        w_out = params[f"blocks.{layer}.mlp.W_out"]
        out[f"blocks.{layer}.mlp.b_out"] += means[layer, index] @ w_out[index]
    return out


def least_important(importance: torch.Tensor, sparsity: float) -> dict[int, list[int]]:
    """The `sparsity` fraction of units with the lowest importance, over all layers."""
    n_remove = int(round(sparsity * importance.numel()))
    order = torch.argsort(importance.flatten(), stable=True)[:n_remove].tolist()
    removed: dict[int, list[int]] = {}
    for flat in order:
        layer, u = divmod(flat, importance.shape[1])
        removed.setdefault(layer, []).append(u)
    return removed
