"""What the explorer reads from runs and the catalog: single-input graphs, feature reports,
training curves, labels saved, and the messages for what is missing."""

from __future__ import annotations

import numpy as np
import pytest

from circuitlab.catalog import open_catalog
from circuitlab.viz import ExplorerError, Sources
from circuitlab.viz.live import LiveCircuits, parse_values
from circuitlab.viz.runs import read_curves, run_paths


@pytest.fixture(scope="module")
def sources(world):
    return Sources(world.url, runs_dir=world.root / "runs")


def test_input_graph_holds_the_prompt(world, sources):
    record = sources.circuit(world.cid)
    graph = LiveCircuits().input_graph(record, (3, 4))
    assert len(set(graph.ids)) == graph.n_nodes
    assert graph.column_names[:2] == ["a=3", "b=4"]
    assert {"T3@0", "T4@1"} <= set(graph.ids)
    assert "logit" in graph.kinds and graph.n_edges > 0
    assert (graph.influence >= 0).all() and graph.influence[graph.ranked].sum() > 0
    features = [i for i, k in enumerate(graph.kinds) if k == "feature"]
    assert all(graph.activation[i] > 0 for i in features)


def test_feature_report_on_the_modular_grid(world, sources):
    record = sources.circuit(world.cid)
    node = next(n.feature for n in record.nodes if n.feature.node_type == "feature")
    report = LiveCircuits().feature_report(record, node.layer, node.index, None)
    assert report.n_inputs == 121 and report.position == 2
    assert report.grid.shape == (11, 11) and report.spectrum.shape == (5,)
    assert 0 <= report.firing_rate <= 1 and len(report.active) == round(report.firing_rate * 121)
    values = [v for _, v in report.top]
    assert values == sorted(values, reverse=True)
    if report.promotes:
        assert report.promotes[0][1] >= report.suppresses[0][1]


def test_values_are_checked_against_the_ports(world, sources):
    record = sources.circuit(world.cid)
    assert parse_values(record, " 3, 4") == (3, 4)
    for text, message in (("3", "give 2 values"), ("3, x", "not an integer"), ("3, 11", "0..10")):
        with pytest.raises(ExplorerError, match=message):
            parse_values(record, text)


def test_missing_run_directory_is_a_message(world, sources):
    live = LiveCircuits()
    with pytest.raises(ExplorerError, match="moved-run of circuit .* is missing.*need the run"):
        live.input_graph(sources.circuit(world.gone), (1, 2))
    with pytest.raises(ExplorerError, match="no runnable artifact.*need the run"):
        live.feature_report(sources.circuit(world.big), 0, 1, None)


def test_saved_label_is_in_the_catalog(world, sources):
    record = sources.circuit(world.cid)
    feature = record.nodes[0].feature
    sources.save_label(world.cid, feature.id, "carry detector")
    with open_catalog(world.url) as cat:
        again = cat.get(world.cid)
    assert again.id == world.cid
    assert again.nodes[0].feature.label == "carry detector"
    assert sources.circuit(world.cid).nodes[0].feature.label == "carry detector"


def test_unreachable_and_unknown(world, tmp_path):
    with pytest.raises(ExplorerError, match="no catalog at"):
        Sources(str(tmp_path / "nothing.db")).describe()
    with pytest.raises(ExplorerError, match="no record"):
        Sources(world.url).circuit("ffffffff")


def test_training_curves(world, sources):
    assert str(world.run) in run_paths(sources)
    curves = read_curves(str(world.run))
    assert curves.name == "add_mod_11/fast-seed0"
    assert curves.steps[0] == 0 and len(curves.series["val_acc"]) == len(curves.steps)
    assert np.isfinite([v for v in curves.series["train_loss"] if v is not None]).all()
    with pytest.raises(ExplorerError, match="run"):
        read_curves(str(world.root / "nope"))


def test_grid_ports_take_rows_of_digits_or_every_cell(world, sources):
    from dataclasses import replace

    from circuitlab.catalog.records import Port
    from circuitlab.viz.live import default_values

    record = sources.circuit(world.cid)
    grid = Port(name="g", domain="grid[2x3]:Z_3", position=0, positions=list(range(6)))
    gridded = replace(record, interface=replace(record.interface, inputs=[grid]))
    assert parse_values(gridded, "012/210") == (0, 1, 2, 2, 1, 0)
    assert parse_values(gridded, "0, 1, 2, 2, 1, 0") == (0, 1, 2, 2, 1, 0)  # the URL's form
    assert len(default_values(gridded)) == 6
    for text, message in (("01/21", "needs 6 cells"), ("012/213", r"0\.\.2"), ("1 2", "a grid")):
        with pytest.raises(ExplorerError, match=message):
            parse_values(gridded, text)


def test_saved_subgraph_is_in_the_catalog(world, sources):
    from circuitlab.viz.sources import saved_subgraphs

    view = {"pinned": ["F0.1", "T3@0"], "groups": {}, "mode": "circuit", "values": [3, 4]}
    names = sources.save_subgraph(world.cid, "carry path", view)
    assert "carry path" in names
    with open_catalog(world.url) as cat:
        again = cat.get(world.cid)  # the same record: metadata is not part of the id
    assert saved_subgraphs(again)["carry path"]["pinned"] == ["F0.1", "T3@0"]
    assert saved_subgraphs(sources.circuit(world.cid))["carry path"] == view
