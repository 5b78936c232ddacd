"""`circuitlab discover DATA.csv`: find the function behind a table of examples."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from circuitlab._location import sqlite_url
from circuitlab.cli.common import CliError, RegistryOption, console

if TYPE_CHECKING:
    from circuitlab.registry.discover import StageRun

REGISTRY_ENV = "CIRCUITLAB_REGISTRY"

# registry.discover.NUMERIC_GROUPS, for --help without importing the registry (numpy) when the
# CLI starts; a test keeps the two equal, and DiscoveryConfig checks the names given
NUMERIC_GROUPS = (
    "arithmetic",
    "integer",
    "modular",
    "bitwise",
    "comparison",
    "control",
    "elementary",
)


CATALOG_ENV = "CIRCUITLAB_CATALOG"


def default_registry() -> str:
    """Where functions live: $CIRCUITLAB_REGISTRY; else the catalog named by $CIRCUITLAB_CATALOG
    (functions beside circuits); else the directory ~/.circuitlab/functions."""
    if os.environ.get(REGISTRY_ENV):
        return os.environ[REGISTRY_ENV]
    catalog = os.environ.get(CATALOG_ENV)
    if catalog:
        return catalog if "://" in catalog else sqlite_url(catalog)
    return str(Path.home() / ".circuitlab" / "functions")


def register(app: typer.Typer) -> None:
    @app.command("discover")
    def discover_cmd(
        data: Annotated[Path, typer.Argument(help="CSV with a header; one row per example.")],
        output: str = typer.Option(
            None, "--output", "-y", help="Output column (default: the last column)."
        ),
        name: str = typer.Option(
            None, "--name", help="Function name (default: the output column, upper-case)."
        ),
        registry: RegistryOption = None,
        save: bool = typer.Option(
            True, "--register/--no-register", help="Store the function found in the registry."
        ),
        approximate: bool = typer.Option(
            False, "--approximate/--exact", help="On noisy data, accept the best approximate fit."
        ),
        proposer: str = typer.Option(
            "uniform", "--proposer", help="Search order: uniform or guide (learned)."
        ),
        seed: int = typer.Option(
            0, "--seed", help="Seed for the held-out rows and the probe inputs."
        ),
        max_seconds: float = typer.Option(
            60.0, "--max-seconds", min=0.1, help="Give up after this long."
        ),
        max_cost: int | None = typer.Option(
            None,
            "--max-cost",
            min=1,
            max=30,
            help="Largest expression cost searched (uniform proposer: 1 per operation); "
            "default 9, or 5 with --approximate.",
            show_default=False,
        ),
        modulus: list[str] | None = typer.Option(
            None,
            "--modulus",
            metavar="M",
            help="Modulus of the modular operations (repeat it, or give a comma list: "
            "--modulus 7,8); each is tried in its own stage, in the order given. Default: "
            "inferred from the data (periods of the outputs, their range, the inputs' ranges).",
            show_default=False,
        ),
        groups: str | None = typer.Option(
            None,
            "--groups",
            metavar="GROUPS",
            help="Search exactly these primitive groups, in one search (one per modulus "
            "with modular): a comma list of "
            f"{', '.join(NUMERIC_GROUPS)}. Default: a staged search, groups chosen from the "
            "data (arithmetic first, then integer division, modular arithmetic for each "
            "candidate modulus, bitwise and comparisons when the data look like it).",
            show_default=False,
        ),
        search_rows: str | None = typer.Option(
            None,
            "--search-rows",
            metavar="N",
            help="Training rows every candidate is evaluated on, at least 8 (default 256): a "
            "larger table is searched on a seeded sample of its rows (and at most N/2 held-out "
            "rows), so memory and time follow N, not the table; a fit found on the sample is "
            "accepted only if it holds on every row.",
            show_default=False,
        ),
        memory: str | None = typer.Option(
            None,
            "--memory",
            metavar="SIZE",
            help="Memory budget of each search: bytes, or a size such as 512M or 2G (powers of "
            "1024; default 2G). The search keeps as many distinct candidates as fit (at most "
            "400,000) and says which limit stopped it.",
            show_default=False,
        ),
        units: Path | None = typer.Option(
            None,
            "--units",
            metavar="CSV",
            help="Physical units of the columns, for dimensional analysis: a CSV with a "
            "header, one row a variable (its name as in DATA, optional description columns, "
            "then its exponent of each base dimension, e.g. 'v,Velocity,1,-1,0' for m, s, kg), "
            "the output included. The search then looks for y = P * f(g), P a product of powers "
            "with the units of y and g the dimensionless groups, before the plain search.",
            show_default=False,
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    ) -> None:
        """Discover the simplest function that reproduces DATA exactly (or approximately).

        The functions of the registry (--registry) are building blocks of the search."""
        from rich.markup import escape
        from rich.table import Table

        from circuitlab.registry import Registry, RegistryError
        from circuitlab.registry.discover import (
            DiscoveryConfig,
            check_register_name,
            register_found,
            search,
        )
        from circuitlab.registry.domains import check_name
        from circuitlab.registry.examples import Examples

        try:
            examples = Examples.from_csv(data, output)
            fname = name or examples.output_name.upper()
            reg = Registry.open(registry or default_registry())
            cfg = DiscoveryConfig(
                seed=seed,
                max_seconds=max_seconds,
                max_cost=max_cost,
                approximate=approximate,
                groups=groups,  # a comma list, checked by DiscoveryConfig
                moduli=None if modulus is None else ",".join(modulus),
                # strings, checked (and a size such as 2G read) by DiscoveryConfig
                **({} if search_rows is None else {"search_rows": search_rows}),
                **({} if memory is None else {"memory_bytes": memory}),
            )
            if save:  # a name taken by another function is refused before any work
                check_register_name(reg, fname, examples, cfg.rtol)
            else:  # nothing is written, so a taken name is fine
                check_name(fname)
            if examples.renamed and not as_json:
                console.print(
                    "columns renamed to identifiers: "
                    + escape(", ".join(f"{h!r} -> {i}" for h, i in examples.renamed))
                )
            dims = None if units is None else _units(units, examples)
            result = search(
                examples,
                name=fname,
                registry=reg,
                config=cfg,
                proposer=_proposer(proposer),
                units=dims,
            )
            stored, written = None, False
            if result.function is not None and save:
                stored, written = register_found(reg, result.function, cfg.rtol)
            elif result.function is not None and fname in reg:
                stored = reg.same_as(result.function, cfg.rtol)
        except RegistryError as exc:
            raise CliError(str(exc)) from None
        if as_json:
            out = result.summary()
            out["table"] = [
                {k: v for k, v in vars(r).items() if not k.startswith("_")} for r in result.table
            ]
            out["registered"] = stored.ref if stored else None
            out["written"] = written
            out["renamed"] = dict(examples.renamed)
            if result.function is not None:
                out["record"] = (stored or result.function).to_dict()
            console.print_json(json.dumps(out))
        else:
            table = Table(title=f"{escape(str(fname))}: fits found (loss = MSE on training rows)")
            for col in ("", "complexity", "loss", "score", "expression", "sympy"):
                table.add_column(col)
            for r in result.table:
                table.add_row(
                    "*" if r.chosen else "",
                    str(r.complexity),
                    f"{r.loss:.4g}",
                    f"{r.score:.3g}",
                    escape(r.expression),
                    escape(r.sympy),
                )
            console.print(table)
            s = result.stats
            console.print(
                f"{s.candidates:,} candidates and {s.pairs:,} pair fits in "
                f"{s.seconds:.2f} s (cost level {s.level}, proposer {result.proposer}); "
                f"{cfg.cost_limit_note}"
            )
            if len(result.stages) > 1 or any(r.stage.method for r in result.stages):
                console.print("stages: " + escape("; ".join(_stage_line(r) for r in result.stages)))
            if result.units:
                console.print(escape(result.units))
            if s.stopped.startswith(("time", "bank")):
                console.print(f"search stopped early: {escape(s.stopped)}")
        if result.function is None:
            raise CliError(result.message)
        if not as_json:
            fn = stored or result.function
            ignored = [c for c, used in result.relevance.items() if not used]
            console.print(
                f"[bold]{result.status}[/]: {escape(fn.signature())} = {escape(fn.render())}"
            )
            if ignored:
                console.print(
                    f"columns not used (resampling them leaves the output unchanged): "
                    f"{escape(', '.join(ignored))}"
                )
            if stored and written:
                console.print(f"registered {escape(stored.ref)} (layer {stored.layer})")
            elif stored:
                console.print(
                    f"already registered as {escape(stored.ref)} (same definition); nothing written"
                )
            elif fname in reg:
                console.print(
                    f"the registry's {escape(reg.get(fname).ref)} is a different function; "
                    "to register this one, choose another --name"
                )


def _stage_line(run: StageRun) -> str:
    """`arithmetic to cost 5: no fit`, one stage search of the run (`power law (arithmetic),
    cost 7: exact` for a fit made without a search)."""
    if run.stage.method:
        return f"{run.stage.label}, cost {run.max_cost}: {'exact' if run.found else 'no fit'}"
    if run.found:
        what = "exact"
    elif run.stats.stopped.startswith("time"):
        what = "its time share ran out"
    elif run.stats.stopped.startswith("bank"):
        what = "bank limit"
    else:
        what = "no fit"
    return f"{run.stage.label} to cost {run.max_cost}: {what}"


def _units(path: Path, examples):
    """The units table at `path`, keyed by the columns' identifiers (a header renamed to an
    identifier keeps its row)."""
    from circuitlab.registry import Units

    table = Units.read(path)
    ident = dict(examples.renamed)
    return Units(table.base, {ident.get(k, k): v for k, v in table.table.items()})


def _proposer(name: str):
    from circuitlab.registry.proposer import UniformProposer

    if name == "uniform":
        return UniformProposer()
    if name == "guide":
        from circuitlab.registry.guide import load_guide

        return load_guide()
    raise CliError(f"--proposer must be uniform or guide, got {name!r}")
