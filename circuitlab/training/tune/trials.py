"""One trial: its seeds trained as one stack, scored, and pruned when its validation curve falls
behind.

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
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlab._atomic import dumps_strict, write_json_atomic
from circuitlab.training import rundir
from circuitlab.training.tune.space import TuneError
from circuitlab.training.tune.study import StudySettings, _optuna

PRUNED_SUFFIX = ".pruned"
PRUNED_FILE = "pruned.json"
REPORTS_PER_TRIAL = 50


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


def seed_score(grokked_at: int | None, best_val_acc: float, max_steps: int) -> float:
    """Steps to 99% validation; a run that never got there scores max_steps * (2 - best val
    acc), worse than any that did."""
    if grokked_at is not None:
        return float(grokked_at)
    return max_steps * (2.0 - best_val_acc)


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
