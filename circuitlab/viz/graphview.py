"""The graph the explorer draws: nodes and weighted edges in flat arrays, pruned server-side.

Two sources feed it: a catalog circuit (the task-level graph: the circuit's features with their
influence summed over every input, its tokens and logits) and the attribution graph of one input
(every active feature, error node, token and logit target; built in `live.py`). Both become a
`ViewGraph`, and what the sliders, pins and supernodes do is a pure function of it: a slider
move costs array work, never a model run or a catalog read.

`prune_view`, in order:

1. nodes: features and errors ("ranked" nodes), sorted by influence, keep those holding
   `node_fraction` of the total (circuit-tracer's cumulative rule; 1.0 keeps all); tokens,
   logits and pinned nodes always pass;
2. edges: |weight| >= `min_weight` with both ends passing;
3. a node is shown when a kept edge touches it or it is pinned: the rule `Catalog.graph` uses,
   so at node_fraction 1 the counts equal the catalog's for the same `min_abs_weight`;
4. cap: above `cap` elements (nodes + edges) only the strongest edges that fit are kept, and the
   result says so (the page shows a note).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np

CAP = 3000  # elements (nodes + edges) drawn at most; measured in benchmarks/bench_explorer.py
KINDS = ("token", "feature", "error", "logit", "supernode")


@dataclass
class ViewGraph:
    """Nodes i = 0..n-1 and edges e (src[e] -> dst[e], weight[e]) of one drawable graph.

    rows: vertical band of each node: 0 tokens, layer + 1 for features and errors of a layer,
        n_layers + 1 logits. columns: token position, None for a node of every position (the
        features of a task-level circuit). ranked: takes part in influence pruning.
    layer / index: the model layer and feature index (or token id) behind a node, used to find
        its catalog feature and its activations. catalog_ids: the catalog Feature id, if any.
    """

    ids: list[str]
    kinds: list[str]
    labels: list[str]
    rows: np.ndarray  # (n,) int
    columns: list[int | None]
    layer: list[int]
    index: list[int | None]  # None for a supernode
    influence: np.ndarray  # (n,) float, 0 where not measured
    ranked: np.ndarray  # (n,) bool
    activation: list[float | None]
    in_circuit: np.ndarray  # (n,) bool: one of the circuit's features (or not a feature)
    catalog_ids: list[str | None]
    src: np.ndarray  # (m,) int
    dst: np.ndarray  # (m,) int
    weight: np.ndarray  # (m,) float
    n_rows: int
    column_names: list[str]
    members: dict[str, list[str]] = field(default_factory=dict)  # supernode id -> member ids

    @property
    def n_nodes(self) -> int:
        return len(self.ids)

    @property
    def n_edges(self) -> int:
        return int(len(self.weight))

    def position(self, node_id: str) -> int:
        """Index of a node id; KeyError names it."""
        try:
            return self._lookup()[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in this graph") from None

    def _lookup(self) -> dict[str, int]:
        cache = self.__dict__.get("_index")
        if cache is None:
            cache = {nid: i for i, nid in enumerate(self.ids)}
            self.__dict__["_index"] = cache
        return cache

    def weight_range(self) -> tuple[float, float]:
        """(smallest, largest) non-zero |weight|: the edge slider's span, (1, 1) with no edges."""
        w = np.abs(self.weight[self.weight != 0])
        return (float(w.min()), float(w.max())) if len(w) else (1.0, 1.0)


def node_id(kind: str, layer: int, index: int, position: int | None) -> str:
    """Short, URL-safe node ids: F{layer}.{index}[@pos] for features (N/H for neurons/heads),
    T{token}@pos, L{token}@pos for logits, E{layer}@pos for errors."""
    at = "" if position is None else f"@{position}"
    if kind == "token":
        return f"T{index}{at}"
    if kind == "logit":
        return f"L{index}{at}"
    if kind == "error":
        return f"E{layer}{at}"
    prefix = {"neuron": "N", "head": "H"}.get(kind, "F")
    return f"{prefix}{layer}.{index}{at}"


def row_of(kind: str, layer: int, n_layers: int) -> int:
    if kind == "token":
        return 0
    if kind == "logit":
        return n_layers + 1
    return layer + 1


# --- supernodes and subgraphs -----------------------------------------------------------------


def group(graph: ViewGraph, groups: dict[str, list[str]]) -> ViewGraph:
    """Each group's members replaced by one supernode "S:{name}": influence summed, edges to and
    from the group summed per outside node, edges inside the group dropped. Member ids not in
    the graph are ignored (a stale URL); a group with no member left disappears."""
    lookup = graph._lookup()
    target = np.arange(graph.n_nodes)
    new_nodes: list[tuple[str, list[int]]] = []
    taken: set[int] = set()
    for name, ids in groups.items():
        found = [lookup[i] for i in ids if i in lookup and lookup[i] not in taken]
        if found:
            taken.update(found)
            new_nodes.append((name, found))
    if not new_nodes:
        return graph
    keep = np.array([i not in taken for i in range(graph.n_nodes)], dtype=bool)
    old = np.flatnonzero(keep)
    target[old] = np.arange(len(old))
    for g, (_, found) in enumerate(new_nodes):
        target[found] = len(old) + g

    def pick(values: list) -> list:
        return [values[i] for i in old]

    extra = len(new_nodes)
    rows = [int(round(float(graph.rows[f].mean()))) for _, f in new_nodes]
    cols = []
    for _, found in new_nodes:
        members = {graph.columns[i] for i in found}
        cols.append(members.pop() if len(members) == 1 else None)
    src, dst = target[graph.src], target[graph.dst]
    outside = src != dst
    key = src[outside].astype(np.int64) * (len(old) + extra) + dst[outside]
    uniq, inverse = np.unique(key, return_inverse=True)
    weight = np.zeros(len(uniq))
    np.add.at(weight, inverse, graph.weight[outside])
    ids = pick(graph.ids) + [f"S:{name}" for name, _ in new_nodes]
    return replace(
        graph,
        ids=ids,
        kinds=pick(graph.kinds) + ["supernode"] * extra,
        labels=pick(graph.labels) + [name for name, _ in new_nodes],
        rows=np.concatenate([graph.rows[old], np.array(rows, dtype=graph.rows.dtype)]),
        columns=pick(graph.columns) + cols,
        layer=pick(graph.layer) + [r - 1 for r in rows],
        index=pick(graph.index) + [None] * extra,
        influence=np.concatenate(
            [graph.influence[old], [float(graph.influence[f].sum()) for _, f in new_nodes]]
        ),
        ranked=np.concatenate([graph.ranked[old], np.ones(extra, dtype=bool)]),
        activation=pick(graph.activation) + [None] * extra,
        in_circuit=np.concatenate([graph.in_circuit[old], np.ones(extra, dtype=bool)]),
        catalog_ids=pick(graph.catalog_ids) + [None] * extra,
        src=(uniq // (len(old) + extra)).astype(np.int64),
        dst=(uniq % (len(old) + extra)).astype(np.int64),
        weight=weight,
        members={
            **graph.members,
            **{f"S:{name}": [graph.ids[i] for i in found] for name, found in new_nodes},
        },
    )


def restrict(graph: ViewGraph, keep_ids: list[str]) -> ViewGraph:
    """The subgraph of the given nodes (unknown ids ignored) and the edges among them."""
    lookup = graph._lookup()
    keep = np.zeros(graph.n_nodes, dtype=bool)
    keep[[lookup[i] for i in keep_ids if i in lookup]] = True
    old = np.flatnonzero(keep)
    new_index = np.full(graph.n_nodes, 0, dtype=np.int64)
    new_index[old] = np.arange(len(old))
    edge = keep[graph.src] & keep[graph.dst]

    def pick(values: list) -> list:
        return [values[i] for i in old]

    return replace(
        graph,
        ids=pick(graph.ids),
        kinds=pick(graph.kinds),
        labels=pick(graph.labels),
        rows=graph.rows[old],
        columns=pick(graph.columns),
        layer=pick(graph.layer),
        index=pick(graph.index),
        influence=graph.influence[old],
        ranked=graph.ranked[old],
        activation=pick(graph.activation),
        in_circuit=graph.in_circuit[old],
        catalog_ids=pick(graph.catalog_ids),
        src=new_index[graph.src[edge]],
        dst=new_index[graph.dst[edge]],
        weight=graph.weight[edge],
    )


# --- pruning ----------------------------------------------------------------------------------


class Pruned(NamedTuple):
    nodes: np.ndarray  # (k,) int: indices of the nodes shown
    edges: np.ndarray  # (j,) int: indices of the edges shown, strongest first
    capped_from: int  # elements before the cap (0 when the cap did not act)


def passing_nodes(graph: ViewGraph, node_fraction: float) -> np.ndarray:
    """(n,) bool: step 1 of the module docstring (without pins)."""
    if not 0.0 <= node_fraction <= 1.0:
        raise ValueError(f"node_fraction must be in [0, 1], got {node_fraction}")
    passing = ~graph.ranked.copy()
    ranked = np.flatnonzero(graph.ranked)
    if node_fraction >= 1.0 or len(ranked) == 0:
        passing[ranked] = True
        return passing
    scores = np.maximum(graph.influence[ranked], 0.0)
    total = scores.sum()
    if total <= 0:
        passing[ranked] = True
        return passing
    order = np.argsort(-scores, kind="stable")
    cumulative = np.cumsum(scores[order]) / total
    n_keep = int(np.searchsorted(cumulative, node_fraction - 1e-12) + 1)
    passing[ranked[order[:n_keep]]] = True
    return passing


def prune_view(
    graph: ViewGraph,
    node_fraction: float = 1.0,
    min_weight: float = 0.0,
    pinned: tuple[str, ...] | list[str] = (),
    cap: int = CAP,
) -> Pruned:
    """The nodes and edges to draw (see the module docstring)."""
    if not (min_weight >= 0 and math.isfinite(min_weight)):
        raise ValueError(f"min_weight must be a finite number >= 0, got {min_weight}")
    lookup = graph._lookup()
    pin = np.zeros(graph.n_nodes, dtype=bool)
    pin[[lookup[p] for p in pinned if p in lookup]] = True
    passing = passing_nodes(graph, node_fraction) | pin
    edge_ok = (np.abs(graph.weight) >= min_weight) & passing[graph.src] & passing[graph.dst]
    edges = np.flatnonzero(edge_ok)
    edges = edges[np.argsort(-np.abs(graph.weight[edges]), kind="stable")]
    shown = pin.copy()
    shown[graph.src[edges]] = True
    shown[graph.dst[edges]] = True
    total = int(shown.sum()) + len(edges)
    if total <= cap:
        return Pruned(np.flatnonzero(shown), edges, 0)
    # strongest edges first: elements(k) = k + pins + unpinned nodes touched by the first k edges
    first = np.full(graph.n_nodes, len(edges), dtype=np.int64)  # first edge touching each node
    np.minimum.at(first, graph.src[edges], np.arange(len(edges)))
    np.minimum.at(first, graph.dst[edges], np.arange(len(edges)))
    free = ~pin & (first < len(edges))
    arrivals = np.zeros(len(edges) + 1, dtype=np.int64)
    np.add.at(arrivals, first[free] + 1, 1)
    elements = np.arange(len(edges) + 1) + np.cumsum(arrivals) + int(pin.sum())
    k = max(int(np.searchsorted(elements, cap, side="right")) - 1, 0)
    kept = edges[:k]
    shown = pin.copy()
    shown[graph.src[kept]] = True
    shown[graph.dst[kept]] = True
    return Pruned(np.flatnonzero(shown), kept, total)


# --- layout -----------------------------------------------------------------------------------

CELL_WIDTH = 0.8  # share of a column's width the nodes of one cell spread over
PER_LINE = 40  # nodes side by side in one cell before they wrap to another line


def layout(graph: ViewGraph, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the given nodes: x by token position (one column each; nodes of every position
    spread across all columns), y by row; within a cell, most influential first from the left,
    wrapping onto extra lines inside the row's band when a cell holds many nodes."""
    n_columns = max(len(graph.column_names), 1)
    x = np.zeros(len(nodes))
    y = np.zeros(len(nodes))
    cells: dict[tuple[int, int | None], list[int]] = {}
    for k, i in enumerate(nodes.tolist()):
        cells.setdefault((int(graph.rows[i]), graph.columns[i]), []).append(k)
    for (row, column), members in cells.items():
        members.sort(key=lambda k: (-float(graph.influence[nodes[k]]), graph.ids[nodes[k]]))
        if column is None:
            left, width = -0.5 * CELL_WIDTH, n_columns - 1 + CELL_WIDTH
        else:
            left, width = column - 0.5 * CELL_WIDTH, CELL_WIDTH
        per_line = min(len(members), PER_LINE * (1 if column is not None else n_columns))
        lines = -(-len(members) // per_line)
        for j, k in enumerate(members):
            line, slot = divmod(j, per_line)
            x[k] = left + width * (slot + 0.5) / per_line
            y[k] = row + (0.0 if lines == 1 else 0.6 * (line / (lines - 1) - 0.5))
    return x, y
