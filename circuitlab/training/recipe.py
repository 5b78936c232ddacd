"""Recipes: named training configurations (optimizer, schedule, data fraction, stopping).

A recipe holds everything about *how* a model is trained; the architecture comes from the task
(`ModelConfig.for_task`) plus the recipe's `model` overrides. Registered recipes refuse
duplicate names, and a run directory stores the resolved recipe so it can be rebuilt exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from circuitlab import _fields
from circuitlab._precision import PRECISIONS

OPTIMIZERS = ("adamw", "lion")
MAX_STEPS = 100_000_000
# inclusive bounds of the integer and real fields; every value must also be finite
_INTEGERS = {
    "warmup_steps": (0, MAX_STEPS),
    "batch_size": (0, 100_000_000),  # 0 = full batch
    "max_steps": (1, MAX_STEPS),
    "eval_every": (1, MAX_STEPS),
    "checkpoint_every": (1, MAX_STEPS),
    "anneal_steps": (0, MAX_STEPS),
}
_NUMBERS: dict[str, dict[str, Any]] = {
    "train_fraction": {"lo": 0.0, "hi": 1.0, "lo_open": True},
    "lr": {"lo": 0.0, "lo_open": True},
    "weight_decay": {"lo": 0.0},
    "eps": {"lo": 0.0, "lo_open": True},
    "grad_clip": {"lo": 0.0},  # 0 = off
    "grokfast_alpha": {"lo": 0.0, "hi": 1.0, "hi_open": True},
    "grokfast_lambda": {"lo": 0.0},
    "stop_val_acc": {},  # > 1 = never stop early
}


class RecipeError(ValueError):
    """A recipe name or field is invalid; the message names it and what is allowed."""


@dataclass(frozen=True)
class Recipe:
    name: str
    train_fraction: float = 0.3
    optimizer: Literal["adamw", "lion"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    warmup_steps: int = 10  # linear warmup from 0 to lr
    grad_clip: float = 0.0  # per-model global gradient norm; 0 = off
    batch_size: int = 0  # 0 = full batch
    # Grokfast-EMA (Lee et al. 2024): g <- g + lambda * EMA_alpha(g); lambda 0 = off.
    grokfast_alpha: float = 0.98
    grokfast_lambda: float = 0.0
    max_steps: int = 10_000
    eval_every: int = 10
    stop_val_acc: float = 1.0  # stop a model once validation accuracy reaches this; >1 = never
    # After reaching stop_val_acc, train this many more steps with the learning rate decaying
    # linearly to 0, then stop: a high-lr recipe otherwise stops mid-oscillation, before the
    # clean-up phase that leaves a sparse, stable mechanism (0 = stop at once).
    anneal_steps: int = 0
    checkpoint_every: int = 500
    # "bf16": matmuls in bfloat16 under autocast; weights, optimizer state, softmaxes and the
    # loss stay float32 (circuitlab/_precision.py). Falls back to fp32 where the CPU has no
    # native bf16 (summary.json records the precision used).
    precision: Literal["fp32", "bf16"] = "fp32"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides

    def __post_init__(self) -> None:
        name = _fields.text("recipe name", self.name, RecipeError)
        if not name or "/" in name or name.startswith("."):
            raise RecipeError(
                f"recipe name must be a plain name (no '/', no leading '.'), got {name!r}"
            )
        for field_name, (lo, hi) in _INTEGERS.items():
            value = _fields.integer(field_name, getattr(self, field_name), RecipeError, lo, hi)
            object.__setattr__(self, field_name, value)
        for field_name, bounds in _NUMBERS.items():
            value = _fields.number(field_name, getattr(self, field_name), RecipeError, **bounds)
            object.__setattr__(self, field_name, value)
        if not isinstance(self.model, dict):
            raise RecipeError(
                f"recipe field model must be a mapping of ModelConfig overrides, got {self.model!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise RecipeError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise RecipeError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise RecipeError(f"betas must be two numbers in [0, 1), got {betas!r}")
        betas = tuple(
            _fields.number("betas", b, RecipeError, 0.0, 1.0, hi_open=True) for b in betas
        )
        object.__setattr__(self, "betas", betas)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (unknown fields are an error)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise RecipeError(f"unknown recipe fields: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe is a mapping of fields, got {data!r:.80}")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise RecipeError(f"unknown recipe fields: {sorted(map(str, unknown))}")
        if "name" not in data:
            raise RecipeError("a recipe needs a name")
        return cls(**data)


_RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in _RECIPES:
        raise RecipeError(f"recipe {recipe.name!r} is already registered")
    _RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    """A built-in recipe, else one saved by `circuitlab tune --save-recipe` (saved_recipes.py,
    read lazily from the user recipe directory)."""
    if name in _RECIPES:
        return _RECIPES[name]
    from circuitlab.training.saved_recipes import find_saved, saved_names

    saved = find_saved(name)
    if saved is None:
        known = ", ".join([*_RECIPES, *saved_names()])
        raise RecipeError(f"unknown recipe {name!r}; known: {known}")
    return saved.recipe


def recipes() -> dict[str, Recipe]:
    """Built-in recipes, then saved ones (a damaged saved file is a RecipeError naming it)."""
    from circuitlab.training.saved_recipes import saved_recipes

    return dict(_RECIPES) | {name: s.recipe for name, s in saved_recipes().items()}


# Nanda et al. 2023 exactly: 1 layer, d_model 128, 4 heads, d_mlp 512, no LayerNorm (the
# ModelConfig defaults), 30% of pairs, full batch, AdamW lr 1e-3, wd 1, betas (0.9, 0.98).
NANDA = register_recipe(
    Recipe(name="nanda", lr=1e-3, weight_decay=1.0, warmup_steps=10, max_steps=40_000)
)

# circuitlab's default: Nanda's model and data, 10x the learning rate and twice the weight
# decay. Measured on add_mod_113 (30% train): 99% validation at steps 160-230 (seeds 0-4) where
# `nanda` needs 5,250-7,550; see benchmarks/bench_training.py. s5_compose groks later (99% at
# steps 2,140 and 2,260 for seeds 0 and 1), so the step budget is 5,000; a 3x3 grid rotation
# generalizes within 40 steps. Trains on until 100% validation accuracy so later stages see a
# cleaned-up circuit.
FAST = register_recipe(
    Recipe(name="fast", lr=1e-2, weight_decay=2.0, warmup_steps=10, max_steps=5_000)
)

# 2 layers (issue 17): `fast` with 2 layers, lr 3e-3 and weight decay 3 (Nanda's data, 30% of
# pairs); `fast`'s lr 1e-2 makes a 2-layer model oscillate (add_mod_59: 26% train accuracy
# after 2,740 steps), and wd 1 was slower (one probe). Measured on seeds 0-2
# (benchmarks/bench_deep.py): add_mod_113 reaches 99% validation at steps 530, 500, 600;
# add_mod_59 at 1,550, 580, 900. Loss spikes (train accuracy dipping to 0.6-0.9) are common
# before grokking. The budget is 10,000 steps, over 6x the slowest seed.
DEEP = register_recipe(
    Recipe(
        name="deep",
        lr=3e-3,
        weight_decay=3.0,
        warmup_steps=10,
        max_steps=10_000,
        model={"n_layers": 2},
    )
)


# Three-operand synthesis (issue 17): half the triples, minibatches of 2,048, lr 3e-3 and
# weight decay 1, 20,000 steps, stopping at 99% validation. `fast` at its 30% stalls
# (synth_mod_31[a*b+c]: 78% at step 5,000); with half the triples its lr 1e-2 makes train
# accuracy swing between 0.6 and 1.0 for thousands of steps (seed 1: 45-89% validation from
# step 1,000 to 4,400), and weight decay 3 underfits (train 33% at step 3,500). Measured in
# benchmarks/bench_recipes.py.
SYNTH3 = register_recipe(
    Recipe(
        name="synth3",
        lr=3e-3,
        weight_decay=1.0,
        warmup_steps=10,
        max_steps=20_000,
        train_fraction=0.5,
        batch_size=2048,
        eval_every=50,
        stop_val_acc=0.99,
    )
)

# S5 conjugation x*y*x^-1 (issue 17): trial 1 of `circuitlab tune s5_conj` (base `deep`, 2
# layers, minibatches of 512), with the stop and anneal the interpretation benchmarks use.
# `fast` stalls at the answer's conjugacy class (4.7%). Reaches 99% validation on 2 of 4 seeds
# within its 15,000 steps (benchmarks/bench_recipes.py). S4 conj groks with it at minibatches
# of 64 and weight decay 0.6 (benchmarks/bench_groups.py); S6 conj is not measured.
CONJ = register_recipe(
    Recipe(
        name="conj",
        lr=3.15e-3,
        weight_decay=0.9,
        warmup_steps=179,
        max_steps=15_000,
        batch_size=512,
        train_fraction=0.675,
        stop_val_acc=0.99,
        anneal_steps=500,
        eval_every=50,
        model={"n_layers": 2},
    )
)


@dataclass(frozen=True)
class FamilyRecipe:
    """A recipe shipped for a family of tasks: `circuitlab train` uses it for a task of the
    family when no recipe is named (`recipe_for`)."""

    recipe: str
    family: str  # what `circuitlab recipes` prints, e.g. "synth_mod_p[expr], 3 operands"
    applies: Callable[[Any], bool]  # a task object -> whether it is of the family


def _three_operand_synthesis(task: Any) -> bool:
    from circuitlab.tasks.synthesis import SynthesisTask

    return isinstance(task, SynthesisTask) and len(task.operands) == 3


def _s5_conj(task: Any) -> bool:
    from circuitlab.tasks.permutation import PermutationTask

    return isinstance(task, PermutationTask) and task.op == "conj" and task.n == 5


FAMILY_RECIPES: tuple[FamilyRecipe, ...] = (
    FamilyRecipe("synth3", "synth_mod_p[expr] with 3 operands", _three_operand_synthesis),
    FamilyRecipe("conj", "s5_conj", _s5_conj),
)
DEFAULT_RECIPE = "fast"


def recipe_for(task: Any) -> str:
    """The recipe `train` uses for a task when none is named: the first family recipe whose
    family the task belongs to, else `fast`."""
    for fam in FAMILY_RECIPES:
        if fam.applies(task):
            return fam.recipe
    return DEFAULT_RECIPE


# What the built-in recipes were measured on, shown by `circuitlab recipes` beside a saved
# recipe's `measured` (same keys; `source` names the benchmark and its results file).
BUILTIN_MEASURED: dict[str, list[dict[str, Any]]] = {
    "nanda": [
        {
            "task": "add_mod_113",
            "seeds": [0, 1, 2, 3, 4],
            "steps_to_99": [6150, 5900, 5550, 5250, 7550],
            "median_steps_to_99": 5900,
            "source": "benchmarks/bench_training.py (results/training.json)",
        }
    ],
    "fast": [
        {
            "task": "add_mod_113",
            "seeds": [0, 1, 2, 3, 4],
            "steps_to_99": [230, 170, 160, 200, 200],
            "median_steps_to_99": 200,
            "source": "benchmarks/bench_training.py (results/training.json)",
        }
    ],
    "deep": [
        {
            "task": "add_mod_113",
            "seeds": [0, 1, 2],
            "steps_to_99": [530, 500, 600],
            "median_steps_to_99": 530,
            "source": "benchmarks/bench_deep.py (results/deep.json)",
        },
        {
            "task": "add_mod_59",
            "seeds": [0, 1, 2],
            "steps_to_99": [1550, 580, 900],
            "median_steps_to_99": 900,
            "source": "benchmarks/bench_deep.py (results/deep.json)",
        },
    ],
    "synth3": [
        {
            "task": "synth_mod_31[a*b+c]",
            "seeds": [0, 1, 2],
            "steps_to_99": [19900, 12450, 6300],
            "median_steps_to_99": 12450,
            "source": "benchmarks/bench_recipes.py (results/recipes.json)",
        }
    ],
    "conj": [
        {
            "task": "s5_conj",
            "seeds": [0, 1, 2, 3],
            "steps_to_99": [6700, None, None, 6000],
            "median_steps_to_99": None,
            "best_val_acc": [0.999, 0.985, 0.882, 1.0],
            "source": "benchmarks/bench_recipes.py (results/recipes.json)",
        }
    ],
}
