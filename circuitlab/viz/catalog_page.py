"""The catalog browser (a filterable table of circuits) and the lineage view of any record.

Filters go straight to `Catalog.search` (task, tags, domain, metric minimums, text), so the
table shows what `circuitlab catalog search` would, in its order (id, task, or a metric, best
first). Every cell of a row links to the circuit, its "lineage" cell to the lineage view: task
-> models -> derived models -> circuits -> functions -> programs around the record, from
`Catalog.lineage`. Rows are plain links, so a middle click opens a tab.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dash import Dash, Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from circuitlab.catalog import PRIORS, CatalogError, Summary
from circuitlab.viz.figures import lineage_figure
from circuitlab.viz.sources import ExplorerError

if TYPE_CHECKING:
    from circuitlab.viz.app import Explorer

COLUMNS = [
    ("short", "id"),
    ("task", "task"),
    ("label", "label"),
    ("features", "features"),
    ("edges", "edges"),
    ("sufficiency", "sufficiency"),
    ("necessity", "necessity drop"),
    ("tags", "tags"),
    ("interface", "interface"),
    ("lineage", "lineage"),
]
LIMIT = 500  # rows the table holds at most; the count above it says when there are more


def layout(explorer: Explorer) -> html.Div:
    """The browser page. An empty or unreadable catalog gives a message, not a table."""
    with explorer.sources.catalog() as cat:
        tasks = cat.ids("task")
        metrics = cat.metric_names()
        hits = cat.search(limit=LIMIT)
    if not hits:
        url = explorer.sources.catalog_url
        return html.Div(
            [
                html.H3("No circuits yet"),
                html.P(
                    f"The catalog at {url} holds no circuits. Extract one with "
                    f"`circuitlab extract RUN_DIR --catalog {url}`, then reload this page.",
                    id="empty-catalog",
                ),
            ]
        )
    tags = sorted(set(PRIORS) | {t for h in hits for t in h.tags})
    domains = sorted({d for h in hits for d in [*h.inputs, h.output] if d})
    number = {
        "type": "number",
        "min": 0,
        "max": 1,
        "step": 0.01,
        "debounce": True,
        "style": {"width": 200},
    }
    return html.Div(
        [
            html.Div(
                [
                    dcc.Dropdown(tasks, id="f-task", placeholder="task", style={"width": 200}),
                    dcc.Dropdown(
                        tags, id="f-tags", multi=True, placeholder="tags", style={"width": 240}
                    ),
                    dcc.Dropdown(
                        domains, id="f-domain", placeholder="domain", style={"width": 160}
                    ),
                    dcc.Input(id="f-suff", placeholder="min sufficiency", **number),
                    dcc.Input(id="f-nec", placeholder="min necessity drop", **number),
                    html.Span("order by", className="muted"),
                    dcc.Dropdown(
                        ["id", "task", *metrics],
                        "id",
                        id="f-order",
                        clearable=False,
                        style={"width": 170},
                    ),
                    dcc.Input(
                        id="f-text",
                        placeholder="search text",
                        type="text",
                        debounce=True,
                        style={"width": 220},
                    ),
                ],
                className="row",
            ),
            html.Div(f"{len(hits)} circuits", id="f-count", className="muted"),
            html.Table(
                [html.Thead(header()), html.Tbody(rows(hits), id="circuit-rows")],
                id="circuits",
                className="grid",
            ),
        ]
    )


def header() -> html.Tr:
    return html.Tr([html.Th(name) for _, name in COLUMNS])


def rows(hits: list[Summary]) -> list[html.Tr]:
    """One row per search summary: links to the circuit, the last cell to its lineage."""
    out = []
    for h in hits:
        iface = h.signature or (
            f"{', '.join(h.inputs)} -> {h.output}" if h.inputs or h.output else ""
        )
        cells = {
            "short": h.id[:12],
            "task": h.task,
            "label": h.label,
            "features": h.n_nodes,
            "edges": h.n_edges,
            "sufficiency": _round(h.metrics.get("sufficiency")),
            "necessity": _round(h.metrics.get("necessity")),
            "tags": ", ".join(h.tags),
            "interface": iface,
        }
        out.append(
            html.Tr(
                [html.Td(dcc.Link(str(v), href=f"/circuit/{h.id}")) for v in cells.values()]
                + [html.Td(dcc.Link("lineage", href=f"/lineage/{h.id}"))],
            )
        )
    return out


def _round(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def lineage_layout(explorer: Explorer, record_id: str) -> html.Div:
    with explorer.sources.catalog() as cat:
        try:
            lineage = cat.lineage(record_id)
            kind = cat.kind_of(lineage.root)
        except CatalogError as exc:
            raise ExplorerError(str(exc)) from None
        derived = {link.src for link in lineage.links if link.rel == "DERIVED_FROM"}
        nodes = {
            rid: ("derived model" if k == "model" and rid in derived else k, name)
            for rid, (k, name) in lineage.nodes.items()
            if k in ("task", "model", "circuit", "function", "program")
        }
        links = [(link.src, link.rel, link.dst) for link in lineage.links]
    items = [
        html.Li(
            [
                html.Span(f"{column}: ", className="muted"),
                dcc.Link(
                    name or rid[:16],
                    href=f"/circuit/{rid}" if column == "circuit" else f"/lineage/{rid}",
                ),
                html.Span(f"  {rid[:12]}", className="muted"),
            ]
        )
        for rid, (column, name) in sorted(nodes.items(), key=lambda kv: kv[1])
    ]
    return html.Div(
        [
            html.H3(f"Lineage of {kind} {lineage.root[:16]}"),
            dcc.Graph(
                id="lineage-graph",
                figure=lineage_figure(nodes, links, lineage.root),
                config={"displaylogo": False},
            ),
            html.Ul(items, id="lineage-list"),
        ]
    )


def register(app: Dash, explorer: Explorer) -> None:
    @app.callback(
        Output("circuit-rows", "children"),
        Output("f-count", "children"),
        Input("f-task", "value"),
        Input("f-tags", "value"),
        Input("f-domain", "value"),
        Input("f-suff", "value"),
        Input("f-nec", "value"),
        Input("f-text", "value"),
        Input("f-order", "value"),
        prevent_initial_call=True,
    )
    def search(task, tags, domain, suff, nec, text, order):
        minimum = {k: v for k, v in (("sufficiency", suff), ("necessity", nec)) if v is not None}
        with explorer.sources.catalog() as cat:
            try:
                hits = cat.search(
                    task=task or None,
                    tags=tags or (),
                    domain=domain or None,
                    minimum=minimum,
                    text=text.strip() if text and text.strip() else None,
                    order_by=order or "id",
                    limit=LIMIT,
                )
            except CatalogError as exc:
                raise ExplorerError(f"search: {exc}") from None
        more = " (the first shown)" if len(hits) == LIMIT else ""
        return rows(hits), f"{len(hits)} circuits{more}"

    @app.callback(
        Output("url", "pathname", allow_duplicate=True),
        Input("lineage-graph", "clickData"),
        State("url", "pathname"),
        prevent_initial_call=True,
    )
    def open_record(click, here):
        if not click or not click.get("points") or "customdata" not in click["points"][0]:
            raise PreventUpdate
        rid, column = click["points"][0]["customdata"]
        target = f"/circuit/{rid}" if column == "circuit" else f"/lineage/{rid}"
        return no_update if target == here else target
