"""The rows a discovery searches on: a table of more than `search_rows` rows is searched on a
seeded sample of its training and held-out rows (`Sample`), grown by the rows where a fit to
the sample failed; and the checks of the two settings that bound a search (`search_rows`,
`memory_bytes`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from circuitlab.registry.domains import RegistryError
from circuitlab.registry.examples import Examples
from circuitlab.registry.search import Rows

if TYPE_CHECKING:
    from circuitlab.registry.results import DiscoveryConfig

MIN_SEARCH_ROWS = 8
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def check_search_rows(value: Any) -> int:
    """`value` (an int, or a string of one) as the search rows; refuses fewer than 8 (too few
    to fit constants and tell candidates apart)."""
    try:
        if isinstance(value, bool) or not isinstance(value, int | np.integer | str):
            raise ValueError
        n = int(value.strip() if isinstance(value, str) else value)
    except ValueError:
        n = None
    if n is None or n < MIN_SEARCH_ROWS:
        raise RegistryError(
            f"search rows must be an integer of at least {MIN_SEARCH_ROWS}, got {value!r}"
        )
    return n


def check_memory(value: Any) -> int:
    """`value` in bytes: an int, or a size such as "512M", "2G", "1.5GiB" (powers of 1024;
    a plain number is bytes); refuses anything not a positive size."""
    n: int | None = None
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        n = int(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*", value, re.IGNORECASE)
        if m:
            n = int(float(m[1]) * _UNITS[m[2].upper()])
    if n is None or n <= 0:
        raise RegistryError(
            f"the memory budget must be a positive number of bytes or a size such as 512M or "
            f"2G, got {value!r}"
        )
    return n


def split_rows(
    data: Examples, cfg: DiscoveryConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The training and held-out example rows, in a seeded random order."""
    order = rng.permutation(data.n)
    n_hold = int(round(cfg.holdout * data.n)) if data.n >= 4 else 0
    n_hold = min(n_hold, data.n - max(2, data.k + 1)) if n_hold else 0
    n_hold = max(n_hold, 0)
    return order[: data.n - n_hold], order[data.n - n_hold :]


def sample_sizes(n: int, n_train: int, n_hold: int, cfg: DiscoveryConfig) -> tuple[int, int]:
    """Training and held-out rows searched: all of a table of at most search_rows rows."""
    if n <= cfg.search_rows:
        return n_train, n_hold
    return min(n_train, cfg.search_rows), min(n_hold, cfg.search_rows // 2)


@dataclass
class Sample:
    """The rows a search evaluates candidates on: positions in the training and held-out
    rows of `full` (all rows, in their seeded order, so a prefix is a seeded sample), grown
    by the counterexample rows of fits that failed on the full rows. full is None when the
    search runs on every row."""

    full: Rows | None
    rows: Rows
    train: np.ndarray
    hold: np.ndarray

    @classmethod
    def of(cls, full: Rows, n: int, cfg: DiscoveryConfig) -> Sample:
        n_tr, n_ho = sample_sizes(n, full.n_train, full.n_hold, cfg)
        if (n_tr, n_ho) == (full.n_train, full.n_hold):
            return cls(None, full, np.arange(n_tr), np.arange(n_ho))
        train, hold = np.arange(n_tr), np.arange(n_ho)
        return cls(full, full.subset(train, hold), train, hold)

    def add(self, positions: Sequence[int]) -> None:
        """Add rows given as positions in the full [training | held-out] rows."""
        assert self.full is not None
        n = self.full.n_train
        pos = np.asarray(positions, dtype=np.int64)
        train = np.setdiff1d(pos[pos < n], self.train)
        hold = np.setdiff1d(pos[pos >= n] - n, self.hold)
        self.train = np.concatenate([self.train, train])
        self.hold = np.concatenate([self.hold, hold])
        self.rows = self.full.subset(self.train, self.hold)
