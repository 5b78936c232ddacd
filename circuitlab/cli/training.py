"""`circuitlab train` and `circuitlab runs`."""

from __future__ import annotations

import itertools
from pathlib import Path

import typer
from rich.table import Table

from circuitlab.cli.common import CliError, console


def parse_seeds(text: str) -> list[int]:
    """'0-31', '3', '0,2,5-7' -> sorted unique seeds."""
    seeds: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                seeds.update(range(lo, hi + 1))
            elif part:
                seeds.add(int(part))
    except ValueError:
        raise CliError(f"--seeds must look like 0-31 or 0,2,5-7, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise CliError(f"--seeds must name non-negative seeds, got {text!r}")
    return sorted(seeds)


def _coerce(value: str) -> object:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value.lower(), value)


def parse_sweep(items: list[str]) -> list[dict[str, object]]:
    """['lr=0.01,0.003', 'weight_decay=1'] -> the grid of recipe overrides."""
    axes: list[list[tuple[str, object]]] = []
    for item in items:
        if "=" not in item:
            raise CliError(f"--set expects FIELD=VALUE[,VALUE...], got {item!r}")
        name, values = item.split("=", 1)
        axes.append([(name.strip(), _coerce(v)) for v in values.split(",") if v.strip()])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        task: str = typer.Option(
            "add_mod_113", "--task", "-t", help="Task spec (see `circuitlab tasks`)."
        ),
        recipe: str = typer.Option(
            "fast", "--recipe", "-r", help="Training recipe: fast (default) or nanda, ..."
        ),
        seeds: str = typer.Option(
            "0", "--seeds", "-s", help="Seeds: 0-31, 3 or 0,2,5-7. One run per seed."
        ),
        sets: list[str] = typer.Option(
            [], "--set", help="Override recipe fields; commas make a sweep: --set lr=0.01,0.003"
        ),
        out: Path = typer.Option(
            Path("runs"), "--out", "-o", help="Root directory for run directories."
        ),
        workers: int = typer.Option(
            0, "--workers", "-w", help="Worker processes (0 = one per core)."
        ),
        strategy: str = typer.Option(
            "auto",
            "--strategy",
            help="auto (measure), stack (batch models in one process) or loop.",
        ),
        resume: bool = typer.Option(
            False,
            "--resume",
            help="Skip finished runs, continue the others from their last checkpoint.",
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace existing run directories."
        ),
        threads: int = typer.Option(
            0, "--threads", help="Torch threads for a single-process run (0 = torch's default)."
        ),
    ) -> None:
        """Train models on a task; each seed/variation becomes its own run directory.

        Writes OUT/TASK/RECIPE[-overrides]-seedN/ with config.json, model.safetensors,
        metrics.jsonl, summary.json and curves.png. Many runs are stacked in one process or
        spread over worker processes, whichever measures faster.
        """
        from circuitlab.tasks import TaskError, get_task
        from circuitlab.training import RecipeError, RunSpec, get_recipe

        try:
            get_task(task)
            base = get_recipe(recipe)
            specs = []
            for overrides in parse_sweep(sets):
                r = base.replace(**overrides) if overrides else base
                suffix = "".join(f"-{k}{v}" for k, v in overrides.items())
                for seed in parse_seeds(seeds):
                    specs.append(
                        RunSpec(task, r, seed, out / task / f"{recipe}{suffix}-seed{seed}")
                    )
            specs[0].model_config()
        except (TaskError, RecipeError, ValueError, TypeError) as exc:  # ModelConfigError too
            raise CliError(str(exc)) from None
        _run_with_progress(specs, workers, strategy, resume, overwrite, threads)

    @app.command("runs")
    def runs_cmd(
        root: Path = typer.Argument(Path("runs"), help="Directory searched recursively for runs."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    ) -> None:
        """Table of finished runs: task, recipe, seed, steps, grokked-at, final accuracy."""
        import json

        from circuitlab.training import find_runs

        if not root.is_dir():
            raise CliError(f"no directory {root}; train first with `circuitlab train`")
        found = find_runs(root)
        if as_json:
            console.print_json(json.dumps([{"path": str(r.path), **r.summary} for r in found]))
            return
        table = Table(title=f"runs under {root}")
        for col in (
            "run",
            "task",
            "recipe",
            "seed",
            "steps",
            "grokked at",
            "val acc",
            "train acc",
            "time",
        ):
            text = col in ("run", "task", "recipe")  # folded, never cut: they are paths
            table.add_column(
                col, justify="left" if text else "right", overflow="fold", no_wrap=not text
            )
        for r in found:
            s, final = r.summary, r.summary.get("final", {})
            table.add_row(
                str(r.path.relative_to(root)),
                s.get("task", "?"),
                s.get("recipe", "?"),
                str(s.get("seed")),
                f"{s.get('steps', 0):,}",
                "-" if s.get("grokked_at") is None else f"{s['grokked_at']:,}",
                f"{final.get('val_acc', float('nan')):.4f}",
                f"{final.get('train_acc', float('nan')):.4f}",
                f"{s.get('wall_time_s', 0):.1f}s",
            )
        console.print(table)
        if not found:
            console.print(f"no finished runs under {root}")


def _run_with_progress(
    specs, workers: int, strategy: str, resume: bool, overwrite: bool, threads: int = 0
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from circuitlab.training import RecipeError, RunDirError
    from circuitlab.training.parallel import train_many

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("val {task.fields[val]:.3f}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bars: dict[str, int] = {}

        def on_plan(p) -> None:
            how = f"{p.strategy}, {p.workers} worker(s), {len(p.chunks)} job(s)"
            extra = ", ".join(
                f"{k} {v:.0f} s" if k.endswith("_s") else f"{k} {v * 1000:.1f} ms"
                for k, v in p.measured.items()
            )
            progress.console.print(
                f"training {len(specs)} run(s): {how}" + (f" [{extra}]" if extra else "")
            )

        def on_event(event) -> None:
            name, step, max_steps, val = event
            if name not in bars:
                label = Path(name).name + (" (+stack)" if len(specs) > 1 else "")
                bars[name] = progress.add_task(label, total=max_steps, val=0.0)
            progress.update(bars[name], completed=step, val=val)

        def on_result(res) -> None:
            grok = (
                "not grokked" if res.grokked_at is None else f"grokked at step {res.grokked_at:,}"
            )
            progress.console.print(
                f"[green]done[/] {res.run_dir}: {grok}, val acc {res.final['val_acc']:.4f}, "
                f"{res.steps:,} steps in {res.wall_time:.1f}s"
            )

        def on_skip(spec) -> None:
            progress.console.print(f"[dim]skip[/] {spec.run_dir}: already finished")

        try:
            results = train_many(
                specs,
                workers=workers or None,
                strategy=strategy,
                resume=resume,
                overwrite=overwrite,
                on_plan=on_plan,
                on_event=on_event,
                on_result=on_result,
                threads=threads or None,
                on_skip=on_skip,
            )
        except (RunDirError, RecipeError) as exc:
            raise CliError(str(exc)) from None
    if not results:
        console.print(f"nothing to train: all {len(specs)} run(s) are finished")
    elif len(results) == 1:
        r = results[0]
        console.print(
            f"run directory: {r.run_dir}\ncurves: {r.run_dir / 'curves.png'}\n"
            f"summary: {r.run_dir / 'summary.json'}"
        )
    else:
        grokked = [r.grokked_at for r in results if r.grokked_at is not None]
        console.print(
            f"{len(grokked)}/{len(results)} runs grokked; "
            f"see `circuitlab runs {specs[0].run_dir.parent.parent}`"
        )
