"""Few-shot solver: recovers 1-3 call compositions, refuses what nothing explains, never guesses,
and typed pruning tests far fewer candidates than untyped enumeration."""

from __future__ import annotations

import numpy as np
import pytest

from circuitlab.compose.arc import primitive_library
from circuitlab.compose.solver import ExactProposer, solve
from circuitlab.registry.proposer import Proposal, UniformProposer

LIB = primitive_library([31, 59, 113], [3, 4])


def _pairs(fn, n: int, p: int, arity: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        args = tuple(int(v) for v in rng.integers(0, p, arity))
        out.append((args, int(fn(*args) % p)))
    return out


def _grid_pairs(fn, n: int, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [((g,), fn(g)) for g in rng.integers(0, k, (n, 3, 3))]


CASES = {
    "a*b mod 31": (lambda: _pairs(lambda a, b: a * b, 5, 31, 2), "Z_31", 1, "MULMOD_31"),
    "a*b+c mod 31": (lambda: _pairs(lambda a, b, c: a * b + c, 5, 31, 3), "Z_31", 2, "ADDMOD_31"),
    "(a+b)*(a-b) mod 113": (
        lambda: _pairs(lambda a, b: (a + b) * (a - b), 5, 113, 2),
        "Z_113",
        3,
        "SUBMOD_113",
    ),
    "mirror(rot90(x))": (
        lambda: _grid_pairs(lambda g: np.flip(np.rot90(g), -1), 5),
        "grid[3x3]:Z_3",
        1,  # a single symmetry of the square: TRANSPOSE
        "TRANSPOSE",
    ),
    "recolour(recolour(transpose(x)))": (
        lambda: _grid_pairs(lambda g: (g.T + 2) % 3, 5),
        "grid[3x3]:Z_3",
        3,
        "RECOLOUR_3",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_recovers_compositions_from_three_demonstrations(case):
    make, domain, depth, name = CASES[case]
    pairs = make()
    sol = solve(pairs[:3], [i for i, _ in pairs[3:]], LIB, max_depth=3, domain=domain)
    assert sol.solved and sol.depth == depth, sol.message
    for got, (_, want) in zip(sol.predictions, pairs[3:], strict=True):
        assert np.array_equal(got, want)
    # the program is a real Program: it runs, renders as Python, and its trace has each call
    inputs = [np.stack([np.asarray(i[k]) for i, _ in pairs]) for k in range(len(pairs[0][0]))]
    assert np.array_equal(sol.program(*inputs), np.stack([np.asarray(o) for _, o in pairs]))
    assert name in sol.program.to_python()
    assert len(sol.trace.steps) == len(sol.program.calls)
    assert 0 < sol.hypotheses_tested == sum(sol.per_depth)


def test_integers_are_typed_by_the_library_without_a_domain():
    pairs = _pairs(lambda a, b: a - b, 5, 59, 2, seed=3)
    sol = solve(pairs[:3], [i for i, _ in pairs[3:]], LIB)
    assert sol.solved and "SUBMOD_59" in sol.program.to_python()
    assert [int(p) for p in sol.predictions] == [o for _, o in pairs[3:]]


@pytest.mark.parametrize(
    "fn",
    [
        lambda a, b: np.random.default_rng(a * 113 + b).integers(113),  # a lookup table
        lambda a, b: a**4 + b,  # four calls
    ],
)
def test_no_program_found_when_nothing_explains_every_pair(fn):
    pairs = _pairs(fn, 5, 113, 2)
    sol = solve(pairs[:3], [i for i, _ in pairs[3:]], LIB, max_depth=3, domain="Z_113")
    assert sol.status == "no program found" and sol.message.startswith("no program found")
    assert sol.predictions is None and sol.program is None and sol.hypotheses_tested > 1000


def test_never_a_guess_chance_fits_and_equal_programs_are_ambiguous():
    pairs = _pairs(lambda a, b: a * b, 3, 113, 2)
    one = solve(pairs[:1], [i for i, _ in pairs[1:]], LIB, domain="Z_113")
    assert one.status == "ambiguous" and one.predictions is None and "by chance" in one.message
    # a demonstration symmetric in the diagonal: rot90 and flip (one call each) both explain
    # it and differ on the test input
    sym = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]])
    test = np.arange(9).reshape(3, 3) % 3
    sol = solve([((sym,), np.rot90(sym))], [(test,)], LIB, domain="grid[3x3]:Z_3")
    assert sol.status == "ambiguous" and sol.predictions is None
    asym = _grid_pairs(lambda g: np.rot90(g), 1, seed=4)  # one asymmetric grid is enough
    assert solve(asym, [(test,)], LIB, domain="grid[3x3]:Z_3").solved


def test_typed_pruning_tests_fewer_candidates_than_untyped():
    for pairs, domain in [
        (_pairs(lambda a, b: a * b + a, 5, 113, 2), "Z_113"),
        (_grid_pairs(lambda g: (np.rot90(g) + 1) % 3, 5), "grid[3x3]:Z_3"),
    ]:
        tests = [i for i, _ in pairs[3:]]
        typed = solve(pairs[:3], tests, LIB, domain=domain, exhaustive=True)
        untyped = solve(pairs[:3], tests, LIB, domain=domain, exhaustive=True, typed=False)
        assert typed.solved and untyped.solved and typed.depth == untyped.depth
        for got, want in zip(typed.predictions, untyped.predictions, strict=True):
            assert np.array_equal(got, want)
        assert untyped.hypotheses_tested >= 4 * typed.hypotheses_tested


def test_proposer_orders_and_filters_the_library():
    pairs = _pairs(lambda a, b: a * b, 5, 31, 2)
    tests = [i for i, _ in pairs[3:]]

    class NoMul:
        name = "no-mul"

        def propose(self, task, ops):
            kept = [o.name for o in ops if "MULMOD" not in o.name]
            return Proposal(dict.fromkeys(kept, 1), tuple(kept))

    # without MULMOD, a*b needs 3 calls: DIVMOD(b, DIVMOD(DIVMOD(a, a), a))
    assert solve(pairs[:3], tests, LIB, proposer=NoMul(), max_depth=2).status == "no program found"
    assert "DIVMOD" in solve(pairs[:3], tests, LIB, proposer=NoMul()).program.to_python()
    # the registry's proposers fit the same interface
    assert solve(pairs[:3], tests, LIB, proposer=UniformProposer()).solved
    assert solve(pairs[:3], tests, LIB, proposer=ExactProposer()).solved


def test_circuits_are_searched_and_counted(lib, small_catalog):
    """A task the add_mod_11 circuit computes (it is not grokked: its own outputs are the
    target) is solved by calling the circuit."""
    add = lib.circuit(small_catalog[1]["add_mod_11"])
    rng = np.random.default_rng(0)
    args = rng.integers(0, 11, (5, 2))
    outs = add(args[:, 0], args[:, 1])
    pairs = [((int(a), int(b)), int(o)) for (a, b), o in zip(args, outs, strict=True)]
    sol = solve(pairs[:4], [pairs[4][0]], [add], domain="Z_11", max_chance=None)
    assert sol.solved and sol.circuit_calls > 0 and "circuit:" in sol.program.to_python()
    assert int(sol.predictions[0]) == pairs[4][1]
    assert any(step.kind == "circuit" for step in sol.trace.steps)
