"""The one rule for a plain path given as a store (`circuitlab/_location.py`): a file path is a
SQLite catalog, a directory a folder of JSON function files, which `open_catalog` refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuitlab._location import path_kind, sqlite_url
from circuitlab.catalog import CatalogError, open_catalog


def test_path_kind(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    (tmp_path / "folder.db").mkdir()
    assert path_kind(tmp_path / "plain") == "file"  # an existing regular file
    assert path_kind(tmp_path / "new.db") == "file"
    assert path_kind(str(tmp_path / "new.SQLITE")) == "file"
    assert path_kind(tmp_path) == "directory"
    assert path_kind(tmp_path / "folder.db") == "directory"  # what exists wins over a suffix
    assert path_kind(f"{tmp_path}/new/") == "directory"
    assert path_kind(f"{tmp_path}/new.db/") == "directory"
    assert path_kind(tmp_path / "new") is None  # neither mark: each store keeps its default
    assert path_kind("bad\x00name.db") in ("file", None)  # never raises


def test_sqlite_url_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = sqlite_url("runs/catalog.db")
    assert url == f"sqlite://{tmp_path.resolve()}/runs/catalog.db"  # sqlite:///tmp/...
    assert url.startswith("sqlite:///") and not url.startswith("sqlite:////")
    (tmp_path / "runs").mkdir()
    with open_catalog(url) as cat:
        assert cat.stats().backend == "sqlite"
    assert (tmp_path / "runs" / "catalog.db").is_file()


@pytest.mark.parametrize("form", ["existing", "slash"])
def test_open_catalog_refuses_a_directory(tmp_path: Path, form: str) -> None:
    folder = tmp_path / "functions"
    if form == "existing":
        folder.mkdir()
    given = str(folder) if form == "existing" else f"{folder}/"
    with pytest.raises(CatalogError, match="is a directory: a catalog is a SQLite file or a URL"):
        open_catalog(given)
    assert folder.exists() == (form == "existing")


def test_file_paths_and_urls_still_open(tmp_path: Path) -> None:
    with open_catalog(tmp_path / "a.db") as cat:
        assert cat.stats().backend == "sqlite"
    with open_catalog(tmp_path / "no_suffix") as cat:  # a new path with neither mark: a file
        assert cat.stats().backend == "sqlite"
    assert (tmp_path / "no_suffix").is_file()
    with open_catalog(sqlite_url(tmp_path / "a.db"), create=False) as cat:
        assert cat.stats().backend == "sqlite"
