"""Cell-map benchmark: does a trained grid model implement its op's cell map exactly?

For every op in GRID_OPS, trains `fast`-recipe models on grid_{op}_{N}x{N} (minibatches: a
full-batch grid step takes 1-3 s on CPU) into benchmarks/runs/cellmap/ (kept, so a second
run only measures), then runs `cellmap.analyze` on each. Also times `analyze` on
grid_rot90_5x5_c10 with a full-size untrained model (speed only). Writes
benchmarks/results/cellmap.json (one section per grid size) and prints a table.

    python benchmarks/bench_cellmap.py [--size 3] [--seeds 0,1,2] [--ops rot90,mirror]

Measured: 3x3, 3 seeds, all 8 ops, ~14 minutes on 2 loaded cores (each op ~1-2 min). 4x4 steps
take ~2 s (3 stacked models), and a seed that does not reach 100% validation accuracy runs to
--max-steps: use fewer seeds, fewer steps or --stop-val-acc 0.999 there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from circuitlab.extraction.cellmap import analyze
from circuitlab.models import ModelConfig, Transformer
from circuitlab.tasks import get_task
from circuitlab.tasks.grid import GRID_OPS
from circuitlab.training import RunSpec, get_recipe, load_run, train_stack

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cellmap.json"
RUNS = HERE / "runs" / "cellmap"
console = Console(width=120)


def train(task: str, seeds: list[int], recipe, runs: Path) -> list[Path]:
    """Run directories of `task` for each seed, training (stacked) those not finished yet."""
    # the training settings are in the name, so runs made with other settings are not reused
    name = f"fast-bs{recipe.batch_size}-max{recipe.max_steps}-stop{recipe.stop_val_acc:g}"
    dirs = [runs / task / f"{name}-seed{seed}" for seed in seeds]
    pending = [
        RunSpec(task, recipe, seed, run)
        for seed, run in zip(seeds, dirs, strict=True)
        if not (run / "summary.json").is_file()
    ]
    if pending:
        console.print(f"training {task} seeds {[s.seed for s in pending]} ...")
        train_stack(pending, overwrite=True, threads=1)
    return dirs


def measure(run: Path, n_probe: int) -> dict:
    info, model = load_run(run)
    summary = info.summary
    task = get_task(info.task)
    report = analyze(model, task, n_probe=n_probe, seed=0)
    return {
        "task": task.spec,
        "op": task.op,
        "seed": info.seed,
        "exact": report.exact,
        "is_permutation": report.is_permutation,
        "cells_matching": report.cells_matching,
        "sources_matching": report.sources_matching,
        "n_cells": report.n_cells,
        "accuracy": report.accuracy,
        "cell_accuracy": report.cell_accuracy,
        "min_source_share": min(report.source_shares()),
        "max_leak_share": max(report.leak_shares()),
        "colour_map_kind": report.colour_map_kind,
        "label": report.label(),
        "analyze_seconds": round(report.seconds, 3),
        "train_steps": summary["steps"],
        "train_seconds": summary["wall_time_s"],
        "val_acc": summary["final"]["val_acc"],
    }


def speed_point(n_probe: int) -> dict:
    """analyze on grid_rot90_5x5_c10 with an untrained model of the fast recipe's size."""
    task = get_task("grid_rot90_5x5_c10")
    torch.manual_seed(0)
    model = Transformer(ModelConfig.for_task(task, **get_recipe("fast").model)).eval()
    report = analyze(model, task, n_probe=n_probe)
    return {
        "task": task.spec,
        "n_probe": n_probe,
        "sequences": report.n_evaluated,
        "seconds": round(report.seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=3, help="grid side (3 or 4)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ops", default=",".join(GRID_OPS))
    parser.add_argument("--max-steps", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--stop-val-acc", type=float, default=1.0, help="stop a model at this validation accuracy"
    )
    parser.add_argument("--n-probe", type=int, default=256)
    parser.add_argument("--runs", type=Path, default=RUNS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    ops = args.ops.split(",")
    recipe = get_recipe("fast").replace(
        max_steps=args.max_steps, batch_size=args.batch_size, stop_val_acc=args.stop_val_acc
    )
    start, load0 = time.perf_counter(), os.getloadavg()

    rows = []
    for op in ops:
        task = f"grid_{op}_{args.size}x{args.size}"
        for run in train(task, seeds, recipe, args.runs):
            rows.append(measure(run, args.n_probe))
            console.print(f"  {rows[-1]['label']} (seed {rows[-1]['seed']})")
    speed = speed_point(args.n_probe)

    section = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch_threads": args.threads,
            "load_average_at_start": load0,
            "load_average_at_end": os.getloadavg(),
        },
        "config": {
            "size": args.size,
            "seeds": seeds,
            "recipe": "fast",
            "max_steps": args.max_steps,
            "batch_size": args.batch_size,
            "stop_val_acc": args.stop_val_acc,
            "n_probe": args.n_probe,
        },
        "summary": {
            "runs": len(rows),
            "exact": sum(r["exact"] for r in rows),
            "ops_exact_every_seed": [
                op for op in ops if all(r["exact"] for r in rows if r["op"] == op)
            ],
        },
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    # one section per grid size, so a run at another size keeps the others' numbers
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results = {k: v for k, v in results.items() if k.endswith(("x3", "x4", "x5"))}
    results[f"{args.size}x{args.size}"] = section
    results["speed_5x5_c10"] = speed
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")

    table = Table(title=f"cell maps, {args.size}x{args.size} grids, fast recipe")
    for name in ("task", "seed", "exact", "cells", "accuracy", "cell acc", "steps", "train s"):
        table.add_column(name, justify="left" if name == "task" else "right")
    table.add_column("analyze s", justify="right")
    for r in rows:
        table.add_row(
            r["task"],
            str(r["seed"]),
            "yes" if r["exact"] else "NO",
            f"{r['cells_matching']}/{r['n_cells']}",
            f"{r['accuracy']:.2%}",
            f"{r['cell_accuracy']:.2%}",
            str(r["train_steps"]),
            f"{r['train_seconds']:.0f}",
            f"{r['analyze_seconds']:.2f}",
        )
    console.print(table)
    console.print(
        f"{section['summary']['exact']}/{len(rows)} runs exact; analyze on "
        f"{speed['task']} ({speed['sequences']:,} sequences, full-size model): "
        f"{speed['seconds']:.2f} s. Wrote {RESULTS}"
    )


if __name__ == "__main__":
    main()
