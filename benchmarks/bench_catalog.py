"""Catalog benchmark (issue 4): put 1,000 circuits of 200 features and 1,000 edges each, then time
get, search, feature lookup, lineage and graph queries on SQLite and on the Neo4j backend over
Bolt, in one run. Writes benchmarks/results/catalog.json and prints the table against the targets:
SQLite >= 50,000 edges/s on put and get of one circuit < 5 ms at p50; Bolt >= 10,000 edges/s.

    python benchmarks/bench_catalog.py                      # SQLite + local ArcadeDB Bolt server
    python benchmarks/bench_catalog.py --circuits 100       # a quick look
    NEO4J_URI=bolt://host:7687 python benchmarks/bench_catalog.py --backends sqlite,neo4j

The Bolt server is ArcadeDB (the `arcadedb-embedded` wheel) started on loopback for the run: no
Neo4j server can be installed here. With `neo4j` in --backends the benchmark DELETES every catalog
node in the database at $NEO4J_URI first. Circuits are synthetic (circuitlab.catalog.synthetic):
features drawn from one model's pool of 2 layers x 512 latents x 3 positions, so circuits share
features as real ones from one transcoder do. Times are wall-clock; CPU time of this process is
reported beside them because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from circuitlab.catalog import Catalog, Function, Implements, Program, open_catalog, synthetic

RESULTS = Path(__file__).parent / "results" / "catalog.json"
console = Console()
TARGETS = {
    "sqlite": {"put_edges_per_s": 50_000, "get_p50_ms": 5.0},
    "bolt": {"put_edges_per_s": 10_000},
}


def _timed(fn: Callable[[], Any], reps: int = 1) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of each of `reps` calls."""
    wall, cpu = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return wall, cpu


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _latency(samples: list[tuple[list[float], list[float]]]) -> dict[str, float]:
    wall = [w for ws, _ in samples for w in ws]
    cpu = [c for _, cs in samples for c in cs]
    return {
        "p50_ms": statistics.median(wall),
        "p95_ms": _pct(wall, 0.95),
        "cpu_p50_ms": statistics.median(cpu),
        "n": len(wall),
    }


def make_data(n_circuits: int, n_features: int, n_edges: int) -> dict[str, Any]:
    task = synthetic.task()
    model = synthetic.model(seed=0)
    pool = synthetic.feature_pool(model.id)
    t = time.perf_counter()
    circuits = [
        synthetic.circuit(model, seed=i, n_features=n_features, n_edges=n_edges, pool=pool)
        for i in range(n_circuits)
    ]
    console.print(f"generated {n_circuits} circuits in {time.perf_counter() - t:.1f} s")
    functions = [Function(name=f"f{i}", expression=f"(a + {i} * b) % 113") for i in range(10)]
    implements = [
        Implements(circuit=c.id, function=functions[i % 10].id, agreement=0.9 + (i % 10) / 100)
        for i, c in enumerate(circuits[: max(1, n_circuits // 10)])
    ]
    programs = [Program(name="p0", calls=[functions[0].id, circuits[0].id])]
    return {
        "task": task,
        "model": model,
        "circuits": circuits,
        "functions": functions,
        "implements": implements,
        "programs": programs,
    }


def run_backend(cat: Catalog, data: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    circuits = data["circuits"]
    n_edges = sum(len(c.edges) for c in circuits)
    out: dict[str, Any] = {"url": cat.url, "load_average_at_start": os.getloadavg()}
    for record in (data["task"], data["model"], *data["functions"]):
        cat.put(record)

    half = len(circuits) // 2
    console.print(
        f"  put {len(circuits)} circuits ({n_edges:,} edges): half one per "
        "transaction, half with put_many ..."
    )
    ids: list[str] = []
    for key, part, write in (
        ("put", circuits[:half], lambda part: [cat.put(c) for c in part]),
        ("put_many", circuits[half:], lambda part: cat.put_many(part, max_edges=100_000)),
    ):
        edges = sum(len(c.edges) for c in part)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        ids += write(part)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        out[key] = {
            "circuits": len(part),
            "seconds": wall,
            "cpu_seconds": cpu,
            "edges_per_s": edges / wall,
            "ms_per_circuit": wall / len(part) * 1e3,
            "edges_cpu": edges / cpu,  # edges per second of this process's CPU time
        }
    for record in (*data["implements"], *data["programs"]):
        cat.put(record)
    again = rng.sample(circuits, min(20, len(circuits)))
    out["re_put_same_circuit"] = _latency([_timed(lambda c=c: cat.put(c)) for c in again])

    console.print("  get, search, feature lookup, lineage, graph ...")
    sample = rng.sample(ids, min(200, len(ids)))
    got = cat.get(sample[0])
    assert got == next(c for c in circuits if c.id == sample[0]), "round trip failed"
    out["get"] = _latency([_timed(lambda i=i: cat.get(i)) for i in sample])

    queries = {
        "task + min sufficiency, by sufficiency, top 20": dict(
            task="add_mod_113", minimum={"sufficiency": 0.9}, order_by="sufficiency", limit=20
        ),
        "two tags": dict(tags=["Logic", "fourier"], limit=50),
        "text 'fourier carry'": dict(text="fourier carry", limit=50),
        "domain + generality range": dict(
            domain="Z_113", minimum={"generality": 0.2}, maximum={"generality": 0.4}, limit=50
        ),
        "necessity >= 0.5, by generality": dict(
            minimum={"necessity": 0.5}, order_by="generality", limit=20
        ),
    }
    out["search"] = {}
    for name, q in queries.items():
        out["search"][name] = _latency([_timed(lambda q=q: cat.search(**q), reps=10)])
        out["search"][name]["hits"] = len(cat.search(**q))
    out["search_p50_ms"] = statistics.median(v["p50_ms"] for v in out["search"].values())

    features = [n.feature.id for c in rng.sample(circuits, 20) for n in c.nodes[3:8]]
    out["circuits_using_feature"] = _latency(
        [_timed(lambda f=f: cat.circuits_using(f)) for f in features]
    )
    out["circuits_per_feature"] = statistics.mean(len(cat.circuits_using(f)) for f in features[:10])
    mid = data["model"].id
    out["find_feature"] = _latency(
        [_timed(lambda i=i: cat.features(model=mid, layer=1, index=i)) for i in range(0, 500, 10)]
    )
    lin_ids = rng.sample(ids, min(50, len(ids)))
    out["lineage_circuit"] = _latency([_timed(lambda i=i: cat.lineage(i)) for i in lin_ids])
    out["lineage_task"] = _latency([_timed(lambda: cat.lineage("add_mod_113"))])
    out["graph_top20"] = _latency(
        [_timed(lambda i=i: cat.graph(i, top_k=20)) for i in sample[:100]]
    )
    out["stats"] = _latency([_timed(cat.stats)])
    out["counts"] = cat.stats().counts
    out["load_average_at_end"] = os.getloadavg()
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}{unit}"
    return f"{value:.3g}{unit}"


def print_table(results: dict[str, Any]) -> None:
    order = ["sqlite", "arcadedb (Bolt)", "neo4j (Bolt)"]
    names = sorted(results["backends"], key=lambda n: order.index(n) if n in order else 9)
    table = Table(
        title=f"catalog: {results['config']['circuits']:,} circuits x "
        f"{results['config']['features']} features x {results['config']['edges']} edges"
    )
    table.add_column("measure")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("target", justify="right")

    def row(
        label: str, get: Callable[[dict[str, Any]], float | None], unit: str, target: str = ""
    ) -> None:
        table.add_row(label, *[_fmt(get(results["backends"][n]), unit) for n in names], target)

    row(
        "put, 1 circuit/transaction: edges/s",
        lambda r: r["put"]["edges_per_s"],
        "",
        "SQLite >= 50,000",
    )
    row("put: ms per circuit", lambda r: r["put"]["ms_per_circuit"], " ms")
    row("put: edges/s of this process's CPU", lambda r: r["put"]["edges_cpu"], "")
    row(
        "put_many, 100k edges/transaction: edges/s",
        lambda r: r["put_many"]["edges_per_s"],
        "",
        "Bolt >= 10,000",
    )
    row("put_many: ms per circuit", lambda r: r["put_many"]["ms_per_circuit"], " ms")
    row("re-put same circuit p50", lambda r: r["re_put_same_circuit"]["p50_ms"], " ms")
    row("get circuit p50", lambda r: r["get"]["p50_ms"], " ms", "SQLite < 5 ms")
    row("get circuit p95", lambda r: r["get"]["p95_ms"], " ms")
    row("get circuit CPU p50", lambda r: r["get"]["cpu_p50_ms"], " ms")
    for q in next(iter(results["backends"].values()))["search"]:
        row(f"search: {q}", lambda r, q=q: r["search"][q]["p50_ms"], " ms")
    row("circuits using a feature p50", lambda r: r["circuits_using_feature"]["p50_ms"], " ms")
    row("features by (model, layer, index) p50", lambda r: r["find_feature"]["p50_ms"], " ms")
    row("lineage of a circuit p50", lambda r: r["lineage_circuit"]["p50_ms"], " ms")
    row("lineage of the task (all)", lambda r: r["lineage_task"]["p50_ms"], " ms")
    row("graph top-20 edges p50", lambda r: r["graph_top20"]["p50_ms"], " ms")
    row("stats", lambda r: r["stats"]["p50_ms"], " ms")
    row("machine load average (1 min) at start", lambda r: r["load_average_at_start"][0], "")
    console.print(table)
    for name in names:
        r = results["backends"][name]
        checks = []
        sqlite = name == "sqlite"
        target = TARGETS["sqlite" if sqlite else "bolt"]
        put = r["put"]["edges_per_s"] if sqlite else r["put_many"]["edges_per_s"]
        checks.append(("put" if sqlite else "batched put", put >= target["put_edges_per_s"]))
        if "get_p50_ms" in target:
            checks.append(("get p50", r["get"]["p50_ms"] < target["get_p50_ms"]))
        console.print(
            f"{name}: " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in checks)
        )


def _key(name: str) -> str:
    return {"arcadedb (Bolt)": "arcadedb", "neo4j (Bolt)": "neo4j"}.get(name, name)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--circuits", type=int, default=1000)
    parser.add_argument("--features", type=int, default=200)
    parser.add_argument("--edges", type=int, default=1000)
    parser.add_argument(
        "--backends",
        default="sqlite,arcadedb",
        help="comma-separated: sqlite, arcadedb (local Bolt server), neo4j ($NEO4J_URI)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    data = make_data(args.circuits, args.features, args.edges)
    results: dict[str, Any] = {
        "config": {"circuits": args.circuits, "features": args.features, "edges": args.edges},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": os.getloadavg(),
        },
        "targets": TARGETS,
        "backends": {},
    }
    if args.out.exists():  # keep other backends' rows from an earlier run of the same size
        old = json.loads(args.out.read_text())
        if old.get("config") == results["config"]:
            results["backends"] = {
                k: v for k, v in old.get("backends", {}).items() if _key(k) not in backends
            }
    with tempfile.TemporaryDirectory(prefix="bench_catalog_") as tmp:
        for name in backends:
            console.print(f"[bold]{name}[/]")
            if name == "sqlite":
                with open_catalog(Path(tmp) / "catalog.db") as cat:
                    res = run_backend(cat, data)
                res["file_mb"] = (
                    sum(p.stat().st_size for p in Path(tmp).glob("catalog.db*")) / 2**20
                )
                results["backends"]["sqlite"] = res
            elif name == "arcadedb":
                from circuitlab.catalog.arcadedb import LocalBoltServer

                t = time.perf_counter()
                with LocalBoltServer(Path(tmp) / "arcadedb", heap="4g") as server:
                    os.environ.update(server.env())
                    console.print(f"  ArcadeDB Bolt server up in {time.perf_counter() - t:.1f} s")
                    with open_catalog(server.url) as cat:
                        res = run_backend(cat, data)
                results["backends"]["arcadedb (Bolt)"] = res
            elif name == "neo4j":
                url = os.environ.get("NEO4J_URI")
                if not url:
                    raise SystemExit("--backends neo4j needs NEO4J_URI")
                with open_catalog(url) as cat:
                    cat.backend.wipe()
                    results["backends"]["neo4j (Bolt)"] = run_backend(cat, data)
            else:
                raise SystemExit(f"unknown backend {name!r}: use sqlite, arcadedb or neo4j")
            results["machine"]["load_average_at_end"] = os.getloadavg()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))
    print_table(results)
    console.print(f"results in {args.out}")


if __name__ == "__main__":
    main()
