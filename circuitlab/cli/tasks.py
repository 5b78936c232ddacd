"""`circuitlab tasks`: list task families and example specs with their sizes."""

from __future__ import annotations

from typing import Annotated

import typer

from circuitlab.cli.common import CliError, console


def register(app: typer.Typer) -> None:
    @app.command("tasks")
    def tasks_cmd(
        spec: Annotated[
            list[str] | None,
            typer.Argument(help="Task specs to describe (default: one example per family)."),
        ] = None,
        show: Annotated[
            int, typer.Option(min=0, help="Also print this many examples of each task.")
        ] = 0,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print JSON instead of a table.")
        ] = False,
    ) -> None:
        r"""List the algorithmic tasks: spec, vocabularies, sequence length, answers, examples.

        Specs: add_mod_113, s5_conj, grid_mirror_3x5_c4, 'synth_mod_97\[a*b+c]' (quote brackets).
        """
        import json

        import numpy as np
        from rich.markup import escape
        from rich.table import Table

        from circuitlab.tasks import TaskError, families, format_example, get_task

        known = families()
        names = list(spec) if spec else [f.example for f in known]
        records, samples = [], {}
        unavailable = []
        for name in names:
            try:
                task = get_task(name)
            except TaskError as exc:
                if spec:
                    raise CliError(str(exc)) from None
                unavailable.append(str(exc))  # a family whose optional extra is missing
                continue
            family = next((f.name for f in known if f.pattern.fullmatch(name)), "")
            data = task.dataset()
            records.append(
                {
                    "spec": task.spec,
                    "family": family,
                    "description": task.describe(),
                    "d_vocab": task.d_vocab,
                    "d_vocab_out": task.d_vocab_out,
                    "n_ctx": task.n_ctx,
                    "n_answers": len(task.answer_positions),
                    "examples": len(data),
                }
            )
            if show:
                pick = np.random.default_rng(0).permutation(len(data))[:show]
                samples[task.spec] = [
                    format_example(task, data.inputs[i], data.targets[i]) for i in np.sort(pick)
                ]

        if as_json:
            for record in records:
                record["samples"] = samples.get(record["spec"], [])
            console.print_json(json.dumps(records))
            return

        table = Table(title="circuitlab tasks")
        table.add_column("spec", no_wrap=True)
        table.add_column("vocab in/out", justify="right")
        table.add_column("n_ctx", justify="right")
        table.add_column("answers", justify="right")
        table.add_column("examples", justify="right")
        table.add_column("description")
        for r in records:
            table.add_row(
                escape(r["spec"]),
                f"{r['d_vocab']}/{r['d_vocab_out']}",
                str(r["n_ctx"]),
                str(r["n_answers"]),
                f"{r['examples']:,}",
                escape(r["description"]),
            )
        console.print(table)
        for task_spec, lines in samples.items():
            console.print(f"[bold]{escape(task_spec)}[/] (input -> answer)", highlight=False)
            for line in lines:
                console.print(f"  {line}", highlight=False, markup=False)
        if not spec:
            console.print("Spec forms (try `circuitlab tasks SPEC --show 5`):")
            for f in known:
                console.print(f"  [bold]{f.name}[/]: {escape(f.summary)}", highlight=False)
            for reason in unavailable:
                console.print(f"  (not listed: {escape(reason)})", highlight=False)
