"""S_n tables: group axioms, the documented ordering, and the three Power et al. products."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from circuitlab.tasks import TaskError, get_task
from circuitlab.tasks.permutation import (
    inverse_tokens,
    permutation_index,
    permutations,
    product_table,
)


def _compose(x: tuple[int, ...], y: tuple[int, ...]) -> tuple[int, ...]:
    """x first, then y."""
    return tuple(y[x[i]] for i in range(len(x)))


def _inverse(x: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(x)
    for i, xi in enumerate(x):
        inv[xi] = i
    return tuple(inv)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_tokens_are_lexicographic_permutations(n: int) -> None:
    perms = [tuple(int(v) for v in row) for row in permutations(n)]
    assert perms == list(itertools.permutations(range(n)))
    assert perms[0] == tuple(range(n))  # token 0 is the identity
    np.testing.assert_array_equal(permutation_index(permutations(n), n), np.arange(len(perms)))


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_group_axioms(n: int) -> None:
    table, inv = product_table(n), inverse_tokens(n)
    m = math.factorial(n)
    assert table.shape == (m, m)
    ids = np.arange(m)
    np.testing.assert_array_equal(table[0], ids)  # identity on the left
    np.testing.assert_array_equal(table[:, 0], ids)  # and on the right
    np.testing.assert_array_equal(table[ids, inv], np.zeros(m))  # x * x^-1 = e
    np.testing.assert_array_equal(table[inv, ids], np.zeros(m))  # x^-1 * x = e
    for row in table:  # Latin square: every row is a permutation of the group
        assert len(np.unique(row)) == m
    rng = np.random.default_rng(0)
    x, y, z = rng.integers(0, m, size=(3, 2000))
    np.testing.assert_array_equal(table[table[x, y], z], table[x, table[y, z]])  # associativity
    if n >= 3:
        assert not np.array_equal(table, table.T)  # S_n is not abelian


def test_s5_products_match_pure_python() -> None:
    perms = list(itertools.permutations(range(5)))
    rank = {p: i for i, p in enumerate(perms)}
    rng = np.random.default_rng(1)
    for op, fn in {
        "compose": lambda x, y: _compose(x, y),
        "conj": lambda x, y: _compose(_compose(x, y), _inverse(x)),
        "xyx": lambda x, y: _compose(_compose(x, y), x),
    }.items():
        task = get_task(f"s5_{op}")
        data = task.dataset()
        assert len(data) == 120 * 120
        assert (data.inputs[:, 2] == 120).all() and task.answer_positions == (2,)
        for i in rng.integers(0, len(data), size=400):
            x, y = perms[data.inputs[i, 0]], perms[data.inputs[i, 1]]
            assert data.targets[i, 0] == rank[fn(x, y)], (op, x, y)


def test_convention_matches_sympy() -> None:
    """x*y applies x first, as sympy's Permutation product (used by Power et al.'s code)."""
    perm = pytest.importorskip("sympy.combinatorics.permutations")
    perms = permutations(4)
    table = product_table(4)
    for x, y in [(3, 17), (5, 22), (11, 2)]:
        expected = perm.Permutation(perms[x].tolist()) * perm.Permutation(perms[y].tolist())
        assert perms[table[x, y]].tolist() == expected.array_form


def test_conj_is_a_class_function() -> None:
    """Conjugation preserves cycle type: x y x^-1 has the same number of fixed points as y."""
    data = get_task("s4_conj").dataset()
    perms = permutations(4)
    fixed = (perms == np.arange(4)).sum(axis=1)
    np.testing.assert_array_equal(fixed[data.inputs[:, 1]], fixed[data.targets[:, 0]])


def test_token_names_are_one_line_forms() -> None:
    task = get_task("s3_xyx")
    assert task.token_names() == ["012", "021", "102", "120", "201", "210", "="]
    assert task.output_names() == task.token_names()[:-1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("s7_compose", "n in 3..6"),
        ("s2_compose", "n in 3..6"),
        ("s5_commute", "unknown permutation operation 'commute'; known: compose, conj, xyx"),
    ],
)
def test_bad_permutation_specs(spec: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        get_task(spec)
