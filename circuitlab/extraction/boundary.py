"""Boundary statistics (interface step 3): the latent representation where a circuit reads
(each MLP's input) and writes (each MLP's output) at the answer positions.

The vectors of every site are gathered into one float32 tensor per site, allocated once, and
the statistics run over chunks of rows in float64: a 5x5 grid task has 500,000 answer vectors
per site, whose float64 copy and centred copy took 1 GB each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CHUNK_ELEMENTS = 1 << 20  # float64 elements per chunk of rows (8 MiB)


@dataclass(frozen=True)
class BoundaryStats:
    """A latent representation at one hook point, over the answer positions of the inputs.

    stats: n_vectors, mean_norm, norm_std, mean_vector_norm (norm of the mean vector),
    mean_abs_mean (mean over dimensions of |per-dimension mean|), mean_std / min_std / max_std
    (over dimensions of the per-dimension std), effective_rank (Roy & Vetterli 2007: exp of the
    entropy of the normalised singular values of the centred data), participation_ratio
    ((sum lambda)^2 / sum lambda^2 of the covariance eigenvalues) and rank_99 (components for 99%
    of the variance).
    """

    site: str
    dim: int
    stats: dict[str, float]


def boundary_stats(site: str, vectors: torch.Tensor) -> BoundaryStats:
    """Statistics of vectors (n, D) of one representation (see BoundaryStats), in two passes
    over chunks of rows: the mean, then the centred second moments."""
    x = vectors.detach().reshape(-1, vectors.shape[-1])
    n, d = x.shape
    step = max(1, CHUNK_ELEMENTS // max(d, 1))

    def chunks() -> Iterator[torch.Tensor]:
        for lo in range(0, n, step):
            yield x[lo : lo + step].to(torch.float64)

    sums, norms = torch.zeros(d, dtype=torch.float64), []
    for chunk in chunks():
        sums += chunk.sum(0)
        norms.append(chunk.norm(dim=1))
    norms = torch.cat(norms) if norms else torch.zeros(0, dtype=torch.float64)
    mean = sums / n
    gram = torch.zeros(d, d, dtype=torch.float64)
    for chunk in chunks():
        centred = chunk - mean  # not in place: a float64 chunk is the caller's tensor
        gram += centred.T @ centred
    std = (gram.diagonal() / n).sqrt()
    eig = torch.linalg.eigvalsh(gram / max(n, 1)).clamp(min=0).flip(0)
    total = float(eig.sum())
    if total > 0:
        sv = eig.sqrt()
        prob = sv / sv.sum()
        entropy = float(-(prob[prob > 0] * prob[prob > 0].log()).sum())
        effective_rank = float(np.exp(entropy))
        participation = total**2 / float(eig.pow(2).sum())
        rank_99 = int((torch.cumsum(eig, 0) / total < 0.99).sum()) + 1
    else:
        effective_rank, participation, rank_99 = 0.0, 0.0, 0
    stats = {
        "n_vectors": float(n),
        "mean_norm": float(norms.mean()),
        "norm_std": float(norms.std(correction=0)),
        "mean_vector_norm": float(mean.norm()),
        "mean_abs_mean": float(mean.abs().mean()),
        "mean_std": float(std.mean()),
        "min_std": float(std.min()),
        "max_std": float(std.max()),
        "effective_rank": effective_rank,
        "participation_ratio": participation,
        "rank_99": float(min(rank_99, d)),
    }
    return BoundaryStats(site, d, stats)


def boundary_sites(model: Any) -> tuple[list[str], list[str]]:
    """Hook points where each layer's circuit reads and writes: the MLP's input and output, or
    (attention-only models) the residual stream before the block and the attention output."""
    layers = range(model.cfg.n_layers)
    if model.cfg.d_mlp:
        return [f"blocks.{l}.hook_mlp_in" for l in layers], [
            f"blocks.{l}.hook_mlp_out" for l in layers
        ]
    return [f"blocks.{l}.hook_resid_pre" for l in layers], [
        f"blocks.{l}.hook_attn_out" for l in layers
    ]


@torch.no_grad()
def measure_boundaries(
    model: Any, tokens: torch.Tensor, batch_size: int = 4096
) -> tuple[list[BoundaryStats], list[BoundaryStats]]:
    """Boundary statistics at the answer positions over `tokens` (n, S)."""
    reads, writes = boundary_sites(model)
    answers = list(model.cfg.answer_positions)
    sites, q = set(reads + writes), len(answers)
    collected: dict[str, torch.Tensor] = {}
    for start in range(0, len(tokens), batch_size):
        _, cache = model.run_with_cache(
            tokens[start : start + batch_size], names=lambda n: n in sites, answers_only=True
        )
        for name, act in cache.items():
            # the last block computes only the answer positions; earlier ones every position
            at = act if act.shape[1] == q else act[:, answers]
            at = at.reshape(-1, act.shape[-1])
            if name not in collected:
                collected[name] = at.new_empty(len(tokens) * q, at.shape[-1])
            collected[name][start * q : start * q + len(at)] = at
        del cache
    return (
        [boundary_stats(n, collected[n]) for n in reads],
        [boundary_stats(n, collected[n]) for n in writes],
    )
