"""Shared CLI plumbing: consoles and the user-error type that becomes a one-line message."""

from __future__ import annotations

import os
import re

from rich.console import Console
from rich.text import Text

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
