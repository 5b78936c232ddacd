"""Influence, pruning and scores on tiny graphs computed by hand; the frontend JSON export."""

from __future__ import annotations

import json

import pytest
import torch

from circuitlab.extraction.graph import (
    ERROR,
    FEATURE,
    LOGIT,
    TOKEN,
    AttributionGraph,
    cumulative_threshold,
    graph_scores,
    influence,
    node_influence,
    normalize_rows,
    prune,
    scores_of,
)
from circuitlab.extraction.graph_json import node_id, to_circuit_tracer_json, write_graph_json


def chain() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nodes [f0, f1, err, tok, logit]; adjacency[target, source].

    logit <- f0 (2), f1 (-1), err (1);  f0 <- tok (3);  f1 <- tok (1), f0 (1).
    Normalised rows: logit: f0 .5, f1 .25, err .25;  f0: tok 1;  f1: tok .5, f0 .5.
    With w = logit (probability 1):
      w A   = f0 .5, f1 .25, err .25
      w A^2 = .5 (tok) + .25 (.5 tok + .5 f0) = tok .625, f0 .125
      w A^3 = .125 tok
    Influence: f0 .625, f1 .25, err .25, tok .75, logit 0.
    """
    a = torch.zeros(5, 5)
    a[4, 0], a[4, 1], a[4, 2] = 2.0, -1.0, 1.0
    a[0, 3] = 3.0
    a[1, 3], a[1, 0] = 1.0, 1.0
    w = torch.tensor([0.0, 0, 0, 0, 1])
    kinds = torch.tensor([FEATURE, FEATURE, ERROR, TOKEN, LOGIT])
    return a, w, kinds


def test_influence_by_hand_and_in_closed_form():
    a, w, _ = chain()
    got = node_influence(a, w)
    assert torch.allclose(got, torch.tensor([0.625, 0.25, 0.25, 0.75, 0.0]))
    n = normalize_rows(a)
    closed = w @ (torch.linalg.inv(torch.eye(5) - n) - torch.eye(5))
    assert torch.allclose(got, closed, atol=1e-6)
    # batched: a scaled copy has the same influence (rows are normalised), a zero graph none
    batch = torch.stack([a, 10 * a, torch.zeros_like(a)])
    got_b = node_influence(batch, w.expand(3, 5))
    assert torch.allclose(got_b[1], got) and not got_b[2].any()


def test_influence_refuses_a_cycle():
    a = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="cycle"):
        influence(normalize_rows(a), torch.tensor([1.0, 0.0]))


def test_scores_by_hand():
    a, w, kinds = chain()
    s = graph_scores(a, w, kinds)
    # replacement = tok / (tok + err) = .75 / (.75 + .25)
    assert s.replacement.item() == pytest.approx(0.75)
    # completeness: only the logit row has error input (.25); weights = influence + w
    # = (.625 + .25 + .25 + .75 + 1 * .75) / (.625 + .25 + .25 + .75 + 1)
    assert s.completeness.item() == pytest.approx(2.625 / 2.875)
    # without the error edge both scores are 1
    a[4, 2] = 0
    s = graph_scores(a, w, kinds)
    assert s.replacement.item() == pytest.approx(1.0)
    assert s.completeness.item() == pytest.approx(1.0)


def test_cumulative_threshold():
    scores = torch.tensor([[0.1, 0.5, 0.4], [1.0, 0.0, 0.0]])
    # sorted .5 .4 .1 -> cumulative .5 .9 1.0: 80% is reached at .4
    assert cumulative_threshold(scores, 0.8).tolist() == pytest.approx([0.4, 1.0])


def pruning_graph() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nodes [f0, f1, f2, err, tok, tok2, logit].

    logit <- f0 (8), f1 (1), err (1);  f0 <- tok (1), tok2 (0.01);  f1 <- tok (1);  f2 <- tok (1).
    Influence: f0 .8, f1 .1, err .1, f2 0, tok .8 * 100/101 + .1, tok2 .8 / 101, logit 0; total
    1.9, so sorted (tok .892, f0 .8, ...) reaches 80% at f0: nodes f0 (and tokens, logit) stay.
    Edge influence on the pruned graph: logit<-f0 1, f0<-tok 100/101, f0<-tok2 1/101 (total 2):
    98% is reached at f0<-tok, so f0<-tok2 goes.
    """
    a = torch.zeros(7, 7)
    a[6, 0], a[6, 1], a[6, 3] = 8.0, 1.0, 1.0
    a[0, 4], a[0, 5] = 1.0, 0.01
    a[1, 4] = 1.0
    a[2, 4] = 1.0
    w = torch.tensor([0.0, 0, 0, 0, 0, 0, 1])
    kinds = torch.tensor([FEATURE, FEATURE, FEATURE, ERROR, TOKEN, TOKEN, LOGIT])
    return a, w, kinds


def test_prune_by_hand():
    a, w, kinds = pruning_graph()
    result = prune(a, w, kinds)
    assert result.node_mask.tolist() == [True, False, False, False, True, True, True]
    assert sorted(result.edge_mask.nonzero().tolist()) == [[0, 4], [6, 0]]
    # cumulative scores: tok first (.892 / 1.9), then f0 ((.892 + .8) / 1.9)
    tok = 0.8 * 100 / 101 + 0.1
    assert result.cumulative_scores[4].item() == pytest.approx(tok / 1.9)
    assert result.cumulative_scores[0].item() == pytest.approx((tok + 0.8) / 1.9)
    # thresholds of 1 keep every node and edge with influence; f2 has no way out: dropped
    full = prune(a, w, kinds, node_threshold=1.0, edge_threshold=1.0)
    assert full.node_mask.tolist() == [True, True, False, True, True, True, True]
    assert sorted(full.edge_mask.nonzero().tolist()) == [
        [0, 4],
        [0, 5],
        [1, 4],
        [6, 0],
        [6, 1],
        [6, 3],
    ]
    with pytest.raises(ValueError, match="node_threshold"):
        prune(a, w, kinds, node_threshold=1.5)


def test_prune_drops_features_left_without_inputs_then_their_children():
    # f1 <- f0 <- tok, logit <- f1 (1), logit <- f2 (1); f2 has no input and feeds the logit
    a = torch.zeros(5, 5)
    a[1, 0], a[0, 3] = 1.0, 1.0
    a[4, 1], a[4, 2] = 1.0, 1.0
    w = torch.tensor([0.0, 0, 0, 0, 1])
    kinds = torch.tensor([FEATURE, FEATURE, FEATURE, TOKEN, LOGIT])
    result = prune(a, w, kinds, node_threshold=1.0, edge_threshold=1.0)
    assert result.node_mask.tolist() == [True, True, False, True, True]
    assert not result.edge_mask[4, 2]


def test_batched_prune_equals_one_by_one():
    a, w, kinds = pruning_graph()
    b = a.clone()
    b[6, 1] = 9.0  # f1 now matters more than f0
    batch = prune(torch.stack([a, b]), w.expand(2, -1), kinds)
    for i, g in enumerate((a, b)):
        one = prune(g, w, kinds)
        assert torch.equal(batch.node_mask[i], one.node_mask)
        assert torch.equal(batch.edge_mask[i], one.edge_mask)
    assert batch.node_mask[1, 1] and not batch.node_mask[0, 1]


def small_graph() -> AttributionGraph:
    """One prompt `5 7 =` (S=3), one layer, two feature slots (one padding), one logit."""
    s, k = 3, 2
    n = k + s + s + 1
    adjacency = torch.zeros(1, n, n)
    tok0, err2, logit = k + s + 0, k + 2, k + s + s
    adjacency[0, 0, tok0] = 2.0  # token at 0 -> feature slot 0
    adjacency[0, logit, 0] = 3.0  # feature -> logit
    adjacency[0, logit, err2] = 0.5  # error at position 2 -> logit
    return AttributionGraph(
        tokens=torch.tensor([[5, 7, 9]]),
        n_layers=1,
        features=torch.tensor([[[0, 2, 41], [0, 0, 0]]]),
        feature_mask=torch.tensor([[True, False]]),
        feature_offsets=(0, 2),
        activations=torch.tensor([[1.5, 0.0]]),
        pre_activations=torch.tensor([[1.5, 0.0]]),
        logit_tokens=torch.tensor([[2]]),
        logit_positions=torch.tensor([2]),
        logit_mask=torch.tensor([[True]]),
        logit_probs=torch.tensor([[0.99]]),
        logit_values=torch.tensor([[4.0]]),
        adjacency=adjacency,
    )


def test_graph_layout_and_scores():
    g = small_graph()
    assert g.node_kinds.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert g.node_mask.tolist() == [[True, False] + [True] * 7]
    assert g.error_index(0, 2) == 4
    # bias part: pre-activation 1.5 - in-edge 2 = -0.5; logit 4 - (3 + .5) = .5
    assert g.bias_part()[0, 0].item() == pytest.approx(-0.5)
    assert g.bias_part()[0, -1].item() == pytest.approx(0.5)
    s = scores_of(g)
    # logit row normalised: feature 3/3.5, error .5/3.5; feature row: token 1. So the token's
    # influence is .99 * 3/3.5 and the error's .99 * .5/3.5: replacement = 3 / 3.5
    assert s.replacement.item() == pytest.approx(3 / 3.5)


def test_circuit_tracer_json(tmp_path):
    g = small_graph()
    names = [str(i) for i in range(10)]
    data = to_circuit_tracer_json(
        g, 0, slug="tiny", token_names=names, node_threshold=1.0, edge_threshold=1.0
    )
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    meta = data["metadata"]
    assert meta["schema_version"] == 1 and meta["slug"] == "tiny"
    assert meta["prompt_tokens"] == ["5", "7", "9"]
    assert set(meta) == {
        "slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
        "schema_version",
    }  # fmt: skip
    assert set(data["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    node_fields = {
        "node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str,
        "token_prob": float, "is_target_logit": bool, "run_idx": int, "reverse_ctx_idx": int,
        "jsNodeId": str, "clerp": str,
    }  # fmt: skip
    for node in data["nodes"]:
        assert set(node) == set(node_fields) | {"influence", "activation"}
        assert all(isinstance(node[k], t) for k, t in node_fields.items()), node
    by_id = {n["node_id"]: n for n in data["nodes"]}
    # feature "{layer}_{feat}_{pos}", error "0_{layer}_{pos}", token "E_{tok}_{pos}",
    # logit "{L+1}_{tok}_{pos}"; all three tokens are kept (as circuit-tracer does)
    assert set(by_id) == {"0_41_2", "0_0_2", "E_5_0", "E_7_1", "E_9_2", "2_2_2"}
    assert by_id["0_41_2"]["feature_type"] == "cross layer transcoder"
    assert by_id["0_41_2"]["activation"] == pytest.approx(1.5)
    assert by_id["0_0_2"]["feature_type"] == "mlp reconstruction error"
    assert by_id["2_2_2"]["is_target_logit"] and by_id["2_2_2"]["token_prob"] == pytest.approx(0.99)
    ids = [node_id(g, 0, i) for i in (0, 4, 5, 8)]
    assert ids == ["0_41_2", "0_0_2", "E_5_0", "2_2_2"]
    links = {(x["source"], x["target"]): x["weight"] for x in data["links"]}
    assert links == {("E_5_0", "0_41_2"): 2.0, ("0_41_2", "2_2_2"): 3.0, ("0_0_2", "2_2_2"): 0.5}
    path = write_graph_json(tmp_path / "g.json", data)
    assert json.loads(path.read_text()) == data
    with pytest.raises(IndexError, match="index"):
        to_circuit_tracer_json(g, 1, slug="x")
    with pytest.raises(FileNotFoundError):
        write_graph_json(tmp_path / "missing" / "g.json", data)
