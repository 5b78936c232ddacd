"""Dimensional analysis (registry/dimensions.py) and output transforms (discover.TRANSFORMS).

The ground truth of a reduction is checked here with numpy, not with the code under test: the
prefactor must carry the output's units (U p = u_y), every group must be dimensionless
(U g = 0), and there must be k - rank(U) independent groups."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from typer.testing import CliRunner

from circuitlab.cli import app
from circuitlab.registry import DiscoveryConfig, Examples, Units, UnitsError, search
from circuitlab.registry import expr as ex
from circuitlab.registry.dimensions import reduce, reductions

UNITS_CSV = (
    "\ufeffVariable,Units,m,s,kg,T,V,\n"  # a byte-order mark and a trailing empty column
    "m_0,Mass,0,0,1,0,0,\n"
    "v,Velocity,1,-1,0,0,0,\n"
    "c,Velocity,1,-1,0,0,0,\n"
    "q,Charge,2,-2,1,0,-1,\n"
    "Ef,Electric field,-1,0,0,0,1,\n"
    "B,Magnetic field,-2,1,0,0,1,\n"
    "theta,Dimensionless,0,0,0,0,0,\n"
    "F,Force,1,-2,1,0,0,\n"
    "m,Mass,0,0,1,0,0,\n"
)


@pytest.fixture
def units(tmp_path) -> Units:
    path = tmp_path / "units.csv"
    path.write_text(UNITS_CSV, encoding="utf-8")
    return Units.read(path)


def test_units_table_reads_spreadsheet_csv(units):
    assert units.base == ("m", "s", "kg", "T", "V")
    assert units.of("v") == (1, -1, 0, 0, 0)
    assert units.of("theta") == (0,) * 5
    with pytest.raises(UnitsError, match="no row for 'x'"):
        units.of("x")


@pytest.mark.parametrize(
    "text, message",
    [
        ("Variable,m,s\n", "header row and one row"),
        ("Variable,m,s\nv,1,x\n", "every column must be a number"),
        ("Variable,m,s\nv,1,-1\nv,1,0\n", "listed twice"),
    ],
)
def test_bad_units_tables_are_refused(tmp_path, text, message):
    path = tmp_path / "u.csv"
    path.write_text(text)
    with pytest.raises(UnitsError, match=message):
        Units.read(path)
    with pytest.raises(UnitsError, match="cannot read"):
        Units.read(tmp_path / "missing.csv")


def _matrix(units: Units, names: list[str]) -> np.ndarray:
    return np.array([[float(a) for a in units.of(n)] for n in names]).T


@pytest.mark.parametrize(
    "names, output",
    [(["m_0", "v", "c"], "m"), (["q", "Ef", "B", "v", "theta"], "F"), (["v", "c"], "theta")],
)
def test_reduction_is_dimensionally_right(units, names, output):
    red = reduce(units, names, output)
    U = _matrix(units, names)
    p = np.array([float(a) for a in red.prefactor.exponents])
    assert np.allclose(U @ p, [float(a) for a in units.of(output)])
    G = np.array([[float(a) for a in g.exponents] for g in red.groups])
    assert len(red.groups) == len(names) - np.linalg.matrix_rank(U)
    assert np.allclose(U @ G.T, 0)
    assert np.linalg.matrix_rank(G) == len(red.groups)
    # integer exponents, the group's own column at 1
    assert all(a.denominator == 1 for g in red.groups for a in g.exponents)


def test_reduction_reads_like_the_formula(units):
    red = reduce(units, ["m_0", "v", "c"], "m")
    # the later column is the pivot: v/c, not c/v
    assert red.render(["m_0", "v", "c"]) == "m_0 * f(v/c)"
    assert red.groups[0].exponents == (Fraction(0), Fraction(1), Fraction(-1))
    rng = np.random.default_rng(0)
    X = rng.uniform(1, 5, (20, 3))
    G, yr = red.table(X, X[:, 0] * 2.0)
    assert np.allclose(G[:, 0], X[:, 1] / X[:, 2]) and np.allclose(yr, 2.0)


def test_reductions_give_each_pivot_choice_once(units):
    names = ["m_0", "v", "c"]
    # by size: c is the larger velocity, so the group is v/c; the other orders add c/v
    options = reductions(units, names, "m", magnitudes=[3.0, 1.5, 6.5])
    assert [r.render(names) for r in options] == ["m_0 * f(v/c)", "m_0 * f(c/v)"]
    # with v the larger velocity, v is the pivot
    assert reductions(units, names, "m", magnitudes=[3.0, 9.0, 6.5])[0].render(names) == (
        "m_0 * f(c/v)"
    )


def test_a_law_with_no_dimensionless_group_is_left_to_the_power_law(units):
    # F = q * Ef: no group, y / P is a constant (the power law's case)
    rng = np.random.default_rng(4)
    X = rng.uniform(1, 5, (40, 2))
    red = reduce(units, ["q", "Ef"], "F")
    assert red.groups == () and red.render(["q", "Ef"]) == "q*Ef"
    data = Examples.from_arrays(X, 3 * X[:, 0] * X[:, 1], ["q", "Ef"], "F")
    result = search(data, config=DiscoveryConfig(max_seconds=10), units=units)
    assert result.status == "exact" and result.units == "units: F = C * q*Ef"
    assert result.stages[0].stage.method == "power law"


def test_output_without_a_monomial_of_the_inputs_is_refused(units):
    with pytest.raises(UnitsError, match="no product of powers"):
        reduce(units, ["v", "c"], "m")


def _relativistic(n: int = 120, seed: int = 0) -> Examples:
    rng = np.random.default_rng(seed)
    m0, v, c = rng.uniform(1, 5, n), rng.uniform(1, 2, n), rng.uniform(3, 10, n)
    y = m0 / np.sqrt(1 - v**2 / c**2)
    return Examples.from_arrays(np.stack([m0, v, c], axis=1), y, ["m_0", "v", "c"], "m")


def test_units_make_a_three_variable_law_a_one_variable_search(units):
    data = _relativistic()
    cfg = DiscoveryConfig(max_seconds=30, use_registry=False)
    result = search(data, config=cfg, units=units)
    assert result.status == "exact"
    assert result.stages[0].stage.method == "units" and result.stages[0].found
    assert result.units.startswith("units: m = m_0 * f(v/c), f = ")
    # the function is the law on fresh inputs, outside the rows searched
    fresh = _relativistic(50, seed=7)
    got = result.function.on_columns(fresh.X, list(fresh.names))
    assert np.allclose(got, fresh.y, rtol=1e-12)


def test_noisy_data_are_fitted_through_the_dimensionless_problem(units):
    data = _relativistic(200)
    noisy = Examples.from_arrays(
        data.X,
        data.y * (1 + 0.01 * np.random.default_rng(5).normal(size=data.n)),
        data.names,
        "m",
    )
    cfg = DiscoveryConfig(max_seconds=20, approximate=True, max_cost=7)
    result = search(noisy, config=cfg, units=units)
    assert result.status == "approximate" and result.stages[0].stage.method == "units"
    assert result.units.startswith("units: m = m_0 * f(v/c), f = ")
    # m_0 times a function of v/c only: proportional to m_0 at fixed v/c
    fn = result.function
    probe = np.array([[1.0, 1.5, 5.0], [4.0, 1.5, 5.0], [2.0, 3.0, 10.0]])
    out = fn.on_columns(probe, ["m_0", "v", "c"])
    assert out[1] == pytest.approx(4 * out[0], rel=1e-12)
    assert out[2] == pytest.approx(2 * out[0], rel=1e-12)
    fresh = _relativistic(50, seed=9)
    assert np.abs(fn.on_columns(fresh.X, list(fresh.names)) / fresh.y - 1).max() < 0.05


def test_dimensionless_problems_are_searched_as_they_are(units):
    rng = np.random.default_rng(1)
    theta = rng.uniform(0.1, 1.5, 60)
    data = Examples.from_arrays(theta[:, None], np.sin(theta) ** 2 + 1, ["theta"], "m")
    with pytest.raises(UnitsError):  # m is a mass: sin^2 + 1 of an angle cannot be one
        search(data, config=DiscoveryConfig(max_seconds=5), units=units)
    units2 = Units(units.base, {**units.table, "y": (Fraction(0),) * 5})
    data = Examples.from_arrays(theta[:, None], np.sin(theta) ** 2 + 1, ["theta"], "y")
    result = search(data, config=DiscoveryConfig(max_seconds=10), units=units2)
    assert result.status == "exact" and "dimensionless" in result.units
    assert all(r.stage.method != "units" for r in result.stages)


@pytest.mark.parametrize(
    "make, method, op",
    [
        # 1/sqrt(1 - g^2) is cost 7; 1/y^2 = 1 - g^2 is cost 4 (or 1/y = sqrt(1 - g^2))
        (lambda x: 1 / np.sqrt(1 - x[:, 0] ** 2), "y from 1/", "DIV"),
        # arcsin is no primitive of the enumeration: sin(y) = n * sin(theta) is a product
        (lambda x: np.arcsin(x[:, 0] * np.sin(x[:, 1])), "y from sin(y)", "ASIN"),
    ],
)
def test_output_transforms_are_searched_and_inverted(make, method, op):
    rng = np.random.default_rng(2)
    X = np.stack([rng.uniform(0.1, 0.6, 80), rng.uniform(0.2, 1.2, 80)], axis=1)
    result = search((X, make(X)), names=["a", "b"], config=DiscoveryConfig(max_seconds=30))
    assert result.status == "exact"
    assert result.stages[-1].stage.method.startswith(method) and result.stages[-1].found
    assert result.function.expr.op == op
    # only the constants the formula uses (the inverse's 1 is offered to every transform)
    names = {c for c, _ in result.function.constants}
    assert names == ex.constants_used(result.function.expr)
    Xf = np.stack([rng.uniform(0.1, 0.6, 30), rng.uniform(0.2, 1.2, 30)], axis=1)
    assert np.allclose(result.function.on_columns(Xf, ["a", "b"]), make(Xf), rtol=1e-12)


def test_transforms_respect_excluded_primitives():
    rng = np.random.default_rng(3)
    X = np.stack([rng.uniform(0.1, 0.6, 80), rng.uniform(0.2, 1.2, 80)], axis=1)
    y = np.arcsin(X[:, 0] * np.sin(X[:, 1]))
    cfg = DiscoveryConfig(max_seconds=4, max_cost=5, exclude=("ASIN", "POW", "DIV"))
    result = search((X, y), names=["a", "b"], config=cfg)
    assert not any(r.stage.method.startswith(("y from 1/", "y from sin")) for r in result.stages)


def test_cli_units(tmp_path):
    data = _relativistic(60)
    csv = tmp_path / "rel.csv"
    rows = ["m_0,v,c,m"] + [
        ",".join(repr(float(v)) for v in (*x, y)) for x, y in zip(data.X, data.y, strict=True)
    ]
    csv.write_text("\n".join(rows) + "\n")
    table = tmp_path / "units.csv"
    table.write_text(UNITS_CSV)
    runner = CliRunner()
    reg = ["--registry", str(tmp_path / "reg")]
    out = runner.invoke(app, ["discover", str(csv), "--units", str(table), "--no-register", *reg])
    assert out.exit_code == 0, out.output
    assert "units: m = m_0 * f(v/c)" in out.output and "exact" in out.output
    # a missing table: one line, exit 2, as a user mistake (the real entry point)
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuitlab",
            "discover",
            str(csv),
            "--units",
            str(tmp_path / "none.csv"),
            "--no-register",
            *reg,
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "cannot read the units table" in bad.stderr
    assert "Traceback" not in bad.stderr
