"""Training runs for the training view: where they are and the curves they logged.

Runs come from two places: every finished run directory under `--runs`, and the run directory
each catalog Model record names (`metadata.source_run`) when it still exists, so a catalog alone
is enough to see how its models trained. Restricted and excluded loss (Nanda et al. 2023) are
measured once, on the final model, by extraction's Fourier analysis: they are read from
`RUN/extraction/summary.json` when it is there and drawn at the run's last step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuitlab.training import RunDirError, find_runs, read_metrics, read_run
from circuitlab.viz.sources import ExplorerError, Sources

SERIES = ("train_loss", "val_loss", "train_acc", "val_acc")


@dataclass
class RunCurves:
    """One run's logged metrics, by step."""

    path: str
    name: str  # task/run, e.g. "add_mod_113/fast-seed0"
    steps: list[int]
    series: dict[str, list[float | None]]  # SERIES name -> value per step
    grokked_at: int | None
    fourier: dict[str, float] = field(default_factory=dict)  # restricted/excluded/full loss


def run_paths(sources: Sources) -> list[str]:
    """Finished run directories under --runs and those named by the catalog's models, sorted."""
    found = set()
    if sources.runs_dir is not None and sources.runs_dir.is_dir():
        found.update(str(info.path) for info in find_runs(sources.runs_dir))
    try:
        with sources.catalog() as cat:
            for model in cat.records("model"):
                run = model.metadata.source_run
                if run and Path(run, "metrics.jsonl").is_file():
                    found.add(str(Path(run)))
    except ExplorerError:
        pass  # the training view works from --runs alone
    return sorted(found)


def read_curves(path: str) -> RunCurves:
    """The curves of the run at `path`; ExplorerError says what is missing."""
    try:
        info = read_run(path)
        rows = read_metrics(path, torn_tail=True)
    except (RunDirError, OSError) as exc:
        raise ExplorerError(f"run {path}: {exc}") from None
    series: dict[str, list[float | None]] = {name: [] for name in SERIES}
    for row in rows:
        for name in SERIES:
            value = row.get(name)
            series[name].append(float(value) if isinstance(value, int | float) else None)
    grokked = info.summary.get("grokked_at")
    return RunCurves(
        path=str(info.path),
        name=f"{info.task}/{info.path.name}",
        steps=[row["step"] for row in rows],
        series=series,
        grokked_at=grokked if isinstance(grokked, int) else None,
        fourier=_fourier_losses(info.path),
    )


def _fourier_losses(run: Path) -> dict[str, float]:
    path = run / "extraction" / "summary.json"
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    losses = (summary.get("fourier") or {}).get("losses") or {}
    return {
        k: float(v)
        for k, v in losses.items()
        if k in ("full", "restricted", "excluded") and isinstance(v, int | float)
    }
