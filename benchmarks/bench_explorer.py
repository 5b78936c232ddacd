"""Explorer benchmark (issue 14, "Scale"): server time of the graph view's prune-and-draw at
300, 1,000 and 3,000 elements and on a graph far over the cap, against the target of 1 s.

    python benchmarks/bench_explorer.py              # server times, and browser times if chromium
    python benchmarks/bench_explorer.py --no-browser

Graphs are synthetic catalog circuits (circuitlab.catalog.synthetic; nodes + edges = elements,
every node on some edge), put into a temporary SQLite catalog. Two measurements:

1. server: what the render callback does on a slider move, called directly: group and prune
   (graphview.prune_view), build the figure (figures.graph_figure) and serialise it as Dash does
   (plotly's JSON encoder). The first call, which also reads the circuit from the catalog and
   builds its view graph, is reported apart ("first load").
2. browser (Playwright + Debian's chromium, when present): the page served by the real app in a
   thread; "server" is a callback request's time to first byte as the browser measured it, at
   page load (where the circuit is also read from the catalog) and per slider move; "load to
   drawn" is the time from navigation until the counts and the graph are on screen, "slider"
   the time from a keyboard step of the edge slider until the page is redrawn.

Writes benchmarks/results/explorer.json and prints a table. Times are wall-clock medians on a
shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import plotly.io
from rich.console import Console
from rich.table import Table

from circuitlab.catalog import open_catalog, synthetic
from circuitlab.viz import Sources, create_app, make_server
from circuitlab.viz.app import Explorer
from circuitlab.viz.circuit_page import shown_graph
from circuitlab.viz.figures import graph_figure
from circuitlab.viz.graphview import CAP, prune_view
from circuitlab.viz.state import ViewState

RESULTS = Path(__file__).parent / "results" / "explorer.json"
TARGET_S = 1.0
SIZES = {  # name -> (nodes, edges)
    "300": (60, 240),
    "1,000": (200, 800),
    "3,000": (500, 2500),
    "22,000 (capped)": (2000, 20000),
}
CHROMIUM = os.environ.get("CIRCUITLAB_CHROMIUM", "/usr/bin/chromium")
console = Console(width=150)


def catalog(root: Path) -> tuple[str, dict[str, str]]:
    url = f"sqlite:///{root / 'catalog.db'}"
    model = synthetic.model(seed=11)
    pool = synthetic.feature_pool(model.id, n_layers=2, d_latent=1024)
    circuits = {
        name: synthetic.circuit(model, seed=i, n_features=n, n_edges=m, pool=pool)
        for i, (name, (n, m)) in enumerate(SIZES.items())
    }
    with open_catalog(url) as cat:
        cat.put_many([synthetic.task(), model, *circuits.values()])
    return url, {name: c.id for name, c in circuits.items()}


def server_times(explorer: Explorer, cid: str, reps: int) -> dict[str, Any]:
    """Milliseconds of the render callback's work: first load, then slider moves."""

    def render(state: ViewState) -> tuple[int, int, int]:
        _, shown = shown_graph(explorer, cid, state)
        pruned = prune_view(shown, state.node_fraction, state.min_weight, state.pinned)
        fig = graph_figure(shown, pruned, state.pinned, state.clicked, key=cid)
        body = plotly.io.to_json(fig.to_plotly_json(), validate=False)
        return len(pruned.nodes), len(pruned.edges), len(body)

    start = time.perf_counter()
    nodes, edges, size = render(ViewState(node_fraction=1.0))
    first = time.perf_counter() - start
    times = []
    for k in range(reps):
        state = ViewState(node_fraction=1.0, min_weight=0.001 * k, pinned=["T0@0"])
        start = time.perf_counter()
        render(state)
        times.append(time.perf_counter() - start)
    return {
        "nodes_drawn": nodes,
        "edges_drawn": edges,
        "figure_kb": round(size / 1024, 1),
        "first_load_ms": round(1000 * first, 1),
        "render_ms_median": round(1000 * statistics.median(times), 1),
        "render_ms_max": round(1000 * max(times), 1),
    }


def browser_times(base: str, ids: dict[str, str]) -> dict[str, dict[str, float]]:
    from playwright.sync_api import sync_playwright

    idle = "() => !document.querySelector('[data-dash-is-loading]')"
    out: dict[str, dict[str, float]] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 950})
        renders: list[float] = []

        def timed(response: Any) -> None:
            if "_dash-update-component" in response.url:
                t = response.request.timing
                renders.append(t["responseStart"] - t["requestStart"])

        page.on("response", timed)
        for name, cid in ids.items():
            page.goto(base + "/")
            page.wait_for_function(idle)
            renders.clear()
            start = time.perf_counter()
            page.goto(f"{base}/circuit/{cid}?node=1")
            page.wait_for_function("() => document.querySelector('#n-nodes')?.innerText")
            page.wait_for_selector("#graph .scatterlayer .point", state="attached")
            page.wait_for_function(idle)
            load = time.perf_counter() - start
            at_load = list(renders)
            renders.clear()
            shown = page.inner_text("#counts")
            thumb = page.locator("#edge-slider [role=slider]")
            thumb.focus()
            steps = []
            for _ in range(3):
                before = page.evaluate("location.search")
                start = time.perf_counter()
                thumb.press("PageUp")  # one value change of 10 slider steps
                page.wait_for_function(f"() => location.search != {json.dumps(before)}")
                page.wait_for_function(idle)
                steps.append(time.perf_counter() - start)
            out[name] = {
                "load_to_drawn_ms": round(1000 * load, 1),
                "slider_ms_median": round(1000 * statistics.median(steps), 1),
                "server_load_ms_max": round(max(at_load), 1) if at_load else None,
                "server_slider_ms_max": round(max(renders), 1) if renders else None,
                "shown": shown,
            }
        browser.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=10, help="slider moves timed per size")
    parser.add_argument("--no-browser", action="store_true", help="server times only")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url, ids = catalog(Path(tmp))
        sources = Sources(url)
        explorer = Explorer(sources)
        server = {name: server_times(explorer, cid, args.reps) for name, cid in ids.items()}
        browser: dict[str, dict[str, float]] = {}
        if not args.no_browser and Path(CHROMIUM).is_file():
            srv = make_server(create_app(sources), "127.0.0.1", 0)
            thread = threading.Thread(target=srv.serve_forever, daemon=True)
            thread.start()
            try:
                browser = browser_times(f"http://127.0.0.1:{srv.port}", ids)
            finally:
                srv.shutdown()
    table = Table(title=f"explorer graph view: server time per slider move (target < {TARGET_S} s)")
    for column in (
        "elements",
        "drawn",
        "figure KB",
        "first load ms",
        "render ms med / max",
        "browser: load ms",
        "slider ms",
        "server ms: load / slider",
    ):
        table.add_column(column, justify="right")
    for name, s in server.items():
        b = browser.get(name, {})
        table.add_row(
            name,
            f"{s['nodes_drawn']} + {s['edges_drawn']}",
            f"{s['figure_kb']}",
            f"{s['first_load_ms']}",
            f"{s['render_ms_median']} / {s['render_ms_max']}",
            str(b.get("load_to_drawn_ms", "-")),
            str(b.get("slider_ms_median", "-")),
            f"{b.get('server_load_ms_max', '-')} / {b.get('server_slider_ms_max', '-')}",
        )
    console.print(table)
    worst = (
        max(
            [s["render_ms_max"] for s in server.values()]
            + [b["server_slider_ms_max"] for b in browser.values() if b["server_slider_ms_max"]]
        )
        / 1000
    )
    result = {
        "target_s": TARGET_S,
        "cap_elements": CAP,
        "sizes": {name: {"nodes": n, "edges": m} for name, (n, m) in SIZES.items()},
        "server": server,
        "browser": browser,
        "worst_render_s": worst,
        "meets_target": worst < TARGET_S,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
