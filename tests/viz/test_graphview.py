"""Pruning, supernodes, layout and export of view graphs, against the catalog and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from circuitlab.catalog import open_catalog, synthetic
from circuitlab.viz.export import to_circuit_tracer
from circuitlab.viz.graphview import ViewGraph, group, layout, passing_nodes, prune_view, restrict
from circuitlab.viz.sources import circuit_view


def chain(weights: list[float], influence: list[float]) -> ViewGraph:
    """token -> f0 -> f1 -> ... -> logit, edge weights in order; influence of the features."""
    n = len(influence)
    ids = ["T0@0"] + [f"F0.{i}@0" for i in range(n)] + ["L0@0"]
    kinds = ["token"] + ["feature"] * n + ["logit"]
    m = len(ids)
    return ViewGraph(
        ids=ids,
        kinds=kinds,
        labels=list(ids),
        rows=np.array([0] + [1] * n + [2]),
        columns=[0] * m,
        layer=[0] * n + [0, 1],
        index=list(range(m)),
        influence=np.array([0.0, *influence, 0.0]),
        ranked=np.array([False] + [True] * n + [False]),
        activation=[None] * m,
        in_circuit=np.ones(m, dtype=bool),
        catalog_ids=[None] * m,
        src=np.arange(m - 1),
        dst=np.arange(1, m),
        weight=np.array(weights, dtype=float),
        n_rows=3,
        column_names=["x"],
    )


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A synthetic circuit (200 features, 1,000 edges) in a SQLite catalog."""
    url = f"sqlite:///{tmp_path_factory.mktemp('gv') / 'c.db'}"
    model = synthetic.model()
    circuit = synthetic.circuit(model, seed=3)
    with open_catalog(url) as cat:
        cat.put_many([synthetic.task(), model, circuit])
    return url, circuit


@pytest.mark.parametrize("threshold", [0.0, 0.3, 1.0, 2.0, 10.0])
def test_counts_equal_the_catalog_graph(stored, threshold):
    url, circuit = stored
    view = circuit_view(circuit)
    pruned = prune_view(view, 1.0, threshold)
    with open_catalog(url) as cat:
        expected = cat.graph(circuit.id, min_abs_weight=threshold)
    assert len(pruned.edges) == len(expected.edges)
    assert len(pruned.nodes) == len(expected.nodes)
    assert {view.catalog_ids[i] for i in pruned.nodes} == {n.feature.id for n in expected.nodes}


def test_node_fraction_keeps_the_cumulative_share():
    g = chain([1, 1, 1, 1], influence=[0.5, 0.3, 0.2])
    assert passing_nodes(g, 0.5).tolist() == [True, True, False, False, True]
    assert passing_nodes(g, 0.6).tolist() == [True, True, True, False, True]
    assert passing_nodes(g, 1.0).all()
    with pytest.raises(ValueError, match="node_fraction"):
        passing_nodes(g, 1.5)


def test_edges_need_both_ends_and_the_weight():
    g = chain([2.0, -0.5, 1.0, 3.0], influence=[0.5, 0.3, 0.2])
    pruned = prune_view(g, 1.0, 1.0)
    assert sorted(pruned.edges.tolist()) == [0, 2, 3]  # |-0.5| < 1
    assert pruned.edges[0] == 3  # strongest first
    pinned = prune_view(g, 0.5, 10.0, pinned=["F0.2@0"])
    assert [g.ids[i] for i in pinned.nodes] == ["F0.2@0"] and len(pinned.edges) == 0


def test_cap_keeps_the_strongest_edges_within_the_cap(stored):
    _, circuit = stored
    view = circuit_view(circuit)
    full = prune_view(view, 1.0, 0.0, cap=10**6)
    for cap in (50, 300, 999):
        pruned = prune_view(view, 1.0, 0.0, pinned=[view.ids[5]], cap=cap)
        assert len(pruned.nodes) + len(pruned.edges) <= cap
        assert pruned.capped_from == len(full.nodes) + len(full.edges)
        assert pruned.edges.tolist() == full.edges[: len(pruned.edges)].tolist()
        assert 5 in pruned.nodes
        one_more = full.edges[: len(pruned.edges) + 1]
        ends = set(view.src[one_more]) | set(view.dst[one_more]) | {5}
        assert len(one_more) + len(ends) > cap  # the next edge would not have fitted


def test_supernodes_sum_edges_and_drop_inner_ones():
    g = chain([1.0, 2.0, 4.0, 8.0], influence=[0.5, 0.3, 0.2])
    grouped = group(g, {"pair": ["F0.0@0", "F0.1@0", "missing"]})
    assert grouped.ids == ["T0@0", "F0.2@0", "L0@0", "S:pair"]
    assert grouped.members["S:pair"] == ["F0.0@0", "F0.1@0"]
    edges = {
        (grouped.ids[s], grouped.ids[t]): w
        for s, t, w in zip(grouped.src, grouped.dst, grouped.weight, strict=True)
    }
    assert edges == {("T0@0", "S:pair"): 1.0, ("S:pair", "F0.2@0"): 4.0, ("F0.2@0", "L0@0"): 8.0}
    assert grouped.influence[3] == pytest.approx(0.8)
    assert group(g, {"none": ["nope"]}) is g
    sub = restrict(grouped, ["S:pair", "F0.2@0"])
    assert sub.ids == ["F0.2@0", "S:pair"] and sub.weight.tolist() == [4.0]


def test_layout_puts_tokens_low_logits_high_and_positions_in_columns(stored):
    _, circuit = stored
    view = circuit_view(circuit)
    nodes = np.arange(view.n_nodes)
    x, y = layout(view, nodes)
    kinds = np.array(view.kinds)
    assert y[kinds == "token"].max() < y[kinds == "feature"].min()
    assert y[kinds == "logit"].min() > y[kinds == "feature"].max()
    for i in nodes:
        if view.columns[i] is not None:
            assert abs(x[i] - view.columns[i]) <= 0.4


def test_export_is_circuit_tracer_json(stored):
    _, circuit = stored
    view = circuit_view(circuit)
    pruned = prune_view(view, 0.8, 0.5)
    body = to_circuit_tracer(
        view,
        pruned,
        slug="s",
        prompt_tokens=view.column_names,
        pinned=[view.ids[3]],
        groups={"g": [view.ids[3], view.ids[4]]},
        clicked=view.ids[3],
        node_threshold=0.8,
        answer=2,
    )
    assert body["metadata"]["schema_version"] == 1
    ids = {n["node_id"] for n in body["nodes"]}
    assert len(ids) == len(pruned.nodes)
    assert all(link["source"] in ids and link["target"] in ids for link in body["links"])
    assert len(body["links"]) == len(pruned.edges)
    assert body["qParams"]["supernodes"][0][0] == "g"
    assert body["qParams"]["clickedId"] == body["qParams"]["pinnedIds"][0]
    feature = next(n for n in body["nodes"] if n["feature_type"] == "cross layer transcoder")
    assert feature["node_id"] == f"{feature['layer']}_{feature['feature']}_{feature['ctx_idx']}"
    assert feature["clerp"]
