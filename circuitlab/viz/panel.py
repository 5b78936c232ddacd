"""The feature panel: what the clicked node is, its label (editable), and for a transcoder
feature its measurements (live.FeatureReport): top activating inputs, the (a, b) heatmap and
Fourier spectrum on modular tasks, logit effects and the activation histogram.

What the catalog holds (label, description, the statistics extraction stored, the circuit's
activation examples) is shown even when the run directory is gone; the measurements need the
run, and the panel says so instead of failing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash import dcc, html

from circuitlab.catalog import records as rec
from circuitlab.viz.figures import effects_figure, heatmap_figure, histogram_figure, spectrum_figure
from circuitlab.viz.sources import ExplorerError
from circuitlab.viz.state import ViewState

if TYPE_CHECKING:
    from circuitlab.viz.app import Explorer

GRAPH_CONFIG = {"displaylogo": False, "displayModeBar": False}


def _fact(name: str, value: Any) -> html.Tr:
    if isinstance(value, float):
        value = f"{value:.4g}"
    return html.Tr(
        [html.Td(name, className="muted", style={"paddingRight": "10px"}), html.Td(str(value))]
    )


def panel(explorer: Explorer, circuit_id: str, state: ViewState) -> list[Any]:
    from circuitlab.viz.circuit_page import shown_graph

    if not state.clicked:
        return [html.P("Click a node to see it here.", className="muted", id="panel-empty")]
    record = explorer.sources.circuit(circuit_id)
    _, graph = shown_graph(explorer, circuit_id, state)
    try:
        i = graph.position(state.clicked)
    except KeyError:
        return [html.P(f"{state.clicked} is not in this graph.", className="muted")]
    kind, column = graph.kinds[i], graph.columns[i]
    feature = _catalog_feature(record, graph.catalog_ids[i])
    facts = [
        _fact("node", graph.ids[i]),
        _fact("kind", kind + ("" if graph.in_circuit[i] else " (not in the circuit)")),
        _fact("position", "every" if column is None else graph.column_names[column]),
    ]
    if graph.ranked[i]:
        facts.append(_fact("influence", float(graph.influence[i])))
    if graph.activation[i] is not None:
        facts.append(_fact("activation", graph.activation[i]))
    if feature is not None:
        facts += [
            _fact(k, v)
            for k, v in sorted(feature.stats.items())
            if isinstance(v, int | float | str)
        ]
    out: list[Any] = [
        html.H4(graph.labels[i], id="panel-title", style={"marginTop": "4px"}),
        html.Table(facts, style={"fontSize": 13}),
    ]
    if feature is not None and feature.description:
        out.append(html.P(feature.description))
    if feature is not None:
        out.append(
            html.Div(
                [
                    dcc.Store(id="label-feature", data=feature.id),
                    dcc.Input(
                        id="label-input",
                        value=feature.label,
                        style={"width": "60%"},
                        maxLength=rec.LABEL_LEN,
                    ),
                    html.Button("Save label", id="save-label", style={"marginLeft": "4px"}),
                    html.Span(id="label-status", className="muted", style={"marginLeft": "6px"}),
                ],
                className="row",
            )
        )
    elif kind == "feature":
        out.append(
            html.P(
                "Not one of the circuit's features: its label is not in the catalog.",
                className="muted",
            )
        )
    if graph.ids[i] in graph.members:
        out.append(html.P("groups " + ", ".join(graph.members[graph.ids[i]])))
    if kind == "feature" and graph.index[i] is not None:
        out += _measurements(explorer, record, graph.layer[i], graph.index[i], column, feature)
    return out


def _catalog_feature(record: rec.Circuit, feature_id: str | None) -> rec.Feature | None:
    if feature_id is None:
        return None
    return next((n.feature for n in record.nodes if n.feature.id == feature_id), None)


def _measurements(
    explorer: Explorer,
    record: rec.Circuit,
    layer: int,
    index: int,
    position: int | None,
    feature: rec.Feature | None,
) -> list[Any]:
    try:
        report = explorer.live.feature_report(record, layer, index, position)
    except ExplorerError as exc:
        stored = [
            html.Li(f"{e.text}: {e.value:.4g}" if e.value is not None else e.text)
            for e in record.examples
            if feature is not None and e.feature == feature.id
        ]
        out: list[Any] = [html.P(str(exc), className="note", id="panel-note")]
        if stored:
            out += [html.H5("top inputs stored in the catalog"), html.Ul(stored)]
        return out
    where = f"at position {report.position}, over {report.n_inputs:,} inputs"
    top = html.Table(
        [html.Tr([html.Th("input"), html.Th("activation")])]
        + [html.Tr([html.Td(text), html.Td(f"{value:.4g}")]) for text, value in report.top],
        id="top-inputs",
        style={"fontSize": 13},
    )
    out = [
        html.H5(f"top activating inputs ({where})"),
        top if report.top else html.P("never fires", className="muted"),
    ]
    if report.grid is not None:
        out.append(dcc.Graph(figure=heatmap_figure(report.grid), config=GRAPH_CONFIG, id="heatmap"))
    if report.spectrum is not None:
        out.append(
            dcc.Graph(figure=spectrum_figure(report.spectrum), config=GRAPH_CONFIG, id="spectrum")
        )
    if report.promotes:
        out.append(
            dcc.Graph(
                figure=effects_figure(report.promotes, report.suppresses),
                config=GRAPH_CONFIG,
                id="effects",
            )
        )
    if len(report.active):
        out.append(
            dcc.Graph(
                figure=histogram_figure(report.active, report.firing_rate),
                config=GRAPH_CONFIG,
                id="histogram",
            )
        )
    return out
