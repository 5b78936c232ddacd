"""`circuitlab tasks`: list task families and example specs with their sizes."""

from __future__ import annotations

import typer
from rich.table import Table

from circuitlab.cli.common import CliError, console


def register(app: typer.Typer) -> None:
    @app.command("tasks")
    def tasks_cmd(
        spec: list[str] = typer.Argument(None, help="Task specs to describe (default: one example per family)."),
    ) -> None:
        """List the algorithmic tasks: spec, vocabulary, sequence length and number of examples."""
        from circuitlab.tasks import TaskError, families, get_task

        table = Table(title="circuitlab tasks")
        for column in ("spec", "family", "description", "d_vocab", "d_out", "n_ctx", "examples"):
            table.add_column(column)
        rows = [(s, "") for s in spec] if spec else [(f.example, f.name) for f in families()]
        for name, family in rows:
            try:
                task = get_task(name)
            except TaskError as exc:
                raise CliError(str(exc)) from None
            table.add_row(
                task.spec, family, task.describe(), str(task.d_vocab), str(task.d_vocab_out),
                str(task.n_ctx), f"{len(task.dataset()):,}",
            )
        console.print(table)
        if not spec:
            console.print("Families accept other parameters too, e.g. mul_mod_97, grid_mirror_4x4.")
