"""Binary operations mod a prime p (Power et al. 2022): input `a b =`, answer (a op b) mod p."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from circuitlab.tasks.base import Dataset, Task, TaskError, register_family

# name -> (formula for docs, vectorised op on int64 arrays, a, b -> value before mod p, b filter)
BinaryOp = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def _inverse(b: np.ndarray, p: int) -> np.ndarray:
    return np.array([pow(int(x), p - 2, p) for x in b], dtype=np.int64)


OPERATIONS: dict[str, tuple[str, BinaryOp, bool]] = {
    # name: (formula, op(a, b, p), requires b != 0)
    "add": ("a+b", lambda a, b, p: a + b, False),
    "sub": ("a-b", lambda a, b, p: a - b, False),
    "mul": ("a*b", lambda a, b, p: a * b, False),
    "div": ("a/b", lambda a, b, p: a * _inverse(b, p), True),
    "x2y": ("a^2+b", lambda a, b, p: a * a + b, False),
    "x3y": ("a^3+b", lambda a, b, p: a * a % p * a + b, False),
    "x2y2": ("a^2+b^2", lambda a, b, p: a * a + b * b, False),
    "x2xyy2": ("a^2+ab+b^2", lambda a, b, p: a * a + a * b + b * b, False),
    "x2xyy2x": ("a^2+ab+b^2+a", lambda a, b, p: a * a + a * b + b * b + a, False),
    "x3xy": ("a^3+ab", lambda a, b, p: a * a % p * a + a * b, False),
    "x3xy2y": ("a^3+ab^2+b", lambda a, b, p: a * a % p * a + a * (b * b % p) + b, False),
    "oddsub": ("a//b if b odd else a-b", lambda a, b, p: np.where(b % 2 == 1, a // np.maximum(b, 1), a - b), False),
    "evenaddmul": ("a+b if a even else a*b", lambda a, b, p: np.where(a % 2 == 0, a + b, a * b), False),
    "evenaddsub": ("a+b if a even else a-b", lambda a, b, p: np.where(a % 2 == 0, a + b, a - b), False),
}


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


@dataclass
class ModularTask(Task):
    op: str
    p: int

    def __post_init__(self) -> None:
        if self.op not in OPERATIONS:
            raise TaskError(f"unknown modular operation {self.op!r}; known: {', '.join(OPERATIONS)}")
        if not is_prime(self.p):
            raise TaskError(f"p must be a prime for {self.op}_mod_p, got {self.p}")
        self.spec = f"{self.op}_mod_{self.p}"
        self.d_vocab = self.p + 1  # numbers 0..p-1 and '=' (token p)
        self.d_vocab_out = self.p
        self.n_ctx = 3
        self.answer_positions = (2,)

    def dataset(self) -> Dataset:
        p = self.p
        a, b = np.meshgrid(np.arange(p, dtype=np.int64), np.arange(p, dtype=np.int64), indexing="ij")
        a, b = a.ravel(), b.ravel()
        _, op, nonzero_b = OPERATIONS[self.op]
        if nonzero_b:
            keep = b != 0
            a, b = a[keep], b[keep]
        c = np.mod(op(a, b, p), p)
        inputs = np.stack([a, b, np.full_like(a, p)], axis=1)
        return Dataset(inputs, c[:, None])

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.p)] + ["="]

    def describe(self) -> str:
        return f"({OPERATIONS[self.op][0]}) mod {self.p}"


@register_family(
    "modular",
    r"(?P<op>[a-z0-9]+)_mod_(?P<p>\d+)",
    "add_mod_113",
    f"binary operation mod prime p; ops: {', '.join(OPERATIONS)}",
)
def _modular(match: re.Match[str]) -> Task:
    return ModularTask(match["op"], int(match["p"]))
