"""The `circuitlab` command. Thin: each subcommand parses, calls one package function, prints.

Heavy imports (torch) happen inside the commands so `circuitlab --help` stays fast. Each group of
commands lives in its own module here and is attached to the main app below.
"""

from __future__ import annotations

import sys

import typer

from circuitlab.cli import adapt as _adapt_cmd
from circuitlab.cli import catalog as _catalog_cmd
from circuitlab.cli import compose as _compose_cmd
from circuitlab.cli import discover as _discover_cmd
from circuitlab.cli import explore as _explore_cmd
from circuitlab.cli import extract as _extract_cmd
from circuitlab.cli import interop as _interop_cmd
from circuitlab.cli import registry as _registry_cmd
from circuitlab.cli import solve as _solve_cmd
from circuitlab.cli import tasks as _tasks_cmd
from circuitlab.cli import training as _training_cmd
from circuitlab.cli import tune as _tune_cmd
from circuitlab.cli.common import CliError, console, print_error

app = typer.Typer(
    name="circuitlab",  # its help is the docstring of _root below
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs reflow instead of keeping breaks
)


@app.callback()
def _root() -> None:
    """Grok small algorithmic transformers, extract their circuits, catalog and compose them.

    Options go after the (sub)command: `circuitlab catalog list -c runs/catalog.db`. A short
    flag means the same in every command: -c --catalog, -o --out, -r --recipe, -s --seeds,
    -t --task.

    -c/--catalog: a SQLite file, sqlite:///..., neo4j:// or bolt:// URL. A plain path given as
    a store (--catalog, --registry) follows one rule: a file path (an existing file, or one
    ending in .db or .sqlite) is a SQLite catalog; a directory (an existing one, or a path
    ending in /) is a folder of JSON function files, which only --registry takes.
    """


# Command groups are attached here, one line each.
_tasks_cmd.register(app)
_discover_cmd.register(app)
_registry_cmd.register(app)
_training_cmd.register(app)
_tune_cmd.register(app)
_extract_cmd.register(app)
_catalog_cmd.register(app)
_compose_cmd.register(app)
_solve_cmd.register(app)
_adapt_cmd.register(app)
_interop_cmd.register(app)
_explore_cmd.register(app)


def main() -> None:
    """Console-script entry point: user mistakes become one line on stderr and exit code 2."""
    try:
        app()
    except CliError as exc:
        print_error(exc)
        sys.exit(2)


__all__ = ["app", "main", "console"]
