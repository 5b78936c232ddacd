"""The public few-shot example set `examples/arc_tasks.json`, generated deterministically:

    python -m circuitlab.compose.arc_examples --seed 0 --out examples/arc_tasks.json

18 modular compositions (1-3 operations of + - * mod 31, 59 and 113), 18 grid compositions on
3x3 grids of 3 or 4 colours (symmetries, recolour, replace a colour) and 6 tasks no program of
the library computes. Each task's `steps` (fewest calls of the primitive library) is checked by
search on 24 fresh examples, so a composition that collapses (rot90 twice is rot180) is
dropped, never shipped with a wrong count.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from circuitlab.compose.arc import GRID_OPS, Task, dump_tasks, primitive_library
from circuitlab.compose.kinds import PrimitiveFunction
from circuitlab.compose.solver import solve
from circuitlab.compose.types import ValueType

GENERATOR = "python -m circuitlab.compose.arc_examples --seed {seed} --out examples/arc_tasks.json"

_OPS = {"ADD": ("+", np.add), "SUB": ("-", np.subtract), "MUL": ("*", np.multiply)}


def _expr_tree(rng: np.random.Generator, steps: int, names: str) -> tuple[str, Callable]:
    """A random expression of exactly `steps` binary operations over the variables `names`."""
    if steps == 0:
        i = int(rng.integers(len(names)))
        return names[i], lambda *xs, i=i: xs[i]
    left = int(rng.integers(steps))
    op = list(_OPS)[int(rng.integers(len(_OPS)))]
    symbol, fn = _OPS[op]
    (ls, lf), (rs, rf) = _expr_tree(rng, left, names), _expr_tree(rng, steps - 1 - left, names)
    return f"({ls} {symbol} {rs})", lambda *xs: fn(lf(*xs), rf(*xs))


def _grid_ops(k: int) -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    ops = [(op.lower(), PrimitiveFunction(op).primitive.fn) for op in GRID_OPS]
    ops.append(("recolour", lambda g, k=k: (g + 1) % k))
    for src, dst in itertools.permutations(range(k), 2):
        ops.append((f"replace_{src}_{dst}", lambda g, s=src, d=dst: np.where(g == s, d, g)))
    return ops


def _min_steps(fn: Callable, rng, arity: int, domain: ValueType, lib) -> int | None:
    """Fewest calls of `lib` computing `fn` (None: none within 3), from 24 random examples:
    more than enough that no wrong program fits them."""
    pairs = [(args, fn(*args)) for args in (_sample(rng, domain, arity) for _ in range(24))]
    sol = solve(pairs, [], lib, domain=domain, max_chance=None)
    return sol.depth if sol.solved else None


def _sample(rng: np.random.Generator, domain: ValueType, arity: int) -> tuple:
    if domain.is_grid:
        return tuple(rng.integers(0, domain.n, domain.shape) for _ in range(arity))
    return tuple(int(v) for v in rng.integers(0, domain.n, arity))


def _make(name, fn, arity, domain, rng, steps, program, n_train, n_test) -> Task:
    pairs = []
    for _ in range(n_train + n_test):
        args = _sample(rng, domain, arity)
        out = fn(*args)
        pairs.append((args, np.asarray(out, dtype=np.int64) if domain.is_grid else int(out)))
    return Task(name, pairs[:n_train], pairs[n_train:], str(domain), steps, program)


def generate_tasks(seed: int = 0, n_train: int = 5, n_test: int = 2) -> list[Task]:
    """The public example set: 18 modular compositions (1-3 operations of + - * mod 31, 59,
    113), 18 grid compositions on 3x3 grids of 3 or 4 colours (symmetries, recolour, replace
    colour), and 6 tasks no program of the library computes (lookup tables, a^4 + b with 4
    calls, bitwise and, a row roll, a colour swap). Every `steps` is checked by search."""
    rng = np.random.default_rng(seed)
    lib = primitive_library([31, 59, 113], [3, 4])
    tasks: list[Task] = []
    seen: set[bytes] = set()

    def fresh(fn, arity, domain) -> bool:  # not a function already in the set
        probe = np.random.default_rng(10_000)
        shape = (16, *domain.shape) if domain.is_grid else (64,)
        key = np.asarray(fn(*(probe.integers(0, domain.n, shape) for _ in range(arity))))
        key = key.tobytes() + str(domain).encode()
        return key not in seen and not seen.add(key)

    for steps in (1, 2, 3):
        made = 0
        while made < 6:
            arity = int(rng.integers(2, 4))
            p = [31, 59][made % 2] if steps < 3 else (113 if arity == 3 else [59, 113][made % 2])
            names = "abc"[:arity]
            text, tree = _expr_tree(rng, steps, names)
            if any(n not in text for n in names):
                continue

            def fn(*xs, tree=tree, p=p):
                return np.mod(tree(*[np.asarray(x, np.int64) for x in xs]), p)

            domain = ValueType("mod", p)
            if not fresh(fn, arity, domain) or _min_steps(fn, rng, arity, domain, lib) != steps:
                continue
            made += 1
            tasks.append(
                _make(
                    f"mod{p}_{steps}step_{made}",
                    fn,
                    arity,
                    domain,
                    rng,
                    steps,
                    f"{text[1:-1] if steps else text} mod {p}",
                    n_train,
                    n_test,
                )
            )
    for steps in (1, 2, 3):
        made = 0
        while made < 6:
            k = 3 if made < 4 else 4
            ops = _grid_ops(k)  # symmetries 60%, recolour 20%, a colour replacement 20%
            weights = np.array([0.6 / 7] * 7 + [0.2] + [0.2 / (len(ops) - 8)] * (len(ops) - 8))
            chosen = [ops[int(i)] for i in rng.choice(len(ops), steps, p=weights)]

            def fn(g, chosen=chosen):
                for _, op in chosen:
                    g = op(g)
                return g

            domain = ValueType("grid", k, (3, 3))
            if not fresh(fn, 1, domain) or _min_steps(fn, rng, 1, domain, lib) != steps:
                continue
            made += 1
            text = "x"
            for label, _ in chosen:
                text = f"{label}({text})"
            tasks.append(
                _make(
                    f"grid{k}_{steps}step_{made}", fn, 1, domain, rng, steps, text, n_train, n_test
                )
            )
    table = rng.integers(0, 113, (113, 113))
    z113, g3 = ValueType("mod", 113), ValueType("grid", 3, (3, 3))
    outputs = {}
    unsolvable: list[tuple[str, Callable, int, ValueType, str]] = [
        ("mod113_lookup_table", lambda a, b: table[a, b], 2, z113, "a random table T[a, b]"),
        ("mod113_a4_plus_b", lambda a, b: (a**4 + b) % 113, 2, z113, "a^4 + b mod 113 (4 calls)"),
        ("mod113_bitwise_and", lambda a, b: a & b, 2, z113, "a AND b (bitwise)"),
        (
            "grid3_random_output",
            lambda g: outputs.setdefault(g.tobytes(), rng.integers(0, 3, (3, 3))),
            1,
            g3,
            "an unrelated random grid per input",
        ),
        ("grid3_roll_rows", lambda g: np.roll(g, 1, axis=0), 1, g3, "rows shifted down by one"),
        ("grid3_swap_colours", lambda g: np.choose(g, [0, 2, 1]), 1, g3, "colours 1 and 2 swapped"),
    ]
    for name, fn, arity, domain, text in unsolvable:
        if _min_steps(fn, rng, arity, domain, lib) is not None:
            raise AssertionError(f"{name} has a program in the library")
        tasks.append(_make(name, fn, arity, domain, rng, None, text, n_train, n_test))
    return tasks


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Generate the public few-shot example set.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="examples/arc_tasks.json")
    args = ap.parse_args(argv)
    tasks = generate_tasks(args.seed)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    description = (
        f"{len(tasks)} few-shot tasks for `circuitlab solve`: modular and 3x3 grid compositions "
        "of 1-3 library calls, and tasks with no program in the library (steps null). Format: "
        "circuitlab/compose/arc.py."
    )
    dump_tasks(tasks, args.out, description, GENERATOR.format(seed=args.seed))
    print(f"wrote {len(tasks)} tasks to {args.out}")  # a script, not library code


if __name__ == "__main__":
    main()
