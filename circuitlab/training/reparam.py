"""Exact reparametrizations that concentrate a model's weights before magnitude pruning.

Magnitude pruning compares |w| entry by entry, so it depends on the basis the weights are
written in. Without LayerNorm that basis is free in three places, and a model trained from a
random init spreads every feature over all of them:

- the residual stream: any orthogonal R (embeddings, W_O, W_out and the biases written into
  it times R; W_Q, W_K, W_V, W_in and W_U read through R^T), and any positive scale per
  residual direction (writers times c, readers divided by c);
- each head's value space (W_V times U, W_O by U^T) and its query-key space (W_Q and W_K times
  the same orthogonal S, or scaled by c and 1/c per dimension: q.k is unchanged);
- each ReLU neuron's scale (W_in column and b_in times c > 0, W_out row divided by c).

`principal_basis` rotates the residual stream and every head space to the principal axes of
their activations over the given inputs, then balances each direction's scale between what
writes it and what reads it (for query-key dimensions: between the queries' and the keys'
sizes; for neurons: between W_in and W_out). A direction the model barely uses ends with small
weights on both sides, which magnitude pruning then removes. The logits are unchanged up to
float rounding (a test checks 1e-4 relative on a trained model).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from circuitlab.models import ModelConfig, Transformer

Params = dict[str, Tensor]
EPS = 1e-12


class ReparamError(ValueError):
    """A model whose weights cannot be reparametrized this way (LayerNorm fixes the basis)."""


def _eigvecs(moment: Tensor) -> Tensor:
    """Eigenvectors of a symmetric second-moment matrix, largest eigenvalue first."""
    values, vectors = torch.linalg.eigh(moment.double())
    return vectors.flip(1)


def varimax(loadings: Tensor, iters: int = 100, tol: float = 1e-8) -> Tensor:
    """The orthogonal T (k, k) that maximizes the variance of the squared entries of
    loadings @ T (n, k), rows normalized first (Kaiser 1958): each row then loads on as few
    columns as it can. Principal axes are unique only up to rotation where variances tie
    (a cosine and a sine of one frequency, or several frequencies of equal weight); this picks
    the rotation inside those ties that makes the readers sparse."""
    x = loadings.double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(EPS)
    n, k = x.shape
    rotation = torch.eye(k, dtype=torch.float64)
    last = 0.0
    for _ in range(iters):
        y = x @ rotation
        u, sv, vt = torch.linalg.svd(x.T @ (y.pow(3) - y * (y.pow(2).sum(0) / n)))
        rotation = u @ vt
        if sv.sum() < last * (1 + tol):
            break
        last = float(sv.sum())
    return rotation


def _moment(x: Tensor) -> Tensor:
    flat = x.reshape(-1, x.shape[-1]).double()
    return flat.T @ flat / max(flat.shape[0], 1)


def _norms(*parts: Tensor) -> Tensor:
    """Root of the summed squares of each part over all but its last axis (a residual or head
    direction's weights on one side)."""
    return torch.sqrt(sum(p.double().pow(2).reshape(-1, p.shape[-1]).sum(0) for p in parts))


def _usable(scale: Tensor) -> Tensor:
    """Per-direction scales, 1 where a direction has no weights to balance (0, inf or nan)."""
    return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))


def principal_basis(params: Mapping[str, Tensor], cfg: ModelConfig, tokens: Tensor) -> Params:
    """`params` rewritten in the principal, balanced basis of their activations on `tokens`
    (see the module docstring); the model computes the same function."""
    if cfg.normalization:
        raise ReparamError(
            "LayerNorm fixes the residual stream's basis (it centres and rescales every "
            "vector), so this model's weights cannot be rotated; prune it in its own basis"
        )
    model = Transformer(cfg)
    model.load_tl_state_dict({n: p.detach().float() for n, p in params.items()})
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, answers_only=False)
    p = {n: t.detach().double().clone() for n, t in params.items()}
    L, H = cfg.n_layers, cfg.n_heads
    blocks = [f"blocks.{layer}" for layer in range(L)]

    # -- the residual stream: rotate, then balance writers against readers ------------------
    sites = [cache[f"{b}.hook_resid_pre"] for b in blocks] + [
        cache[f"{b}.hook_resid_mid"] for b in blocks
    ]
    sites.append(cache[f"{blocks[-1]}.hook_resid_post"])
    moment = sum(_moment(s) for s in sites)
    R = _eigvecs(moment)
    if cfg.d_mlp:
        # inside the directions that hold the activations, the rotation that makes the neurons'
        # reads and writes sparse
        values = torch.linalg.eigvalsh(moment.double()).flip(0).clamp_min(0)
        k = int((values.cumsum(0) / values.sum() < 1 - 1e-5).sum()) + 1
        top = R[:, :k]
        loads = [torch.cat([p[f"{b}.mlp.W_in"].T, p[f"{b}.mlp.W_out"]]) @ top for b in blocks]
        R = torch.cat([top @ varimax(torch.cat(loads)), R[:, k:]], dim=1)
    writers = ["embed.W_E", "pos_embed.W_pos"] + [f"{b}.attn.W_O" for b in blocks]
    writers += [f"{b}.attn.b_O" for b in blocks]
    if cfg.d_mlp:
        writers += [f"{b}.mlp.W_out" for b in blocks] + [f"{b}.mlp.b_out" for b in blocks]
    readers = [f"{b}.attn.W_{x}" for b in blocks for x in "QKV"]  # (H, D, E): D is axis -2
    if cfg.d_mlp:
        readers += [f"{b}.mlp.W_in" for b in blocks]  # (D, F)
    readers.append("unembed.W_U")  # (D, O)
    for n in writers:
        p[n] = p[n] @ R
    for n in readers:
        p[n] = R.T @ p[n]
    read_rows = [p[n].transpose(-1, -2) for n in readers]  # last axis = the residual direction
    scale = torch.sqrt(_norms(*read_rows) / _norms(*(p[n] for n in writers)).clamp_min(EPS))
    scale = _usable(scale)
    for n in writers:
        p[n] = p[n] * scale
    for n in readers:
        p[n] = p[n] / scale.unsqueeze(-1)

    # -- each head: value space and query-key space ----------------------------------------
    for b in blocks:
        z, q, k = (cache[f"{b}.attn.hook_{x}"] for x in "zqk")
        for h in range(H):
            U = _eigvecs(_moment(z[..., h, :]))
            p[f"{b}.attn.W_V"][h] = p[f"{b}.attn.W_V"][h] @ U
            p[f"{b}.attn.b_V"][h] = p[f"{b}.attn.b_V"][h] @ U
            p[f"{b}.attn.W_O"][h] = U.T @ p[f"{b}.attn.W_O"][h]
            c = torch.sqrt(
                _norms(p[f"{b}.attn.W_O"][h].T) / _norms(p[f"{b}.attn.W_V"][h]).clamp_min(EPS)
            )
            c = _usable(c)
            p[f"{b}.attn.W_V"][h] = p[f"{b}.attn.W_V"][h] * c
            p[f"{b}.attn.b_V"][h] = p[f"{b}.attn.b_V"][h] * c
            p[f"{b}.attn.W_O"][h] = p[f"{b}.attn.W_O"][h] / c.unsqueeze(-1)

            S = _eigvecs(_moment(q[..., h, :]))
            for x in "QK":
                p[f"{b}.attn.W_{x}"][h] = p[f"{b}.attn.W_{x}"][h] @ S
                p[f"{b}.attn.b_{x}"][h] = p[f"{b}.attn.b_{x}"][h] @ S
            q_size = (q[..., h, :].double() @ S).pow(2).reshape(-1, S.shape[0]).mean(0)
            k_size = (k[..., h, :].double() @ S).pow(2).reshape(-1, S.shape[0]).mean(0)
            c = (q_size / k_size.clamp_min(EPS)).pow(0.25)
            c = _usable(c).clamp(1e-6, 1e6)
            p[f"{b}.attn.W_Q"][h] = p[f"{b}.attn.W_Q"][h] / c
            p[f"{b}.attn.b_Q"][h] = p[f"{b}.attn.b_Q"][h] / c
            p[f"{b}.attn.W_K"][h] = p[f"{b}.attn.W_K"][h] * c
            p[f"{b}.attn.b_K"][h] = p[f"{b}.attn.b_K"][h] * c

        # -- each ReLU neuron's scale (GELU is not positively homogeneous) --------------------
        if cfg.d_mlp and cfg.act_fn == "relu":
            w_in, w_out = p[f"{b}.mlp.W_in"], p[f"{b}.mlp.W_out"]
            c = torch.sqrt(_norms(w_out.T) / _norms(w_in).clamp_min(EPS))
            c = _usable(c)
            p[f"{b}.mlp.W_in"] = w_in * c
            p[f"{b}.mlp.b_in"] = p[f"{b}.mlp.b_in"] * c
            p[f"{b}.mlp.W_out"] = w_out / c.unsqueeze(-1)
    dtype = next(iter(params.values())).dtype
    return {n: t.to(dtype) for n, t in p.items()}
