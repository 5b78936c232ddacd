"""Run directories: the on-disk artifact of one training run (see DESIGN.md).

    RUN/config.json       task spec, model config, recipe, seed, versions (resolved, complete)
    RUN/model.safetensors final weights (TransformerLens parameter names)
    RUN/metrics.jsonl     one JSON object per logged step
    RUN/summary.json      final metrics, grokking step, wall time
    RUN/curves.png        loss / accuracy / weight-norm curves

A run is written into `RUN.partial/` (which also holds its resumable checkpoint) and renamed to
`RUN` only when complete, so a crash never leaves a half-written run under the final name.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab._atomic import replace_dir, write_json_atomic  # noqa: F401 (re-exported)

GROK_THRESHOLD = 0.99  # the grokking step is the first logged step with val acc >= this
REQUIRED_FILES = ("config.json", "model.safetensors", "metrics.jsonl", "summary.json")


class RunDirError(ValueError):
    """A run directory is missing, incomplete or inconsistent."""


def partial_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".partial")


def versions() -> dict[str, str]:
    import numpy
    import torch

    import circuitlab

    out = {
        "circuitlab": circuitlab.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    try:
        root = Path(circuitlab.__file__).resolve().parent.parent
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if rev.returncode == 0:
            out["git"] = rev.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def finalize(partial: Path, run_dir: Path, overwrite: bool) -> None:
    """Atomically publish a finished partial directory under its final name."""
    shutil.rmtree(partial / "checkpoint", ignore_errors=True)
    if run_dir.exists() and not overwrite:
        raise RunDirError(f"{run_dir} already exists; pass --overwrite or choose another --out")
    replace_dir(partial, run_dir)


@dataclass(frozen=True)
class RunInfo:
    """What `circuitlab runs` and later stages read from a finished run directory."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]

    @property
    def task(self) -> str:
        return self.config["task"]


def read_run(run_dir: str | Path) -> RunInfo:
    """Read a finished run directory; RunDirError says what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        hint = (
            " (an unfinished run: resume it with `circuitlab train --resume`)"
            if partial_path(run_dir).is_dir()
            else ""
        )
        raise RunDirError(f"no run directory at {run_dir}{hint}")
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise RunDirError(f"run directory {run_dir} is missing {', '.join(missing)}")
    try:
        config = json.loads((run_dir / "config.json").read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
    except json.JSONDecodeError as exc:
        raise RunDirError(f"run directory {run_dir} has unreadable JSON: {exc}") from None
    return RunInfo(run_dir, config, summary)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    lines = Path(run_dir, "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def find_runs(root: str | Path) -> list[RunInfo]:
    """Every finished run directory under `root` (recursively), sorted by path."""
    root = Path(root)
    found = []
    for config in sorted(root.rglob("config.json")):
        if config.parent.name.endswith((".partial", ".old")):
            continue
        try:
            found.append(read_run(config.parent))
        except RunDirError:
            continue
    return found


def load_run(run_dir: str | Path):
    """(RunInfo, Transformer) for a finished run; RunDirError/CheckpointError say what is wrong."""
    from circuitlab.models import ModelConfig, ModelConfigError, Transformer

    info = read_run(run_dir)
    try:
        cfg = ModelConfig.from_dict(info.config["model"])
    except (KeyError, TypeError, ModelConfigError) as exc:
        raise RunDirError(f"config.json in {info.path} has no valid model config: {exc}") from None
    model = Transformer.load(info.path / "model.safetensors", cfg)
    model.eval()
    return info, model
