"""The study driver: `prepare` checks a request without writing, `run` asks Optuna for trials
until the budget is reached, `tune` does both.

Resuming: the budget counts COMPLETE and PRUNED trials only. A trial left RUNNING (its process
was killed) is marked FAIL and its parameters re-enqueued with user attribute `resumes` = its
run key, so the new trial trains into the same run directories and `train_stack` continues them
from their checkpoints: no trial is lost or repeated. Finished seeds are read back, not
retrained; a pruned trial is not resumed. The same happens on Ctrl-C and on errors.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab._atomic import dumps_strict
from circuitlab.training import rundir
from circuitlab.training.recipe import MAX_STEPS, Recipe, RecipeError, get_recipe
from circuitlab.training.saved_recipes import check_name, recipe_path, save_recipe
from circuitlab.training.tune.space import DEFAULT_SPACE, Dim, TuneError, check_space, parse_space
from circuitlab.training.tune.study import (
    STUDY_NAME,
    StudySettings,
    TrialRecord,
    TuneResult,
    _create_study,
    _optuna,
    _record,
    _repair_journal,
    _session_lock,
    _storage,
    default_study_path,
    read_settings,
    trials_dir,
)
from circuitlab.training.tune.trials import StepFn, _median_error_pruner, _run_trial, seed_score

MAX_BUDGET = 10_000


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
    """Search recipes for `task` until `budget` trials are finished; see `circuitlab.training.tune`.

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
