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

Every function takes leading batch dimensions, so the graphs of all of a task's inputs are
scored and pruned at once (sorting and cumulative sums run per graph).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

SCHEMA_VERSION = 1

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
    normalized = normalize_rows(adjacency)
    scores = influence(normalized, weights)
    is_error, is_token = kinds == ERROR, kinds == TOKEN
    token = (scores * is_token).sum(-1)
    error = (scores * is_error).sum(-1)
    replacement = token / (token + error).clamp_min(1e-30)
    non_error = 1 - (normalized * is_error).sum(-1)
    reach = scores + weights
    completeness = (non_error * reach).sum(-1) / reach.sum(-1).clamp_min(1e-30)
    return GraphScores(replacement, completeness)


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


# ------------------------------------------------------------------------------------------------
# circuit-tracer frontend JSON (schema_version 1)


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _node(node_id: str, feature: int, layer: str, pos: int, kind: str, js: str, **extra: Any):
    node = {
        "node_id": node_id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": pos,
        "feature_type": kind,
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js,
        "clerp": "",
        "influence": None,
        "activation": None,
    }
    node.update(extra)
    return node


def to_circuit_tracer_json(
    graph: AttributionGraph,
    index: int,
    *,
    slug: str,
    token_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    scan: str = "circuitlab",
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> dict[str, Any]:
    """The pruned graph of prompt `index` as circuit-tracer's frontend graph JSON (schema 1).

    Node ids follow circuit-tracer: feature "{layer}_{feat}_{pos}", error "0_{layer}_{pos}",
    token "E_{token}_{pos}", logit "{L+1}_{token}_{pos}". `influence` is each node's cumulative
    influence fraction, as circuit-tracer writes it.
    """
    if not 0 <= index < graph.n_prompts:
        raise IndexError(f"graph index must be in [0, {graph.n_prompts}), got {index}")
    tok_names = list(token_names) if token_names is not None else None
    out_names = list(output_names) if output_names is not None else tok_names
    adjacency = graph.adjacency[index]
    kinds = graph.node_kinds
    result = prune(
        adjacency,
        graph.logit_weights()[index],
        kinds,
        node_threshold,
        edge_threshold,
        real=graph.node_mask[index],
    )
    tokens = graph.tokens[index].tolist()

    def name(names: list[str] | None, tok: int) -> str:
        return names[tok] if names is not None and 0 <= tok < len(names) else str(tok)

    nodes: dict[int, dict[str, Any]] = {}
    cum = result.cumulative_scores.tolist()
    top_of_position: dict[int, int] = {}
    for slot in range(graph.logit_positions.shape[0]):
        if graph.logit_mask[index, slot]:
            top_of_position.setdefault(int(graph.logit_positions[slot]), slot)
    for i in result.node_mask.nonzero().flatten().tolist():
        kind = int(kinds[i])
        if kind == FEATURE:
            layer, pos, feat = graph.features[index, i].tolist()
            nodes[i] = _node(
                f"{layer}_{feat}_{pos}",
                _cantor(layer, feat),
                str(layer),
                pos,
                "cross layer transcoder",
                f"{layer}_{feat}-0",
                influence=cum[i],
                activation=float(graph.activations[index, i]),
            )
        elif kind == ERROR:
            layer, pos = divmod(i - graph.error_start, graph.n_pos)
            nodes[i] = _node(
                f"0_{layer}_{pos}",
                -1,
                str(layer),
                pos,
                "mlp reconstruction error",
                f"{layer}_-1-{pos}",
                influence=cum[i],
            )
        elif kind == TOKEN:
            pos = i - graph.token_start
            tok = tokens[pos]
            nodes[i] = _node(
                f"E_{tok}_{pos}",
                pos,
                "E",
                pos,
                "embedding",
                f"E_{tok}-{pos}",
                influence=cum[i],
            )
        else:
            slot = i - graph.logit_start
            tok = int(graph.logit_tokens[index, slot])
            pos = int(graph.logit_positions[slot])
            prob = float(graph.logit_probs[index, slot])
            layer = str(graph.n_layers + 1)
            nodes[i] = _node(
                f"{layer}_{tok}_{pos}",
                tok,
                layer,
                pos,
                "logit",
                f"L_{tok}-{pos}",
                token_prob=prob,
                is_target_logit=top_of_position.get(pos) == slot,
                clerp=f'Output "{name(out_names, tok)}" (p={prob:.3f})',
            )
    targets, sources = result.edge_mask.nonzero(as_tuple=True)
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(w)}
        for t, s, w in zip(
            targets.tolist(), sources.tolist(), adjacency[targets, sources].tolist(), strict=True
        )
        if s in nodes and t in nodes and math.isfinite(w)
    ]
    connected = {link["source"] for link in links} | {link["target"] for link in links}
    used = [
        n
        for n in nodes.values()
        if n["node_id"] in connected or n["feature_type"] in ("embedding", "logit")
    ]
    prompt_tokens = [name(tok_names, t) for t in tokens]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": [],
            "prompt_tokens": prompt_tokens,
            "prompt": " ".join(prompt_tokens),
            "node_threshold": node_threshold,
            "schema_version": SCHEMA_VERSION,
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": used,
        "links": links,
    }


def node_id(graph: AttributionGraph, index: int, node: int) -> str:
    """circuit-tracer's id of node `node` in prompt `index`'s graph."""
    kind = int(graph.node_kinds[node])
    if kind == FEATURE:
        layer, pos, feat = graph.features[index, node].tolist()
        return f"{layer}_{feat}_{pos}"
    if kind == ERROR:
        layer, pos = divmod(node - graph.error_start, graph.n_pos)
        return f"0_{layer}_{pos}"
    if kind == TOKEN:
        pos = node - graph.token_start
        return f"E_{int(graph.tokens[index, pos])}_{pos}"
    slot = node - graph.logit_start
    tok, pos = int(graph.logit_tokens[index, slot]), int(graph.logit_positions[slot])
    return f"{graph.n_layers + 1}_{tok}_{pos}"


def top_qk_pairs(graph: AttributionGraph, index: int, top: int = 10) -> list[dict[str, Any]]:
    """The largest (query source, key source) terms of every attention score of one prompt.

    Each entry: layer, head, query and key positions, the query-side and key-side node ids
    ("bias" for the bias part) and the term's value; sorted by |value|.
    """
    if not graph.qk:
        raise ValueError("the graph has no QK attribution (attribute with qk=True)")
    if not 0 <= index < graph.n_prompts:
        raise IndexError(f"graph index must be in [0, {graph.n_prompts}), got {index}")
    rows = []
    for qk in graph.qk:
        pairs = qk.pairs[index]  # (H, Qn, S, Ns + 1, Ns + 1)
        real = torch.cat([graph.node_mask[index, qk.sources], torch.ones(1, dtype=torch.bool)])
        values = pairs * (real.view(-1, 1) & real.view(1, -1))
        flat = values.abs().flatten()
        k = min(top, int((flat > 0).sum()))
        names = [node_id(graph, index, int(n)) for n in qk.sources] + ["bias"]
        for i in flat.topk(k).indices.tolist():
            h, qi, key, s, t = torch.unravel_index(torch.tensor(i), values.shape)
            rows.append(
                {
                    "layer": qk.layer,
                    "head": int(h),
                    "query_pos": qk.query_positions[int(qi)],
                    "key_pos": int(key),
                    "query_source": names[int(s)],
                    "key_source": names[int(t)],
                    "value": float(values[h, qi, key, s, t]),
                }
            )
    rows.sort(key=lambda r: -abs(r["value"]))
    return rows[:top]


def write_graph_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write graph JSON atomically (temp file in the same directory, then rename)."""
    from circuitlab.training.rundir import write_json_atomic

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {path.parent} does not exist")
    write_json_atomic(path, data)
    return path
