"""The search space: which recipe and model fields a study may vary, parsed from `--space`
text into `Dim`s and checked against the task before anything runs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from circuitlab.training.recipe import _INTEGERS, Recipe, RecipeError

# Searched when no space is given. train_fraction trades data for steps (more data, fewer
# steps); pass --space without it to compare recipes on the same split.
DEFAULT_SPACE = (
    "lr=1e-3:3e-2:log",
    "weight_decay=0.1:5:log",
    "train_fraction=0.2:0.5",
    "warmup_steps=0:100",
)
# recipe fields a space may not vary, and why
FIXED = {
    "name": "it names the recipe",
    "model": "name model fields one by one, as model.X",
    "betas": "a pair; set it in the base recipe",
    "max_steps": "it is the study's step budget (--max-steps)",
    "eval_every": "steps to 99% are measured at eval steps, so it fixes the objective's grid",
    "stop_val_acc": "trials train to 99% validation accuracy, the objective",
    "checkpoint_every": "it does not change what is learned",
}
TASK_FIELDS = ("d_vocab", "d_vocab_out", "n_ctx", "answer_positions")  # fitted to the task


class TuneError(ValueError):
    """A tuning input is invalid (space, budget, study file, ...); the message says which."""


@dataclass(frozen=True)
class Dim:
    """One searched field: a float or int range (optionally log-uniform) or a list of choices.
    `key` is a recipe field (`lr`) or a model field (`model.n_layers`)."""

    key: str
    kind: Literal["float", "int", "choice"]
    lo: float | None = None
    hi: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.key, self.lo, self.hi, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.lo), int(self.hi), log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def values_to_check(self) -> list[Any]:
        """Values whose validity implies every value's (each field's valid set is an interval)."""
        return [self.lo, self.hi] if self.kind != "choice" else list(self.choices)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key, "kind": self.kind}
        if self.kind == "choice":
            out["choices"] = list(self.choices)
        else:
            out |= {"lo": self.lo, "hi": self.hi, "log": self.log}
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dim:
        return cls(
            data["key"],
            data["kind"],
            data.get("lo"),
            data.get("hi"),
            bool(data.get("log", False)),
            tuple(data.get("choices", ())),
        )

    def __str__(self) -> str:
        if self.kind == "choice":
            return f"{self.key}={','.join(map(str, self.choices))}"
        return f"{self.key}={self.lo:g}:{self.hi:g}" + (":log" if self.log else "")


def _model_fields() -> dict[str, Any]:
    from circuitlab.models import ModelConfig

    return ModelConfig.__dataclass_fields__


def canonical_key(key: str) -> str:
    """`lr` -> `lr`; `n_layers` or `model.n_layers` -> `model.n_layers`; others refused."""
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    model_fields = _model_fields()
    bare = key.removeprefix("model.")
    if key == bare and key in recipe_fields:
        if key in FIXED:
            raise TuneError(f"--space cannot vary {key}: {FIXED[key]}")
        return key
    if bare in model_fields:
        if bare in TASK_FIELDS:
            raise TuneError(f"--space cannot vary model.{bare}: the task fixes it")
        return f"model.{bare}"
    tunable = sorted(recipe_fields - set(FIXED))
    models = sorted(set(model_fields) - set(TASK_FIELDS))
    raise TuneError(
        f"unknown --space key {key!r}; use recipe fields ({', '.join(tunable)}) or model "
        f"fields as model.X ({', '.join(models)})"
    )


def _integer_field(key: str) -> bool:
    from circuitlab.models.config import SIZE_LIMITS

    return key in _INTEGERS or key.removeprefix("model.") in SIZE_LIMITS


def _coerce(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def parse_dim(text: str) -> Dim:
    """`lr=1e-4:1e-2:log`, `weight_decay=0.1:3`, `warmup_steps=0:100` (int field: int range),
    `model.n_layers=1,2` or `optimizer=adamw` (choices)."""
    usage = f"--space expects KEY=LO:HI[:log] or KEY=V1,V2,..., got {text!r}"
    key, sep, values = text.partition("=")
    key, values = key.strip(), values.strip()
    if not sep or not key or not values:
        raise TuneError(usage)
    key = canonical_key(key)
    if ":" not in values:
        raw = [v.strip() for v in values.split(",")]
        if any(not v for v in raw):
            raise TuneError(usage)
        choices = tuple(dict.fromkeys(_coerce(v) for v in raw))  # in order, no repeats
        return Dim(key, "choice", choices=choices)
    parts = [p.strip() for p in values.split(":")]
    log = len(parts) == 3 and parts[2].lower() == "log"
    if len(parts) != 2 and not log:
        raise TuneError(usage)
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise TuneError(f"--space {text!r}: LO and HI must be numbers") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise TuneError(f"--space {text!r}: LO and HI must be finite")
    if not lo < hi:
        raise TuneError(
            f"--space {text!r} is an empty range: LO must be below HI (one value: {key}=VALUE)"
        )
    if log and lo <= 0:
        raise TuneError(f"--space {text!r}: a log range needs LO > 0")
    if _integer_field(key):
        if not (lo.is_integer() and hi.is_integer()):
            raise TuneError(f"--space {text!r}: {key} is an integer; give integer bounds")
        return Dim(key, "int", int(lo), int(hi), log)
    return Dim(key, "float", lo, hi, log)


def parse_space(items: Sequence[str | Dim]) -> tuple[Dim, ...]:
    dims = [d if isinstance(d, Dim) else parse_dim(d) for d in items]
    keys = [d.key for d in dims]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise TuneError(f"--space names {', '.join(repeated)} more than once")
    if not dims:
        raise TuneError("the search space is empty")
    return tuple(dims)


def apply_params(base: Recipe, params: dict[str, Any]) -> Recipe:
    """`base` with searched values: recipe fields directly, `model.X` into `model`."""
    changes = {k: v for k, v in params.items() if not k.startswith("model.")}
    model = {k.removeprefix("model."): v for k, v in params.items() if k.startswith("model.")}
    if model:
        changes["model"] = {**base.model, **model}
    return base.replace(**changes) if changes else base


def check_space(space: Sequence[Dim], task: str, base: Recipe) -> None:
    """Refuse a space with a value the task or recipe cannot take (checked at the bounds and at
    every choice), naming the value."""
    from circuitlab.models import ModelConfig, ModelConfigError
    from circuitlab.tasks import get_task

    spec = get_task(task)
    for dim in space:
        for value in dim.values_to_check():
            try:
                recipe = apply_params(base, {dim.key: value})
                ModelConfig.for_task(spec, **recipe.model)
            except (RecipeError, ModelConfigError, TypeError) as exc:
                raise TuneError(f"--space {dim}: {dim.key}={value!r} is invalid: {exc}") from None
            if dim.key == "train_fraction" and value < 1 and not len(spec.split(value, 0).val):
                raise TuneError(f"--space {dim}: train_fraction {value} leaves no validation data")
