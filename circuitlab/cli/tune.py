"""`circuitlab tune` (hyperparameter search, circuitlab.training.tune) and `circuitlab recipes`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from circuitlab.cli.common import CliError, console, err_console


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in params.items())


def _fmt_steps(steps: list[int | None] | None) -> str:
    if not steps:
        return "-"
    return ", ".join("-" if s is None else f"{s:,}" for s in steps)


def _trial_table(result) -> Table:
    best = result.best
    table = Table(title=f"study {escape(str(result.study_path))} ({result.settings.task})")
    for col, justify in (
        ("trial", "right"),
        ("params", "left"),
        ("steps to 99% (per seed)", "right"),
        ("objective", "right"),
        ("state", "left"),
    ):
        table.add_column(col, justify=justify, overflow="fold")
    for t in result.trials:
        if t.state == "WAITING":
            continue
        label = str(t.number) + ("" if t.key == t.number else f" (runs {t.key})")
        state = t.state.lower()
        if t.state == "PRUNED" and t.pruned_at is not None:
            state += f" at {t.pruned_at:,}"
        if best is not None and t.number == best.number:
            state = f"[bold green]{state} (best)[/]"
        table.add_row(
            label,
            escape(_fmt_params(t.params)),
            _fmt_steps(t.steps_to_99),
            "-" if t.value is None else f"{t.value:,.1f}",
            state,
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("tune")
    def tune_cmd(
        task: str = typer.Argument(..., help="Task spec (see `circuitlab tasks`)."),
        budget: int = typer.Option(
            ...,
            "--budget",
            "-n",
            help="Finished (complete or pruned) trials the study should hold; a study run "
            "again continues up to this number.",
        ),
        space: list[str] = typer.Option(
            [],
            "--space",
            help="A searched field, replacing the default space: lr=1e-4:1e-2:log, "
            "weight_decay=0.1:3, warmup_steps=0:100 (integer field: integer range), "
            "model.n_layers=1,2 (choices). Default: "
            "lr=1e-3:3e-2:log weight_decay=0.1:5:log train_fraction=0.2:0.5 warmup_steps=0:100.",
        ),
        seeds: str | None = typer.Option(
            None, "--seeds", "-s", help="Seeds of every trial (median over them); default 0-2."
        ),
        recipe: str | None = typer.Option(
            None, "--recipe", "-r", help="Base recipe the space varies (default fast)."
        ),
        study: Path | None = typer.Option(
            None,
            "--study",
            help="Study file (Optuna journal); default OUT/TASK/tune-default.journal. Its "
            "trials go beside it, in a directory of the same name without .journal.",
        ),
        out: Path = typer.Option(
            Path("runs"), "--out", "-o", help="Root directory for the default study."
        ),
        save_recipe: str | None = typer.Option(
            None,
            "--save-recipe",
            help="Save the best trial as a named recipe in $CIRCUITLAB_RECIPES "
            "(default ~/.circuitlab/recipes) for `train --recipe NAME`.",
        ),
        max_steps: int | None = typer.Option(
            None, "--max-steps", help="Step budget of each run (default the recipe's)."
        ),
        sampler_seed: int | None = typer.Option(
            None, "--sampler-seed", help="Seed of the TPE sampler (default 0)."
        ),
        no_prune: bool = typer.Option(
            False, "--no-prune", help="Train every trial to the end (no median pruning)."
        ),
        threads: int = typer.Option(0, "--threads", help="Torch threads (0 = torch's default)."),
    ) -> None:
        """Search recipe hyperparameters for TASK with Optuna (TPE, median pruning).

        The objective is the median over seeds of the steps to 99% validation accuracy (runs
        that never get there score worse than any that do). The study file records every
        trial: run the same command again after a kill or Ctrl-C and it continues, resuming
        unfinished runs from their checkpoints. Each trial's runs are ordinary run
        directories (`circuitlab runs`, `circuitlab extract`).
        """
        from circuitlab.cli.training import check_out_dir, parse_seeds
        from circuitlab.training import RecipeError, RunDirError
        from circuitlab.training.tune import TuneError, prepare, study_results

        if threads < 0:
            raise CliError("--threads must be >= 0 (0 = torch's default)")
        try:
            plan = prepare(
                task,
                budget,
                study,
                space=space or None,
                seeds=parse_seeds(seeds) if seeds is not None else None,
                base_recipe=recipe,
                max_steps=max_steps,
                sampler_seed=sampler_seed,
                out=out,
                save_recipe_as=save_recipe,
            )
            before = 0 if plan.new else study_results(plan.study_path).finished
        except (TuneError, RecipeError, RunDirError) as exc:
            raise CliError(str(exc)) from None
        check_out_dir(plan.study_path.parent)
        s = plan.settings
        console.print(
            f"{'new' if plan.new else 'continuing'} study {plan.study_path}: {s.task}, "
            f"recipe {s.base.name}, seeds {list(s.seeds)}, max {s.max_steps:,} steps, "
            f"space {' '.join(map(str, s.space))}; {before}/{plan.budget} trials finished",
            markup=False,
        )
        result = _run_with_progress(plan, before, threads, not no_prune)
        console.print(_trial_table(result))
        best = result.best
        if best is None:
            console.print("no complete trial yet", markup=False)
        else:
            console.print(
                f"best: trial {best.number} ({_fmt_params(best.params)}), steps to 99% "
                f"{_fmt_steps(best.steps_to_99)}, objective {best.value:,.1f}",
                markup=False,
            )
        console.print(f"trial runs: {result.trials_dir}", markup=False)
        if result.saved:
            console.print(f"saved recipe {save_recipe!r}: {result.saved}", markup=False)

    @app.command("recipes")
    def recipes_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Built-in and saved recipes: key fields and what each was measured on."""
        import json

        from circuitlab.training import RecipeError
        from circuitlab.training.recipe import (
            _RECIPES,
            BUILTIN_MEASURED,
            DEFAULT_RECIPE,
            FAMILY_RECIPES,
        )
        from circuitlab.training.saved_recipes import recipe_dir, saved_recipes

        try:
            saved = saved_recipes()
        except RecipeError as exc:
            raise CliError(str(exc)) from None
        rows = [(r, "built-in", BUILTIN_MEASURED.get(r.name, [])) for r in _RECIPES.values()]
        rows += [(s.recipe, "saved", [s.measured] if s.measured else []) for s in saved.values()]
        families = {DEFAULT_RECIPE: "any other task"}
        for fam in FAMILY_RECIPES:
            families[fam.recipe] = fam.family
        if as_json:
            console.print_json(
                json.dumps(
                    [
                        {
                            "name": r.name,
                            "source": src,
                            "default_for": families.get(r.name),
                            "recipe": r.to_dict(),
                            "measured": m,
                        }
                        for r, src, m in rows
                    ]
                )
            )
            return
        table = Table(title="recipes")
        for col in ("name", "source", "optimizer", "lr", "wd", "train", "warmup", "max steps"):
            table.add_column(col, overflow="fold")
        table.add_column("model", overflow="fold")
        table.add_column("default for", overflow="fold")
        table.add_column("measured on", overflow="fold")
        for r, src, m in rows:
            table.add_row(
                escape(r.name),
                escape(src),
                r.optimizer,
                f"{r.lr:.3g}",
                f"{r.weight_decay:.3g}",
                f"{r.train_fraction:.3g}",
                str(r.warmup_steps),
                f"{r.max_steps:,}",
                escape(_fmt_params(r.model)) or "-",
                escape(families.get(r.name, "-")),
                escape("; ".join(_measured(x) for x in m)) if m else "-",
            )
        console.print(table)
        console.print(f"saved recipes directory: {recipe_dir()}", markup=False)


def _measured(m: dict[str, Any]) -> str:
    median = m.get("median_steps_to_99")
    steps = (
        f"median {median:,.0f} steps to 99%"
        if isinstance(median, (int, float))
        else f"steps to 99% {_fmt_steps(m.get('steps_to_99'))}"
    )
    where = (
        m["source"]
        if "source" in m
        else f"best of {m.get('budget', '?')} trials, base {m.get('base_recipe', '?')}"
    )
    return f"{m.get('task', '?')}, seeds {m.get('seeds', '?')}: {steps} ({where})"


def _run_with_progress(plan, before: int, threads: int, prune: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from circuitlab._memory import MemoryBudgetError
    from circuitlab.tasks import TaskError
    from circuitlab.training import RecipeError, RunDirError
    from circuitlab.training.tune import TuneError, run

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        overall = progress.add_task("trials", total=plan.budget, completed=before, info="")
        current = progress.add_task("trial", total=plan.settings.max_steps, info="", visible=False)

        def on_trial_start(number: int, key: int, params: dict[str, Any]) -> None:
            label = f"trial {number}" + ("" if key == number else f" (resumes {key})")
            progress.reset(current, description=label, info="", visible=True)

        def on_step(number: int, step: int, max_steps: int, acc: float) -> None:
            progress.update(current, completed=step, info=f"val {acc:.3f}")

        def on_trial_end(t) -> None:
            state = t.state.lower()
            if t.state == "PRUNED":
                state += f" at step {t.pruned_at:,}" if t.pruned_at is not None else ""
            value = "" if t.value is None else f", objective {t.value:,.1f}"
            progress.console.print(
                f"trial {t.number}: {state}, steps to 99% {_fmt_steps(t.steps_to_99)}{value} "
                f"[{_fmt_params(t.params)}]",
                markup=False,
            )
            progress.advance(overall)

        try:
            return run(
                plan,
                threads=threads or None,
                prune=prune,
                on_trial_start=on_trial_start,
                on_step=on_step,
                on_trial_end=on_trial_end,
            )
        except (TuneError, RecipeError, RunDirError, TaskError, MemoryBudgetError) as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(
                f"cannot write {exc.filename or 'the study'}: {exc.strerror or exc}; fix that, "
                "then run the same command again"
            ) from None
        except KeyboardInterrupt:
            progress.stop()
            err_console.print(
                "interrupted: the trial's runs were kept; run the same command again to "
                "continue the study where it stopped",
                markup=False,
            )
            raise SystemExit(130) from None
