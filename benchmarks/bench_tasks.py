"""Task coverage of the default recipe: does `fast` make each task family grok, in how many
steps and how much time? Writes benchmarks/results/tasks.json and prints the table.

    python benchmarks/bench_tasks.py                       # the default list, seed 0
    python benchmarks/bench_tasks.py --tasks s5_conj,grid_flip_4x4 --seeds 0,1

`fast` was tuned on add_mod_113 only; this shows where it carries over and where a task needs
its own recipe. A run stops at 99% validation accuracy or at the recipe's 5,000 steps; runs
go to 2 single-thread workers, so step times are per core.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from circuitlab.tasks import get_task
from circuitlab.training import RunSpec, get_recipe, read_metrics
from circuitlab.training.parallel import train_many

RESULTS = Path(__file__).parent / "results" / "tasks.json"
TASKS = (
    "add_mod_113",
    "sub_mod_113",
    "mul_mod_113",
    "div_mod_113",
    "x2y2_mod_113",
    "x3xy_mod_113",
    "s5_compose",
    "s5_conj",
    "grid_rot90_3x3",
    "grid_transpose_4x4",
    "grid_recolour_3x3",
    "synth_mod_31[a*b+c]",
)
console = Console(width=140)


def print_table(out: dict) -> None:
    table = Table(title=f"`{out['recipe']['name']}` on each task family (stop at 99% val)")
    for col in ("task", "seed", "train ex.", "99% at step", "best val", "s/step", "time"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in out["runs"]:
        table.add_row(
            escape(r["task"]),  # synthesis specs hold brackets
            str(r["seed"]),
            f"{r['train_examples']:,}",
            "not reached" if r["steps_to_99"] is None else f"{r['steps_to_99']:,}",
            f"{r['best_val_acc']:.3f}",
            f"{r['seconds_per_step']:.3f}",
            f"{r['seconds']:.0f}s",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--show", action="store_true", help="print the saved results only")
    args = parser.parse_args()
    if args.show:
        print_table(json.loads(RESULTS.read_text()))
        return
    tasks = args.tasks.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    recipe = get_recipe(args.recipe).replace(stop_val_acc=0.99, checkpoint_every=10**6)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        specs = [
            RunSpec(task, recipe, seed, Path(tmp) / task / f"seed{seed}")
            for task in tasks
            for seed in seeds
        ]
        start = time.perf_counter()
        results = train_many(specs, workers=2, strategy="loop")
        total = time.perf_counter() - start
        for spec, res in zip(specs, results, strict=True):
            metrics = read_metrics(res.run_dir)
            task = get_task(spec.task)
            rows.append(
                {
                    "task": spec.task,
                    "seed": spec.seed,
                    "train_examples": round(len(task.dataset()) * recipe.train_fraction),
                    "steps_to_99": res.grokked_at,
                    "steps": res.steps,
                    "val_acc": res.final["val_acc"],
                    "best_val_acc": max(r["val_acc"] for r in metrics),
                    "seconds": res.wall_time,
                    "seconds_per_step": res.wall_time / max(res.steps, 1),
                }
            )
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "recipe": recipe.to_dict(),
        "total_seconds": total,
        "runs": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print_table(out)
    console.print(f"total {total / 60:.1f} min on 2 workers; results in {RESULTS}")


if __name__ == "__main__":
    main()
