"""A study's settings and files: the journal (Optuna's JournalStorage on one file, no server)
holding the settings as a user attribute, the session lock, and the trials read back as
`TrialRecord`s and a `TuneResult`.

Files of a study (default `OUT/TASK/tune-default.journal`):

    STUDY.journal                 Optuna's JournalStorage (JournalFileBackend, no server). One
                                  study, "circuitlab-tune"; its user attribute `circuitlab`
                                  records the task, base recipe, seeds, space, step budget and
                                  sampler seed, and a different task or setting is refused.
    STUDY.journal.session.lock    held (flock) while one process runs the study
    STUDY/trial-K-seedS/          an ordinary run directory per trial and seed (`runs`,
                                  `extract` read it); K is the trial's run key
    STUDY/trial-K-seedS.pruned/   the unfinished run of a pruned trial: config.json,
                                  metrics.jsonl and pruned.json, no weights (not a run)
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlab.training import rundir
from circuitlab.training.recipe import Recipe
from circuitlab.training.tune.space import Dim, TuneError, apply_params

STUDY_NAME = "circuitlab-tune"
ATTR = "circuitlab"  # the study's user attribute holding its settings
SETTINGS_VERSION = 1


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
