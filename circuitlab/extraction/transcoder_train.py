"""Training a transcoder (method: transcoder.py, steps 1-6) on MLP activations.

The activations are normalised batch by batch as they are drawn, not copied whole: a copy of
every input's activations per layer doubled the phase's memory on large tasks (a 5x5 grid task:
+0.5 GB), and x[index] / s is exactly (x / s)[index].
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from circuitlab import _precision
from circuitlab.extraction.activations import MLPActivations
from circuitlab.extraction.transcoder import (
    Transcoder,
    TranscoderConfig,
    TranscoderError,
    position_maps,
    reconstruct,
)


@dataclass
class TrainLog:
    """Loss terms every `log_every` steps, the number of resampled features, the wall time."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    mse: list[float] = field(default_factory=list)  # normalised MSE on the batch, all layers
    l0: list[float] = field(default_factory=list)  # active features per row, mean over layers
    resampled: int = 0
    seconds: float = 0.0
    precision: str = "fp32"  # what ran: "bf16", "fp32", or "fp32 (bf16 unsupported)"


@dataclass(frozen=True)
class _Normalised:
    """Every input's activations of one kind, per layer, read divided by the layer's scale:
    only the rows drawn are divided, so no normalised copy of all of them is held."""

    raw: list[Tensor]  # per layer (N, P_l, D)
    scale: Tensor  # (L,)

    def rows(self, index: Tensor) -> list[Tensor]:
        return [x[index] / self.scale[l] for l, x in enumerate(self.raw)]


def _rms(x: Tensor) -> Tensor:
    """Root mean squared norm / sqrt(D) of (N, P, D) rows: the per-coordinate scale."""
    return x.pow(2).sum(-1).mean().div(x.shape[-1]).sqrt().clamp_min(1e-8)


def train_transcoder(
    acts: MLPActivations,
    cfg: TranscoderConfig | None = None,
    *,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    log_every: int = 50,
    progress: bool = False,
    threads: int | None = 1,
) -> tuple[Transcoder, TrainLog]:
    """Train a transcoder on MLP activations; deterministic given `cfg.seed`.

    `callback(step, stats)` receives loss, mse, l0 and lambda every `log_every` steps;
    `progress=True` shows a rich progress bar on stderr. `threads`: torch threads while
    training (restored afterwards); the matrices are small, and on a busy 2-core machine a
    second thread made steps ~6x slower (measured), so one is the default.
    """
    with _torch_threads(threads):
        return _train(acts, cfg or TranscoderConfig(), callback, log_every, progress)


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(
    acts: MLPActivations,
    cfg: TranscoderConfig,
    callback: Callable[[int, dict[str, float]], None] | None,
    log_every: int,
    progress: bool,
) -> tuple[Transcoder, TrainLog]:

    L, D, N = acts.n_layers, acts.d_model, acts.n_inputs
    if L == 0 or N == 0:
        raise TranscoderError("no activations to train on")
    start = time.perf_counter()
    # bf16: the step's matmuls under autocast; parameters, Adam state and the loss stay float32
    # (every matmul output is added to a float32 bias or target, so the loss terms are float32)
    precision, precision_label = _precision.resolve(cfg.precision, "cpu")
    gen = torch.Generator().manual_seed(cfg.seed)
    maps = position_maps(acts.positions)
    # 1. normalise each layer's inputs and outputs to mean squared norm D
    s_in = torch.stack([_rms(x) for x in acts.mlp_in])
    s_out = torch.stack([_rms(y) for y in acts.mlp_out])
    xs, ys = _Normalised(acts.mlp_in, s_in), _Normalised(acts.mlp_out, s_out)
    tc = Transcoder(cfg, L, D)
    var = []  # per row
    with torch.no_grad():
        for t, y in enumerate(acts.mlp_out):
            normalised = y / s_out[t]  # one layer at a time, centred in place
            mean = normalised.mean((0, 1))
            tc.b_dec[t].copy_(mean)
            var.append(normalised.sub_(mean).pow_(2).sum(-1).mean())
            del normalised
    var = torch.stack(var)
    opt = torch.optim.Adam(tc.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    decay_from = int(cfg.steps * (1 - cfg.lr_decay))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: 1.0 if s < decay_from else max(0.0, (cfg.steps - s) / (cfg.steps - decay_from)),
    )
    since_fired = torch.zeros(L, cfg.n_features, dtype=torch.long)
    log = TrainLog()
    batch = min(cfg.batch_size, N)
    ramp = max(1, int(cfg.steps * cfg.sparsity_warmup))
    with _progress_bar(progress, cfg.steps) as advance:
        for step in range(cfg.steps):
            index = torch.randint(0, N, (batch,), generator=gen)
            xb, yb = xs.rows(index), ys.rows(index)
            lam = cfg.sparsity_coeff * min(1.0, (step + 1) / ramp)
            with _precision.autocast(precision, "cpu"):
                pres = [tc.pre_activations(l, xb[l]).float() for l in range(L)]
                a = [tc.activate(l, pres[l]) for l in range(L)]
                recon = [r.float() for r in reconstruct(tc, a, maps)]
                errs = torch.stack([(yb[t] - recon[t]).pow(2).sum(-1).mean() for t in range(L)])
                loss = errs.sum()
                norms = tc.decoder_norms()
                if cfg.activation != "topk":
                    sparsity = sum(
                        torch.tanh(cfg.sparsity_c * norms[l] * a[l]).sum(-1).mean()
                        for l in range(L)
                    )
                    floor = (
                        [tc.threshold(l) for l in range(L)]
                        if cfg.activation == "jumprelu"
                        else [torch.zeros(()) for _ in range(L)]
                    )
                    pre_pen = sum(
                        (F.relu(floor[l] - pres[l]) * norms[l]).sum(-1).mean() for l in range(L)
                    )
                    loss = loss + lam * sparsity + cfg.pre_act_coeff * pre_pen
                elif cfg.aux_k_coeff:
                    aux = _aux_k_loss(tc, pres, yb, recon, since_fired, cfg)
                    loss = loss + cfg.aux_k_coeff * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                fired = torch.stack([(x > 0).flatten(0, -2).any(0) for x in a])
                since_fired = torch.where(fired, 0, since_fired + 1)
                if (
                    cfg.resample_every
                    and (step + 1) % cfg.resample_every == 0
                    and step < cfg.steps * cfg.resample_until
                ):
                    log.resampled += _resample(tc, opt, since_fired, cfg, xs, ys, maps, gen)
            if step % log_every == 0 or step == cfg.steps - 1:
                stats = {
                    "loss": float(loss.detach()),
                    "mse": float(errs.detach().sum() / var.sum()),
                    "l0": float(sum((x > 0).float().sum(-1).mean() for x in a) / L),
                    "lambda": lam,
                }
                log.steps.append(step)
                log.loss.append(stats["loss"])
                log.mse.append(stats["mse"])
                log.l0.append(stats["l0"])
                if callback is not None:
                    callback(step, stats)
                advance(step, stats)
    # 6. fold the normalisation into the weights: pre-activations and thresholds are unchanged
    with torch.no_grad():
        for l in range(L):
            tc.W_enc[l].div_(s_in[l])
            tc.b_dec[l].mul_(s_out[l])
            for k in range(tc.n_targets(l)):
                tc.W_dec[l][k].mul_(s_out[l + k])
    log.seconds = time.perf_counter() - start
    log.precision = precision_label
    return tc.eval(), log


def _aux_k_loss(
    tc: Transcoder,
    pres: list[Tensor],
    ys: list[Tensor],
    recon: list[Tensor],
    since_fired: Tensor,
    cfg: TranscoderConfig,
) -> Tensor:
    """AuxK (Gao et al. 2024): dead TopK features, which get no gradient from the main loss,
    learn to reconstruct the residual with their top 2k pre-activations (same-layer decoders)."""
    total = torch.zeros(())
    for l, pre in enumerate(pres):
        dead = since_fired[l] >= cfg.dead_window
        n_dead = int(dead.sum())
        if not n_dead:
            continue
        values, index = pre.masked_fill(~dead, float("-inf")).topk(min(2 * cfg.top_k, n_dead), -1)
        a = torch.zeros_like(pre).scatter(-1, index, F.relu(values))
        residual = (ys[l] - recon[l]).detach()
        total = total + (residual - (a @ tc.W_dec[l][0]).float()).pow(2).sum(-1).mean()
    return total


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int, dict[str, float]], None]]:
    if not enabled:
        yield lambda step, stats: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("transcoder"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=total, info="")

        def advance(step: int, stats: dict[str, float]) -> None:
            info = f"mse {stats['mse']:.4f}  L0 {stats['l0']:.1f}  loss {stats['loss']:.3f}"
            bar.update(task, completed=step + 1, info=info)

        yield advance


@torch.no_grad()
def _resample(
    tc: Transcoder,
    opt: torch.optim.Optimizer,
    since_fired: Tensor,
    cfg: TranscoderConfig,
    xs: _Normalised,
    ys: _Normalised,
    maps: dict[tuple[int, int], Tensor],
    gen: torch.Generator,
) -> int:
    """Re-initialise dead features towards badly reconstructed rows; returns how many."""
    dead = since_fired >= cfg.dead_window
    if not dead.any():
        return 0
    n = xs.raw[0].shape[0]
    index = torch.randint(0, n, (min(n, 4 * cfg.batch_size),), generator=gen)
    xb, yb = xs.rows(index), ys.rows(index)
    recon = reconstruct(tc, [tc.encode(l, xb[l]) for l in range(tc.n_layers)], maps)
    total = 0
    for l in range(tc.n_layers):
        which = dead[l].nonzero().flatten()
        if not len(which):
            continue
        rows_x = xb[l].flatten(0, -2)  # (B * P_l, D)
        err = (yb[l] - recon[l]).flatten(0, -2)
        weight = err.pow(2).sum(-1)
        if float(weight.sum()) <= 0:
            continue
        pick = torch.multinomial(weight, len(which), replacement=True, generator=gen)
        alive = ~dead[l]
        enc_norm = tc.W_enc[l][:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
        x_dir = F.normalize(rows_x[pick], dim=-1)  # (n, D)
        e_dir = F.normalize(err[pick], dim=-1)
        tc.W_enc[l][:, which] = (x_dir * 0.2 * enc_norm).T
        tc.b_enc[l][which] = 0.0
        tc.log_threshold[l][which] = math.log(cfg.threshold_init)
        tc.W_dec[l][:, which] = 0.0
        tc.W_dec[l][0, which] = e_dir * 0.1
        since_fired[l, which] = 0
        for param, slicer in (
            (tc.W_enc, (l, slice(None), which)),
            (tc.b_enc, (l, which)),
            (tc.log_threshold, (l, which)),
            (tc.W_dec[l], (slice(None), which)),
        ):
            state = opt.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][slicer] = 0.0
        total += len(which)
    return total
