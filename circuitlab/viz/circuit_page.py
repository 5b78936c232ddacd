"""The graph view of one circuit: prune, pin, group, export; the URL keeps the state.

Data flow: every control feeds one reducer (`update_view`) that writes the view state to a
store; one render callback draws the store (figure, counts, the URL's query string), and the
feature panel (panel.py) redraws only when the clicked node, the graph or a label changes. The
page is built from the URL on load, so a copied link reproduces the view, pins included.

Sliders: node influence as circuit-tracer's cumulative fraction; edge weight as a minimum
|weight| on a log scale (the leftmost position keeps every edge). Both prune on the server
(graphview.prune_view), which also caps what is drawn at `graphview.CAP` elements.
"""

from __future__ import annotations

import json
import math
from urllib.parse import urlencode

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update, set_props
from dash.exceptions import PreventUpdate

from circuitlab.viz import panel
from circuitlab.viz.app import BANNER_HIDDEN, Explorer
from circuitlab.viz.export import export_view
from circuitlab.viz.figures import graph_figure
from circuitlab.viz.graphview import CAP, ViewGraph, group, prune_view, restrict
from circuitlab.viz.live import default_values, parse_values
from circuitlab.viz.sources import ExplorerError, saved_subgraphs
from circuitlab.viz.state import (
    ViewState,
    clean_name,
    from_store,
    min_weight_of,
    slider_range,
    to_store,
)

STEPS = 100  # positions of the edge slider between the smallest and largest |weight|

EXPORT_JS = """
function(png, svg) {
    const clicked = window.dash_clientside.callback_context.triggered_id || "";
    const format = clicked.replace("export-", "");
    const plot = document.querySelector("#graph .js-plotly-plot");
    if (!format || !plot || !window.Plotly) { return window.dash_clientside.no_update; }
    const size = {width: 1600, height: 800};
    window.Plotly.downloadImage(plot, {format: format, filename: "circuit", ...size});
    return format;
}
"""


def layout(explorer: Explorer, circuit_id: str, search: str) -> html.Div:
    state = ViewState.from_query(search)
    record = explorer.sources.circuit(circuit_id)
    if state.values is None:
        state.values = default_values(record)
    notice = ""
    try:
        graph = explorer.graph(record.id, state.mode, state.values)
    except ExplorerError as exc:
        if state.mode != "input":
            raise
        notice, state.mode = str(exc), "circuit"
        graph = explorer.graph(record.id, "circuit", None)
    lo, hi = slider_range(graph)
    edge_value = math.log10(state.min_weight) if state.min_weight > 0 else lo
    m = record.metrics
    facts = [
        f"task {record.task}",
        f"{len(record.nodes)} nodes, {len(record.edges)} edges",
        f"sufficiency {m.sufficiency:.3f}" if m.sufficiency is not None else "",
        f"necessity drop {m.necessity:.3f}" if m.necessity is not None else "",
        record.interface.signature or "" if record.interface else "",
    ]
    run = record.metadata.source_run
    links = [dcc.Link("lineage", href=f"/lineage/{record.id}")]
    if run:
        links += [" · ", dcc.Link("training run", href="/training?" + urlencode({"runs": run}))]
    button = {"style": {"marginRight": "4px"}}
    return html.Div(
        [
            dcc.Store(id="cid", data=record.id),
            dcc.Store(id="view", data=to_store(state)),
            dcc.Store(id="panel-key"),
            html.H3(record.interpretation.label or f"circuit {record.id[:12]}", id="title"),
            html.Div(
                [
                    " · ".join(f for f in facts if f),
                    " · ",
                    html.Code(record.id[:16]),
                    " · ",
                    *links,
                ],
                className="muted",
            ),
            html.Div(notice, className="note", hidden=not notice, id="mode-note"),
            html.Div(
                [
                    dcc.RadioItems(
                        [
                            {"label": "task-level circuit", "value": "circuit"},
                            {"label": "graph of one input", "value": "input"},
                        ],
                        state.mode,
                        id="mode",
                        inline=True,
                    ),
                    dcc.Input(
                        id="values",
                        value=", ".join(map(str, state.values)),
                        debounce=True,
                        style={"width": 110},
                    ),
                    html.Button("Show input", id="show"),
                ],
                className="row",
            ),
            html.Div(
                [
                    html.Span("node influence (cumulative share kept)"),
                    html.Div(
                        dcc.Slider(
                            0,
                            1,
                            0.01,
                            value=state.node_fraction,
                            id="node-slider",
                            marks={0: "0", 0.5: "0.5", 0.8: "0.8", 1: "1"},
                        ),
                        style={"width": 360},
                    ),
                    html.Span("min |edge weight|"),
                    html.Div(
                        dcc.Slider(
                            lo,
                            hi,
                            (hi - lo) / STEPS,
                            value=edge_value,
                            id="edge-slider",
                            marks=None,
                            allow_direct_input=False,
                        ),
                        style={"width": 300},
                    ),
                    html.Span(id="edge-value", className="muted"),
                ],
                className="row",
            ),
            html.Div(
                [
                    html.Span(id="n-nodes"),
                    " nodes · ",
                    html.Span(id="n-edges"),
                    " edges shown",
                    html.Span(id="n-total", className="muted"),
                ],
                id="counts",
            ),
            html.Div(id="cap-note", className="note", hidden=True),
            html.Div(
                [
                    html.Div(
                        [
                            dcc.Graph(id="graph", config={"displaylogo": False}),
                            html.Div(
                                [
                                    html.Button("Pin", id="pin", **button),
                                    html.Button("Clear pins", id="clear-pins", **button),
                                    dcc.Checklist(
                                        [{"label": " pinned only", "value": "sub"}],
                                        ["sub"] if state.subgraph else [],
                                        id="subgraph",
                                        inline=True,
                                    ),
                                    dcc.Input(
                                        id="group-name",
                                        placeholder="supernode name",
                                        style={"width": 130},
                                    ),
                                    html.Button("Group pinned", id="group", **button),
                                    dcc.Dropdown(
                                        id="ungroup-choice",
                                        placeholder="supernode",
                                        style={"width": 140},
                                    ),
                                    html.Button("Ungroup", id="ungroup", **button),
                                    dcc.Input(
                                        id="save-name",
                                        placeholder="subgraph name",
                                        style={"width": 120},
                                    ),
                                    html.Button("Save subgraph", id="save-sub", **button),
                                    dcc.Dropdown(
                                        sorted(saved_subgraphs(record)),
                                        id="saved-subgraphs",
                                        placeholder="saved subgraphs",
                                        style={"width": 150},
                                    ),
                                    html.Span("export:", className="muted"),
                                    html.Button("PNG", id="export-png", **button),
                                    html.Button("SVG", id="export-svg", **button),
                                    html.Button("circuit-tracer JSON", id="export-json"),
                                    dcc.Download(id="download"),
                                    html.Span(id="export-done", hidden=True),
                                ],
                                className="row",
                            ),
                        ],
                        style={"flex": "1 1 64%", "minWidth": 0},
                    ),
                    html.Div(
                        dcc.Loading(html.Div(id="panel")),
                        className="panel",
                        style={"flex": "1 1 36%", "minWidth": 0},
                    ),
                ],
                style={"display": "flex", "gap": "12px", "alignItems": "flex-start"},
            ),
        ]
    )


def shown_graph(explorer: Explorer, cid: str, state: ViewState) -> tuple[ViewGraph, ViewGraph]:
    """(the graph as built, the graph as drawn: supernodes grouped, pinned-only applied)."""
    graph = explorer.graph(cid, state.mode, state.values)
    shown = group(graph, state.groups) if state.groups else graph
    if state.subgraph:
        shown = restrict(shown, state.pinned)
    return graph, shown


def register(app: Dash, explorer: Explorer) -> None:
    @app.callback(
        Output("view", "data"),
        Input("mode", "value"),
        Input("show", "n_clicks"),
        Input("values", "n_submit"),
        Input("node-slider", "value"),
        Input("edge-slider", "value"),
        Input("graph", "clickData"),
        Input("pin", "n_clicks"),
        Input("clear-pins", "n_clicks"),
        Input("subgraph", "value"),
        Input("group", "n_clicks"),
        Input("ungroup", "n_clicks"),
        Input("save-sub", "n_clicks"),
        Input("saved-subgraphs", "value"),
        State("view", "data"),
        State("values", "value"),
        State("group-name", "value"),
        State("ungroup-choice", "value"),
        State("save-name", "value"),
        State("edge-slider", "min"),
        State("cid", "data"),
        prevent_initial_call=True,
    )
    def update_view(
        mode,
        _show,
        _submit,
        node,
        edge,
        click,
        _pin,
        _clear,
        sub,
        _group,
        _ungroup,
        _save,
        saved_choice,
        data,
        text,
        name,
        ungroup_choice,
        save_name,
        edge_min,
        cid,
    ):
        state, rev = from_store(data), data.get("rev", 0)
        what = ctx.triggered_id
        if what == "mode":
            if mode == state.mode:  # e.g. the radio put back after a failed input graph: a
                raise PreventUpdate  # re-render would clear that failure's banner
            state.mode = mode
        elif what in ("show", "values"):
            state.values = parse_values(explorer.sources.circuit(cid), text or "")
            state.mode = "input"
        elif what == "node-slider" and node is not None:
            if abs(node - state.node_fraction) < 1e-9:
                raise PreventUpdate
            state.node_fraction = float(node)
        elif what == "edge-slider":
            weight = min_weight_of(edge, edge_min)
            if state.min_weight > 0 and abs(math.log10(state.min_weight) - edge) < 1e-6:
                raise PreventUpdate  # the slider echoing the URL's value
            state.min_weight = weight
        elif what == "graph":
            points = (click or {}).get("points") or [{}]
            if "customdata" not in points[0]:
                raise PreventUpdate
            state.clicked = points[0]["customdata"]
        elif what == "pin" and state.clicked:
            if state.clicked in state.pinned:
                state.pinned.remove(state.clicked)
            else:
                state.pinned.append(state.clicked)
        elif what == "clear-pins":
            state.pinned = []
        elif what == "subgraph":
            state.subgraph = "sub" in (sub or [])
        elif what == "group":
            label = clean_name(name or "") or f"group {len(state.groups) + 1}"
            members = [p for p in state.pinned if not p.startswith("S:")]
            if len(members) < 2:
                raise ExplorerError("pin at least two nodes, then group them")
            state.groups[label] = members
            state.pinned = [p for p in state.pinned if p.startswith("S:")] + [f"S:{label}"]
        elif what == "ungroup" and ungroup_choice in state.groups:
            members = state.groups.pop(ungroup_choice)
            state.pinned = [p for p in state.pinned if p != f"S:{ungroup_choice}"] + members
        elif what == "save-sub":
            label = clean_name(save_name or "")
            if not label or not state.pinned:
                raise ExplorerError("pin nodes and name the subgraph, then save it")
            view = {"pinned": state.pinned, "groups": state.groups, "mode": state.mode}
            view |= {"values": list(state.values or ()), "node_fraction": state.node_fraction}
            view["min_weight"] = state.min_weight
            names = explorer.sources.save_subgraph(cid, label, view)
            set_props("saved-subgraphs", {"options": names})
        elif what == "saved-subgraphs" and saved_choice:
            view = saved_subgraphs(explorer.sources.circuit(cid)).get(saved_choice)
            if view is None:
                raise ExplorerError(f"no saved subgraph {saved_choice!r} in this circuit")
            state.pinned = [str(p) for p in view.get("pinned", [])]
            state.groups = {str(k): [str(m) for m in v] for k, v in view.get("groups", {}).items()}
            state.mode = view.get("mode", state.mode)
            state.values = tuple(int(v) for v in view.get("values", ())) or state.values
            state.node_fraction = float(view.get("node_fraction", state.node_fraction))
            state.min_weight = float(view.get("min_weight", state.min_weight))
            state.subgraph = True
        else:
            raise PreventUpdate
        if state.mode == "input":  # build it now: a run that is gone must not stick in the view
            try:
                explorer.graph(cid, "input", state.values)
            except ExplorerError:
                set_props("mode", {"value": "circuit"})
                raise
        return to_store(state, rev)

    @app.callback(
        Output("graph", "figure"),
        Output("n-nodes", "children"),
        Output("n-edges", "children"),
        Output("n-total", "children"),
        Output("cap-note", "children"),
        Output("cap-note", "hidden"),
        Output("url", "search"),
        Output("edge-slider", "min"),
        Output("edge-slider", "max"),
        Output("edge-slider", "step"),
        Output("edge-value", "children"),
        Output("ungroup-choice", "options"),
        Output("pin", "children"),
        Output("panel-key", "data"),
        Input("view", "data"),
        State("cid", "data"),
        State("panel-key", "data"),
    )
    def render(data, cid, panel_key):
        state = from_store(data)
        graph, shown = shown_graph(explorer, cid, state)
        pruned = prune_view(shown, state.node_fraction, state.min_weight, state.pinned)
        key = f"{cid}|{state.mode}|{state.values}"
        fig = graph_figure(shown, pruned, state.pinned, state.clicked, key=key)
        note = ""
        if pruned.capped_from:
            note = (
                f"Showing {len(pruned.nodes) + len(pruned.edges):,} of {pruned.capped_from:,} "
                f"elements (the cap is {CAP:,}): the strongest edges that fit. Raise the "
                "thresholds to see the rest."
            )
        lo, hi = slider_range(graph)
        edge_text = f"|w| ≥ {state.min_weight:.3g}" if state.min_weight > 0 else "all edges"
        new_key = f"{key}|{state.clicked}|{data.get('rev', 0)}"
        set_props("error-banner", {"children": "", "style": BANNER_HIDDEN})
        return (
            fig,
            str(len(pruned.nodes)),
            str(len(pruned.edges)),
            f" (of {shown.n_nodes} nodes, {shown.n_edges} edges)",
            note,
            not note,
            state.to_query(),
            lo,
            hi,
            (hi - lo) / STEPS,
            edge_text,
            list(state.groups),
            "Unpin" if state.clicked and state.clicked in state.pinned else "Pin",
            new_key if new_key != panel_key else no_update,
        )

    @app.callback(
        Output("panel", "children"),
        Input("panel-key", "data"),
        State("view", "data"),
        State("cid", "data"),
    )
    def draw_panel(_key, data, cid):
        return panel.panel(explorer, cid, from_store(data))

    @app.callback(
        Output("label-status", "children"),
        Output("view", "data", allow_duplicate=True),
        Input("save-label", "n_clicks"),
        State("label-input", "value"),
        State("label-feature", "data"),
        State("view", "data"),
        State("cid", "data"),
        prevent_initial_call=True,
    )
    def save_label(n_clicks, label, feature_id, data, cid):
        if not n_clicks or not feature_id:
            raise PreventUpdate
        explorer.sources.save_label(cid, feature_id, (label or "").strip())
        explorer.forget(cid)
        return "saved to the catalog", {**data, "rev": data.get("rev", 0) + 1}

    @app.callback(
        Output("download", "data"),
        Input("export-json", "n_clicks"),
        State("view", "data"),
        State("cid", "data"),
        prevent_initial_call=True,
    )
    def export_json(_n, data, cid):
        state = from_store(data)
        graph = explorer.graph(cid, state.mode, state.values)
        name, body = export_view(graph, explorer.sources.circuit(cid), state)
        return dcc.send_string(json.dumps(body, indent=1), name)

    app.clientside_callback(
        EXPORT_JS,
        Output("export-done", "children"),
        Input("export-png", "n_clicks"),
        Input("export-svg", "n_clicks"),
        prevent_initial_call=True,
    )
