"""Binary operations mod a prime p (Power et al. 2022): input `a b =`, answer (a op b) mod p.

Spec: `{op}_mod_{p}`, e.g. `add_mod_113`. Tokens 0..p-1 are the numbers and token p is `=`; the
answer (a number, output vocabulary p) is read at the `=` position. Every pair (a, b) is one
example, except for operations that divide by b, which drop b = 0.

The operations are those of Power et al. 2022 ("Grokking", appendix A.1, and the released
openai/grok code) plus multiplication. Two variants of their mixed operation exist: the paper's
`odddiv` (modular division a/b when b is odd, a-b otherwise) and the released code's `oddsub`
(integer floor division a//b when b is odd, a-b otherwise).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from circuitlab.tasks.base import Dataset, Task, TaskError, register_family

# op(a, b, p) on int64 arrays with entries in 0..p-1 -> values before reduction mod p
BinaryOp = Callable[[np.ndarray, np.ndarray, int], np.ndarray]

MAX_P = 2048  # p^2 examples: about 4 million at the limit, ~130 MB of int64 inputs


@lru_cache(maxsize=16)
def inverse_table(p: int) -> np.ndarray:
    """(p,) int64: multiplicative inverses mod prime p (Fermat); entry 0 is 0 and never used."""
    table = np.array([pow(x, p - 2, p) for x in range(p)], dtype=np.int64)
    table.flags.writeable = False
    return table


def _inverse(b: np.ndarray, p: int) -> np.ndarray:
    return inverse_table(p)[b]


def _cube(a: np.ndarray, p: int) -> np.ndarray:
    return a * a % p * a


OPERATIONS: dict[str, tuple[str, BinaryOp, bool]] = {
    # name: (formula, op(a, b, p), requires b != 0)
    "add": ("a+b", lambda a, b, p: a + b, False),
    "sub": ("a-b", lambda a, b, p: a - b, False),
    "mul": ("a*b", lambda a, b, p: a * b, False),
    "div": ("a/b", lambda a, b, p: a * _inverse(b, p), True),
    "x2y": ("a^2+b", lambda a, b, p: a * a + b, False),
    "x3y": ("a^3+b", lambda a, b, p: _cube(a, p) + b, False),
    "x2y2": ("a^2+b^2", lambda a, b, p: a * a + b * b, False),
    "x2xyy2": ("a^2+ab+b^2", lambda a, b, p: a * a + a * b + b * b, False),
    "x2xyy2x": ("a^2+ab+b^2+a", lambda a, b, p: a * a + a * b + b * b + a, False),
    "x3xy": ("a^3+ab", lambda a, b, p: _cube(a, p) + a * b, False),
    "x3xy2y": ("a^3+ab^2+b", lambda a, b, p: _cube(a, p) + a * (b * b % p) + b, False),
    "odddiv": (
        "a/b if b odd else a-b",
        lambda a, b, p: np.where(b % 2 == 1, a * _inverse(b, p), a - b),
        True,
    ),
    "oddsub": (
        "a//b if b odd else a-b",
        lambda a, b, p: np.where(b % 2 == 1, a // np.maximum(b, 1), a - b),
        False,
    ),
    "evenaddmul": (
        "a+b if a even else a*b",
        lambda a, b, p: np.where(a % 2 == 0, a + b, a * b),
        False,
    ),
    "evenaddsub": (
        "a+b if a even else a-b",
        lambda a, b, p: np.where(a % 2 == 0, a + b, a - b),
        False,
    ),
}


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def check_prime(p: int, what: str, max_p: int = MAX_P) -> None:
    """Raise a TaskError unless p is a prime in [2, max_p]."""
    if not is_prime(p):
        raise TaskError(f"p must be a prime for {what}, got {p} (e.g. 97, 113)")
    if p > max_p:
        raise TaskError(f"p must be at most {max_p} for {what}, got {p}")


def apply_op(op: str, a: np.ndarray, b: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(a op b) mod p for arrays of residues; returns (values, valid) where valid is False where
    the operation is undefined (b = 0 for division); values there are 0."""
    if op not in OPERATIONS:
        raise TaskError(f"unknown modular operation {op!r}; known: {', '.join(OPERATIONS)}")
    _, fn, nonzero_b = OPERATIONS[op]
    valid = b != 0 if nonzero_b else np.ones(np.shape(b), dtype=bool)
    values = np.mod(fn(a, b, p), p)
    return np.where(valid, values, 0), valid


@dataclass
class ModularTask(Task):
    op: str
    p: int

    def __post_init__(self) -> None:
        if self.op not in OPERATIONS:
            known = ", ".join(OPERATIONS)
            raise TaskError(f"unknown modular operation {self.op!r}; known: {known}")
        check_prime(self.p, f"{self.op}_mod_p")
        self.spec = f"{self.op}_mod_{self.p}"
        self.d_vocab = self.p + 1  # numbers 0..p-1 and '=' (token p)
        self.d_vocab_out = self.p
        self.n_ctx = 3
        self.answer_positions = (2,)

    def dataset(self) -> Dataset:
        p = self.p
        a, b = (g.ravel() for g in np.meshgrid(*[np.arange(p, dtype=np.int64)] * 2, indexing="ij"))
        c, valid = apply_op(self.op, a, b, p)
        a, b, c = a[valid], b[valid], c[valid]
        inputs = np.stack([a, b, np.full_like(a, p)], axis=1)
        return Dataset(inputs, c[:, None])

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.p)] + ["="]

    def describe(self) -> str:
        return f"({OPERATIONS[self.op][0]}) mod {self.p}"


@register_family(
    "modular",
    r"(?!synth_)(?P<op>[a-z0-9]+)_mod_(?P<p>\d+)",
    "add_mod_113",
    f"{{op}}_mod_{{p}}, p prime <= {MAX_P}; ops: {', '.join(OPERATIONS)}",
)
def _modular(match: re.Match[str]) -> Task:
    return ModularTask(match["op"], int(match["p"]))
