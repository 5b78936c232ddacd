"""Plotly figures: the graph view, the lineage view, the feature panel's plots and the training
curves.

The graph is a plotly scatter, not a Cytoscape network: dash-cytoscape sends every element back
to the server on each interaction when its elements are a callback input (~3 s at 1,000
nodes), its bundled Cytoscape.js stops drawing long rows of nodes, and a Cytoscape created by
a callback throws under Dash 4.1. Here the server prunes and lays out, and the browser gets one
marker trace per node kind and one line trace per (sign, width) class of edges: the size of the
figure grows with what is drawn, and drawing 3,000 elements is one SVG path per edge class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from circuitlab.viz.graphview import Pruned, ViewGraph, layout
from circuitlab.viz.runs import RunCurves

POSITIVE, NEGATIVE = "#2166ac", "#b2182b"
PIN, CLICK = "#f28e2b", "#111111"
WIDTHS = (0.6, 1.3, 2.4, 4.0)  # edge line widths by |weight| / largest shown |weight|
WIDTH_BOUNDS = (0.1, 0.3, 0.6)
NODE_STYLE = {  # kind -> (symbol, colour)
    "token": ("square", "#7f7f7f"),
    "feature": ("circle", "#1b9e77"),
    "error": ("diamond", "#bcbd22"),
    "logit": ("square", "#d95f02"),
    "supernode": ("hexagon", "#7570b3"),
}
OUTSIDE = "#a6dbc9"  # features of an input's graph that are not in the circuit
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def graph_figure(
    graph: ViewGraph, pruned: Pruned, pinned: Sequence[str] = (), clicked: str = "", key: str = ""
) -> go.Figure:
    """The pruned graph: tokens at the bottom, logits on top, one column per position; node
    size by influence, edge colour by sign and width by |weight|."""
    nodes, edges = pruned.nodes, pruned.edges
    x, y = layout(graph, nodes)
    where = np.full(graph.n_nodes, -1, dtype=np.int64)
    where[nodes] = np.arange(len(nodes))
    fig = go.Figure()
    if len(edges):
        w = graph.weight[edges]
        scale = np.abs(w) / max(float(np.abs(w).max()), 1e-30)
        width_class = np.searchsorted(WIDTH_BOUNDS, scale)
        a, b = where[graph.src[edges]], where[graph.dst[edges]]
        for positive in (True, False):
            for c, width in enumerate(WIDTHS):
                sel = ((w > 0) == positive) & (width_class == c)
                if not sel.any():
                    continue
                xs = np.column_stack([x[a[sel]], x[b[sel]], np.full(sel.sum(), np.nan)]).ravel()
                ys = np.column_stack([y[a[sel]], y[b[sel]], np.full(sel.sum(), np.nan)]).ravel()
                fig.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines",
                        line={"color": POSITIVE if positive else NEGATIVE, "width": width},
                        opacity=0.35 + 0.15 * c,
                        hoverinfo="skip",
                        showlegend=False,
                        name=f"{'+' if positive else '-'} edges",
                    )
                )
    ranked_max = float(graph.influence[graph.ranked].max()) if graph.ranked.any() else 0.0
    pins = set(pinned)
    for kind, (symbol, colour) in NODE_STYLE.items():
        members = [k for k, i in enumerate(nodes.tolist()) if graph.kinds[i] == kind]
        if not members:
            continue
        idx = nodes[members]
        sizes = [
            8 + 22 * math.sqrt(max(float(graph.influence[i]), 0.0) / ranked_max)
            if graph.ranked[i] and ranked_max > 0
            else 16
            for i in idx.tolist()
        ]
        colours = [colour if graph.in_circuit[i] else OUTSIDE for i in idx.tolist()]
        line_colour = [
            CLICK if graph.ids[i] == clicked else PIN if graph.ids[i] in pins else "white"
            for i in idx.tolist()
        ]
        line_width = [3 if c != "white" else 1 for c in line_colour]
        labelled = kind in ("logit", "supernode")
        fig.add_trace(
            go.Scatter(
                x=x[members],
                y=y[members],
                mode="markers+text" if labelled else "markers",
                text=[_escape(graph.labels[i][:24]) for i in idx.tolist()] if labelled else None,
                textposition="top center",
                name=kind,
                marker={
                    "symbol": symbol,
                    "size": sizes,
                    "color": colours,
                    "line": {"color": line_colour, "width": line_width},
                },
                customdata=[graph.ids[i] for i in idx.tolist()],
                hovertext=[_card(graph, i) for i in idx.tolist()],
                hoverinfo="text",
            )
        )
    n_columns = max(len(graph.column_names), 1)
    row_names = ["tokens"] + [f"layer {r - 1}" for r in range(1, graph.n_rows - 1)] + ["logits"]
    fig.update_layout(
        height=620,
        margin={"l": 70, "r": 20, "t": 10, "b": 40},
        plot_bgcolor="white",
        uirevision=key,
        hovermode="closest",
        clickmode="event",
        legend={"orientation": "h", "y": 1.02, "x": 0},
        xaxis={
            "tickvals": list(range(n_columns)),
            "ticktext": graph.column_names,
            "range": [-0.6, n_columns - 0.4],
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={
            "tickvals": list(range(graph.n_rows)),
            "ticktext": row_names,
            "range": [-0.6, graph.n_rows - 0.4],
            "showgrid": True,
            "gridcolor": "#eeeeee",
            "zeroline": False,
        },
    )
    return fig


def _card(graph: ViewGraph, i: int) -> str:
    """The hover card of node i."""
    column = graph.columns[i]
    where = "every position" if column is None else graph.column_names[column]
    lines = [
        f"<b>{_escape(graph.labels[i])}</b>",
        f"{graph.kinds[i]} {graph.ids[i]} · {where}",
        f"influence {_fmt(float(graph.influence[i]) if graph.ranked[i] else None)}"
        f" · activation {_fmt(graph.activation[i])}",
    ]
    if graph.kinds[i] == "feature" and not graph.in_circuit[i]:
        lines.append("not in the circuit")
    if graph.ids[i] in graph.members:
        lines.append(f"{len(graph.members[graph.ids[i]])} nodes grouped")
    return "<br>".join(lines)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_layout(
        height=300, xaxis={"visible": False}, yaxis={"visible": False}, plot_bgcolor="white"
    )
    return fig


# --- lineage ----------------------------------------------------------------------------------

LINEAGE_COLUMNS = ("task", "model", "derived model", "circuit", "function", "program")


def lineage_figure(
    nodes: dict[str, tuple[str, str]], links: list[tuple[str, str, str]], root: str
) -> go.Figure:
    """Records in columns task -> models -> derived models -> circuits -> functions -> programs,
    relationships as lines; click a record to open it. `nodes`: id -> (column, name)."""
    by_column: dict[str, list[str]] = {c: [] for c in LINEAGE_COLUMNS}
    for rid, (column, _) in sorted(nodes.items(), key=lambda kv: kv[1][1]):
        by_column.setdefault(column, []).append(rid)
    pos: dict[str, tuple[float, float]] = {}
    for c, column in enumerate(LINEAGE_COLUMNS):
        ids = by_column[column]
        for k, rid in enumerate(ids):
            pos[rid] = (c, (len(ids) - 1) / 2 - k)
    fig = go.Figure()
    xs: list[float | None] = []
    ys: list[float | None] = []
    for src, _, dst in links:
        if src in pos and dst in pos:
            xs += [pos[src][0], pos[dst][0], None]
            ys += [pos[src][1], pos[dst][1], None]
    fig.add_trace(
        go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#999", "width": 1}, hoverinfo="skip")
    )
    ids = list(pos)
    fig.add_trace(
        go.Scatter(
            x=[pos[i][0] for i in ids],
            y=[pos[i][1] for i in ids],
            mode="markers+text",
            text=[_escape(nodes[i][1][:28] or i[:10]) for i in ids],
            textposition="bottom center",
            marker={
                "size": [22 if i == root else 14 for i in ids],
                "color": [PALETTE[LINEAGE_COLUMNS.index(nodes[i][0]) % 8] for i in ids],
            },
            customdata=[[i, nodes[i][0]] for i in ids],
            hovertext=[f"{nodes[i][0]} {i[:16]}<br>{_escape(nodes[i][1])}" for i in ids],
            hoverinfo="text",
        )
    )
    fig.update_layout(
        height=420,
        showlegend=False,
        plot_bgcolor="white",
        margin={"l": 20, "r": 20, "t": 10, "b": 30},
        xaxis={
            "tickvals": list(range(len(LINEAGE_COLUMNS))),
            "ticktext": list(LINEAGE_COLUMNS),
            "range": [-0.5, len(LINEAGE_COLUMNS) - 0.5],
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={"visible": False},
    )
    return fig


# --- feature panel ----------------------------------------------------------------------------


def _small(fig: go.Figure, title: str, height: int = 260) -> go.Figure:
    fig.update_layout(
        title={"text": title, "font": {"size": 13}},
        height=height,
        margin={"l": 45, "r": 10, "t": 35, "b": 35},
        plot_bgcolor="white",
        showlegend=False,
    )
    return fig


def heatmap_figure(grid: np.ndarray) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=grid, colorscale="Viridis", colorbar={"thickness": 10}))
    fig.update_xaxes(title_text="b")
    fig.update_yaxes(title_text="a", autorange="reversed")
    return _small(fig, "activation over (a, b)", height=300)


def spectrum_figure(spectrum: np.ndarray) -> go.Figure:
    ks = np.arange(1, len(spectrum) + 1)
    fig = go.Figure(go.Bar(x=ks, y=spectrum, marker_color="#1b9e77"))
    fig.update_xaxes(title_text="frequency k")
    fig.update_yaxes(title_text="share of variance", range=[0, 1])
    return _small(fig, f"Fourier spectrum (dominant k = {int(np.argmax(spectrum)) + 1})")


def effects_figure(
    promotes: list[tuple[str, float]], suppresses: list[tuple[str, float]]
) -> go.Figure:
    rows = promotes + suppresses[::-1]
    fig = go.Figure(
        go.Bar(
            x=[v for _, v in rows],
            y=[f"{name} " for name, _ in rows],
            orientation="h",
            marker_color=[POSITIVE if v > 0 else NEGATIVE for _, v in rows],
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title_text="mean change of the centred logit")
    return _small(fig, "logit effects: promoted (top), suppressed (bottom)", height=340)


def histogram_figure(active: np.ndarray, firing_rate: float) -> go.Figure:
    fig = go.Figure(go.Histogram(x=active, nbinsx=40, marker_color="#7570b3"))
    fig.update_xaxes(title_text="activation (where it fires)")
    return _small(fig, f"activations: fires on {firing_rate:.1%} of inputs")


# --- training ---------------------------------------------------------------------------------


def curves_figure(runs: list[RunCurves], log_steps: bool = False) -> go.Figure:
    """Loss (log scale) and accuracy of each run, train solid and validation dashed, a dotted
    line at each run's grokking step, and restricted/excluded loss at the last step where the
    Fourier analysis ran."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    for r, run in enumerate(runs):
        colour = PALETTE[r % len(PALETTE)]
        for col, kind in ((1, "loss"), (2, "acc")):
            for split, dash in (("train", "solid"), ("val", "dash")):
                fig.add_trace(
                    go.Scatter(
                        x=run.steps,
                        y=run.series[f"{split}_{kind}"],
                        mode="lines",
                        name=f"{run.name} {split}",
                        legendgroup=run.name,
                        showlegend=col == 1,
                        line={"color": colour, "dash": dash, "width": 1.6},
                    ),
                    row=1,
                    col=col,
                )
            if run.grokked_at is not None:
                fig.add_vline(
                    x=run.grokked_at, line={"color": colour, "dash": "dot"}, row=1, col=col
                )
        if run.grokked_at is not None:
            fig.add_annotation(
                x=run.grokked_at,
                y=0.06 + 0.08 * r,
                xref="x2",
                yref="y2",
                text=f"grokked at {run.grokked_at}",
                showarrow=False,
                xanchor="left",
                xshift=4,
                font={"color": colour, "size": 11},
            )
        for name, symbol in (("restricted", "triangle-down"), ("excluded", "x")):
            if name in run.fourier and run.steps:
                fig.add_trace(
                    go.Scatter(
                        x=[run.steps[-1]],
                        y=[run.fourier[name]],
                        mode="markers",
                        marker={"symbol": symbol, "size": 11, "color": colour},
                        name=f"{run.name} {name} loss",
                        legendgroup=run.name,
                    ),
                    row=1,
                    col=1,
                )
    fig.update_yaxes(type="log", title_text="cross-entropy", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    fig.update_xaxes(title_text="step", type="log" if log_steps else "linear")
    fig.update_layout(
        height=480,
        plot_bgcolor="white",
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.18},
    )
    return fig
