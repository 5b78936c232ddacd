"""Where functions persist: a small store protocol and a file-backed JSON store.

The registry talks to storage only through `FunctionStore`, so the same registry runs on a
directory of JSON files, in memory, or on the circuit catalog (`catalog_store.py`), where
functions sit beside circuits as `Function` records with `COMPOSES` relationships. A stored
version is immutable: putting the same name and version twice is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Protocol, runtime_checkable

from circuitlab.registry.domains import RegistryError
from circuitlab.registry.function import Function


@runtime_checkable
class FunctionStore(Protocol):
    """Storage of immutable function versions."""

    def put(self, fn: Function) -> None:
        """Store a new version; refuse a name@version that already exists."""

    def get(self, name: str, version: int | None = None) -> Function | None:
        """One version (the latest when version is None), or None when absent."""

    def versions(self, name: str) -> list[int]:
        """Stored versions of `name`, ascending (empty when unknown)."""

    def all(self) -> list[Function]:
        """Every stored version, ordered by name then version."""


class MemoryStore:
    """A store that lives as long as the process (the default for throwaway searches)."""

    def __init__(self) -> None:
        self._fns: dict[tuple[str, int], Function] = {}

    def put(self, fn: Function) -> None:
        key = (fn.name, fn.version)
        if key in self._fns:
            raise RegistryError(f"{fn.ref} is already stored")
        self._fns[key] = fn

    def get(self, name: str, version: int | None = None) -> Function | None:
        if version is None:
            vs = self.versions(name)
            return self._fns[(name, vs[-1])] if vs else None
        return self._fns.get((name, version))

    def versions(self, name: str) -> list[int]:
        return sorted(v for n, v in self._fns if n == name)

    def all(self) -> list[Function]:
        return [self._fns[k] for k in sorted(self._fns)]


class JsonFileStore:
    """One JSON file per function version, `<root>/<NAME>@<VERSION>.json`, written atomically.

    A write goes to a temporary file in the same directory, is flushed to disk, and is then
    hard-linked to its final name, which fails if the name exists: two writers can never
    overwrite each other, and a crash leaves either the whole record or nothing.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"registry path {self.root} exists and is not a directory")

    def _path(self, name: str, version: int) -> Path:
        return self.root / f"{name}@{version}.json"

    def put(self, fn: Function) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self._path(fn.name, fn.version)
        if final.exists():
            raise RegistryError(f"{fn.ref} is already stored in {self.root}")
        data = json.dumps(fn.to_dict(), indent=1, sort_keys=True, allow_nan=False)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise RegistryError(f"{fn.ref} is already stored in {self.root}") from None
        finally:
            os.unlink(tmp)

    def _load(self, path: Path) -> Function:
        try:
            return Function.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
            if isinstance(exc, RegistryError):
                raise
            raise RegistryError(f"corrupt function record {path}: {exc}") from None

    def get(self, name: str, version: int | None = None) -> Function | None:
        if version is None:
            vs = self.versions(name)
            if not vs:
                return None
            version = vs[-1]
        path = self._path(name, version)
        return self._load(path) if path.exists() else None

    def versions(self, name: str) -> list[int]:
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.glob(f"{name}@*.json"):
            stem = p.stem
            if stem.rsplit("@", 1)[0] == name and stem.rsplit("@", 1)[1].isdigit():
                out.append(int(stem.rsplit("@", 1)[1]))
        return sorted(out)

    def all(self) -> list[Function]:
        if not self.root.is_dir():
            return []
        fns = [self._load(p) for p in self.root.glob("*@*.json") if not p.name.startswith(".")]
        return sorted(fns, key=lambda f: (f.name, f.version))
