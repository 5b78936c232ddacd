"""Fourier analysis, steps 4-6 (`fourier.py` has the method, steps 1-3 and the report): the
restricted and excluded loss, the logit fit, and `analyze`, which runs them all on a model.

Every pass over the p*p inputs runs BATCH inputs at a time and the fits accumulate over chunks
of rows or columns, so memory stays a few (p*p, d_mlp) matrices: one full-batch forward pass
over p = 257's 66,049 inputs took 1.5 GB, the full (p*p*p, keys) logit-fit design 0.5 GB more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from circuitlab.extraction.fourier import (
    ADDITIVE_OPS,
    CHUNK_ELEMENTS,
    HARMONIC_SHARE,
    LOG_FORMULAS,
    PURE_THRESHOLD,
    Coordinates,
    FourierError,
    FourierReport,
    KeyFrequencies,
    activation_grid,
    frequency_shares,
    harmonic_of,
    key_frequencies,
    keys_by_share,
    logit_weights,
    mean_per_answer,
    modulus_of,
    unit_frequencies,
)
from circuitlab.tasks.modular import OPERATIONS

BATCH = 4096  # inputs per forward pass


# --- 4. restricted and excluded loss --------------------------------------------------------


def answer_directions(answers: torch.Tensor, n: int, keys: tuple[int, ...]) -> torch.Tensor:
    """(inputs, <= 2K) columns cos(w_k c), sin(w_k c), w_k = 2 pi k / n, for the answers'
    coordinates c on Z_n (for addition cos/sin(w_k (a+b)), since cos is n-periodic). A Nyquist
    key (2k = n) has its cosine only: its sine is zero at every integer."""
    c = answers.to(torch.float64)
    cols = []
    for k in keys:
        w = 2 * math.pi * k / n
        cols.append(torch.cos(w * c))
        if 2 * k != n:
            cols.append(torch.sin(w * c))
    return torch.stack(cols, dim=1)


def answer_frequencies(acts: torch.Tensor, answer_coords: torch.Tensor, n: int) -> KeyFrequencies:
    """The frequencies of the answer that units (inputs, N) carry: `key_frequencies` of their
    mean activation per answer coordinate (n, N). On a grid where every answer occurs equally
    often those means are the units' projection onto functions of the answer, which is all the
    restricted loss keeps. A ReLU neuron of key frequency k also carries its harmonics 2k, 3k,
    ..., and a model may use them in its logits (a grokked div mod 113 relied on 2k: restricted
    loss 0.11 without it, 0.009 with it, against a full loss of 0.003)."""
    return key_frequencies(mean_per_answer(acts, answer_coords, n))


def restricted_frequencies(
    keys: tuple[int, ...], carried: KeyFrequencies, n: int
) -> tuple[int, ...]:
    """What the restricted loss keeps: the embedding's keys and, when the last MLP's answer
    spectrum (`answer_frequencies`) is sparse, the frequencies holding >= KEY_SHARE of its
    power and the harmonics of the keys (`harmonic_of`) holding >= HARMONIC_SHARE of it."""
    if not carried.sparse:
        return tuple(keys)
    power = {k + 1: v**2 for k, v in enumerate(carried.norms)}
    total = sum(power.values())
    harmonics = {
        f
        for f, v in power.items()
        if v >= HARMONIC_SHARE * total and harmonic_of(f, keys, n) is not None
    }
    return tuple(sorted(set(keys) | set(keys_by_share(power)) | harmonics))


def project_onto(acts: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Least-squares projection of the centred columns of acts (n, N) onto span(directions)
    (n, m) over the n inputs (QR, so the directions need not be orthogonal on a partial grid).
    Column by column in chunks: each column's projection is its own."""
    q, _ = torch.linalg.qr(directions.to(torch.float64))
    out = torch.empty_like(acts)
    step = max(1, CHUNK_ELEMENTS // max(acts.shape[0], 1))
    for lo in range(0, acts.shape[1], step):
        x = acts[:, lo : lo + step].to(torch.float64)
        centred = x - x.mean(0, keepdim=True)
        out[:, lo : lo + step] = (q @ (q.T @ centred)).to(acts.dtype)
    return out


@dataclass(frozen=True)
class FourierLosses:
    """Cross-entropy on the answers (mean over inputs), all under the same forward pass.

    full: the unmodified model on all inputs; full_train: on the training inputs only.
    restricted: all inputs, last MLP activations = mean + projection on the key directions.
    excluded: training inputs, last MLP activations minus that projection.
    log_p: ln p, the loss of a uniform guess (excluded loss above it means the model relies on
        the key frequencies rather than on memorisation).
    restricted_accuracy / excluded_accuracy: top-1 accuracy under the same patches (all inputs /
        training inputs).
    """

    full: float
    full_train: float
    restricted: float
    excluded: float
    log_p: float
    restricted_accuracy: float
    excluded_accuracy: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _mlp_post_name(model: Any) -> str:
    if not model.cfg.d_mlp:
        raise FourierError("restricted/excluded loss needs an MLP (the model has d_mlp = 0)")
    return f"blocks.{model.cfg.n_layers - 1}.mlp.hook_post"


@torch.no_grad()
def _run(
    model: Any, tokens: torch.Tensor, patch: Callable[[slice], torch.Tensor] | None = None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(the last MLP's activations at the answer (n, M), logits at the answer (n, O)), BATCH
    inputs at a time into tensors allocated once; with `patch`, the activations of the inputs
    at rows `sl` are replaced by patch(sl) (and not returned)."""
    name = _mlp_post_name(model)
    n = len(tokens)
    posts: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    for lo in range(0, n, BATCH):
        rows = slice(lo, min(lo + BATCH, n))
        if patch is None:
            out, cache = model.run_with_cache(tokens[rows], names=name, answers_only=True)
            post = cache[name][:, 0]
            posts = post.new_empty(n, post.shape[-1]) if posts is None else posts
            posts[rows] = post
        else:
            new = patch(rows)
            with model.hooks([(name, lambda x, _n, new=new: new.view_as(x).to(x.dtype))]):
                out = model(tokens[rows])
        logits = out.new_empty(n, out.shape[-1]) if logits is None else logits
        logits[rows] = out[:, 0]  # one answer position
    if logits is None:
        raise FourierError("no inputs to run the model on")
    return posts, logits


def _loss(logits: torch.Tensor, answers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-input cross-entropy and correctness of logits (n, O)."""
    loss = F.cross_entropy(logits.float(), answers, reduction="none")
    return loss, (logits.argmax(-1) == answers).float()


@torch.no_grad()
def patched_losses(
    model: Any,
    tokens: torch.Tensor,
    answers: torch.Tensor,
    directions: torch.Tensor,
    log_p: float,
    train_mask: torch.Tensor | None = None,
    clean: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FourierLosses:
    """Restricted and excluded loss of the span of `directions` (n, m), functions of the input
    that the last MLP's answer-position activations are projected on (least squares over all
    n inputs).

    As Nanda et al. define them: the restricted logits are the mean logits over the inputs
    plus what the projected, centred activations write through the rest of the model (the
    logits with the activations at mean + projection, minus those with them at the mean), so
    paths that bypass the last MLP (embedding and attention straight to the unembedding)
    contribute only their mean. The excluded logits are the model's with the projection taken
    out of the activations, on the training inputs. `clean` is `_run(model, tokens)` if
    already run."""
    mask = torch.ones(len(tokens), dtype=torch.bool) if train_mask is None else train_mask.bool()
    post, logits = _run(model, tokens) if clean is None else clean
    assert post is not None
    proj = project_onto(post, directions)
    mean = post.mean(0, keepdim=True)
    at_mean = _run(model, tokens, lambda rows: mean.repeat(rows.stop - rows.start, 1))[1]
    restricted_logits = _run(model, tokens, lambda rows: mean + proj[rows])[1]
    restricted_logits -= at_mean
    restricted_logits += logits.mean(0, keepdim=True)
    del at_mean
    excluded_logits = _run(model, tokens, lambda rows: post[rows] - proj[rows])[1]
    full, _ = _loss(logits, answers)
    restricted, restricted_ok = _loss(restricted_logits, answers)
    excluded, excluded_ok = _loss(excluded_logits, answers)
    return FourierLosses(
        full=float(full.mean()),
        full_train=float(full[mask].mean()),
        restricted=float(restricted.mean()),
        excluded=float(excluded[mask].mean()),
        log_p=log_p,
        restricted_accuracy=float(restricted_ok.mean()),
        excluded_accuracy=float(excluded_ok[mask].mean()),
    )


@torch.no_grad()
def fourier_losses(
    model: Any,
    tokens: torch.Tensor,
    answers: torch.Tensor,
    keys: tuple[int, ...],
    p: int,
    train_mask: torch.Tensor | None = None,
    coords: Coordinates | None = None,
) -> FourierLosses:
    """Restricted and excluded loss (Nanda et al. 2023, section 5.1) of a one-answer model.

    tokens (n, S) are the inputs (normally all p*p pairs), answers (n,) the correct outputs,
    train_mask (n,) bool the training inputs (all when None); `keys` are frequencies of
    `coords` (default: the residues, Z_p), whose coordinates every answer must have. The
    projection is fitted over all n inputs at once, then patched into
    `blocks.{L-1}.mlp.hook_post`.
    """
    if len(model.cfg.answer_positions) != 1:
        raise FourierError("restricted/excluded loss needs a model with one answer position")
    if not keys:
        raise FourierError("restricted/excluded loss needs at least one key frequency")
    coords = coords or Coordinates.additive(p)
    at = coords.of(answers)
    if bool((at < 0).any()):
        raise FourierError(f"every answer needs a coordinate in {coords.describe()}")
    directions = answer_directions(at, coords.n, keys)
    return patched_losses(model, tokens, answers, directions, math.log(p), train_mask)


# --- 5. logits ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogitFit:
    """logits[i, c] ~ u_i + v_c + sum_k alpha_k cos(w_k (answer_i - c)), least squares (the
    offsets u_i, v_c fitted too: `streamed_fit`).

    alphas: alpha_k per key frequency (same order as `keys`).
    explained: share of the logit variance beyond the offsets that the fit explains.
    """

    keys: tuple[int, ...]
    alphas: tuple[float, ...]
    explained: float

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "alphas": list(self.alphas), "explained": self.explained}


def streamed_fit(chunks: Callable[[], Any], keys: tuple[Any, ...]) -> LogitFit:
    """Least squares of logits on one design column per key, with a free offset per input and
    per output: `chunks()` yields (design (K, rows, O), logits (rows, O)) chunk by chunk.

    Both offsets are taken out of logits and designs alike (every input has all O outputs, so
    centring per input and then per output is the exact two-way fixed-effects fit): a bias on
    an output that does not depend on the input carries nothing about the mechanism. Three
    passes (the per-output means, the K x K normal equations, the residual), so no full design
    is ever held."""

    def centred() -> Any:
        for design, y in chunks():
            y = y.to(torch.float64)
            yield design - design.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)

    n, d_sum, y_sum = 0, None, None
    for design, y in centred():
        n += y.shape[0]
        d_sum = design.sum(1) if d_sum is None else d_sum + design.sum(1)
        y_sum = y.sum(0) if y_sum is None else y_sum + y.sum(0)
    if not n or d_sum is None or y_sum is None:
        raise FourierError("no logits to fit")
    d_mean, y_mean = d_sum[:, None] / n, y_sum[None] / n  # (K, 1, O), (1, O)

    def within() -> Any:
        for design, y in centred():
            design = design - d_mean
            yield design.reshape(len(keys), -1).T, (y - y_mean).reshape(-1, 1)

    gram = torch.zeros(len(keys), len(keys), dtype=torch.float64)
    moment = torch.zeros(len(keys), 1, dtype=torch.float64)
    total = 0.0
    for design, target in within():
        gram += design.T @ design
        moment += design.T @ target
        total += float(target.pow(2).sum())
    alphas = torch.linalg.lstsq(gram, moment).solution[:, 0]
    residual = sum(float((t[:, 0] - d @ alphas).pow(2).sum()) for d, t in within())
    explained = 1.0 - residual / total if total > 0 else 0.0
    return LogitFit(tuple(keys), tuple(float(a) for a in alphas), explained)


def logit_fourier_fit(
    logits: torch.Tensor, answers: torch.Tensor, keys: tuple[int, ...]
) -> LogitFit:
    """Fit logits (n, m) by sum_k alpha_k cos(w_k (answer - c)) over all n*m entries, w_k =
    2 pi k / m: the columns and answers are coordinates on Z_m (the residues for addition).
    Offsets per input and per output are fitted too. Least squares through the normal
    equations, accumulated over chunks of rows by `streamed_fit` (the design has n*p rows and
    one column per key, so its Gram matrix is tiny)."""
    if logits.dim() != 2 or logits.shape[0] != answers.shape[0]:
        raise FourierError(
            f"logits must be (n, p) matching answers (n,), got {tuple(logits.shape)}"
        )
    n, p = logits.shape
    c = torch.arange(p, dtype=torch.float64)
    rows = max(1, CHUNK_ELEMENTS // (p * max(len(keys), 1)))

    def chunks():
        for lo in range(0, n, rows):
            diff = answers[lo : lo + rows].to(torch.float64)[:, None] - c[None, :]  # (rows, p)
            design = torch.stack([torch.cos(2 * math.pi * k / p * diff) for k in keys])
            yield design, logits[lo : lo + rows].detach()

    return streamed_fit(chunks, keys)


# --- 6. the whole analysis ------------------------------------------------------------------


def circuit_units(
    model: Any,
    tc: Any,
    keep: list[torch.Tensor],
    ref: Any,
    units_of: Callable[[torch.Tensor], Any],
    rows: torch.Tensor | None = None,
) -> tuple[list[tuple[int, list[int], Any, torch.Tensor]], tuple[Any, ...]]:
    """The circuit's features as units of an analysis: per layer whose decoder writes to the
    last layer, (layer, feature indices, units_of(activations), logit weights), with the
    features read at the answer position (`ref.acts[layer][:, -1]`, the inputs at `rows`);
    and the keys the circuit computes: dominant keys weighted by how much each feature moves
    the logits (activation spread x direct logit effect through tc.decoder(layer, last)), kept
    at >= KEY_SHARE of the total, so rare or weak features name no key. `units_of` turns
    (inputs, features) activations into a UnitFrequencies (frequencies or irreps)."""
    per_layer = []
    shares: dict[Any, float] = {}
    last = tc.n_layers - 1
    w_u = model.param("unembed.W_U")
    for layer, mask in enumerate(keep):
        idx = mask.nonzero().flatten()
        if len(idx) == 0 or last - layer >= tc.n_targets(layer):
            continue
        acts = ref.acts[layer][:, -1][:, idx]  # the answer position (`=`, the last row)
        if rows is not None:
            acts = acts[rows]
        units = units_of(acts)
        weights = logit_weights(acts, tc.decoder(layer, last)[idx], w_u)
        for k, share in frequency_shares(units, weights).items():
            shares[k] = shares.get(k, 0.0) + share * float(weights.sum())
        per_layer.append((layer, idx.tolist(), units, weights))
    return per_layer, keys_by_share(shares)


def coordinates_for(model: Any, task: Any) -> Coordinates:
    """The coordinates `analyze` reads a modular model in: the residues for add and sub, the
    discrete logarithms for mul and div (the nonzero residues are Z_(p-1) there), and for any
    other operation whichever of the two the embedding is sparser in (higher contrast of its
    key frequencies), since nothing says in advance which group a model found."""
    p = modulus_of(task)
    op = getattr(task, "op", None)
    if op in ADDITIVE_OPS:
        return Coordinates.additive(p)
    if op in LOG_FORMULAS:
        return Coordinates.discrete_log(p)
    embedding = model.param("embed.W_E")
    candidates = [Coordinates.additive(p), Coordinates.discrete_log(p)]
    contrast = [key_frequencies(embedding[list(c.tokens)]).contrast for c in candidates]
    return candidates[int(contrast[1] > contrast[0])]


@torch.no_grad()
def analyze(
    model: Any,
    task: Any,
    *,
    train_index: np.ndarray | None = None,
    max_keys: int | None = None,
    coords: Coordinates | None = None,
) -> FourierReport:
    """Run steps 2-6 on a model of a two-operand modular task over all its p*p inputs, in the
    coordinates `coordinates_for` picks (or `coords`). In the discrete-log basis the inputs
    with a 0 operand have no coordinate: they are left out of steps 3-5 and the model's
    accuracy on them is reported apart.

    train_index: indices into `task.dataset()` the model was trained on (for the excluded loss);
    None measures it on all inputs. Timings (seconds) of each step are recorded.
    """
    p = modulus_of(task)
    cfg = model.cfg
    if cfg.d_vocab_out != p or cfg.d_vocab < p or tuple(cfg.answer_positions) != (2,):
        raise FourierError(
            f"model (d_vocab={cfg.d_vocab}, d_vocab_out={cfg.d_vocab_out}, answers at "
            f"{list(cfg.answer_positions)}) does not fit task {task.spec} (p={p}, answer at 2)"
        )
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    coords = coords or coordinates_for(model, task)
    op = getattr(task, "op", None)
    formula = OPERATIONS[op][0] if op in OPERATIONS else "c*"
    if coords.basis == "discrete_log":
        formula = LOG_FORMULAS.get(op, "log c*")
    data = task.dataset()
    tokens = torch.from_numpy(data.inputs).long()
    answers = torch.from_numpy(data.targets[:, 0]).long()
    # the inputs whose operands (and answer) have coordinates; all of them for addition
    inside = (coords.of(tokens[:, 0]) >= 0) & (coords.of(tokens[:, 1]) >= 0)
    inside &= coords.of(answers) >= 0
    keys = key_frequencies(model.param("embed.W_E")[list(coords.tokens)], max_keys=max_keys)
    timings["key_frequencies"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    post, logits = _run(model, tokens)
    apart: dict[str, float] = {}
    if not bool(inside.all()):
        outside = ~inside
        correct = logits[outside].argmax(-1) == answers[outside]
        apart = {"inputs": float(outside.sum()), "accuracy": float(correct.float().mean())}
    post, logits = post[inside], logits[inside]
    tokens, answers = tokens[inside], answers[inside]
    units = unit_frequencies(activation_grid(post, tokens, p, coords=coords))
    live = units.variance > 0
    purity = units.purity[live]
    qs = (0.1, 0.25, 0.5, 0.75, 0.9)
    quantiles = (
        {f"q{int(q * 100)}": float(torch.quantile(purity, q)) for q in qs} if len(purity) else {}
    )
    counts = units.dominant_counts()
    last = model.cfg.n_layers - 1
    weights = logit_weights(
        post, model.param(f"blocks.{last}.mlp.W_out"), model.param("unembed.W_U")
    )
    shares = frequency_shares(units, weights)
    carried = answer_frequencies(post, coords.of(answers), coords.n)
    del post
    restricted_keys = restricted_frequencies(keys.frequencies, carried, coords.n)
    timings["neuron_frequencies"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    losses = None
    if len(model.cfg.answer_positions) == 1:
        mask = None
        if train_index is not None:
            mask = torch.zeros(len(inside), dtype=torch.bool)
            mask[torch.as_tensor(train_index, dtype=torch.long)] = True
            mask = mask[inside]
        losses = fourier_losses(model, tokens, answers, restricted_keys, p, mask, coords)
    timings["restricted_excluded_loss"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    order = torch.tensor(coords.tokens, dtype=torch.long)
    fit = logit_fourier_fit(logits[:, order], coords.of(answers), keys.frequencies)
    timings["logit_fit"] = time.perf_counter() - t0

    return FourierReport(
        p=p,
        formula=formula,
        coordinates=coords,
        keys=keys,
        answer_keys=carried,
        restricted_keys=restricted_keys,
        neuron_pure_fraction=units.pure_fraction(PURE_THRESHOLD, keys.frequencies),
        neuron_purity_quantiles=quantiles,
        neuron_dominant_counts=counts,
        neuron_logit_shares=shares,
        neuron_keys=keys_by_share(shares),
        losses=losses,
        logits=fit,
        apart=apart,
        timings=timings,
    )
