"""`make demo`: the main job on the embedded defaults, as the commands a user would type.

Each step prints the `circuitlab` command it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import shlex
import sys
import time

from circuitlab.cli import app
from circuitlab.cli.common import CliError, console, err_console

OUT = "runs/demo"
TASK = "add_mod_113"
CATALOG = f"{OUT}/catalog.db"  # a plain path is a SQLite file; sqlite:///x means /x


def run(*args: str) -> None:
    console.rule(f"[bold]$ circuitlab {shlex.join(args)}")
    try:
        app(list(args), standalone_mode=False)
    except CliError as exc:
        err_console.print(f"[bold red]error:[/] {exc}")
        sys.exit(2)


def main() -> None:
    start = time.perf_counter()
    run("tasks")
    run("train", "--task", TASK, "--recipe", "fast", "--seeds", "0", "--out", OUT, "--overwrite")
    run("runs", OUT)
    run_dir = f"{OUT}/{TASK}/fast-seed0"
    run("extract", run_dir, "--catalog", CATALOG)
    run("catalog", "--catalog", CATALOG, "list")
    console.rule()
    console.print(
        f"demo finished in {time.perf_counter() - start:.0f}s.\n"
        f"run directory: {run_dir} (config.json, model.safetensors, metrics.jsonl, summary.json, "
        "curves.png)\n"
        f"extraction: {run_dir}/extraction (transcoder/, circuit.json, graphs/*.json for "
        "circuit-tracer's frontend, sufficiency.png, summary.json)\n"
        f"catalog: {CATALOG}"
    )


if __name__ == "__main__":
    main()
