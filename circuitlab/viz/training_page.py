"""The training view: loss and accuracy of one or more runs, overlaid (a seed sweep), with each
run's grokking step marked. The chosen runs live in the URL (`?runs=PATH|PATH`)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode

from dash import Dash, Input, Output, dcc, html

from circuitlab.viz.figures import curves_figure, empty_figure
from circuitlab.viz.runs import read_curves, run_paths

if TYPE_CHECKING:
    from circuitlab.viz.app import Explorer


def chosen_runs(search: str) -> list[str]:
    query = parse_qs((search or "").lstrip("?"))
    return [p for p in query.get("runs", [""])[-1].split("|") if p]


def layout(explorer: Explorer, search: str) -> html.Div:
    found = run_paths(explorer.sources)
    chosen = chosen_runs(search)
    options = sorted(set(found) | set(chosen))
    if not options:
        where = explorer.sources.runs_dir or "--runs DIR"
        return html.Div(
            [
                html.H3("No training runs"),
                html.P(
                    f"No finished run directory under {where}, and the catalog's models name "
                    "none that still exists. Start the explorer with --runs DIR (e.g. runs/).",
                    id="no-runs",
                ),
            ]
        )
    return html.Div(
        [
            html.Div(
                [
                    dcc.Dropdown(
                        options,
                        chosen or options[:1],
                        id="runs",
                        multi=True,
                        style={"minWidth": 520},
                    ),
                    dcc.Checklist(
                        [{"label": " log step axis", "value": "log"}],
                        [],
                        id="log-steps",
                        inline=True,
                    ),
                ],
                className="row",
            ),
            dcc.Graph(id="curves", config={"displaylogo": False}),
        ]
    )


def register(app: Dash, explorer: Explorer) -> None:
    @app.callback(
        Output("curves", "figure"),
        Output("url", "search", allow_duplicate=True),
        Input("runs", "value"),
        Input("log-steps", "value"),
        prevent_initial_call="initial_duplicate",
    )
    def draw(paths: list[str] | None, log_steps: list[str] | None):
        if not paths:
            return empty_figure("choose one or more runs"), ""
        curves = [read_curves(p) for p in paths]
        search = "?" + urlencode({"runs": "|".join(paths)}, safe="/|")
        return curves_figure(curves, log_steps=bool(log_steps)), search
