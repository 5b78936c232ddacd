"""Pruning a trained model: magnitude, lottery tickets (with grokking tickets) and structured.

Methods (`prune(run, method, sparsities)`), each a sweep over sparsities:

1. `magnitude`: zero the smallest-|w| entries of the weight matrices (every `W_*`: embeddings,
   Q/K/V/O, MLP in/out, unembedding; biases are kept), one threshold over all matrices
   (`scope="global"`) or the same fraction in each (`scope="layer"`); optionally fine-tune
   with the mask fixed. With `basis="principal"` the weights are first rewritten, exactly, in
   the principal and balanced basis of their activations (reparam.py): the same model, whose
   weights magnitude pruning can tell apart (one-shot on grokked add_mod_113: 99.6% accuracy
   at 90% sparsity, against 1.7% in the trained basis).
2. `lottery`: iterative magnitude pruning with rewinding (Frankle & Carbin 2019): in each of
   `rounds` rounds, prune by magnitude to the round's cumulative sparsity 1-(1-s)^(k/R), rewind
   the surviving weights to the run's seeded init and retrain with the mask fixed. With one
   round on a grokked run this is a *grokking ticket* (Minegishi et al. 2024, "Grokking
   Tickets"): the mask of the generalized model on the initial weights, retrained with the
   run's recipe and seed; compare its `grokked_at` with the parent's.
3. `neurons` / `heads`: structured pruning by ablation importance (structured.py): the
   fraction of units whose removal alone raises the training loss least is removed.

A pruned model is a run directory (`derived.write_run` or the trainer) with `masks.safetensors`
(0/1 masks, TransformerLens names) and its parent in config.json; every sweep writes
`curve.json` and `curve.png` (accuracy on all inputs against sparsity) beside its runs.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from circuitlab.models import ModelConfig
from circuitlab.models import functional as Fn
from circuitlab.tasks import get_task
from circuitlab.training import rundir
from circuitlab.training.derived import (
    DerivedError,
    check_free,
    evaluate,
    parent_record,
    untrained_record,
    write_run,
)
from circuitlab.training.reparam import ReparamError, principal_basis
from circuitlab.training.structured import (
    ablation_importance,
    fold_means,
    least_important,
    neuron_means,
    unit_masks,
)

METHODS = ("magnitude", "lottery", "neurons", "heads")
SCOPES = ("global", "layer")
BASES = ("standard", "principal")
Masks = dict[str, torch.Tensor]  # name -> bool tensor, True = kept


class PruneError(DerivedError):
    """A pruning request that cannot be carried out; nothing was written."""


def weight_names(cfg: ModelConfig) -> list[str]:
    """The weight matrices magnitude pruning acts on (biases and LayerNorm excluded)."""
    return [n for n in Fn.param_shapes(cfg) if n.rsplit(".", 1)[1].startswith("W_")]


def check_sparsity(value: float, what: str = "sparsity") -> float:
    if not isinstance(value, int | float) or not 0.0 <= float(value) < 1.0 or math.isnan(value):
        raise PruneError(f"{what} must be in [0, 1) (the fraction removed), got {value!r}")
    return float(value)


# --- masks -------------------------------------------------------------------------------


def magnitude_masks(
    params: Mapping[str, torch.Tensor],
    names: Sequence[str],
    sparsity: float,
    scope: str = "global",
    keep: Masks | None = None,
) -> Masks:
    """Masks removing the `sparsity` fraction of entries of `names` with the smallest |w|.

    Entries already pruned in `keep` count towards the fraction and stay pruned, so masks
    only shrink from round to round (iterative pruning)."""
    check_sparsity(sparsity)
    if scope not in SCOPES:
        raise PruneError(f"scope must be one of {SCOPES}, got {scope!r}")
    scores = {}
    for n in names:
        s = params[n].detach().abs().float().clone()
        if keep is not None and n in keep:
            s[~keep[n]] = -1.0  # already gone: pruned first
        scores[n] = s
    groups = [list(names)] if scope == "global" else [[n] for n in names]
    masks: Masks = {}
    for group in groups:
        flat = torch.cat([scores[n].flatten() for n in group])
        n_remove = int(round(sparsity * flat.numel()))
        kept = torch.ones(flat.numel(), dtype=torch.bool)
        if n_remove:
            kept[torch.argsort(flat, stable=True)[:n_remove]] = False
        start = 0
        for n in group:
            size = scores[n].numel()
            masks[n] = kept[start : start + size].view(scores[n].shape)
            start += size
    return masks


def masked_fraction(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)


def apply_masks(params: Mapping[str, torch.Tensor], masks: Masks) -> dict[str, torch.Tensor]:
    return {n: p * masks[n] if n in masks else p.clone() for n, p in params.items()}


# --- sweeps ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneConfig:
    """One pruning sweep. `finetune` steps of masked training follow `magnitude`, `neurons`
    and `heads` (0 = none); `lottery` always retrains, for at most `max_steps` steps per round
    (None = the parent recipe's budget)."""

    method: str = "magnitude"
    sparsities: tuple[float, ...] = (0.5,)
    scope: str = "global"
    rounds: int = 1
    finetune: int = 0
    max_steps: int | None = None
    basis: str = "standard"  # principal: rewrite the weights in reparam.principal_basis first
    finetune_lr: float | None = None  # None = the parent recipe's learning rate

    def __post_init__(self) -> None:
        if self.basis not in BASES:
            raise PruneError(f"basis must be one of {BASES}, got {self.basis!r}")
        if self.basis != "standard" and self.method != "magnitude":
            raise PruneError(
                f"basis {self.basis!r} applies to magnitude pruning only (lottery tickets rewind "
                "to the init's basis; structured pruning removes whole units)"
            )
        if self.method not in METHODS:
            raise PruneError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.scope not in SCOPES:
            raise PruneError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if not self.sparsities:
            raise PruneError("give at least one sparsity")
        object.__setattr__(self, "sparsities", tuple(check_sparsity(s) for s in self.sparsities))
        for name, lo in (("rounds", 1), ("finetune", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < lo:
                raise PruneError(f"{name} must be an integer >= {lo}, got {value!r}")
        if self.finetune_lr is not None and not (
            isinstance(self.finetune_lr, int | float) and 0 < self.finetune_lr < math.inf
        ):
            raise PruneError(f"finetune_lr must be a positive number, got {self.finetune_lr!r}")
        if self.max_steps is not None and (
            not isinstance(self.max_steps, int) or self.max_steps < 1
        ):
            raise PruneError(f"max_steps must be a positive integer, got {self.max_steps!r}")

    @property
    def label(self) -> str:
        scope = "-layer" if self.scope == "layer" else ""
        return self.method + scope + ("-principal" if self.basis == "principal" else "")


@dataclass
class CurvePoint:
    sparsity: float  # requested
    masked_fraction: float  # of the masked parameters, measured on the masks
    weight_sparsity: float  # zero entries among all weight-matrix entries
    acc_all: float
    loss_all: float
    val_acc: float
    train_acc: float
    steps: int
    grokked_at: int | None
    run: str
    extra: dict[str, Any] = field(default_factory=dict)


def sweep_dir(run: Path, config: PruneConfig, out: Path | None) -> Path:
    return (out or run.parent) / rundir.safe_name(f"{run.name}-prune-{config.label}")


def point_dir(root: Path, sparsity: float) -> Path:
    return root / f"s{sparsity:.4f}".rstrip("0").rstrip(".")


def prune(
    run: str | Path,
    config: PruneConfig,
    out: Path | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> tuple[Path, list[CurvePoint]]:
    """Prune `run` at every sparsity of `config`; returns the sweep directory and its curve.

    Magnitude pruning with fine-tuning is gradual (Zhu & Gupta 2017): the sweep is one
    trajectory in increasing sparsity, each point pruned from the previous one's fine-tuned
    model in `rounds` steps of equal density ratio and recording that point as its parent."""
    info = rundir.read_run(run)
    cfg = info.model_config
    if config.method == "lottery" and info.config.get("parent") is not None:
        raise PruneError(
            f"{info.path} is itself derived ({info.config['parent']['how']}); lottery tickets "
            "rewind to a run's seeded init, so prune the run it was derived from"
        )
    root = sweep_dir(info.path, config, out)
    sparsities = sorted(config.sparsities)
    targets = [point_dir(root, s) for s in sparsities]
    check_free(targets, overwrite)
    params = _load_params(info)
    say = progress or (lambda _m: None)
    units: dict[str, torch.Tensor] = {}
    if config.method in ("neurons", "heads"):
        say(f"ablation importance of every {config.method[:-1]}")
        split = get_task(info.task).split(info.recipe.train_fraction, info.seed)
        x, y = torch.as_tensor(split.train.inputs), torch.as_tensor(split.train.targets)
        units["importance"] = ablation_importance(params, cfg, x, y, config.method)
        if config.method == "neurons":
            units["means"] = neuron_means(params, cfg, x)
    if config.basis == "principal":
        say("rewriting the weights in their principal basis")
        split = get_task(info.task).split(info.recipe.train_fraction, info.seed)
        try:
            params = principal_basis(params, cfg, torch.as_tensor(split.train.inputs))
        except ReparamError as exc:
            raise PruneError(str(exc)) from None
    points: list[CurvePoint] = []
    source, masks, previous = info, None, 0.0
    weights: dict[str, torch.Tensor] | None = params
    for sparsity, target in zip(sparsities, targets, strict=True):
        say(f"{config.label} at sparsity {sparsity:g} -> {target}")
        if config.method == "magnitude" and config.finetune:
            point = _gradual(source, config, previous, sparsity, target, masks, overwrite, weights)
            source, previous, weights = rundir.read_run(target), sparsity, None
            masks = {n: m != 0 for n, m in _read_masks(target).items()}
        else:
            point = _one(info, params, cfg, config, sparsity, target, units, overwrite)
        points.append(point)
    write_curve(root, points, title=f"{info.task}: {config.label} pruning of {info.path.name}")
    return root, points


def _load_params(info: rundir.RunInfo) -> dict[str, torch.Tensor]:
    from circuitlab.models import Transformer

    model = Transformer.load(info.path / "model.safetensors", info.model_config)
    return {n: p.detach() for n, p in model.tl_state_dict().items()}


def _read_masks(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / rundir.MASK_FILE))


def _finetune_recipe(recipe, config: PruneConfig):
    """The parent's recipe for `config.finetune` steps, at `config.finetune_lr` if given."""
    recipe = recipe.replace(max_steps=config.finetune)
    return recipe if config.finetune_lr is None else recipe.replace(lr=config.finetune_lr)


def _gradual(source, config: PruneConfig, previous, sparsity, target, masks, overwrite, weights):
    """Rounds of (magnitude prune, masked fine-tune) from `source` (its weights, or `weights`
    when given) to `sparsity`."""
    cfg = source.model_config
    names = weight_names(cfg)
    recipe = _finetune_recipe(source.recipe, config)
    method = {
        "method": "magnitude",
        "sparsity": sparsity,
        "scope": config.scope,
        "targets": names,
        "finetune_steps": config.finetune,
        "finetune_lr": recipe.lr,
        "rounds": config.rounds,
        "from_sparsity": previous,
        "basis": config.basis,
    }
    weights = _load_params(source) if weights is None else weights
    work = target.parent
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        for k in range(1, config.rounds + 1):
            density = (1 - previous) * ((1 - sparsity) / (1 - previous)) ** (k / config.rounds)
            masks = magnitude_masks(weights, names, 1 - density, config.scope, keep=masks)
            last = k == config.rounds
            where = target if last else Path(tmp) / f"round{k}"
            point = _train_masked(
                source,
                apply_masks(weights, masks),
                masks,
                recipe,
                where,
                method,
                overwrite or not last,
                1 - density,
            )
            if not last:
                weights = _load_params(rundir.read_run(where))
    point.sparsity = sparsity
    return point


def _one(info, params, cfg, config: PruneConfig, sparsity, target, units, overwrite):
    names = weight_names(cfg)
    method: dict[str, Any] = {"method": config.method, "sparsity": sparsity}
    if config.method in ("magnitude", "lottery"):
        method |= {"scope": config.scope, "targets": names, "basis": config.basis}
    if config.method == "lottery":
        return _lottery(info, params, cfg, config, sparsity, target, method, overwrite)
    pruned_params = params
    if config.method == "magnitude":
        masks = magnitude_masks(params, names, sparsity, config.scope)
    else:
        importance = units["importance"]
        removed = least_important(importance, sparsity)
        masks = unit_masks(cfg, config.method, removed)
        if "means" in units:
            pruned_params = fold_means(params, units["means"], removed)
        method |= {
            "removed": {str(k): sorted(v) for k, v in removed.items()},
            "importance": "rise in training loss when the unit alone is "
            + ("mean-ablated (its mean folded into b_out)" if "means" in units else "zeroed"),
            "units_kept": int(importance.numel()) - sum(len(v) for v in removed.values()),
            "units_total": int(importance.numel()),
        }
        if "means" in units:
            method["mean_folded_into"] = "b_out"
    pruned = apply_masks(pruned_params, masks)
    if config.finetune:
        method["finetune_steps"] = config.finetune
        recipe = _finetune_recipe(info.recipe, config)
        point = _train_masked(info, pruned, masks, recipe, target, method, overwrite, sparsity)
    else:
        point = _write_pruned(info, pruned, masks, cfg, target, method, overwrite, sparsity)
    for key in ("units_kept", "units_total"):
        if key in method:
            point.extra[key] = method[key]
    return point


def _mask_writer(masks: Masks) -> Callable[[Path], None]:
    return lambda path: save_file(
        {n: m.to(torch.uint8).contiguous() for n, m in masks.items()},
        str(path),
        metadata={"format": "circuitlab-masks"},
    )


def _write_pruned(info, pruned, masks, cfg, target, method, overwrite, sparsity) -> CurvePoint:
    scores = evaluate(pruned, cfg, info.task, info.recipe.train_fraction, info.seed)
    config = dict(
        info.config,
        mask=rundir.MASK_FILE,
        parent=parent_record(info, "prune", method),
        versions=rundir.versions(),
    )
    row, summary = untrained_record(scores, pruned, info.task, info.recipe.name, info.seed, cfg)
    summary["masked_fraction"] = masked_fraction(masks)
    summary["weight_sparsity"] = weight_sparsity(pruned, cfg)
    write_run(
        target,
        config,
        pruned,
        cfg,
        [row],
        summary,
        overwrite=overwrite,
        extra={rundir.MASK_FILE: _mask_writer(masks)},
    )
    return CurvePoint(
        sparsity,
        summary["masked_fraction"],
        summary["weight_sparsity"],
        scores["acc_all"],
        scores["loss_all"],
        scores["val_acc"],
        scores["train_acc"],
        0,
        None,
        str(target),
        {"method": method},
    )


def _train_masked(
    info, init, masks, recipe, target, method, overwrite, sparsity, work: Path | None = None
) -> CurvePoint:
    """Train with `masks` fixed from `init` (None = the seeded init) into `target`."""
    from circuitlab.models import Transformer
    from circuitlab.training.trainer import RunSpec, train_stack

    cfg = info.model_config
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        mask_file = Path(tmp) / "masks.safetensors"
        _mask_writer(masks)(mask_file)
        init_file = None
        if init is not None:
            init_file = Path(tmp) / "init.safetensors"
            save_file({n: p.contiguous() for n, p in init.items()}, str(init_file))
        spec = RunSpec(
            info.task,
            recipe,
            info.seed,
            target,
            init=init_file,
            mask=mask_file,
            parent=parent_record(info, "prune", method),
        )
        (result,) = train_stack([spec], overwrite=overwrite)
    trained = Transformer.load(target / "model.safetensors", cfg).tl_state_dict()
    scores = evaluate(trained, cfg, info.task, info.recipe.train_fraction, info.seed)
    return CurvePoint(
        sparsity,
        masked_fraction(masks),
        weight_sparsity(trained, cfg),
        scores["acc_all"],
        scores["loss_all"],
        scores["val_acc"],
        scores["train_acc"],
        result.steps,
        result.grokked_at,
        str(target),
        {"method": method, "parent_grokked_at": info.summary.get("grokked_at")},
    )


def _lottery(info, params, cfg, config: PruneConfig, sparsity, target, method, overwrite):
    """Iterative magnitude pruning with rewinding to the seeded init (see the module doc)."""
    from circuitlab.models import Transformer

    names = weight_names(cfg)
    recipe = info.recipe
    if config.max_steps is not None:
        recipe = recipe.replace(max_steps=config.max_steps)
    method |= {"rounds": config.rounds, "rewind": "init", "recipe": recipe.to_dict()}
    weights, masks, rounds = params, None, []
    for k in range(1, config.rounds + 1):
        goal = 1.0 - (1.0 - sparsity) ** (k / config.rounds)
        masks = magnitude_masks(weights, names, goal, config.scope, keep=masks)
        if k == config.rounds:
            break
        with tempfile.TemporaryDirectory(
            dir=target.parent if target.parent.exists() else None
        ) as tmp:
            point = _train_masked(
                info,
                None,
                masks,
                recipe,
                Path(tmp) / f"round{k}",
                {**method, "round": k},
                True,
                goal,
            )
            weights = Transformer.load(Path(point.run) / "model.safetensors", cfg).tl_state_dict()
            weights = {n: p.detach() for n, p in weights.items()}
        rounds.append(
            {
                "round": k,
                "sparsity": goal,
                "steps": point.steps,
                "grokked_at": point.grokked_at,
                "acc_all": point.acc_all,
            }
        )
    method["round_history"] = rounds
    target.parent.mkdir(parents=True, exist_ok=True)
    return _train_masked(info, None, masks, recipe, target, method, overwrite, sparsity)


def weight_sparsity(params: Mapping[str, torch.Tensor], cfg: ModelConfig) -> float:
    """Share of zero entries among all weight-matrix entries (the issue's pruning measure)."""
    names = weight_names(cfg)
    total = sum(params[n].numel() for n in names)
    return float(sum(int((params[n] == 0).sum()) for n in names)) / total


def write_curve(root: Path, points: list[CurvePoint], title: str) -> None:
    """`curve.json` and `curve.png` (accuracy on all inputs against sparsity) of a sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root.mkdir(parents=True, exist_ok=True)
    points = sorted(points, key=lambda p: p.sparsity)
    rundir.write_json_atomic(
        root / "curve.json", {"title": title, "points": [asdict(p) for p in points]}
    )
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    xs = [p.sparsity for p in points]
    ax.plot(xs, [p.acc_all for p in points], "o-", label="all inputs")
    ax.plot(xs, [p.val_acc for p in points], "x--", label="validation")
    ax.set_xlabel("sparsity (fraction removed)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    tmp = root / "curve.png.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(root / "curve.png")
