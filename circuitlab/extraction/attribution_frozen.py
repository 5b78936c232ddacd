"""Attribution, phase 1: what the local replacement model freezes, and the node layout.

The weights of the frozen linear paths (prompt-independent), one chunk's real forward pass
(attention patterns, LayerNorm scales, transcoder features, error nodes, logit targets) and the
padded node layout every prompt's graph is written into. `attribution.py` describes the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from circuitlab.extraction.activations import layer_positions
from circuitlab.extraction.transcoder import Transcoder
from circuitlab.models import Transformer

if TYPE_CHECKING:
    from circuitlab.extraction.attribution import AttributionConfig

# Readers of layer 0 are matched against precomputed (position, token) tables when these have
# at most this many entries (features x heads x n_ctx x d_vocab); larger models take the
# general path.
TOKEN_TABLE_LIMIT = 1 << 25


class AttributionError(ValueError):
    """A model and transcoder that do not fit together, or a bad attribution setting."""


# --- weights of the frozen model, prompt-independent ---------------------------------------


def _centered(w: Tensor) -> Tensor:
    """C @ w for a matrix reading the residual (rows = d_model): LayerNorm's mean removal."""
    return w - w.mean(0, keepdim=True)


@dataclass
class Weights:
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


def frozen_weights(model: Transformer, transcoder: Transcoder) -> Weights:
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

    return Weights(
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


# --- the real forward pass of one chunk: frozen quantities, features and logit targets -----


@dataclass
class Frozen:
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

    def nbytes(self) -> int:
        """Memory held, for deciding whether a chunk may be kept for the second phase."""
        tensors = [self.tokens, self.inv_scale_final, self.logits]
        for group in (self.coef, self.inv_scale1, self.inv_scale2, self.acts, self.pre):
            tensors += group
        tensors += self.errors + self.q + self.k
        return sum(t.numel() * t.element_size() for t in tensors)


def freeze(model: Transformer, transcoder: Transcoder, tokens: Tensor, want_qk: bool) -> Frozen:
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
    return Frozen(
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


def logit_targets(logits: Tensor, cfg: AttributionConfig) -> tuple[Tensor, Tensor, Tensor]:
    """logits (B, O) -> top tokens (B, k), probabilities (B, k), count (B,) of targets kept."""
    probs = logits.softmax(-1)
    k = min(cfg.max_logits, probs.shape[-1])
    top_p, top_i = probs.topk(k, dim=-1)
    cum = top_p.cumsum(-1)
    target = torch.full_like(cum[:, :1], cfg.logit_probability)
    count = (torch.searchsorted(cum, target).squeeze(-1) + 1).clamp_max(k)
    return top_i, top_p, count


# --- the node layout shared by every prompt ------------------------------------------------


@dataclass
class Layout:
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


@dataclass
class ChunkNodes:
    features: Tensor  # (B, K, 3)
    mask: Tensor  # (B, K)
    acts: Tensor  # (B, K)
    pre: Tensor  # (B, K)
    logit_tokens: Tensor  # (B, T)
    logit_mask: Tensor  # (B, T)
    logit_probs: Tensor  # (B, T)
    logit_values: Tensor  # (B, T)


def chunk_nodes(fr: Frozen, layout: Layout, cfg: AttributionConfig) -> ChunkNodes:
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
        top_i, top_p, count = logit_targets(logits, cfg)
        width = layout.logit_offsets[i + 1] - layout.logit_offsets[i]
        keep = torch.arange(top_i.shape[1]).view(1, -1) < count.view(-1, 1)
        sl = slice(layout.logit_offsets[i], layout.logit_offsets[i + 1])
        n = min(width, top_i.shape[1])
        tokens[:, sl][:, :n] = top_i[:, :n] * keep[:, :n]
        lmask[:, sl][:, :n] = keep[:, :n]
        probs[:, sl][:, :n] = top_p[:, :n] * keep[:, :n]
        demeaned = logits - logits.mean(-1, keepdim=True)
        values[:, sl][:, :n] = demeaned.gather(1, top_i[:, :n]) * keep[:, :n]
    return ChunkNodes(features, mask, acts, pre, tokens, lmask, probs, values)


def logit_slot_positions(layout: Layout) -> Tensor:
    """(1, T) answer position of every logit slot."""
    parts = [
        torch.full((layout.logit_offsets[i + 1] - layout.logit_offsets[i],), a)
        for i, a in enumerate(layout.answers)
    ]
    return torch.cat(parts).long().view(1, -1)


def chunk_layout(fr: Frozen, cfg: AttributionConfig, answers: tuple[int, ...]) -> Layout:
    """The smallest padded layout holding every prompt of a chunk."""
    L, S = len(fr.acts), fr.tokens.shape[1]
    feats = [int((a != 0).flatten(1).sum(1).max()) if a.shape[0] else 0 for a in fr.acts]
    logits = [
        int(logit_targets(fr.logits[:, a], cfg)[2].max()) if fr.logits.shape[0] else 0
        for a in answers
    ]
    return Layout(_offsets(feats), _offsets(logits), answers, L, S)


def merge_layouts(layouts: list[Layout]) -> Layout:
    """The smallest layout holding every chunk's: the widest block of each layer and answer."""
    first = layouts[0]
    widths = lambda offs: np.diff(offs)  # noqa: E731
    feats = np.max([widths(x.feature_offsets) for x in layouts], axis=0)
    logits = np.max([widths(x.logit_offsets) for x in layouts], axis=0)
    return Layout(
        _offsets(list(feats)), _offsets(list(logits)), first.answers, first.n_layers, first.n_pos
    )
