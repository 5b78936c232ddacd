"""Staged discovery (issue 18, item 2): groups and moduli chosen from the data, integer division,
constants inside modular operations, and the CLI's --modulus and --groups."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from circuitlab.cli import app
from circuitlab.registry import Function, Registry, RegistryError, Var, call, discover, search
from circuitlab.registry import expr as ex
from circuitlab.registry.discover import NUMERIC_GROUPS, DiscoveryConfig
from circuitlab.registry.domains import Kind
from circuitlab.registry.stages import infer_moduli, looks_bitwise, plan_stages

runner = CliRunner()
RNG_SEED = 18


def _ints(lo: int, hi: int, shape: tuple[int, ...], seed: int = RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi + 1, shape).astype(np.float64)


def _lane_data(seed: int = RNG_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(k*lane) mod 8 + k // 3 on k in 0..29, lane in 0..7."""
    rng = np.random.default_rng(seed)
    k, lane = rng.integers(0, 30, 60), rng.integers(0, 8, 60)
    X = np.stack([k, lane], axis=1).astype(np.float64)
    return X, ((k * lane) % 8 + k // 3).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# the defects of the issue


@pytest.mark.timeout(120)  # a safety net only: the search has its own budget (60 s)
def test_a_product_of_four_integer_columns_is_found():
    X = _ints(1, 9, (40, 4))
    cfg = DiscoveryConfig()
    result = search((X, X.prod(axis=1)), names=list("abcd"), config=cfg)
    fn = result.function
    assert result.status == "exact", result.message
    fresh = _ints(-20, 20, (50, 4), seed=1)
    assert np.array_equal(fn.evaluate(*fresh.T), fresh.prod(axis=1)), fn.render()
    assert result.stats.seconds < cfg.max_seconds  # within the search's own budget
    # arithmetic alone finds it: no stage with the modular or bitwise operations got that far
    assert result.stages[-1].stage.groups == ("arithmetic",)


def test_x_squared_mod_7_without_the_modulus():
    x = _ints(0, 49, (40,))
    fn = discover((x[:, None], (x * x) % 7), names=["x"])
    assert fn.render() == "MOD(SQUARE(x), p=7)"
    fresh = np.arange(0.0, 300.0)
    assert np.array_equal(fn.evaluate(fresh), (fresh * fresh) % 7)


def test_k_times_lane_mod_8_plus_k_div_3_without_the_modulus():
    X, y = _lane_data()
    result = search((X, y), names=["k", "lane"])
    assert result.status == "exact", result.message
    fn = result.function
    k, lane = np.meshgrid(np.arange(0.0, 30.0), np.arange(0.0, 8.0))
    assert np.array_equal(fn.evaluate(k.ravel(), lane.ravel()), (k * lane % 8 + k // 3).ravel())
    assert "FLOORDIV(k, 3)" in fn.render() and "p=8" in fn.render()


@pytest.mark.parametrize(
    "truth, lo, hi, expected, constant",
    [
        (lambda a: (a + 3) % 7, 0, 60, "ADDMOD(a, 3, p=7)", 3.0),
        (lambda a: (5 * a) % 11, 0, 60, "MULMOD(5, a, p=11)", 5.0),
        (lambda a: (a + 10) % 13, -30, 30, "ADDMOD(a, 10, p=13)", 10.0),
    ],
)
def test_constants_inside_a_modular_operation(truth, lo, hi, expected, constant):
    a = _ints(lo, hi, (40,))
    fn = discover((a[:, None], truth(a)), names=["a"])
    assert fn.render() == expected
    assert fn.constant_dict == {"c0": constant}  # a named constant, shown by value
    fresh = np.arange(-200.0, 200.0)
    assert np.array_equal(fn.evaluate(fresh), truth(fresh))
    again = Function.from_dict(json.loads(json.dumps(fn.to_dict())))  # stored and read back
    assert again.render() == expected and np.array_equal(again.evaluate(fresh), truth(fresh))


def test_floor_division_formula():
    rng = np.random.default_rng(RNG_SEED)
    a, b = rng.integers(-40, 41, 40), rng.integers(-10, 11, 40)
    X = np.stack([a, b], axis=1).astype(np.float64)
    fn = discover((X, (a // 3 + b).astype(np.float64)), names=["a", "b"])
    assert fn.render() == "ADD(b, FLOORDIV(a, 3))"
    assert str(fn.sympy()) == "b + floor(a/3)"
    assert fn.evaluate(np.array([-7.0, 7.0]), np.array([0.0, 0.0])).tolist() == [-3.0, 2.0]


def test_floordiv_primitive_floors_and_is_undefined_at_zero():
    a = np.array([7.0, -7.0, 7.0, -7.0, 5.0, 2.0**53])
    b = np.array([2.0, 2.0, -2.0, -2.0, 0.0, 3.0])
    got = ex.evaluate(call("FLOORDIV", Var(0), Var(1)), [a, b], {})
    assert got[:4].tolist() == [3.0, -4.0, -4.0, 3.0]  # Python's //
    assert np.isnan(got[4]) and np.isnan(got[5])  # b = 0; beyond float64's exact integers


# ---------------------------------------------------------------------------------------------
# how stages and moduli are chosen


def test_moduli_come_from_periods_ranges_and_outputs():
    x = _ints(0, 49, (40,))
    kinds = [Kind.INT]
    assert infer_moduli(x[:, None], (x * x) % 7, kinds)[0] == 7  # period 7, though max(y) = 4
    X, y = _lane_data()
    assert 8 in infer_moduli(X, y, [Kind.INT, Kind.INT])  # the lane's range 0..7
    a = _ints(0, 60, (40,))
    assert infer_moduli(a[:, None], a % 3 + 0.0, kinds)[0] == 3
    # a product, mostly small: only max(y) + 1, no prime or power of two guessed above it
    P = _ints(1, 9, (40, 4))
    y = P.prod(axis=1)
    assert infer_moduli(P, y, [Kind.INT] * 4) == (int(y.max()) + 1,)
    assert infer_moduli(P, y + 0.5, [Kind.INT] * 4) == ()  # outputs not integers


def test_stage_order_follows_the_data():
    P = _ints(1, 9, (40, 2))
    labels = [s.label for s in plan_stages(P, P[:, 0] * P[:, 1], [Kind.INT, Kind.INT])]
    assert labels[:2] == ["arithmetic", "arithmetic+integer"]
    assert labels[2].startswith("arithmetic+integer+modular p=")
    assert labels[-1] == "arithmetic+elementary" and "bitwise" not in " ".join(labels)
    real = np.random.default_rng(0).uniform(1, 5, (30, 2))
    assert [s.label for s in plan_stages(real, real[:, 0] * 0.5, [Kind.REAL] * 2)] == [
        "arithmetic+elementary"
    ]
    bytes_ = _ints(0, 255, (40, 2))
    xor = (bytes_[:, 0].astype(int) ^ bytes_[:, 1].astype(int)).astype(float)
    assert looks_bitwise(bytes_, xor, [Kind.INT] * 2)
    assert [s.label for s in plan_stages(bytes_, xor, [Kind.INT] * 2)][:2] == [
        "arithmetic",
        "arithmetic+bitwise",
    ]
    assert not looks_bitwise(P, P[:, 0] * P[:, 1], [Kind.INT] * 2)
    lt = (P[:, 0] < P[:, 1]).astype(float)
    assert "arithmetic+comparison" in [s.label for s in plan_stages(P, lt, [Kind.INT] * 2)]
    # given groups: exactly those, one stage per given modulus
    given = plan_stages(P, lt, [Kind.INT] * 2, groups=("arithmetic", "modular"), moduli=(5, 7))
    assert [(s.groups, s.modulus) for s in given] == [
        (("arithmetic", "modular"), 5),
        (("arithmetic", "modular"), 7),
    ]


def test_result_lists_the_stage_searches():
    a = _ints(0, 60, (40,))
    result = search((a[:, None], (a + 3) % 7), names=["a"])
    stages = result.summary()["stages"]
    assert stages[0]["stage"] == "arithmetic" and stages[0]["outcome"].startswith("no exact")
    assert any(
        s["stage"] == "arithmetic+integer+modular p=7" and s["outcome"] == "exact" for s in stages
    )
    assert result.stats.candidates == sum(s["candidates"] for s in stages)
    assert result.function.provenance.search["stage"] == "arithmetic+integer+modular p=7"


def test_given_groups_are_searched_as_given():
    x = _ints(0, 49, (40,))
    cfg = DiscoveryConfig(groups=("arithmetic",), max_cost=5)
    result = search((x[:, None], (x * x) % 7), names=["x"], config=cfg)
    assert result.status == "failed" and [r.stage.label for r in result.stages] == ["arithmetic"]
    cfg = DiscoveryConfig(groups=("arithmetic", "modular"), moduli=(7,))
    assert discover((x[:, None], (x * x) % 7), names=["x"], config=cfg).render() == (
        "MOD(SQUARE(x), p=7)"
    )


def test_groups_and_moduli_may_be_comma_lists():
    cfg = DiscoveryConfig(groups=" arithmetic,modular", moduli="7, 8")
    assert cfg.groups == ("arithmetic", "modular") and cfg.moduli == (7, 8)
    assert DiscoveryConfig(moduli=11).moduli == (11,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"groups": ("arithmetic", "modulo")}, "unknown primitive group 'modulo'; the groups are"),
        ({"groups": ("grid",)}, "the groups are arithmetic, integer, modular"),
        ({"groups": ()}, "no group"),
        ({"moduli": (1,)}, r"in \[2, 2\*\*31\)"),
        ({"moduli": ("x",)}, "must be an integer"),
        ({"moduli": (7,), "groups": ("arithmetic",)}, "add modular"),
    ],
)
def test_bad_groups_and_moduli_are_refused(kwargs, match):
    with pytest.raises(RegistryError, match=match):
        DiscoveryConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# CLI


def _lane_csv(tmp_path: Path) -> Path:
    X, y = _lane_data()
    rows = [f"{int(k)},{int(lane)},{int(v)}" for (k, lane), v in zip(X, y, strict=True)]
    path = tmp_path / "lane.csv"
    path.write_text("\n".join(["k,lane,y", *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    "flags",
    [
        ["--modulus", "8"],
        ["--modulus", "8,16"],
        ["--modulus", "8", "--modulus", "16"],
        ["--modulus", "8", "--groups", "arithmetic,integer,modular"],
    ],
)
def test_cli_modulus_and_groups(tmp_path: Path, flags: list[str]):
    res = runner.invoke(
        app, ["discover", str(_lane_csv(tmp_path)), "--no-register", "--json", *flags]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["status"] == "exact"
    assert out["function"] == "ADD(FLOORDIV(k, 3), MULMOD(k, lane, p=8))"
    assert out["record"]["provenance"]["search"]["moduli"][0] == 8


def test_cli_prints_the_stages(tmp_path: Path):
    res = runner.invoke(app, ["discover", str(_lane_csv(tmp_path)), "--no-register"])
    assert res.exit_code == 0, res.output
    assert "stages: arithmetic to cost 5: no fit;" in res.output


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--groups", "arithmetic,modulo"], "unknown primitive group 'modulo'; the groups are"),
        (["--modulus", "8,x"], "a modulus must be an integer, got 'x'"),
        (["--modulus", "1"], "a modulus must be in [2, 2**31), got 1"),
        (["--modulus", "8", "--groups", "arithmetic"], "add modular"),
    ],
)
def test_cli_bad_groups_and_moduli_are_one_line_and_exit_2(
    tmp_path: Path, flags: list[str], message: str
):
    exe = Path(sys.executable).with_name("circuitlab")
    cmd = [str(exe), "discover", str(_lane_csv(tmp_path)), "--no-register", *flags]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_help_names_the_groups():
    from circuitlab.cli import discover as cli_discover

    assert cli_discover.NUMERIC_GROUPS == NUMERIC_GROUPS  # the CLI's copy, for a fast --help
    res = runner.invoke(app, ["discover", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and "--modulus" in res.output and "--groups" in res.output
    text = " ".join(res.output.replace("\u2502", " ").split())  # without the box's borders
    assert ", ".join(NUMERIC_GROUPS) in text


def test_registered_discovery_with_a_constant_inside_mod(tmp_path: Path):
    reg = Registry.open(tmp_path)
    a = _ints(0, 60, (40,))
    fn = discover(
        (a[:, None], (a + 3) % 7), names=["a"], name="SHIFT7", registry=reg, register=True
    )
    stored = Registry.open(tmp_path).get("SHIFT7")
    assert stored.render() == fn.render() == "ADDMOD(a, 3, p=7)"
    assert str(stored.sympy()) == "Mod(a + 3, 7)"
