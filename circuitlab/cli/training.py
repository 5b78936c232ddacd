"""`circuitlab train` and `circuitlab runs`."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from circuitlab.cli.common import CliError, console, err_console

if TYPE_CHECKING:
    from circuitlab.training import Recipe

MAX_RUNS = 10_000  # runs one command may start; a typo like --seeds 0-100000000 is refused


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
                if hi - lo >= MAX_RUNS:
                    raise CliError(f"--seeds {text!r} names more than {MAX_RUNS:,} seeds")
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
        name, _, values = item.partition("=")
        name = name.strip()
        options = [_coerce(v.strip()) for v in values.split(",") if v.strip()]
        if not name or not options:
            raise CliError(f"--set expects FIELD=VALUE[,VALUE...], got {item!r}")
        axes.append([(name, v) for v in options])
    grid = [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]
    if len(grid) > MAX_RUNS:
        raise CliError(f"--set makes a sweep of {len(grid):,} variations; at most {MAX_RUNS:,}")
    return grid


def apply_overrides(base: Recipe, overrides: dict[str, object]) -> Recipe:
    """`base` with `--set` overrides: recipe fields (`lr`), or model fields, named bare
    (`n_layers`) or as `model.n_layers`, which go into the recipe's `model` overrides."""
    import dataclasses

    from circuitlab.models import ModelConfig
    from circuitlab.training import RecipeError

    recipe_fields = {f.name for f in dataclasses.fields(base)} - {"model"}
    model_fields = set(ModelConfig.__dataclass_fields__)
    recipe_changes: dict[str, object] = {}
    model_changes: dict[str, object] = {}
    for name, value in overrides.items():
        field = name.removeprefix("model.")
        if name == field and name in recipe_fields:
            recipe_changes[name] = value
        elif field in model_fields:
            model_changes[field] = value
        else:
            raise RecipeError(
                f"unknown recipe fields: [{name!r}]; --set takes recipe fields "
                f"({', '.join(sorted(recipe_fields))}) and model fields, bare or as model.X "
                f"({', '.join(sorted(model_fields))})"
            )
    if model_changes:
        recipe_changes["model"] = {**base.model, **model_changes}
    return base.replace(**recipe_changes) if recipe_changes else base


def run_path(out: Path, task: str, recipe: str, overrides: dict[str, object], seed: int) -> Path:
    """OUT/TASK/RECIPE[-overrides]-seedN, each part one path component however the task spec
    or the override values are spelled (`a/b`, `..`), so a run never lands outside OUT."""
    from circuitlab.training.rundir import safe_name

    suffix = "".join(f"-{k}{v}" for k, v in overrides.items())
    return out / safe_name(task) / safe_name(f"{recipe}{suffix}-seed{seed}")


def check_out_dir(out: Path) -> None:
    """`--out` must be a directory this user can create and write; say so before any work."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create --out {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise CliError(f"--out {out} is not writable")


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        task: str = typer.Option(
            "add_mod_113", "--task", "-t", help="Task spec (see `circuitlab tasks`)."
        ),
        recipe: str | None = typer.Option(
            None,
            "--recipe",
            "-r",
            help="Training recipe (see `circuitlab recipes`). Default: the recipe shipped for "
            "the task's family (synth3 for three-operand synthesis), else fast.",
            show_default=False,
        ),
        seeds: str = typer.Option(
            "0", "--seeds", "-s", help="Seeds: 0-31, 3 or 0,2,5-7. One run per seed."
        ),
        sets: list[str] = typer.Option(
            [],
            "--set",
            help="Override recipe or model fields; commas make a sweep: --set lr=0.01,0.003 "
            "--set n_layers=1,2 (model fields may also be written model.n_layers)",
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
        tensorboard: bool = typer.Option(
            False,
            "--tensorboard",
            help="Also write TensorBoard events to OUT/tensorboard/TASK/RUN as runs train "
            "(metrics.jsonl stays the record; `tensorboard --logdir OUT/tensorboard`).",
        ),
        backend: str = typer.Option(
            "local",
            "--backend",
            help="local (this machine's cores) or ray (a Ray cluster: the `ray` extra; run "
            "directories must be on a filesystem every node shares).",
        ),
        address: str | None = typer.Option(
            None,
            "--address",
            help="With --backend ray: auto, HOST:PORT or ray://HOST:PORT of a running cluster "
            "(default: start a local one with --workers CPUs).",
        ),
    ) -> None:
        """Train models on a task; each seed/variation becomes its own run directory.

        Writes OUT/TASK/RECIPE[-overrides]-seedN/ with config.json, model.safetensors,
        metrics.jsonl, summary.json and curves.png. Many runs are stacked in one process or
        spread over worker processes, whichever measures faster.
        """
        from circuitlab.tasks import TaskError, get_task
        from circuitlab.training import RecipeError, RunDirError, RunSpec, get_recipe
        from circuitlab.training.recipe import DEFAULT_RECIPE, recipe_for

        if threads < 0 or workers < 0:
            raise CliError("--threads and --workers must be >= 0 (0 = automatic)")
        try:
            the_task = get_task(task)
            if recipe is None:
                recipe = recipe_for(the_task)
                if recipe != DEFAULT_RECIPE:
                    console.print(f"recipe {recipe} (shipped for this task's family)")
            base = get_recipe(recipe)
            seed_list = parse_seeds(seeds)
            sweep = parse_sweep(sets)
            if len(sweep) * len(seed_list) > MAX_RUNS:
                raise CliError(
                    f"{len(sweep) * len(seed_list):,} runs requested; at most {MAX_RUNS:,}"
                )
            specs = []
            for overrides in sweep:
                r = apply_overrides(base, overrides)
                for seed in seed_list:
                    specs.append(
                        RunSpec(task, r, seed, run_path(out, task, recipe, overrides, seed))
                    )
            specs[0].model_config()
        except (TaskError, RecipeError, RunDirError, ValueError, TypeError) as exc:
            raise CliError(str(exc)) from None  # ModelConfigError is a ValueError too
        if backend not in ("local", "ray"):
            raise CliError(f"--backend must be local or ray, got {backend!r}")
        if address is not None and backend != "ray":
            raise CliError("--address needs --backend ray")
        if backend == "ray":  # before anything is written: Ray installed, cluster reachable
            from circuitlab.training.ray_backend import RayBackendError, check_address, import_ray

            try:
                import_ray(local=address is None)
                check_address(address)
            except RayBackendError as exc:
                raise CliError(str(exc)) from None
        check_out_dir(out)
        logdir = out / "tensorboard" if tensorboard else None
        _run_with_progress(
            specs, workers, strategy, resume, overwrite, threads, logdir, backend, address
        )

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
        table = Table(title=f"runs under {escape(str(root))}")
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
                escape(str(r.path.relative_to(root))),
                escape(str(s.get("task", "?"))),
                escape(str(s.get("recipe", "?"))),
                str(s.get("seed")),
                f"{s.get('steps', 0):,}",
                "-" if s.get("grokked_at") is None else f"{s['grokked_at']:,}",
                _fmt(final.get("val_acc")),
                _fmt(final.get("train_acc")),
                f"{s.get('wall_time_s', 0):.1f}s",
            )
        console.print(table)
        if not found:
            console.print(f"no finished runs under {root}", markup=False)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _run_with_progress(
    specs,
    workers: int,
    strategy: str,
    resume: bool,
    overwrite: bool,
    threads: int = 0,
    tensorboard: Path | None = None,
    backend: str = "local",
    address: str | None = None,
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from circuitlab._memory import MemoryBudgetError
    from circuitlab.training import RecipeError, RunDirError
    from circuitlab.training.parallel import train_many
    from circuitlab.training.ray_backend import RayBackendError  # Ray itself is not imported

    mirror = None
    if tensorboard is not None:
        from circuitlab.training.tensorboard import TensorBoardError, TensorBoardMirror

        try:
            mirror = TensorBoardMirror(tensorboard, [s.run_dir for s in specs])
        except TensorBoardError as exc:
            raise CliError(str(exc)) from None
    polled = [0.0]

    def mirror_poll(force: bool = False) -> None:
        if mirror is not None and (force or time.monotonic() - polled[0] >= 1.0):
            mirror.poll()
            polled[0] = time.monotonic()

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
                label = escape(Path(name).name) + (" (+stack)" if len(specs) > 1 else "")
                bars[name] = progress.add_task(label, total=max_steps, val=0.0)
            progress.update(bars[name], completed=step, val=val)
            mirror_poll()

        def on_result(res) -> None:
            grok = (
                "not grokked" if res.grokked_at is None else f"grokked at step {res.grokked_at:,}"
            )
            progress.console.print(
                f"[green]done[/] {escape(str(res.run_dir))}: {grok}, "
                f"val acc {res.final['val_acc']:.4f}, "
                f"{res.steps:,} steps in {res.wall_time:.1f}s"
            )

            mirror_poll(force=True)

        def on_skip(spec) -> None:
            progress.console.print(f"[dim]skip[/] {escape(str(spec.run_dir))}: already finished")

        common = dict(
            strategy=strategy,
            resume=resume,
            overwrite=overwrite,
            on_plan=on_plan,
            on_event=on_event,
            on_result=on_result,
            on_skip=on_skip,
        )
        try:
            if backend == "ray":
                from circuitlab.training.ray_backend import train_ray

                results = train_ray(specs, address=address, num_cpus=workers or None, **common)
            else:
                results = train_many(
                    specs, workers=workers or None, threads=threads or None, **common
                )
        except (RunDirError, RecipeError, MemoryBudgetError, RayBackendError) as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:  # disk full, permissions changed under us: the partial stays
            raise CliError(
                f"cannot write {exc.filename or 'a run directory'}: {exc.strerror or exc}; "
                "fix that, then continue with --resume"
            ) from None
        except KeyboardInterrupt as exc:
            progress.stop()
            where = f" at step {exc.step:,}" if getattr(exc, "step", None) else ""
            err_console.print(
                f"interrupted{where}: unfinished runs were checkpointed; run the same command "
                "with --resume to continue where they stopped",
                markup=False,
            )
            raise SystemExit(130) from None
        finally:
            if mirror is not None:
                mirror.close()
    if mirror is not None:
        console.print(f"TensorBoard: tensorboard --logdir {tensorboard}", markup=False)
    if not results:
        console.print(f"nothing to train: all {len(specs)} run(s) are finished")
    elif len(results) == 1:
        r = results[0]
        console.print(
            f"run directory: {r.run_dir}\ncurves: {r.run_dir / 'curves.png'}\n"
            f"summary: {r.run_dir / 'summary.json'}",
            markup=False,
        )
    else:
        grokked = [r.grokked_at for r in results if r.grokked_at is not None]
        console.print(
            f"{len(grokked)}/{len(results)} runs grokked; "
            f"see `circuitlab runs {specs[0].run_dir.parent.parent}`",
            markup=False,
        )
