"""`circuitlab run PROGRAM --inputs a=1,2,3`: run a stored composition program."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from circuitlab.cli.common import CatalogOption, CliError, console

_HELP_INPUTS = (
    "One per program input: NAME=VALUES, with comma-separated integers (a=1,2,3) or JSON "
    '(grid="[[0,1],[2,0]]" for one grid, a list of grids for a batch). Inputs broadcast.'
)


def _value(text: str, name: str):
    try:
        return (
            json.loads(text) if text.lstrip().startswith("[") else [int(v) for v in text.split(",")]
        )
    except ValueError:
        raise CliError(f"--inputs {name}: cannot read {text!r} as integers or JSON") from None


def _inputs(items: list[str], program) -> list:
    given = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise CliError(f"--inputs takes NAME=VALUES, got {item!r}")
        given[name.strip()] = _value(text, name)
    names = [p.name for p in program.inputs]
    unknown = sorted(set(given) - set(names))
    missing = [n for n in names if n not in given]
    if unknown or missing:
        raise CliError(
            f"{program.name} takes inputs {names}: "
            + "; ".join(
                x
                for x in (
                    f"unknown {unknown}" if unknown else "",
                    f"missing {missing}" if missing else "",
                )
                if x
            )
        )
    return [given[n] for n in names]


def run_cmd(
    program: str = typer.Argument(
        ..., help="A program JSON file, or a catalog program id (prefix) or name."
    ),
    inputs: list[str] = typer.Option([], "--inputs", "-i", help=_HELP_INPUTS),
    catalog: CatalogOption = None,
    trace: bool = typer.Option(False, "--trace", help="Print every step and the features fired."),
    as_json: bool = typer.Option(False, "--json", help="Print the outputs (and trace) as JSON."),
) -> None:
    """Run a composition program on inputs and print its outputs.

    The circuits and functions it calls come from the catalog (--catalog). The program is
    type-checked against their interfaces before anything runs; values outside an input's
    domain are refused.
    """
    from circuitlab.compose import CompositionError, Library, Program

    try:
        with Library(catalog) as lib:
            path = Path(program)
            if path.suffix == ".json" or path.is_file():
                try:
                    data = json.loads(path.read_text())
                except (OSError, ValueError) as exc:
                    raise CliError(f"cannot read program {path}: {exc}") from None
                prog = Program.from_dict(data, lib)
            else:
                prog = lib.program(program)
            args = _inputs(inputs, prog)
            out, steps = prog.run(*args, trace=True) if trace else (prog.run(*args), None)
    except CompositionError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        data = {"program": prog.name, "output": out.tolist()}
        if steps is not None:
            data["trace"] = steps.to_dict()
        console.print_json(json.dumps(data))
        return
    console.print(prog.to_python(), highlight=False, markup=False)
    if steps is not None:
        console.print(steps.to_text(), highlight=False, markup=False)
    console.print(f"{prog.name}(...) = {json.dumps(out.tolist())}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
