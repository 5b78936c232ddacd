"""Algorithmic tasks: spec strings -> token datasets with deterministic splits."""

from circuitlab.tasks import modular  # noqa: F401  (registers the family)
from circuitlab.tasks.base import Dataset, Split, Task, TaskError, families, get_task

__all__ = ["Dataset", "Split", "Task", "TaskError", "families", "get_task"]
