"""Derived runs: models made from a finished run (pruned, LoRA-adapted) as run directories.

A derived model is a run directory like any other (`read_run`, `load_run` and `circuitlab
extract` take it unchanged) whose `config.json` also records where it came from:

    "parent": {"run": PATH, "weights_sha256": HEX, "how": "prune" | "lora", "method": {...}}

The parent is named by the content hash of its `model.safetensors`, not only by its path, so
the catalog can link `(Model)-[:DERIVED_FROM {how}]->(Model)` to the exact checkpoint and a
moved or retrained parent is detected.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from circuitlab._atomic import dumps_strict
from circuitlab.models import ModelConfig, Transformer
from circuitlab.models import functional as Fn
from circuitlab.tasks import get_task
from circuitlab.training import rundir
from circuitlab.training.rundir import RunInfo


class DerivedError(ValueError):
    """A pruning or adaptation request that cannot be carried out (a user mistake): the message
    names the argument, the value and what is allowed. Raised before anything is written."""


def parent_record(info: RunInfo, how: str, method: Mapping[str, Any]) -> dict[str, Any]:
    """The `parent` entry of a derived run's config.json."""
    return {
        "run": str(info.path),
        "weights_sha256": rundir.sha256_file(info.path / "model.safetensors"),
        "how": how,
        "method": dict(method),
    }


def check_free(run_dirs: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, to replace finished run directories without `overwrite`."""
    taken = [d for d in run_dirs if d.exists()]
    if taken and not overwrite:
        raise DerivedError(f"{taken[0]} already exists; pass --overwrite or choose another --out")


@torch.no_grad()
def evaluate(
    params: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    task_spec: str,
    train_fraction: float,
    seed: int,
    chunk: int = 8192,
) -> dict[str, float]:
    """Loss and accuracy of one model (parameters without a model axis) on the run's train and
    validation split and on all of the task's inputs (`acc_all`, `loss_all`)."""
    task = get_task(task_spec)
    split = task.split(train_fraction, seed)
    stacked = {n: p.detach().unsqueeze(0) for n, p in params.items()}
    out: dict[str, float] = {}
    totals = {"loss": 0.0, "correct": 0.0, "n": 0}
    for name, data in (("train", split.train), ("val", split.val)):
        x = torch.as_tensor(data.inputs, dtype=torch.long)
        y = torch.as_tensor(data.targets, dtype=torch.long)
        if len(x) == 0:
            out[f"{name}_loss"] = out[f"{name}_acc"] = float("nan")
            continue
        loss_sum, correct = 0.0, 0.0
        for start in range(0, len(x), chunk):
            logits = Fn.forward(stacked, cfg, x[start : start + chunk].unsqueeze(0))[0]
            target = y[start : start + chunk]
            loss_sum += (
                float(F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum"))
                / target.shape[1]
            )
            correct += float((logits.argmax(-1) == target).all(-1).sum())
        out[f"{name}_loss"] = loss_sum / len(x)
        out[f"{name}_acc"] = correct / len(x)
        totals["loss"] += loss_sum
        totals["correct"] += correct
        totals["n"] += len(x)
    out["loss_all"] = totals["loss"] / max(totals["n"], 1)
    out["acc_all"] = totals["correct"] / max(totals["n"], 1)
    return out


def untrained_record(
    scores: Mapping[str, float],
    params: Mapping[str, torch.Tensor],
    task: str,
    recipe: str,
    seed: int,
    cfg: ModelConfig,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The one metrics row (step 0) and the summary of a run made without training (pruned
    without fine-tuning, imported), from `evaluate`'s scores."""
    row = {
        "step": 0,
        **{k: scores[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
        "weight_norm": float(sum(p.pow(2).sum() for p in params.values()).sqrt()),
        "lr": 0.0,
        "time_s": 0.0,
    }
    summary = {
        "task": task,
        "recipe": recipe,
        "seed": seed,
        "steps": 0,
        "grokked_at": None,
        "grok_threshold": rundir.GROK_THRESHOLD,
        "final": {k: v for k, v in row.items() if k != "step"},
        "acc_all": scores["acc_all"],
        "n_params": cfg.n_params,
        "wall_time_s": 0.0,
    }
    return row, summary


def write_run(
    run_dir: Path,
    config: dict[str, Any],
    params: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    metrics: list[dict[str, Any]],
    summary: dict[str, Any],
    *,
    overwrite: bool,
    extra: Mapping[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write a finished run directory (as `RUN.partial/`, renamed when complete, under the run's
    lock) holding `params` as model.safetensors; `extra` maps file names to writers."""
    from circuitlab.training.plots import plot_curves

    with rundir.RunLock(run_dir):
        if run_dir.exists() and not overwrite:
            raise DerivedError(
                f"{run_dir} already exists; pass --overwrite or choose another --out"
            )
        partial = rundir.partial_path(run_dir)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        rundir.write_json_atomic(partial / "config.json", config)
        model = Transformer(cfg)
        model.load_tl_state_dict({n: p.detach() for n, p in params.items()})
        model.save(partial)
        (partial / "metrics.jsonl").write_text("".join(dumps_strict(r) + "\n" for r in metrics))
        rundir.write_json_atomic(partial / "summary.json", summary)
        for name, writer in (extra or {}).items():
            writer(partial / name)
        if len(metrics) > 1:
            plot_curves(
                metrics,
                partial / "curves.png",
                title=f"{config['task']} (derived)",
                grokked_at=summary.get("grokked_at"),
            )
        rundir.finalize(partial, run_dir, overwrite=overwrite)
    return run_dir
