"""Streaming aggregation: graphs added chunk by chunk give what all graphs at once give.

The references are the formulas extraction used when it held every prompt's graph at once
(influence summed over the whole (B, N, N) adjacency, edges index-added over all of it); they
are kept here as the specification the chunked totals must meet.
"""

from __future__ import annotations

import pytest
import torch

from circuitlab.extraction.activations import mlp_activations, task_tokens
from circuitlab.extraction.aggregate import GraphTotals
from circuitlab.extraction.attribution import AttributionConfig, AttributionStream, attribute
from circuitlab.extraction.circuit import reference, select_circuit
from circuitlab.extraction.graph import node_influence, scores_of
from circuitlab.extraction.transcoder import TranscoderConfig, train_transcoder
from circuitlab.models import ModelConfig, Transformer
from circuitlab.tasks import get_task


@pytest.fixture(scope="module", params=[1, 2], ids=["1-layer", "2-layer"])
def setup(request):
    torch.set_num_threads(1)
    task = get_task("add_mod_7")
    cfg = ModelConfig.for_task(
        task, n_layers=request.param, d_model=24, n_heads=2, d_head=12, d_mlp=48
    )
    model = Transformer(cfg, seed=request.param).eval()
    tokens, _ = task_tokens(task)
    tc_cfg = TranscoderConfig(n_features=24, steps=60, batch_size=32)
    tc, _ = train_transcoder(mlp_activations(model, tokens), tc_cfg)
    targets = model(tokens).argmax(-1)  # the untrained model's own answers: accuracy 1
    whole = attribute(model, tc, tokens, AttributionConfig(qk=False))
    return model, tc, tokens, targets, whole


def totals_of(model, tc, tokens, batch_size, examples=()):
    totals = GraphTotals.for_model(model.cfg, tc.n_features, tokens.shape[1], examples)
    stream = AttributionStream(
        model, tc, tokens, AttributionConfig(batch_size=batch_size, qk=False)
    )
    for chunk in stream:
        totals.add(chunk)
    return totals


def old_importance(graph, n_features):
    infl = node_influence(graph.adjacency, graph.logit_weights())[:, : graph.n_feature_slots]
    flat = (graph.features[..., 0] * n_features + graph.features[..., 2])[graph.feature_mask]
    out = torch.zeros(graph.n_layers * n_features)
    out.index_add_(0, flat, infl[graph.feature_mask])
    return out.view(graph.n_layers, n_features) / graph.n_prompts


def old_task_edges(graph, keep, n_features):
    L, F, B, S = graph.n_layers, n_features, graph.n_prompts, graph.n_pos
    kept = torch.stack(keep).flatten().nonzero().flatten().tolist()
    lookup = torch.full((L * F,), -1, dtype=torch.long)
    lookup[kept] = torch.arange(len(kept))
    feat = lookup[(graph.features[..., 0] * F + graph.features[..., 2]).clamp(0, L * F - 1)]
    feat = torch.where(graph.feature_mask, feat, -1)
    answers = sorted(set(graph.logit_positions.tolist()))
    slot = torch.tensor([answers.index(int(a)) for a in graph.logit_positions])
    logits = torch.where(graph.logit_mask, len(kept) + S + slot, -1)
    errors = torch.full((B, L * S), -1, dtype=torch.long)
    key = torch.cat([feat, errors, (len(kept) + torch.arange(S)).expand(B, -1), logits], 1)
    scale = torch.ones(B, graph.n_nodes)
    scale[:, graph.logit_start :] = graph.logit_probs
    n = len(kept) + S + len(answers)
    valid = (key.unsqueeze(2) >= 0) & (key.unsqueeze(1) >= 0)
    pair = key.unsqueeze(2) * n + key.unsqueeze(1)
    weights = torch.zeros(n * n)
    weights.index_add_(0, pair[valid], (graph.adjacency * scale.unsqueeze(2))[valid])
    return weights.view(n, n) / B


def test_totals_match_the_whole_graph_formulas(setup):
    model, tc, tokens, _, whole = setup
    totals = GraphTotals.for_model(model.cfg, tc.n_features, tokens.shape[1])
    totals.add(whole)
    scores = scores_of(whole)
    assert torch.equal(totals.scores().replacement, scores.replacement)
    assert torch.equal(totals.scores().completeness, scores.completeness)
    torch.testing.assert_close(totals.importance(), old_importance(whole, tc.n_features))
    keep = [
        torch.rand(tc.n_features, generator=torch.Generator().manual_seed(l)) < 0.5
        for l in range(tc.n_layers)
    ]
    edges = totals.task_edges(keep)
    torch.testing.assert_close(edges.weights, old_task_edges(whole, keep, tc.n_features))
    n_kept = int(sum(int(k.sum()) for k in keep))
    assert edges.keys[n_kept:] == [("token", p) for p in range(3)] + [("logit", 2)]
    assert all(k[0] == "feature" for k in edges.keys[:n_kept])


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_chunked_totals_equal_the_whole(setup, batch_size):
    """Chunks of 1-3 prompts give the same scores, influence ranking, circuit, edges and
    example graphs as one chunk of all 49 (up to float rounding)."""
    model, tc, tokens, targets, whole = setup
    examples = (0, 5, 48)
    one = totals_of(model, tc, tokens, None, examples)
    assert one.n_prompts == 49 and len(one.replacement) == 1
    chunked = totals_of(model, tc, tokens, batch_size, examples)
    assert chunked.n_prompts == 49 and len(chunked.replacement) == -(-49 // batch_size)
    for a, b in zip(chunked.scores(), one.scores(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    imp, imp_one = chunked.importance(), one.importance()
    torch.testing.assert_close(imp, imp_one, rtol=1e-6, atol=1e-9)
    ranked = int((imp_one > 0).sum())
    order = imp.flatten().argsort(descending=True)[:ranked]
    assert torch.equal(order, imp_one.flatten().argsort(descending=True)[:ranked])
    ref = reference(model, tc, tokens)
    keep, faith = select_circuit(model, tc, tokens, targets, imp, ref=ref, target_accuracy=0.9)
    keep_one, faith_one = select_circuit(
        model, tc, tokens, targets, imp_one, ref=ref, target_accuracy=0.9
    )
    assert all(torch.equal(a, b) for a, b in zip(keep, keep_one, strict=True))
    assert faith.to_dict() == faith_one.to_dict()
    edges, edges_one = chunked.task_edges(keep), one.task_edges(keep)
    assert edges.keys == edges_one.keys
    torch.testing.assert_close(edges.weights, edges_one.weights, rtol=1e-5, atol=1e-6)
    graphs, graphs_one = chunked.example_graphs(), one.example_graphs()
    assert torch.equal(graphs.tokens, tokens[list(examples)])
    assert torch.equal(graphs.features, graphs_one.features)
    torch.testing.assert_close(graphs.adjacency, graphs_one.adjacency, rtol=1e-5, atol=1e-6)
    # the stream's chunks are the whole graph's rows, in its layout
    torch.testing.assert_close(
        graphs.adjacency, whole.adjacency[list(examples)], atol=1e-6, rtol=1e-5
    )


def test_totals_hold_no_graph_of_all_prompts(setup):
    """Memory of the totals: one (keys x keys) matrix, independent of the number of prompts."""
    model, tc, tokens, _, _ = setup
    totals = totals_of(model, tc, tokens, 7)
    n_keys = model.cfg.n_layers * tc.n_features + 3 + 1
    assert totals.edges.shape == (n_keys, n_keys) and totals.examples == []
    assert GraphTotals.nbytes(model.cfg, tc.n_features, 3, 0) >= totals.edges.numel() * 8
