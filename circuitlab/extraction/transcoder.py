"""Per-layer and cross-layer transcoders: sparse, interpretable replacements for the MLPs.

Method (Dunefsky et al. 2024, transcoders; Ameisen et al. 2025, cross-layer transcoders):

1. Collect each layer's MLP input x_l and MLP output y_l at the positions that matter
   (`activations.mlp_activations`), and normalise both per layer to mean squared norm d_model so
   that one set of hyperparameters serves models of any scale.
2. Encode each layer: pre_l = x_l W_enc,l + b_enc,l; a_l = JumpReLU (pre * [pre > theta]), TopK or
   ReLU of pre_l.
3. Decode: a per-layer transcoder predicts y_l from a_l alone; a cross-layer transcoder predicts
   y_t from every layer l <= t: y_t ~ b_dec,t + sum_{l<=t} a_l W_dec,l->t (no decoder points to an
   earlier layer).
4. Loss = sum_t ||y_t - y_t_hat||^2 + lambda * sum_{l,i} tanh(c * ||W_dec,l,i|| * a_l,i)
   + lambda_p * sum_{l,i} relu(theta_i - pre_l,i) * ||W_dec,l,i||, with ||W_dec,l,i|| the norm of
   the concatenation of all of feature i's decoders. lambda ramps up linearly; the last term keeps
   features from dying. The JumpReLU threshold learns through a straight-through estimator
   (Rajamanoharan et al. 2024) with a rectangle kernel of width `bandwidth`.
5. Features that have not fired for `dead_window` steps are resampled towards inputs the
   transcoder reconstructs worst (Bricken et al. 2023) until `resample_until` of training; TopK
   transcoders, which have no sparsity penalty, also train dead features with AuxK (Gao et al.
   2024).
6. The normalisation is folded into the weights at the end, so the saved transcoder reads and
   writes raw activations: a feature's contribution to layer t's MLP output is a @ decoder(l, t).

This module holds the config, the model, its files and `evaluate`; training is in
transcoder_train.py (`train_transcoder` is importable from either).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from circuitlab._precision import PRECISIONS, fp32_only
from circuitlab.extraction.activations import MLPActivations, check_tokens

KINDS = ("per_layer", "cross_layer")
ACTIVATIONS = ("jumprelu", "topk", "relu")
WEIGHTS_FILE = "transcoder.safetensors"
CONFIG_FILE = "transcoder.json"
FORMAT = "circuitlab-transcoder"


class TranscoderError(ValueError):
    """A transcoder config out of range, or a transcoder directory missing or inconsistent."""


@dataclass(frozen=True)
class TranscoderConfig:
    """Architecture and training of a transcoder. Defaults reach <= 5% normalised MSE and >= 99%
    replacement agreement on a grokked add_mod_113 model in well under a minute on one CPU core
    (benchmarks/bench_transcoder.py)."""

    kind: Literal["per_layer", "cross_layer"] = "cross_layer"
    n_features: int = 256  # per layer
    activation: Literal["jumprelu", "topk", "relu"] = "jumprelu"
    top_k: int = 16  # features kept per row and layer (topk only)
    threshold_init: float = 0.03  # JumpReLU threshold, in normalised units
    bandwidth: float = 0.05  # width of the straight-through rectangle kernel
    sparsity_coeff: float = 0.5  # lambda of the tanh penalty (jumprelu, relu; not topk)
    sparsity_c: float = 4.0  # c inside tanh(c * ||W_dec|| * a)
    sparsity_warmup: float = 0.5  # fraction of steps over which lambda ramps up from 0
    pre_act_coeff: float = 1e-2  # lambda_p of the dead-feature pre-activation penalty
    aux_k_coeff: float = 1 / 32  # weight of the AuxK loss on dead features (topk only)
    lr: float = 4e-3
    lr_decay: float = 0.2  # final fraction of steps with linear decay of lr to 0
    steps: int = 600
    batch_size: int = 512  # inputs (sequences) per step
    dead_window: int = 100  # steps without firing after which a feature counts as dead
    resample_every: int = 100  # steps between resampling checks; 0 = never resample
    resample_until: float = 0.8  # no resampling after this fraction of training
    seed: int = 0
    # training matmuls in bfloat16 under autocast ("bf16"), weights, Adam state and loss in
    # float32; fp32 where the CPU has no native bf16. The transcoder is saved and used
    # (evaluation, attribution) in float32 either way.
    precision: Literal["fp32", "bf16"] = "fp32"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise TranscoderError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.activation not in ACTIVATIONS:
            raise TranscoderError(
                f"activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        if self.precision not in PRECISIONS:
            raise TranscoderError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        checks = {
            "n_features": self.n_features >= 1,
            "top_k": self.top_k >= 1
            and (self.activation != "topk" or self.top_k <= self.n_features),
            "threshold_init": self.threshold_init > 0,
            "bandwidth": self.bandwidth > 0,
            "sparsity_coeff": self.sparsity_coeff >= 0,
            "sparsity_c": self.sparsity_c > 0,
            "sparsity_warmup": 0 <= self.sparsity_warmup <= 1,
            "pre_act_coeff": self.pre_act_coeff >= 0,
            "aux_k_coeff": self.aux_k_coeff >= 0,
            "lr": self.lr > 0,
            "lr_decay": 0 <= self.lr_decay <= 1,
            "steps": self.steps >= 1,
            "batch_size": self.batch_size >= 1,
            "dead_window": self.dead_window >= 1,
            "resample_every": self.resample_every >= 0,
            "resample_until": 0 <= self.resample_until <= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise TranscoderError(
                    f"transcoder config {name}={getattr(self, name)!r} is out of range"
                )

    def replace(self, **changes: Any) -> TranscoderConfig:
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TranscoderError(f"unknown transcoder config fields: {sorted(unknown)}")
        return TranscoderConfig(**{**asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TranscoderConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise TranscoderError(f"unknown transcoder config fields: {sorted(unknown)}")
        return cls(**data)


class _JumpReLU(torch.autograd.Function):
    """pre * [pre > theta]; d/dpre = [pre > theta], d/dtheta = -(theta/eps) K((pre-theta)/eps)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        mask = pre > threshold
        ctx.save_for_backward(pre, threshold, mask)
        ctx.bandwidth = bandwidth
        return pre * mask

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold, mask = ctx.saved_tensors
        eps = ctx.bandwidth
        window = ((pre - threshold).abs() < eps / 2).to(pre.dtype)
        grad_threshold = -(threshold / eps) * window * grad
        grad_threshold = grad_threshold.reshape(-1, threshold.shape[-1]).sum(0)
        return grad * mask, grad_threshold.reshape(threshold.shape), None


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float = 0.05) -> Tensor:
    """JumpReLU with a straight-through gradient for `threshold` (F,)."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


class Transcoder(nn.Module):
    """Encoders per layer and decoders to the same layer (per_layer) or to it and every later
    layer (cross_layer). Parameters (raw activation units, L layers, D d_model, F features):

        W_enc (L, D, F), b_enc (L, F), log_threshold (L, F), b_dec (L, D),
        W_dec[l] (T_l, F, D): decoders from layer l to layers l .. l + T_l - 1
        (T_l = L - l for cross_layer, 1 for per_layer).
    """

    def __init__(self, cfg: TranscoderConfig, n_layers: int, d_model: int) -> None:
        super().__init__()
        if n_layers < 1 or d_model < 1:
            raise TranscoderError(f"n_layers and d_model must be >= 1, got {n_layers}, {d_model}")
        self.cfg, self.n_layers, self.d_model = cfg, n_layers, d_model
        L, D, Fn = n_layers, d_model, cfg.n_features
        gen = torch.Generator().manual_seed(cfg.seed)
        # pre-activations start ~N(0, 1) on inputs of mean squared norm D; decoders start small
        self.W_enc = nn.Parameter(torch.randn(L, D, Fn, generator=gen) / math.sqrt(D))
        self.b_enc = nn.Parameter(torch.zeros(L, Fn))
        self.log_threshold = nn.Parameter(torch.full((L, Fn), math.log(cfg.threshold_init)))
        self.b_dec = nn.Parameter(torch.zeros(L, D))
        self.W_dec = nn.ParameterList(
            nn.Parameter(torch.randn(self.n_targets(l), Fn, D, generator=gen) * 0.1 / math.sqrt(D))
            for l in range(L)
        )

    # --- structure --------------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return self.cfg.n_features

    def n_targets(self, source: int) -> int:
        return self.n_layers - source if self.cfg.kind == "cross_layer" else 1

    def _check_layer(self, layer: int, what: str = "layer") -> None:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"{what} must be in [0, {self.n_layers}), got {layer}")

    def threshold(self, layer: int) -> Tensor:
        """JumpReLU threshold of layer `layer`'s features (F,)."""
        return self.log_threshold[layer].exp()

    def decoder(self, source: int, target: int) -> Tensor:
        """(F, D): how layer `source`'s features write to layer `target`'s MLP output."""
        self._check_layer(source, "source")
        self._check_layer(target, "target")
        if target < source or target >= source + self.n_targets(source):
            allowed = "target >= source" if self.cfg.kind == "cross_layer" else "target == source"
            raise ValueError(
                f"a {self.cfg.kind} transcoder has no decoder {source}->{target} ({allowed})"
            )
        return self.W_dec[source][target - source]

    def decoder_norms(self) -> Tensor:
        """(L, F): norm of the concatenation of each feature's decoders."""
        return torch.stack([w.pow(2).sum((0, 2)).sqrt() for w in self.W_dec])

    # --- forward ----------------------------------------------------------------------------
    def pre_activations(self, layer: int, mlp_in: Tensor) -> Tensor:
        """(..., D) -> (..., F)."""
        self._check_layer(layer)
        return mlp_in @ self.W_enc[layer] + self.b_enc[layer]

    def activate(self, layer: int, pre: Tensor) -> Tensor:
        kind = self.cfg.activation
        if kind == "jumprelu":
            return jumprelu(pre, self.threshold(layer), self.cfg.bandwidth)
        if kind == "relu":
            return F.relu(pre)
        values, index = pre.topk(self.cfg.top_k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, F.relu(values))

    def encode(self, layer: int, mlp_in: Tensor) -> Tensor:
        """Feature activations (..., F) of layer `layer` (what attribution graphs call a
        feature's activation)."""
        return self.activate(layer, self.pre_activations(layer, mlp_in))

    def decode(self, acts: list[Tensor]) -> list[Tensor]:
        """Activations per source layer (all of one leading shape (..., F)) -> reconstruction of
        every layer's MLP output (..., D), including b_dec."""
        if len(acts) != self.n_layers:
            raise ValueError(f"decode needs {self.n_layers} activation tensors, got {len(acts)}")
        out = [
            self.b_dec[t].expand(*acts[t].shape[:-1], self.d_model) for t in range(self.n_layers)
        ]
        for source, a in enumerate(acts):
            for k in range(self.n_targets(source)):
                out[source + k] = out[source + k] + a @ self.W_dec[source][k]
        return out

    def forward(self, mlp_in: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """MLP inputs per layer (one leading shape) -> (activations, MLP-output reconstructions)."""
        acts = [self.encode(layer, x) for layer, x in enumerate(mlp_in)]
        return acts, self.decode(acts)

    # --- persistence: safetensors + JSON ----------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        """Flat, self-describing tensors: W_enc.{l} (D, F), b_enc.{l}, threshold.{l} (and its
        log, which is what trains), W_dec.{l}.{t} (F, D) for every decoder l -> t, b_dec.{t}."""
        out: dict[str, Tensor] = {}
        for l in range(self.n_layers):
            out[f"W_enc.{l}"] = self.W_enc[l]
            out[f"b_enc.{l}"] = self.b_enc[l]
            out[f"threshold.{l}"] = self.threshold(l)
            out[f"log_threshold.{l}"] = self.log_threshold[l]  # exact round trip
            out[f"b_dec.{l}"] = self.b_dec[l]
            for k in range(self.n_targets(l)):
                out[f"W_dec.{l}.{l + k}"] = self.W_dec[l][k]
        return {n: t.detach().contiguous().cpu().float() for n, t in out.items()}

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write transcoder.safetensors + transcoder.json into `directory`, each atomically."""
        import circuitlab

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "format_version": 1,
            "circuitlab_version": circuitlab.__version__,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "config": self.cfg.to_dict(),
            "extra": extra or {},
        }
        weights = directory / WEIGHTS_FILE
        tmp = weights.with_name(weights.name + ".tmp")
        save_file(self.tensors(), str(tmp), metadata={"format": FORMAT})
        os.replace(tmp, weights)
        config = directory / CONFIG_FILE
        tmp = config.with_name(config.name + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, config)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Transcoder:
        directory = Path(directory)
        meta = read_transcoder_meta(directory)
        try:
            state = load_file(str(directory / WEIGHTS_FILE))
        except Exception as exc:  # safetensors raises several types for damaged files
            raise TranscoderError(f"cannot read {directory / WEIGHTS_FILE}: {exc}") from None
        tc = cls(TranscoderConfig.from_dict(meta["config"]), meta["n_layers"], meta["d_model"])
        expected = {n: t.shape for n, t in tc.tensors().items()}
        if set(state) != set(expected):
            missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
            raise TranscoderError(
                f"{directory / WEIGHTS_FILE} does not match its config: missing {missing[:4]}, "
                f"unexpected {extra[:4]}"
            )
        for name, shape in expected.items():
            if state[name].shape != shape:
                raise TranscoderError(
                    f"{name} has shape {tuple(state[name].shape)}, config expects {tuple(shape)}"
                )
        with torch.no_grad():
            for l in range(tc.n_layers):
                tc.W_enc[l].copy_(state[f"W_enc.{l}"])
                tc.b_enc[l].copy_(state[f"b_enc.{l}"])
                tc.log_threshold[l].copy_(state[f"log_threshold.{l}"])
                tc.b_dec[l].copy_(state[f"b_dec.{l}"])
                for k in range(tc.n_targets(l)):
                    tc.W_dec[l][k].copy_(state[f"W_dec.{l}.{l + k}"])
        return tc.eval()


def read_transcoder_meta(directory: str | Path) -> dict[str, Any]:
    """The JSON config of a saved transcoder, checked; TranscoderError says what is wrong."""
    directory = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise TranscoderError(f"no transcoder at {directory}: {name} is missing")
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise TranscoderError(f"{directory / CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TranscoderError(f"{directory / CONFIG_FILE} is not a circuitlab transcoder config")
    for key in ("n_layers", "d_model", "config"):
        if key not in meta:
            raise TranscoderError(f"{directory / CONFIG_FILE} has no {key!r}")
    return meta


def position_maps(positions: list[tuple[int, ...]]) -> dict[tuple[int, int], Tensor]:
    """(source, target) -> indices of target's positions among source's positions."""
    maps = {}
    for s, ps in enumerate(positions):
        for t in range(s, len(positions)):
            missing = [p for p in positions[t] if p not in ps]
            if missing:
                raise TranscoderError(
                    f"layer {t} positions {missing} are not among layer {s}'s positions"
                )
            maps[(s, t)] = torch.tensor([ps.index(p) for p in positions[t]])
    return maps


def reconstruct(tc: Transcoder, acts: list[Tensor], maps: dict[tuple[int, int], Tensor]):
    """Reconstructions per target layer for activations laid out per layer (B, P_l, F)."""
    out = []
    for t in range(tc.n_layers):
        y = tc.b_dec[t]
        for s in range(t + 1):
            if t - s < tc.n_targets(s):
                a = acts[s] if s == t else acts[s][:, maps[(s, t)]]
                y = y + a @ tc.W_dec[s][t - s]
        out.append(y)
    return out


# --- evaluation: reconstruction, sparsity and the replacement model --------------------------
@dataclass
class TranscoderMetrics:
    """How well a transcoder replaces the MLPs, on the inputs it was evaluated on.

    nmse: sum of squared errors / sum of squared deviations from the mean (fraction of variance
    unexplained), per layer and over all layers. l0: active features per row (mean over layers).
    dead_fraction: features that never fire. top1_agreement: the replacement model (every MLP
    output replaced by its reconstruction) predicts the real model's argmax, over all answers.
    """

    nmse: float
    nmse_per_layer: list[float]
    l0: float
    l0_per_layer: list[float]
    dead_fraction: float
    top1_agreement: float
    kl: float  # mean KL(real || replacement) over answers, nats
    model_loss: float | None = None  # cross-entropy against the task's targets
    replacement_loss: float | None = None
    model_accuracy: float | None = None
    replacement_accuracy: float | None = None
    n_inputs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def replacement_hooks(model, tc: Transcoder) -> Iterator[dict[int, Tensor]]:
    """Inside the block, `model` is the replacement model: each MLP output is replaced by the
    transcoder's reconstruction from the (replacement model's own) MLP inputs. Yields the
    feature activations per layer of the last forward pass."""
    if model.cfg.n_layers != tc.n_layers or model.cfg.d_model != tc.d_model:
        raise TranscoderError(
            f"transcoder has {tc.n_layers} layers of d_model {tc.d_model}, the model "
            f"{model.cfg.n_layers} of {model.cfg.d_model}"
        )
    feats: dict[int, Tensor] = {}
    answers = list(model.cfg.answer_positions)

    def read(x: Tensor, name: str) -> None:
        layer = int(name.split(".")[1])
        feats[layer] = tc.encode(layer, x)

    def write(y: Tensor, name: str) -> Tensor:
        t = int(name.split(".")[1])
        out = tc.b_dec[t].expand_as(y)
        for s in range(t + 1):
            if t - s >= tc.n_targets(s):
                continue
            a = feats[s]
            if a.shape[1] != y.shape[1]:
                # the last block of an answers_only pass runs at the answer positions only;
                # earlier blocks run at every position, so position p is row p there
                a = a[:, answers]
            out = out + a @ tc.W_dec[s][t - s]
        return out

    names_in = [f"blocks.{l}.hook_mlp_in" for l in range(tc.n_layers)]
    names_out = [f"blocks.{l}.hook_mlp_out" for l in range(tc.n_layers)]
    with model.hooks([(lambda n: n in names_in, read), (lambda n: n in names_out, write)]):
        yield feats


@torch.no_grad()
@fp32_only()  # a transcoder is used in float32, whatever precision it was trained in
def evaluate(
    tc: Transcoder,
    model,
    tokens: Tensor,
    targets: Tensor | None = None,
    *,
    acts: MLPActivations | None = None,
    batch_size: int = 4096,
) -> TranscoderMetrics:
    """Reconstruction, sparsity, dead features and replacement-model agreement on `tokens`."""
    from circuitlab.extraction.activations import mlp_activations

    tokens = check_tokens(model, tokens)
    if acts is None:
        acts = mlp_activations(model, tokens, batch_size)
    maps = position_maps(acts.positions)
    L = tc.n_layers
    sq_err, sq_dev, l0 = torch.zeros(L), torch.zeros(L), torch.zeros(L)
    fired = torch.zeros(L, tc.n_features, dtype=torch.bool)
    means = [y.mean((0, 1)) for y in acts.mlp_out]
    rows = [0] * L
    for start in range(0, acts.n_inputs, batch_size):
        xb = [x[start : start + batch_size] for x in acts.mlp_in]
        yb = [y[start : start + batch_size] for y in acts.mlp_out]
        a = [tc.encode(l, xb[l]) for l in range(L)]
        recon = reconstruct(tc, a, maps)
        for l in range(L):
            sq_err[l] += (yb[l] - recon[l]).pow(2).sum()
            sq_dev[l] += (yb[l] - means[l]).pow(2).sum()
            active = a[l] > 0
            l0[l] += active.sum()
            rows[l] += active.shape[0] * active.shape[1]
            fired[l] |= active.flatten(0, -2).any(0)
    nmse_layers = (sq_err / sq_dev.clamp_min(1e-12)).tolist()
    l0_layers = [float(l0[l] / max(rows[l], 1)) for l in range(L)]
    agree = kl = 0.0
    ce_model = ce_repl = acc_model = acc_repl = 0.0
    for start in range(0, tokens.shape[0], batch_size):
        tb = tokens[start : start + batch_size]
        real = model(tb).float()
        with replacement_hooks(model, tc):
            repl = model(tb).float()
        agree += float((real.argmax(-1) == repl.argmax(-1)).float().sum())
        lp_real, lp_repl = real.log_softmax(-1), repl.log_softmax(-1)
        kl += float((lp_real.exp() * (lp_real - lp_repl)).sum(-1).sum())
        if targets is not None:
            tg = torch.as_tensor(targets[start : start + batch_size]).long()
            ce_model += float(-lp_real.gather(-1, tg.unsqueeze(-1)).sum())
            ce_repl += float(-lp_repl.gather(-1, tg.unsqueeze(-1)).sum())
            acc_model += float((real.argmax(-1) == tg).float().sum())
            acc_repl += float((repl.argmax(-1) == tg).float().sum())
    n_answers = tokens.shape[0] * len(model.cfg.answer_positions)
    return TranscoderMetrics(
        nmse=float(sq_err.sum() / sq_dev.sum().clamp_min(1e-12)),
        nmse_per_layer=nmse_layers,
        l0=sum(l0_layers) / L,
        l0_per_layer=l0_layers,
        dead_fraction=float((~fired).float().mean()),
        top1_agreement=agree / n_answers,
        kl=kl / n_answers,
        model_loss=ce_model / n_answers if targets is not None else None,
        replacement_loss=ce_repl / n_answers if targets is not None else None,
        model_accuracy=acc_model / n_answers if targets is not None else None,
        replacement_accuracy=acc_repl / n_answers if targets is not None else None,
        n_inputs=int(tokens.shape[0]),
    )


def __getattr__(name: str) -> Any:
    """`train_transcoder` and `TrainLog` live in transcoder_train.py; importable from here too."""
    if name in ("train_transcoder", "TrainLog"):
        from circuitlab.extraction import transcoder_train

        return getattr(transcoder_train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
