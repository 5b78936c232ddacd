"""Few-shot solver benchmark (issue 11): the shipped example set examples/arc_tasks.json.
Writes benchmarks/results/solver.json and prints the tables.

    python benchmarks/bench_solver.py                   # ~10 s on 2 cores
    python benchmarks/bench_solver.py --catalog runs/compose/catalog.db   # circuits too

Measured (library: the registry primitives for the moduli and colours of the set, as
`circuitlab solve` uses; with --catalog also the catalog's circuits and functions):
1. Acceptance: depth 3 from 3 demonstrations, every task with a program in the library solved
   exactly (every test output), every task without one refused ("no program found").
2. Few-shot curve: accuracy from 1, 2, ..., k demonstrations (depth 3); wrong answers and
   refusals beside it.
3. Depth curve: solved fraction at depth 1, 2, 3 (3 demonstrations), the hypotheses tested and
   the size of the whole typed search space at that depth (icecuber: depth 2 is ~15x cheaper
   than depth 3 and solves ~80% as many).
4. Hypotheses tested per solved task and time per task (median of --repeats runs each).
5. Typed pruning: candidates of the whole depth-3 space, typed against untyped enumeration
   (every function on every tuple of values; run-time failures rejected). Target: >= 10x.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from circuitlab._atomic import write_json_atomic
from circuitlab.compose.arc import Task, default_library, load_tasks
from circuitlab.compose.solver import solve

REPO = Path(__file__).resolve().parent.parent
TASKS = REPO / "examples" / "arc_tasks.json"
RESULTS = Path(__file__).parent / "results" / "solver.json"
TARGETS = {"median_seconds_depth3": 2.0, "untyped_over_typed": 10.0}
console = Console()
if not console.is_terminal:
    console = Console(width=120)  # a log: rich would assume 80 columns and squeeze the tables


def _solve(task: Task, lib: list[Any], depth: int, shots: int, **options: Any) -> Any:
    """`solve` on the task's first `shots` demonstrations and its test inputs."""
    tests = [i for i, _ in task.test]
    return solve(task.train[:shots], tests, lib, max_depth=depth, domain=task.domain, **options)


def _run(task: Task, lib: list[Any], depth: int, shots: int, repeats: int = 1) -> dict[str, Any]:
    best = None
    for _ in range(repeats):
        sol = _solve(task, lib, depth, shots, name=task.name)
        best = sol if best is None or sol.seconds < best.seconds else best
    sol = best
    correct = sol.predictions is not None and all(
        np.array_equal(p, o) for p, (_, o) in zip(sol.predictions, task.test, strict=True)
    )
    return {
        "task": task.name,
        "steps": task.steps,
        "status": sol.status,
        "correct": bool(correct),
        "depth": sol.depth,
        "hypotheses": sol.hypotheses_tested,
        "seconds": sol.seconds,
        "circuit_calls": sol.circuit_calls,
        "expression": sol.message.split(":")[0] if sol.solved else None,
    }


def _score(rows: list[dict[str, Any]]) -> dict[str, Any]:
    solvable = [r for r in rows if r["steps"] is not None]
    unsolvable = [r for r in rows if r["steps"] is None]
    solved = [r for r in rows if r["status"] == "solved"]
    return {
        "accuracy": sum(r["correct"] for r in rows) / len(rows),
        "solvable_correct": sum(r["correct"] for r in solvable),
        "solvable": len(solvable),
        "unsolvable_refused": sum(r["status"] != "solved" for r in unsolvable),
        "unsolvable": len(unsolvable),
        "wrong": sum(r["status"] == "solved" and not r["correct"] for r in rows),
        "ambiguous": sum(r["status"] == "ambiguous" for r in rows),
        "hypotheses": sum(r["hypotheses"] for r in rows),
        "median_hypotheses_per_solved": statistics.median([r["hypotheses"] for r in solved])
        if solved
        else None,
        "mean_hypotheses_per_solved": statistics.mean([r["hypotheses"] for r in solved])
        if solved
        else None,
        "median_seconds": statistics.median(r["seconds"] for r in rows),
        "max_seconds": max(r["seconds"] for r in rows),
        "circuit_calls": sum(r["circuit_calls"] for r in rows),
    }


def _space(task: Task, lib: list[Any], depth: int, shots: int, typed: bool) -> tuple[int, float]:
    t = time.perf_counter()
    sol = _solve(task, lib, depth, shots, typed=typed, exhaustive=True)
    return sol.hypotheses_tested, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=str(TASKS))
    ap.add_argument("--catalog", default=None, help="add this catalog's circuits and functions")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    tasks = load_tasks(args.tasks)
    lib = default_library(tasks)
    if args.catalog:
        from circuitlab.cli.solve import _catalog_functions

        lib += _catalog_functions(args.catalog)
    k = min(len(t.train) for t in tasks)
    t0 = time.perf_counter()
    main_rows = [_run(t, lib, 3, 3, args.repeats) for t in tasks]
    res: dict[str, Any] = {
        "config": {
            "tasks": args.tasks if Path(args.tasks) != TASKS else "examples/arc_tasks.json",
            "n_tasks": len(tasks),
            "library": [f.name for f in lib],
            "library_size": len(lib),
            "repeats": args.repeats,
            "targets": TARGETS,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "depth3_shots3": {"tasks": main_rows, **_score(main_rows)},
        "few_shot": {},
        "depth": {},
        "typed_vs_untyped": {},
    }
    for shots in range(1, k + 1):
        rows = main_rows if shots == 3 else [_run(t, lib, 3, shots) for t in tasks]
        res["few_shot"][shots] = _score(rows)
    for depth in (1, 2, 3):
        rows = main_rows if depth == 3 else [_run(t, lib, depth, 3) for t in tasks]
        space = [_space(t, lib, depth, 3, True)[0] for t in tasks]
        res["depth"][depth] = {**_score(rows), "space": sum(space)}
    typed, untyped = [], []
    for t in tasks:
        (nt, st), (nu, su) = _space(t, lib, 3, 3, True), _space(t, lib, 3, 3, False)
        typed.append(nt)
        untyped.append(nu)
        res["typed_vs_untyped"][t.name] = {
            "typed": nt,
            "untyped": nu,
            "typed_s": st,
            "untyped_s": su,
        }
    ratios = [u / t for t, u in zip(typed, untyped, strict=True)]
    res["typed_vs_untyped_summary"] = {
        "typed": sum(typed),
        "untyped": sum(untyped),
        "ratio_of_totals": sum(untyped) / sum(typed),
        "median_ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
    }
    main = res["depth3_shots3"]
    d2, d3 = res["depth"][2], res["depth"][3]
    res["summary"] = {
        "accuracy_depth3_shots3": main["accuracy"],
        "recovers_every_solvable": main["solvable_correct"] == main["solvable"],
        "refuses_every_unsolvable": main["unsolvable_refused"] == main["unsolvable"],
        "median_seconds_depth3": main["median_seconds"],
        "untyped_over_typed": res["typed_vs_untyped_summary"]["ratio_of_totals"],
        "depth2_space_over_depth3": d2["space"] / d3["space"],
        "depth2_solved_over_depth3": d2["solvable_correct"] / max(d3["solvable_correct"], 1),
        "meets_targets": main["solvable_correct"] == main["solvable"]
        and main["unsolvable_refused"] == main["unsolvable"]
        and main["median_seconds"] <= TARGETS["median_seconds_depth3"]
        and res["typed_vs_untyped_summary"]["ratio_of_totals"] >= TARGETS["untyped_over_typed"],
        "wall_seconds": time.perf_counter() - t0,
    }
    print_tables(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, res)


def print_tables(res: dict[str, Any]) -> None:
    main = res["depth3_shots3"]
    n = res["config"]["n_tasks"]
    console.print(
        f"depth 3, 3 demonstrations: accuracy {main['accuracy']:.1%} ({n} tasks); solvable "
        f"solved exactly {main['solvable_correct']}/{main['solvable']}; unsolvable refused "
        f"{main['unsolvable_refused']}/{main['unsolvable']}; wrong answers {main['wrong']}"
    )
    t = Table(title="few-shot curve (depth 3; a task counts when every test output is exact)")
    for col in (
        "demos",
        "accuracy",
        "solvable exact",
        "unsolvable refused",
        "wrong",
        "ambiguous",
        "median hypotheses/solved",
        "median s",
    ):
        t.add_column(col)
    for shots, s in res["few_shot"].items():
        t.add_row(
            str(shots),
            f"{s['accuracy']:.1%}",
            f"{s['solvable_correct']}/{s['solvable']}",
            f"{s['unsolvable_refused']}/{s['unsolvable']}",
            str(s["wrong"]),
            str(s["ambiguous"]),
            f"{s['median_hypotheses_per_solved'] or 0:,.0f}",
            f"{s['median_seconds']:.4f}",
        )
    console.print(t)
    t = Table(title="depth curve (3 demonstrations)")
    for col in (
        "depth",
        "solvable exact",
        "hypotheses tested",
        "whole typed space",
        "median s",
        "max s",
    ):
        t.add_column(col)
    for depth, s in res["depth"].items():
        t.add_row(
            str(depth),
            f"{s['solvable_correct']}/{s['solvable']}",
            f"{s['hypotheses']:,}",
            f"{s['space']:,}",
            f"{s['median_seconds']:.4f}",
            f"{s['max_seconds']:.4f}",
        )
    console.print(t)
    sm, tv = res["summary"], res["typed_vs_untyped_summary"]
    console.print(
        f"depth 2 searches {sm['depth2_space_over_depth3']:.1%} of the depth-3 space and solves "
        f"{sm['depth2_solved_over_depth3']:.0%} as many tasks exactly (icecuber: ~1/15, ~80%)"
    )
    console.print(
        f"hypotheses per solved task: median {main['median_hypotheses_per_solved']:,.0f}, mean "
        f"{main['mean_hypotheses_per_solved']:,.0f}; time per task: median "
        f"{main['median_seconds'] * 1000:.1f} ms, max {main['max_seconds'] * 1000:.1f} ms "
        f"(target <= 2 s); circuit calls {main['circuit_calls']:,}"
    )
    console.print(
        f"typed pruning, whole depth-3 space: {tv['typed']:,} typed vs {tv['untyped']:,} untyped "
        f"candidates = {tv['ratio_of_totals']:.1f}x fewer (per task: median "
        f"{tv['median_ratio']:.1f}x, min {tv['min_ratio']:.1f}x; target >= 10x)"
    )
    console.print(f"meets targets: {sm['meets_targets']}")


if __name__ == "__main__":
    main()
