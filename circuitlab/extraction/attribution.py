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

Phases: forward and encode (to fix a padded node layout for all prompts), then edges and QK
pairs chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from circuitlab.extraction.activations import check_tokens, layer_positions
from circuitlab.extraction.graph import AttributionGraph, QKAttribution
from circuitlab.models import Transformer


class AttributionError(ValueError):
    """A model and transcoder that do not fit together, or a bad attribution setting."""


@dataclass(frozen=True)
class AttributionConfig:
    """How graphs are built. Defaults are circuit-tracer's."""

    max_logits: int = 10  # logit targets per answer position, at most
    logit_probability: float = 0.95  # smallest top-k whose probabilities reach this
    batch_size: int = 256  # prompts per chunk of the edge computation (memory ~ batch * N^2)
    qk: bool = True  # also attribute attention scores (memory ~ batch * heads * sources^2)

    def __post_init__(self) -> None:
        if self.max_logits < 1:
            raise AttributionError(f"max_logits must be >= 1, got {self.max_logits}")
        if not 0.0 < self.logit_probability <= 1.0:
            raise AttributionError(
                f"logit_probability must be in (0, 1], got {self.logit_probability}"
            )
        if self.batch_size < 1:
            raise AttributionError(f"batch_size must be >= 1, got {self.batch_size}")


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


def _encoder(transcoder, layer: int, d_model: int) -> Tensor:
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


def _weights(model: Transformer, transcoder) -> _Weights:
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
    return _Weights(w_vc, w_qc, w_kc, w_o, enc, dec, u, p["embed.W_E"], p["pos_embed.W_pos"])


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


def _freeze(model: Transformer, transcoder, tokens: Tensor, want_qk: bool) -> _Frozen:
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


def _pullback(g: Tensor, coef: Tensor, w_o: Tensor, w_vc: Tensor) -> Tensor:
    """Gradient w.r.t. resid_mid (B, R, S, D) -> w.r.t. resid_pre through frozen attention."""
    gz = torch.einsum("brqd,hed->brqhe", g, w_o)
    gv = torch.einsum("brqhe,bhqk->brkhe", gz, coef)
    return g + torch.einsum("brkhe,hde->brkd", gv, w_vc)


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


def _edges(fr: _Frozen, nodes: _ChunkNodes, w: _Weights, layout: _Layout, kind: str) -> Tensor:
    """Adjacency (B, N, N) of one chunk."""
    L, S = layout.n_layers, layout.n_pos
    bsz = fr.tokens.shape[0]
    K, T = layout.n_features, layout.n_logits
    d = w.embed.shape[1]
    n_src = layout.logit_start  # features, errors, tokens
    R = K + T
    edges = torch.zeros(bsz, R, n_src)
    g = torch.zeros(bsz, R, S, d)
    # logit readers at the final residual
    for i, a in enumerate(layout.answers):
        lo, hi = layout.logit_offsets[i], layout.logit_offsets[i + 1]
        vec = w.unembed.T[nodes.logit_tokens[:, lo:hi]] * nodes.logit_mask[:, lo:hi, None]
        g[:, K + lo : K + hi, a] = vec * fr.inv_scale_final[:, a].view(bsz, 1, 1)
    off = layout.feature_offsets
    positions = torch.arange(S)
    for j in range(L, -1, -1):
        if j < L:
            # layer-j feature readers read resid_mid of block j at their position
            block = slice(off[j], off[j + 1])
            if off[j + 1] > off[j]:
                f = nodes.features[:, block]
                vec = w.enc[j].T[f[..., 2]] * nodes.mask[:, block, None]
                vec = vec * fr.inv_scale2[j].gather(1, f[..., 1]).unsqueeze(-1)
                onehot = (f[..., 1:2] == positions).unsqueeze(-1)  # (B, K_j, S, 1)
                g[:, block] = onehot * vec.unsqueeze(2)
            lo = off[j]
            g[:, lo:] = _pullback(g[:, lo:], fr.coef[j], w.w_o[j], w.w_vc[j])
        else:
            lo = K
        gj = g[:, lo:]
        if j == 0:
            emb = w.embed[fr.tokens] + w.pos_embed[:S]
            cols = slice(layout.token_start, layout.token_start + S)
            edges[:, lo:, cols] = torch.einsum("brsd,bsd->brs", gj, emb)
            continue
        t = j - 1
        cols = slice(layout.error_start + t * S, layout.error_start + (t + 1) * S)
        edges[:, lo:, cols] = torch.einsum("brsd,bsd->brs", gj, fr.errors[t])
        src_lo, vectors, pos = _write_vectors(nodes, w, layout, t, kind)
        if vectors.shape[1]:
            acc = torch.zeros(bsz, gj.shape[1], vectors.shape[1])
            for k in range(S):
                at_k = (pos == k).unsqueeze(1)
                if bool(at_k.any()):
                    acc += torch.bmm(gj[:, :, k], vectors.transpose(1, 2)) * at_k
            edges[:, lo:, src_lo : src_lo + vectors.shape[1]] += acc
    adjacency = torch.zeros(bsz, layout.n_nodes, layout.n_nodes)
    adjacency[:, :K, :n_src] = edges[:, :K]
    adjacency[:, layout.logit_start :, :n_src] = edges[:, K:]
    return adjacency


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
    """Per attention layer: (pairs (B, H, Qn, S, Ns+1, Ns+1), scores (B, H, Qn, S))."""
    L, S = layout.n_layers, layout.n_pos
    bsz = fr.tokens.shape[0]
    d = w.embed.shape[1]
    K_all = layout.n_features
    n_tok_err = L * S + S
    # footprints of every feature slot, error node and token at resid_pre of the current layer,
    # in node order [features, errors, tokens]
    x = torch.zeros(bsz, K_all + n_tok_err, S, d)
    tok = layout.token_start
    emb = w.embed[fr.tokens] + w.pos_embed[:S]
    x[:, tok : tok + S] = torch.diag_embed(emb.transpose(1, 2)).permute(0, 2, 3, 1)
    out = []
    positions = torch.arange(S)
    for l in range(L):
        src = _qk_sources(layout, l)
        qpos = list(_qk_query_positions(model_cfg, l, S))
        xs = x[:, src]
        e = w.w_qc[l].shape[-1]
        qc = torch.einsum("bnqd,hde->bnqhe", xs[:, :, qpos], w.w_qc[l])
        qc = qc * fr.inv_scale1[l][:, qpos].view(bsz, 1, -1, 1, 1)
        kc = torch.einsum("bnkd,hde->bnkhe", xs, w.w_kc[l]) * fr.inv_scale1[l].view(bsz, 1, S, 1, 1)
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
        # advance the footprints to resid_pre of layer l + 1
        x = _push(x, fr.coef[l], w.w_o[l], w.w_vc[l])
        err = layout.error_start + l * S
        x[:, err : err + S] += torch.diag_embed(fr.errors[l].transpose(1, 2)).permute(0, 2, 3, 1)
        src_lo, vectors, pos = _write_vectors(nodes, w, layout, l, kind)
        if vectors.shape[1]:
            onehot = (pos.unsqueeze(-1) == positions).unsqueeze(-1)  # (B, n, S, 1)
            x[:, src_lo : src_lo + vectors.shape[1]] += onehot * vectors.unsqueeze(2)
    return out


# ------------------------------------------------------------------------------------------------
# the public entry point


def _check(model: Transformer, transcoder) -> str:
    cfg = model.cfg
    if not cfg.d_mlp:
        raise AttributionError(
            "the model has no MLPs (d_mlp=0): there are no features to attribute"
        )
    if transcoder.n_layers != cfg.n_layers or transcoder.d_model != cfg.d_model:
        raise AttributionError(
            f"transcoder has {transcoder.n_layers} layers of d_model {transcoder.d_model}, the "
            f"model {cfg.n_layers} of {cfg.d_model}"
        )
    kind = transcoder.cfg.kind
    if kind not in ("per_layer", "cross_layer"):
        raise AttributionError(f"unknown transcoder kind {kind!r}")
    return kind


@torch.no_grad()
def attribute(
    model: Transformer,
    transcoder,
    tokens: Tensor | np.ndarray,
    config: AttributionConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> AttributionGraph:
    """Attribution graphs of every prompt in `tokens` (B, S), in one padded layout.

    `progress(phase, done, total)` is called after each chunk of each phase.
    """
    config = config or AttributionConfig()
    kind = _check(model, transcoder)
    tokens = check_tokens(model, tokens)
    cfg = model.cfg
    bsz, S = tokens.shape
    L = cfg.n_layers
    answers = tuple(cfg.answer_positions)
    w = _weights(model, transcoder)
    chunks = [slice(i, min(i + config.batch_size, bsz)) for i in range(0, bsz, config.batch_size)]
    was_training = model.training
    model.eval()
    try:
        # phase 1: node counts per prompt fix the padded layout
        feat_max = [0] * L
        logit_max = [0] * len(answers)
        for n, sl in enumerate(chunks):
            fr = _freeze(model, transcoder, tokens[sl], want_qk=False)
            for l in range(L):
                feat_max[l] = max(feat_max[l], int((fr.acts[l] != 0).flatten(1).sum(1).max()))
            for i, a in enumerate(answers):
                _, _, count = _logit_targets(fr.logits[:, a], config)
                logit_max[i] = max(logit_max[i], int(count.max()))
            if progress:
                progress("features", n + 1, len(chunks))
        layout = _Layout(_offsets(feat_max), _offsets(logit_max), answers, L, S)
        n_nodes = layout.n_nodes
        K, T = layout.n_features, layout.n_logits
        features = torch.zeros(bsz, K, 3, dtype=torch.long)
        feature_mask = torch.zeros(bsz, K, dtype=torch.bool)
        acts = torch.zeros(bsz, K)
        pre = torch.zeros(bsz, K)
        logit_tokens = torch.zeros(bsz, T, dtype=torch.long)
        logit_mask = torch.zeros(bsz, T, dtype=torch.bool)
        logit_probs = torch.zeros(bsz, T)
        logit_values = torch.zeros(bsz, T)
        adjacency = torch.zeros(bsz, n_nodes, n_nodes)
        qk_parts: list[list[tuple[Tensor, Tensor]]] = []
        for n, sl in enumerate(chunks):
            fr = _freeze(model, transcoder, tokens[sl], want_qk=config.qk)
            nodes = _chunk_nodes(fr, layout, config)
            features[sl], feature_mask[sl] = nodes.features, nodes.mask
            acts[sl], pre[sl] = nodes.acts, nodes.pre
            logit_tokens[sl], logit_mask[sl] = nodes.logit_tokens, nodes.logit_mask
            logit_probs[sl], logit_values[sl] = nodes.logit_probs, nodes.logit_values
            adjacency[sl] = _edges(fr, nodes, w, layout, kind)
            if config.qk:
                qk_parts.append(_qk_chunk(fr, nodes, w, layout, kind, cfg))
            if progress:
                progress("edges", n + 1, len(chunks))
    finally:
        model.train(was_training)
    qk = []
    if config.qk:
        for l in range(L):
            qk.append(
                QKAttribution(
                    layer=l,
                    sources=_qk_sources(layout, l),
                    query_positions=_qk_query_positions(cfg, l, S),
                    pairs=torch.cat([part[l][0] for part in qk_parts]),
                    scores=torch.cat([part[l][1] for part in qk_parts]),
                )
            )
    logit_positions = torch.cat(
        [
            torch.full((layout.logit_offsets[i + 1] - layout.logit_offsets[i],), a)
            for i, a in enumerate(answers)
        ]
    ).long()
    return AttributionGraph(
        tokens=tokens,
        n_layers=L,
        features=features,
        feature_mask=feature_mask,
        feature_offsets=layout.feature_offsets,
        activations=acts,
        pre_activations=pre,
        logit_tokens=logit_tokens,
        logit_positions=logit_positions,
        logit_mask=logit_mask,
        logit_probs=logit_probs,
        logit_values=logit_values,
        adjacency=adjacency,
        qk=qk,
    )
