"""Hyperparameter search benchmark: an Optuna study (training.tune) on add_mod_113, then the
best recipe it found against `fast` on held-out seeds. Writes benchmarks/results/tune.json and
prints the comparison.

    python benchmarks/bench_tune.py      # 16 trials x 3 seeds (~20-40 min on 2 cores)
    python benchmarks/bench_tune.py --budget 2 --trial-seeds 0 --max-steps 50 \
        --compare-seeds 10 --compare-max-steps 50 --work /tmp/bt --results /tmp/bt/t.json

The study searches lr, weight_decay and warmup_steps around `fast` with the split fixed at
30% (train_fraction is left out: more data trivially means fewer steps), scoring each trial by
the median over its seeds of steps to 99% validation accuracy. The comparison trains both
recipes on seeds the study never saw (selection on seeds 0-2 flatters the winner there), each
to 99% validation, and reports the median steps. The study file lives in --work, so a killed
run continues when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from circuitlab._atomic import write_json_atomic
from circuitlab.training import RunSpec, get_recipe, train_stack
from circuitlab.training.tune import tune

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "tune.json"
SPACE = ["lr=1e-3:5e-2:log", "weight_decay=0.1:5:log", "warmup_steps=0:100"]
console = Console()


def seeds_arg(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def median_or_none(steps: list[int | None]) -> float | None:
    """Median steps to 99%, None unless every seed got there."""
    if not steps or any(s is None for s in steps):
        return None
    return statistics.median(steps)


def compare(recipes: dict, task: str, seeds: list[int], max_steps: int, work: Path) -> dict:
    out = {}
    for name, recipe in recipes.items():
        recipe = recipe.replace(stop_val_acc=0.99, max_steps=max_steps, checkpoint_every=10**6)
        specs = [RunSpec(task, recipe, s, work / "compare" / f"{name}-seed{s}") for s in seeds]
        console.print(f"[bold]compare[/]: {name} on seeds {seeds}")
        start = time.perf_counter()
        results = train_stack(specs, overwrite=True, threads=1)
        steps = [r.grokked_at for r in results]
        out[name] = {
            "recipe": recipe.to_dict(),
            "steps_to_99": steps,
            "median_steps_to_99": median_or_none(steps),
            "all_reached_99": all(s is not None for s in steps),
            "wall_s": round(time.perf_counter() - start, 1),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--task", default="add_mod_113")
    ap.add_argument("--budget", type=int, default=16, help="finished trials in the study")
    ap.add_argument("--trial-seeds", type=seeds_arg, default=[0, 1, 2])
    ap.add_argument("--max-steps", type=int, default=1000, help="step budget of a trial's run")
    ap.add_argument("--compare-seeds", type=seeds_arg, default=[10, 11, 12])
    ap.add_argument("--compare-max-steps", type=int, default=3000)
    ap.add_argument("--work", type=Path, default=HERE / "runs" / "tune")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    args = ap.parse_args()
    torch.set_num_threads(1)

    study = args.work / f"{args.task}.journal"
    console.print(
        f"[bold]tune[/]: {args.task}, budget {args.budget} trials x seeds {args.trial_seeds}, "
        f"max {args.max_steps} steps, space {' '.join(SPACE)}; study {study}"
    )
    start = time.perf_counter()

    def on_trial_end(t) -> None:
        steps = "-" if t.steps_to_99 is None else t.steps_to_99
        value = "" if t.value is None else f" objective {t.value:.1f}"
        console.print(f"  trial {t.number}: {t.state.lower()} {steps}{value} {t.params}")

    result = tune(
        args.task,
        args.budget,
        study,
        space=SPACE,
        seeds=args.trial_seeds,
        base_recipe="fast",
        max_steps=args.max_steps,
        threads=1,
        on_trial_end=on_trial_end,
    )
    tuning_s = time.perf_counter() - start
    best = result.best
    if best is None:
        sys.exit("no complete trial: nothing to compare")
    tuned = result.best_recipe("tuned")
    cmp = compare(
        {"fast": get_recipe("fast"), "tuned": tuned},
        args.task,
        args.compare_seeds,
        args.compare_max_steps,
        args.work,
    )
    fast_m, tuned_m = cmp["fast"]["median_steps_to_99"], cmp["tuned"]["median_steps_to_99"]
    report = {
        "task": args.task,
        "budget": args.budget,
        "trial_seeds": args.trial_seeds,
        "max_steps": args.max_steps,
        "space": SPACE,
        "study": str(study),
        "tuning_wall_s_this_invocation": round(tuning_s, 1),
        "trials": [
            {
                "number": t.number,
                "state": t.state,
                "params": t.params,
                "objective": t.value,
                "steps_to_99": t.steps_to_99,
                "pruned_at": t.pruned_at,
            }
            for t in result.trials
        ],
        "n_complete": sum(t.state == "COMPLETE" for t in result.trials),
        "n_pruned": sum(t.state == "PRUNED" for t in result.trials),
        "best": {
            "trial": best.number,
            "params": best.params,
            "objective": best.value,
            "steps_to_99": best.steps_to_99,
        },
        "compare_seeds": args.compare_seeds,
        "compare_max_steps": args.compare_max_steps,
        "compare": cmp,
        "median_ratio_fast_over_tuned": (fast_m / tuned_m if fast_m and tuned_m else None),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results, report)

    table = Table(
        title=f"{args.task}: best of {result.finished} trials vs fast, held-out seeds "
        f"{args.compare_seeds}"
    )
    for col in ("recipe", "lr", "weight decay", "warmup", "steps to 99% per seed", "median"):
        table.add_column(col, justify="left" if col == "recipe" else "right")
    for name, row in cmp.items():
        r = row["recipe"]
        table.add_row(
            name,
            f"{r['lr']:.3g}",
            f"{r['weight_decay']:.3g}",
            str(r["warmup_steps"]),
            ", ".join("-" if s is None else str(s) for s in row["steps_to_99"]),
            "-" if row["median_steps_to_99"] is None else f"{row['median_steps_to_99']:g}",
        )
    console.print(table)
    console.print(
        f"{report['n_complete']} complete, {report['n_pruned']} pruned trials; tuning "
        f"{tuning_s:.0f} s this run; results in {args.results}"
    )


if __name__ == "__main__":
    sys.exit(main())
