"""Recipes for the task families `fast` does not make grok (issue 17). Writes
benchmarks/results/recipes.json and prints the table.

    python benchmarks/bench_recipes.py                    # every family below
    python benchmarks/bench_recipes.py --only synth3      # one family
    python benchmarks/bench_recipes.py --show             # the saved table

For a family with a shipped recipe, that recipe is trained on its seeds (each run stops at 99%
validation accuracy or at the recipe's step budget) and the row gives the steps to 99% and the
best validation accuracy per seed. For a family with none, a `circuitlab tune` study with the
stated budget runs, and the row gives the best validation accuracy any trial reached and the
steps the study spent. Beside each, `fast` at its 5,000 steps, from the same benchmark's
committed tasks.json (bench_tasks.py).

Runs and studies live in benchmarks/runs/recipes/ (ignored by git); a killed benchmark
continues where it stopped when started again.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from circuitlab._atomic import write_json_atomic
from circuitlab.tasks import get_task
from circuitlab.training import RunSpec, get_recipe, read_metrics, read_run
from circuitlab.training.parallel import train_many

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "recipes.json"
BASELINE = HERE / "results" / "tasks.json"
RUNS = HERE / "runs" / "recipes"
console = Console(width=160)


@dataclass(frozen=True)
class Family:
    name: str
    task: str  # the family's measured task
    recipe: str | None = None  # the shipped recipe; None: a study looks for one
    seeds: tuple[int, ...] = (0, 1, 2)
    # the study, when no recipe ships: its search space, trials, seeds and step budget per run
    space: tuple[str, ...] = ()
    budget: int = 0
    max_steps: int = 0
    note: str = ""
    overrides: dict = field(default_factory=dict)
    runs: Path | None = None  # where its runs go (RUNS_NAME-seedN); default RUNS/NAME
    run_name: str = ""  # default: the recipe's name


FAMILIES = (
    Family("synth3", "synth_mod_31[a*b+c]", recipe="synth3"),
    # the run directories bench_groups.py analyses (the same recipe and seeds)
    Family(
        "conj",
        "s5_conj",
        recipe="conj",
        seeds=(0, 1, 2, 3),
        runs=RUNS.parent / "groups" / "s5_conj",
        run_name="tuned",
    ),
    Family(
        "x3xy",
        "x3xy_mod_113",
        seeds=(0,),
        space=(
            "lr=1e-3:1e-2:log",
            "weight_decay=0.3:5:log",
            "train_fraction=0.3:0.9",
            "model.n_layers=1,2",
        ),
        budget=3,
        max_steps=4000,
        note="Doshi et al. 2024 report that networks fail to generalize on many modular "
        "polynomials whatever the training",
    ),
)


def _best_val(run_dir: Path) -> float:
    return max((r["val_acc"] for r in read_metrics(run_dir, torn_tail=True)), default=0.0)


def measure_recipe(fam: Family, workers: int) -> dict:
    recipe = get_recipe(fam.recipe).replace(stop_val_acc=0.99, **fam.overrides)
    root = fam.runs or RUNS / fam.name
    name = fam.run_name or recipe.name
    specs = [RunSpec(fam.task, recipe, s, root / f"{name}-seed{s}") for s in fam.seeds]
    start = time.perf_counter()
    train_many(specs, workers=workers, resume=True, threads=1, strategy="loop")
    runs = []
    for spec in specs:
        info = read_run(spec.run_dir)
        runs.append(
            {
                "seed": spec.seed,
                "steps_to_99": info.summary.get("grokked_at"),
                "steps": info.summary.get("steps"),
                "best_val_acc": _best_val(spec.run_dir),
                "seconds": info.summary.get("wall_time_s"),
            }
        )
    reached = [r["steps_to_99"] for r in runs if r["steps_to_99"] is not None]
    return {
        "recipe": recipe.to_dict(),
        "train_examples": round(len(get_task(fam.task).dataset()) * recipe.train_fraction),
        "runs": runs,
        "all_reached_99": len(reached) == len(runs),
        "median_steps_to_99": statistics.median(reached) if len(reached) == len(runs) else None,
        "wall_s_this_invocation": round(time.perf_counter() - start, 1),
    }


def run_study(fam: Family) -> dict:
    from circuitlab.training.tune import study_results, tune

    path = RUNS / fam.name / f"{fam.task}.journal"
    start = time.perf_counter()
    tune(
        fam.task,
        fam.budget,
        path,
        space=list(fam.space),
        seeds=list(fam.seeds),
        max_steps=fam.max_steps,
        threads=1,
    )
    result = study_results(path, fam.budget)
    trials, steps = [], 0
    for t in result.trials:
        if t.state not in ("COMPLETE", "PRUNED"):
            continue  # a trial cut short by a kill is run again under another number
        best = max(t.best_val_acc or [0.0])
        dirs = [result.trials_dir / f"trial-{t.key}-seed{s}" for s in fam.seeds]
        ran = [read_metrics(d, torn_tail=True)[-1]["step"] for d in dirs if d.is_dir()]
        steps += sum(ran)
        trials.append(
            {
                "number": t.number,
                "state": t.state,
                "params": t.params,
                "best_val_acc": best,
                "steps_to_99": t.steps_to_99,
                "steps": ran,
            }
        )
    best = max(trials, key=lambda t: t["best_val_acc"], default=None)
    return {
        "study": str(path.relative_to(HERE.parent)),
        "space": list(fam.space),
        "budget_trials": fam.budget,
        "max_steps": fam.max_steps,
        "trials": trials,
        "steps_spent": steps,
        "best": best,
        "reached_99": any(t["steps_to_99"] and None not in t["steps_to_99"] for t in trials),
        "wall_s_this_invocation": round(time.perf_counter() - start, 1),
    }


def baseline(task: str) -> dict | None:
    """`fast` on the task, from bench_tasks.py's committed results (seed 0, 5,000 steps)."""
    if not BASELINE.is_file():
        return None
    rows = [r for r in json.loads(BASELINE.read_text())["runs"] if r["task"] == task]
    if not rows:
        return None
    return {
        "recipe": "fast",
        "seeds": [r["seed"] for r in rows],
        "steps_to_99": [r["steps_to_99"] for r in rows],
        "best_val_acc": [r["best_val_acc"] for r in rows],
        "steps": [r["steps"] for r in rows],
        "source": "benchmarks/bench_tasks.py (results/tasks.json)",
    }


def _steps(values: list) -> str:
    return ", ".join("-" if v is None else f"{v:,}" for v in values)


def print_table(out: dict) -> None:
    table = Table(title="recipes per task family (99% validation)")
    for col in ("family", "task", "recipe", "seeds", "99% at step", "best val", "budget", "fast"):
        table.add_column(col, overflow="fold")
    for row in out["families"]:
        base = row.get("baseline")
        fast = (
            f"best {max(base['best_val_acc']):.1%} in {max(base['steps']):,} steps" if base else "-"
        )
        if "measured" in row:
            m = row["measured"]
            table.add_row(
                row["family"],
                escape(row["task"]),
                m["recipe"]["name"],
                _steps([r["seed"] for r in m["runs"]]),
                _steps([r["steps_to_99"] for r in m["runs"]]),
                ", ".join(f"{r['best_val_acc']:.1%}" for r in m["runs"]),
                f"{sum(r['steps'] for r in m['runs']):,} steps",
                fast,
            )
        else:
            s = row["study"]
            best = s["best"]
            table.add_row(
                row["family"],
                escape(row["task"]),
                "none ships" if not s["reached_99"] else "study reached 99%",
                _steps(row["seeds"]),
                "-",
                "-" if best is None else f"{best['best_val_acc']:.1%} (trial {best['number']})",
                f"{len(s['trials'])} trials <= {s['max_steps']:,} steps, "
                f"{s['steps_spent']:,} steps",
                fast,
            )
    console.print(table)
    for row in out["families"]:
        if row.get("note"):
            console.print(f"{row['family']}: {row['note']}", markup=False)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default="", help="comma-separated family names")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--show", action="store_true", help="print the saved results only")
    args = ap.parse_args()
    if args.show:
        print_table(json.loads(RESULTS.read_text()))
        return
    wanted = {n for n in args.only.split(",") if n}
    unknown = wanted - {f.name for f in FAMILIES}
    if unknown:
        ap.error(f"unknown families {sorted(unknown)}; known: {[f.name for f in FAMILIES]}")
    old = json.loads(RESULTS.read_text())["families"] if RESULTS.is_file() else []
    rows = {r["family"]: r for r in old}
    for fam in FAMILIES:
        if wanted and fam.name not in wanted:
            continue
        console.print(f"[bold]{fam.name}[/]: {escape(fam.task)}")
        row = {"family": fam.name, "task": fam.task, "seeds": list(fam.seeds), "note": fam.note}
        if fam.recipe is not None:
            row["measured"] = measure_recipe(fam, args.workers)
        else:
            row["study"] = run_study(fam)
        row["baseline"] = baseline(fam.task)
        rows[fam.name] = row
    order = [f.name for f in FAMILIES]
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "families": sorted(rows.values(), key=lambda r: order.index(r["family"])),
    }
    write_json_atomic(RESULTS, out)
    print_table(out)
    console.print(f"results in {RESULTS}", markup=False)


if __name__ == "__main__":
    main()
