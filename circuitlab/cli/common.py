"""Shared CLI plumbing: consoles and the user-error type that becomes a one-line message."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A user mistake: printed as one line on stderr, exit code 2, no traceback."""
