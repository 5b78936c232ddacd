"""Training: recipes, the (stacked) trainer, run directories."""

from circuitlab.training.recipe import Recipe, RecipeError, get_recipe, recipes, register_recipe
from circuitlab.training.rundir import (
    RunDirError,
    RunInfo,
    find_runs,
    load_run,
    read_metrics,
    read_run,
)
from circuitlab.training.trainer import RunResult, RunSpec, train_stack

__all__ = [
    "Recipe",
    "RecipeError",
    "RunDirError",
    "RunInfo",
    "RunResult",
    "RunSpec",
    "find_runs",
    "get_recipe",
    "load_run",
    "read_metrics",
    "read_run",
    "recipes",
    "register_recipe",
    "train_stack",
]
