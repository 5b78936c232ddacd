"""`circuitlab solve TASKS.json`: few-shot program search on ARC-style tasks."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Annotated, Any

import typer

from circuitlab.cli.common import CatalogOption, CliError, console

MAX_DEPTH = 5


def register(app: typer.Typer) -> None:
    @app.command("solve")
    def solve_cmd(
        tasks: Annotated[
            Path, typer.Argument(help="Tasks file (format: circuitlab/compose/arc.py).")
        ],
        depth: int = typer.Option(3, "--depth", help="Most library calls in a program."),
        shots: int = typer.Option(
            None, "--shots", help="Use only the first K demonstrations of each task."
        ),
        catalog: CatalogOption = None,
        as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    ) -> None:
        """Find the shortest program over the library that explains every demonstration of
        each task, and score its predictions on the test inputs. The library: the registry's
        modular primitives for the moduli the tasks use and its grid primitives (plus, with
        --catalog, the catalog's circuits and functions). A task counts as correct only when
        every test output is exact; with no program exact on all demonstrations the answer
        is "no program found", never a guess."""
        from circuitlab.compose.arc import TaskFormatError, default_library, load_tasks
        from circuitlab.compose.types import CompositionError

        if not 0 <= depth <= MAX_DEPTH:
            raise CliError(f"--depth must be between 0 and {MAX_DEPTH}, got {depth}")
        if shots is not None and shots < 1:
            raise CliError(f"--shots must be at least 1, got {shots}")
        if not tasks.is_file():
            raise CliError(f"{tasks}: no such file")
        try:
            loaded = load_tasks(tasks)
            library = default_library(loaded)
            if catalog:
                library += _catalog_functions(catalog)
        except (TaskFormatError, CompositionError) as exc:
            raise CliError(str(exc)) from None
        results = [_run(task, library, depth, shots) for task in loaded]
        summary = _summary(results)
        if as_json:
            console.print_json(json.dumps({"tasks": results, "summary": summary}))
            return
        for r in results:
            _print(r)
        _print_summary(summary, depth, shots)


def _catalog_functions(url: str) -> list[Any]:
    """The catalog's runnable circuits and its registry functions (an existing catalog only)."""
    from circuitlab.compose.library import Library

    lib = Library(url)
    return [*lib.circuits(), *lib.functions()]


def _run(task: Any, library: list[Any], depth: int, shots: int | None) -> dict[str, Any]:
    import numpy as np

    from circuitlab.compose.solver import solve
    from circuitlab.compose.types import CompositionError

    train = task.train[:shots] if shots else task.train
    wanted = [o for _, o in task.test]
    scored = all(o is not None for o in wanted)
    row = {"name": task.name, "demonstrations": len(train)}
    row["marked_unsolvable"] = task.program is not None and task.steps is None
    try:
        sol = solve(
            train,
            [i for i, _ in task.test],
            library,
            max_depth=depth,
            domain=task.domain,
            name=task.name,
        )
    except CompositionError as exc:  # a task the solver cannot take (e.g. mixed grid shapes)
        return row | {
            "status": "not searched", "correct": False if scored else None,
            "message": str(exc), "hypotheses": 0, "seconds": 0.0, "depth": None,
            "circuit_calls": 0, "program": None, "predictions": None,
        }  # fmt: skip
    correct = None
    if scored:
        correct = sol.predictions is not None and all(
            np.array_equal(p, o) for p, o in zip(sol.predictions, wanted, strict=True)
        )
    return row | {
        "status": sol.status,
        "correct": correct,
        "message": sol.message,
        "hypotheses": sol.hypotheses_tested,
        "seconds": sol.seconds,
        "depth": sol.depth,
        "circuit_calls": sol.circuit_calls,
        "program": sol.program.to_python() if sol.program else None,
        "predictions": None if sol.predictions is None else [p.tolist() for p in sol.predictions],
    }


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in results if r["correct"] is not None]
    solved = [r for r in results if r["status"] == "solved"]
    marked = [r for r in results if r["marked_unsolvable"]]
    return {
        "tasks": len(results),
        "scored": len(scored),
        "correct": sum(bool(r["correct"]) for r in scored),
        "accuracy": sum(bool(r["correct"]) for r in scored) / len(scored) if scored else None,
        "solved": len(solved),
        "wrong": sum(r["correct"] is False and r["status"] == "solved" for r in scored),
        "ambiguous": sum(r["status"] == "ambiguous" for r in results),
        "no_program": sum(r["status"] == "no program found" for r in results),
        "marked_unsolvable": len(marked),
        "abstained_on_marked": sum(r["status"] != "solved" for r in marked),
        "median_hypotheses_per_solved": statistics.median([r["hypotheses"] for r in solved])
        if solved
        else None,
        "median_seconds": statistics.median([r["seconds"] for r in results]),
        "total_seconds": sum(r["seconds"] for r in results),
        "circuit_calls": sum(r["circuit_calls"] for r in results),
    }


def _print(r: dict[str, Any]) -> None:
    from rich.markup import escape

    verdict = {True: "[green]correct[/]", False: "[red]wrong[/]", None: "solved"}
    head = verdict[r["correct"]] if r["status"] == "solved" else f"[yellow]{r['status']}[/]"
    calls = f"{r['depth']} call(s), " if r["depth"] is not None else ""
    console.print(
        f"[bold]{escape(r['name'])}[/]: {head} ({calls}{r['hypotheses']:,} hypotheses, "
        f"{r['seconds']:.3f} s)",
        highlight=False,
    )
    if r["program"]:
        console.print(
            "\n".join("    " + line for line in r["program"].splitlines()),
            highlight=False,
            markup=False,
        )
    else:
        console.print(f"    {r['message']}", highlight=False, markup=False)


def _print_summary(s: dict[str, Any], depth: int, shots: int | None) -> None:
    demos = f"first {shots} demonstration(s)" if shots else "all demonstrations"
    console.print(f"\ndepth {depth}, {demos}")
    if s["scored"]:
        console.print(
            f"accuracy: {s['correct']}/{s['scored']} tasks exact on every test output "
            f"({100 * s['accuracy']:.1f}%)"
        )
    console.print(
        f"solved {s['solved']} ({s['wrong']} wrong), ambiguous {s['ambiguous']}, no program "
        f"found {s['no_program']}; {s['abstained_on_marked']} of the {s['marked_unsolvable']} "
        "tasks the file marks unsolvable were refused"
    )
    med = s["median_hypotheses_per_solved"]
    console.print(
        f"hypotheses per solved task (median): {med if med is not None else '-'}; time per "
        f"task (median): {s['median_seconds']:.3f} s, total {s['total_seconds']:.2f} s; "
        f"circuit calls: {s['circuit_calls']:,}"
    )
