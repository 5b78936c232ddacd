"""Activations: run a model over a task's inputs in batches and keep hook points in memory.

Algorithmic tasks are small (add_mod_113 has 12,769 inputs of 3 tokens), so every activation a
transcoder needs fits in memory at once and no activation store or shuffling buffer is needed.

Which positions matter: the answers are read at `cfg.answer_positions`; with causal attention
the last block matters only at the answer positions and earlier blocks at every position up to
the last answer (every position when attention is bidirectional). `layer_positions` encodes
this and `mlp_activations` keeps exactly those rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from circuitlab.models import ModelConfig, Transformer


class ActivationError(ValueError):
    """Tokens that do not fit the model, or hook names it does not have."""


def check_tokens(model: Transformer, tokens: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(N, S) int64 tokens inside the model's vocabulary and context, or ActivationError."""
    tokens = torch.as_tensor(np.asarray(tokens) if not torch.is_tensor(tokens) else tokens)
    cfg = model.cfg
    if tokens.dim() != 2:
        raise ActivationError(f"tokens must be (N, S), got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ActivationError(f"tokens must be integers, got {tokens.dtype}")
    if tokens.shape[1] > cfg.n_ctx:
        raise ActivationError(
            f"inputs have {tokens.shape[1]} tokens, the model's context is n_ctx={cfg.n_ctx}"
        )
    if max(cfg.answer_positions) >= tokens.shape[1]:
        raise ActivationError(
            f"inputs have {tokens.shape[1]} tokens; the model reads answers at "
            f"{list(cfg.answer_positions)}"
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.d_vocab):
        raise ActivationError(
            f"token ids must be in [0, d_vocab={cfg.d_vocab}), got "
            f"[{int(tokens.min())}, {int(tokens.max())}]"
        )
    return tokens.long()


def layer_positions(cfg: ModelConfig, seq_len: int | None = None) -> list[tuple[int, ...]]:
    """Positions whose MLP activations can affect the answers, per layer.

    Earlier layers: 0..last answer position (every position when attention is not causal); the
    last layer: the answer positions only. This is
    also the layout of `hook_mlp_in`/`hook_mlp_out` in a forward pass with `answers_only=True`
    when the answers are the tail of the sequence (the usual case).
    """
    last = max(cfg.answer_positions)
    seq_len = cfg.n_ctx if seq_len is None else seq_len
    upto = tuple(range(min(last + 1, seq_len) if cfg.causal else seq_len))
    return [
        tuple(cfg.answer_positions) if layer == cfg.n_layers - 1 else upto
        for layer in range(cfg.n_layers)
    ]


def forward_positions(cfg: ModelConfig, seq_len: int, answers_only: bool) -> list[tuple[int, ...]]:
    """Positions present in layer activations of a real forward pass (see functional.forward)."""
    every = tuple(range(seq_len))
    out = []
    for layer in range(cfg.n_layers):
        last = layer == cfg.n_layers - 1
        if answers_only and last and len(cfg.answer_positions) < seq_len:
            out.append(tuple(cfg.answer_positions))
        else:
            out.append(every)
    return out


@torch.no_grad()
def collect(
    model: Transformer,
    tokens: torch.Tensor | np.ndarray,
    names: Sequence[str],
    batch_size: int = 4096,
    *,
    answers_only: bool = True,
    rows: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Activations at hook points `names` over all `tokens` (N, S), batch by batch.

    With `answers_only=True` the last block is computed only at the answer positions, so its
    activations have Q positions, not S (as in a real forward pass). `rows` keeps only some
    positions (axis 1) of a hook point. Each hook point's tensor is allocated at the first
    batch and filled in place: memory is the result plus one batch, not the batches and their
    concatenation.
    """
    tokens = check_tokens(model, tokens)
    known = set(model.hook_dict)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ActivationError(
            f"model has no hook point {unknown[0]!r} (it has e.g. {sorted(known)[:4]})"
        )
    if batch_size < 1:
        raise ActivationError(f"batch_size must be >= 1, got {batch_size}")
    wanted, rows, n = set(names), rows or {}, tokens.shape[0]
    out: dict[str, torch.Tensor] = {}
    for start in range(0, n, batch_size):
        _, cache = model.run_with_cache(
            tokens[start : start + batch_size],
            names=lambda name: name in wanted,
            answers_only=answers_only,
        )
        for name in names:
            act = cache[name] if name not in rows else cache[name][:, rows[name]]
            if name not in out:
                out[name] = act.new_empty((n, *act.shape[1:]))
            out[name][start : start + act.shape[0]] = act
        del cache
    return {name: out.get(name, torch.empty(0)) for name in names}


@dataclass
class MLPActivations:
    """MLP inputs and outputs per layer at the positions that matter.

    mlp_in[l], mlp_out[l]: (N, P_l, D) with P_l = len(positions[l]); positions[l] lists the
    sequence positions of those rows (see `layer_positions`).
    """

    mlp_in: list[torch.Tensor]
    mlp_out: list[torch.Tensor]
    positions: list[tuple[int, ...]]

    @property
    def n_layers(self) -> int:
        return len(self.mlp_in)

    @property
    def n_inputs(self) -> int:
        return self.mlp_in[0].shape[0]

    @property
    def d_model(self) -> int:
        return self.mlp_in[0].shape[-1]

    def subset(self, index: torch.Tensor) -> MLPActivations:
        return MLPActivations(
            [x[index] for x in self.mlp_in], [y[index] for y in self.mlp_out], self.positions
        )


def mlp_activations(
    model: Transformer, tokens: torch.Tensor | np.ndarray, batch_size: int = 4096
) -> MLPActivations:
    """`blocks.{l}.hook_mlp_in` / `hook_mlp_out` over `tokens` at the positions that matter."""
    cfg = model.cfg
    if not cfg.d_mlp:
        raise ActivationError("the model has no MLPs (d_mlp=0): there is nothing to transcode")
    tokens = check_tokens(model, tokens)
    present = forward_positions(cfg, tokens.shape[1], answers_only=True)
    wanted = layer_positions(cfg, tokens.shape[1])
    rows = {}
    for layer in range(cfg.n_layers):
        index = torch.tensor([present[layer].index(p) for p in wanted[layer]])
        for kind in ("mlp_in", "mlp_out"):
            rows[f"blocks.{layer}.hook_{kind}"] = index
    acts = collect(model, tokens, list(rows), batch_size, answers_only=True, rows=rows)
    mlp_in = [acts[f"blocks.{l}.hook_mlp_in"] for l in range(cfg.n_layers)]
    mlp_out = [acts[f"blocks.{l}.hook_mlp_out"] for l in range(cfg.n_layers)]
    return MLPActivations(mlp_in, mlp_out, wanted)


def task_tokens(
    task, sample: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs (N, S), targets (N, Q)) of all a task's inputs, or a seeded sample of `sample`."""
    data = task.dataset()
    inputs = torch.as_tensor(np.asarray(data.inputs)).long()
    targets = torch.as_tensor(np.asarray(data.targets)).long()
    if sample is not None and sample < inputs.shape[0]:
        if sample < 1:
            raise ActivationError(f"sample must be >= 1, got {sample}")
        gen = torch.Generator().manual_seed(int(seed))
        index = torch.randperm(inputs.shape[0], generator=gen)[:sample].sort().values
        inputs, targets = inputs[index], targets[index]
    return inputs, targets
