"""Hyperparameter search over recipes: Optuna's TPE sampler, a median pruner on the validation
curve, and a journal file as storage, so a killed study continues where it stopped.

Files of a study (default `OUT/TASK/tune-default.journal`):

    STUDY.journal                 Optuna's JournalStorage (JournalFileBackend, no server). One
                                  study, "circuitlab-tune"; its user attribute `circuitlab`
                                  records the task, base recipe, seeds, space, step budget and
                                  sampler seed, and a different task or setting is refused.
    STUDY.journal.session.lock    held (flock) while one process runs the study
    STUDY/trial-K-seedS/          an ordinary run directory per trial and seed (`runs`,
                                  `extract` read it); K is the trial's run key (below)
    STUDY/trial-K-seedS.pruned/   the unfinished run of a pruned trial: config.json,
                                  metrics.jsonl and pruned.json, no weights (not a run)

Objective, minimized: for each seed, the step at which validation accuracy first reached 99%
(`grokked_at`), or `max_steps * (2 - best validation accuracy)` when it never did (worse than
any run that did); the trial's value is the median over its seeds. Trials train to 99% only
(`stop_val_acc` = 0.99), all seeds stacked in this process.

Pruning: at eval steps (at most ~50 per trial) the trial reports its validation error, 1 - the
median over seeds of each seed's best validation accuracy so far (a seed that reached 99% keeps
its accuracy). `MedianErrorPruner` stops it when that error is above the median of the complete
trials' errors at the same step, each complete trial's curve carried forward past its last
report (Optuna's MedianPruner instead drops trials that stopped early, so after the fast
trials finish it would compare only against slow ones). A pruned trial's unfinished runs are
renamed to `.pruned`; seeds that finished before stay ordinary runs.

Resuming: the budget counts COMPLETE and PRUNED trials only. A trial left RUNNING (its process
was killed) is marked FAIL and its parameters re-enqueued with user attribute `resumes` = its
run key, so the new trial trains into the same run directories and `train_stack` continues them
from their checkpoints: no trial is lost or repeated. Finished seeds are read back, not
retrained; a pruned trial is not resumed. The same happens on Ctrl-C and on errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from circuitlab._atomic import dumps_strict, write_json_atomic
from circuitlab.training import rundir
from circuitlab.training.recipe import _INTEGERS, MAX_STEPS, Recipe, RecipeError, get_recipe
from circuitlab.training.saved_recipes import check_name, recipe_path, save_recipe

STUDY_NAME = "circuitlab-tune"
ATTR = "circuitlab"  # the study's user attribute holding its settings
SETTINGS_VERSION = 1
MAX_BUDGET = 10_000
PRUNED_SUFFIX = ".pruned"
PRUNED_FILE = "pruned.json"
REPORTS_PER_TRIAL = 50

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


# --- the search space ---------------------------------------------------------------------
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


# --- study settings and files --------------------------------------------------------------
@dataclass(frozen=True)
class StudySettings:
    task: str
    base: Recipe
    seeds: tuple[int, ...]
    space: tuple[Dim, ...]
    max_steps: int
    sampler_seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": SETTINGS_VERSION,
            "task": self.task,
            "base_recipe": self.base.to_dict(),
            "seeds": list(self.seeds),
            "space": [d.to_json() for d in self.space],
            "max_steps": self.max_steps,
            "sampler_seed": self.sampler_seed,
        }

    @classmethod
    def from_json(cls, data: Any) -> StudySettings:
        return cls(
            data["task"],
            Recipe.from_dict(data["base_recipe"]),
            tuple(data["seeds"]),
            tuple(Dim.from_json(d) for d in data["space"]),
            int(data["max_steps"]),
            int(data.get("sampler_seed", 0)),
        )

    def trial_recipe(self, params: dict[str, Any], key: int) -> Recipe:
        base = self.base.replace(max_steps=self.max_steps, stop_val_acc=rundir.GROK_THRESHOLD)
        return apply_params(base, params).replace(name=f"{self.base.name}-trial-{key}")


def default_study_path(out: str | Path, task: str) -> Path:
    return Path(out) / rundir.safe_name(task) / "tune-default.journal"


def trials_dir(study_path: str | Path) -> Path:
    """Where a study's run directories go: beside the study file, named after it."""
    path = Path(study_path)
    name = path.name
    return path.with_name(name[: -len(".journal")] if name.endswith(".journal") else name + ".d")


def _session_lock(study_path: Path) -> rundir.RunLock:
    return rundir.RunLock(study_path.with_name(study_path.name + ".session"))


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError(
            "hyperparameter search needs Optuna: pip install 'circuitlab[tune]'"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _storage(path: Path):
    optuna = _optuna()
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    try:
        return optuna.storages.JournalStorage(
            JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        )
    except Exception as exc:  # optuna raises several types for a file that is not a journal
        raise TuneError(f"{path} is not a readable study journal ({exc})") from None


def read_settings(study_path: str | Path) -> StudySettings:
    """The settings recorded in a study file (read only; nothing is written)."""
    path = Path(study_path)
    if not path.is_file():
        raise TuneError(f"no study file {path}")
    storage = _storage(path)
    try:
        studies = storage.get_all_studies()
    except Exception as exc:
        raise TuneError(f"{path} is not a readable study journal ({exc})") from None
    attrs = next((s.user_attrs.get(ATTR) for s in studies if s.study_name == STUDY_NAME), None)
    if attrs is None:
        raise TuneError(f"{path} holds no `circuitlab tune` study")
    try:
        return StudySettings.from_json(attrs)
    except (KeyError, TypeError, ValueError) as exc:
        raise TuneError(f"{path}: damaged study settings ({exc})") from None


def _repair_journal(path: Path) -> None:
    """Under the session lock: drop a last line cut short by a kill (Optuna would refuse to
    read past it once more lines follow) and a lock file left by a killed writer."""
    with open(path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)
    # JournalFileOpenLock's file: only a session holder appends, so a leftover one is stale
    Path(str(path) + ".lock").unlink(missing_ok=True)


def _create_study(path: Path, settings: StudySettings) -> None:
    """Write a new study file atomically: a kill leaves no file or a complete one."""
    optuna = _optuna()
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    study = optuna.create_study(storage=_storage(tmp), study_name=STUDY_NAME, direction="minimize")
    study.set_user_attr(ATTR, settings.to_json())
    del study
    os.replace(tmp, path)


# --- pruning ---------------------------------------------------------------------------------
def _median_error_pruner(n_startup_trials: int, n_warmup_steps: int):
    optuna = _optuna()
    from optuna.trial import TrialState

    class MedianErrorPruner(optuna.pruners.BasePruner):
        """Prune when the trial's best reported error is above the median error of the complete
        trials at the same step, each carried forward past its last report."""

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None or step < n_warmup_steps:
                return False
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if len(complete) < n_startup_trials:
                return False
            others = []
            for t in complete:
                reported = [s for s in t.intermediate_values if s <= step]
                if reported:
                    others.append(t.intermediate_values[max(reported)])
            if len(others) < n_startup_trials:
                return False
            mine = min(v for s, v in trial.intermediate_values.items() if s <= step)
            return mine > statistics.median(others)

    return MedianErrorPruner()


class _Pruned(Exception):
    def __init__(self, step: int, error: float) -> None:
        super().__init__(f"pruned at step {step}")
        self.step = step
        self.error = error


# --- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialRecord:
    number: int
    key: int  # the run key: run directories are trial-KEY-seedS
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    params: dict[str, Any]
    value: float | None
    steps_to_99: list[int | None] | None = None  # per seed; None = never reached 99%
    best_val_acc: list[float] | None = None
    pruned_at: int | None = None
    resumes: int | None = None  # the run key this trial continued after a kill


@dataclass(frozen=True)
class TuneResult:
    study_path: Path
    trials_dir: Path
    settings: StudySettings
    trials: list[TrialRecord]
    budget: int
    ran: list[int] = field(default_factory=list)  # trial numbers run by this call
    saved: Path | None = None

    @property
    def finished(self) -> int:
        return sum(t.state in ("COMPLETE", "PRUNED") for t in self.trials)

    @property
    def best(self) -> TrialRecord | None:
        complete = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        return min(complete, key=lambda t: (t.value, t.number)) if complete else None

    def best_recipe(self, name: str) -> Recipe:
        """The base recipe with the best trial's values, named `name`: its own `max_steps` and
        `stop_val_acc`, not the study's."""
        best = self.best
        if best is None:
            raise TuneError(f"study {self.study_path} has no complete trial yet")
        return apply_params(self.settings.base, best.params).replace(name=name)

    def measured(self) -> dict[str, Any]:
        """What the best trial was measured on, stored with a saved recipe."""
        best = self.best
        if best is None:
            raise TuneError(f"study {self.study_path} has no complete trial yet")
        steps = best.steps_to_99 or []
        reached = [s for s in steps if s is not None]
        return {
            "task": self.settings.task,
            "seeds": list(self.settings.seeds),
            "steps_to_99": steps,
            "median_steps_to_99": (
                statistics.median(reached) if steps and len(reached) == len(steps) else None
            ),
            "objective": best.value,
            "best_val_acc": best.best_val_acc,
            "budget": self.finished,
            "max_steps": self.settings.max_steps,
            "base_recipe": self.settings.base.name,
            "params": best.params,
            "study": str(self.study_path.resolve()),
            "trial": best.key,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }


def _record(ft: Any) -> TrialRecord:
    attrs = ft.user_attrs
    return TrialRecord(
        number=ft.number,
        key=attrs.get("key", ft.number),
        state=ft.state.name,
        params=dict(ft.params),
        value=ft.value if ft.state.name == "COMPLETE" else None,
        steps_to_99=attrs.get("steps_to_99"),
        best_val_acc=attrs.get("best_val_acc"),
        pruned_at=attrs.get("pruned_at"),
        resumes=attrs.get("resumes"),
    )


def study_results(study_path: str | Path, budget: int = 0) -> TuneResult:
    """The trials of a study file as they stand (read only)."""
    path = Path(study_path)
    settings = read_settings(path)
    study = _optuna().load_study(study_name=STUDY_NAME, storage=_storage(path))
    trials = [_record(t) for t in study.get_trials(deepcopy=False)]
    return TuneResult(path, trials_dir(path), settings, trials, budget)


def seed_score(grokked_at: int | None, best_val_acc: float, max_steps: int) -> float:
    """Steps to 99% validation; a run that never got there scores max_steps * (2 - best val
    acc), worse than any that did."""
    if grokked_at is not None:
        return float(grokked_at)
    return max_steps * (2.0 - best_val_acc)


# --- one trial -------------------------------------------------------------------------------
@dataclass
class _Outcome:
    steps_to_99: dict[int, int | None] = field(default_factory=dict)
    best_val_acc: dict[int, float] = field(default_factory=dict)
    pruned_at: int | None = None


def pruned_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + PRUNED_SUFFIX)


def _row_acc(row: dict[str, Any]) -> float:
    value = row.get("val_acc")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = row.get("train_acc")
    return float(value) if value is not None else 0.0


def _best_acc(rows: list[dict[str, Any]]) -> float:
    return max((_row_acc(r) for r in rows), default=0.0)


def _run_state(spec: Any) -> tuple[str, Any]:
    """What is on disk for one seed of a trial: ("finished", (grokked_at, best acc)),
    ("pruned", step), ("checkpoint", step) or ("fresh", None). A directory written with
    another recipe is refused: it does not belong to this trial."""
    from circuitlab.training.trainer import checkpoint_meta

    want = json.loads(dumps_strict(spec.recipe.to_dict()))

    def check(where: Path) -> bool:
        try:
            config = json.loads((where / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            return False
        if (config.get("task"), config.get("seed"), config.get("recipe")) != (
            spec.task,
            spec.seed,
            want,
        ):
            raise TuneError(
                f"{where} holds a run of another configuration; it is not this study's trial "
                f"(delete it, or use another --study)"
            )
        return True

    run, partial, pruned = (
        spec.run_dir,
        rundir.partial_path(spec.run_dir),
        pruned_path(spec.run_dir),
    )
    if run.is_dir():
        check(run)
        info = rundir.read_run(run)
        return "finished", (info.summary.get("grokked_at"), _best_acc(rundir.read_metrics(run)))
    for where in (pruned, partial):
        if (where / PRUNED_FILE).is_file() and check(where):
            data = json.loads((where / PRUNED_FILE).read_text())
            return "pruned", data.get("pruned_at")
    if partial.is_dir() and check(partial):
        try:
            meta = checkpoint_meta(spec.run_dir)
        except rundir.RunDirError:
            meta = None  # a damaged checkpoint: start that run over
        if meta is not None:
            return "checkpoint", meta["step"]
    return "fresh", None


def _mark_pruned(spec: Any, step: int | None, error: float | None) -> None:
    """An unfinished run of a pruned trial: `RUN.partial` -> `RUN.pruned` with pruned.json, its
    checkpoint dropped. Each step is safe to repeat after a kill."""
    partial, target = rundir.partial_path(spec.run_dir), pruned_path(spec.run_dir)
    if target.exists() or not partial.is_dir():
        return
    with rundir.RunLock(spec.run_dir):
        if not (partial / PRUNED_FILE).is_file():
            write_json_atomic(partial / PRUNED_FILE, {"pruned_at": step, "val_error": error})
        shutil.rmtree(partial / "checkpoint", ignore_errors=True)
        os.replace(partial, target)


StepFn = Callable[[int, int, int, float], None]  # (trial number, step, max steps, median val acc)


def _run_trial(
    settings: StudySettings,
    trial: Any,
    key: int,
    params: dict[str, Any],
    root: Path,
    *,
    prune: bool,
    threads: int | None,
    on_step: StepFn | None,
) -> _Outcome:
    from circuitlab.training.trainer import RunSpec, train_stack

    recipe = settings.trial_recipe(params, key)
    specs = [
        RunSpec(settings.task, recipe, s, root / f"trial-{key}-seed{s}") for s in settings.seeds
    ]
    out = _Outcome()
    pending, pruned_step, steps = [], None, set()
    for spec in specs:
        state, detail = _run_state(spec)
        if state == "finished":
            out.steps_to_99[spec.seed], out.best_val_acc[spec.seed] = detail
        elif state == "pruned":
            pruned_step = detail if pruned_step is None else pruned_step
            out.pruned_at = pruned_step if pruned_step is not None else -1
        else:
            pending.append(spec)
            steps.add(detail)
    if out.pruned_at is not None:  # pruned before a kill: finish marking, never resume
        for spec in pending:
            _mark_pruned(spec, pruned_step, None)
        return out
    if not pending:
        return out
    # runs of one stack checkpoint together; anything else (a kill inside a checkpoint write,
    # a run with no checkpoint yet) starts the unfinished runs over
    resume = len(steps) == 1 and None not in steps
    best = dict(out.best_val_acc)
    if resume:
        for spec in pending:
            rows = rundir.read_metrics(rundir.partial_path(spec.run_dir), torn_tail=True)
            best[spec.seed] = _best_acc([r for r in rows if r["step"] <= next(iter(steps))])
    active = [s.seed for s in pending]
    every = recipe.eval_every * max(
        1, round(recipe.max_steps / recipe.eval_every / REPORTS_PER_TRIAL)
    )

    def progress(step: int, max_steps: int, rows: list[dict[str, float]]) -> None:
        # rows follow the stack's runs still training, in input order; a run leaves the stack
        # after the eval at which it reaches stop_val_acc or max_steps (trainer._train_locked)
        ending = []
        for seed, row in zip(active, rows, strict=True):
            acc = _row_acc(row)
            best[seed] = max(best.get(seed, 0.0), acc)
            if acc >= recipe.stop_val_acc or step >= recipe.max_steps:
                ending.append(seed)
        active[:] = [s for s in active if s not in ending]
        median_acc = statistics.median(best.get(s, 0.0) for s in settings.seeds)
        if on_step:
            on_step(trial.number, step, max_steps, median_acc)
        if step % every == 0 or ending:
            error = 1.0 - median_acc
            trial.report(error, step)
            # never at a step where a run finishes: stopping there would lose its result
            if prune and active and not ending and trial.should_prune():
                raise _Pruned(step, error)

    try:
        train_stack(pending, resume=resume, threads=threads, progress=progress)
    except _Pruned as exc:
        out.pruned_at = exc.step
        for spec in pending:
            if not spec.run_dir.is_dir():
                _mark_pruned(spec, exc.step, exc.error)
                out.best_val_acc[spec.seed] = best.get(spec.seed, 0.0)
    for spec in pending:
        if spec.run_dir.is_dir():
            info = rundir.read_run(spec.run_dir)
            out.steps_to_99[spec.seed] = info.summary.get("grokked_at")
            out.best_val_acc[spec.seed] = _best_acc(rundir.read_metrics(spec.run_dir))
    return out


# --- the study -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TunePlan:
    """A validated request: nothing has been written yet."""

    study_path: Path
    settings: StudySettings
    budget: int
    new: bool
    save_as: str | None
    replace_saved: bool


def _resolve_recipe(recipe: str | Recipe | None) -> Recipe | None:
    if recipe is None or isinstance(recipe, Recipe):
        return recipe
    try:
        return get_recipe(recipe)
    except RecipeError as exc:
        raise TuneError(str(exc)) from None


def prepare(
    task: str,
    budget: int,
    study_path: str | Path | None = None,
    *,
    space: Sequence[str | Dim] | None = None,
    seeds: Sequence[int] | None = None,
    base_recipe: str | Recipe | None = None,
    max_steps: int | None = None,
    sampler_seed: int | None = None,
    out: str | Path = "runs",
    save_recipe_as: str | None = None,
) -> TunePlan:
    """Check every input and the study file (if any) without writing anything.

    For an existing study, settings left None are the recorded ones, and a given setting that
    differs from the recorded one is refused (the trials would not be comparable)."""
    from circuitlab.tasks import TaskError, get_task

    _optuna()
    try:
        get_task(task)
    except TaskError as exc:
        raise TuneError(str(exc)) from None
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= MAX_BUDGET:
        raise TuneError(
            f"--budget must be a number of trials in [1, {MAX_BUDGET:,}], got {budget!r}"
        )
    path = Path(study_path) if study_path is not None else default_study_path(out, task)
    if path.exists() and not path.is_file():
        raise TuneError(f"--study {path} is not a file")
    base = _resolve_recipe(base_recipe)
    dims = parse_space(space) if space else None
    if seeds is not None:
        seeds = tuple(seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise TuneError(f"seeds must be non-negative integers, got {list(seeds)!r}")
        if len(set(seeds)) != len(seeds):
            raise TuneError(f"seeds repeat: {list(seeds)!r}")
    if max_steps is not None and (
        isinstance(max_steps, bool)
        or not isinstance(max_steps, int)
        or not 1 <= max_steps <= MAX_STEPS
    ):
        raise TuneError(f"--max-steps must be in [1, {MAX_STEPS:,}], got {max_steps!r}")
    new = not path.exists()
    if new:
        base = base or get_recipe("fast")
        settings = StudySettings(
            task=task,
            base=base,
            seeds=seeds or (0, 1, 2),
            space=dims or parse_space(DEFAULT_SPACE),
            max_steps=max_steps or base.max_steps,
            sampler_seed=sampler_seed or 0,
        )
        folder = trials_dir(path)
        if folder.is_dir() and any(folder.iterdir()):
            raise TuneError(
                f"{folder} already holds runs but {path} does not exist; delete {folder} or "
                f"choose another --study"
            )
    else:
        settings = read_settings(path)
        if settings.task != task:
            raise TuneError(f"study {path} was made for task {settings.task}, not {task}")
        given = {
            "--recipe": (base and base.to_dict(), settings.base.to_dict()),
            "--seeds": (seeds, settings.seeds),
            "--space": (
                dims and [d.to_json() for d in dims],
                [d.to_json() for d in settings.space],
            ),
            "--max-steps": (max_steps, settings.max_steps),
            "--sampler-seed": (sampler_seed, settings.sampler_seed),
        }
        for option, (mine, recorded) in given.items():
            if mine is not None and json.loads(dumps_strict(mine)) != json.loads(
                dumps_strict(recorded)
            ):
                raise TuneError(
                    f"study {path} was made with another {option}; leave {option} out to "
                    f"continue it, or start another --study"
                )
    check_space(settings.space, task, settings.base)
    replace_saved = False
    if save_recipe_as is not None:
        try:
            target = recipe_path(check_name(save_recipe_as))
        except RecipeError as exc:
            raise TuneError(str(exc)) from None
        if target.exists():
            from circuitlab.training.saved_recipes import read_saved

            try:
                study = read_saved(target).measured.get("study")
            except RecipeError:
                study = None
            if study != str(path.resolve()):
                raise TuneError(
                    f"recipe {save_recipe_as!r} is already saved in {target} from another "
                    f"study; delete it or choose another name"
                )
            replace_saved = True  # the same study's earlier best
    return TunePlan(path, settings, budget, new, save_recipe_as, replace_saved)


def _requeue(study: Any, ft: Any, space: Sequence[Dim]) -> None:
    """Mark an unfinished trial FAIL and enqueue its parameters to run again into the same run
    directories (`resumes`). Idempotent: a kill between the two steps enqueues nothing twice."""
    from optuna.trial import TrialState

    params = {**ft.system_attrs.get("fixed_params", {}), **ft.params}
    already = {t.user_attrs.get("replaces") for t in study.get_trials(deepcopy=False)}
    if ft.number not in already and all(d.key in params for d in space):
        key = ft.user_attrs.get("key", ft.number)
        study.enqueue_trial(params, user_attrs={"resumes": key, "replaces": ft.number})
    study.tell(ft.number, state=TrialState.FAIL)


TrialFn = Callable[[TrialRecord], None]


def _frozen(study: Any, number: int) -> Any:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def run(
    plan: TunePlan,
    *,
    threads: int | None = None,
    prune: bool = True,
    prune_startup: int = 3,
    prune_warmup: int | None = None,
    on_trial_start: Callable[[int, int, dict[str, Any]], None] | None = None,
    on_step: StepFn | None = None,
    on_trial_end: TrialFn | None = None,
) -> TuneResult:
    """Run a prepared study until `plan.budget` trials are COMPLETE or PRUNED."""
    optuna = _optuna()
    from optuna.trial import TrialState

    path, settings = plan.study_path, plan.settings
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = _session_lock(path).acquire()
    except rundir.RunDirError:
        raise TuneError(
            f"study {path} is being run by another process; wait for it, or stop it and run the "
            f"same command again"
        ) from None
    try:
        if plan.new:
            if path.exists():
                raise TuneError(f"study {path} was created meanwhile; run the command again")
            _create_study(path, settings)
        _repair_journal(path)
        storage = _storage(path)
        n_before = len(storage.get_all_trials(storage.get_study_id_from_name(STUDY_NAME)))
        sampler = optuna.samplers.TPESampler(
            # a restarted process must not replay the random start-up suggestions
            seed=settings.sampler_seed + n_before,
            n_startup_trials=max(2, min(10, plan.budget // 3)),
        )
        warmup = settings.max_steps // 10 if prune_warmup is None else prune_warmup
        study = optuna.load_study(
            study_name=STUDY_NAME,
            storage=storage,
            sampler=sampler,
            pruner=_median_error_pruner(prune_startup, warmup),
        )
        for ft in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _requeue(study, ft, settings.space)  # left by a killed process
        root = trials_dir(path)
        ran: list[int] = []

        def finished() -> int:
            states = (TrialState.COMPLETE, TrialState.PRUNED)
            return len(study.get_trials(deepcopy=False, states=states))

        while finished() < plan.budget:
            trial = study.ask()
            key = int(trial.user_attrs.get("resumes", trial.number))
            trial.set_user_attr("key", key)
            try:
                params = {d.key: d.suggest(trial) for d in settings.space}
                if on_trial_start:
                    on_trial_start(trial.number, key, params)
                outcome = _run_trial(
                    settings,
                    trial,
                    key,
                    params,
                    root,
                    prune=prune,
                    threads=threads,
                    on_step=on_step,
                )
                steps = [outcome.steps_to_99.get(s) for s in settings.seeds]
                accs = [outcome.best_val_acc.get(s) for s in settings.seeds]
                trial.set_user_attr("steps_to_99", steps)
                trial.set_user_attr("best_val_acc", accs)
                if outcome.pruned_at is not None:
                    trial.set_user_attr("pruned_at", outcome.pruned_at)
                    study.tell(trial, state=TrialState.PRUNED)
                else:
                    scores = [
                        seed_score(g, a or 0.0, settings.max_steps)
                        for g, a in zip(steps, accs, strict=True)
                    ]
                    study.tell(trial, statistics.median(scores))
            except BaseException:
                # Ctrl-C, an error: requeue, so the next run continues this trial's runs
                _requeue(study, _frozen(study, trial.number), settings.space)
                raise
            ran.append(trial.number)
            if on_trial_end:
                on_trial_end(_record(_frozen(study, trial.number)))
        trials = [_record(t) for t in study.get_trials(deepcopy=False)]
        result = TuneResult(path, root, settings, trials, plan.budget, ran)
        if plan.save_as:
            recipe = result.best_recipe(plan.save_as)
            saved = save_recipe(recipe, result.measured(), replace=plan.replace_saved)
            result = dataclasses.replace(result, saved=saved)
        return result
    finally:
        lock.release()


def tune(
    task: str,
    budget: int,
    study_path: str | Path | None = None,
    *,
    space: Sequence[str | Dim] | None = None,
    seeds: Sequence[int] | None = None,
    base_recipe: str | Recipe | None = None,
    max_steps: int | None = None,
    sampler_seed: int | None = None,
    out: str | Path = "runs",
    save_recipe_as: str | None = None,
    **run_options: Any,
) -> TuneResult:
    """Search recipes for `task` until `budget` trials are finished; see the module docstring.

    `space`: strings like "lr=1e-4:1e-2:log" or `Dim`s (default DEFAULT_SPACE); `seeds`: each
    trial trains one run per seed (default 0, 1, 2); `base_recipe`: the recipe the space varies
    (default "fast"); `max_steps`: each run's step budget (default the base recipe's);
    `save_recipe_as`: save the best trial as a named recipe. `run_options` go to `run`
    (threads, prune, prune_startup, prune_warmup, on_trial_start, on_step, on_trial_end)."""
    plan = prepare(
        task,
        budget,
        study_path,
        space=space,
        seeds=seeds,
        base_recipe=base_recipe,
        max_steps=max_steps,
        sampler_seed=sampler_seed,
        out=out,
        save_recipe_as=save_recipe_as,
    )
    return run(plan, **run_options)
