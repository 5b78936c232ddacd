"""The registry on the circuit catalog: Function records with COMPOSES relationships."""

from __future__ import annotations

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
