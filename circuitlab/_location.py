"""The one rule for a plain path given as a store (`--catalog`, `--registry`, `open_catalog`,
`Registry.open`).

- A file path (an existing regular file, or a path ending in `.db` or `.sqlite`) is a SQLite
  catalog.
- A directory (an existing directory, or a path ending in `/`) is a folder of JSON function
  files, which only the registry can use.
- Any other new path keeps each store's default: a new SQLite file for a catalog, a new folder
  for a registry.

URLs (`sqlite:///...`, `neo4j://...`, `bolt://...`) are not plain paths and are never classified.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

SQLITE_SUFFIXES = (".db", ".sqlite")

PathKind = Literal["file", "directory"]


def path_kind(location: str | os.PathLike[str]) -> PathKind | None:
    """What a plain path names: "file" (a SQLite catalog), "directory" (a folder of JSON
    function files), or None when it says neither (a new path with no `.db`/`.sqlite` suffix
    and no trailing `/`)."""
    text = os.fspath(location)
    seps = (os.sep, os.altsep) if os.altsep else (os.sep,)
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # ~user of an unknown user: let the store report it
        path = Path(text)
    try:
        if path.is_dir() or text.endswith(seps):
            return "directory"
        if path.is_file() or path.suffix.lower() in SQLITE_SUFFIXES:
            return "file"
    except (OSError, ValueError):  # e.g. a NUL byte or a name too long: the store reports it
        return None
    return None


def sqlite_url(path: str | os.PathLike[str]) -> str:
    """`sqlite:///abs/path.db` for a SQLite file path (`~` expanded): the documented form, whose
    third slash starts the absolute path (`open_catalog` reads it back as `/abs/path.db`)."""
    absolute = Path(path).expanduser().resolve().as_posix()
    return f"sqlite://{absolute}" if absolute.startswith("/") else f"sqlite:///{absolute}"
