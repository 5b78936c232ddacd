"""Every modular operation against a pure-Python reference on small primes."""

from __future__ import annotations

import pytest

from circuitlab.tasks import TaskError, get_task
from circuitlab.tasks.modular import OPERATIONS, apply_op, is_prime


def _inv(b: int, p: int) -> int:
    return pow(b, -1, p)  # extended Euclid in CPython, independent of the Fermat table


REFERENCE = {
    "add": lambda a, b, p: a + b,
    "sub": lambda a, b, p: a - b,
    "mul": lambda a, b, p: a * b,
    "div": lambda a, b, p: a * _inv(b, p),
    "x2y": lambda a, b, p: a**2 + b,
    "x3y": lambda a, b, p: a**3 + b,
    "x2y2": lambda a, b, p: a**2 + b**2,
    "x2xyy2": lambda a, b, p: a**2 + a * b + b**2,
    "x2xyy2x": lambda a, b, p: a**2 + a * b + b**2 + a,
    "x3xy": lambda a, b, p: a**3 + a * b,
    "x3xy2y": lambda a, b, p: a**3 + a * b**2 + b,
    "odddiv": lambda a, b, p: a * _inv(b, p) if b % 2 else a - b,
    "oddsub": lambda a, b, p: a // b if b % 2 else a - b,
    "evenaddmul": lambda a, b, p: a + b if a % 2 == 0 else a * b,
    "evenaddsub": lambda a, b, p: a + b if a % 2 == 0 else a - b,
}
DIVIDES = {"div", "odddiv"}


def test_every_operation_has_a_reference() -> None:
    assert set(REFERENCE) == set(OPERATIONS)


@pytest.mark.parametrize("p", [7, 11])
@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_operation_matches_reference(op: str, p: int) -> None:
    task = get_task(f"{op}_mod_{p}")
    data = task.dataset()
    expected = {
        (a, b, p): REFERENCE[op](a, b, p) % p
        for a in range(p)
        for b in range(p)
        if not (op in DIVIDES and b == 0)
    }
    rows = zip(data.inputs.tolist(), data.targets[:, 0].tolist(), strict=True)
    got = {tuple(row): c for row, c in rows}
    assert got == expected  # also checks the '=' token (p) and that b = 0 is dropped for division
    assert task.answer_positions == (2,) and task.d_vocab == p + 1 and task.d_vocab_out == p


def test_large_prime_stays_exact() -> None:
    """Cubes of residues near 2048 overflow nothing and match Python integers."""
    import numpy as np

    p = 2039
    a = np.array([p - 1, p - 2, 1234], dtype=np.int64)
    b = np.array([p - 1, 5, 2038], dtype=np.int64)
    values, valid = apply_op("x3xy2y", a, b, p)
    assert valid.all()
    pairs = zip(a.tolist(), b.tolist(), strict=True)
    assert values.tolist() == [(x**3 + x * y**2 + y) % p for x, y in pairs]


def test_is_prime() -> None:
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("add_mod_100", "p must be a prime for add_mod_p, got 100"),
        ("add_mod_1", "p must be a prime"),
        ("add_mod_4099", "at most 2048"),
        ("pow_mod_7", "unknown modular operation 'pow'; known: add, sub"),
    ],
)
def test_bad_modular_specs(spec: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        get_task(spec)
