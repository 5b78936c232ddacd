"""Hyperparameter search over recipes: Optuna's TPE sampler, a median pruner on the validation
curve, and a journal file as storage, so a killed study continues where it stopped.

Modules, each documenting its part:

    space.py    the searched fields (`Dim`, `parse_space`, `check_space`, `DEFAULT_SPACE`)
    study.py    a study's settings, journal file and lock, and its trials read back
                (`StudySettings`, `study_results`, `TuneResult`)
    trials.py   one trial: training its seeds, the objective (`seed_score`) and the pruner
    driver.py   `prepare`, `run` and `tune`: the budget, resuming after a kill, saving the best

Needs the `tune` extra (Optuna), imported only when a study is opened.
"""

from circuitlab.training.tune.driver import (
    MAX_BUDGET,
    TrialFn,
    TunePlan,
    prepare,
    run,
    tune,
)
from circuitlab.training.tune.space import (
    DEFAULT_SPACE,
    FIXED,
    TASK_FIELDS,
    Dim,
    TuneError,
    apply_params,
    canonical_key,
    check_space,
    parse_dim,
    parse_space,
)
from circuitlab.training.tune.study import (
    ATTR,
    SETTINGS_VERSION,
    STUDY_NAME,
    StudySettings,
    TrialRecord,
    TuneResult,
    default_study_path,
    read_settings,
    study_results,
    trials_dir,
)
from circuitlab.training.tune.trials import (
    PRUNED_FILE,
    PRUNED_SUFFIX,
    REPORTS_PER_TRIAL,
    StepFn,
    pruned_path,
    seed_score,
)

__all__ = [
    "ATTR",
    "DEFAULT_SPACE",
    "FIXED",
    "MAX_BUDGET",
    "PRUNED_FILE",
    "PRUNED_SUFFIX",
    "REPORTS_PER_TRIAL",
    "SETTINGS_VERSION",
    "STUDY_NAME",
    "TASK_FIELDS",
    "Dim",
    "StepFn",
    "StudySettings",
    "TrialFn",
    "TrialRecord",
    "TunePlan",
    "TuneError",
    "TuneResult",
    "apply_params",
    "canonical_key",
    "check_space",
    "default_study_path",
    "parse_dim",
    "parse_space",
    "prepare",
    "pruned_path",
    "read_settings",
    "run",
    "seed_score",
    "study_results",
    "trials_dir",
    "tune",
]
