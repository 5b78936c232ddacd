"""Attribution graphs: the batched data structure, influence, pruning, scores and JSON export.

The algorithms follow circuit-tracer (Ameisen et al. 2025, "Circuit tracing"):

1. Influence: take |adjacency|, normalise each row to sum 1 (A), weight the logit rows by their
   probabilities (w); a node's influence on the outputs is w ((I - A)^-1 - I), summed over paths
   of every length. Graphs are acyclic, so the series A + A^2 + ... ends after at most depth
   terms and is computed exactly by repeated products.
2. Pruning: keep the nodes holding `node_threshold` (80%) of cumulative influence (tokens and
   logits always), then the edges holding `edge_threshold` (98%) of edge influence (an edge's
   normalised weight times its target's influence), then drop features and errors left without
   outgoing edges and features left without incoming ones, until nothing changes.
3. Replacement score: influence reaching the logits from token nodes over influence from token
   plus error nodes. Completeness score: the influence-weighted average, over all nodes, of the
   fraction of each node's normalised input that does not come from error nodes.

Every function takes leading batch dimensions, so the graphs of many prompts are scored and
pruned at once (sorting and cumulative sums run per graph). graph_json.py exports a prompt's
graph as circuit-tracer's frontend JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

# node kinds in `AttributionGraph.node_kinds`
FEATURE, ERROR, TOKEN, LOGIT = 0, 1, 2, 3


@dataclass
class QKAttribution:
    """Attention-score attribution of one attention layer (beyond circuit-tracer).

    With LayerNorm scales frozen, the query and key vectors of head h are linear in the
    residual stream, and the residual at this layer is the sum of what the source nodes wrote
    into it (pushed forward through the frozen earlier layers) plus a bias part. A score
    q_h . k_h / sqrt(d_head) therefore splits exactly into pair terms:

    pairs[b, h, i, k, s, t]: the part of the score of head h at query position
    `query_positions[i]` and key position k that comes from source `sources[s]` on the query
    side and source `sources[t]` on the key side. Index len(sources) (the last one) is the bias
    part of each side (biases, LayerNorm offsets, b_Q/b_K). Entries with k > query (masked by
    causal attention) are zero. scores = pairs summed over the last two axes.
    """

    layer: int
    sources: Tensor  # (Ns,) int64 node indices into the graph layout
    query_positions: tuple[int, ...]
    pairs: Tensor  # (B, H, Qn, S, Ns + 1, Ns + 1)
    scores: Tensor  # (B, H, Qn, S) pre-softmax scores (q . k / sqrt(d_head)), 0 where masked

    def query_side(self) -> Tensor:
        """(B, H, Qn, S, Ns + 1): each source's contribution through the query vector."""
        return self.pairs.sum(-1)

    def key_side(self) -> Tensor:
        """(B, H, Qn, S, Ns + 1): each source's contribution through the key vector."""
        return self.pairs.sum(-2)


@dataclass
class AttributionGraph:
    """Attribution graphs of B prompts in one padded node layout (N = K + L*S + S + T).

    Node index ranges (the same for every prompt, as in circuit-tracer's adjacency matrix):
      [0, K)              feature slots grouped by layer: layer l owns
                          feature_offsets[l]:feature_offsets[l+1]; `feature_mask` marks the
                          slots that hold an active feature, the rest are padding
      [K, K + L*S)        error nodes, node K + layer * S + position
      [K + L*S, +S)       token nodes: embedding plus positional embedding at each position
      [K + L*S + S, N)    logit slots grouped by answer position (`logit_mask` marks real ones)
    adjacency[b, target, source] is the direct effect of source on target. Padding rows and
    columns are zero. Features that cannot reach any logit (for instance last-layer features at
    positions that are not answers) have no influence by construction and are left out.
    """

    tokens: Tensor  # (B, S) int64
    n_layers: int
    features: Tensor  # (B, K, 3) int64: layer, position, feature index (0 in padding)
    feature_mask: Tensor  # (B, K) bool
    feature_offsets: tuple[int, ...]  # (L + 1,) slot offsets of each layer's block
    activations: Tensor  # (B, K) feature activations (0 in padding)
    pre_activations: Tensor  # (B, K) encoder pre-activations (0 in padding)
    logit_tokens: Tensor  # (B, T) int64 output token of each logit slot (0 in padding)
    logit_positions: Tensor  # (T,) int64 answer position of each logit slot
    logit_mask: Tensor  # (B, T) bool
    logit_probs: Tensor  # (B, T) probability of each target (0 in padding)
    logit_values: Tensor  # (B, T) demeaned logit (logit minus mean over the output vocabulary)
    adjacency: Tensor  # (B, N, N)
    qk: list[QKAttribution] = field(default_factory=list)

    @property
    def n_prompts(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def n_feature_slots(self) -> int:
        return int(self.features.shape[1])

    @property
    def n_nodes(self) -> int:
        return int(self.adjacency.shape[-1])

    @property
    def error_start(self) -> int:
        return self.n_feature_slots

    @property
    def token_start(self) -> int:
        return self.n_feature_slots + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    def error_index(self, layer: int, pos: int) -> int:
        return self.error_start + layer * self.n_pos + pos

    @property
    def node_kinds(self) -> Tensor:
        """(N,) int64: FEATURE, ERROR, TOKEN or LOGIT for every node index."""
        kinds = torch.full((self.n_nodes,), FEATURE, dtype=torch.long)
        kinds[self.error_start : self.token_start] = ERROR
        kinds[self.token_start : self.logit_start] = TOKEN
        kinds[self.logit_start :] = LOGIT
        return kinds

    @property
    def node_mask(self) -> Tensor:
        """(B, N) bool: real nodes (active features, errors, tokens, real logit targets)."""
        b = self.n_prompts
        fixed = torch.ones(b, self.logit_start - self.error_start, dtype=torch.bool)
        return torch.cat([self.feature_mask, fixed, self.logit_mask], dim=1)

    def logit_weights(self) -> Tensor:
        """(B, N): target probabilities on the logit nodes, zero elsewhere."""
        w = torch.zeros(self.n_prompts, self.n_nodes, dtype=self.adjacency.dtype)
        w[:, self.logit_start :] = self.logit_probs.to(w.dtype)
        return w

    def target_values(self) -> Tensor:
        """(B, N): what the in-edges of each node decompose (pre-activation, demeaned logit)."""
        v = torch.zeros(self.n_prompts, self.n_nodes, dtype=self.adjacency.dtype)
        v[:, : self.n_feature_slots] = self.pre_activations
        v[:, self.logit_start :] = self.logit_values
        return v

    def subset(self, index: Tensor | slice | list[int]) -> AttributionGraph:
        """The graphs of some prompts, in the same layout."""
        if isinstance(index, list):
            index = torch.tensor(index, dtype=torch.long)
        qk = [
            QKAttribution(q.layer, q.sources, q.query_positions, q.pairs[index], q.scores[index])
            for q in self.qk
        ]
        return AttributionGraph(
            tokens=self.tokens[index],
            n_layers=self.n_layers,
            features=self.features[index],
            feature_mask=self.feature_mask[index],
            feature_offsets=self.feature_offsets,
            activations=self.activations[index],
            pre_activations=self.pre_activations[index],
            logit_tokens=self.logit_tokens[index],
            logit_positions=self.logit_positions,
            logit_mask=self.logit_mask[index],
            logit_probs=self.logit_probs[index],
            logit_values=self.logit_values[index],
            adjacency=self.adjacency[index],
            qk=qk,
        )

    def bias_part(self) -> Tensor:
        """(B, N): the part of each target value not carried by any edge (biases only)."""
        return self.target_values() - self.adjacency.sum(-1)


def concat_graphs(
    parts: Sequence[AttributionGraph], adjacency: Tensor | None = None
) -> AttributionGraph:
    """The graphs of several batches in one layout as one batch, prompts in order.

    `adjacency`, when given, already holds the parts' adjacencies as consecutive rows (they
    were written there), so the largest tensor is not copied.
    """
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    qk = [
        QKAttribution(
            layer=q.layer,
            sources=q.sources,
            query_positions=q.query_positions,
            pairs=torch.cat([p.qk[i].pairs for p in parts]),
            scores=torch.cat([p.qk[i].scores for p in parts]),
        )
        for i, q in enumerate(first.qk)
    ]
    return AttributionGraph(
        tokens=cat("tokens"),
        n_layers=first.n_layers,
        features=cat("features"),
        feature_mask=cat("feature_mask"),
        feature_offsets=first.feature_offsets,
        activations=cat("activations"),
        pre_activations=cat("pre_activations"),
        logit_tokens=cat("logit_tokens"),
        logit_positions=first.logit_positions,
        logit_mask=cat("logit_mask"),
        logit_probs=cat("logit_probs"),
        logit_values=cat("logit_values"),
        adjacency=cat("adjacency") if adjacency is None else adjacency,
        qk=qk,
    )


# ------------------------------------------------------------------------------------------------
# influence


def normalize_rows(adjacency: Tensor) -> Tensor:
    """|adjacency| with every row scaled to sum 1 (rows without inputs stay zero)."""
    a = adjacency.abs()
    return a.div_(a.sum(-1, keepdim=True).clamp_min(1e-10))  # in place: one copy, not two


def influence(normalized: Tensor, weights: Tensor, max_depth: int | None = None) -> Tensor:
    """w ((I - A)^-1 - I) = w A + w A^2 + ... for acyclic A (..., N, N) and w (..., N).

    Summed term by term until the term is exactly zero; an acyclic graph of N nodes needs at
    most N terms, so more means a cycle and raises ValueError.
    """
    limit = normalized.shape[-1] + 1 if max_depth is None else max_depth
    term = (weights.unsqueeze(-2) @ normalized).squeeze(-2)
    total = term.clone()
    for _ in range(limit):
        if not bool(term.any()):
            return total
        term = (term.unsqueeze(-2) @ normalized).squeeze(-2)
        total += term
    raise ValueError(f"influence did not vanish after {limit} steps: the graph has a cycle")


def node_influence(adjacency: Tensor, weights: Tensor) -> Tensor:
    """(..., N): each node's total influence on the weighted logits."""
    return influence(normalize_rows(adjacency), weights)


def edge_influence(adjacency: Tensor, weights: Tensor) -> Tensor:
    """(..., N, N): normalised edge weight times the influence of its target (plus its weight)."""
    normalized = normalize_rows(adjacency)
    reach = influence(normalized, weights) + weights
    return normalized * reach.unsqueeze(-1)


def cumulative_threshold(scores: Tensor, fraction: float) -> Tensor:
    """(...,): the smallest score among the top scores holding `fraction` of the total."""
    ordered = scores.sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(-1) / ordered.sum(-1, keepdim=True).clamp_min(1e-30)
    index = torch.searchsorted(cumulative, torch.full_like(cumulative[..., :1], fraction))
    index = index.clamp_max(scores.shape[-1] - 1)
    return ordered.gather(-1, index).squeeze(-1)


def cumulative_scores(scores: Tensor) -> Tensor:
    """(..., N): for each node, the cumulative fraction of influence up to and including it."""
    ordered, order = scores.sort(dim=-1, descending=True)
    cumulative = ordered.cumsum(-1) / ordered.sum(-1, keepdim=True).clamp_min(1e-30)
    return torch.zeros_like(scores).scatter(-1, order, cumulative)


class PruneResult(NamedTuple):
    node_mask: Tensor  # (..., N) bool: nodes kept
    edge_mask: Tensor  # (..., N, N) bool: edges kept, [target, source]
    cumulative_scores: Tensor  # (..., N) cumulative influence fraction of each node


def prune(
    adjacency: Tensor,
    weights: Tensor,
    kinds: Tensor,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    real: Tensor | None = None,
) -> PruneResult:
    """Prune by cumulative node then edge influence (circuit-tracer's `prune_graph`).

    adjacency (..., N, N), weights (..., N) logit probabilities, kinds (N,) node kinds,
    real (..., N) bool marks non-padding nodes (default all).
    """
    for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    real = torch.ones_like(weights, dtype=torch.bool) if real is None else real
    is_feature, is_error = kinds == FEATURE, kinds == ERROR
    always = (kinds == TOKEN) | (kinds == LOGIT)

    scores = node_influence(adjacency, weights)
    keep = scores >= cumulative_threshold(scores, node_threshold).unsqueeze(-1)
    keep = (keep | always) & real

    pruned = adjacency * keep.unsqueeze(-1) * keep.unsqueeze(-2)
    edges = edge_influence(pruned, weights)
    edge_mask = edges >= cumulative_threshold(edges.flatten(-2), edge_threshold)[..., None, None]
    edge_mask &= pruned != 0

    inner = is_feature | is_error
    while True:
        edge_mask &= keep.unsqueeze(-1) & keep.unsqueeze(-2)
        has_out = edge_mask.any(-2)
        has_in = edge_mask.any(-1)
        new_keep = keep & ~(inner & ~has_out) & ~(is_feature & ~has_in)
        if bool((new_keep == keep).all()):
            break
        keep = new_keep
    return PruneResult(keep, edge_mask, cumulative_scores(scores))


class GraphScores(NamedTuple):
    replacement: Tensor  # (...,) token influence / (token + error influence)
    completeness: Tensor  # (...,) influence-weighted fraction of non-error input


def graph_scores(adjacency: Tensor, weights: Tensor, kinds: Tensor) -> GraphScores:
    """circuit-tracer's replacement and completeness scores of each graph."""
    return influence_and_scores(adjacency, weights, kinds)[1]


def influence_and_scores(
    adjacency: Tensor, weights: Tensor, kinds: Tensor
) -> tuple[Tensor, GraphScores]:
    """(node influence (..., N), scores): both from one normalised copy of the adjacency."""
    normalized = normalize_rows(adjacency)
    scores = influence(normalized, weights)
    is_error, is_token = kinds == ERROR, kinds == TOKEN
    token = (scores * is_token).sum(-1)
    error = (scores * is_error).sum(-1)
    replacement = token / (token + error).clamp_min(1e-30)
    # a matrix-vector product: (normalized * is_error) would copy the whole adjacency
    non_error = 1 - normalized @ is_error.to(normalized.dtype)
    reach = scores + weights
    completeness = (non_error * reach).sum(-1) / reach.sum(-1).clamp_min(1e-30)
    return scores, GraphScores(replacement, completeness)


def influence_of(graph: AttributionGraph, chunk: int = 1024) -> Tensor:
    """(B, N): every node's influence on its prompt's weighted logits, `chunk` prompts at a
    time (memory: a normalised copy of `chunk` adjacencies, not of all)."""
    weights = graph.logit_weights()
    parts = [
        node_influence(graph.adjacency[lo : lo + chunk], weights[lo : lo + chunk])
        for lo in range(0, graph.n_prompts, chunk)
    ]
    return torch.cat(parts)


def scores_of(graph: AttributionGraph, chunk: int = 1024) -> GraphScores:
    """Replacement and completeness scores of every prompt's graph, each of shape (B,).

    Computed `chunk` prompts at a time: the normalised copies of a whole task's adjacency
    would otherwise double its memory several times over.
    """
    kinds, parts = graph.node_kinds, []
    for lo in range(0, graph.n_prompts, chunk):
        sl = slice(lo, lo + chunk)
        parts.append(graph_scores(graph.adjacency[sl], graph.logit_weights()[sl], kinds))
    return GraphScores(*(torch.cat([p[i] for p in parts]) for i in range(2)))


def prune_graph(
    graph: AttributionGraph,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    chunk: int = 1024,
) -> PruneResult:
    """`prune` applied to every prompt's graph of `graph`, `chunk` prompts at a time."""
    kinds, weights, real, parts = graph.node_kinds, graph.logit_weights(), graph.node_mask, []
    for lo in range(0, graph.n_prompts, chunk):
        sl = slice(lo, lo + chunk)
        parts.append(
            prune(graph.adjacency[sl], weights[sl], kinds, node_threshold, edge_threshold, real[sl])
        )
    return PruneResult(*(torch.cat([p[i] for p in parts]) for i in range(3)))
