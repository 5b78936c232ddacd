"""Grid puzzles (ARC-like, tiny): read an H x W grid of colours, write its transform.

Spec: `grid_{op}_{H}x{W}` or `grid_{op}_{H}x{W}_c{K}`, H and W in 3..5, K colours in 2..10
(default 3), e.g. `grid_rot90_3x3`, `grid_mirror_3x5_c4`.

Encoding (one answer per output cell, the loss on answer positions only):
1. Tokens 0..K-1 are colours and token K is the query `?`.
2. A sequence is the H*W input cells in row-major order, then H*W query tokens, one per output
   cell in row-major order: n_ctx = 2*H*W. The answer positions are the query positions and the
   targets are the output colours (output vocabulary K).
3. Ops: rot90 / rot270 (counter-clockwise / clockwise, as np.rot90 with k=1 / k=3), rot180,
   mirror (left-right, np.fliplr), flip (up-down, np.flipud), transpose (main diagonal),
   antitranspose (anti-diagonal), recolour (colour c -> (c+1) mod K, cells stay). Ops that swap
   the axes need a square grid.
4. Examples: every grid when there are at most SAMPLE_SIZE (20,000) of them, otherwise the first
   SAMPLE_SIZE distinct grids drawn with a fixed seed (independent of op, so tasks of the same
   shape and colour count share their input grids). The split seed then shuffles these.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from circuitlab.tasks.base import Dataset, Task, TaskError, register_family

MIN_SIDE, MAX_SIDE = 3, 5
MIN_COLOURS, MAX_COLOURS, DEFAULT_COLOURS = 2, 10, 3
SAMPLE_SIZE = 20_000
SAMPLE_SEED = 0

# name -> (description, transform of a batch (n, H, W) -> (n, H', W'), needs a square grid)
GridOp = Callable[[np.ndarray, int], np.ndarray]
GRID_OPS: dict[str, tuple[str, GridOp, bool]] = {
    "rot90": ("rotate 90 ccw", lambda g, k: np.rot90(g, 1, axes=(1, 2)), True),
    "rot180": ("rotate 180", lambda g, k: np.rot90(g, 2, axes=(1, 2)), False),
    "rot270": ("rotate 90 cw", lambda g, k: np.rot90(g, 3, axes=(1, 2)), True),
    "mirror": ("mirror left-right", lambda g, k: g[:, :, ::-1], False),
    "flip": ("flip up-down", lambda g, k: g[:, ::-1, :], False),
    "transpose": ("transpose", lambda g, k: g.transpose(0, 2, 1), True),
    "antitranspose": (
        "anti-diagonal transpose",
        lambda g, k: g[:, ::-1, ::-1].transpose(0, 2, 1),
        True,
    ),
    "recolour": ("recolour c -> c+1 mod K", lambda g, k: (g + 1) % k, False),
}


def sample_grids(
    h: int, w: int, k: int, size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED
) -> np.ndarray:
    """(n, h, w) int64 distinct grids: all k^(h*w) (in mixed-radix order) when there are at most
    `size`, otherwise the first `size` distinct grids drawn with `seed`, in draw order."""
    cells = h * w
    total = k**cells  # Python int: exact even when it exceeds int64
    if total <= size:
        digits = np.arange(total, dtype=np.int64)[:, None] // k ** np.arange(cells - 1, -1, -1)
        return (digits % k).reshape(total, h, w)
    rng = np.random.default_rng(seed)
    grids = np.empty((0, cells), dtype=np.int64)
    while len(grids) < size:
        draw = rng.integers(0, k, size=(size, cells), dtype=np.int64)
        grids = np.concatenate([grids, draw])
        _, first = np.unique(grids, axis=0, return_index=True)
        grids = grids[np.sort(first)]  # drop repeats, keep the first occurrence in draw order
    return grids[:size].reshape(size, h, w)


@dataclass
class GridTask(Task):
    op: str
    height: int
    width: int
    colours: int = DEFAULT_COLOURS
    _cache: Dataset | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in GRID_OPS:
            raise TaskError(f"unknown grid operation {self.op!r}; known: {', '.join(GRID_OPS)}")
        for name, side in (("height", self.height), ("width", self.width)):
            if not MIN_SIDE <= side <= MAX_SIDE:
                raise TaskError(f"grid {name} must be in {MIN_SIDE}..{MAX_SIDE}, got {side}")
        if GRID_OPS[self.op][2] and self.height != self.width:
            square = [name for name, (_, _, sq) in GRID_OPS.items() if sq]
            raise TaskError(
                f"grid_{self.op} needs a square grid (3x3, 4x4 or 5x5), got"
                f" {self.height}x{self.width}; ops that need one: {', '.join(square)}"
            )
        if not MIN_COLOURS <= self.colours <= MAX_COLOURS:
            raise TaskError(
                f"grid colours must be in {MIN_COLOURS}..{MAX_COLOURS} (suffix _c{{K}}),"
                f" got {self.colours}"
            )
        suffix = "" if self.colours == DEFAULT_COLOURS else f"_c{self.colours}"
        self.spec = f"grid_{self.op}_{self.height}x{self.width}{suffix}"
        cells = self.height * self.width
        self.d_vocab = self.colours + 1  # colours and the query token '?'
        self.d_vocab_out = self.colours
        self.n_ctx = 2 * cells
        self.answer_positions = tuple(range(cells, 2 * cells))

    def transform(self, grids: np.ndarray) -> np.ndarray:
        """Apply the op to a batch of grids (n, H, W) -> (n, H, W) (square when axes swap)."""
        return np.ascontiguousarray(GRID_OPS[self.op][1](grids, self.colours))

    def dataset(self) -> Dataset:
        if self._cache is None:
            grids = sample_grids(self.height, self.width, self.colours)
            n, cells = len(grids), self.height * self.width
            flat = grids.reshape(n, cells)
            queries = np.full((n, cells), self.colours, dtype=np.int64)
            targets = self.transform(grids).reshape(n, cells)
            self._cache = Dataset(np.concatenate([flat, queries], axis=1), targets)
        return Dataset(self._cache.inputs.copy(), self._cache.targets.copy())

    def token_names(self) -> list[str]:
        return self.output_names() + ["?"]

    def describe(self) -> str:
        return f"{GRID_OPS[self.op][0]}, {self.height}x{self.width}, {self.colours} colours"


@register_family(
    "grid",
    r"grid_(?P<op>[a-z0-9]+)_(?P<h>\d+)x(?P<w>\d+)(?:_c(?P<k>\d+))?",
    "grid_rot90_3x3",
    f"grid_{{op}}_{{H}}x{{W}}[_c{{K}}], sides {MIN_SIDE}..{MAX_SIDE}, K colours "
    f"{MIN_COLOURS}..{MAX_COLOURS} (default {DEFAULT_COLOURS}); ops: {', '.join(GRID_OPS)}",
)
def _grid(match: re.Match[str]) -> Task:
    k = int(match["k"]) if match["k"] is not None else DEFAULT_COLOURS
    return GridTask(match["op"], int(match["h"]), int(match["w"]), k)
