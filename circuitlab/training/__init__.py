"""Training: recipes, the (stacked) trainer, run directories."""

from circuitlab.training.derived import DerivedError
from circuitlab.training.lora import AdaptError, LoraSpec, adapt, load_adapted
from circuitlab.training.prune import PruneConfig, PruneError, prune
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
    "AdaptError",
    "DerivedError",
    "LoraSpec",
    "PruneConfig",
    "PruneError",
    "Recipe",
    "RecipeError",
    "RunDirError",
    "RunInfo",
    "RunResult",
    "RunSpec",
    "adapt",
    "find_runs",
    "get_recipe",
    "load_adapted",
    "load_run",
    "read_metrics",
    "prune",
    "read_run",
    "recipes",
    "register_recipe",
    "train_stack",
]
