"""Algorithmic tasks: spec strings -> token datasets with deterministic splits.

Families, in the order `circuitlab tasks` lists them: modular (`add_mod_113`), permutation
(`s5_compose`), grid (`grid_rot90_3x3`) and synthesis (`synth_mod_97[a*b+c]`).
"""

# Importing a family module registers it; registration order is listing order.
# isort: off
from circuitlab.tasks import modular  # noqa: F401
from circuitlab.tasks import permutation  # noqa: F401
from circuitlab.tasks import grid  # noqa: F401
from circuitlab.tasks import synthesis  # noqa: F401
from circuitlab.tasks import tracr  # noqa: F401

# isort: on
from circuitlab.tasks.base import Dataset, Split, Task, TaskError, families, get_task
from circuitlab.tasks.display import format_example
from circuitlab.tasks.synthesis import synthesize

__all__ = [
    "Dataset",
    "Split",
    "Task",
    "TaskError",
    "families",
    "format_example",
    "get_task",
    "synthesize",
]
