"""Models trained elsewhere as circuitlab run directories (`circuitlab import`, `import_model`).

A TransformerLens `HookedTransformer` (the object, or its state dict in a safetensors or torch
file) or a Nanda-style grokking checkpoint is converted by `models.tl_import`, fitted to the
task (extra output columns and positions the task never uses are dropped, and said so), checked
for accuracy on every input of the task, and written as a run directory that `extract`,
`prune`, `adapt` and `explore` take unchanged. Its config.json says where it came from:

    "imported": {"source": PATH, "sha256": HEX, "layout": "nanda" | "transformer-lens",
                 "notes": [...]}

The split it was trained on is unknown, so by default every input counts as training
(`train_fraction` 1.0); pass the real fraction and seed when the split is circuitlab's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from circuitlab.models import ModelConfig, ModelConfigError, Transformer
from circuitlab.models.tl_import import (
    Converted,
    ImportFormatError,
    convert,
    from_hooked_transformer,
    read_weights,
)
from circuitlab.tasks import TaskError, get_task
from circuitlab.training import rundir
from circuitlab.training.derived import evaluate, untrained_record, write_run
from circuitlab.training.recipe import Recipe

MIN_ACCURACY = 0.99  # an import below this accuracy on the task is refused unless forced


class ImportModelError(ValueError):
    """A checkpoint that cannot become a run for this task (a user mistake): one line naming
    what is wrong and what to do. Raised before anything is written."""


@dataclass(frozen=True)
class ImportResult:
    run_dir: Path
    layout: str
    acc_all: float
    notes: tuple[str, ...]
    seconds: float


def fit_to_task(converted: Converted, task: Any) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The converted model narrowed to what `task` reads and answers: output columns past the
    task's outputs and positions past its context are dropped (noted in `converted.notes`);
    a model too small for the task is refused."""
    cfg, params = converted.cfg, dict(converted.params)
    if cfg.d_vocab < task.d_vocab:
        raise ImportModelError(
            f"the model reads {cfg.d_vocab} tokens but {task.spec} uses {task.d_vocab}: "
            "it was trained on another vocabulary; pick the task it was trained on"
        )
    if cfg.n_ctx < task.n_ctx:
        raise ImportModelError(
            f"the model has {cfg.n_ctx} positions but {task.spec} inputs have {task.n_ctx}"
        )
    if cfg.d_vocab_out < task.d_vocab_out:
        raise ImportModelError(
            f"the model has {cfg.d_vocab_out} outputs but {task.spec} answers need "
            f"{task.d_vocab_out}"
        )
    if cfg.d_vocab_out > task.d_vocab_out:
        converted.notes.append(
            f"output columns {task.d_vocab_out}..{cfg.d_vocab_out - 1} dropped: no answer of "
            f"{task.spec} is one of them"
        )
        params["unembed.W_U"] = params["unembed.W_U"][:, : task.d_vocab_out].contiguous()
        params["unembed.b_U"] = params["unembed.b_U"][: task.d_vocab_out].contiguous()
    if cfg.n_ctx > task.n_ctx:
        converted.notes.append(
            f"positions {task.n_ctx}..{cfg.n_ctx - 1} dropped: {task.spec} inputs have "
            f"{task.n_ctx} tokens"
        )
        params["pos_embed.W_pos"] = params["pos_embed.W_pos"][: task.n_ctx].contiguous()
    fields = cfg.to_dict() | {"d_vocab_out": task.d_vocab_out, "n_ctx": task.n_ctx}
    fields["answer_positions"] = tuple(task.answer_positions)
    try:
        return ModelConfig.for_task(task, **fields), params
    except ModelConfigError as exc:
        raise ImportModelError(str(exc)) from None


def _from_model(model: Transformer, layout: str, notes: list[str] | None = None) -> Converted:
    """A circuitlab `Transformer` as it stands (float32 weights, its own config)."""
    state = {k: v.detach().to(torch.float32) for k, v in model.tl_state_dict().items()}
    return Converted(layout, model.cfg, state, notes or [])


def _tracr_source(program: str) -> Converted:
    """tracr's compiled model of a suite program (`tracr:sort`), converted exactly."""
    from circuitlab.tasks.tracr import compiled

    try:
        comp = compiled(program)
    except TaskError as exc:
        raise ImportModelError(str(exc)) from None
    from circuitlab.models.tracr_import import load_tracr

    notes = [f"compiled by tracr from RASP program {program}"]
    return _from_model(load_tracr(comp.assembled), "tracr", notes)


def _read_config(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImportFormatError(f"{path} is not a readable JSON config: {exc}") from None
    if not isinstance(data, dict):
        raise ImportFormatError(f"{path} must hold a JSON object (HookedTransformerConfig fields)")
    return data


def import_model(
    source: Any,
    task: str,
    out: str | Path,
    *,
    act_fn: str = "relu",
    causal: bool = True,
    tl_config: dict[str, Any] | str | Path | None = None,
    train_fraction: float = 1.0,
    seed: int = 0,
    min_accuracy: float = MIN_ACCURACY,
    force: bool = False,
    overwrite: bool = False,
) -> ImportResult:
    """Import `source` as a run directory `out` for `task`. `source` is a checkpoint path, a
    directory with model.safetensors and config.json (as `circuitlab export --to
    transformer-lens` writes it), a state dict, or a `HookedTransformer`. act_fn and causal say
    what shapes cannot (a HookedTransformer or `tl_config` carries them). Refused, with nothing
    written, when the accuracy on all of the task's inputs is below `min_accuracy` unless
    `force`. `tl_config` may be a path to its JSON. `tracr:PROGRAM` imports tracr's
    compilation of a suite program (task `tracr_PROGRAM`)."""
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise ImportModelError(f"{out} already exists; pass --overwrite or choose another --out")
    try:
        spec = get_task(task)
    except TaskError as exc:
        raise ImportModelError(str(exc)) from None
    try:
        recipe = Recipe(name="imported", train_fraction=train_fraction)
    except ValueError as exc:
        raise ImportModelError(str(exc)) from None
    sha256, where = None, "object"
    try:
        if isinstance(tl_config, str | Path):
            tl_config = _read_config(Path(tl_config))
        if isinstance(source, str | Path) and str(source).startswith("tracr:"):
            converted = _tracr_source(str(source).removeprefix("tracr:"))
            where = str(source)
        elif isinstance(source, Transformer):
            converted = _from_model(source, "circuitlab")
        elif isinstance(source, str | Path):
            where, path = str(Path(source).resolve()), Path(source)
            if path.is_dir():  # as `circuitlab export --to transformer-lens` writes it
                if tl_config is None and (path / "config.json").is_file():
                    tl_config = _read_config(path / "config.json")
                path = path / "model.safetensors"
                if not path.is_file():
                    raise ImportFormatError(
                        f"{source} is a directory without model.safetensors; give a checkpoint "
                        "file or a directory written by `circuitlab export --to transformer-lens`"
                    )
            converted = convert(
                read_weights(path), act_fn=act_fn, causal=causal, tl_config=tl_config
            )
            sha256 = rundir.sha256_file(path)
        elif hasattr(source, "cfg") and hasattr(source, "state_dict"):
            converted = from_hooked_transformer(source)
        else:
            converted = convert(source, act_fn=act_fn, causal=causal, tl_config=tl_config)
    except ImportFormatError as exc:
        raise ImportModelError(str(exc)) from None
    cfg, params = fit_to_task(converted, spec)
    scores = evaluate(params, cfg, spec.spec, recipe.train_fraction, seed)
    if scores["acc_all"] < min_accuracy and not force:
        raise ImportModelError(
            f"the model answers {scores['acc_all']:.1%} of {spec.spec}'s inputs, below "
            f"{min_accuracy:.0%}: is it the task it was trained on (token order, answer "
            "position, act_fn, causal)? Pass --force to import it anyway"
        )
    row, summary = untrained_record(scores, params, spec.spec, recipe.name, seed, cfg)
    summary["loss_all"] = scores["loss_all"]
    config = {
        "task": spec.spec,
        "seed": seed,
        "model": cfg.to_dict(),
        "recipe": recipe.to_dict(),
        "imported": {
            "source": where,
            "sha256": sha256,
            "layout": converted.layout,
            "notes": list(converted.notes),
        },
        "versions": rundir.versions(),
    }
    write_run(out, config, params, cfg, [row], summary, overwrite=overwrite)
    return ImportResult(
        out,
        converted.layout,
        scores["acc_all"],
        tuple(converted.notes),
        time.perf_counter() - start,
    )
