"""Cell maps of grid tasks: which input cell feeds which output cell, measured by intervention.

A grid op (GRID_OPS) is a fixed permutation of cells, possibly with a colour map. `analyze`
measures the map a predictor implements (the full model, or any callable such as an extracted
circuit) and checks it against the map the task defines:

1. Measured: on `n_probe` random grids, change one input cell's colour at a time and record
   which predicted output cells change. influence[j][i] is the share of changes to input cell i
   that changed output cell j; output j's source is the one input cell with influence >=
   `threshold` ("none" when no cell reaches it, "several" when more than one does). At each
   output cell with one source, the colour map is the most frequent predicted output colour for
   each colour of the source, over every probe grid.
2. Defined: `definition(task)` runs `task.transform` on one-hot probes (a uniform background
   with one cell of another colour, for every pair of colours), never the model: output j reads
   input i when changing i changes j. Its colour map at j is the op applied to uniform grids.

An output cell matches when its measured source is the defined one and, for a single source,
its colour map is the defined one with at least `threshold` of the observations agreeing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from circuitlab.tasks.grid import GRID_OPS, GridTask

Predictor = Callable[[torch.Tensor], torch.Tensor]
Source = int | Literal["none", "several"]

DEFAULT_PROBES = 256  # base grids; each is run once plus once per input cell
DEFAULT_THRESHOLD = 0.5
BATCH = 4096  # sequences per predictor call


class CellMapError(ValueError):
    """The task is not a grid task, or the model or predictor does not fit it."""


@dataclass(frozen=True)
class CellMapDefinition:
    """The map a task defines, from `task.transform` alone.

    sources: per output cell (row-major), the input cell it reads, or "none"/"several".
    colour_maps: per output cell, the output colour for each input colour (from uniform grids).
    """

    sources: tuple[Source, ...]
    colour_maps: tuple[tuple[int, ...], ...]

    @property
    def colour_map(self) -> tuple[int, ...] | None:
        """The colour map shared by every cell, or None when cells differ."""
        first = self.colour_maps[0]
        return first if all(m == first for m in self.colour_maps) else None


@dataclass(frozen=True)
class CellMapReport:
    """The cell map a predictor implements on a grid task, beside the one the task defines.

    influence[j][i]: share of changes to input cell i that changed predicted output cell j.
    cell_map / expected_map: per output cell (row-major), the source input cell or
        "none"/"several". colour_map / expected_colour_map: input colour -> output colour at
        the mapped cells (None where there was no observation, or the expected map differs
        between cells); colour_map_share: share of observations the measured map explains.
    cell_matches: per output cell, source and colour map as defined.
    accuracy / cell_accuracy: whole grids / cells predicted right over the n_evaluated grids
        (the probes and every intervened copy).
    """

    task: str
    op: str
    op_description: str
    height: int
    width: int
    colours: int
    n_probe: int
    seed: int
    threshold: float
    influence: tuple[tuple[float, ...], ...]
    cell_map: tuple[Source, ...]
    expected_map: tuple[Source, ...]
    colour_map: tuple[int | None, ...]
    colour_map_share: float
    expected_colour_map: tuple[int, ...] | None
    cell_matches: tuple[bool, ...]
    accuracy: float
    cell_accuracy: float
    n_evaluated: int
    seconds: float

    @property
    def n_cells(self) -> int:
        return len(self.cell_map)

    @property
    def cells_matching(self) -> int:
        return sum(self.cell_matches)

    @property
    def sources_matching(self) -> int:
        return sum(a == b for a, b in zip(self.cell_map, self.expected_map, strict=True))

    @property
    def exact(self) -> bool:
        return self.cells_matching == self.n_cells

    @property
    def is_permutation(self) -> bool:
        """Every output cell has one source and no two share it."""
        return _is_permutation(self.cell_map, self.height * self.width)

    @property
    def colour_map_kind(self) -> str:
        return _colour_kind(self.colour_map)

    def input_to_output(self) -> tuple[tuple[int, ...], ...]:
        """The map read the other way: per input cell, the output cells that follow it alone
        (one each in a permutation, none for an input the predictor ignores)."""
        fed: list[list[int]] = [[] for _ in range(self.height * self.width)]
        for j, source in enumerate(self.cell_map):
            if isinstance(source, int):
                fed[source].append(j)
        return tuple(tuple(outputs) for outputs in fed)

    def source_shares(self) -> tuple[float, ...]:
        """Per output cell, the influence of its strongest input cell."""
        return tuple(max(row) for row in self.influence)

    def leak_shares(self) -> tuple[float, ...]:
        """Per output cell, the influence of its second strongest input cell."""
        return tuple(sorted(row)[-2] if len(row) > 1 else 0.0 for row in self.influence)

    def label(self) -> str:
        word = "exact" if self.exact else "match"
        text = (
            f"cell map of {self.op_description}: {self.cells_matching}/{self.n_cells} cells {word}"
        )
        return text if self.is_permutation else text + " (not a permutation)"

    def description(self) -> str:
        n = self.n_cells
        shares, leaks = self.source_shares(), self.leak_shares()
        single = [j for j, s in enumerate(self.cell_map) if isinstance(s, int)]
        none = [j for j, s in enumerate(self.cell_map) if s == "none"]
        several = [j for j, s in enumerate(self.cell_map) if s == "several"]
        parts = [
            f"Changing one input cell at a time on {self.n_probe} random {self.height}x"
            f"{self.width} grids ({self.colours} colours) of {self.task}: {len(single)}/{n} "
            f"output cells follow exactly one input cell (recolouring an output cell's strongest "
            f"input changes it in {np.mean(shares):.1%} of probes on average, {min(shares):.1%} "
            f"at least; its second strongest input in {max(leaks):.1%} at most)."
        ]
        if self.is_permutation:
            parts.append("The measured map is a permutation of the cells.")
        else:
            fed = self.input_to_output()
            problems = [
                f"{what}: {_cells(cells, self.width)}"
                for what, cells in (
                    ("output cells that follow no input cell", none),
                    ("output cells that follow several input cells", several),
                    (
                        "input cells no output cell follows alone",
                        [i for i, o in enumerate(fed) if not o],
                    ),
                    (
                        "input cells that several output cells follow alone",
                        [i for i, o in enumerate(fed) if len(o) > 1],
                    ),
                )
                if cells
            ]
            parts.append("The measured map is NOT a permutation: " + "; ".join(problems) + ".")
        if self.exact:
            parts.append(
                f"It matches {self.op_description} exactly: {n}/{n} cells read the defined input "
                f"cell with the defined colours."
            )
        else:
            wrong = [j for j, ok in enumerate(self.cell_matches) if not ok]
            parts.append(
                f"It does NOT match {self.op_description}: {self.cells_matching}/{n} cells match, "
                f"{self.sources_matching}/{n} read the defined input cell; mismatched output cells "
                f"{_cells(wrong, self.width)}."
            )
        expected = (
            "varies by cell"
            if self.expected_colour_map is None
            else _colour_kind(self.expected_colour_map)
        )
        if not single:
            parts.append("No colour map: no output cell follows a single input cell.")
        else:
            parts.append(
                f"Colours at mapped cells: {self.colour_map_kind} "
                f"({_colour_text(self.colour_map)}, explaining {self.colour_map_share:.1%} of "
                f"observations); the op's: {expected}."
            )
        parts.append(
            f"Predictor accuracy on the {self.n_evaluated:,} probe grids: {self.accuracy:.1%} "
            f"of grids, {self.cell_accuracy:.1%} of cells."
        )
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON (every float finite)."""
        return {
            "task": self.task,
            "op": self.op,
            "op_description": self.op_description,
            "height": self.height,
            "width": self.width,
            "colours": self.colours,
            "n_probe": self.n_probe,
            "seed": self.seed,
            "threshold": self.threshold,
            "label": self.label(),
            "description": self.description(),
            "exact": self.exact,
            "is_permutation": self.is_permutation,
            "cells_matching": self.cells_matching,
            "sources_matching": self.sources_matching,
            "n_cells": self.n_cells,
            "cell_map": list(self.cell_map),
            "expected_map": list(self.expected_map),
            "input_to_output": [list(outputs) for outputs in self.input_to_output()],
            "cell_matches": list(self.cell_matches),
            "source_shares": [round(s, 4) for s in self.source_shares()],
            "leak_shares": [round(s, 4) for s in self.leak_shares()],
            "influence": [[round(v, 4) for v in row] for row in self.influence],
            "colour_map": list(self.colour_map),
            "colour_map_kind": self.colour_map_kind,
            "colour_map_share": self.colour_map_share,
            "expected_colour_map": None
            if self.expected_colour_map is None
            else list(self.expected_colour_map),
            "accuracy": self.accuracy,
            "cell_accuracy": self.cell_accuracy,
            "n_evaluated": self.n_evaluated,
            "seconds": round(self.seconds, 3),
        }


def definition(task: GridTask) -> CellMapDefinition:
    """The cell and colour map of a task's op, from `task.transform` on probe grids only."""
    _check_task(task)
    h, w, k = task.height, task.width, task.colours
    cells = h * w
    background = np.repeat(np.arange(k), k - 1)  # every ordered pair (a, b) of colours, a != b
    foreground = np.array([b for a in range(k) for b in range(k) if b != a])
    pairs = len(background)
    # probe (pair p, cell i): background colour of pair p everywhere, its foreground at cell i
    probes = np.repeat(np.repeat(background, cells)[:, None], cells, axis=1)
    probes[np.arange(pairs * cells), np.tile(np.arange(cells), pairs)] = np.repeat(
        foreground, cells
    )
    out = task.transform(probes.reshape(-1, h, w)).reshape(pairs, cells, -1)
    uniform = task.transform(np.repeat(np.arange(k), cells).reshape(k, h, w)).reshape(k, -1)
    if out.shape[-1] != uniform.shape[-1] or out.shape[-1] != cells:
        raise CellMapError(f"{task.spec}: the op changes the number of cells")
    changed = (out != uniform[background][:, None, :]).any(axis=0)  # (input i, output j)
    sources = tuple(_source(np.flatnonzero(changed[:, j])) for j in range(cells))
    colour_maps = tuple(tuple(int(c) for c in uniform[:, j]) for j in range(cells))
    return CellMapDefinition(sources, colour_maps)


@torch.no_grad()
def analyze(
    model: Any,
    task: GridTask,
    *,
    predict: Predictor | None = None,
    n_probe: int = DEFAULT_PROBES,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
) -> CellMapReport:
    """The cell map `predict` implements on `task`, checked against the task's definition.

    predict: tokens (N, S) LongTensor -> predicted output colours (N, Q) LongTensor, the
    argmax at the answer positions; None runs `model` (a circuitlab Transformer). Runs
    n_probe * (cells + 1) sequences in batches of BATCH; deterministic given `seed`.
    """
    start = time.perf_counter()
    _check_task(task)
    if n_probe < 1:
        raise CellMapError(f"n_probe must be >= 1, got {n_probe}")
    if not 0.0 < threshold <= 1.0:
        raise CellMapError(f"threshold must be in (0, 1], got {threshold}")
    if predict is None:
        _check_model(model, task)
        predict = model_predictor(model)
    defined = definition(task)
    h, w, k = task.height, task.width, task.colours
    cells = h * w

    rng = np.random.default_rng(seed)
    base = rng.integers(0, k, size=(n_probe, cells), dtype=np.int64)
    # copy c of base grid n has input cell c recoloured (c = cells: the base grid itself)
    grids = np.repeat(base[:, None, :], cells + 1, axis=1)
    shift = rng.integers(1, k, size=(n_probe, cells), dtype=np.int64)
    rows = np.arange(cells)
    grids[:, rows, rows] = (base + shift) % k
    flat = grids.reshape(-1, cells)
    predicted = _predict_all(predict, flat, task).reshape(n_probe, cells + 1, cells)
    targets = task.transform(flat.reshape(-1, h, w)).reshape(n_probe, cells + 1, cells)

    # influence[j, i]: share of base grids whose output j changed when input i changed
    changed = predicted[:, :cells, :] != predicted[:, cells : cells + 1, :]  # (n, i, j)
    influence = changed.mean(axis=0).T
    cell_map = tuple(_source(np.flatnonzero(influence[j] >= threshold)) for j in range(cells))

    # colour observations at single-source cells: (input colour at the source, output colour)
    counts = np.zeros((cells, k, k), dtype=np.int64)
    predicted_flat = predicted.reshape(-1, cells)
    for j, source in enumerate(cell_map):
        if isinstance(source, int):
            np.add.at(counts[j], (flat[:, source], predicted_flat[:, j]), 1)
    matches = tuple(
        _cell_matches(cell_map[j], defined.sources[j], counts[j], defined.colour_maps[j], threshold)
        for j in range(cells)
    )
    total = counts.sum(axis=0)
    seen = total.sum(axis=1) > 0
    colour_map = tuple(int(total[c].argmax()) if seen[c] else None for c in range(k))
    n_obs = int(total.sum())
    colour_share = float(total.max(axis=1).sum() / n_obs) if n_obs else 0.0

    right = predicted == targets
    return CellMapReport(
        task=task.spec,
        op=task.op,
        op_description=GRID_OPS[task.op][0],
        height=h,
        width=w,
        colours=k,
        n_probe=n_probe,
        seed=seed,
        threshold=threshold,
        influence=tuple(tuple(float(v) for v in row) for row in influence),
        cell_map=cell_map,
        expected_map=defined.sources,
        colour_map=colour_map,
        colour_map_share=colour_share,
        expected_colour_map=defined.colour_map,
        cell_matches=matches,
        accuracy=float(right.all(axis=-1).mean()),
        cell_accuracy=float(right.mean()),
        n_evaluated=int(flat.shape[0]),
        seconds=time.perf_counter() - start,
    )


def model_predictor(model: Any, batch_size: int = BATCH) -> Predictor:
    """The full model as a predictor: argmax of its logits at the answer positions."""

    device = next(model.parameters()).device

    @torch.no_grad()
    def predict(tokens: torch.Tensor) -> torch.Tensor:
        out = [
            model(tokens[lo : lo + batch_size].to(device)).argmax(-1).cpu()
            for lo in range(0, tokens.shape[0], batch_size)
        ]
        return torch.cat(out)

    return predict


# --- helpers ----------------------------------------------------------------------------------


def _check_task(task: Any) -> None:
    if not isinstance(task, GridTask):
        spec = getattr(task, "spec", type(task).__name__)
        raise CellMapError(f"cell maps need a grid task (grid_{{op}}_{{H}}x{{W}}), got {spec}")


def _check_model(model: Any, task: GridTask) -> None:
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        raise CellMapError("no predictor and no model to run")
    if tuple(cfg.answer_positions) != tuple(task.answer_positions) or (
        cfg.d_vocab_out != task.d_vocab_out
    ):
        raise CellMapError(
            f"model (answers at {list(cfg.answer_positions)}, d_vocab_out={cfg.d_vocab_out}) "
            f"does not fit task {task.spec} (answers at {list(task.answer_positions)}, "
            f"{task.d_vocab_out} colours)"
        )


def _predict_all(predict: Predictor, grids: np.ndarray, task: GridTask) -> np.ndarray:
    """Predicted output colours (n, cells) of input grids (n, cells), BATCH sequences a call."""
    n, cells = grids.shape
    queries = np.full((n, cells), task.colours, dtype=np.int64)
    tokens = torch.from_numpy(np.concatenate([grids, queries], axis=1))
    out = []
    for lo in range(0, n, BATCH):
        chunk = tokens[lo : lo + BATCH]
        pred = torch.as_tensor(predict(chunk))
        if tuple(pred.shape) != (chunk.shape[0], cells):
            raise CellMapError(
                f"predictor returned shape {tuple(pred.shape)} for {chunk.shape[0]} inputs; "
                f"expected ({chunk.shape[0]}, {cells}) output colours"
            )
        out.append(pred.detach().cpu().long().numpy())
    predicted = np.concatenate(out)
    if predicted.min() < 0 or predicted.max() >= task.colours:
        raise CellMapError(
            f"predictor returned colours outside 0..{task.colours - 1} "
            f"({predicted.min()}..{predicted.max()})"
        )
    return predicted


def _source(inputs: np.ndarray) -> Source:
    if len(inputs) == 0:
        return "none"
    return int(inputs[0]) if len(inputs) == 1 else "several"


def _cell_matches(
    source: Source,
    expected: Source,
    counts: np.ndarray,
    colour_map: tuple[int, ...],
    threshold: float,
) -> bool:
    """Same source; for a single source also the defined output colour as the most frequent one
    for every input colour, agreeing with at least `threshold` of the observations."""
    if source != expected:
        return False
    if not isinstance(source, int):
        return True
    seen = counts.sum(axis=1)
    if (seen == 0).any() or tuple(int(c) for c in counts.argmax(axis=1)) != colour_map:
        return False
    agree = counts[np.arange(len(colour_map)), list(colour_map)].sum()
    return bool(agree >= threshold * seen.sum())


def _is_permutation(sources: tuple[Source, ...], n_inputs: int) -> bool:
    singles = [s for s in sources if isinstance(s, int)]
    return len(singles) == len(sources) == n_inputs and len(set(singles)) == n_inputs


def _colour_kind(colour_map: tuple[int | None, ...]) -> str:
    if any(c is None for c in colour_map):
        return "partial (some colours never observed)"
    if list(colour_map) == list(range(len(colour_map))):
        return "identity"
    if sorted(int(c) for c in colour_map if c is not None) == list(range(len(colour_map))):
        return "a permutation of the colours"
    return "not a permutation of the colours"


def _colour_text(colour_map: tuple[int | None, ...]) -> str:
    return ", ".join(f"{c}->{'?' if o is None else o}" for c, o in enumerate(colour_map))


def _cells(indices: list[int], width: int) -> str:
    """Cells as (row, col), at most 8 of them."""
    shown = ", ".join(f"({i // width},{i % width})" for i in indices[:8])
    return shown + (f" and {len(indices) - 8} more" if len(indices) > 8 else "")
