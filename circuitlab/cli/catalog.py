"""`circuitlab catalog ...`: browse, search and move the circuit catalog.

    circuitlab catalog list                       # circuits in the default catalog
    circuitlab catalog search --task add_mod_113 --min sufficiency=0.9 --order-by sufficiency
    circuitlab catalog show 3fa2c1 --json         # any record by id or unique prefix
    circuitlab catalog export all.jsonl
    circuitlab catalog import all.jsonl --catalog bolt://host:7687/neo4j   # SQLite -> Neo4j

The catalog is $CIRCUITLAB_CATALOG or ~/.circuitlab/catalog.db unless --catalog/-c is given,
after the subcommand like every option; before it (`catalog -c X list`) is still accepted.

Everything printed from the catalog or the command line is data, never markup: it goes to rich
as `plain` Text, with control characters made visible and long text cut (`--json` has it all).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from circuitlab.cli.common import CatalogOption, CliError, console, plain, visible

catalog_app = typer.Typer(no_args_is_help=True)  # its help is the callback's docstring

_CELL = 200  # characters of text in a table cell
_TEXT = 10_000  # characters of a label or description that `show` prints (the catalog's limit)
# What json.dumps leaves raw that a terminal may act on: DEL, C1 controls, bidi overrides.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@catalog_app.callback()
def _catalog_options(ctx: typer.Context, catalog: CatalogOption = None) -> None:
    """Browse, search, export and import the circuit catalog.

    Give --catalog/-c after the subcommand (`circuitlab catalog list -c runs/catalog.db`);
    before it is still accepted."""
    ctx.obj = {"catalog": catalog}


def _catalog_url(ctx: typer.Context, catalog: str | None) -> str | None:
    """--catalog after the subcommand, else before it (the older form); both must agree."""
    before = (ctx.obj or {}).get("catalog")
    if before is not None and catalog is not None and before != catalog:
        raise CliError(
            visible(
                f"--catalog given twice: {before!r} before the subcommand and {catalog!r} "
                "after it; give it once, after the subcommand"
            )
        )
    return catalog if catalog is not None else before


@contextmanager
def _open(ctx: typer.Context, catalog: str | None, create: bool = False) -> Iterator[Any]:
    """The catalog of --catalog; any CatalogError, opening or inside the block, becomes a
    one-line CliError (exit 2)."""
    from circuitlab.catalog import CatalogError, open_catalog

    url = _catalog_url(ctx, catalog)
    try:
        with open_catalog(url, create=create) as cat:
            yield cat
    except CatalogError as exc:
        raise CliError(visible(str(exc))) from None


def _echo_json(data: Any) -> None:
    text = json.dumps(data, indent=2, ensure_ascii=False)
    typer.echo(_JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text))


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _summaries_table(title: str, hits: list[Any]) -> Table:
    table = Table(title=plain(title))
    for column in ("id", "task", "label", "nodes", "edges", "suff.", "nec. drop", "gen.", "tags"):
        table.add_column(column, overflow="fold")
    for s in hits:
        table.add_row(
            plain(s.id[:12]),
            plain(s.task, _CELL),
            plain(s.label, _CELL),
            str(s.n_nodes),
            str(s.n_edges),
            _fmt(s.metrics.get("sufficiency")),
            _fmt(s.metrics.get("necessity")),
            _fmt(s.metrics.get("generality")),
            plain(", ".join(s.tags), _CELL),
        )
    return table


def _bounds(pairs: list[str] | None, flag: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise CliError(
                f"{flag} expects NAME=NUMBER (e.g. {flag} sufficiency=0.9), got {pair!r}"
            )
    return out


def _known_metrics(cat: Any, names: set[str]) -> None:
    """A metric that no circuit has is most likely a typo: say so rather than find nothing."""
    known = cat.metric_names() if names else []
    unknown = sorted(names - set(known))
    if known and unknown:
        raise CliError(
            visible(f"no circuit has a metric {unknown[0]!r}; known: {', '.join(known)}")
        )


@catalog_app.command("list")
def list_cmd(
    ctx: typer.Context,
    catalog: CatalogOption = None,
    kind: str = typer.Option(
        "circuit", help="task, model, circuit, feature, function, program, implements."
    ),
    limit: int = typer.Option(50, min=0, help="At most this many."),
    offset: int = typer.Option(0, min=0, help="Skip this many first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List records of one kind (circuits by default), by id."""
    with _open(ctx, catalog) as cat:
        if kind == "circuit":
            hits = cat.search(limit=limit, offset=offset)
            if as_json:
                _echo_json([asdict(h) for h in hits])
            else:
                console.print(_summaries_table(f"circuits in {cat.url}", hits))
            return
        ids = cat.ids(kind, limit=limit, offset=offset)
        names = cat.backend.names(ids)
        if as_json:
            _echo_json([{"id": i, "name": names.get(i, "")} for i in ids])
            return
        table = Table(title=plain(f"{kind} records in {cat.url}"))
        table.add_column("id")
        table.add_column("name")
        for i in ids:
            table.add_row(
                plain(i if kind == "task" else i[:12], _CELL), plain(names.get(i, ""), _CELL)
            )
        console.print(table)


@catalog_app.command("show")
def show_cmd(
    ctx: typer.Context,
    catalog: CatalogOption = None,
    record_id: str = typer.Argument(
        ..., metavar="ID", help="Record id or unique prefix (>= 4 chars)."
    ),
    top: int = typer.Option(10, min=0, help="Strongest edges to show for a circuit."),
    as_json: bool = typer.Option(False, "--json", help="Print the full record as JSON."),
) -> None:
    """Show one record: a circuit's interface, metrics and strongest edges; others as fields."""
    with _open(ctx, catalog) as cat:
        record = cat.get(record_id)
        graph = cat.graph(record.id, top_k=top) if record.kind == "circuit" else None
        data = record.to_dict()
        if as_json:
            _echo_json(data)
            return
        if graph is None:
            table = Table(title=plain(f"{record.kind} {data['id']}"), show_header=False)
            table.add_column("field")
            table.add_column("value", overflow="fold")
            for key, value in data.items():
                if key not in ("kind", "schema", "id"):
                    text = (
                        value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                    )
                    table.add_row(plain(key), plain(text, _TEXT, multiline=True))
            console.print(table)
            return
        _show_circuit(record, data, graph)


def _show_circuit(circuit: Any, data: dict[str, Any], graph: Any) -> None:
    head = Text(f"circuit {data['id']}", style="bold")
    console.print(Text.assemble(head, "  ", plain(circuit.interpretation.label, _TEXT)))
    console.print(
        plain(
            f"task {circuit.task}   model {circuit.model[:12]}   "
            f"{len(circuit.nodes)} nodes, {len(circuit.edges)} edges",
            _TEXT,
        )
    )
    if circuit.interpretation.description:
        console.print(plain(circuit.interpretation.description, _TEXT, multiline=True))
    iface = circuit.interface
    if iface is not None:
        ins = ", ".join(f"{p.name}: {p.domain} @{p.position}" for p in iface.inputs)
        console.print(
            plain(
                f"interface ({ins}) -> {iface.output.domain} @{iface.output.position}"
                + (f"   signature {iface.signature}" if iface.signature else ""),
                _TEXT,
            )
        )
    m = {k: v for k, v in data["metrics"].items() if v not in (None, {})}
    console.print(plain("metrics " + ", ".join(f"{k}={v}" for k, v in m.items()), _TEXT))
    tags = circuit.tags
    console.print(
        plain(
            f"tags {', '.join(tags.priors + tags.labels) or '-'}   complexity "
            f"{tags.complexity or '-'}   generality {_fmt(tags.generality) or '-'}",
            _TEXT,
        )
    )
    names = {n.feature.id: n.feature for n in circuit.nodes}
    table = Table(title=f"strongest {len(graph.edges)} edges")
    for column in ("source", "target", "weight"):
        table.add_column(column)

    def label(fid: str) -> Text:
        f = names[fid]
        pos = "" if f.position is None else f"@{f.position}"
        return plain(f.label or f"{f.node_type} L{f.layer}#{f.index}{pos}", _CELL)

    for e in graph.edges:
        table.add_row(label(e.source), label(e.target), f"{e.weight:+.4g}")
    console.print(table)


@catalog_app.command("search")
def search_cmd(
    ctx: typer.Context,
    catalog: CatalogOption = None,
    task: str = typer.Option(None, help="Task spec, e.g. add_mod_113."),
    model: str = typer.Option(None, help="Model id."),
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Tag that must be present (repeatable).")
    ] = None,
    domain: str = typer.Option(None, help="An input or output domain, e.g. Z_113."),
    complexity: str = typer.Option(None, help="Complexity class, e.g. low."),
    text: str = typer.Option(None, help="Words that must all occur in label, description, tags..."),
    feature: str = typer.Option(None, help="Feature id the circuit must use."),
    minimum: Annotated[
        list[str] | None,
        typer.Option(
            "--min",
            help="NAME=VALUE lower bound on a metric (repeatable). necessity is the share of "
            "accuracy lost when the circuit is ablated (high = necessary); the accuracy left "
            "is necessity_accuracy.",
        ),
    ] = None,
    maximum: Annotated[
        list[str] | None,
        typer.Option("--max", help="NAME=VALUE upper bound on a metric (repeatable)."),
    ] = None,
    order_by: str = typer.Option("id", help="id, task, or a metric name (best first)."),
    limit: int = typer.Option(50, min=0, help="At most this many results."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Search circuits by task, tags, interface domain, metric thresholds and text."""
    low, high = _bounds(minimum, "--min"), _bounds(maximum, "--max")
    with _open(ctx, catalog) as cat:
        hits = cat.search(
            task=task,
            model=model,
            tags=tag or (),
            domain=domain,
            complexity=complexity,
            text=text,
            feature=feature,
            minimum=low,
            maximum=high,
            order_by=order_by,
            limit=limit,
        )
        _known_metrics(cat, {*low, *high, order_by} - {"id", "task"})
        if as_json:
            _echo_json([asdict(h) for h in hits])
        else:
            console.print(_summaries_table(f"{len(hits)} circuits", hits))


@catalog_app.command("stats")
def stats_cmd(
    ctx: typer.Context,
    catalog: CatalogOption = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Numbers of records and relationships in the catalog."""
    with _open(ctx, catalog) as cat:
        stats = cat.stats()
    if as_json:
        _echo_json(asdict(stats))
        return
    table = Table(title=plain(f"{stats.backend} catalog {stats.url}"))
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in stats.counts.items():
        table.add_row(key, f"{value:,}")
    console.print(table)


@catalog_app.command("lineage")
def lineage_cmd(
    ctx: typer.Context,
    catalog: CatalogOption = None,
    record_id: str = typer.Argument(..., metavar="ID", help="Record id or unique prefix."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Task -> models -> derived models -> circuits -> functions -> programs around a record."""
    with _open(ctx, catalog) as cat:
        lin = cat.lineage(record_id)
    if as_json:
        _echo_json(
            {
                "root": lin.root,
                "nodes": [{"id": i, "kind": k, "name": n} for i, (k, n) in lin.nodes.items()],
                "links": [asdict(k) for k in lin.links],
            }
        )
        return
    table = Table(title=plain(f"lineage of {lin.root[:12]}"))
    for column in ("kind", "id", "name"):
        table.add_column(column)
    order = ("task", "model", "circuit", "function", "program")
    for kind in order:
        for i in lin.of_kind(kind):
            rid = i if kind == "task" else i[:12]
            table.add_row(kind, plain(rid, _CELL), plain(lin.nodes[i][1], _CELL))
    console.print(table)


@catalog_app.command("delete")
def delete_cmd(
    ctx: typer.Context,
    catalog: CatalogOption = None,
    record_id: str = typer.Argument(..., metavar="ID", help="Record id or unique prefix."),
    cascade: bool = typer.Option(False, help="Also delete the records that depend on it."),
) -> None:
    """Delete a record (refused while others depend on it, unless --cascade)."""
    with _open(ctx, catalog) as cat:
        gone = cat.delete(record_id, cascade=cascade)
    console.print(plain(f"deleted {len(gone)} record(s): " + ", ".join(i[:12] for i in gone)))


@catalog_app.command("export")
def export_cmd(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="JSON Lines file to write (replaced atomically).")],
    catalog: CatalogOption = None,
) -> None:
    """Write the whole catalog to one file (moves catalogs between backends)."""
    from circuitlab.catalog import CatalogError, export_catalog

    with _open(ctx, catalog) as cat:
        try:
            counts = export_catalog(cat, path)
        except (CatalogError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise CliError(visible(f"export to {path} failed: {reason}")) from None
    console.print(plain(f"exported to {path}: " + ", ".join(f"{v} {k}" for k, v in counts.items())))


@catalog_app.command("import")
def import_cmd(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="File written by `circuitlab catalog export`.")],
    catalog: CatalogOption = None,
) -> None:
    """Put every record of an export file into the catalog (same content, same ids)."""
    from circuitlab.catalog import CatalogError, check_export

    try:
        checked = check_export(path)  # before opening: a bad file creates no catalog
    except CatalogError as exc:
        raise CliError(visible(str(exc))) from None
    with _open(ctx, catalog, create=True) as cat:
        counts = checked.put_into(cat)
        url = cat.url
    console.print(
        plain(f"imported into {url}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    )


def register(app: typer.Typer) -> None:
    app.add_typer(catalog_app, name="catalog")
