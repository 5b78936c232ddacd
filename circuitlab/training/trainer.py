"""Training: one model or a stack of models of one architecture, trained side by side.

Method, per step:
 1. Gather each model's batch (full batch, or a minibatch from the model's own seeded epoch
    permutation) into tokens (M, B, S).
 2. One forward of the stacked functional transformer; the loss is the *sum over models* of
    each model's mean cross-entropy, so each model's gradient equals its gradient alone.
    Recipe precision bf16 runs the forward's matmuls (and so their gradients) in bfloat16
    under autocast; weights, optimizer state, softmaxes and the loss stay float32.
 3. An element-wise optimizer step with per-model hyperparameters (optim.py).
 4. Every `eval_every` steps: train/validation loss and accuracy and weight norm per model,
    appended to each run's metrics.jsonl; a model stops when it reaches its `stop_val_acc`
    (after `anneal_steps` more with its lr decaying to 0) or `max_steps`, is written out as a
    finished run directory, and leaves the stack.
 5. Every `checkpoint_every` steps: each run's parameters and optimizer state to
    RUN.partial/checkpoint/, so an interrupted run resumes to the same weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from circuitlab import _precision
from circuitlab._atomic import dumps_strict
from circuitlab.models import ModelConfig, Transformer
from circuitlab.models import functional as Fn
from circuitlab.tasks import get_task
from circuitlab.training import rundir
from circuitlab.training.optim import StackedHyper, StackedOptimizer
from circuitlab.training.recipe import Recipe, RecipeError

# fields that must agree for runs to share a stack (the rest may differ per model)
SHARED_FIELDS = (
    "train_fraction",
    "batch_size",
    "eval_every",
    "checkpoint_every",
    "optimizer",
    "precision",
    "model",
)


@dataclass(frozen=True)
class RunSpec:
    """One run to train: which task, how, which seed, and where its run directory goes.

    A derived run (pruning's masked retraining) also names `init`, a safetensors file of
    starting weights (TransformerLens names; default: the seeded init), `mask`, a safetensors
    file of 0/1 masks whose zeros stay zero throughout training (copied into the run directory
    as `masks.safetensors`), and `parent`, the provenance recorded in `config.json`."""

    task: str
    recipe: Recipe
    seed: int
    run_dir: Path
    init: Path | None = None
    mask: Path | None = None
    parent: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # paths given as strings (the natural thing in a script) work like Paths
        for name in ("run_dir", "init", "mask"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))

    def model_config(self) -> ModelConfig:
        return ModelConfig.for_task(get_task(self.task), **self.recipe.model)

    def config_json(self) -> dict[str, Any]:
        out = {
            "task": self.task,
            "seed": self.seed,
            "model": self.model_config().to_dict(),
            "recipe": self.recipe.to_dict(),
            "versions": rundir.versions(),
        }
        if self.mask is not None:
            out["mask"] = rundir.MASK_FILE
        if self.parent is not None:
            out["parent"] = self.parent
        return out

    def initial_params(self, cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """Starting weights: the `init` file when given, else the seeded init."""
        if self.init is None:
            return Fn.init_params(cfg, self.seed)
        return _read_named(self.init, Fn.param_shapes(cfg), "init weights")

    def masks(self, cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """Name -> 0/1 float mask for the masked parameters (empty without `mask`)."""
        if self.mask is None:
            return {}
        shapes = Fn.param_shapes(cfg)
        masks = _read_named(self.mask, shapes, "mask", partial=True)
        return {n: (m != 0).float() for n, m in masks.items()}


def _read_named(
    path: Path, shapes: dict[str, tuple[int, ...]], what: str, partial: bool = False
) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file checked against parameter names and shapes."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise rundir.RunDirError(f"cannot read {what} {path}: {exc}") from None
    unknown = sorted(set(tensors) - set(shapes))
    missing = [] if partial else sorted(set(shapes) - set(tensors))
    if unknown or missing:
        raise rundir.RunDirError(
            f"{what} {path} does not fit the model: unknown {unknown[:5]}, missing {missing[:5]}"
        )
    for name, t in tensors.items():
        if tuple(t.shape) != tuple(shapes[name]):
            raise rundir.RunDirError(
                f"{what} {path}: {name} has shape {tuple(t.shape)}, the model needs "
                f"{tuple(shapes[name])}"
            )
    return {n: t.float() for n, t in tensors.items()}


@dataclass
class RunResult:
    run_dir: Path
    seed: int
    steps: int
    grokked_at: int | None
    final: dict[str, float]
    wall_time: float
    extra: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[int, int, list[dict[str, float]]], None]


def _check_stackable(specs: Sequence[RunSpec]) -> None:
    first = specs[0]
    for spec in specs[1:]:
        if spec.task != first.task:
            raise RecipeError(f"runs in one stack must share a task: {first.task} vs {spec.task}")
        for name in SHARED_FIELDS:
            if getattr(spec.recipe, name) != getattr(first.recipe, name):
                raise RecipeError(f"runs in one stack must share recipe field {name!r}")
    dirs = [s.run_dir for s in specs]
    if len(set(dirs)) != len(dirs):
        raise RecipeError("two runs would write the same run directory")


def _stack_data(specs: Sequence[RunSpec]) -> tuple[torch.Tensor, ...]:
    task = get_task(specs[0].task)
    splits = [task.split(s.recipe.train_fraction, s.seed) for s in specs]
    if any(len(sp.val) == 0 for sp in splits) and specs[0].recipe.train_fraction < 1.0:
        raise RecipeError("validation split is empty; lower train_fraction")

    def stack(arrays: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(arrays)).long()

    return (
        stack([sp.train.inputs for sp in splits]),
        stack([sp.train.targets for sp in splits]),
        stack([sp.val.inputs for sp in splits]),
        stack([sp.val.targets for sp in splits]),
    )


def _loss_acc(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model mean cross-entropy and accuracy. logits (M, B, Q, O), targets (M, B, Q);
    the loss in float32 whatever the logits' dtype (bfloat16 under bf16 autocast)."""
    m = logits.shape[0]
    logits = logits.float()
    loss = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none")
    acc = (logits.argmax(-1) == targets).float()
    return loss.view(m, -1).mean(1), acc.view(m, -1).mean(1)


@torch.no_grad()
def _evaluate(
    params, cfg, x, y, chunk: int = 8192, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model loss and accuracy on tokens (M, N, S), in the precision the models train in
    (the metrics describe the computation being trained)."""
    if x.shape[1] == 0:
        nan = torch.full((x.shape[0],), float("nan"))
        return nan, nan
    losses, accs, sizes = [], [], []
    for start in range(0, x.shape[1], chunk):
        with _precision.autocast(precision, x.device.type):
            logits = Fn.forward(params, cfg, x[:, start : start + chunk])
        loss, acc = _loss_acc(logits, y[:, start : start + chunk])
        n = min(chunk, x.shape[1] - start)
        losses.append(loss * n)
        accs.append(acc * n)
        sizes.append(n)
    total = sum(sizes)
    return sum(losses) / total, sum(accs) / total


def _batch_index(seed: int, step: int, n: int, batch: int) -> torch.Tensor:
    """Indices of the minibatch for optimizer step `step` (0-based): seeded epoch permutations."""
    per_epoch = max(1, n // batch)
    epoch, k = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen)[k * batch : (k + 1) * batch]


class _Stack:
    """Mutable state of the models still training: parameters, optimizer, bookkeeping."""

    def __init__(self, specs: Sequence[RunSpec], cfg: ModelConfig) -> None:
        self.specs = list(specs)
        self.cfg = cfg
        inits = [s.initial_params(cfg) for s in specs]
        per_model = [s.masks(cfg) for s in specs]
        # masked parameters of the stack: (M, ...) 0/1, all ones for a model without that mask
        self.masks = {
            n: torch.stack([m.get(n, torch.ones_like(inits[0][n])) for m in per_model])
            for n in sorted({n for m in per_model for n in m})
        }
        self.params = {n: torch.stack([p[n] for p in inits]) for n in inits[0]}
        for n, mask in self.masks.items():
            self.params[n].mul_(mask)
        self.params = {n: p.requires_grad_() for n, p in self.params.items()}
        # the precision the stack runs in (fp32 where bf16 was asked for but is unsupported,
        # said once on stderr) and what summary.json records
        self.device_type = next(iter(self.params.values())).device.type
        self.precision, self.precision_label = _precision.resolve(
            specs[0].recipe.precision, self.device_type
        )
        hyper = StackedHyper.from_recipes([s.recipe for s in specs])
        self.opt = StackedOptimizer(self.params, hyper, specs[0].recipe.optimizer)
        self.grokked_at: list[int | None] = [None] * len(specs)
        self.reached_at: list[int | None] = [None] * len(specs)  # stop_val_acc first met
        self.started = [time.perf_counter()] * len(specs)
        self.elapsed_before = [0.0] * len(specs)  # wall time spent before a resume

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on tokens (M, B, S) and targets (M, B, Q): the sum over models of
        each model's mean loss, so every model gets the gradient it would get alone. In bf16
        the matmuls run in bfloat16 (autocast); the weights, gradients and loss stay float32."""
        with _precision.autocast(self.precision, self.device_type):
            logits = Fn.forward(self.params, self.cfg, x)
        loss = F.cross_entropy(logits.float().flatten(0, 2), y.flatten(), reduction="none")
        loss.view(len(self.specs), -1).mean(1).sum().backward()
        for n, mask in self.masks.items():  # pruned weights get no gradient and stay zero
            self.params[n].grad.mul_(mask)
        self.opt.step()
        self.opt.zero_grad()
        if self.masks:
            with torch.no_grad():
                for n, mask in self.masks.items():
                    self.params[n].mul_(mask)

    def end_step(self, i: int) -> int:
        """The step model i stops at, as far as is known now."""
        spec, reached = self.specs[i], self.reached_at[i]
        return spec.recipe.max_steps if reached is None else reached + spec.recipe.anneal_steps

    def model_state(self, i: int) -> dict[str, torch.Tensor]:
        return {n: p[i].detach().clone() for n, p in self.params.items()}

    def keep(self, keep: list[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long)
        self.params = {
            n: p.detach()[index].clone().requires_grad_() for n, p in self.params.items()
        }
        self.opt.select(index, self.params)
        self.masks = {n: m[index] for n, m in self.masks.items()}
        self.specs = [self.specs[i] for i in keep]
        for name in ("grokked_at", "reached_at", "started", "elapsed_before"):
            values = getattr(self, name)
            setattr(self, name, [values[i] for i in keep])

    # --- checkpoints --------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        """Each run's parameters, optimizer state and step as ONE safetensors file (the step
        and bookkeeping in its metadata), replaced atomically: a kill at any moment leaves
        either the previous checkpoint or this one, never weights of one step with another's
        step count."""
        for i, spec in enumerate(self.specs):
            ckpt = rundir.partial_path(spec.run_dir) / "checkpoint"
            ckpt.mkdir(parents=True, exist_ok=True)
            tensors = {f"param/{n}": p[i].detach().contiguous() for n, p in self.params.items()}
            for key, state in self.opt.state.items():
                tensors |= {f"{key}/{n}": t[i].contiguous() for n, t in state.items()}
            elapsed = self.elapsed_before[i] + time.perf_counter() - self.started[i]
            meta = {
                "step": step,
                "grokked_at": self.grokked_at[i],
                "reached_at": self.reached_at[i],
                "elapsed": elapsed,
            }
            tmp = ckpt / (CHECKPOINT_FILE + ".tmp")
            save_file(tensors, str(tmp), metadata={"circuitlab": json.dumps(meta)})
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            tmp.replace(ckpt / CHECKPOINT_FILE)

    def load_checkpoints(self) -> int:
        steps = set()
        for i, spec in enumerate(self.specs):
            ckpt = rundir.partial_path(spec.run_dir) / "checkpoint"
            meta = checkpoint_meta(spec.run_dir)
            if meta is None:
                raise rundir.RunDirError(f"no checkpoint to resume in {ckpt.parent}")
            try:
                tensors = load_file(str(ckpt / CHECKPOINT_FILE))
            except Exception as exc:
                raise rundir.RunDirError(f"cannot read checkpoint in {ckpt}: {exc}") from None
            names = [f"param/{n}" for n in self.params] + [
                f"{key}/{n}" for key, state in self.opt.state.items() for n in state
            ]
            shapes = [p[i].shape for p in self.params.values()] + [
                t[i].shape for state in self.opt.state.values() for t in state.values()
            ]
            for name, shape in zip(names, shapes, strict=True):
                if name not in tensors or tensors[name].shape != shape:
                    raise rundir.RunDirError(
                        f"checkpoint in {ckpt} does not match the run config ({name}); "
                        f"delete {ckpt.parent} to start that run over"
                    )
            with torch.no_grad():
                for n, p in self.params.items():
                    p[i].copy_(tensors[f"param/{n}"])
                for key, state in self.opt.state.items():
                    for n, t in state.items():
                        t[i].copy_(tensors[f"{key}/{n}"])
            steps.add(meta["step"])
            self.grokked_at[i] = meta["grokked_at"]
            self.reached_at[i] = meta.get("reached_at")  # absent in checkpoints before anneal
            if self.reached_at[i] is not None:
                self.opt.start_anneal(i, self.reached_at[i])
            self.elapsed_before[i] = meta["elapsed"]
        if len(steps) != 1:
            raise rundir.RunDirError("runs resumed together must have checkpoints at the same step")
        step = steps.pop()
        self.opt.step_count = step
        return step


CHECKPOINT_FILE = "state.safetensors"


def checkpoint_meta(run_dir: Path) -> dict[str, Any] | None:
    """Step, grokking step and elapsed time of a run's checkpoint, None when it has none.

    Read from the checkpoint file's own header, so the step always belongs to those weights."""
    from safetensors import safe_open

    path = rundir.partial_path(run_dir) / "checkpoint" / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["circuitlab"])
        if not isinstance(meta.get("step"), int) or meta["step"] < 0:
            raise ValueError("no step")
    except Exception as exc:  # damaged header, foreign file, older format
        raise rundir.RunDirError(
            f"unreadable checkpoint {path} ({exc}); delete {path.parent.parent} to start that "
            f"run over"
        ) from None
    return meta


# Peak-memory model of one training process, fitted to measured peaks (ru_maxrss) of add_mod_p
# at p = 113..1021, a 4x wider MLP and a 5x5 grid task; it over-estimates by 10-40%. Floats
# kept per example: MLP activations and their gradients (~3 per unit and position), logits
# with softmax and gradient (~4.2 per output), the residual stream (~2 per unit and position)
# and attention scores (~3 per head and query-key pair).
_BASE_BYTES = 0.4 * 1024**3  # torch, the task's data, allocator slack


def estimate_peak_bytes(specs: Sequence[RunSpec]) -> float:
    """Estimated peak memory of training `specs` as one stack in one process."""
    cfg = specs[0].model_config()
    task = get_task(specs[0].task)
    n_examples = len(task.dataset().inputs)
    recipe = specs[0].recipe
    n_train = max(1, round(recipe.train_fraction * n_examples))
    batch = min(recipe.batch_size or n_train, n_train)
    # evaluation runs forward only (about a third of the floats) in chunks of 8192
    batch = max(batch, min(8192, n_examples - n_train) // 3)
    answers = len(cfg.answer_positions)
    mlp_positions = cfg.n_ctx * (cfg.n_layers - 1) + answers
    per_example = (
        3 * cfg.d_mlp * mlp_positions
        + 4.2 * cfg.d_vocab_out * answers
        + 2 * cfg.d_model * cfg.n_ctx * cfg.n_layers
        + 3 * cfg.n_heads * cfg.n_ctx**2 * cfg.n_layers
    )
    weights = 6 * cfg.n_params  # parameters, gradients, two optimizer moments, EMA, copy
    return _BASE_BYTES + 4 * len(specs) * (batch * per_example + weights)


def measure_step_time(specs: Sequence[RunSpec], steps: int = 3) -> float:
    """Seconds per optimizer step for these runs stacked together (no files written)."""
    _check_stackable(specs)
    cfg = specs[0].model_config()
    train_x, train_y, _, _ = _stack_data(specs)
    stack = _Stack(specs, cfg)
    batch = specs[0].recipe.batch_size
    if batch and batch < train_x.shape[1]:
        train_x, train_y = train_x[:, :batch], train_y[:, :batch]
    timings = []
    for _ in range(steps + 1):  # the first step warms up allocations
        start = time.perf_counter()
        stack.step(train_x, train_y)
        timings.append(time.perf_counter() - start)
    return min(timings[1:])


def _start_partial(spec: RunSpec, resume: bool, overwrite: bool) -> None:
    """Create a fresh `RUN.partial/` (the caller holds the run's lock, so no other process is
    writing the one this may delete)."""
    partial = rundir.partial_path(spec.run_dir)
    if resume:
        return
    if spec.run_dir.exists() and not overwrite:
        raise rundir.RunDirError(
            f"{spec.run_dir} already exists; pass --overwrite or choose another --out"
        )
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    if spec.mask is not None:
        shutil.copyfile(spec.mask, partial / rundir.MASK_FILE)
    rundir.write_json_atomic(partial / "config.json", spec.config_json())
    (partial / "metrics.jsonl").write_text("")


def _truncate_metrics(partial: Path, step: int) -> None:
    """Keep the metrics rows up to the checkpoint being resumed (a kill may have left rows past
    it, and a last line cut in half)."""
    rows = rundir.read_metrics(partial, torn_tail=True)
    tmp = partial / "metrics.jsonl.tmp"
    tmp.write_text("".join(dumps_strict(r) + "\n" for r in rows if r["step"] <= step))
    tmp.replace(partial / "metrics.jsonl")


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: every run still training was checkpointed at `step` first."""

    def __init__(self, step: int | None, runs: Sequence[Path]) -> None:
        super().__init__(f"interrupted at step {step}")
        self.step = step
        self.runs = list(runs)


# Set by SIGINT: the training loop checks it between optimizer steps, checkpoints and stops, so
# an interrupt never lands in the middle of a parameter update.
_STOP = threading.Event()


def request_stop() -> None:
    """Ask training in this process to checkpoint and stop after the current step."""
    _STOP.set()


@contextlib.contextmanager
def _stop_on_sigint() -> Iterator[None]:
    """In the main thread, turn the first Ctrl-C into a request to stop at the next step (a
    second Ctrl-C interrupts at once). Elsewhere (threads, pool workers that installed their
    own handler) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield  # someone else (a worker's initializer, a host application) owns SIGINT
        return

    def handler(signum: int, frame: Any) -> None:
        if _STOP.is_set():
            raise KeyboardInterrupt
        _STOP.set()

    _STOP.clear()
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _STOP.clear()


def _finish(
    stack: _Stack, i: int, step: int, metrics: dict[str, float], overwrite: bool
) -> RunResult:
    from circuitlab.training.plots import plot_curves

    spec = stack.specs[i]
    partial = rundir.partial_path(spec.run_dir)
    model = Transformer(stack.cfg)
    model.load_tl_state_dict(stack.model_state(i))
    model.save(partial)
    wall = stack.elapsed_before[i] + time.perf_counter() - stack.started[i]
    summary = {
        "task": spec.task,
        "recipe": spec.recipe.name,
        "seed": spec.seed,
        "steps": step,
        "grokked_at": stack.grokked_at[i],
        "grok_threshold": rundir.GROK_THRESHOLD,
        "annealed_from": stack.reached_at[i] if spec.recipe.anneal_steps else None,
        "final": metrics,
        "wall_time_s": round(wall, 3),
        "n_params": stack.cfg.n_params,
        "precision": stack.precision_label,  # what ran: "fp32 (bf16 unsupported)" on fallback
    }
    if spec.mask is not None:
        kept = sum(int(m[i].sum()) for m in stack.masks.values())
        masked = sum(m[i].numel() for m in stack.masks.values())
        summary["masked_fraction"] = 1.0 - kept / max(masked, 1)
    rundir.write_json_atomic(partial / "summary.json", summary)
    plot_curves(
        rundir.read_metrics(partial),
        partial / "curves.png",
        title=f"{spec.task} seed {spec.seed}",
        grokked_at=stack.grokked_at[i],
    )
    rundir.finalize(partial, spec.run_dir, overwrite=overwrite)
    return RunResult(spec.run_dir, spec.seed, step, stack.grokked_at[i], metrics, wall)


def train_stack(
    specs: Sequence[RunSpec],
    *,
    resume: bool = False,
    overwrite: bool = False,
    threads: int | None = None,
    progress: ProgressFn | None = None,
) -> list[RunResult]:
    """Train runs of one architecture side by side; returns their results in input order.

    Each run directory is locked while it is written (a second process training the same run
    is refused). Ctrl-C checkpoints every unfinished run and raises `TrainingInterrupted`.
    """
    if not specs:
        return []
    _check_stackable(specs)
    if _STOP.is_set():  # a pool worker already told to stop: start nothing
        raise TrainingInterrupted(None, [s.run_dir for s in specs])
    if threads:
        torch.set_num_threads(threads)
    with contextlib.ExitStack() as locks, _stop_on_sigint():
        for spec in specs:
            locks.enter_context(rundir.RunLock(spec.run_dir))
        return _train_locked(specs, resume, overwrite, progress)


def _train_locked(
    specs: Sequence[RunSpec], resume: bool, overwrite: bool, progress: ProgressFn | None
) -> list[RunResult]:
    cfg = specs[0].model_config()
    train_x, train_y, val_x, val_y = _stack_data(specs)
    stack = _Stack(specs, cfg)
    for spec in specs:
        _start_partial(spec, resume, overwrite)
    step = 0
    if resume:
        step = stack.load_checkpoints()
        for spec in specs:
            _truncate_metrics(rundir.partial_path(spec.run_dir), step)
    recipe0 = specs[0].recipe
    batch = recipe0.batch_size
    max_steps = max(s.recipe.max_steps + s.recipe.anneal_steps for s in specs)  # bar's total
    order = {spec.run_dir: k for k, spec in enumerate(specs)}
    data = {"x": train_x, "y": train_y, "vx": val_x, "vy": val_y}
    results: dict[Path, RunResult] = {}
    n_train = train_x.shape[1]

    def log_and_stop(step: int) -> None:
        nonlocal data
        params = {n: p.detach() for n, p in stack.params.items()}
        tr_loss, tr_acc = _evaluate(params, cfg, data["x"], data["y"], precision=stack.precision)
        va_loss, va_acc = _evaluate(params, cfg, data["vx"], data["vy"], precision=stack.precision)
        norms = sum(p.pow(2).flatten(1).sum(1) for p in params.values()).sqrt()
        lrs = stack.opt.lr_now_for_step(max(step, 1))
        rows, done = [], []
        for i, spec in enumerate(stack.specs):
            row = {
                "step": step,
                "train_loss": float(tr_loss[i]),
                "train_acc": float(tr_acc[i]),
                "val_loss": float(va_loss[i]),
                "val_acc": float(va_acc[i]),
                "weight_norm": float(norms[i]),
                "lr": float(lrs[i]),
                "time_s": round(
                    stack.elapsed_before[i] + time.perf_counter() - stack.started[i], 4
                ),
            }
            rows.append(row)
            with open(rundir.partial_path(spec.run_dir) / "metrics.jsonl", "a") as fh:
                fh.write(dumps_strict(row) + "\n")
            val_acc = row["val_acc"] if not math.isnan(row["val_acc"]) else row["train_acc"]
            if stack.grokked_at[i] is None and val_acc >= rundir.GROK_THRESHOLD:
                stack.grokked_at[i] = step
            if stack.reached_at[i] is None and val_acc >= spec.recipe.stop_val_acc:
                stack.reached_at[i] = step
                stack.opt.start_anneal(i, step)
            if step >= stack.end_step(i):
                done.append(i)
        if progress:
            progress(step, max_steps, rows)
        if done:
            for i in done:
                res = _finish(
                    stack, i, step, {k: v for k, v in rows[i].items() if k != "step"}, overwrite
                )
                results[res.run_dir] = res
            keep = [i for i in range(len(stack.specs)) if i not in done]
            if keep:
                index = torch.tensor(keep)
                data = {k: v[index] for k, v in data.items()}
                stack.keep(keep)
            else:
                stack.specs = []

    if not resume:
        log_and_stop(0)
    while stack.specs:
        seeds = [s.seed for s in stack.specs]
        if batch and batch < n_train:
            index = torch.stack([_batch_index(sd, step, n_train, batch) for sd in seeds])
            x = torch.gather(data["x"], 1, index.unsqueeze(-1).expand(-1, -1, data["x"].shape[-1]))
            y = torch.gather(data["y"], 1, index.unsqueeze(-1).expand(-1, -1, data["y"].shape[-1]))
        else:
            x, y = data["x"], data["y"]
        stack.step(x, y)
        step += 1
        if _STOP.is_set():
            stack.save_checkpoint(step)
            raise TrainingInterrupted(step, [s.run_dir for s in stack.specs])
        eval_now = step % recipe0.eval_every == 0 or any(
            step >= stack.end_step(i) for i in range(len(stack.specs))
        )
        if eval_now:
            log_and_stop(step)
        if stack.specs and step % recipe0.checkpoint_every == 0:
            stack.save_checkpoint(step)
    return [results[s.run_dir] for s in sorted(specs, key=lambda s: order[s.run_dir])]
