"""The Dash app: a router over the pages, one error banner, and the server it runs on.

Pages (the URL is the state, so every view is a link):
    /                    catalog browser (catalog_page.py)
    /lineage/<id>        lineage around any record (catalog_page.py)
    /circuit/<id>?...    graph view and feature panel (circuit_page.py, panel.py)
    /training?runs=...   training curves (training_page.py)

Errors: a callback that raises shows a one-line message in the banner (`on_error`); the
browser never gets a traceback (Dash's debug mode, which would show one, is never turned on).
Expected problems (ExplorerError, catalog and circuit-loading errors) are shown as they are;
anything else as "internal error", with the traceback in the terminal's log.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from dash import Dash, Input, Output, State, dcc, html, set_props

from circuitlab.catalog import CatalogError
from circuitlab.viz.graphview import ViewGraph
from circuitlab.viz.live import LiveCircuits
from circuitlab.viz.sources import ExplorerError, Sources, circuit_view

log = logging.getLogger("circuitlab.viz")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #222; background: #fafafa; font-size: 14px; }
.bar { display: flex; gap: 18px; align-items: center; padding: 8px 18px; background: #24292f; }
.bar a { color: #eee; text-decoration: none; font-weight: 600; }
.page { padding: 12px 18px; }
.banner { background: #fdecea; color: #8a1c1c; border: 1px solid #f5c2c0; padding: 8px 12px;
          margin: 8px 18px; border-radius: 4px; }
.muted { color: #666; }
.note { background: #fff8e1; border: 1px solid #ffe08a; padding: 4px 8px; border-radius: 4px; }
.row { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; margin: 6px 0; }
.panel { background: white; border: 1px solid #ddd; border-radius: 4px; padding: 8px 12px; }
button { cursor: pointer; }
table.grid { border-collapse: collapse; background: white; font-size: 13px; margin-top: 6px; }
table.grid th, table.grid td { border: 1px solid #ddd; padding: 4px 8px; text-align: left;
                               max-width: 320px; vertical-align: top; }
table.grid td a { color: #0b5cad; text-decoration: none; display: block; }
table.grid tr:hover td { background: #f0f6ff; }
"""

INDEX = """<!DOCTYPE html>
<html>
<head>{%metas%}<title>{%title%}</title>{%favicon%}{%css%}<style>CSS</style></head>
<body>{%app_entry%}<footer>{%config%}{%scripts%}{%renderer%}</footer></body>
</html>""".replace("CSS", CSS)

BANNER_SHOWN = {"display": "block"}
BANNER_HIDDEN = {"display": "none"}


class Explorer:
    """What the callbacks share: the sources, the runnable circuits, and the graphs already
    built (a graph of one input costs an attribution pass; a slider move must not)."""

    def __init__(self, sources: Sources, keep_graphs: int = 32) -> None:
        self.sources = sources
        self.live = LiveCircuits(sources.runs_dir)
        self._graphs: OrderedDict[tuple, ViewGraph] = OrderedDict()
        self._keep = keep_graphs
        self._lock = threading.Lock()

    def graph(self, circuit_id: str, mode: str, values: tuple[int, ...] | None) -> ViewGraph:
        """The task-level graph of a circuit (mode "circuit") or the graph of one input."""
        key = (circuit_id, mode, values if mode == "input" else None)
        with self._lock:
            if key in self._graphs:
                self._graphs.move_to_end(key)
                return self._graphs[key]
        record = self.sources.circuit(circuit_id)
        if mode == "input":
            graph = self.live.input_graph(record, values or ())
        else:
            graph = circuit_view(record)
        with self._lock:
            self._graphs[key] = graph
            while len(self._graphs) > self._keep:
                self._graphs.popitem(last=False)
        return graph

    def forget(self, circuit_id: str) -> None:
        """Drop the graphs of a circuit whose labels changed."""
        with self._lock:
            for key in [k for k in self._graphs if k[0] == circuit_id]:
                del self._graphs[key]


def message_of(exc: BaseException) -> str:
    """The one line the banner shows for an exception."""
    from circuitlab.extraction import CircuitLoadError

    if isinstance(exc, ExplorerError | CatalogError | CircuitLoadError):
        return str(exc)
    log.error("internal error in a callback", exc_info=exc)
    return f"internal error ({type(exc).__name__}); the terminal running the explorer has details"


def _on_error(exc: Exception) -> None:
    set_props("error-banner", {"children": message_of(exc), "style": BANNER_SHOWN})


def create_app(sources: Sources) -> Dash:
    """The explorer over `sources`. Every asset (Dash's scripts, plotly.js) is served by the app
    itself: it works with no network."""
    from circuitlab.viz import catalog_page, circuit_page, training_page

    explorer = Explorer(sources)
    app = Dash(
        __name__,
        title="circuitlab explorer",
        serve_locally=True,
        suppress_callback_exceptions=True,  # pages create their components after start
        update_title=None,
        on_error=_on_error,
    )
    app.index_string = INDEX
    app.layout = html.Div(
        [
            dcc.Location(id="url", refresh="callback-nav"),
            html.Div(
                [
                    html.A("circuitlab explorer", href="/"),
                    dcc.Link("Catalog", href="/"),
                    dcc.Link("Training", href="/training"),
                    html.Span(sources.catalog_url, className="muted", style={"color": "#aaa"}),
                ],
                className="bar",
            ),
            html.Div(id="error-banner", className="banner", style=BANNER_HIDDEN),
            html.Div(id="page", className="page"),
        ]
    )
    routes: list[tuple[str, Callable[[str, str], Any]]] = [
        ("/lineage/", lambda rest, search: catalog_page.lineage_layout(explorer, rest)),
        ("/circuit/", lambda rest, search: circuit_page.layout(explorer, rest, search)),
        ("/training", lambda rest, search: training_page.layout(explorer, search)),
    ]

    @app.callback(
        Output("page", "children"),
        Output("error-banner", "children"),
        Output("error-banner", "style"),
        Input("url", "pathname"),
        State("url", "search"),
    )
    def route(pathname: str | None, search: str | None):
        path = pathname or "/"
        try:
            for prefix, build in routes:
                if path.startswith(prefix):
                    return build(path[len(prefix) :].strip("/"), search or ""), "", BANNER_HIDDEN
            if path == "/":
                return catalog_page.layout(explorer), "", BANNER_HIDDEN
            return html.P(f"no page at {path}"), "", BANNER_HIDDEN
        except Exception as exc:  # a page that cannot be built still leaves a working app
            return html.Div(), message_of(exc), BANNER_SHOWN

    catalog_page.register(app, explorer)
    circuit_page.register(app, explorer)
    training_page.register(app, explorer)
    return app


class PortInUseError(OSError):
    """The port is taken; the message names it and the option to change it."""


def make_server(app: Dash, host: str = "127.0.0.1", port: int = 8050) -> Any:
    """A threaded WSGI server bound to (host, port), not yet serving; port 0 picks a free one.
    The socket is bound here, before werkzeug sees it, so a port in use is a PortInUseError
    (werkzeug would print its own message and exit)."""
    from werkzeug.serving import make_server as werkzeug_server

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} on {host} is in use: stop what runs there or pick another with --port"
            ) from None
        raise PortInUseError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server = werkzeug_server(host, port, app.server, threaded=True, fd=sock.fileno())
    sock.close()  # the server holds its own duplicate of the descriptor
    return server
