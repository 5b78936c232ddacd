"""The component graph of a transformer and forward passes that ablate its edges one by one:
what the circuit-discovery baselines (`baselines.py`) measure.

- The component graph (`component_graph`): nodes are the input (embeddings), every attention
  head, every MLP and the logits; an edge joins each node to every later reader of the residual
  stream (a head reads everything before its layer, an MLP also its own layer's heads).
- An edge src -> dst is ablated by giving dst the residual with src's contribution swapped for
  its ablated value (`Ablation`: zero, per-position dataset mean, or the output of src on a
  seeded permutation of the batch). Every other reader still sees src's real output, so each
  head reads its own residual: its q, k and v are recomputed from the edited residual with the
  layer's W_Q/W_K/W_V (and ln1) inside the hook_q/k/v hooks, for that head only
  (`run_components`).
- Metrics: the task metric the methods attribute (`task_metric`) and the divergence ACDC
  thresholds (`divergence_from_clean`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from circuitlab.models.config import ModelConfig
from circuitlab.models.functional import LN_EPS
from circuitlab.models.hooks import HookName
from circuitlab.models.transformer import Transformer

Node = tuple[Any, ...]  # ("input",), ("attn", layer, head), ("mlp", layer), ("logits",)
Edge = tuple[Node, Node]
Metric = Callable[[torch.Tensor], torch.Tensor]  # logits (B, S, O) -> scalar
AblationKind = Literal["zero", "mean", "resample"]

INPUT: Node = ("input",)
LOGITS: Node = ("logits",)
ABLATIONS: tuple[str, ...] = ("zero", "mean", "resample")


# ---------------------------------------------------------------------------------------------
# The graph


@dataclass(frozen=True)
class ComponentGraph:
    """Nodes in topological (residual-stream) order and every edge allowed by that order."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]

    @property
    def components(self) -> tuple[Node, ...]:
        """Heads and MLPs: the nodes a circuit may or may not contain."""
        return tuple(n for n in self.nodes if n[0] in ("attn", "mlp"))

    def incoming(self, dst: Node) -> list[Node]:
        return [s for s, d in self.edges if d == dst]


def _slot(node: Node, n_layers: int) -> float:
    """Residual-stream position: a node reads everything written at a smaller slot."""
    if node == INPUT:
        return -1.0
    if node == LOGITS:
        return float(n_layers)
    return node[1] + (0.0 if node[0] == "attn" else 0.5)


def component_graph(cfg: ModelConfig) -> ComponentGraph:
    """The graph of `cfg`'s heads and MLPs (no MLP nodes when d_mlp == 0)."""
    nodes: list[Node] = [INPUT]
    for layer in range(cfg.n_layers):
        nodes += [("attn", layer, h) for h in range(cfg.n_heads)]
        if cfg.d_mlp:
            nodes.append(("mlp", layer))
    nodes.append(LOGITS)
    n = cfg.n_layers
    edges = tuple((s, d) for d in nodes for s in nodes if _slot(s, n) < _slot(d, n))
    return ComponentGraph(tuple(nodes), edges)


# ---------------------------------------------------------------------------------------------
# Forward passes with per-edge patching


@dataclass(frozen=True)
class Ablation:
    """What an ablated node outputs: zeros, its per-position mean over the batch, or its output
    on the batch permuted by `seed` (resample ablation, the ACDC/EAP "corrupted input")."""

    kind: AblationKind = "zero"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.kind!r}")

    def permutation(self, n: int) -> torch.Tensor:
        """The seeded permutation of a batch of `n` that resample ablation draws from."""
        return torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))


@dataclass
class ComponentRun:
    logits: torch.Tensor  # (B, S, O)
    outs: dict[Node, torch.Tensor]  # each source node's output written to the residual (B,S,D)
    acts: dict[str, torch.Tensor]  # hook name -> activation (q/k/v, mlp_in, residuals)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + LN_EPS).sqrt() * w + b


def ln_backward(x: torch.Tensor, grad: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d metric / d x from d metric / d LN(x): LayerNorm's Jacobian at x (gain w)."""
    xc = x - x.mean(-1, keepdim=True)
    scale = (xc.pow(2).mean(-1, keepdim=True) + LN_EPS).sqrt()
    n, gn = xc / scale, grad * w
    return (gn - gn.mean(-1, keepdim=True) - n * (gn * n).mean(-1, keepdim=True)) / scale


def run_components(
    model: Transformer,
    tokens: torch.Tensor,
    removed: Mapping[Node, Iterable[Node]] | None = None,
    ablated: Mapping[Node, torch.Tensor] | None = None,
    input_value: torch.Tensor | None = None,
) -> ComponentRun:
    """One forward pass at every position where dst reads `resid - sum(out_src - ablated_src)`
    for each removed edge src -> dst (`removed`: dst -> srcs); `out_src` is src's output in this
    same pass, so edits compose as in ACDC. `input_value` replaces embed + pos_embed."""
    cfg = model.cfg
    removed = {d: list(s) for d, s in (removed or {}).items() if s}
    ablated = ablated or {}
    outs: dict[Node, torch.Tensor] = {}
    acts: dict[str, torch.Tensor] = {}
    ln = cfg.normalization is not None
    last = cfg.n_layers - 1

    def delta(dst: Node) -> torch.Tensor | None:
        srcs = removed.get(dst)
        if not srcs:
            return None
        return sum(outs[s] - ablated[s] for s in srcs)  # type: ignore[return-value]

    def embed(x: torch.Tensor, name: str) -> torch.Tensor:
        acts["embed"] = x if input_value is None else input_value
        return acts["embed"]

    def pos_embed(x: torch.Tensor, name: str) -> torch.Tensor:
        if input_value is not None:
            outs[INPUT] = input_value
            return torch.zeros_like(x)
        outs[INPUT] = acts["embed"] + x
        return x

    def store(x: torch.Tensor, name: str) -> None:
        acts[name] = x

    def qkv(x: torch.Tensor, name: HookName) -> torch.Tensor:
        layer, which = name.layer(), name[-1].upper()
        edited = None
        for h in range(cfg.n_heads):
            d = delta(("attn", layer, h))
            if d is None:
                continue
            resid = acts[f"blocks.{layer}.hook_resid_pre"] - d
            if ln:
                resid = layer_norm(
                    resid,
                    model.param(f"blocks.{layer}.ln1.w"),
                    model.param(f"blocks.{layer}.ln1.b"),
                )
            w, b = (
                model.param(f"blocks.{layer}.attn.W_{which}"),
                model.param(f"blocks.{layer}.attn.b_{which}"),
            )
            edited = x.clone() if edited is None else edited
            edited[:, :, h] = resid @ w[h] + b[h]
        out = x if edited is None else edited
        acts[name] = out
        return out

    def hook_z(z: torch.Tensor, name: HookName) -> None:
        layer = name.layer()
        per_head = torch.einsum("bshe,hed->bshd", z, model.param(f"blocks.{layer}.attn.W_O"))
        for h in range(cfg.n_heads):
            outs[("attn", layer, h)] = per_head[:, :, h]

    def mlp_in(x: torch.Tensor, name: HookName) -> torch.Tensor:
        layer = name.layer()
        d = delta(("mlp", layer))
        if d is not None:
            resid = acts[f"blocks.{layer}.hook_resid_mid"] - d
            if ln:
                x = layer_norm(
                    resid,
                    model.param(f"blocks.{layer}.ln2.w"),
                    model.param(f"blocks.{layer}.ln2.b"),
                )
            else:
                x = resid
        acts[name] = x
        return x

    def mlp_out(x: torch.Tensor, name: HookName) -> None:
        outs[("mlp", name.layer())] = x

    def resid_final(x: torch.Tensor, name: str) -> torch.Tensor:
        d = delta(LOGITS)
        out = x if d is None else x - d
        acts["final"] = out
        return out

    hooks: list[tuple[Any, Callable[..., Any]]] = [
        ("hook_embed", embed),
        ("hook_pos_embed", pos_embed),
        (lambda n: n.endswith(("hook_resid_pre", "hook_resid_mid")), store),
        (lambda n: n.endswith(("attn.hook_q", "attn.hook_k", "attn.hook_v")), qkv),
        (lambda n: n.endswith("attn.hook_z"), hook_z),
        (f"blocks.{last}.hook_resid_post", resid_final),
    ]
    if cfg.d_mlp:
        hooks += [
            (lambda n: n.endswith("hook_mlp_in"), mlp_in),
            (lambda n: n.endswith("hook_mlp_out"), mlp_out),
        ]
    with model.hooks(hooks):
        logits = model(tokens, answers_only=False)
    return ComponentRun(logits, outs, acts)


def ablated_outputs(
    model: Transformer, tokens: torch.Tensor, ablation: Ablation
) -> dict[Node, torch.Tensor]:
    """Each source node's ablated output (B, S, D), from clean runs (never from patched ones)."""
    with torch.no_grad():
        clean = run_components(model, tokens).outs
        if ablation.kind == "zero":
            return {n: torch.zeros_like(v) for n, v in clean.items()}
        if ablation.kind == "mean":
            return {n: v.mean(0, keepdim=True).expand_as(v) for n, v in clean.items()}
        return run_components(model, tokens[ablation.permutation(tokens.shape[0])]).outs


# ---------------------------------------------------------------------------------------------
# Metrics


def answer_positions(
    cfg: ModelConfig, seq_len: int, positions: Iterable[int] | None = None
) -> list[int]:
    """The positions metrics read: `positions` or the config's answer positions, those that
    exist in a sequence of `seq_len` tokens (shorter tracr inputs end early)."""
    pos = [p for p in (cfg.answer_positions if positions is None else positions) if p < seq_len]
    if not pos:
        raise ValueError(f"no metric position in sequences of length {seq_len}; drop the batch")
    return pos


def task_metric(
    model: Transformer,
    tokens: torch.Tensor,
    kind: Literal["auto", "logprob", "neg_mse", "output"] = "auto",
    positions: Iterable[int] | None = None,
) -> Metric:
    """The metric EAP differentiates, higher = more like the clean model.

    "logprob" (categorical default): mean log-probability of the clean model's argmax at the
    answer positions. "neg_mse" (numeric default, d_vocab_out == 1): minus the mean squared
    error to the clean output; its gradient is zero at the clean point, so plain EAP scores it
    as all zeros (EAP-IG does not). "output": the mean of the first output (a linear metric).
    """
    pos = answer_positions(model.cfg, tokens.shape[-1], positions)
    with torch.no_grad():
        clean = model(tokens, answers_only=False)[:, pos]
    if kind == "auto":
        kind = "neg_mse" if model.cfg.d_vocab_out == 1 else "logprob"
    if kind == "logprob":
        target = clean.argmax(-1, keepdim=True)
        return lambda lg: lg[:, pos].log_softmax(-1).gather(-1, target).mean()
    if kind == "neg_mse":
        return lambda lg: -(lg[:, pos] - clean).pow(2).mean()
    if kind == "output":
        return lambda lg: lg[:, pos, 0].mean()
    raise ValueError(f"unknown metric {kind!r}")


def divergence_from_clean(
    model: Transformer,
    tokens: torch.Tensor,
    kind: Literal["auto", "kl", "mse"] = "auto",
    positions: Iterable[int] | None = None,
) -> Metric:
    """ACDC's objective, 0 at the clean model: mean KL(clean || patched) of the output
    distributions at the answer positions (categorical), or mean squared error (numeric)."""
    pos = answer_positions(model.cfg, tokens.shape[-1], positions)
    with torch.no_grad():
        clean = model(tokens, answers_only=False)[:, pos]
    if kind == "auto":
        kind = "mse" if model.cfg.d_vocab_out == 1 else "kl"
    if kind == "kl":
        ref = clean.log_softmax(-1)
        return lambda lg: (ref.exp() * (ref - lg[:, pos].log_softmax(-1))).sum(-1).mean()
    if kind == "mse":
        return lambda lg: (lg[:, pos] - clean).pow(2).mean()
    raise ValueError(f"unknown divergence {kind!r}")
