"""The registry on the circuit catalog: Function records with COMPOSES relationships."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from circuitlab.registry import Function, Registry, RegistryError, Var
from circuitlab.registry.cases import cases
from circuitlab.registry.discover import discover

from .test_core import _energy_registry

catalog = pytest.importorskip("circuitlab.catalog")

X, Y = Var(0), Var(1)


def test_functions_are_catalog_records_with_composes_edges(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    reg = Registry.open(url)
    _energy_registry(reg)
    again = Registry.open(url)
    assert [f.to_dict() for f in again] == [f.to_dict() for f in reg]
    with catalog.open_catalog(url) as cat:
        ids = {cat.get(i).name: i for i in cat.ids("function")}
        total = cat.get(ids["TOTAL_E"])
        assert total.expression == "ADD(KE(m, v), PE(m, h))"
        assert [(s.slot, s.function) for s in total.composes] == [
            ("s0", ids["KE"]),
            ("s1", ids["PE"]),
        ]
        lineage = cat.lineage(ids["TOTAL_E"])
        assert {(ln.rel, ln.src, ln.dst) for ln in lineage.links} == {
            ("COMPOSES", ids["TOTAL_E"], ids["KE"]),
            ("COMPOSES", ids["TOTAL_E"], ids["PE"]),
        }
        with pytest.raises(catalog.CatalogError):  # KE is composed into TOTAL_E: kept
            cat.delete(ids["KE"])
    with pytest.raises(RegistryError, match="already exists"):
        again.register(Function.new("KE", ["m"], X))


def test_catalog_registry_reloads_bitwise_identical_in_fresh_process(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    reg = Registry.open(url)
    _energy_registry(reg)
    m, v, h = np.random.default_rng(2).uniform(-100, 100, (3, 101))
    here = [float(o).hex() for o in reg.call("TOTAL_E", m, v, h)]
    np.save(tmp_path / "x.npy", np.stack([m, v, h]))
    code = (
        "import sys, numpy as np\nfrom circuitlab.registry import Registry\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"out = Registry.open({url!r}).call('TOTAL_E', *x)\n"
        "sys.stdout.write(' '.join(float(o).hex() for o in out))\n"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert there == here


def test_discovery_registers_into_the_catalog_and_reuses_it(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    reg = Registry.open(url)
    data = cases(seed=0)
    for name in ("KE", "PE"):
        c = data[name]
        discover((c.X, c.y), names=c.names, name=name, registry=reg, register=True)
    c = data["TOTAL_E_JUNK"]
    total = discover(
        (c.X, c.y), names=c.names, name="TOTAL_E", registry=Registry.open(url), register=True
    )
    assert total.render() == "ADD(KE(m, v), PE(m, h))" and total.layer == 2
    with catalog.open_catalog(url) as cat:
        records = [cat.get(i) for i in cat.ids("function")]
        assert {r.name for r in records} == {"KE", "PE", "TOTAL_E"}
        assert next(r for r in records if r.name == "TOTAL_E").properties["layer"] == 2


def test_cli_uses_the_catalog_named_by_the_environment(tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from circuitlab.cli import app

    db = tmp_path / "cat.db"
    monkeypatch.delenv("CIRCUITLAB_REGISTRY", raising=False)
    monkeypatch.setenv("CIRCUITLAB_CATALOG", str(db))
    csv = tmp_path / "pe.csv"
    csv.write_text(
        "m,h,pe\n"
        + "\n".join(f"{m},{h},{9.81 * m * h}" for m in range(1, 6) for h in range(1, 5))
        + "\n"
    )
    res = CliRunner().invoke(app, ["discover", str(csv)])
    assert res.exit_code == 0, res.output
    assert [f.name for f in Registry.open(f"sqlite:///{db}")] == ["PE"]


def test_a_file_path_is_a_catalog_and_a_directory_a_json_folder(tmp_path: Path, monkeypatch):
    """The one rule for a plain path (`circuitlab._location`), the same as --catalog's: an
    existing file or a .db/.sqlite path is a SQLite catalog; an existing directory, a path
    ending in / or any other new path is a folder of JSON files."""
    from circuitlab.registry.catalog_store import CatalogStore
    from circuitlab.registry.store import JsonFileStore

    monkeypatch.chdir(tmp_path)
    reg = Registry.open("runs/catalog.db")  # relative: stored as sqlite:///<absolute path>
    assert isinstance(reg.store, CatalogStore)
    assert (
        Path(reg.store.catalog.url.removeprefix("sqlite://")).resolve()
        == (tmp_path / "runs" / "catalog.db").resolve()
    )
    _energy_registry(reg)
    reg.store.close()
    with catalog.open_catalog(tmp_path / "runs" / "catalog.db") as cat:
        assert {cat.get(i).name for i in cat.ids("function")} == {"KE", "PE", "TOTAL_E"}
    (tmp_path / "runs" / "catalog.db").rename(tmp_path / "renamed")
    existing = Registry.open("renamed")  # an existing regular file, whatever its name
    assert isinstance(existing.store, CatalogStore)
    assert [f.name for f in existing] == ["KE", "PE", "TOTAL_E"]
    existing.store.close()
    fresh = Registry.open("new.sqlite")
    assert isinstance(fresh.store, CatalogStore) and (tmp_path / "new.sqlite").is_file()
    fresh.store.close()
    for folder in ("functions/", "functions", str(tmp_path / "runs"), "fresh"):
        assert isinstance(Registry.open(folder).store, JsonFileStore), folder
    assert not (tmp_path / "functions").exists() and not (tmp_path / "fresh").exists()
    (tmp_path / "notes.txt").write_text("not a database\n")
    with pytest.raises(RegistryError):
        Registry.open("notes.txt").functions()


def test_cli_registry_in_a_sqlite_file_and_in_a_folder(tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from circuitlab.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pe.csv").write_text(
        "m,h,pe\n"
        + "\n".join(f"{m},{h},{9.81 * m * h}" for m in range(1, 6) for h in range(1, 5))
        + "\n"
    )
    runner = CliRunner()
    res = runner.invoke(app, ["discover", "pe.csv", "--registry", "runs/catalog.db"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "catalog.db").is_file()
    res = runner.invoke(app, ["catalog", "list", "--kind", "function", "-c", "runs/catalog.db"])
    assert res.exit_code == 0 and "PE" in res.output, res.output
    res = runner.invoke(app, ["registry", "list", "--registry", "runs/catalog.db", "--json"])
    assert [f["name"] for f in json.loads(res.output)] == ["PE"]
    res = runner.invoke(app, ["discover", "pe.csv", "--registry", "some/dir/"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "some" / "dir").iterdir()] == ["PE@1.json"]
    res = runner.invoke(app, ["discover", "pe.csv", "-r", "x"])
    assert res.exit_code == 2 and "No such option: -r" in res.output
