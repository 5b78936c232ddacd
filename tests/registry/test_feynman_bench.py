"""The AI Feynman benchmark (benchmarks/bench_feynman.py): its equation table, its exactness
check (independent of the search's acceptance), and one tiny equation end to end."""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import sympy

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    # on sys.path, not loaded from its file: the spawned workers import it by name
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("bench_feynman")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def equations(bench):
    return {e.name: e for e in bench.load_equations()}


def test_the_table_has_the_100_equations_with_the_names_present(equations):
    assert len(equations) == 100
    assert sorted(e.number for e in equations.values()) == list(range(1, 101))
    # `# variables` says 2 here; the row names three variables
    assert equations["I.18.12"].names == ["r", "F", "theta"]
    # a variable named I is a symbol, not sympy's imaginary unit
    truth = equations["II.13.17"].truth()
    assert "I" in {s.name for s in truth.free_symbols} and not truth.has(sympy.I)


def test_data_are_seeded_finite_and_in_range(bench, equations):
    eq = equations["I.10.7"]
    X, y, redrawn = bench.make_data(eq, 50, seed=3)
    X2, y2, _ = bench.make_data(eq, 50, seed=3)
    assert (X == X2).all() and (y == y2).all() and redrawn == 0
    for j, (_, lo, hi) in enumerate(eq.variables):
        assert lo <= X[:, j].min() and X[:, j].max() <= hi
    assert all(map(math.isfinite, y))


def test_the_check_accepts_the_truth_and_refuses_a_near_miss(bench, equations):
    eq = equations["II.38.14"]  # Y/(2*(1+sigma))
    right = bench.check(eq, "0.5*Y/(sigma + 1)", simplify_seconds=5)
    assert right["ok"] and right["how"] == "symbolic+numeric" and right["symbolic"] == "equal"
    wrong = bench.check(eq, "0.5000001*Y/(sigma + 1)", simplify_seconds=5)
    assert not wrong["ok"] and wrong["symbolic"] == "different"
    assert 1e-8 < wrong["max_rel_error"] < 1e-6
    # numeric alone: float noise far below 1e-9 relative still counts as exact
    close = bench.check(eq, "Y*0.15915494309189535*pi/(sigma + 1)", simplify_seconds=0)
    assert close["ok"] and close["how"] == "numeric"


def test_a_different_non_finite_pattern_is_never_exact(bench, equations):
    eq = equations["I.12.1"]  # mu*Nn on [1, 5]^2
    out = bench.check(eq, "Piecewise((mu*Nn, mu < 3), (nan, True))", simplify_seconds=0)
    assert not out["ok"] and math.isinf(out["max_rel_error"])


@pytest.mark.timeout(60)
def test_one_equation_end_to_end_in_a_worker(bench, tmp_path):
    out = tmp_path / "feynman.json"
    res = bench.main(["--only", "I.12.1", "--budget", "5", "--rows", "50", "--out", str(out)])
    rec = res["equations"]["I.12.1"]
    assert rec["status"] == "exact", rec
    # with units, Nn (a force) is the prefactor and f(mu) = mu; either order is the truth
    assert rec["found"] in ("MUL(mu, Nn)", "MUL(Nn, mu)") and rec["exact_how"] == "symbolic+numeric"
    saved = json.loads(out.read_text())
    assert saved["summary"]["exact"] == 1 and saved["summary"]["of"] == 1
    assert saved["summary"]["reference_noise_free"]["Eureqa"] == 71
    # --resume with the same config runs nothing more; with another it refuses
    again = bench.main(
        ["--only", "I.12.1", "--budget", "5", "--rows", "50", "--out", str(out)] + ["--resume"]
    )
    assert again["run"]["skipped_resumed"] == 1
    with pytest.raises(SystemExit):
        bench.main(
            ["--only", "I.12.1", "--budget", "6", "--rows", "50", "--out", str(out), "--resume"]
        )


@pytest.mark.timeout(30)
def test_a_worker_past_its_wall_limit_is_killed_and_recorded(bench, equations):
    got = []
    opts = bench.Options(budget=5.0, rows=50)
    # I.6.2 (dimensionless: units do not help) is not found within a second: killed at 1 s
    # (budget 5 s + grace -4 s)
    bench.run_many([equations["I.6.2"]], opts, 1, got.append, grace=-4.0)
    assert [r["status"] for r in got] == ["timeout"]
