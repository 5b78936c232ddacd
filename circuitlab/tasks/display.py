"""Human-readable rendering of examples, for `circuitlab tasks --show` and notebooks."""

from __future__ import annotations

import numpy as np

from circuitlab.tasks.base import Task
from circuitlab.tasks.grid import GridTask


def format_example(task: Task, inputs: np.ndarray, targets: np.ndarray) -> str:
    """One example as text: `3 5 = -> 8` for operations, `012/210/000 -> 020/...` for grids
    (rows separated by `/`, the query tokens left out)."""
    if isinstance(task, GridTask):
        cells, width = task.height * task.width, task.width

        def rows(tokens: np.ndarray) -> str:
            text = "".join(str(int(t)) for t in tokens)
            return "/".join(text[i : i + width] for i in range(0, cells, width))

        return f"{rows(inputs[:cells])} -> {rows(targets)}"
    names, out_names = task.token_names(), task.output_names()
    left = " ".join(names[int(t)] for t in inputs)
    right = " ".join(out_names[int(t)] for t in targets)
    return f"{left} -> {right}"
