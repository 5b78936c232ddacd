"""Feature interpretation for any task: what a feature reads and what it writes.

Where the Fourier analysis (`fourier.py`) does not apply (permutations, grids, synthesis tasks,
or a check on a modular one), a feature is described by two measurements, as in SAE and
transcoder dashboards (Bricken et al. 2023; Ameisen et al. 2025):

1. Inputs: its top activating inputs (and position), decoded with `task.token_names()`, with
   how often it fires at all (`top_activations`).
2. Outputs: its decoder direction added to the residual stream where it writes
   (`blocks.{t}.hook_mlp_out` for each target layer t of a (cross-layer) transcoder, scaled by
   the feature's typical activation) and pushed through the rest of the real model to the
   unembedding; the mean change of the (per-input centred) logits over a sample of inputs gives
   the output tokens it promotes and suppresses (`output_effects`). Later layers, attention and
   LayerNorm are all in the path, not linearised.

The results are plain records (`FeatureInterpretation.to_dict()` is JSON) that the catalog's
Feature.stats can hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from circuitlab.tasks.base import Task
from circuitlab.tasks.grid import GridTask


class InterpretError(ValueError):
    """Activations, directions or positions whose shapes do not fit the model or the inputs."""


@dataclass(frozen=True)
class ActivatingExample:
    """One input where a feature fired: row `index` of the inputs, at sequence `position`."""

    index: int
    position: int
    tokens: list[int]
    text: str
    value: float


@dataclass(frozen=True)
class TokenEffect:
    """An output token and the mean change of its centred logit."""

    token: int
    name: str
    value: float


@dataclass(frozen=True)
class FeatureInterpretation:
    """What one feature reads (top examples, firing rate) and writes (output effects)."""

    index: int
    firing_rate: float  # share of (input, position) rows where the activation is > 0
    mean_active: float  # mean activation where it fires (0 if it never does)
    max_activation: float
    top_examples: list[ActivatingExample]
    promotes: list[TokenEffect]
    suppresses: list[TokenEffect]

    @property
    def label(self) -> str:
        """A short label from the measurements, e.g. `fires on "3 4 =" ...; promotes 7, 0`."""
        if not self.top_examples:
            return "dead feature"
        reads = f'fires on "{self.top_examples[0].text}"'
        if not self.promotes:
            return reads
        return reads + "; promotes " + ", ".join(e.name for e in self.promotes[:3])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["label"] = self.label
        return out


def render_input(task: Task, tokens: np.ndarray | list[int]) -> str:
    """Input tokens as text: `3 4 =` for operations, `012/210/000` for a grid (rows by `/`,
    query tokens left out)."""
    tokens = [int(t) for t in tokens]
    if isinstance(task, GridTask):
        cells, width = task.height * task.width, task.width
        text = "".join(str(t) for t in tokens[:cells])
        return "/".join(text[i : i + width] for i in range(0, cells, width))
    names = task.token_names()
    return " ".join(names[t] if t < len(names) else f"<{t}>" for t in tokens)


def _as_3d(acts: torch.Tensor, positions: tuple[int, ...] | None) -> tuple[torch.Tensor, tuple]:
    if acts.dim() == 2:
        acts = acts[:, None, :]
    if acts.dim() != 3:
        raise InterpretError(
            f"acts must be (n_inputs, n_features) or (n_inputs, n_positions, n_features), "
            f"got shape {tuple(acts.shape)}"
        )
    if positions is None:
        raise InterpretError("positions (the sequence position of each acts row) are required")
    if len(positions) != acts.shape[1]:
        raise InterpretError(
            f"acts has {acts.shape[1]} positions but {len(positions)} were named: {positions}"
        )
    return acts, tuple(positions)


def top_activations(
    acts: torch.Tensor,
    inputs: np.ndarray | torch.Tensor,
    task: Task,
    positions: tuple[int, ...],
    k: int = 10,
) -> list[list[ActivatingExample]]:
    """Per feature, its k largest positive activations over all (input, position) rows.

    acts: (N, F) or (N, P, F) feature activations on `inputs` (N, S); positions: the sequence
    position of each of the P rows (one position for (N, F)).
    """
    acts, positions = _as_3d(acts.detach(), positions)
    inputs = np.asarray(inputs)
    if len(inputs) != acts.shape[0]:
        raise InterpretError(f"acts cover {acts.shape[0]} inputs but {len(inputs)} were given")
    n, p, f = acts.shape
    flat = acts.reshape(n * p, f)
    values, rows = flat.topk(min(k, n * p), dim=0)  # (k, F)
    out: list[list[ActivatingExample]] = []
    for j in range(f):
        examples = []
        for v, r in zip(values[:, j].tolist(), rows[:, j].tolist(), strict=True):
            if v <= 0:
                break
            i, q = divmod(r, p)
            tokens = [int(t) for t in inputs[i]]
            examples.append(
                ActivatingExample(i, positions[q], tokens, render_input(task, tokens), float(v))
            )
        out.append(examples)
    return out


def transcoder_directions(transcoder: Any, layer: int) -> dict[int, torch.Tensor]:
    """Decoders {target layer: (F, D)} of a transcoder's layer-`layer` features (one target for a
    per-layer transcoder, every later layer for a cross-layer one)."""
    return {
        t: transcoder.decoder(layer, t).detach()
        for t in range(layer, layer + transcoder.n_targets(layer))
    }


@torch.no_grad()
def output_effects(
    model: Any,
    directions: dict[int, torch.Tensor],
    tokens: torch.Tensor,
    scale: torch.Tensor | None = None,
    positions: tuple[int, ...] | None = None,
    chunk: int = 64,
) -> torch.Tensor:
    """(F, O) mean change of the centred answer logits when each feature writes.

    directions: {target layer t: (F, D)}; feature f adds scale[f] * directions[t][f] to
    `blocks.{t}.hook_mlp_out` at `positions` (default: the answer positions) on every input of
    `tokens` (N, S); the change is averaged over inputs and answer positions.
    """
    cfg = model.cfg
    if not directions:
        raise InterpretError("directions is empty: give {target layer: (F, D)}")
    sizes = {d.shape[0] for d in directions.values()}
    if len(sizes) != 1 or any(
        d.dim() != 2 or d.shape[1] != cfg.d_model for d in directions.values()
    ):
        raise InterpretError(
            f"every direction must be (F, d_model={cfg.d_model}) with one F, got "
            f"{ {t: tuple(d.shape) for t, d in directions.items()} }"
        )
    for t in directions:
        if not 0 <= t < cfg.n_layers:
            raise InterpretError(f"target layer {t} is not in 0..{cfg.n_layers - 1}")
    if not cfg.d_mlp:
        raise InterpretError("the model has no MLPs (d_mlp=0) to write through")
    n_features = sizes.pop()
    scale = torch.ones(n_features) if scale is None else scale.detach().float()
    answers = tuple(cfg.answer_positions)
    positions = answers if positions is None else tuple(positions)
    last = cfg.n_layers - 1
    if last in directions and not set(positions) <= set(answers):
        raise InterpretError(
            f"the last layer is computed only at the answer positions {answers}; got {positions}"
        )
    base = model(tokens)  # (N, Q, O)
    base = base - base.mean(-1, keepdim=True)
    n = tokens.shape[0]
    effects = []
    for start in range(0, n_features, chunk):
        stop = min(start + chunk, n_features)
        m = stop - start
        batch = tokens.repeat(m, 1)  # feature-major: rows [j * n, (j + 1) * n) are feature j
        deltas = {
            t: (d[start:stop].float() * scale[start:stop, None]).repeat_interleave(n, dim=0)
            for t, d in directions.items()
        }  # (m * n, D) per target layer
        add = _adder(deltas, answers, positions)
        hooks = [(f"blocks.{t}.hook_mlp_out", add) for t in directions]
        with model.hooks(hooks):
            logits = model(batch)
        logits = logits - logits.mean(-1, keepdim=True)
        change = (logits.view(m, n, *base.shape[1:]) - base).mean((1, 2))  # (m, O)
        effects.append(change)
    return torch.cat(effects)


def _adder(deltas: dict[int, torch.Tensor], answers: tuple[int, ...], positions: tuple[int, ...]):
    """Hook adding deltas[layer] (B, D) at `positions` of `blocks.{layer}.hook_mlp_out`, whose
    rows are every position, or only the answer positions in the last block."""

    def add(x: torch.Tensor, name: str) -> torch.Tensor:
        delta = deltas[int(name.split(".")[1])].to(x.dtype)
        where = [answers.index(q) for q in positions] if x.shape[1] == len(answers) else positions
        x = x.clone()
        x[:, list(where)] += delta[:, None, :]
        return x

    return add


def _token_effects(row: torch.Tensor, names: list[str], k: int, top: bool) -> list[TokenEffect]:
    values, index = row.topk(min(k, len(row)), largest=top)
    return [
        TokenEffect(int(i), names[int(i)], float(v)) for v, i in zip(values, index, strict=True)
    ]


@torch.no_grad()
def interpret_features(
    model: Any,
    task: Task,
    acts: torch.Tensor,
    inputs: np.ndarray | torch.Tensor,
    positions: tuple[int, ...],
    directions: dict[int, torch.Tensor] | None = None,
    *,
    k_examples: int = 10,
    k_tokens: int = 5,
    effect_sample: int = 256,
    seed: int = 0,
) -> list[FeatureInterpretation]:
    """Steps 1 and 2 for every feature: top activating inputs and (when `directions` are given)
    the output tokens it promotes and suppresses, measured on a seeded sample of
    `effect_sample` inputs with each feature at its mean active value."""
    acts3, positions = _as_3d(acts.detach(), positions)
    n_features = acts3.shape[-1]
    flat = acts3.reshape(-1, n_features).float()
    fires = flat > 0
    rate = fires.float().mean(0)
    mean_active = (flat * fires).sum(0) / fires.sum(0).clamp(min=1)
    examples = top_activations(acts3, inputs, task, positions, k_examples)
    effects = None
    if directions is not None:
        tokens = torch.as_tensor(np.asarray(inputs)).long()
        if len(tokens) > effect_sample:
            gen = torch.Generator().manual_seed(seed)
            tokens = tokens[torch.randperm(len(tokens), generator=gen)[:effect_sample]]
        effects = output_effects(model, directions, tokens, scale=mean_active)
    names = task.output_names()
    out = []
    for j in range(n_features):
        promotes = suppresses = []
        if effects is not None and rate[j] > 0:
            promotes = _token_effects(effects[j], names, k_tokens, top=True)
            suppresses = _token_effects(effects[j], names, k_tokens, top=False)
        out.append(
            FeatureInterpretation(
                index=j,
                firing_rate=float(rate[j]),
                mean_active=float(mean_active[j]),
                max_activation=float(flat[:, j].max()) if len(flat) else 0.0,
                top_examples=examples[j],
                promotes=promotes,
                suppresses=suppresses,
            )
        )
    return out
