"""`circuitlab registry list | show NAME`: browse the symbolic registry."""

from __future__ import annotations

import json

import typer

from circuitlab.cli.common import CliError, RegistryOption, console
from circuitlab.cli.discover import default_registry

group = typer.Typer(help="Browse the symbolic function registry.", no_args_is_help=True)


@group.command("list")
def list_cmd(
    registry: RegistryOption = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Functions by layer: name, version, signature, status, expression."""
    from rich.markup import escape
    from rich.table import Table

    from circuitlab.registry import Registry, RegistryError

    try:
        fns = Registry.open(registry or default_registry()).functions()
    except RegistryError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        console.print_json(json.dumps([f.to_dict() for f in fns]))
        return
    table = Table(title=f"registry ({len(fns)} functions)")
    for col in ("layer", "function", "signature", "status", "expression"):
        table.add_column(col)
    for f in fns:
        cells = (f.ref, f.signature(), f.status, f.render())
        table.add_row(str(f.layer), *(escape(c) for c in cells))
    console.print(table)


@group.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="Function name."),
    version: int = typer.Option(None, "--version", "-v", help="Version (default: latest)."),
    registry: RegistryOption = None,
) -> None:
    """One function record as JSON (expression, constants, provenance, what it composes)."""
    from circuitlab.registry import Registry, RegistryError

    try:
        fn = Registry.open(registry or default_registry()).get(name, version)
    except RegistryError as exc:
        raise CliError(str(exc)) from None
    console.print_json(json.dumps(fn.to_dict()))


def register(app: typer.Typer) -> None:
    app.add_typer(group, name="registry")
