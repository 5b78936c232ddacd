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

import contextlib
import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab._atomic import replace_dir, write_json_atomic  # noqa: F401 (re-exported)

GROK_THRESHOLD = 0.99  # the grokking step is the first logged step with val acc >= this
REQUIRED_FILES = ("config.json", "model.safetensors", "metrics.jsonl", "summary.json")
MASK_FILE = "masks.safetensors"  # a pruned run's 0/1 masks (TransformerLens names)
DERIVATIONS = ("prune", "lora", "finetune")  # `parent.how` of a derived run (as the catalog)


class RunDirError(ValueError):
    """A run directory is missing, incomplete or inconsistent."""


def partial_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".partial")


def lock_path(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + ".lock")


_UNSAFE = set("/\\%") | {chr(c) for c in range(32)} | {chr(127)}
MAX_NAME = 160  # bytes of a path component we write; file systems allow 255


def safe_name(text: str) -> str:
    """`text` as one path component: `/`, `\\`, `%` and control characters are %-escaped (so
    `synth_mod_7[a/b+c]` stays one directory and distinct names stay distinct), a leading `.`
    too (`..` cannot climb out), and an over-long name is cut and suffixed with its hash."""
    out = "".join(f"%{ord(c):02X}" if c in _UNSAFE else c for c in text)
    if out.startswith("."):
        out = "%2E" + out[1:]
    if not out:
        raise RunDirError("a run name cannot be empty")
    if len(out.encode()) > MAX_NAME:
        import hashlib

        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        out = out.encode()[: MAX_NAME - 13].decode(errors="ignore") + "-" + digest
    return out


class RunLock:
    """An exclusive lock on one run directory for as long as a process writes it.

    `flock` on `RUN.lock`: the kernel drops it when the holder exits, however it dies, so a
    lock never outlives a killed process, and a second writer is refused at once (it would
    otherwise delete or interleave with the first's `RUN.partial`). The file is removed on
    release; a lock taken on a file just unlinked by its previous holder is retried.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = lock_path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                run = self.path.with_name(self.path.name.removesuffix(".lock"))
                raise RunDirError(
                    f"{run} is being written by another process (pid {holder}); wait for it "
                    f"to finish, or stop it and continue with --resume"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder unlinked it between our open and flock
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


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

    @property
    def seed(self) -> int:
        return self.config["seed"]

    @property
    def recipe(self):
        """The run's recipe (`Recipe`), as validated by `read_run`."""
        from circuitlab.training.recipe import Recipe

        return Recipe.from_dict(self.config["recipe"])

    @property
    def model_config(self):
        """The run's architecture (`ModelConfig`), as validated by `read_run`."""
        from circuitlab.models import ModelConfig

        return ModelConfig.from_dict(self.config["model"])


def check_config(config: Any, where: Path) -> None:
    """Refuse a `config.json` whose fields a later stage could not use, naming the field.

    A run directory may come from elsewhere or be edited by hand; every field is checked here
    so that `extract` fails in one line instead of deep in its computation."""
    from circuitlab import _fields
    from circuitlab.models import ModelConfig, ModelConfigError
    from circuitlab.tasks import TaskError, get_task
    from circuitlab.training.recipe import Recipe, RecipeError

    path = where / "config.json"
    if not isinstance(config, dict):
        raise RunDirError(f"{path} must hold a JSON object, got {type(config).__name__}")
    missing = [k for k in ("task", "seed", "model", "recipe") if k not in config]
    if missing:
        raise RunDirError(f"{path} is missing {', '.join(missing)}")
    try:
        task = get_task(_fields.text("task", config["task"], RunDirError, 10_000))
        _fields.integer("seed", config["seed"], RunDirError, 0)
        Recipe.from_dict(config["recipe"])
        if not isinstance(config["model"], dict):
            raise RunDirError(f"model must be a mapping of fields, got {config['model']!r:.80}")
        ModelConfig.for_task(task, **config["model"])  # fits the task, every field valid
        if config.get("parent") is not None:
            check_parent(config["parent"])
    except (RunDirError, TaskError, RecipeError, ModelConfigError) as exc:
        raise RunDirError(f"{path}: {exc}") from None


def check_parent(parent: Any) -> None:
    """A derived run's provenance: `{run, weights_sha256, how, method}`, what the catalog's
    DERIVED_FROM needs (the parent's identity by content, not only by path)."""
    import re

    if not isinstance(parent, dict):
        raise RunDirError(f"parent must be a mapping, got {parent!r:.80}")
    for key in ("run", "weights_sha256", "how"):
        if not isinstance(parent.get(key), str):
            raise RunDirError(f"parent.{key} must be a string, got {parent.get(key)!r:.80}")
    if not re.fullmatch(r"[0-9a-f]{64}", parent["weights_sha256"]):
        raise RunDirError("parent.weights_sha256 must be 64 lowercase hex digits")
    if parent["how"] not in DERIVATIONS:
        raise RunDirError(f"parent.how must be one of {DERIVATIONS}, got {parent['how']!r}")
    if not isinstance(parent.get("method", {}), dict):
        raise RunDirError("parent.method must be a mapping")


def sha256_file(path: str | Path) -> str:
    """Content hash of a file (a parent's weights; the catalog's `weights_sha256`)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    check_config(config, run_dir)
    if not isinstance(summary, dict):
        raise RunDirError(f"{run_dir / 'summary.json'} must hold a JSON object")
    return RunInfo(run_dir, config, summary)


def read_metrics(run_dir: str | Path, torn_tail: bool = False) -> list[dict[str, Any]]:
    """The rows of `metrics.jsonl`. With `torn_tail` (resuming an interrupted run), a last line
    cut short by a kill is dropped; a bad line anywhere else is an error."""
    path = Path(run_dir, "metrics.jsonl")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for k, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if torn_tail and k == len(lines) - 1:
                break
            raise RunDirError(f"{path} line {k + 1} is not JSON: {line[:80]!r}") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise RunDirError(f"{path} line {k + 1} is not a metrics row: {line[:80]!r}")
        rows.append(row)
    return rows


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
    from circuitlab.models import Transformer

    info = read_run(run_dir)
    model = Transformer.load(info.path / "model.safetensors", info.model_config)
    model.eval()
    return info, model
