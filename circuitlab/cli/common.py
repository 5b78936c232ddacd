"""Shared CLI plumbing: consoles and the user-error type that becomes a one-line message."""

from __future__ import annotations

import os

from rich.console import Console

console = Console()
if not console.is_terminal and "COLUMNS" not in os.environ:
    # piped to a file or a log: rich would assume 80 columns and cut run paths in tables
    console = Console(width=140)
err_console = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A user mistake: printed as one line on stderr, exit code 2, no traceback."""


def print_error(exc: BaseException) -> None:
    """One line on stderr; the message is escaped, since it may quote user input or catalog
    text that rich would otherwise read as markup (`[/x]` raises, `[bold]` restyles)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
