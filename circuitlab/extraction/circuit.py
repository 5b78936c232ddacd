"""Task-level circuits: which transcoder features compute the task, measured by ablation.

Method:
 1. Rank features by importance aggregated over all of the task's inputs (from attribution
    graphs: each feature's influence on the answer logits, summed over prompts chunk by chunk
    in aggregate.py).
 2. Faithfulness of a feature set S, on all inputs, with an ablation kind (zero, mean over the
    inputs, or resample = the activation on another input):
    - sufficiency: the replacement model with every feature outside S and every error node
      ablated; S alone must carry the task (accuracy and loss).
    - necessity: the real model with only S's contribution ablated (other features and the
      transcoder's error untouched); accuracy should collapse.
 3. The circuit is the smallest top-k set whose sufficiency accuracy meets the target (binary
    search on k; sufficiency grows with k in practice, and the final set is re-measured).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

ABLATIONS = ("zero", "mean", "resample")


class CircuitError(ValueError):
    """A circuit request that cannot be met (bad ablation kind, shapes, empty feature set)."""


@dataclass(frozen=True)
class Reference:
    """Clean statistics the ablations draw from, per layer over (inputs, positions)."""

    # per layer, at the positions an answers-only forward computes (all positions, except the
    # answer positions only in the last layer)
    acts: list[Tensor]  # per layer (N, S_l, F): feature activations on every input
    errors: list[Tensor]  # per layer (N, S_l, D): true MLP output minus reconstruction
    permutation: Tensor  # (N,) the input each input is resampled from

    @functools.cached_property
    def act_means(self) -> list[Tensor]:
        """Per layer (1, S_l, F): the mean-ablation values, computed once per reference."""
        return [a.mean(0, keepdim=True) for a in self.acts]

    @functools.cached_property
    def error_means(self) -> list[Tensor]:
        return [e.mean(0, keepdim=True) for e in self.errors]


@torch.no_grad()
def reference(model, tc, tokens: Tensor, seed: int = 0, batch_size: int = 4096) -> Reference:
    """Feature activations and error terms of the replacement model on every input, written
    batch by batch into tensors allocated once (no concatenation of per-batch copies)."""
    n_layers, n = tc.n_layers, tokens.shape[0]
    acts: list[Tensor] = []
    errors: list[Tensor] = []
    batch: dict[int, Tensor] = {}  # this batch's activations per layer
    mlp_in: dict[int, Tensor] = {}
    answers = list(model.cfg.answer_positions)

    def read(x: Tensor, name: str) -> None:
        mlp_in[int(name.split(".")[1])] = x

    def write(y: Tensor, name: str) -> None:
        t = int(name.split(".")[1])
        batch[t] = a = tc.encode(t, mlp_in[t])
        recon = tc.b_dec[t].expand_as(y).clone()
        for s in range(t + 1):
            if t - s < tc.n_targets(s):
                recon = recon + _aligned(batch[s], y, answers) @ tc.W_dec[s][t - s]
        if len(acts) == t:
            acts.append(a.new_empty(n, *a.shape[1:]))
            errors.append(y.new_empty(n, *y.shape[1:]))
        acts[t][rows] = a
        errors[t][rows] = y - recon

    with model.hooks(
        [
            (lambda n: n.endswith("hook_mlp_in"), read),
            (lambda n: n.endswith("hook_mlp_out"), write),
        ]
    ):
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))
            model(tokens[rows])  # answers_only: the layout ablations use
    if len(acts) != n_layers:
        raise CircuitError("no inputs to compute reference activations on")
    gen = torch.Generator().manual_seed(seed)
    return Reference(
        acts=acts,
        errors=errors,
        permutation=torch.randperm(n, generator=gen),
    )


def _aligned(a: Tensor, y: Tensor, answers: list[int]) -> Tensor:
    """Rows of an earlier layer's (B, S, .) tensor at the positions of y (B, Q, .): in an
    answers-only pass the last block runs at the answer positions only."""
    return a if a.shape[1] == y.shape[1] else a[:, answers]


def _ablated(ref_values: Tensor, mean: Tensor, index: Tensor, ablation: str) -> Tensor:
    """What an ablated activation is replaced with, for the inputs at `index`."""
    if ablation == "zero":
        return mean.new_zeros(len(index), *mean.shape[1:])
    if ablation == "mean":
        return mean.expand(len(index), *mean.shape[1:])
    return ref_values[index]  # resample: `index` already points at the other inputs


@contextmanager
def ablation_hooks(
    model, tc, ref: Reference, keep: list[Tensor], mode: str, ablation: str, index: Tensor
) -> Iterator[None]:
    """Hooks that make `model` the sufficiency or necessity model for the inputs at `index`.

    keep: per layer (F,) bool, the circuit's features. mode: "sufficiency" | "necessity".
    """
    if ablation not in ABLATIONS:
        raise CircuitError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    source = ref.permutation[index] if ablation == "resample" else index
    with _feature_hooks(
        model,
        tc,
        keep,
        mode,
        lambda t: _ablated(ref.acts[t], ref.act_means[t], source, ablation),
        lambda t: _ablated(ref.errors[t], ref.error_means[t], source, ablation),
    ):
        yield


@contextmanager
def _feature_hooks(model, tc, keep: list[Tensor], mode: str, acts_for, errors_for):
    """The replacement model with the features outside (sufficiency) or inside (necessity) the
    circuit replaced: acts_for(layer) / errors_for(layer) give what replaces the activations and
    the reconstruction error of that layer for the current batch."""
    mlp_in: dict[int, Tensor] = {}
    delta: dict[int, Tensor] = {}
    answers = list(model.cfg.answer_positions)

    def read(x: Tensor, name: str) -> None:
        mlp_in[int(name.split(".")[1])] = x

    def write(y: Tensor, name: str) -> Tensor:
        t = int(name.split(".")[1])
        a = tc.encode(t, mlp_in[t])
        ablated = acts_for(t)
        if ablated.shape[0] != a.shape[0]:
            ablated = ablated.expand(a.shape[0], *ablated.shape[1:])
        k = keep[t].to(a.dtype)
        if mode == "sufficiency":
            delta[t] = a * k + ablated * (1 - k)
            out = tc.b_dec[t].expand_as(y) + errors_for(t)
        else:
            delta[t] = (ablated - a) * k
            out = y
        for s in range(t + 1):
            if t - s < tc.n_targets(s):
                out = out + _aligned(delta[s], y, answers) @ tc.W_dec[s][t - s]
        return out

    with model.hooks(
        [
            (lambda n: n.endswith("hook_mlp_in"), read),
            (lambda n: n.endswith("hook_mlp_out"), write),
        ]
    ):
        yield


@dataclass(frozen=True)
class AblationStats:
    """What the features outside a circuit are replaced with when it runs on any input.

    Per layer, at the positions an answers-only forward computes: the mean activation of every
    feature and the mean reconstruction error over the reference inputs (zero ablation uses
    zeros for both). Saved beside the circuit as safetensors, so a loaded circuit runs exactly
    as extraction measured it. Resample ablation draws from other inputs and has no such
    summary: a circuit measured with it cannot be called on new inputs.
    """

    ablation: str  # mean | zero
    act_means: list[Tensor]  # per layer (1, S_l, F)
    error_means: list[Tensor]  # per layer (1, S_l, D)

    @classmethod
    def of(cls, ref: Reference, ablation: str) -> AblationStats:
        if ablation not in ("mean", "zero"):
            raise CircuitError(
                f"a callable circuit needs mean or zero ablation, got {ablation!r} (resample "
                "replaces activations with another input's, which a new input does not have)"
            )
        return cls(ablation, list(ref.act_means), list(ref.error_means))

    def save(self, path) -> None:
        from safetensors.torch import save_file

        tensors = {f"acts.{t}": a.contiguous() for t, a in enumerate(self.act_means)}
        tensors |= {f"errors.{t}": e.contiguous() for t, e in enumerate(self.error_means)}
        save_file(tensors, str(path), metadata={"ablation": self.ablation})

    @classmethod
    def load(cls, path) -> AblationStats:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            ablation = (fh.metadata() or {}).get("ablation", "")
            n = sum(key.startswith("acts.") for key in fh.keys())  # noqa: SIM118
            acts = [fh.get_tensor(f"acts.{t}") for t in range(n)]
            errors = [fh.get_tensor(f"errors.{t}") for t in range(n)]
        if ablation not in ("mean", "zero"):
            raise CircuitError(f"{path}: unknown ablation {ablation!r} in its metadata")
        return cls(ablation, acts, errors)

    @contextmanager
    def hooks(self, model, tc, keep: list[Tensor]) -> Iterator[None]:
        """Make `model` run only the circuit `keep` (the sufficiency model), on any inputs."""
        zero = self.ablation == "zero"
        with _feature_hooks(
            model,
            tc,
            keep,
            "sufficiency",
            lambda t: torch.zeros_like(self.act_means[t]) if zero else self.act_means[t],
            lambda t: torch.zeros_like(self.error_means[t]) if zero else self.error_means[t],
        ):
            yield


@dataclass
class Faithfulness:
    """Accuracy and loss of the full model, the circuit alone, and the model without it.

    Two names for two numbers, everywhere (summary.json, the catalog, search filters, tables):
    `necessity_accuracy` is the accuracy LEFT with the circuit ablated (low = necessary);
    `necessity_drop` is the share of the full model's accuracy LOST, 1 - left / full (high =
    necessary), which is what the catalog's `Metrics.necessity` holds. `sufficiency` is the
    circuit-alone accuracy as a share of the full model's."""

    ablation: str
    n_features: int
    n_features_total: int
    n_inputs: int
    full_accuracy: float
    full_loss: float
    sufficiency_accuracy: float
    sufficiency_loss: float
    necessity_accuracy: float
    necessity_loss: float
    curve: list[dict[str, float]] = field(default_factory=list)  # k -> sufficiency, for plots

    @property
    def sufficiency(self) -> float:
        return self.sufficiency_accuracy / max(self.full_accuracy, 1e-12)

    @property
    def necessity_drop(self) -> float:
        return 1.0 - self.necessity_accuracy / max(self.full_accuracy, 1e-12)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "sufficiency": self.sufficiency,
            "necessity_drop": self.necessity_drop,
        }


@torch.no_grad()
def _accuracy_loss(model, tokens, targets, batch_size, hooks=None) -> tuple[float, float]:
    """Accuracy over inputs (an input counts when every answer position is right: a grid
    circuit that gets 99.5% of cells right gets only ~95% of 3x3 grids right, and a circuit
    called as a function must return whole answers) and mean loss per answer position."""
    correct = loss = 0.0
    for start in range(0, tokens.shape[0], batch_size):
        index = torch.arange(start, min(start + batch_size, tokens.shape[0]))
        if hooks is None:
            logits = model(tokens[index])
        else:
            with hooks(index):
                logits = model(tokens[index])
        target = targets[index]
        logp = logits.float().log_softmax(-1)
        correct += float((logits.argmax(-1) == target).all(-1).sum())
        loss += float(-logp.gather(-1, target.unsqueeze(-1)).sum())
    return correct / targets.shape[0], loss / targets.numel()


def measure(
    model,
    tc,
    tokens: Tensor,
    targets: Tensor,
    keep: list[Tensor],
    ref: Reference,
    ablation: str = "mean",
    batch_size: int = 4096,
    full: tuple[float, float] | None = None,
) -> Faithfulness:
    """Sufficiency and necessity of the feature set `keep` on every input."""
    targets = torch.as_tensor(targets).long()
    full = full or _accuracy_loss(model, tokens, targets, batch_size)

    def hooks(mode):
        return lambda index: ablation_hooks(model, tc, ref, keep, mode, ablation, index)

    suff = _accuracy_loss(model, tokens, targets, batch_size, hooks("sufficiency"))
    nec = _accuracy_loss(model, tokens, targets, batch_size, hooks("necessity"))
    return Faithfulness(
        ablation=ablation,
        n_features=int(sum(int(k.sum()) for k in keep)),
        n_features_total=int(sum(k.numel() for k in keep)),
        n_inputs=int(tokens.shape[0]),
        full_accuracy=full[0],
        full_loss=full[1],
        sufficiency_accuracy=suff[0],
        sufficiency_loss=suff[1],
        necessity_accuracy=nec[0],
        necessity_loss=nec[1],
    )


def top_k_mask(importance: Tensor, k: int) -> list[Tensor]:
    """The k most important features over all layers; importance (L, F) -> per-layer masks."""
    flat = importance.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.argsort(descending=True)[:k]] = True
    return list(keep.view(importance.shape).unbind(0))


def select_circuit(
    model,
    tc,
    tokens: Tensor,
    targets: Tensor,
    importance: Tensor,
    *,
    target_accuracy: float = 0.99,
    ablation: str = "mean",
    ref: Reference | None = None,
    batch_size: int = 4096,
    necessity_target: float | None = None,
) -> tuple[list[Tensor], Faithfulness]:
    """The smallest top-k feature set (by `importance`) whose sufficiency meets the target.

    With `necessity_target`, k then grows (binary search) until ablating the set also brings
    accuracy down to the target, if any k up to all ranked features does."""
    if importance.dim() != 2 or importance.shape[0] != tc.n_layers:
        raise CircuitError(
            f"importance must be (n_layers={tc.n_layers}, n_features), "
            f"got {tuple(importance.shape)}"
        )
    targets = torch.as_tensor(targets).long()
    ref = ref or reference(model, tc, tokens, batch_size=batch_size)
    full = _accuracy_loss(model, tokens, targets, batch_size)
    candidates = int((importance > 0).sum())
    if candidates == 0:
        raise CircuitError("no feature has positive importance: nothing to build a circuit from")
    goal = min(target_accuracy, full[0])  # never ask more of the circuit than of the model
    curve: list[dict[str, float]] = []

    def sufficiency(k: int) -> float:
        keep = top_k_mask(importance, k)
        hooks = lambda index: ablation_hooks(model, tc, ref, keep, "sufficiency", ablation, index)  # noqa: E731
        acc, loss = _accuracy_loss(model, tokens, targets, batch_size, hooks)
        curve.append({"k": k, "sufficiency_accuracy": acc, "sufficiency_loss": loss})
        return acc

    lo, hi = 1, candidates
    if sufficiency(hi) < goal:
        k = hi  # even every ranked feature falls short: report it honestly
    else:
        while lo < hi:  # smallest k with sufficiency >= goal
            mid = (lo + hi) // 2
            if sufficiency(mid) >= goal:
                hi = mid
            else:
                lo = mid + 1
        k = lo
    # a few more points for the plot, on a log scale of k
    for extra in sorted({max(1, int(round(candidates ** (i / 8)))) for i in range(9)}):
        if all(c["k"] != extra for c in curve):
            sufficiency(extra)
    if necessity_target is not None:

        def necessity(k: int) -> float:
            keep = top_k_mask(importance, k)
            hooks = lambda index: ablation_hooks(  # noqa: E731
                model, tc, ref, keep, "necessity", ablation, index
            )
            acc, loss = _accuracy_loss(model, tokens, targets, batch_size, hooks)
            curve.append({"k": k, "necessity_accuracy": acc, "necessity_loss": loss})
            return acc

        if necessity(k) > necessity_target and necessity(candidates) <= necessity_target:
            lo, hi = k + 1, candidates
            while lo < hi:
                mid = (lo + hi) // 2
                if necessity(mid) <= necessity_target:
                    hi = mid
                else:
                    lo = mid + 1
            k = lo
    keep = top_k_mask(importance, k)
    result = measure(model, tc, tokens, targets, keep, ref, ablation, batch_size, full=full)
    merged: dict[int, dict[str, float]] = {}
    for point in curve:
        merged.setdefault(int(point["k"]), {}).update(point)
    result.curve = [merged[k] for k in sorted(merged)]
    if not math.isfinite(result.sufficiency_loss):
        raise CircuitError("sufficiency loss is not finite; the transcoder may be broken")
    return keep, result
