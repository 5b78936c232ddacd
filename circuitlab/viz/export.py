"""The graph on screen as circuit-tracer's frontend graph JSON (schema_version 1).

What is exported is what the view shows before supernodes collapse it: the pruned nodes and
links, with the view state in `qParams` (pinned ids, supernodes as [name, *member ids], the
clicked node), all in circuit-tracer's node ids: feature "{layer}_{feat}_{pos}", error
"0_{layer}_{pos}", token "E_{token}_{pos}", logit "{n_layers + 1}_{token}_{pos}". A feature of
a task-level circuit has no position; it is exported at the answer position. `clerp` carries
each node's label.
"""

from __future__ import annotations

from typing import Any

from circuitlab.catalog import records as rec
from circuitlab.viz.graphview import Pruned, ViewGraph, prune_view, restrict
from circuitlab.viz.state import ViewState

SCHEMA_VERSION = 1
_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "token": "embedding",
    "logit": "logit",
}


def tracer_ids(graph: ViewGraph, answer: int) -> list[str]:
    """circuit-tracer's id of every node of `graph` (supernodes keep their own id)."""
    out = []
    n_layers = graph.n_rows - 2
    for kind, layer, index, column, nid in zip(
        graph.kinds, graph.layer, graph.index, graph.columns, graph.ids, strict=True
    ):
        pos = answer if column is None else column
        if kind == "feature":
            out.append(f"{layer}_{index}_{pos}")
        elif kind == "error":
            out.append(f"0_{layer}_{pos}")
        elif kind == "token":
            out.append(f"E_{index}_{pos}")
        elif kind == "logit":
            out.append(f"{n_layers + 1}_{index}_{pos}")
        else:
            out.append(nid)
    return out


def to_circuit_tracer(
    graph: ViewGraph,
    pruned: Pruned,
    *,
    slug: str,
    prompt_tokens: list[str],
    pinned: list[str],
    groups: dict[str, list[str]],
    clicked: str,
    node_threshold: float,
    answer: int,
) -> dict[str, Any]:
    ids = tracer_ids(graph, answer)
    to_tracer = dict(zip(graph.ids, ids, strict=True))
    nodes = []
    for i in pruned.nodes.tolist():
        kind = graph.kinds[i]
        pos = answer if graph.columns[i] is None else graph.columns[i]
        nodes.append(
            {
                "node_id": ids[i],
                "feature": graph.index[i],
                "layer": "E" if kind == "token" else str(graph.layer[i]),
                "ctx_idx": pos,
                "feature_type": _TYPES.get(kind, kind),
                "token_prob": 0.0,
                "is_target_logit": kind == "logit",
                "run_idx": 0,
                "reverse_ctx_idx": 0,
                "jsNodeId": f"{graph.layer[i]}_{graph.index[i]}-{pos}",
                "clerp": graph.labels[i],
                "influence": float(graph.influence[i]) if graph.ranked[i] else None,
                "activation": graph.activation[i],
            }
        )
    links = [
        {
            "source": ids[int(graph.src[e])],
            "target": ids[int(graph.dst[e])],
            "weight": float(graph.weight[e]),
        }
        for e in pruned.edges.tolist()
    ]
    return {
        "metadata": {
            "slug": slug,
            "scan": "circuitlab",
            "prompt_tokens": prompt_tokens,
            "prompt": " ".join(prompt_tokens),
            "node_threshold": node_threshold,
            "schema_version": SCHEMA_VERSION,
        },
        "qParams": {
            "pinnedIds": [to_tracer.get(p, p) for p in pinned],
            "supernodes": [
                [name, *(to_tracer.get(m, m) for m in ms)] for name, ms in groups.items()
            ],
            "linkType": "both",
            "clickedId": to_tracer.get(clicked, ""),
            "sg_pos": "",
        },
        "nodes": nodes,
        "links": links,
    }


def export_view(graph: ViewGraph, record: rec.Circuit, state: ViewState) -> tuple[str, dict]:
    """(file name, graph JSON) of the view `state` of `graph` (built, not grouped): pruned as
    on screen, with supernode members pinned in their place."""
    pinned = [m for p in state.pinned for m in state.groups.get(p[2:], [p])]
    if state.subgraph:
        graph = restrict(graph, pinned)
    pruned = prune_view(graph, state.node_fraction, state.min_weight, pinned)
    slug = f"{record.task}-{record.id[:8]}"
    if state.mode == "input" and state.values is not None:
        slug += "-" + "-".join(map(str, state.values))
    body = to_circuit_tracer(
        graph,
        pruned,
        slug=slug,
        prompt_tokens=graph.column_names,
        pinned=pinned,
        groups=state.groups,
        clicked=state.clicked,
        node_threshold=state.node_fraction,
        answer=record.interface.output.position if record.interface else 0,
    )
    return f"{slug}.json", body
