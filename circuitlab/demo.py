"""`make demo`: the main job on the embedded defaults, as the commands a user would type.

Each step prints the `circuitlab` command it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import shlex
import sys
import time

from circuitlab.cli import app
from circuitlab.cli.common import CliError, console, print_error

OUT = "runs/demo"
TASK = "add_mod_113"
CATALOG = f"{OUT}/catalog.db"  # a plain path is a SQLite file; sqlite:///x means /x


def run(*args: str) -> None:
    console.rule(f"[bold]$ circuitlab {shlex.join(args)}")
    try:
        app(list(args), standalone_mode=False)
    except CliError as exc:
        print_error(exc)
        sys.exit(2)


COMPOSE = f"""\
from circuitlab.compose import Library, Program
with Library("{CATALOG}") as lib:
    add = lib["{TASK}"]                                    # the extracted circuit, callable
    add3 = Program.trace(lambda a, b, c: add(add(a, b), c), name="add3")
    print(add3.to_python())
    check = lib.verify(add, lib.primitive("ADDMOD", p=113))  # on all 12,769 inputs
    print(f"circuit agrees with ADDMOD on {{check.agreement:.2%}} of {{check.n_examples}} inputs")
    lib.save(add3)                                         # a Program with CALLS in the catalog
"""


def compose() -> None:
    """Compose the extracted circuit with itself, as a Python script would."""
    console.rule("[bold]$ python  # compose the circuit")
    console.print(COMPOSE, highlight=False)
    from circuitlab.compose import CompositionError

    try:
        exec(COMPOSE, {})  # the snippet shown is the code that runs
    except CompositionError as exc:
        print_error(exc)
        sys.exit(2)


def main() -> None:
    start = time.perf_counter()
    run("tasks")
    run("train", "--task", TASK, "--recipe", "fast", "--seeds", "0", "--out", OUT, "--overwrite")
    run("runs", OUT)
    run_dir = f"{OUT}/{TASK}/fast-seed0"
    run("extract", run_dir, "--catalog", CATALOG)
    run("catalog", "list", "--catalog", CATALOG)
    compose()
    run(
        "run",
        "add3",
        "--inputs",
        "a=37,100",
        "--inputs",
        "b=75",
        "--inputs",
        "c=12",
        "--catalog",
        CATALOG,
        "--trace",
    )
    console.rule()
    console.print(
        f"demo finished in {time.perf_counter() - start:.0f}s.\n"
        f"run directory: {run_dir} (config.json, model.safetensors, metrics.jsonl, summary.json, "
        "curves.png)\n"
        f"extraction: {run_dir}/extraction (transcoder/, circuit.json, graphs/*.json for "
        "circuit-tracer's frontend, sufficiency.png, summary.json)\n"
        f"catalog: {CATALOG} (task, model, circuit, ADDMOD_113, the add3 program)"
    )


if __name__ == "__main__":
    main()
