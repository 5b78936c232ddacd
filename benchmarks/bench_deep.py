"""The 2-layer recipe `deep` (issue 17): does it make 2-layer add_mod_59 and add_mod_113 grok
on seeds 0-2? Writes benchmarks/results/deep.json and prints the table.

    python benchmarks/bench_deep.py                       # train the 6 runs (2 workers)
    python benchmarks/bench_deep.py --from-runs /tmp/deep # read finished `--recipe deep` runs
    python benchmarks/bench_deep.py --show                # print the saved results only

Runs use the registered recipe unchanged (it trains on to 100% validation accuracy), so
`grokked_at` (99% validation, from summary.json) and wall time are what `circuitlab train
--task TASK --recipe deep --seeds 0-2` gives. `--from-runs DIR` reads DIR/TASK/deep-seedN
instead of training, e.g. runs made with that command; a run stopped by hand (DIR/TASK/
deep-seedN.partial) is read from its metrics and marked unfinished.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from circuitlab.training import Recipe, RunSpec, get_recipe, read_metrics, read_run
from circuitlab.training.parallel import train_many
from circuitlab.training.rundir import GROK_THRESHOLD, partial_path

RESULTS = Path(__file__).parent / "results" / "deep.json"
TASKS = ("add_mod_59", "add_mod_113")
console = Console(width=120)


def print_table(out: dict) -> None:
    table = Table(title="`deep` (2 layers): 99% validation accuracy at step")
    for col in ("task", "seed", "99% at step", "steps", "final val", "best val", "time"):
        table.add_column(col, justify="left" if col == "task" else "right")
    for r in out["runs"]:
        table.add_row(
            r["task"],
            str(r["seed"]),
            "not reached" if r["grokked_at"] is None else f"{r['grokked_at']:,}",
            f"{r['steps']:,}",
            f"{r['val_acc']:.3f}",
            f"{r['best_val_acc']:.3f}",
            f"{r['seconds']:.0f}s" + ("" if r["finished"] else " (stopped)"),
        )
    console.print(table)


def row(run_dir: Path) -> dict:
    """A finished run from its summary; an unfinished one (stopped by hand, RUN.partial) from
    its metrics, with `finished` false: its grokked_at is the first logged step at 99%."""
    if not run_dir.is_dir() and partial_path(run_dir).is_dir():
        config = json.loads((partial_path(run_dir) / "config.json").read_text())
        metrics = read_metrics(partial_path(run_dir), torn_tail=True)
        hits = [m["step"] for m in metrics if m["val_acc"] >= GROK_THRESHOLD]
        return {
            "task": config["task"],
            "seed": config["seed"],
            "finished": False,
            "grokked_at": hits[0] if hits else None,
            "steps": metrics[-1]["step"],
            "val_acc": metrics[-1]["val_acc"],
            "best_val_acc": max(m["val_acc"] for m in metrics),
            "seconds": metrics[-1]["time_s"],
        }
    info = read_run(run_dir)
    s = info.summary
    return {
        "task": info.task,
        "seed": info.seed,
        "finished": True,
        "grokked_at": s["grokked_at"],
        "steps": s["steps"],
        "val_acc": s["final"]["val_acc"],
        "best_val_acc": max(m["val_acc"] for m in read_metrics(run_dir)),
        "seconds": s["wall_time_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--from-runs", type=Path, help="read finished runs instead of training")
    parser.add_argument("--show", action="store_true", help="print the saved results only")
    args = parser.parse_args()
    if args.show:
        print_table(json.loads(RESULTS.read_text()))
        return
    tasks = args.tasks.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    recipe = get_recipe("deep")
    total = None
    if args.from_runs:
        runs = [args.from_runs / t / f"deep-seed{s}" for t in tasks for s in seeds]
        rows = [row(r) for r in runs]
        configs = [
            json.loads(((r if r.is_dir() else partial_path(r)) / "config.json").read_text())
            for r in runs
        ]
        if any(Recipe.from_dict(c["recipe"]) != recipe for c in configs):
            raise SystemExit("some runs were not trained with the registered `deep` recipe")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            specs = [
                RunSpec(t, recipe, s, Path(tmp) / t / f"deep-seed{s}") for t in tasks for s in seeds
            ]
            start = time.perf_counter()
            results = train_many(specs, workers=2, strategy="loop")
            total = time.perf_counter() - start
            rows = [row(r.run_dir) for r in results]
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "recipe": recipe.to_dict(),
        "source": str(args.from_runs) if args.from_runs else "trained here, 2 workers",
        "total_seconds": total,
        "all_reached_99": all(r["grokked_at"] is not None for r in rows),
        "runs": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print_table(out)
    console.print(f"results in {RESULTS}")


if __name__ == "__main__":
    main()
