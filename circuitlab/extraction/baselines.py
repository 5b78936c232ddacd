"""Circuit-discovery baselines, implemented here: EAP, EAP-IG and ACDC on the component graph.

Each method scores the edges of a model's component graph so that it can be compared with a
known circuit (tracr's compiled models) by ROC AUC, as the ACDC paper (Conmy et al. 2023) does.

- The graph, the ablations and the patched forward passes are in `component_patching.py`.
- EAP (Syed et al. 2023) scores an edge by (ablated_src - clean_src) . d metric / d input_dst
  from one clean forward and backward pass; EAP-IG (Hanna et al. 2024) averages that gradient
  over `steps` points on the line from the ablated to the clean input embeddings; ACDC
  (Conmy et al. 2023) patches edges one at a time, keeping those whose removal moves the
  output (KL to the clean model, or squared error for numeric outputs) by at least tau.

Scores are sums over the batch and positions of a batch-mean metric, so an EAP score is the
first-order change of the mean metric when that one edge is ablated.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from circuitlab.extraction.component_patching import (
    ABLATIONS,
    INPUT,
    LOGITS,
    Ablation,
    AblationKind,
    ComponentGraph,
    ComponentRun,
    Edge,
    Metric,
    Node,
    ablated_outputs,
    component_graph,
    divergence_from_clean,
    ln_backward,
    run_components,
    task_metric,
)
from circuitlab.models.tracr_import import TracrCircuit
from circuitlab.models.transformer import Transformer

__all__ = [
    "ABLATIONS", "INPUT", "LOGITS", "METHODS", "Ablation", "AcdcResult", "MethodScore",
    "ablated_outputs", "acdc", "component_graph", "divergence_from_clean", "eap", "eap_ig",
    "metric_factory", "node_scores", "patch_effect", "roc_auc", "run_components",
    "score_method", "task_metric", "truth_edges", "truth_nodes",
]  # fmt: skip

# ---------------------------------------------------------------------------------------------
# EAP and EAP-IG


def _dst_grads(
    model: Transformer, run: ComponentRun, value: torch.Tensor
) -> dict[Node, torch.Tensor]:
    """d metric / d (the residual each destination reads), one tensor (B, S, D) per node.

    A head's input gradient is the sum of the q, k and v gradients of that head pulled back
    through its own W_Q, W_K, W_V (and ln1's Jacobian at this residual when there is LN).
    """
    cfg = model.cfg
    names = [f"blocks.{L}.attn.hook_{x}" for L in range(cfg.n_layers) for x in "qkv"]
    if cfg.d_mlp:
        names += [f"blocks.{L}.hook_mlp_in" for L in range(cfg.n_layers)]
    names.append("final")
    tensors = [run.acts[n] for n in names]
    grads = dict(zip(names, torch.autograd.grad(value, tensors, allow_unused=True), strict=True))
    out: dict[Node, torch.Tensor] = {}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}"
        total = 0
        for x in "qkv":
            g = grads[f"{b}.attn.hook_{x}"]
            if g is not None:
                w = model.param(f"{b}.attn.W_{x.upper()}")
                total = total + torch.einsum("bshe,hde->bshd", g, w)
        for h in range(cfg.n_heads):
            g = total[:, :, h] if torch.is_tensor(total) else torch.zeros_like(run.outs[INPUT])
            if cfg.normalization:
                g = ln_backward(run.acts[f"{b}.hook_resid_pre"], g, model.param(f"{b}.ln1.w"))
            out[("attn", layer, h)] = g
        if cfg.d_mlp:
            g = grads[f"{b}.hook_mlp_in"]
            g = torch.zeros_like(run.outs[INPUT]) if g is None else g
            if cfg.normalization:
                g = ln_backward(run.acts[f"{b}.hook_resid_mid"], g, model.param(f"{b}.ln2.w"))
            out[("mlp", layer)] = g
    out[LOGITS] = grads["final"]
    return out


def _edge_products(
    graph: ComponentGraph,
    deltas: Mapping[Node, torch.Tensor],
    grads: Mapping[Node, torch.Tensor],
) -> dict[Edge, float]:
    srcs = [n for n in graph.nodes if n != LOGITS]
    dsts = [n for n in graph.nodes if n != INPUT]
    table = torch.einsum(
        "ibsd,jbsd->ij",
        torch.stack([deltas[s] for s in srcs]).double(),
        torch.stack([grads[d] for d in dsts]).double(),
    ).detach()
    si, di = {n: i for i, n in enumerate(srcs)}, {n: j for j, n in enumerate(dsts)}
    return {(s, d): float(table[si[s], di[d]]) for s, d in graph.edges}


Tokens = torch.Tensor | Sequence[torch.Tensor]
MetricFactory = Callable[[Transformer, torch.Tensor], Metric]


@dataclass
class _Batch:
    tokens: torch.Tensor
    weight: float  # share of all examples: batch-mean metrics combine into a dataset mean
    ablated: dict[Node, torch.Tensor]
    metric: Metric


def _batches(
    model: Transformer,
    tokens: Tokens,
    ablation: Ablation | AblationKind,
    metric: Metric | MetricFactory | None,
    default: MetricFactory,
) -> list[_Batch]:
    """Split the data into equal-length batches (tracr models have no pad mask, so inputs of
    several lengths are run length by length), each with its ablated outputs and metric.

    `metric` is a callable on logits (the same for every batch) or a factory (model, tokens) ->
    metric; mean and resample ablation are taken within each batch.
    """
    abl = ablation if isinstance(ablation, Ablation) else Ablation(ablation)
    groups = [tokens] if torch.is_tensor(tokens) else list(tokens)
    groups = [torch.as_tensor(t, dtype=torch.long) for t in groups]
    total = sum(len(t) for t in groups)
    out = []
    for t in groups:
        if metric is None:
            m = default(model, t)
        elif getattr(metric, "is_factory", False):
            m = metric(model, t)  # type: ignore[call-arg]
        else:
            m = metric  # type: ignore[assignment]
        out.append(_Batch(t, len(t) / total, ablated_outputs(model, t, abl), m))
    return out


def metric_factory(fn: Callable[[Transformer, torch.Tensor], Metric]) -> MetricFactory:
    """Mark `fn(model, tokens) -> metric` as a per-batch metric factory."""
    fn.is_factory = True  # type: ignore[attr-defined]
    return fn


def eap(
    model: Transformer,
    tokens: Tokens,
    ablation: Ablation | AblationKind = "zero",
    metric: Metric | MetricFactory | None = None,
) -> dict[Edge, float]:
    """Edge attribution patching: (ablated_src - clean_src) . d metric / d input_dst, summed
    over batch and positions, from one clean forward and backward pass. Signed; rank by |.|."""
    graph = component_graph(model.cfg)
    total: dict[Edge, float] = {}
    for b in _batches(model, tokens, ablation, metric, task_metric):
        run = run_components(model, b.tokens)
        grads = _dst_grads(model, run, b.weight * b.metric(run.logits))
        deltas = {n: (b.ablated[n] - v).detach() for n, v in run.outs.items()}
        for e, s in _edge_products(graph, deltas, grads).items():
            total[e] = total.get(e, 0.0) + s
    return total


def eap_ig(
    model: Transformer,
    tokens: Tokens,
    ablation: Ablation | AblationKind = "zero",
    steps: int = 5,
    metric: Metric | MetricFactory | None = None,
) -> dict[Edge, float]:
    """EAP with integrated gradients (Hanna et al. 2024): the destination gradients averaged over
    input embeddings ablated + k/steps * (clean - ablated), k = 1..steps (steps=1 is EAP's
    clean point, reached here through the interpolation path).

    The path endpoint is the ablated "input" node: the corrupted input's embeddings for
    resample ablation (the paper's setting), zeros or the mean embedding otherwise.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    graph = component_graph(model.cfg)
    total: dict[Edge, float] = {}
    for b in _batches(model, tokens, ablation, metric, task_metric):
        with torch.no_grad():
            clean = run_components(model, b.tokens).outs
        deltas = {n: (b.ablated[n] - clean[n]).detach() for n in clean}
        acc: dict[Node, torch.Tensor] = {}
        for k in range(1, steps + 1):
            point = b.ablated[INPUT] + k / steps * (clean[INPUT] - b.ablated[INPUT])
            run = run_components(model, b.tokens, input_value=point.detach())
            value = b.weight * b.metric(run.logits)
            for node, g in _dst_grads(model, run, value).items():
                acc[node] = acc.get(node, 0) + g.detach() / steps
        for e, s in _edge_products(graph, deltas, acc).items():
            total[e] = total.get(e, 0.0) + s
    return total


# ---------------------------------------------------------------------------------------------
# ACDC


@dataclass
class AcdcResult:
    """ACDC's kept edges and nodes, and for every edge the divergence change measured when it
    was tested (positive = removing it hurt), in the order they were tested."""

    edges: set[Edge]
    nodes: set[Node]
    scores: dict[Edge, float]
    divergence: float  # of the final circuit
    n_forward: int = 0
    order: list[Edge] = field(default_factory=list)


def _evaluate(
    model: Transformer, batches: list[_Batch], removed: Mapping[Node, list[Node]]
) -> float:
    with torch.no_grad():
        return sum(
            b.weight * float(b.metric(run_components(model, b.tokens, removed, b.ablated).logits))
            for b in batches
        )


def patch_effect(
    model: Transformer,
    tokens: Tokens,
    removed: Iterable[Edge],
    ablation: Ablation | AblationKind = "zero",
    metric: Metric | MetricFactory | None = None,
) -> float:
    """metric(model with `removed` edges ablated) - metric(clean model): exact edge patching."""
    batches = _batches(model, tokens, ablation, metric, task_metric)
    by_dst: dict[Node, list[Node]] = {}
    for s, d in removed:
        by_dst.setdefault(d, []).append(s)
    return _evaluate(model, batches, by_dst) - _evaluate(model, batches, {})


def acdc(
    model: Transformer,
    tokens: Tokens,
    ablation: Ablation | AblationKind = "zero",
    tau: float = 1e-3,
    divergence: Metric | MetricFactory | None = None,
) -> AcdcResult:
    """ACDC: visit destinations from the logits backwards; for each incoming edge (latest source
    first) ablate it on top of the edges already removed and remove it for good if the
    divergence from the clean output rises by less than `tau`.

    Simplifications against Conmy et al.: no pruning of nodes that lost all outgoing edges
    before their inputs are tested (their input edges then score ~0 and are removed anyway),
    and the edge score used for ROC is the divergence change at test time, not a tau sweep.
    """
    graph = component_graph(model.cfg)
    batches = _batches(model, tokens, ablation, divergence, divergence_from_clean)
    removed: dict[Node, list[Node]] = {}
    scores: dict[Edge, float] = {}
    order: list[Edge] = []
    current = _evaluate(model, batches, removed)
    n_forward = len(batches)
    for dst in reversed(graph.nodes):
        for src in reversed(graph.incoming(dst)):
            trial = {**removed, dst: [*removed.get(dst, []), src]}
            value = _evaluate(model, batches, trial)
            n_forward += len(batches)
            scores[(src, dst)] = value - current
            order.append((src, dst))
            if value - current < tau:
                removed, current = trial, value
    kept = {e for e in graph.edges if e[0] not in removed.get(e[1], [])}
    # a node is in the circuit if it lies on a kept path from the input to the logits
    live = _on_paths(kept)
    kept = {e for e in kept if e[0] in live and e[1] in live}
    nodes = {n for n in live if n[0] in ("attn", "mlp")}
    return AcdcResult(kept, nodes, scores, current, n_forward, order)


def _on_paths(edges: set[Edge]) -> set[Node]:
    """Nodes reachable from the input and reaching the logits through `edges`."""

    def reach(start: Node, step: Callable[[Edge], tuple[Node, Node]]) -> set[Node]:
        seen, frontier = {start}, [start]
        while frontier:
            node = frontier.pop()
            for e in edges:
                a, b = step(e)
                if a == node and b not in seen:
                    seen.add(b)
                    frontier.append(b)
        return seen

    return reach(INPUT, lambda e: e) & reach(LOGITS, lambda e: (e[1], e[0]))


# ---------------------------------------------------------------------------------------------
# Scoring against a known circuit


def roc_auc(scores: Mapping[Any, float], truth: Iterable[Any]) -> float:
    """Area under the ROC curve of `scores` (higher = more likely in the circuit) for the items
    in `truth`, by the rank-sum (Mann-Whitney) formula with tied scores given their average
    rank. NaN when every item, or none, is in `truth` (the AUC is undefined)."""
    truth = set(truth)
    keys = list(scores)
    values = np.array([float(scores[k]) for k in keys], dtype=np.float64)
    labels = np.array([k in truth for k in keys])
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values))
    start = 0
    while start < len(values):  # average rank (1-based) over each run of equal values
        end = start
        while end + 1 < len(values) and sorted_vals[end + 1] == sorted_vals[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def node_scores(
    edge_scores: Mapping[Edge, float], how: Literal["max", "sum_abs"] = "max"
) -> dict[Node, float]:
    """Component (head and MLP) scores from edge scores over incident edges, in and out:
    "max" takes the largest score (used for ACDC), "sum_abs" sums |score| (used for EAP and
    EAP-IG, whose signs cancel across edges)."""
    out: dict[Node, float] = {}
    for (src, dst), s in edge_scores.items():
        for node in (src, dst):
            if node[0] not in ("attn", "mlp"):
                continue
            if how == "max":
                out[node] = max(out.get(node, -np.inf), float(s))
            elif how == "sum_abs":
                out[node] = out.get(node, 0.0) + abs(float(s))
            else:
                raise ValueError(f"how must be 'max' or 'sum_abs', got {how!r}")
    return out


def truth_edges(circuit: TracrCircuit) -> set[Edge]:
    """tracr's component edges plus input -> reader and writer -> logits edges."""
    return (
        set(circuit.edges)
        | {(INPUT, n) for n in circuit.input_nodes}
        | {(n, LOGITS) for n in circuit.output_nodes}
    )


def truth_nodes(circuit: TracrCircuit) -> set[Node]:
    return set(circuit.nodes)


@dataclass(frozen=True)
class MethodScore:
    method: str
    ablation: str
    node_auc: float
    edge_auc: float
    seconds: float


METHODS: tuple[str, ...] = ("EAP", "EAP-IG", "ACDC")


def score_method(
    method: str,
    model: Transformer,
    tokens: Tokens,
    circuit: TracrCircuit,
    ablation: AblationKind = "zero",
    *,
    tau: float = 1e-3,
    steps: int = 5,
    metric: Metric | MetricFactory | None = None,
    divergence: Metric | MetricFactory | None = None,
) -> MethodScore:
    """Run one method and score its edges and nodes against `circuit` by ROC AUC: EAP and
    EAP-IG rank edges by |score| and nodes by the sum of incident |scores|; ACDC ranks edges by
    its measured divergence change and nodes by the max over incident edges."""
    start = time.perf_counter()
    if method == "EAP":
        edges = {e: abs(s) for e, s in eap(model, tokens, ablation, metric=metric).items()}
        nodes = node_scores(edges, "sum_abs")
    elif method == "EAP-IG":
        raw = eap_ig(model, tokens, ablation, steps=steps, metric=metric)
        edges = {e: abs(s) for e, s in raw.items()}
        nodes = node_scores(edges, "sum_abs")
    elif method == "ACDC":
        edges = acdc(model, tokens, ablation, tau=tau, divergence=divergence).scores
        nodes = node_scores(edges, "max")
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    seconds = time.perf_counter() - start
    return MethodScore(
        method,
        str(ablation),
        roc_auc(nodes, truth_nodes(circuit)),
        roc_auc(edges, truth_edges(circuit)),
        seconds,
    )
