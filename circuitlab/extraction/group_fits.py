"""Representation analysis of permutation-group models (`s{n}_{op}`), the steps that run the
model; groups.py has the math. The counterpart of fourier_fits.py for S_n (Chughtai, Chan &
Nanda 2023, "A toy model of universality"), reusing its passes and weights:

1. Key irreps of the embedding W_E over the n! permutation tokens (`groups.key_irreps`).
2. The last MLP's neurons at the answer position, as functions of (x, y): dominant irrep and
   purity (`groups.unit_irreps`), and which irreps the neurons that move the logits use
   (`fourier.logit_weights`, `fourier_fits.frequency_shares`, `keys_by_share`).
3. The answer irreps: the key irreps and those holding >= KEY_SHARE of the energy of the last
   MLP's mean activation per answer c (`groups.answer_irreps`, as the carried frequencies of
   Z_p); compose: the keys; conj: every irrep, since rho(x y x^-1) = rho(x) rho(y) rho(x)^T is
   cubic in rho(x)).
   Restricted and excluded loss: the neurons replaced by their mean plus their projection onto
   the answer irreps' directions (`groups.answer_basis`), or with that projection removed,
   against the full loss and ln n! (a uniform guess).
4. Logits: the share of their variance over the candidate answers c in the key irreps, and
   how much of it the answer irreps' characters chi_rho(c* c^-1) explain (the GCR readout).
5. `RepresentationReport`: the numbers, a label and a description. `circuit_features` labels
   the features of an extracted circuit the same way.

Measured on one core of a quiet 2-core machine: S5 (14,400 inputs) about 1 s. S6 (518,400
inputs, the default 1-layer model) about 33 s and 3.5 GB: the neuron analysis needs every
input (one forward pass, then 2 |G|^3 multiply-adds per neuron in float32; 28 s together); the
losses and logit fits run on a seeded sample of MAX_LOSS_INPUTS (5 s).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from circuitlab.extraction import groups
from circuitlab.extraction.activations import collect
from circuitlab.extraction.fourier import (
    CHUNK_ELEMENTS,
    KEY_SHARE,
    PURE_THRESHOLD,
    activation_grid,
    frequency_shares,
    keys_by_share,
    logit_weights,
)
from circuitlab.extraction.fourier_fits import (
    FourierLosses,
    LogitFit,
    _mlp_post_name,
    _run,
    circuit_units,
    patched_losses,
    streamed_fit,
)
from circuitlab.tasks.permutation import PERMUTATION_OPS, PermutationTask

# Inputs the restricted/excluded loss runs on: all of S5's 14,400 pairs; a seeded sample of
# S6's 518,400, whose three full passes (and 1.5 GB of logits) would take minutes.
MAX_LOSS_INPUTS = 1 << 16
# A circuit whose key irreps, alone in the last MLP, answer at least this share of the inputs
# correctly is called a representation circuit (as `FourierReport.fourier_algorithm`).
RESTRICTED_ACCURACY = 0.99


class GroupFitError(groups.GroupError):
    """A model or task the representation analysis cannot use."""


def group_of(task: Any) -> groups.SymmetricGroup:
    """The group of a permutation task (`s5_compose` -> S5), else GroupFitError."""
    if not isinstance(task, PermutationTask):
        raise GroupFitError(
            f"representation analysis needs a permutation task such as s5_compose, "
            f"got {getattr(task, 'spec', task)!r}"
        )
    return groups.symmetric_group(task.n)


def answer_table(task: PermutationTask) -> np.ndarray:
    """(n!, n!) token of the answer to every input (x, y)."""
    data = task.dataset()
    table = np.empty((task.order, task.order), dtype=np.int64)
    table[data.inputs[:, 0], data.inputs[:, 1]] = data.targets[:, 0]
    return table


# --- restricted and excluded loss -----------------------------------------------------------


@torch.no_grad()
def representation_losses(
    model: Any,
    tokens: torch.Tensor,
    answers: torch.Tensor,
    group: groups.SymmetricGroup,
    keys: tuple[int, ...],
    train_mask: torch.Tensor | None = None,
    clean: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FourierLosses:
    """Restricted and excluded loss of some irreps (Nanda et al. 2023's measure, with the
    answer directions of `groups.answer_basis` in place of cos/sin(w_k c)).

    tokens (n, S) the inputs, answers (n,) their answers, train_mask (n,) the training inputs
    (all when None), clean the unpatched pass `fourier_fits._run(model, tokens)` if already
    run. `fourier_fits.patched_losses` does the rest; `log_p` of the result is ln |G|, the loss
    of a uniform guess."""
    if not keys:
        raise GroupFitError("restricted/excluded loss needs at least one key irrep")
    directions = groups.answer_basis(group, keys, answers)
    return patched_losses(
        model, tokens, answers, directions, math.log(group.order), train_mask, clean
    )


# --- logits ---------------------------------------------------------------------------------


def logit_character_fit(
    logits: torch.Tensor,
    answers: torch.Tensor,
    group: groups.SymmetricGroup,
    keys: tuple[int, ...],
) -> LogitFit:
    """Fit logits (n, |G|) by sum_rho alpha_rho chi_rho(c* c^-1) over all n*|G| entries, c* the
    correct answer of each input (Chughtai et al. 2023: the unembedding reads
    tr(rho(c*) rho(c)^T) = chi_rho(c* c^-1), the counterpart of cos(w_k (c* - c))).

    Offsets per input and per output are fitted too (`fourier_fits.streamed_fit`, which
    streams the normal equations over chunks of rows). `LogitFit.keys` are irrep indices."""
    if logits.dim() != 2 or logits.shape != (answers.shape[0], group.order):
        raise GroupFitError(
            f"logits must be (n, {group.order}) matching answers (n,), got {tuple(logits.shape)}"
        )
    chars = torch.from_numpy(group.characters[list(keys)].astype(np.float64))  # (K, classes)
    pair = torch.from_numpy(np.array(group.pair_class))
    rows = max(1, CHUNK_ELEMENTS // (group.order * max(len(keys), 1)))

    def chunks():
        for lo in range(0, len(logits), rows):
            yield chars[:, pair[answers[lo : lo + rows]]], logits[lo : lo + rows].detach()

    return streamed_fit(chunks, keys)


def logit_irrep_share(
    logits: torch.Tensor, group: groups.SymmetricGroup, keys: tuple[int, ...]
) -> float:
    """Share of the per-input centred logit variance that lies, as a function of the candidate
    answer c, in the key irreps' isotypic components: whatever the readout, a circuit of those
    irreps can only write logits there (`logit_character_fit` tests one form of them)."""
    q = group.basis[0]
    cols = torch.cat([q[:, group.irrep_columns(i)] for i in keys], 1)
    rows = max(1, CHUNK_ELEMENTS // group.order)
    inside = total = 0.0
    for lo in range(0, len(logits), rows):
        y = logits[lo : lo + rows].detach().to(torch.float64)
        y = y - y.mean(1, keepdim=True)
        inside += float((y @ cols).pow(2).sum())
        total += float(y.pow(2).sum())
    return inside / total if total > 0 else 0.0


# --- the report -----------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """Strict JSON: non-finite floats become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclass(frozen=True)
class RepresentationReport:
    """Everything `analyze` measured on one permutation-group model.

    keys: key irreps of the embedding. Irreps are named by partition ("[2,1,1,1]") in data and
    by their usual name ("[4,1]⊗sign") in words.
    answer: the irreps the last MLP writes the answer in (`groups.answer_irreps`): the key
    irreps and those with >= KEY_SHARE of its answer energy. For compose they are the keys;
    conj models write x*y*x^-1, cubic in rho(x), in every irrep.
    neuron_pure_fraction: live last-MLP neurons >= PURE_THRESHOLD explained by one irrep;
    neuron_key_pure_fraction: the same by a key irrep.
    neuron_dominant_counts / neuron_logit_shares: irrep name -> live neurons it dominates /
    share of the neurons' logit weight; neuron_keys: irreps with >= fourier.KEY_SHARE of it.
    losses: restricted and excluded loss of the answer irreps (`log_p` = ln n!).
    logits: the fit of the logits by the answer irreps' characters (`logit_character_fit`);
    logit_key_share: the share of their variance in the key irreps (`logit_irrep_share`).
    loss_inputs: the inputs the losses and the logit fit ran on (all pairs; a sample for S6).
    """

    n: int
    op: str
    formula: str
    keys: groups.KeyIrreps
    answer: groups.AnswerIrreps
    random_share: float  # share of the key irreps for an isotropic random embedding
    neuron_pure_fraction: float
    neuron_key_pure_fraction: float
    neuron_purity_quantiles: dict[str, float]
    neuron_dominant_counts: dict[str, int]
    neuron_logit_shares: dict[str, float]
    neuron_keys: tuple[str, ...]
    losses: FourierLosses
    logits: LogitFit
    logit_key_share: float
    loss_inputs: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def order(self) -> int:
        return math.factorial(self.n)

    @property
    def representation_algorithm(self) -> bool:
        """The measurements support the GCR mechanism: a sparse key set in the embedding and
        the answer irreps' directions of the last MLP alone answer >= RESTRICTED_ACCURACY of
        the inputs. Neuron purity is described, not required."""
        return self.keys.sparse and self.losses.restricted_accuracy >= RESTRICTED_ACCURACY

    def _key_words(self) -> str:
        words = ", ".join(self.keys.labels)
        if self.answer.irreps != self.keys.irreps:
            every = len(self.answer.irreps) == len(groups.symmetric_group(self.n).irreps) - 1
            words += "; answer in " + ("every irrep" if every else ", ".join(self.answer.labels))
        return words

    def label(self) -> str:
        """e.g. "representation [4,1]⊗sign (purity 0.94)": purity is the share of the
        embedding's centred energy in the key irreps. The irreps the answer is written in
        follow when they differ ("...; answer in [4,1], [3,2]")."""
        purity = f"purity {self.keys.power_fraction:.2f}"
        if self.representation_algorithm:
            noun = "representation" if len(self.keys.irreps) == 1 else "representations"
            return f"{noun} {self._key_words()} ({purity})"
        best = f"best embedding irreps {self._key_words()}"
        return f"no clear representation circuit ({best}, {purity})"

    def description(self) -> str:
        group = groups.symmetric_group(self.n)
        k = self.keys
        names = ", ".join(group.irrep(i).full_name for i in k.irreps)
        contrast = "inf" if math.isinf(k.contrast) else f"{k.contrast:.0f}x"
        logit = sum(self.neuron_logit_shares.get(name, 0.0) for name in k.names)
        keys = f"{len(k.irreps)} key irrep{'s' if len(k.irreps) > 1 else ''} ({names})"
        verb = "hold" if len(k.irreps) > 1 else "holds"
        parts = [
            f"{self.formula} in S{self.n}. Embedding: {keys} {verb} {k.power_fraction:.0%} of the "
            f"centred energy of W_E over the {self.order} permutations (an isotropic random "
            f"embedding: {self.random_share:.0%}; weakest key / median other, per dimension: "
            f"{contrast}).",
            f"MLP: {self.neuron_pure_fraction:.0%} of live neurons are >= {PURE_THRESHOLD:.0%} "
            f"explained by one irrep ({self.neuron_key_pure_fraction:.0%} by a key irrep; "
            f"median purity {self.neuron_purity_quantiles.get('q50', 0.0):.2f}); the key irreps "
            f"dominate {logit:.0%} of the neurons' logit weight, which clusters on "
            f"{', '.join(self._label_of(n) for n in self.neuron_keys) or 'no irrep'}.",
        ]
        lo = self.losses
        a = self.answer
        answer = ", ".join(group.irrep(i).full_name for i in a.irreps)
        spread = "" if a.sparse else ", spread with no clear key set"
        parts += [
            f"Answer: the last MLP's mean activation per answer c lies in {answer} "
            f"({a.power_fraction:.0%} of its energy{spread}).",
            f"Logits: {self.logit_key_share:.0%} of their variance over the answers c lies in "
            f"the key irreps; sum_rho alpha_rho chi_rho(c* c^-1) over the answer irreps "
            f"explains {self.logits.explained:.0%}.",
            f"Loss: full {lo.full:.3g}, restricted to the answer irreps {lo.restricted:.3g} "
            f"(accuracy {lo.restricted_accuracy:.1%}), excluding them (train) "
            f"{lo.excluded:.3g} vs ln {self.n}! = {lo.log_p:.3g}.",
        ]
        return " ".join(parts)

    def _label_of(self, name: str) -> str:
        return groups.symmetric_group(self.n).irrep(name).label

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON (no NaN or infinity)."""
        return _finite(
            {
                "n": self.n,
                "op": self.op,
                "formula": self.formula,
                "label": self.label(),
                "description": self.description(),
                "representation_algorithm": self.representation_algorithm,
                "keys": self.keys.to_dict(),
                "answer_irreps": self.answer.to_dict(),
                "random_share": self.random_share,
                "neuron_pure_fraction": self.neuron_pure_fraction,
                "neuron_key_pure_fraction": self.neuron_key_pure_fraction,
                "neuron_purity_quantiles": dict(self.neuron_purity_quantiles),
                "neuron_dominant_counts": dict(self.neuron_dominant_counts),
                "neuron_logit_shares": dict(self.neuron_logit_shares),
                "neuron_keys": list(self.neuron_keys),
                "losses": self.losses.to_dict(),
                "logits": self.logits.to_dict(),
                "logit_key_share": self.logit_key_share,
                "log_order": math.log(self.order),
                "loss_inputs": self.loss_inputs,
                "timings": dict(self.timings),
            }
        )


# --- the whole analysis ---------------------------------------------------------------------


def _check_model(model: Any, task: PermutationTask) -> None:
    cfg = model.cfg
    if (
        cfg.d_vocab_out != task.order
        or cfg.d_vocab < task.order
        or tuple(cfg.answer_positions) != (2,)
    ):
        raise GroupFitError(
            f"model (d_vocab={cfg.d_vocab}, d_vocab_out={cfg.d_vocab_out}, answers at "
            f"{list(cfg.answer_positions)}) does not fit task {task.spec} "
            f"(|G|={task.order}, answer at 2)"
        )


def _loss_sample(n: int, limit: int, seed: int = 0) -> torch.Tensor | None:
    """Sorted indices of a seeded sample of `limit` of n inputs, or None to use them all."""
    if n <= limit:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:limit].sort().values


@torch.no_grad()
def analyze(
    model: Any,
    task: Any,
    *,
    train_index: np.ndarray | None = None,
    max_keys: int | None = None,
    max_loss_inputs: int = MAX_LOSS_INPUTS,
) -> RepresentationReport:
    """Key irreps, neuron purity and restricted/excluded loss of a model of `s{n}_{op}` over all
    its (n!)^2 inputs (the losses over a seeded sample of `max_loss_inputs` when there are
    more). train_index: indices into `task.dataset()` the model was trained on (for the
    excluded loss); None measures it on all inputs. Timings (seconds) of each step are kept."""
    group = group_of(task)
    _check_model(model, task)
    g = group.order
    data = task.dataset()
    tokens = torch.from_numpy(data.inputs).long()
    answers = torch.from_numpy(data.targets[:, 0]).long()
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    keys = groups.key_irreps(model.param("embed.W_E")[:g], group, max_keys=max_keys)
    dims = sum(group.irreps[i].dimension ** 2 for i in keys.irreps)
    timings["key_irreps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    name = _mlp_post_name(model)
    post = collect(model, tokens, [name])[name][:, 0]  # (n, d_mlp) at the answer position
    units = groups.unit_irreps(activation_grid(post, data.inputs, g), group, answer_table(task))
    last = model.cfg.n_layers - 1
    weights = logit_weights(
        post, model.param(f"blocks.{last}.mlp.W_out"), model.param("unembed.W_U")
    )
    live = units.variance > 0
    purity = units.purity[live]
    qs = (0.1, 0.25, 0.5, 0.75, 0.9)
    quantiles = (
        {f"q{int(q * 100)}": float(torch.quantile(purity, q)) for q in qs} if len(purity) else {}
    )
    shares = frequency_shares(units, weights)
    answer = groups.answer_irreps(post, answers, group, keys.irreps, KEY_SHARE)
    del post
    timings["neuron_irreps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sample = _loss_sample(len(tokens), max_loss_inputs)
    mask = None
    if train_index is not None:
        mask = torch.zeros(len(tokens), dtype=torch.bool)
        mask[torch.as_tensor(train_index, dtype=torch.long)] = True
    if sample is not None:
        tokens, answers = tokens[sample], answers[sample]
        mask = None if mask is None else mask[sample]
    clean = _run(model, tokens)
    losses = representation_losses(model, tokens, answers, group, answer.irreps, mask, clean)
    timings["restricted_excluded_loss"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    fit = logit_character_fit(clean[1], answers, group, answer.irreps)
    logit_share = logit_irrep_share(clean[1], group, keys.irreps)
    del clean
    timings["logit_fit"] = time.perf_counter() - t0

    return RepresentationReport(
        n=group.n,
        op=task.op,
        formula=PERMUTATION_OPS[task.op],
        keys=keys,
        answer=answer,
        random_share=dims / (g - 1),
        neuron_pure_fraction=units.pure_fraction(PURE_THRESHOLD),
        neuron_key_pure_fraction=units.pure_fraction(PURE_THRESHOLD, keys.irreps),
        neuron_purity_quantiles=quantiles,
        neuron_dominant_counts={
            group.irreps[i].name: c for i, c in units.dominant_counts().items()
        },
        neuron_logit_shares={group.irreps[i].name: s for i, s in shares.items()},
        neuron_keys=tuple(group.irreps[i].name for i in keys_by_share(shares)),
        losses=losses,
        logits=fit,
        logit_key_share=logit_share,
        loss_inputs=len(tokens),
        timings=timings,
    )


# --- circuit features -----------------------------------------------------------------------


def feature_label(units: groups.UnitIrreps, j: int, group: groups.SymmetricGroup) -> dict:
    """{"representation": irrep name or None, "purity", "label"} of unit j: an irrep only at
    purity >= PURE_THRESHOLD; below it "mixed (closest [4,1], purity 0.41)"."""
    purity = float(units.purity[j])
    dominant = int(units.dominant[j])
    pure = float(units.variance[j]) > 0 and purity >= PURE_THRESHOLD
    return {
        "representation": group.irreps[dominant].name if pure else None,
        "purity": purity,
        "label": units.label(j),
    }


def circuit_features(
    model: Any, task: Any, tc: Any, tokens: Any, keep: list[torch.Tensor], ref: Any
) -> tuple[dict[tuple[int, int], dict[str, Any]], tuple[str, ...]]:
    """Each circuit feature's irrep and purity, and the key irreps the circuit computes (the
    representation counterpart of analysis.circuit_frequencies, same arguments; both go
    through fourier_fits.circuit_units, over all inputs in dataset order here).
    Non-permutation tasks give ({}, ())."""
    try:
        group = group_of(task)
    except GroupFitError:
        return {}, ()
    answers = answer_table(task)
    inputs = np.asarray(tokens)

    def units_of(acts: torch.Tensor) -> groups.UnitIrreps:
        return groups.unit_irreps(activation_grid(acts, inputs, group.order), group, answers)

    per_layer, keys = circuit_units(model, tc, keep, ref, units_of)
    labels: dict[tuple[int, int], dict[str, Any]] = {}
    for layer, features, units, weights in per_layer:
        for j, f in enumerate(features):
            labels[(layer, f)] = {
                **feature_label(units, j, group),
                "logit_weight": float(weights[j]),
            }
    return labels, tuple(group.irreps[i].name for i in keys)
