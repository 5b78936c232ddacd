"""Shared CLI plumbing: consoles, the user-error type that becomes a one-line message, and the
options several commands share (one definition, one help text each)."""

from __future__ import annotations

import os
import re
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

console = Console()
if not console.is_terminal and "COLUMNS" not in os.environ:
    # piped to a file or a log: rich would assume 80 columns and cut run paths in tables
    console = Console(width=140)
err_console = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A user mistake: printed as one line on stderr, exit code 2, no traceback."""


# The rule for a plain path given as a store, the same for --catalog and --registry (see
# circuitlab/_location.py): a file path is a SQLite catalog, a directory a folder of JSON
# function files, which only the registry can use.
STORE_RULE = (
    "A file path (an existing file, or one ending in .db or .sqlite) is a SQLite catalog; a "
    "directory (an existing one, or a path ending in /) is a folder of JSON function files, "
    "which only --registry takes."
)

CATALOG_HELP = (
    "The catalog: a SQLite file, sqlite:///path.db, neo4j:// or bolt:// URL (Neo4j credentials "
    f"from NEO4J_USER / NEO4J_PASSWORD). {STORE_RULE} Any other new path becomes a new SQLite "
    "file. Default, where a command needs a catalog: $CIRCUITLAB_CATALOG, else "
    "~/.circuitlab/catalog.db."
)

REGISTRY_HELP = (
    "The function registry: a folder of JSON function files, or a catalog (a SQLite file, "
    "sqlite:///..., neo4j:// or bolt:// URL) holding the functions beside its circuits. "
    f"{STORE_RULE} Any other new path becomes a new folder. Default: $CIRCUITLAB_REGISTRY, "
    "else the catalog $CIRCUITLAB_CATALOG, else ~/.circuitlab/functions/."
)

# `catalog: CatalogOption = None` in every command that opens a catalog: -c/--catalog, an
# option of the command itself, so it goes after the subcommand.
CatalogOption = Annotated[
    str | None, typer.Option("--catalog", "-c", metavar="CATALOG", help=CATALOG_HELP)
]
# --registry has no short form: -r is --recipe everywhere.
RegistryOption = Annotated[
    str | None, typer.Option("--registry", metavar="REGISTRY", help=REGISTRY_HELP)
]


def print_error(exc: BaseException) -> None:
    """One line on stderr; the message is escaped, since it may quote user input or catalog
    text that rich would otherwise read as markup (`[/x]` raises, `[bold]` restyles)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")


# C0 controls (newline aside), DEL, C1 controls, and the bidirectional overrides and isolates
# that reorder what a terminal shows ("Trojan Source").
_CONTROLS = "\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
_UNSAFE = {True: re.compile(f"[{_CONTROLS}]"), False: re.compile(f"[{_CONTROLS}\n]")}
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text: str, multiline: bool = False) -> str:
    """`text` with control characters written as escapes (ESC as `\\x1b`), so data never
    drives the terminal; newlines are kept only when `multiline`."""
    return _UNSAFE[multiline].sub(_escape_control, text)


def plain(value: object, limit: int | None = None, multiline: bool = False) -> Text:
    """Data (user input, catalog text) for rich output: a `Text`, which rich never reads as
    markup, with control characters made `visible`, and cut after `limit` characters with a
    note of the full length (rich takes minutes to wrap a megabyte)."""
    text = str(value)
    if limit is not None and len(text) > limit:
        return Text(visible(text[:limit], multiline) + f"… ({len(text):,} characters)")
    return Text(visible(text, multiline))
