"""The acceptance cases of discovery: NSSR's experiments and the cases NSSR fails.

Each case is a seeded generator of examples plus the ground-truth function, so tests and the
benchmark pose exactly the same problems. Junk columns are uniform on [-100, 100]. Physics
cases use NSSR's integer grids (every combination of m, v, h in small ranges), which is the
harder setting for a search: many expressions coincide on small integers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Case:
    name: str
    X: np.ndarray  # (n, k) training inputs
    y: np.ndarray  # (n,) outputs
    names: tuple[str, ...]
    relevant: tuple[str, ...]  # the columns the true function reads
    truth: Callable[..., np.ndarray]  # the true function of the relevant columns
    test_X: np.ndarray  # fresh inputs (relevant columns only) to check the answer on

    def check(self, fn_eval: Callable[..., np.ndarray]) -> bool:
        """True when a discovered function equals the truth on the fresh test inputs."""
        cols = list(self.test_X.T)
        want, got = self.truth(*cols), fn_eval(*cols)
        return bool(np.allclose(got, want, rtol=1e-9, atol=1e-9))


def _junk(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(-100.0, 100.0, n)


def _grid(*ranges: range) -> np.ndarray:
    return np.array(list(itertools.product(*ranges)), dtype=np.float64)


def _assemble(
    name: str,
    cols: dict[str, np.ndarray],
    relevant: tuple[str, ...],
    truth: Callable[..., np.ndarray],
    test_X: np.ndarray,
) -> Case:
    names = tuple(cols)
    X = np.stack([cols[n] for n in names], axis=1)
    y = truth(*(cols[n] for n in relevant))
    return Case(name, X, np.asarray(y, dtype=np.float64), names, relevant, truth, test_X)


def _bits_case(name: str, truth: Callable[..., np.ndarray], seed: int) -> Case:
    rng = np.random.default_rng(seed)
    ab = rng.integers(0, 2, (32, 2)).astype(np.float64)
    return _assemble(
        name, {"a": ab[:, 0], "b": ab[:, 1]}, ("a", "b"), truth, _grid(range(2), range(2))
    )


def _int_pair(
    name: str,
    truth: Callable[..., np.ndarray],
    seed: int,
    lo: int,
    hi: int,
    b_lo: int | None = None,
) -> Case:
    rng = np.random.default_rng(seed)
    a = rng.integers(lo, hi + 1, 40).astype(np.float64)
    b = rng.integers(b_lo if b_lo is not None else lo, hi + 1, 40).astype(np.float64)
    test = np.stack([rng.integers(lo, 4 * hi, 50), rng.integers(b_lo or lo, 4 * hi, 50)], 1)
    return _assemble(name, {"a": a, "b": b}, ("a", "b"), truth, test.astype(np.float64))


def cases(seed: int = 0) -> dict[str, Case]:
    """Every acceptance case, generated from `seed` (junk columns and sampled inputs)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Case] = {}

    def add(case: Case) -> None:
        out[case.name] = case

    def j(n: int) -> np.ndarray:
        return _junk(rng, n)

    nand = lambda a, b: 1.0 - a * b  # noqa: E731
    xor = lambda a, b: np.logical_xor(a, b).astype(np.float64)  # noqa: E731
    add(_bits_case("NAND", nand, seed + 1))
    add(_bits_case("XOR", xor, seed + 2))
    add(
        _int_pair(
            "NAND_INT",
            lambda a, b: -1.0 - (a.astype(np.int64) & b.astype(np.int64)),
            seed + 3,
            0,
            255,
        )
    )
    add(
        _int_pair(
            "XOR_INT",
            lambda a, b: (a.astype(np.int64) ^ b.astype(np.int64)) * 1.0,
            seed + 4,
            0,
            255,
        )
    )
    add(_int_pair("ADD", lambda a, b: a + b, seed + 5, -20, 20))
    add(_int_pair("SUB", lambda a, b: a - b, seed + 6, -20, 20))
    add(_int_pair("MUL", lambda a, b: a * b, seed + 7, -20, 20))
    add(_int_pair("DIV", lambda a, b: a / b, seed + 8, 1, 50, b_lo=1))

    sq = lambda x: x * x  # noqa: E731
    x17 = np.arange(1.0, 8.0)
    add(_assemble("SQUARE", {"x": x17}, ("x",), sq, np.arange(8.0, 11.0)[:, None]))

    ma = _grid(range(1, 6), range(1, 6))
    add(
        _assemble(
            "FORCE",
            {"m": ma[:, 0], "a": ma[:, 1]},
            ("m", "a"),
            lambda m, a: m * a,
            rng.uniform(-50, 50, (50, 2)),
        )
    )
    mav = _grid(range(1, 5), range(1, 5), range(1, 5))
    add(
        _assemble(
            "POWER",
            {"m": mav[:, 0], "a": mav[:, 1], "v": mav[:, 2]},
            ("m", "a", "v"),
            lambda m, a, v: m * a * v,
            rng.uniform(-50, 50, (50, 3)),
        )
    )
    ke = lambda m, v: 0.5 * m * v**2  # noqa: E731
    pe = lambda m, h: 9.81 * m * h  # noqa: E731
    te = lambda m, v, h: 0.5 * m * v**2 + 9.81 * m * h  # noqa: E731
    mv = _grid(range(1, 6), range(1, 6))
    add(
        _assemble(
            "KE", {"m": mv[:, 0], "v": mv[:, 1]}, ("m", "v"), ke, rng.uniform(-50, 50, (50, 2))
        )
    )
    mh = _grid(range(1, 6), range(1, 7))
    add(
        _assemble(
            "PE", {"m": mh[:, 0], "h": mh[:, 1]}, ("m", "h"), pe, rng.uniform(-50, 50, (50, 2))
        )
    )
    mvh = _grid(range(1, 5), range(1, 5), range(1, 4))
    add(
        _assemble(
            "TOTAL_E",
            {"m": mvh[:, 0], "v": mvh[:, 1], "h": mvh[:, 2]},
            ("m", "v", "h"),
            te,
            rng.uniform(-50, 50, (50, 3)),
        )
    )

    # with junk columns
    x = np.arange(1.0, 11.0).repeat(2)
    add(
        _assemble(
            "SQUARE_JUNK",
            {"j0": j(20), "x": x, "j1": j(20)},
            ("x",),
            sq,
            rng.uniform(-50, 50, (50, 1)),
        )
    )
    n = len(ma)
    add(
        _assemble(
            "FORCE_JUNK",
            {"j0": j(n), "m": ma[:, 0], "j1": j(n), "a": ma[:, 1], "j2": j(n)},
            ("m", "a"),
            lambda m, a: m * a,
            rng.uniform(-50, 50, (50, 2)),
        )
    )
    n = len(mv)
    add(
        _assemble(
            "KE_CORRELATED",
            {"m": mv[:, 0], "v": mv[:, 1], "m_noisy": mv[:, 0] + rng.normal(0, 0.05, n)},
            ("m", "v"),
            ke,
            rng.uniform(-50, 50, (50, 2)),
        )
    )
    n = len(mh)
    add(
        _assemble(
            "PE_JUNK",
            {"j0": j(n), "m": mh[:, 0], "h": mh[:, 1], "j1": j(n)},
            ("m", "h"),
            pe,
            rng.uniform(-50, 50, (50, 2)),
        )
    )
    n = len(mvh)
    add(
        _assemble(
            "TOTAL_E_JUNK",
            {"j0": j(n), "m": mvh[:, 0], "v": mvh[:, 1], "h": mvh[:, 2], "j1": j(n)},
            ("m", "v", "h"),
            te,
            rng.uniform(-50, 50, (50, 3)),
        )
    )

    # the cases NSSR gets wrong
    x0, x1 = rng.integers(-10, 11, (2, 30)).astype(np.float64)
    add(
        _assemble(
            "PRODUCT_PLUS_CONST",
            {"x0": x0, "x1": x1},
            ("x0", "x1"),
            lambda a, b: a * b + 2.5,
            rng.uniform(-50, 50, (50, 2)),
        )
    )
    xs = rng.integers(-10, 11, 25).astype(np.float64)
    add(_assemble("AFFINE", {"x": xs}, ("x",), lambda v: 3 * v + 2, rng.uniform(-50, 50, (50, 1))))
    xsym = np.arange(-6.0, 7.0).repeat(2)
    add(
        _assemble(
            "SQUARE_SYMMETRIC",
            {"x": xsym, "j0": j(len(xsym)), "j1": j(len(xsym))},
            ("x",),
            sq,
            rng.uniform(-50, 50, (50, 1)),
        )
    )
    return out


ENERGY_CASES = ("KE", "PE", "TOTAL_E_JUNK")
