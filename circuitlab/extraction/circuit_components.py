"""Which heads and MLPs a feature circuit runs through: its reading on the component graph.

A circuit is a set of transcoder features; tools that score circuits against a known answer
(tracr's compiled programs) and the baselines (EAP, EAP-IG, ACDC; `baselines.py`) speak of
attention heads and MLPs instead. This module scores every node and edge of the component graph
(`component_patching.component_graph`) by the attribution the circuit carries through it, in
the same local replacement model the attribution graphs use:

- The operating point is the real forward pass. Attention patterns and LayerNorm scales are
  frozen; every MLP's output keeps its real value, but its gradient flows only through the
  circuit's features, each linear at its clean activation (a feature off stays off). Features
  outside the circuit and the transcoder's error terms are constants, so a component the
  circuit does not read through scores zero.
- A source's delta is its output minus its ablated output (zero, the per-position mean over the
  batch, or its output on the batch permuted by a seed: resample ablation, like the baselines'
  `Ablation`). An MLP's output is what its circuit features write (through every cross-layer
  decoder into that layer), so its delta is that write minus the same write of the ablated
  activations.
- OV edge src -> dst: delta_src . d target / d (the residual dst reads), exact in this linear
  model: a head reads through its value path, an MLP through its circuit features' encoders,
  the logits through the final residual. Each destination reads its own copy of the residual.
- QK edge src -> head: the frozen patterns hide what a source does to a head's attention, so
  it is measured directly: the head's queries and keys are recomputed from the residual
  without src's delta (LayerNorm scale still frozen), its new pattern mixes its real values,
  and the change of its output is dotted with d target / d (its output). The softmax is exact
  here, which matters for the saturated patterns of compiled models.
- Targets are read one answer position at a time: a categorical output's demeaned logit of the
  clean prediction, or a numeric output's value. Scores are summed over prompts and positions
  of |score| per (prompt, position), as attribution graphs take |edge| per prompt.
- A cross-layer transcoder runs part of MLP s's computation straight into MLP t's output
  (s < t): that write, dotted with the gradient after MLP t, is added to the edge MLP s ->
  MLP t, which no residual read would show.
- A node's score is its total effect (delta . d target / d output, all paths of the linear
  model) plus its QK edges: what it does through the heads' patterns, which the frozen model
  does not carry. An edge's score is its OV part plus its QK part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from circuitlab.extraction.component_patching import (
    INPUT,
    LOGITS,
    Ablation,
    AblationKind,
    Edge,
    Node,
    answer_positions,
    component_graph,
)
from circuitlab.extraction.transcoder import Transcoder
from circuitlab.models.transformer import Transformer

__all__ = ["ComponentScores", "circuit_components", "node_name"]


@dataclass(frozen=True)
class ComponentScores:
    """Scores over the component graph: heads and MLPs (`nodes`), every edge (`edges`), and
    the part of each edge into a head that acts through the head's pattern (`qk`, scored on its
    own; an edge's score is |OV + QK| per prompt and position)."""

    nodes: dict[Node, float]
    edges: dict[Edge, float]
    qk: dict[Edge, float]

    def to_dict(self, top_edges: int = 12) -> dict[str, Any]:
        """Shares of the total: every head and MLP, and the strongest edges (JSON-ready)."""
        node_total = sum(self.nodes.values()) or 1.0
        edge_total = sum(self.edges.values()) or 1.0
        edges = sorted(self.edges.items(), key=lambda kv: -kv[1])[:top_edges]
        return {
            "nodes": {
                node_name(n): round(v / node_total, 4)
                for n, v in sorted(self.nodes.items(), key=lambda kv: -kv[1])
            },
            "edges": [
                {
                    "src": node_name(s),
                    "dst": node_name(d),
                    "share": round(v / edge_total, 4),
                    "qk_share": round(self.qk.get((s, d), 0.0) / edge_total, 4),
                }
                for (s, d), v in edges
            ],
        }

    def headline(self, share: float = 0.05) -> str:
        """The heads and MLPs that carry at least `share` of the circuit, strongest first."""
        total = sum(self.nodes.values()) or 1.0
        parts = [
            f"{node_name(n)} {v / total:.0%}"
            for n, v in sorted(self.nodes.items(), key=lambda kv: -kv[1])
            if v / total >= share
        ]
        return ", ".join(parts) or "no head or MLP"


def node_name(node: Node) -> str:
    """TransformerLens's short names: L0H1 for a head, MLP0, input, logits."""
    if node[0] == "attn":
        return f"L{node[1]}H{node[2]}"
    if node[0] == "mlp":
        return f"MLP{node[1]}"
    return str(node[0])


def _ablate(values: Tensor, ablation: Ablation, perm: Tensor | None) -> Tensor:
    """The ablated version of per-input values (B, ...), drawn from the same batch."""
    if ablation.kind == "zero":
        return torch.zeros_like(values)
    if ablation.kind == "mean":
        return values.mean(0, keepdim=True).expand_as(values)
    return values[perm]


class _Pass:
    """One batch: the real forward pass with the hooks that make its gradients those of the
    circuit's frozen replacement model, and every source's delta."""

    def __init__(
        self,
        model: Transformer,
        transcoder: Transcoder,
        keep: Sequence[Tensor],
        tokens: Tensor,
        ablation: Ablation,
    ) -> None:
        cfg = model.cfg
        self.model, self.cfg = model, cfg
        perm = ablation.permutation(tokens.shape[0]) if ablation.kind == "resample" else None
        dtype = model.param("embed.W_E").dtype
        keep_f = [k.to(dtype) for k in keep]
        self.acts: dict[str, Tensor] = {}  # tensors the gradients are taken at
        self.resid: dict[str, Tensor] = {}  # clean residuals and LayerNorm scales (detached)
        self.deltas: dict[Node, Tensor] = {}  # (B, S, D) per source
        # (s, t), s < t: what layer s's circuit features write into layer t (cross-layer
        # decoders), the part of MLP t's delta that MLP s computed
        self.cross: dict[tuple[int, int], Tensor] = {}
        self.z: dict[int, Tensor] = {}
        feats: dict[int, tuple[Tensor, Tensor]] = {}  # layer -> (linearized acts, clean acts)

        def store(x: Tensor, name: str) -> None:
            self.resid[name] = x.detach()

        def freeze(x: Tensor, name: str) -> Tensor:
            self.resid[name] = x.detach()
            return x.detach()

        def embed(x: Tensor, name: str) -> None:
            self.resid["embed"] = x.detach()

        def pos_embed(x: Tensor, name: str) -> None:
            full = self.resid["embed"] + x.detach()
            self.deltas[INPUT] = full - _ablate(full, ablation, perm)

        def capture(x: Tensor, name: str) -> None:
            self.acts[name] = x

        def hook_z(z: Tensor, name) -> None:
            layer = name.layer()
            self.z[layer] = z.detach()
            self.acts[name] = z
            w_o = model.param(f"blocks.{layer}.attn.W_O")
            out = torch.einsum("bshe,hed->bshd", z.detach(), w_o)
            for h in range(cfg.n_heads):
                head = out[:, :, h]
                self.deltas[("attn", layer, h)] = head - _ablate(head, ablation, perm)

        def mlp_out(y: Tensor, name) -> Tensor:
            t = name.layer()
            x = self.acts[f"blocks.{t}.hook_mlp_in"]
            pre = transcoder.pre_activations(t, x)
            clean = transcoder.activate(t, pre.detach()).detach()
            on = (clean != 0).to(dtype)
            feats[t] = ((pre - pre.detach()) * on * keep_f[t], clean * keep_f[t])
            grad_part = y.new_zeros(())
            write = torch.zeros_like(y).detach()
            for s in range(t + 1):
                if t - s < transcoder.n_targets(s):
                    w = transcoder.W_dec[s][t - s].detach()
                    lin, a = feats[s]
                    grad_part = grad_part + lin @ w
                    part = (a - _ablate(a, ablation, perm)) @ w
                    write = write + part
                    if s < t:
                        self.cross[(s, t)] = part
            self.deltas[("mlp", t)] = write
            return y.detach() + grad_part

        def final(x: Tensor, name: str) -> None:
            self.acts["final"] = x

        last = cfg.n_layers - 1
        hooks = [
            ("hook_embed", embed),
            ("hook_pos_embed", pos_embed),
            (lambda n: n.endswith(("hook_resid_pre", "hook_resid_mid")), store),
            (lambda n: n.endswith(("hook_scale", "attn.hook_pattern")), freeze),
            (lambda n: n.endswith(("attn.hook_v", "hook_mlp_in")), capture),
            (lambda n: n.endswith("attn.hook_z"), hook_z),
            (f"blocks.{last}.hook_resid_post", final),
        ]
        if cfg.d_mlp:
            hooks.append((lambda n: n.endswith("hook_mlp_out"), mlp_out))
        with model.hooks(hooks), torch.enable_grad():
            self.logits = model(tokens, answers_only=False)
        self.tokens = tokens

    # -- what each destination reads -----------------------------------------------------------

    def _ln_pullback(self, g: Tensor, layer: int, which: str) -> Tensor:
        """d target / d residual from d target / d LayerNorm output, with the scale frozen."""
        if not self.cfg.normalization:
            return g
        name = f"blocks.{layer}.{which}"
        gw = g * self.model.param(f"{name}.w")
        return (gw - gw.mean(-1, keepdim=True)) / self.resid[f"{name}.hook_scale"]

    def reader_grads(self, target: Tensor) -> tuple[dict[Node, Tensor], dict[int, Tensor]]:
        """For a target summed over the batch: d target / d (the residual each destination
        reads) (B, S, D) per node, and d target / d z (B, S, H, E) per attention layer."""
        cfg = self.cfg
        names = []
        for layer in range(cfg.n_layers):
            names += [f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_z"]
            if cfg.d_mlp:
                names.append(f"blocks.{layer}.hook_mlp_in")
        names.append("final")
        got = torch.autograd.grad(
            target, [self.acts[n] for n in names], retain_graph=True, allow_unused=True
        )
        grads = {
            n: torch.zeros_like(self.acts[n]) if g is None else g
            for n, g in zip(names, got, strict=True)
        }
        reads: dict[Node, Tensor] = {}
        for layer in range(cfg.n_layers):
            b = f"blocks.{layer}"
            w_v = self.model.param(f"{b}.attn.W_V")
            g_v = torch.einsum("bshe,hde->bshd", grads[f"{b}.attn.hook_v"], w_v)
            for h in range(cfg.n_heads):
                reads[("attn", layer, h)] = self._ln_pullback(g_v[:, :, h], layer, "ln1")
            if cfg.d_mlp:
                reads[("mlp", layer)] = self._ln_pullback(grads[f"{b}.hook_mlp_in"], layer, "ln2")
        reads[LOGITS] = grads["final"]  # before ln_final, whose scale the hooks froze
        z_grads = {layer: grads[f"blocks.{layer}.attn.hook_z"] for layer in range(cfg.n_layers)}
        return reads, z_grads

    # -- QK: each source's effect on each later head's output through its pattern ------------

    def qk_changes(self, sources: Sequence[Node]) -> dict[tuple[Node, Node], Tensor]:
        """(source, head) -> the change of the head's z (B, S, E) when its queries and keys
        are computed without the source's delta (LayerNorm scale frozen, values real)."""
        cfg, model = self.cfg, self.model
        out: dict[tuple[Node, Node], Tensor] = {}
        positions = torch.arange(self.tokens.shape[1])
        allowed = (
            positions.view(1, -1) <= positions.view(-1, 1)
            if cfg.causal
            else torch.ones(len(positions), len(positions), dtype=torch.bool)
        )
        for layer in range(cfg.n_layers):
            b = f"blocks.{layer}"
            resid = self.resid[f"{b}.hook_resid_pre"]
            v = self.acts[f"{b}.attn.hook_v"].detach()
            for src in sources:
                if not _writes_before(src, layer):
                    continue
                x = resid - self.deltas[src]
                if cfg.normalization:
                    x = x - x.mean(-1, keepdim=True)
                    x = x / self.resid[f"{b}.ln1.hook_scale"] * model.param(f"{b}.ln1.w")
                    x = x + model.param(f"{b}.ln1.b")
                q = torch.einsum("bsd,hde->bshe", x, model.param(f"{b}.attn.W_Q"))
                k = torch.einsum("bsd,hde->bshe", x, model.param(f"{b}.attn.W_K"))
                q = q + model.param(f"{b}.attn.b_Q")
                k = k + model.param(f"{b}.attn.b_K")
                scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / q.shape[-1] ** 0.5
                pattern = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
                z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
                for h in range(cfg.n_heads):
                    out[(src, ("attn", layer, h))] = z[:, :, h] - self.z[layer][:, :, h]
        return out


def _writes_before(src: Node, layer: int) -> bool:
    """Whether `src` writes into the residual that attention layer `layer` reads."""
    return (
        src == INPUT
        or (src[0] == "attn" and src[1] < layer)
        or (src[0] == "mlp" and src[1] < layer)
    )


def _targets(logits: Tensor, position: int) -> Tensor:
    """The target at one position, per prompt (B,): the demeaned logit of the clean
    prediction, or a numeric output's value."""
    at = logits[:, position]
    if at.shape[-1] == 1:
        return at[:, 0]
    pick = at.detach().argmax(-1, keepdim=True)
    return at.gather(-1, pick)[:, 0] - at.mean(-1)


def circuit_components(
    model: Transformer,
    transcoder: Transcoder,
    keep: Sequence[Tensor],
    tokens: Tensor | Sequence[Tensor],
    ablation: AblationKind | Ablation = "mean",
    positions: Sequence[int] | None = None,
) -> ComponentScores:
    """Score the component graph of `model` by what the circuit `keep` (per layer (F,) bool,
    the circuit's features) carries through each head, MLP and edge (the module docstring
    says how). `tokens` is one batch or several (equal length within a batch: mean and
    resample ablation draw from the batch); `positions` are the targets' positions
    (default: the model's answer positions)."""
    abl = ablation if isinstance(ablation, Ablation) else Ablation(ablation)
    graph = component_graph(model.cfg)
    sources = [n for n in graph.nodes if n != LOGITS]
    node_scores = {n: 0.0 for n in graph.components}
    edge_scores = {e: 0.0 for e in graph.edges}
    qk_scores: dict[Edge, float] = {}
    batches = [tokens] if torch.is_tensor(tokens) else list(tokens)
    for batch in batches:
        run = _Pass(model, transcoder, keep, torch.as_tensor(batch, dtype=torch.long), abl)
        qk = run.qk_changes(sources)
        for pos in answer_positions(model.cfg, batch.shape[-1], positions):
            target = _targets(run.logits, pos).sum()
            reads, z_grads = run.reader_grads(target)
            ov = {  # signed per prompt (B,)
                (s, d): (run.deltas[s] * reads[d]).sum((1, 2)).detach() for s, d in graph.edges
            }
            cross_ov: dict[Edge, Tensor] = {}
            qk_eff = {
                (s, d): (change * z_grads[d[1]][:, :, d[2]]).sum((1, 2)).detach()
                for (s, d), change in qk.items()
            }
            for (s, t), part in run.cross.items():
                # a cross-layer feature runs MLP s's computation into MLP t's output: the path
                # MLP s -> MLP t, which no residual read shows
                later = [d for (src, d) in graph.edges if src == ("mlp", t)]
                downstream = sum(reads[d] for d in later)
                cross_ov[(("mlp", s), ("mlp", t))] = (part * downstream).sum((1, 2)).detach()
            for edge, value in qk_eff.items():
                qk_scores[edge] = qk_scores.get(edge, 0.0) + float(value.abs().sum())
            for edge in graph.edges:
                value = ov[edge] + qk_eff.get(edge, 0.0) + cross_ov.get(edge, 0.0)
                edge_scores[edge] += float(value.abs().sum())
            totals: dict[Node, Tensor] = {}  # each head's and MLP's total effect, per prompt
            for (src, _), value in ov.items():
                if src in node_scores:
                    totals[src] = totals.get(src, 0.0) + value
            for src, total in totals.items():
                node_scores[src] += float(total.abs().sum())
            for (src, _), value in qk_eff.items():
                if src in node_scores:
                    node_scores[src] += float(value.abs().sum())
    return ComponentScores(node_scores, edge_scores, qk_scores)
