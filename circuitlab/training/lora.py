"""LoRA adaptation of a trained run to another task of the same vocabulary, through peft.

How peft reaches the model: the transformer has no `nn.Linear` (its forward pass is a pure
function of a parameter dict), so there is nothing for `target_modules`. We use peft's
`target_parameters` instead: the parameters live in one `WeightTable` module that the forward
pass calls once to read them, peft wraps that module with a `lora.ParamWrapper` per targeted
matrix, and for the duration of the call each matrix reads as `W + (alpha / r) * B @ A` (3-D
attention weights `(heads, ., .)` get one rank-r adapter per head). The adapted model therefore
runs the same forward pass as every other model, hooks and all. Its limits (no dropout, no
DoRA, no lora_bias, 2-D/3-D only) cost nothing on full-batch algorithmic tasks.

Method (`adapt`):
 1. check the target task reads and writes the base model's vocabularies and the rank fits
    every targeted matrix (`AdaptError` otherwise, before anything is written);
 2. wrap the base model with `get_peft_model` (seeded adapter init; B = 0, so training starts
    from the base model exactly) and train only A and B with AdamW on the task's train split,
    full batch, evaluating every `eval_every` steps until `stop_val_acc` or `max_steps`;
 3. save the adapter in peft's format (`adapter/`: adapter_config.json with the base run as
    `base_model_name_or_path` and the sha256 of its weights as `revision`, and
    adapter_model.safetensors), reload it with `PeftModel.from_pretrained` on a fresh base,
    `merge_and_unload()`, and measure the merged model's logits against the adapted model's on
    every input of the task;
 4. write a run directory holding the merged weights (so `extract` reads it unchanged), the
    adapter, and its parent with rank and targets in config.json.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from circuitlab.models import ModelConfig, Transformer
from circuitlab.models import functional as Fn
from circuitlab.tasks import TaskError, get_task
from circuitlab.training import rundir
from circuitlab.training.derived import DerivedError, check_free, parent_record, write_run
from circuitlab.training.recipe import Recipe

ADAPTER_DIR = "adapter"
# Every weight matrix: attention Q/K/V/O and the MLP of each block, embedding and unembedding.
DEFAULT_TARGETS = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "W_E", "W_U")
# Adapter training: full batch on the target task's 30% split; stops at 100% validation.
LORA_RECIPE = Recipe(
    name="lora",
    lr=1e-2,
    weight_decay=0.0,
    warmup_steps=10,
    max_steps=3000,
    eval_every=10,
    stop_val_acc=1.0,
)


class AdaptError(DerivedError):
    """An adaptation that cannot be carried out; nothing was written."""


@dataclass(frozen=True)
class LoraSpec:
    """rank, alpha (default 2 * rank), targets (TransformerLens names, or leaf names such as
    `W_in` meaning that matrix in every block), the training recipe, the adapter seed,
    whether the learning rate decays, and ranks of their own for some targets.

    Every adapter has the same scale alpha / rank: a target of rank r gets alpha * r / rank
    (peft's rank_pattern and alpha_pattern), so a per-target rank changes capacity only."""

    rank: int = 4
    alpha: float | None = None
    targets: tuple[str, ...] = DEFAULT_TARGETS
    recipe: Recipe = LORA_RECIPE
    seed: int = 0
    # the learning rate decays linearly to 0 at recipe.max_steps (after the warmup)
    decay: bool = False
    # (target as in `targets`, its rank): W_V:8 and W_pos:3 beside rank 1 elsewhere
    ranks: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise AdaptError(f"rank must be a positive integer, got {self.rank!r}")
        if self.alpha is not None and (
            not isinstance(self.alpha, int | float)
            or not math.isfinite(self.alpha)
            or self.alpha <= 0
        ):
            raise AdaptError(f"alpha must be a positive number, got {self.alpha!r}")
        if not self.targets:
            raise AdaptError("give at least one target matrix")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "ranks", tuple((str(t), r) for t, r in dict(self.ranks).items()))
        for t, r in self.ranks:
            if isinstance(r, bool) or not isinstance(r, int) or r < 1:
                raise AdaptError(f"the rank of {t} must be a positive integer, got {r!r}")
            if t not in self.targets:
                raise AdaptError(f"a rank is given for {t}, which is not a target")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else 2 * self.rank)

    def rank_of(self, name: str) -> int:
        """The rank of matrix `name` (a TransformerLens name): its own, or `rank`."""
        for t, r in self.ranks:
            if t == name or name.rsplit(".", 1)[1] == t:
                return r
        return self.rank


def expand_targets(cfg: ModelConfig, targets: Sequence[str]) -> list[str]:
    """TransformerLens names of the targeted matrices; a leaf (`W_in`) means every block's."""
    shapes = Fn.param_shapes(cfg)
    matrices = [n for n in shapes if n.rsplit(".", 1)[1].startswith("W_")]
    out: list[str] = []
    for t in targets:
        hits = [n for n in matrices if n == t or n.rsplit(".", 1)[1] == t]
        if not hits:
            raise AdaptError(
                f"target {t!r} names no weight matrix; allowed: {', '.join(matrices)} "
                "or a leaf such as W_in"
            )
        out += [h for h in hits if h not in out]
    return out


def max_rank(shape: Sequence[int]) -> int:
    """The largest useful LoRA rank of a 2-D matrix or of each head of a 3-D one."""
    return min(shape[-2:])


def check_rank(cfg: ModelConfig, names: Sequence[str], spec: LoraSpec) -> None:
    shapes = Fn.param_shapes(cfg)
    for n in names:
        rank = spec.rank_of(n)
        if rank > max_rank(shapes[n]):
            raise AdaptError(
                f"rank {rank} is larger than {n} {tuple(shapes[n])} allows "
                f"(at most {max_rank(shapes[n])}); lower --rank or drop that target"
            )


def check_task(cfg: ModelConfig, base_task: str, task: str) -> None:
    """The target task must read and write the base model's tokens."""
    try:
        t = get_task(task)
    except TaskError as exc:
        raise AdaptError(str(exc)) from None
    have = (cfg.d_vocab, cfg.d_vocab_out, cfg.n_ctx, tuple(cfg.answer_positions))
    need = (t.d_vocab, t.d_vocab_out, t.n_ctx, tuple(t.answer_positions))
    if have != need:
        raise AdaptError(
            f"task {task} has {need[0]} input tokens, {need[1]} outputs and context {need[2]}, "
            f"the base model ({base_task}) {have[0]}, {have[1]} and {have[2]}: LoRA only "
            "adapts existing matrices; another vocabulary would need new embedding and "
            "unembedding rows trained in full and a map between the two token sets"
        )


def attach(model: Transformer, spec: LoraSpec, names: Sequence[str], base: str, sha: str):
    """`model` wrapped by peft with a fresh, seeded adapter on `names`."""
    from peft import LoraConfig, get_peft_model

    own = {Transformer.weight_key(n): spec.rank_of(n) for n in names}
    own = {k: r for k, r in own.items() if r != spec.rank}
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.lora_alpha,
        lora_dropout=0.0,
        target_parameters=[Transformer.weight_key(n) for n in names],
        rank_pattern=own,
        alpha_pattern={k: spec.lora_alpha * r / spec.rank for k, r in own.items()},
        base_model_name_or_path=base,
        revision=sha,
    )
    model.name_or_path = base  # what peft records as base_model_name_or_path
    with torch.random.fork_rng(), _quiet_patterns():  # peft draws A from the global RNG
        torch.manual_seed(spec.seed)
        return get_peft_model(model, config)


@contextlib.contextmanager
def _quiet_patterns():
    """peft 0.21 checks rank_pattern and alpha_pattern keys against module names only and
    warns that a parameter's key "did not match"; it applies them all the same (the tests
    count the adapter's parameters and read its scale)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*_pattern keys did not match")
        yield


def load_adapted(base_run: str | Path, adapter: str | Path):
    """(base RunInfo, PeftModel): the adapter in `adapter` loaded onto `base_run`, refused
    when the adapter was trained on other weights (sha256 in adapter_config.json)."""
    from peft import PeftModel

    info, model = rundir.load_run(base_run)
    adapter = Path(adapter)
    if (adapter / ADAPTER_DIR / "adapter_config.json").is_file():
        adapter = adapter / ADAPTER_DIR  # an adapted run directory
    try:
        config = json.loads((adapter / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdaptError(f"no peft adapter at {adapter}: {exc}") from None
    sha = rundir.sha256_file(info.path / "model.safetensors")
    if config.get("revision") != sha:
        raise AdaptError(
            f"adapter {adapter} was trained on base weights sha256 "
            f"{str(config.get('revision'))[:12]}..., but {info.path} has {sha[:12]}...: "
            "load it onto the run it was trained from"
        )
    with _quiet_patterns():
        return info, PeftModel.from_pretrained(model, str(adapter))


@dataclass
class AdaptResult:
    run_dir: Path
    steps: int
    grokked_at: int | None
    final: dict[str, float]
    trainable: int
    trainable_fraction: float
    merge: dict[str, Any]
    wall_time: float
    extra: dict[str, Any] = field(default_factory=dict)


def default_dir(base: Path, task: str, rank: int, out: Path | None) -> Path:
    return (out or base.parent) / rundir.safe_name(f"{base.name}-lora-{task}-r{rank}")


def _data(task: str, recipe: Recipe, seed: int) -> dict[str, torch.Tensor]:
    split = get_task(task).split(recipe.train_fraction, seed)
    t = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    return {
        "x": t(split.train.inputs),
        "y": t(split.train.targets),
        "vx": t(split.val.inputs),
        "vy": t(split.val.targets),
    }


@torch.no_grad()
def _scores(model, x, y) -> tuple[float, float]:
    if len(x) == 0:
        return float("nan"), float("nan")
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    return float(loss), float((logits.argmax(-1) == y).all(-1).float().mean())


def lr_factor(step: int, recipe: Recipe, decay: bool) -> float:
    """The learning rate's multiplier at `step`: a linear warmup, then 1, or with `decay` a
    line down to 0 at recipe.max_steps."""
    warm = min(1.0, (step + 1) / max(recipe.warmup_steps, 1))
    if not decay:
        return warm
    return warm * max(0.0, 1.0 - step / max(recipe.max_steps, 1))


def train_adapter(
    peft_model,
    data,
    recipe: Recipe,
    progress: Callable[[dict], None] | None,
    decay: bool = False,
):
    """Full-batch AdamW on the adapter parameters; returns (metrics rows, grokked_at, steps)."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, recipe, decay))
    rows, grokked_at, start = [], None, time.perf_counter()
    for step in range(recipe.max_steps + 1):
        if step % recipe.eval_every == 0 or step == recipe.max_steps:
            peft_model.eval()
            tr_loss, tr_acc = _scores(peft_model, data["x"], data["y"])
            va_loss, va_acc = _scores(peft_model, data["vx"], data["vy"])
            row = {
                "step": step,
                "train_loss": tr_loss,
                "train_acc": tr_acc,
                "val_loss": va_loss,
                "val_acc": va_acc,
                "weight_norm": float(sum(p.detach().pow(2).sum() for p in params).sqrt()),
                "lr": sched.get_last_lr()[0],
                "time_s": round(time.perf_counter() - start, 4),
            }
            rows.append(row)
            if progress:
                progress(row)
            acc = tr_acc if math.isnan(va_acc) else va_acc
            if grokked_at is None and acc >= rundir.GROK_THRESHOLD:
                grokked_at = step
            if acc >= recipe.stop_val_acc or step == recipe.max_steps:
                return rows, grokked_at, step
            peft_model.train()
        logits = peft_model(data["x"])
        loss = F.cross_entropy(logits.flatten(0, 1), data["y"].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return rows, grokked_at, recipe.max_steps


@torch.no_grad()
def merge_check(adapted, merged, tokens: torch.Tensor) -> dict[str, Any]:
    """How far the merged model's logits are from the adapted model's, on `tokens`."""
    adapted.eval()
    merged.eval()
    a, m = adapted(tokens), merged(tokens)
    diff = (a - m).abs()
    return {
        "n_inputs": int(len(tokens)),
        "max_abs_logit_diff": float(diff.max()),
        "max_rel_logit_diff": float((diff / a.abs().clamp_min(1e-6)).max()),
        "max_abs_logit": float(a.abs().max()),
        "identical_predictions": bool((a.argmax(-1) == m.argmax(-1)).all()),
        "differing_predictions": int((a.argmax(-1) != m.argmax(-1)).any(-1).sum()),
    }


def adapt(
    base_run: str | Path,
    task: str,
    spec: LoraSpec,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[dict], None] | None = None,
    run_dir: Path | None = None,
) -> AdaptResult:
    """Train a LoRA adapter of `base_run` on `task`; write the adapted run directory."""
    info = rundir.read_run(base_run)
    cfg = info.model_config
    check_task(cfg, info.task, task)
    names = expand_targets(cfg, spec.targets)
    check_rank(cfg, names, spec)
    target = run_dir or default_dir(info.path, task, spec.rank, out)
    check_free([target], overwrite)
    _, base = rundir.load_run(info.path)
    sha = rundir.sha256_file(info.path / "model.safetensors")
    peft_model = attach(base, spec, names, str(info.path), sha)
    trainable = trainable_count_of(peft_model)
    data = _data(task, spec.recipe, spec.seed)
    started = time.perf_counter()
    rows, grokked_at, steps = train_adapter(peft_model, data, spec.recipe, progress, spec.decay)
    wall = time.perf_counter() - started
    method = {
        "rank": spec.rank,
        "alpha": spec.lora_alpha,
        "targets": names,
        "ranks": {n: spec.rank_of(n) for n in names},
        "trainable_params": trainable,
        "trainable_fraction": trainable / cfg.n_params,
        "adapter": ADAPTER_DIR,
        "adapter_seed": spec.seed,
        "lr_schedule": "linear decay to 0" if spec.decay else "constant",
        "peft": _peft_version(),
    }
    return _finish(
        info,
        peft_model,
        task,
        spec.recipe,
        spec.seed,
        method,
        rows,
        grokked_at,
        steps,
        wall,
        target,
        overwrite,
    )


def apply_adapter(
    base_run: str | Path,
    adapter: str | Path,
    task: str,
    out: Path | None = None,
    *,
    overwrite: bool = False,
) -> AdaptResult:
    """A run directory from an existing adapter (checked against the base by content hash)."""
    info = rundir.read_run(base_run)
    check_task(info.model_config, info.task, task)
    config = _adapter_config(adapter)
    if not isinstance(config.get("r"), int) or not config.get("target_parameters"):
        raise AdaptError(f"{adapter} is not a LoRA adapter on target_parameters")
    target = default_dir(info.path, task, config["r"], out)
    check_free([target], overwrite)
    info, peft_model = load_adapted(base_run, adapter)
    recipe = LORA_RECIPE.replace(max_steps=1)
    data = _data(task, recipe, 0)
    tr_loss, tr_acc = _scores(peft_model, data["x"], data["y"])
    va_loss, va_acc = _scores(peft_model, data["vx"], data["vy"])
    rows = [
        {
            "step": 0,
            "train_loss": tr_loss,
            "train_acc": tr_acc,
            "val_loss": va_loss,
            "val_acc": va_acc,
            "weight_norm": 0.0,
            "lr": 0.0,
            "time_s": 0.0,
        }
    ]
    keys = config["target_parameters"]
    names = [t.removeprefix("weights.").replace("__", ".") for t in keys]
    pattern = config.get("rank_pattern") or {}
    method = {
        "rank": int(config["r"]),
        "alpha": float(config["lora_alpha"]),
        "targets": names,
        "ranks": {n: int(pattern.get(k, config["r"])) for n, k in zip(names, keys, strict=True)},
        "trainable_params": trainable_count_of(peft_model),
        "trainable_fraction": trainable_count_of(peft_model) / info.model_config.n_params,
        "adapter": ADAPTER_DIR,
        "source_adapter": str(adapter),
        "peft": _peft_version(),
    }
    return _finish(info, peft_model, task, recipe, 0, method, rows, None, 0, 0.0, target, overwrite)


def trainable_count_of(peft_model) -> int:
    return sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)


def _adapter_config(adapter: str | Path) -> dict[str, Any]:
    path = Path(adapter)
    for cand in (path / "adapter_config.json", path / ADAPTER_DIR / "adapter_config.json"):
        if cand.is_file():
            try:
                return json.loads(cand.read_text())
            except ValueError as exc:
                raise AdaptError(f"cannot read {cand}: {exc}") from None
    raise AdaptError(f"no peft adapter at {path} (no adapter_config.json)")


def _peft_version() -> str:
    import peft

    return peft.__version__


def _finish(
    info,
    peft_model,
    task,
    recipe,
    seed,
    method,
    rows,
    grokked_at,
    steps,
    wall,
    target: Path,
    overwrite: bool,
) -> AdaptResult:
    """Save the adapter, reload and merge it, measure merged against adapted, write the run."""
    from peft import PeftModel

    cfg = info.model_config
    all_inputs = torch.as_tensor(get_task(task).dataset().inputs, dtype=torch.long)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        saved = Path(tmp) / ADAPTER_DIR
        peft_model.save_pretrained(str(saved))
        _, fresh = rundir.load_run(info.path)
        with _quiet_patterns():
            merged = PeftModel.from_pretrained(fresh, str(saved)).merge_and_unload()
        check = merge_check(peft_model, merged, all_inputs)
        weights = {n: p.detach() for n, p in merged.tl_state_dict().items()}
        config = {
            "task": task,
            "seed": seed,
            "model": cfg.to_dict(),
            "recipe": recipe.to_dict(),
            "versions": rundir.versions(),
            "parent": parent_record(info, "lora", method),
        }
        final = {k: v for k, v in rows[-1].items() if k != "step"}
        summary = {
            "task": task,
            "recipe": recipe.name,
            "seed": seed,
            "steps": steps,
            "grokked_at": grokked_at,
            "grok_threshold": rundir.GROK_THRESHOLD,
            "final": final,
            "wall_time_s": round(wall, 3),
            "n_params": cfg.n_params,
            "lora": {
                k: method[k] for k in ("rank", "alpha", "trainable_params", "trainable_fraction")
            },
            "merge_check": check,
        }
        write_run(
            target,
            config,
            weights,
            cfg,
            rows,
            summary,
            overwrite=overwrite,
            extra={ADAPTER_DIR: lambda p: shutil.copytree(saved, p)},
        )
    return AdaptResult(
        target,
        steps,
        grokked_at,
        final,
        method["trainable_params"],
        method["trainable_fraction"],
        check,
        wall,
    )
