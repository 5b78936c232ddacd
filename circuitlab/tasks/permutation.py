"""Products in the symmetric group S_n (Power et al. 2022 use S5): input `x y =`, answer a
permutation.

Spec: `s{n}_{op}` for n in 3..6, e.g. `s5_compose`. Ops: `compose` (x*y), `conj` (x*y*x^-1),
`xyx` (x*y*x). Every ordered pair (x, y) is one example (n!^2 of them: 14,400 for S5).

Conventions (fixed, so token ids mean the same permutation everywhere):
1. A permutation is its one-line form, a tuple s with s[i] the image of i.
2. Token t is the t-th permutation of range(n) in lexicographic order (itertools.permutations),
   so token 0 is the identity; token n! is `=`. Output token t is the same permutation as input
   token t.
3. x*y applies x first, then y: (x*y)[i] = y[x[i]]. This is the convention of the released
   Power et al. code (numpy `b[a]`, sympy `Permutation.__mul__`). The opposite convention gives
   an isomorphic task (via x -> x^-1), so nothing about learnability depends on the choice.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from circuitlab.tasks.base import Dataset, Task, TaskError, register_family

MIN_N, MAX_N = 3, 6

PERMUTATION_OPS: dict[str, str] = {
    "compose": "x*y",
    "conj": "x*y*x^-1",
    "xyx": "x*y*x",
}


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


@lru_cache(maxsize=8)
def permutations(n: int) -> np.ndarray:
    """(n!, n) int64: all permutations of range(n) in lexicographic order (row = token id)."""
    return _readonly(np.array(list(itertools.permutations(range(n))), dtype=np.int64))


def permutation_index(perms: np.ndarray, n: int) -> np.ndarray:
    """Token ids of one-line permutations (..., n) -> (...): the lexicographic rank.

    Lexicographic order of one-line forms equals numeric order of their base-n digits, so the
    rank is a binary search among the sorted base-n codes."""
    weights = n ** np.arange(n - 1, -1, -1, dtype=np.int64)
    codes = permutations(n) @ weights  # sorted ascending
    return np.searchsorted(codes, perms @ weights)


@lru_cache(maxsize=8)
def product_table(n: int) -> np.ndarray:
    """(n!, n!) int64: table[x, y] = token of x*y (x first, then y)."""
    perms = permutations(n)
    # (x*y)[i] = y[x[i]]: for every x, y gather row y at the positions x[i]
    composed = np.take_along_axis(perms[None, :, :], perms[:, None, :], axis=2)
    return _readonly(permutation_index(composed, n))


@lru_cache(maxsize=8)
def inverse_tokens(n: int) -> np.ndarray:
    """(n!,) int64: token of x^-1 for every token x."""
    inverse = np.argsort(permutations(n), axis=1)  # s^-1[s[i]] = i
    return _readonly(permutation_index(inverse, n))


def permutation_name(perm: np.ndarray | tuple[int, ...]) -> str:
    """One-line form as a string, e.g. '10234' (digits; n <= 10)."""
    return "".join(str(int(i)) for i in perm)


@dataclass
class PermutationTask(Task):
    n: int
    op: str

    def __post_init__(self) -> None:
        if not MIN_N <= self.n <= MAX_N:
            raise TaskError(
                f"permutation tasks need n in {MIN_N}..{MAX_N} (S_n has n! elements), got {self.n}"
            )
        if self.op not in PERMUTATION_OPS:
            raise TaskError(
                f"unknown permutation operation {self.op!r}; known: {', '.join(PERMUTATION_OPS)}"
            )
        self.order = math.factorial(self.n)
        self.spec = f"s{self.n}_{self.op}"
        self.d_vocab = self.order + 1  # group elements and '='
        self.d_vocab_out = self.order
        self.n_ctx = 3
        self.answer_positions = (2,)

    def dataset(self) -> Dataset:
        m, table = self.order, product_table(self.n)
        x, y = (g.ravel() for g in np.meshgrid(*[np.arange(m, dtype=np.int64)] * 2, indexing="ij"))
        xy = table[x, y]
        if self.op == "compose":
            out = xy
        elif self.op == "conj":
            out = table[xy, inverse_tokens(self.n)[x]]
        else:  # xyx
            out = table[xy, x]
        inputs = np.stack([x, y, np.full_like(x, m)], axis=1)
        return Dataset(inputs, out[:, None].astype(np.int64))

    def token_names(self) -> list[str]:
        return self.output_names() + ["="]

    def output_names(self) -> list[str]:
        return [permutation_name(s) for s in permutations(self.n)]

    def describe(self) -> str:
        return f"{PERMUTATION_OPS[self.op]} in S{self.n} ({self.order} elements)"


@register_family(
    "permutation",
    r"s(?P<n>\d+)_(?P<op>[a-z0-9]+)",
    "s5_compose",
    f"s{{n}}_{{op}}, n in {MIN_N}..{MAX_N}; ops: "
    + ", ".join(f"{k} ({v})" for k, v in PERMUTATION_OPS.items()),
)
def _permutation(match: re.Match[str]) -> Task:
    return PermutationTask(int(match["n"]), match["op"])
