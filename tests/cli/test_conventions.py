"""One CLI convention across commands, checked on the whole typer app.

- A short flag means the same long option in every command.
- Every command that opens a catalog takes `--catalog/-c` as an option of its own, so it goes
  after the (sub)command, with one shared help text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import typer

from circuitlab.cli import app
from circuitlab.cli.common import CATALOG_HELP, REGISTRY_HELP

# The short flags the convention fixes; any other short flag must still be unambiguous.
KEPT = {"-c": "--catalog", "-o": "--out", "-r": "--recipe", "-s": "--seeds", "-t": "--task"}
# Every command that opens a catalog (a new one must take --catalog too: add it here).
CATALOG_COMMANDS = {
    "extract",
    "explore",
    "run",
    "solve",
    "catalog list",
    "catalog show",
    "catalog search",
    "catalog stats",
    "catalog lineage",
    "catalog delete",
    "catalog export",
    "catalog import",
}


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """(path, command) for the root, every group and every leaf command."""
    yield " ".join(path), cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


def _options(cmd: Any) -> Iterator[Any]:
    for param in cmd.params:
        if param.param_type_name == "option":
            yield param


def _is_group(cmd: Any) -> bool:
    return bool(getattr(cmd, "commands", None))


ROOT = typer.main.get_command(app)
COMMANDS = dict(_commands(ROOT))


def test_every_short_flag_has_one_meaning() -> None:
    meanings: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    shorts_of: dict[str, set[str]] = defaultdict(set)
    for path, cmd in COMMANDS.items():
        for opt in _options(cmd):
            names = [*opt.opts, *opt.secondary_opts]
            longs = [n for n in names if n.startswith("--")]
            for short in (n for n in names if not n.startswith("--")):
                assert len(longs) == 1, f"{path}: {short} must name one long option, {longs}"
                meanings[short][longs[0]].append(path or "circuitlab")
                shorts_of[longs[0]].add(short)
    clashes = {s: dict(m) for s, m in meanings.items() if len(m) > 1}
    assert not clashes, f"short flags with more than one meaning: {clashes}"
    assert {s: next(iter(m)) for s, m in meanings.items() if s in KEPT} == KEPT
    two = {long: sorted(s) for long, s in shorts_of.items() if len(s) > 1}
    assert not two, f"long options with several short forms: {two}"


def test_registry_rank_sparsity_and_name_are_long_only() -> None:
    for path, cmd in COMMANDS.items():
        for opt in _options(cmd):
            if {"--registry", "--rank", "--sparsity", "--name"} & set(opt.opts):
                assert all(n.startswith("--") for n in opt.opts), (path, opt.opts)


def test_every_command_opening_a_catalog_takes_catalog_after_the_subcommand() -> None:
    taking = set()
    for path, cmd in COMMANDS.items():
        catalog = [o for o in _options(cmd) if "--catalog" in o.opts]
        if not catalog:
            continue
        (opt,) = catalog
        assert opt.opts == ["--catalog", "-c"], (path, opt.opts)
        assert opt.help == CATALOG_HELP, f"{path}: --catalog must use the shared help"
        if _is_group(cmd):  # the older group-level form: every subcommand takes it too
            for name, sub in cmd.commands.items():
                assert any("--catalog" in o.opts for o in _options(sub)), f"{path} {name}"
        else:
            taking.add(path)
    assert taking == CATALOG_COMMANDS


def test_registry_option_is_shared() -> None:
    helps = {
        path: o.help
        for path, cmd in COMMANDS.items()
        for o in _options(cmd)
        if "--registry" in o.opts
    }
    assert set(helps) == {"discover", "registry list", "registry show"}
    assert set(helps.values()) == {REGISTRY_HELP}


def test_help_states_the_convention() -> None:
    text = ROOT.help
    for flag in ("-c --catalog", "-o --out", "-r --recipe", "-s --seeds", "-t --task"):
        assert flag in text
    assert ".db or .sqlite" in text and "ending in /" in text
    for help_text in (CATALOG_HELP, REGISTRY_HELP):
        assert ".db or .sqlite) is a SQLite catalog" in help_text
        assert "ending in /) is a folder of JSON function files" in help_text
