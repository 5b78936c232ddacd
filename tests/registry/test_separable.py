"""Separability and translational symmetry of a function discovery can query (separable.py),
and the discovery stages built on them (derived.symmetry_stage, derived.separable_stage)."""

from __future__ import annotations

import numpy as np
import pytest

from circuitlab.registry import DiscoveryConfig, search
from circuitlab.registry import separable as sep


def _points(k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(1, 5, (sep.TRIALS, k)), rng.uniform(1, 5, (sep.TRIALS, k))


@pytest.mark.parametrize(
    "f, k, mode, expected",
    [
        (lambda a, b, c: a * b + np.sin(c), 3, "additive", [[0, 1], [2]]),
        (lambda a, b, c: a * b + np.sin(c), 3, "multiplicative", [[0, 1, 2]]),
        (lambda a, b, c: a * np.sin(b) / c, 3, "multiplicative", [[0], [1], [2]]),
        (lambda a, b, c: np.sin(a * b) + c * a, 3, "additive", [[0, 1, 2]]),
        # a column the function ignores is a group of its own
        (lambda a, b, c: a * b + 0 * c, 3, "additive", [[0, 1], [2]]),
    ],
)
def test_groups_are_the_columns_that_interact(f, k, mode, expected):
    a, b = _points(k)
    assert sep.groups(f, a, b, mode) == expected


def test_split_tries_a_sum_before_a_product_and_needs_nonzero_outputs():
    rng = np.random.default_rng(1)

    def sample(r, n):
        return r.uniform(1, 5, (n, 2))

    assert sep.split(lambda a, b: a + b, sample, rng) == ("additive", [[0], [1]])
    assert sep.split(lambda a, b: a * b, sample, rng) == ("multiplicative", [[0], [1]])
    assert sep.split(lambda a, b: np.sin(a * b), sample, rng) is None
    # a product that is 0 somewhere cannot be tested as one (a*1[a > 3] times b is one)
    assert sep.split(lambda a, b: np.where(a > 3, a * b, 0.0), sample, rng) is None


def test_translation_pairs_are_found_only_where_f_reads_a_difference():
    a, _ = _points(4)
    shift = np.full(sep.TRIALS, 0.3)

    def dist(x1, x2, y1, y2):
        return np.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2)

    assert sep.translation_pairs(dist, a, shift) == [(0, 1), (2, 3)]
    assert sep.translation_pairs(lambda p, q, r, s: p * q + r - s, a, shift) == [(2, 3)]
    assert sep.translation_pairs(lambda p, q, r, s: p * q * r * s, a, shift) == []


def test_on_difference_holds_one_column_and_moves_the_other():
    seen = []

    def f(x0, x1, x2):
        seen.append((x0.copy(), x1.copy(), x2.copy()))
        return x0 - x1 + x2

    g = sep.on_difference(f, 0, 1, 3, at=2.0)
    out = g(np.array([0.5, 1.0]), np.array([7.0, 8.0]))
    assert np.allclose(out, [7.5, 9.0])
    x0, x1, x2 = seen[0]
    assert np.allclose(x1, 2.0) and np.allclose(x0, [2.5, 3.0]) and np.allclose(x2, [7, 8])


def _discover(f, k, seconds=30.0, seed=0):
    X = np.random.default_rng(seed).uniform(1, 5, (200, k))
    names = [f"x{i}" for i in range(k)]
    cfg = DiscoveryConfig(max_seconds=seconds, use_registry=False)
    return search((X, f(*X.T)), names=names, config=cfg, oracle=f), names


def _exact_on_fresh(result, f, k):
    X = np.random.default_rng(11).uniform(1, 5, (100, k))
    got = result.function.on_columns(X, [f"x{i}" for i in range(k)])
    return np.allclose(got, f(*X.T), rtol=1e-10)


def test_a_sum_of_products_is_split_and_its_constants_gathered():
    def f(x0, x1, x2, x3, x4, x5):  # I.11.19
        return x0 * x1 + x2 * x3 + x4 * x5

    result, _ = _discover(f, 6)
    assert result.status == "exact" and result.stages[-1].stage.method == "separable"
    assert result.structure.startswith("separability: additive in (x0, x1), (x2, x3), (x4, x5)")
    # the reference point's values are gone: no stray constants
    assert result.function.constants == ()
    assert _exact_on_fresh(result, f, 6)


def test_a_product_of_a_sum_splits_twice():
    def f(x0, x1, x2, x3):  # I.13.4: m * (v^2 + u^2 + w^2) / 2
        return 0.5 * x0 * (x1**2 + x2**2 + x3**2)

    result, _ = _discover(f, 4)
    assert result.status == "exact"
    assert "multiplicative in (x0), (x1, x2, x3)" in result.structure
    assert _exact_on_fresh(result, f, 4)


def test_differences_become_one_column():
    def f(x0, x1, x2, x3):  # I.8.14
        return np.sqrt((x1 - x0) ** 2 + (x3 - x2) ** 2)

    result, _ = _discover(f, 4)
    assert result.status == "exact" and result.stages[-1].stage.method == "symmetry"
    assert result.structure.startswith("symmetry: f reads x0 - x1")
    assert _exact_on_fresh(result, f, 4)


def test_without_an_oracle_nothing_is_tested():
    X = np.random.default_rng(0).uniform(1, 5, (100, 2))
    result = search((X, X[:, 0] + X[:, 1]), config=DiscoveryConfig(max_seconds=5))
    assert result.status == "exact" and result.structure == ""
    assert all(r.stage.method not in ("separable", "symmetry") for r in result.stages)


def test_an_oracle_that_fails_is_a_clear_error():
    from circuitlab.registry import RegistryError

    def fragile(a, b):
        if (np.asarray(a) > 4.5).any():  # as user code may, on inputs outside the table
            raise ValueError("out of range")
        return a + b

    X = np.random.default_rng(2).uniform(1, 4.4, (50, 2))
    with pytest.raises(RegistryError, match="the oracle failed"):
        search((X, X.sum(axis=1)), config=DiscoveryConfig(max_seconds=5), oracle=fragile)
