"""Attribution graphs as circuit-tracer's frontend graph JSON (schema_version 1).

One prompt's graph, pruned as circuit-tracer prunes (graph.py), with circuit-tracer's node ids,
plus the largest QK pair terms of a prompt for reading attention-score attribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from circuitlab.extraction.graph import ERROR, FEATURE, TOKEN, AttributionGraph, prune

SCHEMA_VERSION = 1
INDEX_FILE = "graph-metadata.json"  # {"graphs": [each graph's metadata]}: the frontend's list


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _node(node_id: str, feature: int, layer: str, pos: int, kind: str, js: str, **extra: Any):
    node = {
        "node_id": node_id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": pos,
        "feature_type": kind,
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js,
        "clerp": "",
        "influence": None,
        "activation": None,
    }
    node.update(extra)
    return node


def to_circuit_tracer_json(
    graph: AttributionGraph,
    index: int,
    *,
    slug: str,
    token_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    scan: str = "circuitlab",
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    clerps: Mapping[tuple[int, int, int], str] | None = None,
) -> dict[str, Any]:
    """The pruned graph of prompt `index` as circuit-tracer's frontend graph JSON (schema 1).

    Node ids follow circuit-tracer: feature "{layer}_{feat}_{pos}", error "0_{layer}_{pos}",
    token "E_{token}_{pos}", logit "{L+1}_{token}_{pos}". `influence` is each node's cumulative
    influence fraction, as circuit-tracer writes it. `clerps` labels feature nodes by
    (layer, position, feature).
    """
    clerps = clerps or {}
    if not 0 <= index < graph.n_prompts:
        raise IndexError(f"graph index must be in [0, {graph.n_prompts}), got {index}")
    tok_names = list(token_names) if token_names is not None else None
    out_names = list(output_names) if output_names is not None else tok_names
    adjacency = graph.adjacency[index]
    kinds = graph.node_kinds
    result = prune(
        adjacency,
        graph.logit_weights()[index],
        kinds,
        node_threshold,
        edge_threshold,
        real=graph.node_mask[index],
    )
    tokens = graph.tokens[index].tolist()

    def name(names: list[str] | None, tok: int) -> str:
        return names[tok] if names is not None and 0 <= tok < len(names) else str(tok)

    nodes: dict[int, dict[str, Any]] = {}
    cum = result.cumulative_scores.tolist()
    top_of_position: dict[int, int] = {}
    for slot in range(graph.logit_positions.shape[0]):
        if graph.logit_mask[index, slot]:
            top_of_position.setdefault(int(graph.logit_positions[slot]), slot)
    for i in result.node_mask.nonzero().flatten().tolist():
        kind = int(kinds[i])
        if kind == FEATURE:
            layer, pos, feat = graph.features[index, i].tolist()
            nodes[i] = _node(
                f"{layer}_{feat}_{pos}",
                _cantor(layer, feat),
                str(layer),
                pos,
                "cross layer transcoder",
                f"{layer}_{feat}-0",
                influence=cum[i],
                activation=float(graph.activations[index, i]),
                clerp=clerps.get((layer, pos, feat), ""),
            )
        elif kind == ERROR:
            layer, pos = divmod(i - graph.error_start, graph.n_pos)
            nodes[i] = _node(
                f"0_{layer}_{pos}",
                -1,
                str(layer),
                pos,
                "mlp reconstruction error",
                f"{layer}_-1-{pos}",
                influence=cum[i],
            )
        elif kind == TOKEN:
            pos = i - graph.token_start
            tok = tokens[pos]
            nodes[i] = _node(
                f"E_{tok}_{pos}",
                pos,
                "E",
                pos,
                "embedding",
                f"E_{tok}-{pos}",
                influence=cum[i],
            )
        else:
            slot = i - graph.logit_start
            tok = int(graph.logit_tokens[index, slot])
            pos = int(graph.logit_positions[slot])
            prob = float(graph.logit_probs[index, slot])
            layer = str(graph.n_layers + 1)
            nodes[i] = _node(
                f"{layer}_{tok}_{pos}",
                tok,
                layer,
                pos,
                "logit",
                f"L_{tok}-{pos}",
                token_prob=prob,
                is_target_logit=top_of_position.get(pos) == slot,
                clerp=f'Output "{name(out_names, tok)}" (p={prob:.3f})',
            )
    targets, sources = result.edge_mask.nonzero(as_tuple=True)
    links = [
        {"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(w)}
        for t, s, w in zip(
            targets.tolist(), sources.tolist(), adjacency[targets, sources].tolist(), strict=True
        )
        if s in nodes and t in nodes and math.isfinite(w)
    ]
    connected = {link["source"] for link in links} | {link["target"] for link in links}
    used = [
        n
        for n in nodes.values()
        if n["node_id"] in connected or n["feature_type"] in ("embedding", "logit")
    ]
    prompt_tokens = [name(tok_names, t) for t in tokens]
    return {
        "metadata": {
            "slug": slug,
            "scan": scan,
            "transcoder_list": [],
            "prompt_tokens": prompt_tokens,
            "prompt": " ".join(prompt_tokens),
            "node_threshold": node_threshold,
            "schema_version": SCHEMA_VERSION,
        },
        "qParams": {
            "pinnedIds": [],
            "supernodes": [],
            "linkType": "both",
            "clickedId": "",
            "sg_pos": "",
        },
        "nodes": used,
        "links": links,
    }


def node_id(graph: AttributionGraph, index: int, node: int) -> str:
    """circuit-tracer's id of node `node` in prompt `index`'s graph."""
    kind = int(graph.node_kinds[node])
    if kind == FEATURE:
        layer, pos, feat = graph.features[index, node].tolist()
        return f"{layer}_{feat}_{pos}"
    if kind == ERROR:
        layer, pos = divmod(node - graph.error_start, graph.n_pos)
        return f"0_{layer}_{pos}"
    if kind == TOKEN:
        pos = node - graph.token_start
        return f"E_{int(graph.tokens[index, pos])}_{pos}"
    slot = node - graph.logit_start
    tok, pos = int(graph.logit_tokens[index, slot]), int(graph.logit_positions[slot])
    return f"{graph.n_layers + 1}_{tok}_{pos}"


def top_qk_pairs(graph: AttributionGraph, index: int, top: int = 10) -> list[dict[str, Any]]:
    """The largest (query source, key source) terms of every attention score of one prompt.

    Each entry: layer, head, query and key positions, the query-side and key-side node ids
    ("bias" for the bias part) and the term's value; sorted by |value|.
    """
    if not graph.qk:
        raise ValueError("the graph has no QK attribution (attribute with qk=True)")
    if not 0 <= index < graph.n_prompts:
        raise IndexError(f"graph index must be in [0, {graph.n_prompts}), got {index}")
    rows = []
    for qk in graph.qk:
        pairs = qk.pairs[index]  # (H, Qn, S, Ns + 1, Ns + 1)
        real = torch.cat([graph.node_mask[index, qk.sources], torch.ones(1, dtype=torch.bool)])
        values = pairs * (real.view(-1, 1) & real.view(1, -1))
        flat = values.abs().flatten()
        k = min(top, int((flat > 0).sum()))
        names = [node_id(graph, index, int(n)) for n in qk.sources] + ["bias"]
        for i in flat.topk(k).indices.tolist():
            h, qi, key, s, t = torch.unravel_index(torch.tensor(i), values.shape)
            rows.append(
                {
                    "layer": qk.layer,
                    "head": int(h),
                    "query_pos": qk.query_positions[int(qi)],
                    "key_pos": int(key),
                    "query_source": names[int(s)],
                    "key_source": names[int(t)],
                    "value": float(values[h, qi, key, s, t]),
                }
            )
    rows.sort(key=lambda r: -abs(r["value"]))
    return rows[:top]


def write_graph_json(path: str | Path, data: dict[str, Any]) -> Path:
    """Write graph JSON atomically (temp file in the same directory, then rename)."""
    from circuitlab.training.rundir import write_json_atomic

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"directory {path.parent} does not exist")
    write_json_atomic(path, data)
    return path
