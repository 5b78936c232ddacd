"""Attribution, phase 2: the edges (and QK pairs) of one chunk of prompts in a shared layout.

Readers (feature encoders through the frozen LayerNorm, logits through the demeaned
unembedding) are pulled back through the frozen attention layer by layer; an edge is what a
source writes dotted with a reader's pulled-back direction. `attribution.py` describes the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from circuitlab.extraction.attribution_frozen import (
    ChunkNodes,
    Frozen,
    Layout,
    Weights,
    chunk_nodes,
    logit_slot_positions,
)
from circuitlab.extraction.graph import AttributionGraph, QKAttribution

if TYPE_CHECKING:
    from circuitlab.extraction.attribution import AttributionConfig


def _push(x: Tensor, coef: Tensor, w_o: Tensor, w_vc: Tensor) -> Tensor:
    """Residual footprints (B, N, S, D) at resid_pre -> at resid_mid through frozen attention."""
    v = torch.einsum("bnkd,hde->bnkhe", x, w_vc)
    z = torch.einsum("bnkhe,bhqk->bnqhe", v, coef)
    return x + torch.einsum("bnqhe,hed->bnqd", z, w_o)


def _write_vectors(
    nodes: ChunkNodes, w: Weights, layout: Layout, target: int, kind: str
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
    fr: Frozen, nodes: ChunkNodes, w: Weights, layout: Layout, layer: int | None
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
    pos = logit_slot_positions(layout).expand(nodes.logit_tokens.shape)
    scale = fr.inv_scale_final.gather(1, pos) * nodes.logit_mask
    rows = slice(K, K + layout.n_logits)
    return _PointReaders(
        rows, nodes.logit_tokens, pos, scale, w.unembed, w.unembed_o, w.token_unembed
    )


def _edges(
    fr: Frozen, nodes: ChunkNodes, w: Weights, layout: Layout, kind: str, out: Tensor
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


# --- QK attribution ------------------------------------------------------------------------


def qk_sources(layout: Layout, layer: int) -> Tensor:
    """Node indices of everything that writes into resid_pre of `layer`."""
    feats = torch.arange(layout.feature_offsets[layer])
    errs = layout.error_start + torch.arange(layer * layout.n_pos)
    toks = layout.token_start + torch.arange(layout.n_pos)
    return torch.cat([feats, errs, toks])


def qk_query_positions(cfg, layer: int, seq_len: int) -> tuple[int, ...]:
    """Query positions whose attention output can reach an answer."""
    if layer == cfg.n_layers - 1:
        return tuple(cfg.answer_positions)
    return tuple(range(min(max(cfg.answer_positions) + 1, seq_len)))


def _qk_chunk(
    fr: Frozen, nodes: ChunkNodes, w: Weights, layout: Layout, kind: str, model_cfg
) -> list[tuple[Tensor, Tensor]]:
    """Per attention layer: (pairs (B, H, Qn, S, Ns+1, Ns+1), scores (B, H, Qn, S)).

    Footprints x (B, Ns, S, D) of the layer's sources (order of `qk_sources`: features of
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
        qpos = list(qk_query_positions(model_cfg, l, S))
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


def chunk_graph(
    fr: Frozen,
    layout: Layout,
    w: Weights,
    kind: str,
    config: AttributionConfig,
    model_cfg,
    out: Tensor | None = None,
) -> AttributionGraph:
    """The attribution graphs of one chunk in `layout` (adjacency written into `out`, zeros)."""
    nodes = chunk_nodes(fr, layout, config)
    bsz = fr.tokens.shape[0]
    adjacency = torch.zeros(bsz, layout.n_nodes, layout.n_nodes) if out is None else out
    _edges(fr, nodes, w, layout, kind, adjacency)
    qk = []
    if config.qk:
        for l, (pairs, scores) in enumerate(_qk_chunk(fr, nodes, w, layout, kind, model_cfg)):
            qk.append(
                QKAttribution(
                    layer=l,
                    sources=qk_sources(layout, l),
                    query_positions=qk_query_positions(model_cfg, l, layout.n_pos),
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
        logit_positions=logit_slot_positions(layout).flatten(),
        logit_mask=nodes.logit_mask,
        logit_probs=nodes.logit_probs,
        logit_values=nodes.logit_values,
        adjacency=adjacency,
        qk=qk,
    )
