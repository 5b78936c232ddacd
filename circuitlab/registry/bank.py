"""The bank of a search: every distinct candidate by cost level, its values on the searched
rows (in pages, so a level is never held twice), how it was built, and the keys that make
observationally equivalent candidates one (values equal to ~2e-10 relative, or equal up to an
affine map for the fits)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from circuitlab.registry import expr as ex

if TYPE_CHECKING:
    from circuitlab.registry.search import Op

Ref = tuple[int, int]  # (cost level, index in level)
PAGE_BYTES = 16 * 1024**2  # pages of the bank's values (`Pages`)


@dataclass
class Batch:
    """How a run of consecutive bank entries was built: op `oi` (-1 for input columns) applied
    to arguments picks[a][r] of cost split[a]."""

    start: int
    oi: int
    split: tuple[int, ...]
    picks: np.ndarray  # (arity, m) indices into the argument levels (columns for oi = -1)


class Pages:
    """A growing float64 (rows, width) array kept in pages of up to PAGE_BYTES: appending
    copies only the new rows and reading gathers from the pages, so its data is never held
    twice (concatenating a level's blocks when it ends would double the largest level). A
    page is allocated whole but only the rows written take memory."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.cap = max(1, PAGE_BYTES // (8 * max(width, 1)))  # rows per page
        self.pages: list[np.ndarray] = []
        self.starts: list[int] = []
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def append(self, block: np.ndarray) -> None:
        done = 0
        while done < len(block):
            if not self.pages or self.n - self.starts[-1] == len(self.pages[-1]):
                self.pages.append(np.empty((self.cap, self.width)))
                self.starts.append(self.n)
            page, used = self.pages[-1], self.n - self.starts[-1]
            k = min(len(page) - used, len(block) - done)
            page[used : used + k] = block[done : done + k]
            done += k
            self.n += k

    def row(self, i: int) -> np.ndarray:
        p = bisect.bisect_right(self.starts, i) - 1
        return self.pages[p][i - self.starts[p]]

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows idx, in that order (a new array)."""
        if len(self.pages) == 1:
            return self.pages[0][idx]
        which = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty((len(idx), self.width))
        for p in np.unique(which):
            sel = which == p
            out[sel] = self.pages[p][idx[sel] - self.starts[p]]
        return out

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """self @ v, page by page."""
        pages = zip(self.pages, self.starts, strict=True)
        parts = [page[: self.n - start] @ v for page, start in pages]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


class Bank:
    """Distinct candidates by cost level: values on all rows, kind and how each was built."""

    def __init__(self) -> None:
        self.vals: dict[int, Pages] = {}  # written as they come (`add`)
        self.kinds: dict[int, np.ndarray] = {}  # when the level is finished (`finish`)
        self.batches: dict[int, list[Batch]] = {}
        self._pending: dict[int, list[np.ndarray]] = {}  # kinds of the level being built
        self._sizes: dict[int, int] = {}
        self._exprs: dict[Ref, ex.Expr] = {}

    def add(
        self,
        level: int,
        vals: np.ndarray,
        kinds: np.ndarray,
        oi: int,
        split: tuple[int, ...],
        picks: np.ndarray,
    ) -> int:
        """Queue entries for `level`; returns the index of the first one."""
        start = self._sizes.get(level, 0)
        if level not in self.vals:
            self.vals[level] = Pages(vals.shape[1])
        self.vals[level].append(vals)
        self._pending.setdefault(level, []).append(kinds)
        self.batches.setdefault(level, []).append(Batch(start, oi, split, picks))
        self._sizes[level] = start + len(vals)
        return start

    def size_of(self, level: int) -> int:
        return self._sizes.get(level, 0)

    def value(self, ref: Ref) -> np.ndarray:
        level, i = ref
        if level not in self.vals or not 0 <= i < len(self.vals[level]):
            raise IndexError(ref)
        return self.vals[level].row(i)

    def finish(self, level: int) -> None:
        parts = self._pending.pop(level, [])
        if level in self.kinds:
            parts.insert(0, self.kinds[level])
        if parts:
            self.kinds[level] = np.concatenate(parts)

    def _batch(self, ref: Ref) -> tuple[Batch, int]:
        """The batch that made `ref`, and its position in it."""
        level, i = ref
        batches = self.batches[level]
        bt = batches[bisect.bisect_right([b.start for b in batches], i) - 1]
        return bt, i - bt.start

    def replay(
        self, ref: Ref, ops: Sequence[Op], X: np.ndarray, cache: dict[Ref, np.ndarray]
    ) -> np.ndarray:
        """The values of `ref` on other rows X (inputs as in `Rows.X`), made again by the same
        operations from the same arguments, so they equal what the bank would hold there (the
        full rows of a search on a sample); results of sub-candidates are kept in `cache`."""
        if ref in cache:
            return cache[ref]
        bt, r = self._batch(ref)
        if bt.oi < 0:
            out = X[:, int(bt.picks[0][r])]
        else:
            args = [
                self.replay((bt.split[a], int(bt.picks[a][r])), ops, X, cache)[None, :]
                for a in range(len(bt.split))
            ]
            out = ops[bt.oi].apply(*args)[0]
        cache[ref] = out
        return out

    def expr(self, ref: Ref, ops: Sequence[Op]) -> ex.Expr:
        if ref in self._exprs:
            return self._exprs[ref]
        bt, r = self._batch(ref)
        if bt.oi < 0:
            out: ex.Expr = ex.Var(int(bt.picks[0][r]))
        else:
            args = [
                self.expr((bt.split[a], int(bt.picks[a][r])), ops) for a in range(len(bt.split))
            ]
            out = ops[bt.oi].build(args)
        self._exprs[ref] = out
        return out


_MULTIPLIERS: dict[int, np.ndarray] = {}


def _hash_rows(bits: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of a uint64 array (vectorised; wraps modulo 2**64)."""
    n = bits.shape[1]
    if n not in _MULTIPLIERS:
        rng = np.random.default_rng(20250101 + n)
        _MULTIPLIERS[n] = rng.integers(1, 2**63, size=n, dtype=np.uint64) * np.uint64(
            2
        ) + np.uint64(1)
    # mix every element first (murmur3's finaliser): the sum below is linear, and without this
    # a difference confined to the top bit (a sign) cancels in pairs (2 * 2**63 = 0 mod 2**64)
    x = bits ^ (bits >> np.uint64(33))
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    h = (x * _MULTIPLIERS[n]).sum(axis=1, dtype=np.uint64)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(29)
    return h


def _truncated_bits(vals: np.ndarray, drop: int) -> np.ndarray:
    """float64 bit patterns with the lowest `drop` mantissa bits cleared (and -0.0 as 0.0)."""
    bits = np.ascontiguousarray(vals + 0.0, dtype=np.float64).view(np.uint64)
    return bits & np.uint64(~((1 << drop) - 1) & (2**64 - 1))


def _keys(vals: np.ndarray) -> np.ndarray:
    """Observational-equivalence keys: values with 32 of 52 mantissa bits (~2e-10 relative), so
    rounding noise merges while values that differ at the acceptance tolerance (rtol 1e-9)
    usually stay apart."""
    return _hash_rows(_truncated_bits(vals, 20))


def _affine_keys(vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys equal for candidates equal up to a*f + b; and which candidates vary at all."""
    centred = vals - vals.mean(axis=1, keepdims=True)
    norm = np.sqrt((centred**2).sum(axis=1))
    varies = norm > 1e-12 * (np.abs(vals).max(axis=1) + 1e-300)
    unit = centred / np.where(varies, norm, 1.0)[:, None]
    first = np.argmax(np.abs(unit) > 1e-6, axis=1)
    sign = np.sign(unit[np.arange(len(unit)), first])
    unit = unit * np.where(sign == 0, 1.0, sign)[:, None]
    return _hash_rows(_truncated_bits(np.round(unit, 9), 24)), varies


def _new_keys(keys: np.ndarray, seen: set[int]) -> np.ndarray:
    """Indices of the first occurrence of each key not yet in `seen` (which is updated)."""
    uniq, first = np.unique(keys, return_index=True)
    fresh = np.array([k not in seen for k in uniq.tolist()], dtype=bool)
    seen.update(uniq[fresh].tolist())
    return np.sort(first[fresh])
