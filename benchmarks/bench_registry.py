"""Registry benchmark (issue 6): discovery on the acceptance cases, search throughput, registry
reuse and the guide's ablation. Writes benchmarks/results/registry.json and prints the tables.

    python benchmarks/bench_registry.py              # everything (~1-2 minutes on 2 cores)
    python benchmarks/bench_registry.py --quick      # fewer held-out targets, one repeat
    python benchmarks/bench_registry.py --only memory   # one part (repeatable); the others'
                                                        # results in the JSON are kept

Measured:
1. Each acceptance case (NSSR's experiments and the cases NSSR fails): exact or not, wall time
   (best of --repeats), CPU time, candidates and pair fits evaluated. Target: exact in <= 5 s.
2. Throughput: candidates evaluated per second when the search cannot stop early (a random
   target over 5 columns, 40 rows + 64 probes per candidate, vectorised over rows), and pair fits
   per second.
3. Reuse: TOTAL_E with junk columns, with and without KE and PE registered (each discovered
   first from its own examples): candidates evaluated until the solution. Target: with <= 1/10 of
   without.
4. Ablation of the learned guide against uniform ordering: candidates evaluated until the
   solution on the acceptance cases and on held-out random targets (seeds the guide never saw).
5. Memory: peak resident memory (RSS) and wall time of a discovery on 10,000 rows x 30
   columns (real, then integer columns; y = x3*x17 + x25), each in its own process (the
   parent reads the child's ru_maxrss from os.wait4). Target: peak < 4 GiB (the issue's
   report: 4.8 GB before the search ran on a sample of the rows).
Times are wall-clock on a shared machine; CPU time of this process is reported beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from circuitlab.registry import Registry
from circuitlab.registry.cases import cases
from circuitlab.registry.discover import DiscoveryConfig, discover, search
from circuitlab.registry.guide import load_guide, random_task
from circuitlab.registry.proposer import UniformProposer

RESULTS = Path(__file__).parent / "results" / "registry.json"
console = Console()
TARGETS = {"case_seconds": 5.0, "reuse_ratio": 10.0, "memory_peak_bytes": 4 * 1024**3}
SECTIONS = ("cases", "throughput", "reuse", "ablation", "memory")
MEMORY_ROWS, MEMORY_COLUMNS = 10_000, 30


def _run(case: Any, repeats: int, **kw: Any) -> dict[str, Any]:
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        result = search((case.X, case.y), names=case.names, name=case.name, **kw)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    assert result is not None
    fn = result.function
    resolve = kw["registry"].resolve if kw.get("registry") is not None else None
    exact = bool(
        fn is not None
        and result.status == "exact"
        and case.check(lambda *cols: fn.evaluate(*cols, resolve=resolve))
        and tuple(i.name for i in fn.inputs) == case.relevant
    )
    return {
        "exact": exact,
        "seconds": min(walls),
        "cpu_seconds": min(cpus),
        "candidates": result.stats.candidates,
        "pairs": result.stats.pairs,
        "evaluated": result.stats.evaluated,
        "function": fn.render() if fn else None,
    }


def bench_cases(repeats: int) -> dict[str, Any]:
    return {name: _run(case, repeats) for name, case in cases(seed=0).items()}


def bench_throughput(seconds: float) -> dict[str, Any]:
    """A target no expression fits, so the search runs until its budget is spent: once without
    pair fits (enumeration alone: candidates/s) and once with them (pair fits/s)."""
    rng = np.random.default_rng(0)
    X, y = rng.uniform(-100, 100, (40, 5)), rng.uniform(-1, 1, 40)
    rows = 40 + 64
    enum = search(
        (X, y), config=DiscoveryConfig(max_seconds=seconds, max_cost=12, probes=64, pairs=False)
    ).stats
    full = search((X, y), config=DiscoveryConfig(max_seconds=seconds, max_cost=12, probes=64)).stats
    return {
        "seconds": enum.seconds,
        "candidates": enum.candidates,
        "bank": enum.bank,
        "level": enum.level,
        "rows_per_candidate": rows,
        "candidates_per_s": enum.candidates / enum.seconds,
        "candidate_rows_per_s": enum.candidates * rows / enum.seconds,
        "with_pairs": {
            "seconds": full.seconds,
            "candidates": full.candidates,
            "pairs": full.pairs,
            "level": full.level,
        },
        "pairs_per_s": full.pairs / full.seconds,
        "stopped": enum.stopped,
    }


def bench_reuse() -> dict[str, Any]:
    data = cases(seed=0)
    reg = Registry()
    for name in ("KE", "PE"):
        c = data[name]
        discover((c.X, c.y), names=c.names, name=name, registry=reg, register=True)
    case = data["TOTAL_E_JUNK"]
    without = _run(case, 1)
    with_reg = _run(case, 1, registry=reg)
    return {
        "without": without,
        "with": with_reg,
        "ratio": without["evaluated"] / max(with_reg["evaluated"], 1),
    }


def bench_ablation(n_heldout: int, budget: float) -> dict[str, Any]:
    guide = load_guide()
    out: dict[str, Any] = {"cases": {}, "heldout": []}
    for name, case in cases(seed=0).items():
        out["cases"][name] = {p.name: _run(case, 1, proposer=p) for p in (UniformProposer(), guide)}
    rng = np.random.default_rng(10_000)  # the guide was trained on seed 0
    cfg = DiscoveryConfig(max_seconds=budget, max_cost=7)
    while len(out["heldout"]) < n_heldout:
        task = random_task(rng)
        if task is None:
            continue
        X, y, _, fams, expr = task
        entry: dict[str, Any] = {"families": sorted(fams)}
        for p in (UniformProposer(), guide):
            r = search((X, y), config=cfg, proposer=p)
            entry[p.name] = {
                "solved": r.function is not None,
                "evaluated": r.stats.evaluated,
                "seconds": r.stats.seconds,
            }
        out["heldout"].append(entry)
    return out


def memory_child(kind: str) -> None:
    """In the child process: one discovery on MEMORY_ROWS x MEMORY_COLUMNS; prints JSON."""
    rng = np.random.default_rng(0)
    shape = (MEMORY_ROWS, MEMORY_COLUMNS)
    X = rng.integers(-50, 50, shape).astype(float) if kind == "int" else rng.uniform(-3, 3, shape)
    y = X[:, 3] * X[:, 17] + X[:, 25]
    w, c = time.perf_counter(), time.process_time()
    result = search((X, y))
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    hwm = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    fn = result.function
    print(
        json.dumps(
            {
                "status": result.status,
                "function": fn.render() if fn else None,
                "seconds": wall,
                "cpu_seconds": cpu,
                "candidates": result.stats.candidates,
                "pairs": result.stats.pairs,
                "restarts": result.stats.restarts,
                "searched_train": fn.provenance.search["rows"]["searched_train"] if fn else None,
                "child_hwm_bytes": hwm,
            }
        )
    )


def bench_memory() -> dict[str, Any]:
    """Each kind of columns in its own process, so the peak is the discovery's own."""
    out: dict[str, Any] = {
        "rows": MEMORY_ROWS,
        "columns": MEMORY_COLUMNS,
        "formula": "x3*x17 + x25",
        "target_peak_bytes": TARGETS["memory_peak_bytes"],
        "cases": {},
    }
    for kind in ("real", "int"):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--memory-child", kind],
                stdout=stdout,
                stderr=stderr,
                env=env,
            )
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the largest
            proc.returncode = os.waitstatus_to_exitcode(status)
            stdout.seek(0)
            stderr.seek(0)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child ({kind}) failed: {stderr.read()[-2000:]!r}")
            r = json.loads(stdout.read().decode().strip().splitlines()[-1])
        r["process_seconds"] = time.perf_counter() - t0  # with the imports
        r["peak_bytes"] = usage.ru_maxrss * 1024  # KiB on Linux
        r["meets_target"] = (
            r["status"] == "exact"
            and r["function"] == "ADD(x25, MUL(x3, x17))"
            and r["peak_bytes"] < TARGETS["memory_peak_bytes"]
        )
        out["cases"][kind] = r
    return out


def _summarise_ablation(ab: dict[str, Any]) -> dict[str, Any]:
    def stats(pairs: list[tuple[dict, dict]]) -> dict[str, Any]:
        both = [(u, g) for u, g in pairs if u["solved"] and g["solved"]]
        ratios = [u["evaluated"] / max(g["evaluated"], 1) for u, g in both]
        return {
            "n": len(pairs),
            "solved_uniform": sum(u["solved"] for u, _ in pairs),
            "solved_guide": sum(g["solved"] for _, g in pairs),
            "evaluated_uniform": sum(u["evaluated"] for u, _ in both),
            "evaluated_guide": sum(g["evaluated"] for _, g in both),
            "median_ratio_uniform_over_guide": statistics.median(ratios) if ratios else None,
            "guide_better": sum(r > 1 for r in ratios),
            "guide_worse": sum(r < 1 for r in ratios),
        }

    case_pairs = [
        (
            {"solved": v["uniform"]["exact"], **v["uniform"]},
            {"solved": v["guide"]["exact"], **v["guide"]},
        )
        for v in ab["cases"].values()
    ]
    held = [(e["uniform"], e["guide"]) for e in ab["heldout"]]
    return {"cases": stats(case_pairs), "heldout": stats(held)}


def print_tables(res: dict[str, Any], sections: tuple[str, ...] = SECTIONS) -> None:
    if "cases" in sections:
        _print_cases(res)
    if "throughput" in sections:
        _print_throughput(res)
    if "reuse" in sections:
        _print_reuse(res)
    if "ablation" in sections:
        _print_ablation(res)
    if "memory" in sections:
        _print_memory(res)


def _print_memory(res: dict[str, Any]) -> None:
    mem = res["memory"]
    target = mem["target_peak_bytes"] / 1024**3
    t = Table(
        title=f"memory: discovery on {mem['rows']:,} rows x {mem['columns']} columns, "
        f"y = {mem['formula']} (target: peak RSS < {target:.0f} GiB)"
    )
    for col in ("columns", "status", "peak RSS", "wall s", "cpu s", "rows searched", "function"):
        t.add_column(col)
    for kind, r in mem["cases"].items():
        t.add_row(
            kind,
            r["status"] + ("" if r["meets_target"] else " (target missed)"),
            f"{r['peak_bytes'] / 1024**2:,.0f} MiB",
            f"{r['seconds']:.2f}",
            f"{r['cpu_seconds']:.2f}",
            str(r["searched_train"]),
            r["function"] or "-",
        )
    console.print(t)


def _print_cases(res: dict[str, Any]) -> None:
    t = Table(title="discovery on the acceptance cases (target: exact in <= 5 s)")
    for col in ("case", "exact", "wall s", "cpu s", "candidates", "pair fits", "function"):
        t.add_column(col)
    for name, r in res["cases"].items():
        t.add_row(
            name,
            "yes" if r["exact"] else "NO",
            f"{r['seconds']:.3f}",
            f"{r['cpu_seconds']:.3f}",
            f"{r['candidates']:,}",
            f"{r['pairs']:,}",
            r["function"] or "-",
        )
    console.print(t)


def _print_throughput(res: dict[str, Any]) -> None:
    th = res["throughput"]
    console.print(
        f"throughput: {th['candidates_per_s']:,.0f} candidates/s "
        f"({th['candidate_rows_per_s']:,.0f} candidate-rows/s, "
        f"{th['rows_per_candidate']} rows each), {th['pairs_per_s']:,.0f} pair fits/s; "
        f"{th['bank']:,} distinct kept, cost level {th['level']} in "
        f"{th['seconds']:.1f} s"
    )


def _print_reuse(res: dict[str, Any]) -> None:
    ru = res["reuse"]
    t = Table(title="registry reuse: TOTAL_E with junk columns (target: ratio >= 10)")
    for col in ("registry", "candidates", "pair fits", "evaluated", "wall s", "function"):
        t.add_column(col)
    for label, key in (("primitives only", "without"), ("+ KE, PE", "with")):
        r = ru[key]
        t.add_row(
            label,
            f"{r['candidates']:,}",
            f"{r['pairs']:,}",
            f"{r['evaluated']:,}",
            f"{r['seconds']:.3f}",
            r["function"] or "-",
        )
    console.print(t)
    console.print(f"reuse ratio (evaluated without / with): {ru['ratio']:.1f}x")


def _print_ablation(res: dict[str, Any]) -> None:
    ab = res["ablation"]
    t = Table(title="ablation: candidates evaluated until the solution, uniform vs learned guide")
    for col in ("case", "uniform", "guide", "uniform/guide"):
        t.add_column(col)
    for name, v in ab["cases"].items():
        u, g = v["uniform"], v["guide"]
        mark = "" if u["exact"] and g["exact"] else " (not exact)"
        t.add_row(
            name,
            f"{u['evaluated']:,}",
            f"{g['evaluated']:,}",
            f"{u['evaluated'] / max(g['evaluated'], 1):.2f}{mark}",
        )
    console.print(t)
    for key, label in (("cases", "acceptance cases"), ("heldout", "held-out random targets")):
        s = res["ablation_summary"][key]
        med = s["median_ratio_uniform_over_guide"]
        line = (
            f"{label}: solved uniform {s['solved_uniform']}/{s['n']}, guide "
            f"{s['solved_guide']}/{s['n']}"
        )
        if med is not None:
            line += (
                f"; where both solved: evaluated {s['evaluated_uniform']:,} vs "
                f"{s['evaluated_guide']:,}, median uniform/guide {med:.2f}x, guide better "
                f"on {s['guide_better']}, worse on {s['guide_worse']}"
            )
        console.print(line)


def _summary(res: dict[str, Any], wall: float) -> dict[str, Any]:
    """Every target met, over the parts present (with --only, those of earlier runs too)."""
    out: dict[str, Any] = {}
    meets = []
    if "cases" in res:
        out["all_exact"] = all(r["exact"] for r in res["cases"].values())
        out["max_case_seconds"] = max(r["seconds"] for r in res["cases"].values())
        meets.append(
            all(
                r["exact"] and r["seconds"] <= TARGETS["case_seconds"]
                for r in res["cases"].values()
            )
        )
    if "reuse" in res:
        out["reuse_ratio"] = res["reuse"]["ratio"]
        meets.append(res["reuse"]["ratio"] >= TARGETS["reuse_ratio"])
    if "memory" in res:
        cases = res["memory"]["cases"].values()
        out["memory_peak_bytes"] = max(r["peak_bytes"] for r in cases)
        out["memory_seconds"] = max(r["seconds"] for r in cases)
        meets.append(all(r["meets_target"] for r in cases))
    out["meets_targets"] = all(meets)
    out["wall_seconds"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--heldout", type=int, default=40)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this part (repeatable); the JSON keeps the other parts' earlier results",
    )
    ap.add_argument("--memory-child", choices=("real", "int"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    repeats, heldout = (1, 10) if args.quick else (args.repeats, args.heldout)
    sections = tuple(s for s in SECTIONS if s in (args.only or SECTIONS))
    out = Path(args.out)
    t0 = time.perf_counter()
    res: dict[str, Any] = json.loads(out.read_text()) if args.only and out.exists() else {}
    res["config"] = {
        **res.get("config", {}),
        "repeats": repeats,
        "heldout": heldout,
        "targets": TARGETS,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if "cases" in sections:
        res["cases"] = bench_cases(repeats)
    if "throughput" in sections:
        res["throughput"] = bench_throughput(10.0)
    if "reuse" in sections:
        res["reuse"] = bench_reuse()
    if "ablation" in sections:
        res["ablation"] = bench_ablation(heldout, budget=5.0)
        res["ablation_summary"] = _summarise_ablation(res["ablation"])
    if "memory" in sections:
        res["memory"] = bench_memory()
    earlier = res.get("summary", {})
    res["summary"] = _summary(res, time.perf_counter() - t0)
    if args.only:  # wall_seconds stays that of the last full run; this one's is beside it
        res["summary"]["wall_seconds"] = earlier.get("wall_seconds")
        res["summary"]["last_run"] = {
            "only": list(sections),
            "wall_seconds": time.perf_counter() - t0,
        }
    print_tables(res, sections)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out)
    console.print(f"summary: {res['summary']}; written to {out}")


if __name__ == "__main__":
    main()
