"""Attribution graphs in the local replacement model, exact and batched over prompts.

Method (Ameisen et al. 2025, "Circuit tracing"; circuit-tracer), with one difference in how it
is computed: circuit-tracer runs backward passes per batch of nodes and one prompt at a time;
small models let us write the Jacobians of the frozen linear paths as explicit einsums and run
them over hundreds of prompts at once.

1. Run the real model once and keep what the local replacement model freezes: attention
   patterns, LayerNorm scales, and every layer's MLP input and output.
2. Encode each MLP input with the transcoder: feature activations, reconstructions, and error
   nodes e_t = MLP_out_t - reconstruction_t, so the replacement model reproduces the real
   forward exactly. Logit targets per answer position: the smallest top-k reaching 95%
   probability (at most 10), each read through its demeaned unembedding column.
3. With patterns and scales frozen and every MLP output held at reconstruction + error, the
   residual stream is linear in what the nodes write into it: token embeddings (with positional
   embeddings) into x_0, and each feature's decoders and each error of layer t into x_{t+1}.
4. Readers (a feature's encoder direction through the frozen LayerNorm, a logit's demeaned
   unembedding through the frozen final LayerNorm) are pulled back layer by layer through the
   frozen attention (the exact Jacobian, by einsums over heads and positions) to every residual
   site. Edge (source -> reader) = the source's written vector . the reader's pulled-back
   direction at the source's site and position. A feature's pre-activation is the sum of its
   in-edges plus the part carried by biases; likewise a logit target's demeaned logit.
5. QK attribution (beyond circuit-tracer): the residual at attention layer l is the sum of the
   nodes' vectors pushed forward through the frozen earlier layers plus a bias part, and the
   query and key vectors are linear in it (LayerNorm scales frozen), so every attention score
   splits exactly into (query source, key source) pair terms (`QKAttribution`).

Phases: "features" (forward and encode every chunk of prompts, which fixes one padded node
layout for all of them), then "edges" (edges and QK pairs chunk by chunk). On the grokked
p = 113 model (512 features, ~82 active per prompt) all 12,769 graphs take ~7-12 s on one
thread, against ~0.14 s per prompt for circuit-tracer (benchmarks/bench_attribution.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from circuitlab.extraction.activations import check_tokens, layer_positions
from circuitlab.extraction.graph import AttributionGraph, QKAttribution
from circuitlab.extraction.transcoder import Transcoder
from circuitlab.models import Transformer

# Readers of layer 0 are matched against precomputed (position, token) tables when these have
# at most this many entries (features x heads x n_ctx x d_vocab); larger models take the
# general path.
TOKEN_TABLE_LIMIT = 1 << 25
# `attribute` keeps the first phase's forward passes for the second when their dense feature
# activations take at most this many bytes; otherwise it runs them again.
FREEZE_CACHE = 2 * 10**9


class AttributionError(ValueError):
    """A model and transcoder that do not fit together, or a bad attribution setting."""


@dataclass(frozen=True)
class AttributionConfig:
    """How graphs are built. Defaults are circuit-tracer's."""

    max_logits: int = 10  # logit targets per answer position, at most
    logit_probability: float = 0.95  # smallest top-k whose probabilities reach this
    batch_size: int = 256  # prompts per chunk of the edge computation (memory ~ batch * N^2)
    qk: bool = True  # also attribute attention scores (memory ~ prompts * heads * sources^2)
    # `attribute` refuses QK pairs larger than this (use iter_attribute or qk=False instead)
    qk_max_gb: float = 2.0
    # torch threads while attributing (restored afterwards); 0 keeps the current setting. The
    # products are small: on a busy 2-core machine a second thread made the whole p = 113 run
    # 10x slower (measured, thread-pool contention), so one is the default.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.max_logits < 1:
            raise AttributionError(f"max_logits must be >= 1, got {self.max_logits}")
        if not 0.0 < self.logit_probability <= 1.0:
            raise AttributionError(
                f"logit_probability must be in (0, 1], got {self.logit_probability}"
            )
        if self.batch_size < 1:
            raise AttributionError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.threads < 0:
            raise AttributionError(f"threads must be >= 0 (0 = unchanged), got {self.threads}")


# ------------------------------------------------------------------------------------------------
# weights of the frozen model, prompt-independent


def _centered(w: Tensor) -> Tensor:
    """C @ w for a matrix reading the residual (rows = d_model): LayerNorm's mean removal."""
    return w - w.mean(0, keepdim=True)


@dataclass
class _Weights:
    """Frozen-path matrices. Shapes: H heads, D d_model, E d_head, F features, O outputs."""

    w_vc: list[Tensor]  # per layer (H, D, E): C diag(ln1.w) W_V, the value map from the residual
    w_qc: list[Tensor]  # per layer (H, D, E): same for queries
    w_kc: list[Tensor]  # per layer (H, D, E): same for keys
    w_o: list[Tensor]  # per layer (H, E, D)
    enc: list[Tensor]  # per layer (D, F): C diag(ln2.w) W_enc, a feature's reader at resid_mid
    dec: dict[tuple[int, int], Tensor]  # (source, target) -> (F, D)
    unembed: Tensor  # (D, O): C diag(ln_final.w) (W_U - mean over outputs)
    embed: Tensor  # (V, D)
    pos_embed: Tensor  # (n_ctx, D)
    # a reader at resid_mid of layer l seen through that layer's W_O: what its gradient with
    # respect to the head outputs z is, before the prompt's LayerNorm scale
    enc_o: list[Tensor]  # per layer (F, H, E)
    unembed_o: Tensor  # (O, H, E) through the last layer's W_O
    # readers of layer 0 against every (position, token) embedding: (direct (X, S, V),
    # through the heads' values (X, H, S, V)); None when larger than TOKEN_TABLE_LIMIT
    token_enc: tuple[Tensor, Tensor] | None
    token_unembed: tuple[Tensor, Tensor] | None  # only for 1-layer models
    dec_unembed: dict[int, Tensor]  # source layer -> (F, O): decoder to the last MLP x unembed


def _encoder(transcoder: Transcoder, layer: int, d_model: int) -> Tensor:
    """W_enc (D, F) read off the affine `pre_activations` (the interface of part A)."""
    probe = torch.cat([torch.zeros(1, d_model), torch.eye(d_model)])
    pre = transcoder.pre_activations(layer, probe).detach().float()
    w = pre[1:] - pre[:1]
    x = torch.randn(4, d_model, generator=torch.Generator().manual_seed(0))
    expected = transcoder.pre_activations(layer, x).detach().float()
    if not torch.allclose(x @ w + pre[0], expected, rtol=1e-4, atol=1e-4):
        raise AttributionError(
            f"the transcoder's pre-activations of layer {layer} are not affine in the MLP input"
        )
    return w


def _weights(model: Transformer, transcoder: Transcoder) -> _Weights:
    cfg = model.cfg
    p = {n: t.detach().float() for n, t in model.tl_state_dict().items()}
    ln = cfg.normalization == "LN"
    w_vc, w_qc, w_kc, w_o, enc = [], [], [], [], []
    for l in range(cfg.n_layers):
        b = f"blocks.{l}"
        g1 = p[f"{b}.ln1.w"] if ln else torch.ones(cfg.d_model)
        g2 = p[f"{b}.ln2.w"] if ln else torch.ones(cfg.d_model)
        for out, x in ((w_vc, "V"), (w_qc, "Q"), (w_kc, "K")):
            w = g1.view(1, -1, 1) * p[f"{b}.attn.W_{x}"]
            out.append(w - w.mean(1, keepdim=True) if ln else w)
        w_o.append(p[f"{b}.attn.W_O"])
        w = g2.view(-1, 1) * _encoder(transcoder, l, cfg.d_model)
        enc.append(_centered(w) if ln else w)
    dec = {}
    for s in range(cfg.n_layers):
        for t in range(s, cfg.n_layers):
            if transcoder.cfg.kind == "cross_layer" or t == s:
                dec[(s, t)] = transcoder.decoder(s, t).detach().float()
    u = p["unembed.W_U"] - p["unembed.W_U"].mean(1, keepdim=True)
    if ln:
        u = _centered(p["ln_final.w"].view(-1, 1) * u)
    enc_o = [torch.einsum("df,hed->fhe", enc[l], w_o[l]) for l in range(cfg.n_layers)]
    u_o = torch.einsum("do,hed->ohe", u, w_o[-1])
    # every (position, token) embedding, directly and through layer 0's value maps
    emb = p["pos_embed.W_pos"].unsqueeze(1) + p["embed.W_E"].unsqueeze(0)  # (S, V, D)
    emb_v = torch.einsum("svd,hde->hsve", emb, w_vc[0])

    def table(direct: Tensor, image: Tensor) -> tuple[Tensor, Tensor] | None:
        if image.shape[0] * image.shape[1] * emb.shape[0] * emb.shape[1] > TOKEN_TABLE_LIMIT:
            return None
        return (
            torch.einsum("dx,svd->xsv", direct, emb),
            torch.einsum("xhe,hsve->xhsv", image, emb_v),
        )

    return _Weights(
        w_vc,
        w_qc,
        w_kc,
        w_o,
        enc,
        dec,
        u,
        p["embed.W_E"],
        p["pos_embed.W_pos"],
        enc_o,
        u_o,
        token_enc=table(enc[0], enc_o[0]),
        token_unembed=table(u, u_o) if cfg.n_layers == 1 else None,
        dec_unembed={s: d @ u for (s, t), d in dec.items() if t == cfg.n_layers - 1},
    )


# ------------------------------------------------------------------------------------------------
# phase 1: the real forward pass, frozen quantities, features and logit targets


@dataclass
class _Frozen:
    """One chunk of prompts: what the local replacement model freezes, and the nodes."""

    tokens: Tensor  # (B, S)
    coef: list[Tensor]  # per layer (B, H, S, S): pattern / ln1 scale at the key position
    inv_scale1: list[Tensor]  # per layer (B, S): 1 / ln1 scale (ones without LayerNorm)
    inv_scale2: list[Tensor]  # per layer (B, S): 1 / ln2 scale
    inv_scale_final: Tensor  # (B, S)
    acts: list[Tensor]  # per layer (B, S, F), zero where the position cannot reach a logit
    pre: list[Tensor]  # per layer (B, S, F)
    errors: list[Tensor]  # per layer (B, S, D)
    logits: Tensor  # (B, S, O)
    q: list[Tensor]  # per layer (B, S, H, E) (only when QK attribution is on)
    k: list[Tensor]


def _freeze(model: Transformer, transcoder: Transcoder, tokens: Tensor, want_qk: bool) -> _Frozen:
    cfg = model.cfg
    ln = cfg.normalization == "LN"
    names = {"ln_final.hook_scale"} if ln else set()
    for l in range(cfg.n_layers):
        b = f"blocks.{l}"
        names |= {f"{b}.attn.hook_pattern", f"{b}.hook_mlp_in", f"{b}.hook_mlp_out"}
        if ln:
            names |= {f"{b}.ln1.hook_scale", f"{b}.ln2.hook_scale"}
        if want_qk:
            names |= {f"{b}.attn.hook_q", f"{b}.attn.hook_k"}
    logits, cache = model.run_with_cache(tokens, names=lambda n: n in names, answers_only=False)
    bsz, s = tokens.shape
    ones = torch.ones(bsz, s)

    def inv(name: str) -> Tensor:
        return 1.0 / cache[name][..., 0].float() if ln else ones

    positions = layer_positions(cfg, s)
    coef, inv1, inv2, acts, pre, recon_in = [], [], [], [], [], []
    for l in range(cfg.n_layers):
        b = f"blocks.{l}"
        inv1.append(inv(f"{b}.ln1.hook_scale"))
        inv2.append(inv(f"{b}.ln2.hook_scale"))
        coef.append(cache[f"{b}.attn.hook_pattern"].float() * inv1[-1].view(bsz, 1, 1, s))
        x = cache[f"{b}.hook_mlp_in"].float()
        pre_l = transcoder.pre_activations(l, x).detach().float()
        a = transcoder.encode(l, x).detach().float()
        recon_in.append(a)
        reach = torch.zeros(s, dtype=torch.bool)
        reach[list(positions[l])] = True
        acts.append(a * reach.view(1, s, 1))
        pre.append(pre_l)
    # errors from the full reconstruction (every position), so the replacement model is exact
    recon = [r.detach().float() for r in transcoder.decode(recon_in)]
    errors = [cache[f"blocks.{l}.hook_mlp_out"].float() - recon[l] for l in range(cfg.n_layers)]
    return _Frozen(
        tokens=tokens,
        coef=coef,
        inv_scale1=inv1,
        inv_scale2=inv2,
        inv_scale_final=inv("ln_final.hook_scale"),
        acts=acts,
        pre=pre,
        errors=errors,
        logits=logits.float(),
        q=[cache[f"blocks.{l}.attn.hook_q"].float() for l in range(cfg.n_layers) if want_qk],
        k=[cache[f"blocks.{l}.attn.hook_k"].float() for l in range(cfg.n_layers) if want_qk],
    )


def _logit_targets(logits: Tensor, cfg: AttributionConfig) -> tuple[Tensor, Tensor, Tensor]:
    """logits (B, O) -> top tokens (B, k), probabilities (B, k), count (B,) of targets kept."""
    probs = logits.softmax(-1)
    k = min(cfg.max_logits, probs.shape[-1])
    top_p, top_i = probs.topk(k, dim=-1)
    cum = top_p.cumsum(-1)
    target = torch.full_like(cum[:, :1], cfg.logit_probability)
    count = (torch.searchsorted(cum, target).squeeze(-1) + 1).clamp_max(k)
    return top_i, top_p, count


# ------------------------------------------------------------------------------------------------
# phase 2: node layout shared by every prompt


@dataclass
class _Layout:
    feature_offsets: tuple[int, ...]  # (L + 1,)
    logit_offsets: tuple[int, ...]  # (Q + 1,) per answer position
    answers: tuple[int, ...]
    n_layers: int
    n_pos: int

    @property
    def n_features(self) -> int:
        return self.feature_offsets[-1]

    @property
    def n_logits(self) -> int:
        return self.logit_offsets[-1]

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def token_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.token_start + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_start + self.n_logits


def _offsets(counts: list[int]) -> tuple[int, ...]:
    return tuple(int(x) for x in np.concatenate([[0], np.cumsum(counts)]))


def _slots(mask: Tensor) -> tuple[Tensor, ...]:
    """mask (B, ...) -> nonzero indices (b, *rest) and each entry's rank within its prompt."""
    flat = mask.reshape(mask.shape[0], -1)
    rank = flat.long().cumsum(1) - 1
    idx = mask.nonzero(as_tuple=True)
    flat_idx = flat.nonzero(as_tuple=True)
    return (*idx, rank[flat_idx])


# ------------------------------------------------------------------------------------------------
# phase 3: edges


def _push(x: Tensor, coef: Tensor, w_o: Tensor, w_vc: Tensor) -> Tensor:
    """Residual footprints (B, N, S, D) at resid_pre -> at resid_mid through frozen attention."""
    v = torch.einsum("bnkd,hde->bnkhe", x, w_vc)
    z = torch.einsum("bnkhe,bhqk->bnqhe", v, coef)
    return x + torch.einsum("bnqhe,hed->bnqd", z, w_o)


@dataclass
class _ChunkNodes:
    features: Tensor  # (B, K, 3)
    mask: Tensor  # (B, K)
    acts: Tensor  # (B, K)
    pre: Tensor  # (B, K)
    logit_tokens: Tensor  # (B, T)
    logit_mask: Tensor  # (B, T)
    logit_probs: Tensor  # (B, T)
    logit_values: Tensor  # (B, T)


def _chunk_nodes(fr: _Frozen, layout: _Layout, cfg: AttributionConfig) -> _ChunkNodes:
    bsz = fr.tokens.shape[0]
    k_all = layout.n_features
    features = torch.zeros(bsz, k_all, 3, dtype=torch.long)
    mask = torch.zeros(bsz, k_all, dtype=torch.bool)
    acts = torch.zeros(bsz, k_all)
    pre = torch.zeros(bsz, k_all)
    for l, a in enumerate(fr.acts):
        b, pos, feat, rank = _slots(a != 0)
        slot = layout.feature_offsets[l] + rank
        features[b, slot] = torch.stack([torch.full_like(pos, l), pos, feat], dim=1)
        mask[b, slot] = True
        acts[b, slot] = a[b, pos, feat]
        pre[b, slot] = fr.pre[l][b, pos, feat]
    t_all = layout.n_logits
    tokens = torch.zeros(bsz, t_all, dtype=torch.long)
    lmask = torch.zeros(bsz, t_all, dtype=torch.bool)
    probs = torch.zeros(bsz, t_all)
    values = torch.zeros(bsz, t_all)
    for i, a in enumerate(layout.answers):
        logits = fr.logits[:, a]
        top_i, top_p, count = _logit_targets(logits, cfg)
        width = layout.logit_offsets[i + 1] - layout.logit_offsets[i]
        keep = torch.arange(top_i.shape[1]).view(1, -1) < count.view(-1, 1)
        sl = slice(layout.logit_offsets[i], layout.logit_offsets[i + 1])
        n = min(width, top_i.shape[1])
        tokens[:, sl][:, :n] = top_i[:, :n] * keep[:, :n]
        lmask[:, sl][:, :n] = keep[:, :n]
        probs[:, sl][:, :n] = top_p[:, :n] * keep[:, :n]
        demeaned = logits - logits.mean(-1, keepdim=True)
        values[:, sl][:, :n] = demeaned.gather(1, top_i[:, :n]) * keep[:, :n]
    return _ChunkNodes(features, mask, acts, pre, tokens, lmask, probs, values)


def _write_vectors(
    nodes: _ChunkNodes, w: _Weights, layout: _Layout, target: int, kind: str
) -> tuple[int, Tensor, Tensor]:
    """What feature slots [lo, hi) write into layer `target`'s MLP output:
    (lo, activation * decoder row (B, hi - lo, D), positions (B, hi - lo))."""
    off = layout.feature_offsets
    sources = [target] if kind == "per_layer" else list(range(target + 1))
    parts = [
        w.dec[(s, target)][nodes.features[:, off[s] : off[s + 1], 2]]
        * nodes.acts[:, off[s] : off[s + 1], None]
        for s in sources
    ]
    lo, hi = off[sources[0]], off[target + 1]
    return lo, torch.cat(parts, dim=1), nodes.features[:, lo:hi, 1]


def _position_edges(g: Tensor, vectors: Tensor, pos: Tensor) -> Tensor:
    """g (B, R, S, D) readers' gradients at a site, vectors (B, n, D) written at positions
    (B, n) -> edges (B, R, n). One product per position that holds a source."""
    out = torch.zeros(g.shape[0], g.shape[1], vectors.shape[1])
    for k in range(g.shape[2]):
        at_k = pos == k
        if bool(at_k.any()):
            out += torch.bmm(g[:, :, k], vectors.transpose(1, 2)) * at_k.unsqueeze(1)
    return out


@dataclass
class _PointReaders:
    """Readers that enter at one position: a block of feature slots or of logit slots."""

    rows: slice  # reader rows (features first, then logits)
    ids: Tensor  # (B, n) feature index or output token
    pos: Tensor  # (B, n)
    scale: Tensor  # (B, n) frozen 1/LayerNorm scale, 0 for padding
    direct: Tensor  # (D, X) the reader's direction in the residual (before the scale)
    image: Tensor  # (X, H, E) the same seen through the W_O of the layer that reads first
    tables: tuple[Tensor, Tensor] | None  # token tables when the layer reading first is 0

    def vec(self) -> Tensor:  # (B, n, D)
        return self.direct.T[self.ids] * self.scale.unsqueeze(-1)

    def head_grad(self) -> Tensor:  # (B, n, H, E)
        return self.image[self.ids] * self.scale.view(*self.scale.shape, 1, 1)


def _point_readers(
    fr: _Frozen, nodes: _ChunkNodes, w: _Weights, layout: _Layout, layer: int | None
) -> _PointReaders:
    """Feature readers of `layer`, or the logit readers (layer None)."""
    K = layout.n_features
    if layer is not None:
        off = layout.feature_offsets
        block = slice(off[layer], off[layer + 1])
        f, p = nodes.features[:, block, 2], nodes.features[:, block, 1]
        scale = fr.inv_scale2[layer].gather(1, p) * nodes.mask[:, block]
        tables = w.token_enc if layer == 0 else None
        return _PointReaders(block, f, p, scale, w.enc[layer], w.enc_o[layer], tables)
    pos = _logit_slot_positions(layout).expand(nodes.logit_tokens.shape)
    scale = fr.inv_scale_final.gather(1, pos) * nodes.logit_mask
    rows = slice(K, K + layout.n_logits)
    return _PointReaders(
        rows, nodes.logit_tokens, pos, scale, w.unembed, w.unembed_o, w.token_unembed
    )


def _logit_slot_positions(layout: _Layout) -> Tensor:
    """(1, T) answer position of every logit slot."""
    parts = [
        torch.full((layout.logit_offsets[i + 1] - layout.logit_offsets[i],), a)
        for i, a in enumerate(layout.answers)
    ]
    return torch.cat(parts).long().view(1, -1)


def _edges(
    fr: _Frozen, nodes: _ChunkNodes, w: _Weights, layout: _Layout, kind: str, out: Tensor
) -> None:
    """Write the adjacency of one chunk into `out` (B, N, N), zero on entry.

    Readers enter at one position (a feature at resid_mid of its layer, a logit at the final
    residual). Through the attention layer that reads them first their head-output gradient is
    a precomputed W_O image times the prompt's LayerNorm scale, spread over keys by the frozen
    pattern; at layer 0 their token edges are looked up in (position, token) tables. Readers
    carried down from later layers (multi-layer models) are pulled back with full einsums.
    """
    L, S = layout.n_layers, layout.n_pos
    bsz = fr.tokens.shape[0]
    K, T = layout.n_features, layout.n_logits
    n_src, R = layout.logit_start, K + T
    b_idx = torch.arange(bsz).view(bsz, 1)
    positions = torch.arange(S)
    tok_cols = slice(layout.token_start, layout.token_start + S)
    off = layout.feature_offsets

    def put(lo: int, cols: slice, value: Tensor, add: bool = False) -> None:
        """Reader rows lo:lo+n (rows < K are features, the rest logits) -> adjacency rows."""
        hi = lo + value.shape[1]
        for a, b, dst in ((lo, min(hi, K), lo), (max(lo, K), hi, n_src + max(lo, K) - K)):
            if b > a:
                target = out[:, dst : dst + b - a, cols]
                part = value[:, a - lo : b - lo]
                target.add_(part) if add else target.copy_(part)

    def err_cols(t: int) -> slice:
        return slice(layout.error_start + t * S, layout.error_start + (t + 1) * S)

    def take_sources(g: Tensor, lo: int, t: int) -> None:
        """Edges from what layer t's MLP output writes (errors, decoders) into readers lo:."""
        put(lo, err_cols(t), torch.einsum("brsd,bsd->brs", g, fr.errors[t]))
        src_lo, vectors, src_pos = _write_vectors(nodes, w, layout, t, kind)
        if vectors.shape[1]:
            block = slice(src_lo, src_lo + vectors.shape[1])
            put(lo, block, _position_edges(g, vectors, src_pos), add=True)

    def spread(g: Tensor, pos: Tensor) -> Tensor:
        """(B, n, D) at positions (B, n) -> (B, n, S, D)."""
        return (pos.unsqueeze(-1) == positions).unsqueeze(-1) * g.unsqueeze(2)

    logits = _point_readers(fr, nodes, w, layout, None)
    # the final residual: only logit readers, each at its answer position; decoders of the
    # last MLP through precomputed decoder x unembedding tables
    t = L - 1
    d = w.embed.shape[1]
    err = fr.errors[t].gather(1, logits.pos.unsqueeze(-1).expand(-1, -1, d))  # (B, T, D)
    at_pos = logits.pos.unsqueeze(-1) == positions  # (B, T, S)
    put(K, err_cols(t), at_pos * (logits.vec() * err).sum(-1, keepdim=True))
    for s, table in w.dec_unembed.items():
        block = slice(off[s], off[s + 1])
        f, p = nodes.features[:, block, 2], nodes.features[:, block, 1]
        val = table[f.unsqueeze(1), logits.ids.unsqueeze(2)]  # (B, T, K_s)
        same = p.unsqueeze(1) == logits.pos.unsqueeze(2)
        val = val * (logits.scale.unsqueeze(2) * nodes.acts[:, block].unsqueeze(1) * same)
        put(K, block, val)
    carried: Tensor | None = None  # (B, R - off[j + 1], S, D): gradients at resid_pre of j + 1
    for j in range(L - 1, -1, -1):
        coef = fr.coef[j]
        fresh = [_point_readers(fr, nodes, w, layout, j)] + ([logits] if j == L - 1 else [])
        if j == 0:
            # token edges of fresh readers from the tables: direct at the reader's position,
            # and through each head's value at every key position
            for pr in (p for p in fresh if p.tables is not None):
                direct, value = pr.tables
                tok_q = fr.tokens.gather(1, pr.pos)
                at = direct[pr.ids, pr.pos, tok_q] * pr.scale  # (B, n)
                heads = torch.arange(value.shape[1]).view(1, 1, -1, 1)
                looked = value[pr.ids[..., None, None], heads, positions, fr.tokens[:, None, None]]
                c_at = coef.permute(0, 2, 1, 3)[b_idx, pr.pos]  # (B, n, H, S)
                through = (looked * c_at).sum(2) * pr.scale.unsqueeze(-1)
                onehot = pr.pos.unsqueeze(-1) == positions
                put(pr.rows.start, tok_cols, onehot * at.unsqueeze(-1) + through)
            fresh = [p for p in fresh if p.tables is None]
        groups = []  # (reader rows, head-value gradients (B, n, S, H, E), residual part)
        for pr in fresh:
            # point readers: their head-output gradient is fixed; the pattern spreads it
            c_at = coef.permute(0, 2, 1, 3)[b_idx, pr.pos]  # (B, n, H, S)
            gv = torch.einsum("brhk,brhe->brkhe", c_at, pr.head_grad())
            groups.append((pr.rows, gv, spread(pr.vec(), pr.pos)))
        if carried is not None and j == 0:
            # the last pullback only meets the tokens: move each token's value vector through
            # W_O instead of every reader's gradient back through it (S*H dot products per
            # reader instead of an (H*E) x D product per reader and position)
            emb = w.embed[fr.tokens] + w.pos_embed[:S]
            emb_vo = torch.einsum("bkd,hde,hef->bkhf", emb, w.w_vc[0], w.w_o[0])
            through = torch.einsum("brqf,bkhf,bhqk->brk", carried, emb_vo, coef)
            direct = torch.einsum("brsd,bsd->brs", carried, emb)
            put(R - carried.shape[1], tok_cols, direct + through)
            carried = None
        if carried is not None:
            gz = torch.einsum("brqd,hed->brqhe", carried, w.w_o[j])
            gv = torch.einsum("brqhe,bhqk->brkhe", gz, coef)
            groups.append((slice(R - carried.shape[1], R), gv, carried))
        if j > 0:
            # rows off[j]:R, contiguous: layer-j features, (logits,) carried readers
            gv_all = torch.cat([g[1] for g in groups], 1)
            res_all = torch.cat([g[2] for g in groups], 1)
            carried = res_all + torch.einsum("brkhe,hde->brkd", gv_all, w.w_vc[j])
            take_sources(carried, R - carried.shape[1], j - 1)
            continue
        emb = w.embed[fr.tokens] + w.pos_embed[:S]
        emb_v = torch.einsum("bsd,hde->bshe", emb, w.w_vc[0])
        for rows, gv, res in groups:
            direct = torch.einsum("brsd,bsd->brs", res, emb)
            put(rows.start, tok_cols, direct + torch.einsum("brshe,bshe->brs", gv, emb_v))


# ------------------------------------------------------------------------------------------------
# phase 4: QK attribution


def _qk_sources(layout: _Layout, layer: int) -> Tensor:
    """Node indices of everything that writes into resid_pre of `layer`."""
    feats = torch.arange(layout.feature_offsets[layer])
    errs = layout.error_start + torch.arange(layer * layout.n_pos)
    toks = layout.token_start + torch.arange(layout.n_pos)
    return torch.cat([feats, errs, toks])


def _qk_query_positions(cfg, layer: int, seq_len: int) -> tuple[int, ...]:
    """Query positions whose attention output can reach an answer."""
    if layer == cfg.n_layers - 1:
        return tuple(cfg.answer_positions)
    return tuple(range(min(max(cfg.answer_positions) + 1, seq_len)))


def _qk_chunk(
    fr: _Frozen, nodes: _ChunkNodes, w: _Weights, layout: _Layout, kind: str, model_cfg
) -> list[tuple[Tensor, Tensor]]:
    """Per attention layer: (pairs (B, H, Qn, S, Ns+1, Ns+1), scores (B, H, Qn, S)).

    Footprints x (B, Ns, S, D) of the layer's sources (order of `_qk_sources`: features of
    earlier layers, errors of earlier layers, tokens) in its resid_pre; advanced to the next
    layer through the frozen attention, then the writes of this layer's MLP are added.
    """
    L, S = layout.n_layers, layout.n_pos
    bsz = fr.tokens.shape[0]
    off = layout.feature_offsets
    positions = torch.arange(S)
    emb = w.embed[fr.tokens] + w.pos_embed[:S]
    eye = torch.eye(S).view(1, S, S, 1)
    feats = torch.zeros(bsz, 0, S, emb.shape[-1])
    errs = torch.zeros(bsz, 0, S, emb.shape[-1])
    toks = eye * emb.unsqueeze(2)  # token at position i writes only there
    out = []
    for l in range(L):
        qpos = list(_qk_query_positions(model_cfg, l, S))
        x = torch.cat([feats, errs, toks], dim=1)
        e = w.w_qc[l].shape[-1]
        qc = torch.einsum("bnqd,hde->bnqhe", x[:, :, qpos], w.w_qc[l])
        qc = qc * fr.inv_scale1[l][:, qpos].view(bsz, 1, -1, 1, 1)
        kc = torch.einsum("bnkd,hde->bnkhe", x, w.w_kc[l]) * fr.inv_scale1[l].view(bsz, 1, S, 1, 1)
        q_bias = fr.q[l][:, qpos] - qc.sum(1)
        k_bias = fr.k[l] - kc.sum(1)
        qe = torch.cat([qc, q_bias.unsqueeze(1)], dim=1)
        ke = torch.cat([kc, k_bias.unsqueeze(1)], dim=1)
        pairs = torch.einsum("biqhe,bjkhe->bhqkij", qe, ke) / math.sqrt(e)
        causal = positions.view(1, S) <= torch.tensor(qpos).view(-1, 1)  # (Qn, S)
        pairs = pairs * causal.view(1, 1, len(qpos), S, 1, 1)
        scores = torch.einsum("bqhe,bkhe->bhqk", fr.q[l][:, qpos], fr.k[l]) / math.sqrt(e)
        out.append((pairs, scores * causal))
        if l == L - 1:
            break
        # advance to resid_pre of layer l + 1: attention l, then MLP l's writes
        feats, errs, toks = (_push(t, fr.coef[l], w.w_o[l], w.w_vc[l]) for t in (feats, errs, toks))
        errs = torch.cat([errs, eye * fr.errors[l].unsqueeze(2)], dim=1)
        src_lo, vectors, src_pos = _write_vectors(nodes, w, layout, l, kind)
        new = torch.zeros(bsz, off[l + 1] - off[l], S, emb.shape[-1])
        feats = torch.cat([feats, new], dim=1)
        onehot = (src_pos.unsqueeze(-1) == positions).unsqueeze(-1)  # (B, n, S, 1)
        feats[:, src_lo : off[l + 1]] += onehot * vectors.unsqueeze(2)
    return out


# ------------------------------------------------------------------------------------------------
# the public entry point


def _check(model: Transformer, transcoder: Transcoder) -> str:
    cfg = model.cfg
    if not cfg.d_mlp:
        raise AttributionError("the model has no MLPs (d_mlp=0): there are no features")
    if transcoder.n_layers != cfg.n_layers or transcoder.d_model != cfg.d_model:
        raise AttributionError(
            f"transcoder has {transcoder.n_layers} layers of d_model {transcoder.d_model}, the "
            f"model {cfg.n_layers} of {cfg.d_model}"
        )
    kind = transcoder.cfg.kind
    if kind not in ("per_layer", "cross_layer"):
        raise AttributionError(f"unknown transcoder kind {kind!r}")
    return kind


def _chunk_layout(fr: _Frozen, cfg: AttributionConfig, answers: tuple[int, ...]) -> _Layout:
    """The smallest padded layout holding every prompt of a chunk."""
    L, S = len(fr.acts), fr.tokens.shape[1]
    feats = [int((a != 0).flatten(1).sum(1).max()) if a.shape[0] else 0 for a in fr.acts]
    logits = [
        int(_logit_targets(fr.logits[:, a], cfg)[2].max()) if fr.logits.shape[0] else 0
        for a in answers
    ]
    return _Layout(_offsets(feats), _offsets(logits), answers, L, S)


def _merge(layouts: list[_Layout]) -> _Layout:
    first = layouts[0]
    widths = lambda offs: np.diff(offs)  # noqa: E731
    feats = np.max([widths(x.feature_offsets) for x in layouts], axis=0)
    logits = np.max([widths(x.logit_offsets) for x in layouts], axis=0)
    return _Layout(
        _offsets(list(feats)), _offsets(list(logits)), first.answers, first.n_layers, first.n_pos
    )


def _graph(
    fr: _Frozen,
    layout: _Layout,
    w: _Weights,
    kind: str,
    config: AttributionConfig,
    model_cfg,
    out: Tensor | None = None,
) -> AttributionGraph:
    """The attribution graphs of one chunk in `layout` (adjacency written into `out`, zeros)."""
    nodes = _chunk_nodes(fr, layout, config)
    bsz = fr.tokens.shape[0]
    adjacency = torch.zeros(bsz, layout.n_nodes, layout.n_nodes) if out is None else out
    _edges(fr, nodes, w, layout, kind, adjacency)
    qk = []
    if config.qk:
        for l, (pairs, scores) in enumerate(_qk_chunk(fr, nodes, w, layout, kind, model_cfg)):
            qk.append(
                QKAttribution(
                    layer=l,
                    sources=_qk_sources(layout, l),
                    query_positions=_qk_query_positions(model_cfg, l, layout.n_pos),
                    pairs=pairs,
                    scores=scores,
                )
            )
    return AttributionGraph(
        tokens=fr.tokens,
        n_layers=layout.n_layers,
        features=nodes.features,
        feature_mask=nodes.mask,
        feature_offsets=layout.feature_offsets,
        activations=nodes.acts,
        pre_activations=nodes.pre,
        logit_tokens=nodes.logit_tokens,
        logit_positions=_logit_slot_positions(layout).flatten(),
        logit_mask=nodes.logit_mask,
        logit_probs=nodes.logit_probs,
        logit_values=nodes.logit_values,
        adjacency=adjacency,
        qk=qk,
    )


@torch.no_grad()
def iter_attribute(
    model: Transformer,
    transcoder: Transcoder,
    tokens: Tensor | np.ndarray,
    config: AttributionConfig | None = None,
) -> Iterator[AttributionGraph]:
    """Graphs of `config.batch_size` prompts at a time, each chunk in its own padded layout.

    For aggregating over many inputs in bounded memory; `attribute` returns one layout for all.
    """
    config = config or AttributionConfig()
    kind = _check(model, transcoder)
    tokens = check_tokens(model, tokens)
    w = _weights(model, transcoder)
    answers = tuple(model.cfg.answer_positions)
    for start in range(0, tokens.shape[0], config.batch_size):
        # threads and eval mode only while computing, not while the caller holds the chunk
        with _eval_mode(model, config.threads):
            fr = _freeze(model, transcoder, tokens[start : start + config.batch_size], config.qk)
            graph = _graph(fr, _chunk_layout(fr, config, answers), w, kind, config, model.cfg)
        yield graph


@torch.no_grad()
def attribute(
    model: Transformer,
    transcoder: Transcoder,
    tokens: Tensor | np.ndarray,
    config: AttributionConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> AttributionGraph:
    """Attribution graphs of every prompt in `tokens` (B, S), in one padded layout.

    Two phases over chunks of `config.batch_size` prompts: the forward pass and encoding fix
    the layout (the most active features per layer, the most logit targets per position),
    then every chunk's graphs are written into it. `progress(phase, done, total)` is called
    after each chunk.
    """
    config = config or AttributionConfig()
    kind = _check(model, transcoder)
    tokens = check_tokens(model, tokens)
    bsz = tokens.shape[0]
    if bsz == 0:
        raise AttributionError("no prompts to attribute: tokens has 0 rows")
    answers = tuple(model.cfg.answer_positions)
    w = _weights(model, transcoder)
    chunks = [slice(i, min(i + config.batch_size, bsz)) for i in range(0, bsz, config.batch_size)]
    # keep phase 1's frozen passes for phase 2 when their dense activations fit in memory
    keep = 8 * bsz * model.cfg.n_layers * tokens.shape[1] * transcoder.n_features <= FREEZE_CACHE
    with _eval_mode(model, config.threads):
        layouts, frozen = [], []
        for n, sl in enumerate(chunks):
            fr = _freeze(model, transcoder, tokens[sl], want_qk=config.qk and keep)
            layouts.append(_chunk_layout(fr, config, answers))
            frozen.append(fr if keep else None)
            if progress:
                progress("features", n + 1, len(chunks))
        layout = _merge(layouts)
        if config.qk:
            _check_qk_size(layout, model.cfg, bsz, config.qk_max_gb)
        adjacency = torch.zeros(bsz, layout.n_nodes, layout.n_nodes)
        parts = []
        for n, sl in enumerate(chunks):
            fr = frozen[n] or _freeze(model, transcoder, tokens[sl], want_qk=config.qk)
            frozen[n] = None
            parts.append(_graph(fr, layout, w, kind, config, model.cfg, adjacency[sl]))
            if progress:
                progress("edges", n + 1, len(chunks))
        return _concat(parts, adjacency)


def _check_qk_size(layout: _Layout, cfg, n_prompts: int, max_gb: float) -> None:
    """QK pairs grow with the square of the sources per layer: refuse what will not fit."""
    size = 0
    for l in range(layout.n_layers):
        n_src = len(_qk_sources(layout, l)) + 1
        n_query = len(_qk_query_positions(cfg, l, layout.n_pos))
        size += n_prompts * cfg.n_heads * n_query * layout.n_pos * n_src**2
    gb = 4 * size / 1e9
    if gb > max_gb:
        raise AttributionError(
            f"QK pairs of {n_prompts} prompts would take {gb:.1f} GB (qk_max_gb={max_gb}): "
            "attribute fewer prompts at a time (iter_attribute) or set qk=False"
        )


def _concat(parts: list[AttributionGraph], adjacency: Tensor) -> AttributionGraph:
    """Graphs of one layout whose adjacencies are consecutive slices of `adjacency`."""
    first = parts[0]
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    qk = [
        QKAttribution(
            layer=q.layer,
            sources=q.sources,
            query_positions=q.query_positions,
            pairs=torch.cat([p.qk[i].pairs for p in parts]),
            scores=torch.cat([p.qk[i].scores for p in parts]),
        )
        for i, q in enumerate(first.qk)
    ]
    return AttributionGraph(
        tokens=cat("tokens"),
        n_layers=first.n_layers,
        features=cat("features"),
        feature_mask=cat("feature_mask"),
        feature_offsets=first.feature_offsets,
        activations=cat("activations"),
        pre_activations=cat("pre_activations"),
        logit_tokens=cat("logit_tokens"),
        logit_positions=first.logit_positions,
        logit_mask=cat("logit_mask"),
        logit_probs=cat("logit_probs"),
        logit_values=cat("logit_values"),
        adjacency=adjacency,
        qk=qk,
    )


@contextmanager
def _eval_mode(model: Transformer, threads: int = 0) -> Iterator[None]:
    """Eval mode and `threads` torch threads for the duration of the block."""
    was_training, before = model.training, torch.get_num_threads()
    model.eval()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        model.train(was_training)
        torch.set_num_threads(before)
