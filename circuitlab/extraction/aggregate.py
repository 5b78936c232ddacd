"""Task-level summaries of attribution graphs, accumulated one chunk of prompts at a time.

Extraction needs three things from the graphs of all of a task's inputs: each graph's
replacement and completeness scores, each feature's influence summed over prompts (the ranking
a circuit is chosen from), and the direct effects among features, tokens and logits summed over
prompts (the circuit's averaged edges, read once the circuit is known). All are sums over
prompts, so `GraphTotals.add` takes one chunk's graphs at a time and no tensor spans every
prompt's graph: memory is one chunk plus a (keys x keys) matrix, keys = features of every layer
+ positions + answers. Sums are float64, so the totals do not depend on how the prompts were
chunked (up to the final rounding to float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from circuitlab.extraction.graph import (
    AttributionGraph,
    GraphScores,
    concat_graphs,
    influence_and_scores,
)
from circuitlab.models import ModelConfig


@dataclass(frozen=True)
class TaskEdges:
    """Edges of a task-level circuit, averaged over prompts (absent = 0 on that prompt).

    Node keys: ("token", position), ("feature", layer, index), ("logit", answer position);
    logit in-edges are weighted by the logit's probability, so they target the model's answer.
    """

    keys: list[tuple[str, int] | tuple[str, int, int]]
    weights: Tensor  # (n_keys, n_keys) [target, source]


@dataclass
class GraphTotals:
    """Scores, feature influence and edge sums over every prompt added so far.

    Edge keys are global: feature (layer, f) is key layer * n_features + f, then one key per
    token position, then one per answer position; error nodes have none.
    """

    n_layers: int
    n_features: int
    n_pos: int
    answers: tuple[int, ...]
    example_index: tuple[int, ...] = ()  # prompts whose whole graphs are kept (graph JSON)
    n_prompts: int = 0
    replacement: list[Tensor] = field(default_factory=list)
    completeness: list[Tensor] = field(default_factory=list)
    influence: Tensor = field(init=False)  # (L * F,) float64
    edges: Tensor = field(init=False)  # (n_keys, n_keys) float64 [target, source]
    examples: list[AttributionGraph] = field(default_factory=list)

    def __post_init__(self) -> None:
        n_keys = self.n_layers * self.n_features + self.n_pos + len(self.answers)
        self.influence = torch.zeros(self.n_layers * self.n_features, dtype=torch.float64)
        self.edges = torch.zeros(n_keys, n_keys, dtype=torch.float64)

    @classmethod
    def for_model(
        cls, cfg: ModelConfig, n_features: int, n_pos: int, example_index: Sequence[int] = ()
    ) -> GraphTotals:
        answers = tuple(sorted(cfg.answer_positions))
        return cls(cfg.n_layers, n_features, n_pos, answers, tuple(example_index))

    @staticmethod
    def nbytes(cfg: ModelConfig, n_features: int, n_pos: int, n_prompts: int) -> int:
        """Memory of the totals of `n_prompts` prompts (the edge matrix dominates)."""
        n_keys = cfg.n_layers * n_features + n_pos + len(cfg.answer_positions)
        return 8 * (n_keys * n_keys + cfg.n_layers * n_features) + 8 * n_prompts

    def add(self, graph: AttributionGraph) -> None:
        """Accumulate the graphs of the next `graph.n_prompts` prompts."""
        start, F = self.n_prompts, self.n_features
        infl, scores = influence_and_scores(
            graph.adjacency, graph.logit_weights(), graph.node_kinds
        )
        self.replacement.append(scores.replacement)
        self.completeness.append(scores.completeness)
        mask = graph.feature_mask
        flat = graph.features[..., 0] * F + graph.features[..., 2]
        self.influence.index_add_(0, flat[mask], infl[:, : graph.n_feature_slots][mask].double())
        del infl
        # edges between keyed nodes, read through flat indices (1-D gathers are fast)
        # (padding rows and columns are zero; error nodes have no key)
        key = self._node_keys(graph).view(-1)  # (B * N,)
        N = graph.n_nodes
        mask = graph.adjacency != 0
        mask[:, :, graph.error_start : graph.token_start] = False
        b, t, s = mask.nonzero().unbind(1)
        del mask
        row, col = b * N + t, b * N + s
        flat = row * N + s
        # logit in-edges weighted by the logit's probability
        scale = torch.ones(graph.n_prompts, N, dtype=torch.float64)
        scale[:, graph.logit_start :] = graph.logit_probs.double()
        values = graph.adjacency.view(-1)[flat].double() * scale.view(-1)[row]
        self.edges.view(-1).index_add_(0, key[row] * self.edges.shape[0] + key[col], values)
        local = [i - start for i in self.example_index if start <= i < start + graph.n_prompts]
        if local:
            self.examples.append(graph.subset(local))
        self.n_prompts += graph.n_prompts

    def _node_keys(self, graph: AttributionGraph) -> Tensor:
        """(B, N) the key of every node of every prompt, -1 for errors and padding."""
        L, F, B = self.n_layers, self.n_features, graph.n_prompts
        feat = graph.features[..., 0] * F + graph.features[..., 2]
        feat = torch.where(graph.feature_mask, feat, -1)
        errors = torch.full((B, L * graph.n_pos), -1, dtype=torch.long)
        tokens = (L * F + torch.arange(graph.n_pos)).expand(B, -1)
        answer = torch.tensor([self.answers.index(int(a)) for a in graph.logit_positions])
        logits = (L * F + self.n_pos + answer).expand(B, -1)
        logits = torch.where(graph.logit_mask, logits, -1)
        return torch.cat([feat, errors, tokens, logits], dim=1)

    def scores(self) -> GraphScores:
        """Replacement and completeness scores of every prompt's graph, each (n_prompts,)."""
        return GraphScores(torch.cat(self.replacement), torch.cat(self.completeness))

    def importance(self) -> Tensor:
        """(L, F): each feature's influence on the answer logits, averaged over the prompts.

        Influence is circuit-tracer's (|edges| row-normalised, logits weighted by probability),
        so a feature ranks high when it matters on many inputs, through any path.
        """
        mean = self.influence / max(self.n_prompts, 1)
        return mean.float().view(self.n_layers, self.n_features)

    def task_edges(self, keep: list[Tensor]) -> TaskEdges:
        """The direct effects among the circuit's features, the tokens and the logits, averaged
        over the prompts."""
        L, F = self.n_layers, self.n_features
        kept = torch.stack(keep).flatten().nonzero().flatten().tolist()  # layer * F + feature
        keys: list = [("feature", f // F, f % F) for f in kept]
        keys += [("token", p) for p in range(self.n_pos)]
        keys += [("logit", a) for a in self.answers]
        index = torch.tensor(kept + list(range(L * F, self.edges.shape[0])), dtype=torch.long)
        mean = self.edges[index][:, index] / max(self.n_prompts, 1)
        return TaskEdges(keys, mean.float())

    def example_graphs(self) -> AttributionGraph | None:
        """The kept prompts' graphs (in `example_index` order), or None when none were kept."""
        return concat_graphs(self.examples) if self.examples else None
