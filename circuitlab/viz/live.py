"""What needs the run directory: a circuit's model and transcoder, loaded on demand.

1. `input_graph`: the attribution graph of one input (`extraction.attribute` on that prompt):
   every active transcoder feature at every position, the error nodes, tokens and logit
   targets, with circuit-tracer's node influence; the circuit's own features are marked.
2. `feature_report`: one feature measured over the task's inputs (at most `MAX_INPUTS`): top
   activating inputs, activation histogram, for two-operand modular tasks the activation over
   the (a, b) grid and its Fourier spectrum (`extraction.fourier`), and the output tokens it
   promotes and suppresses when it writes (`extraction.interpret.output_effects`).

Loaded circuits stay in memory (the last few), with the MLP inputs of the task's inputs, so a
second click costs one encoder product. Torch work runs under one lock: the server answers
requests on several threads, and the products are small enough that one at a time is fastest.
A circuit whose run directory is gone raises ExplorerError; the page still shows its
task-level graph, which lives in the catalog.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from circuitlab.catalog import records as rec
from circuitlab.extraction import AttributionConfig, Circuit, CircuitLoadError, attribute
from circuitlab.extraction.activations import ActivationError, mlp_activations, task_tokens
from circuitlab.extraction.graph import ERROR, FEATURE, TOKEN, AttributionGraph, node_influence
from circuitlab.viz.graphview import ViewGraph, node_id, row_of
from circuitlab.viz.sources import ExplorerError, column_names

MAX_INPUTS = 20_000  # task inputs a feature is measured on (a seeded sample beyond that)
EFFECT_SAMPLE = 256  # inputs the logit effects are averaged over
_BOUND = re.compile(r"(?:^|:)[ZS]_(\d+)$")


@dataclass
class FeatureReport:
    """One transcoder feature measured over the task's inputs, at sequence `position`."""

    layer: int
    index: int
    position: int
    n_inputs: int
    firing_rate: float
    mean_active: float
    max_activation: float
    top: list[tuple[str, float]]  # (input as text, activation), largest first
    active: np.ndarray  # activations where the feature fires (histogram)
    grid: np.ndarray | None  # (p, p) activation over operands (a, b): modular tasks only
    spectrum: np.ndarray | None  # (K,) share of variance explained by frequency k = 1..K
    promotes: list[tuple[str, float]]  # output tokens and the mean change of their logit
    suppresses: list[tuple[str, float]]


class _Loaded:
    """A runnable circuit with the task inputs it is measured on and, once a feature was
    asked for, their MLP inputs (reused by every later feature of the same circuit)."""

    def __init__(self, circuit: Circuit) -> None:
        self.circuit = circuit
        self.tokens, _ = task_tokens(circuit.task, sample=MAX_INPUTS)
        self.mlp_in: list[torch.Tensor] | None = None
        self.positions: list[tuple[int, ...]] = []

    def inputs(self) -> tuple[list[torch.Tensor], list[tuple[int, ...]]]:
        if self.mlp_in is None:
            acts = mlp_activations(self.circuit.model, self.tokens)
            self.mlp_in, self.positions = acts.mlp_in, acts.positions
        return self.mlp_in, self.positions


class LiveCircuits:
    """Runnable circuits, loaded from their run directories when first needed."""

    def __init__(self, runs_dir: Path | None = None, keep: int = 4) -> None:
        self.runs_dir = runs_dir
        self._loaded: OrderedDict[str, _Loaded] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def _get(self, record: rec.Circuit) -> _Loaded:
        """Callers hold the lock."""
        if record.id in self._loaded:
            self._loaded.move_to_end(record.id)
            return self._loaded[record.id]
        try:
            circuit = Circuit.load(self._located(record))
        except CircuitLoadError as exc:
            raise ExplorerError(
                f"{exc}. The task-level graph comes from the catalog; single-input graphs and "
                "feature activations need the run directory."
            ) from None
        loaded = _Loaded(circuit)
        self._loaded[record.id] = loaded
        while len(self._loaded) > self._keep:
            self._loaded.popitem(last=False)
        return loaded

    def _located(self, record: rec.Circuit) -> rec.Circuit:
        """The record, or a copy whose relative source_run is found under --runs when it is
        not found as given (the catalog's copy is left as it is)."""
        run = record.metadata.source_run
        if not run or self.runs_dir is None or Path(run).is_absolute() or Path(run).is_dir():
            return record
        for candidate in (self.runs_dir / run, self.runs_dir / Path(run).name):
            if candidate.is_dir():
                metadata = replace(record.metadata, source_run=str(candidate))
                return replace(record, metadata=metadata)
        return record

    def input_graph(self, record: rec.Circuit, values: tuple[int, ...]) -> ViewGraph:
        """The attribution graph of the input with these port values."""
        with self._lock:
            loaded = self._get(record)
            tokens = encode(loaded.circuit, record, values)
            try:
                graph = attribute(
                    loaded.circuit.model,
                    loaded.circuit.transcoder,
                    tokens,
                    AttributionConfig(qk=False),
                )
            except ActivationError as exc:
                raise ExplorerError(f"input {values}: {exc}") from None
            influence = node_influence(graph.adjacency[0], graph.logit_weights()[0])
            return _view(graph, influence, loaded.circuit, record)

    def feature_report(
        self, record: rec.Circuit, layer: int, index: int, position: int | None
    ) -> FeatureReport:
        """`FeatureReport` of feature `index` of `layer`, at `position` (None: the answer)."""
        from circuitlab.extraction import fourier
        from circuitlab.extraction.interpret import (
            output_effects,
            render_input,
            transcoder_directions,
        )

        with self._lock:
            loaded = self._get(record)
            circuit = loaded.circuit
            tc, model, task = circuit.transcoder, circuit.model, circuit.task
            if not (0 <= layer < tc.n_layers and 0 <= index < tc.n_features):
                raise ExplorerError(f"no feature {index} in layer {layer} of the transcoder")
            mlp_in, positions = loaded.inputs()
            rows = positions[layer]
            answer = model.cfg.answer_positions[0]
            want = answer if position is None else position
            q = rows.index(want) if want in rows else len(rows) - 1
            with torch.no_grad():
                acts = tc.encode(layer, mlp_in[layer][:, q])[:, index].float()
            fires = acts > 0
            mean_active = float(acts[fires].mean()) if bool(fires.any()) else 0.0
            top = acts.topk(min(10, len(acts)))
            examples = [
                (render_input(task, loaded.tokens[i].tolist()), float(v))
                for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                if v > 0
            ]
            grid = spectrum = None
            try:
                from circuitlab.extraction.fourier_fits import coordinates_for

                p = fourier.modulus_of(task)
                coords = coordinates_for(model, task)  # discrete logs for mul and div
                g = fourier.activation_grid(acts[:, None], loaded.tokens, p, coords=coords)
                grid = g[..., 0].numpy()
                spectrum = fourier.unit_frequencies(g).explained[0].numpy()
            except fourier.FourierError:
                pass
            promotes: list[tuple[str, float]] = []
            suppresses: list[tuple[str, float]] = []
            if mean_active > 0:
                dirs = {
                    t: d[index : index + 1] for t, d in transcoder_directions(tc, layer).items()
                }
                sample = loaded.tokens[: min(EFFECT_SAMPLE, len(loaded.tokens))]
                effect = output_effects(model, dirs, sample, scale=torch.tensor([mean_active]))[0]
                names = task.output_names()
                order = effect.argsort(descending=True).tolist()
                promotes = [(names[i], float(effect[i])) for i in order[:8]]
                suppresses = [(names[i], float(effect[i])) for i in order[::-1][:8]]
            return FeatureReport(
                layer=layer,
                index=index,
                position=rows[q],
                n_inputs=len(acts),
                firing_rate=float(fires.float().mean()),
                mean_active=mean_active,
                max_activation=float(acts.max()),
                top=examples,
                active=acts[fires].numpy(),
                grid=grid,
                spectrum=spectrum,
                promotes=promotes,
                suppresses=suppresses,
            )


def default_values(record: rec.Circuit) -> tuple[int, ...]:
    """Port values of the circuit's first stored example (else zeros), one per token position
    of every port (a grid port gives its cells row-major): the input the graph view opens with."""
    if record.interface is None:
        return ()
    positions = [i for p in record.interface.inputs for i in p.all_positions()]
    if record.examples:
        tokens = record.examples[0].tokens
        try:
            return tuple(tokens[i] for i in positions)
        except IndexError:
            pass
    return tuple(0 for _ in positions)


def parse_values(record: rec.Circuit, text: str) -> tuple[int, ...]:
    """Port values, one per token position of every port, from "37, 75" (one integer per port)
    or, for a grid port, its rows of digits "012/210/000" (or every cell as its own integer),
    checked against each port's domain (Z_p, S_n, grid[HxW]:Z_k); ExplorerError names the
    port and the range."""
    if record.interface is None:
        raise ExplorerError("this circuit has no interface: its inputs are unknown")
    ports = record.interface.inputs
    sizes = [len(p.all_positions()) for p in ports]
    parts = [p for p in re.split(r"[\s,;]+", text.strip()) if p]
    if len(parts) == sum(sizes):  # every position given
        chunks = [parts[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(ports))]
    elif len(parts) == len(ports):  # one per port: a grid as rows of digits
        chunks = [
            [part] if k == 1 else list(part.replace("/", ""))
            for part, k in zip(parts, sizes, strict=True)
        ]
    else:
        names = ", ".join(p.name for p in ports)
        grid = " (a grid as rows of digits, e.g. 012/210/000)" if max(sizes) > 1 else ""
        raise ExplorerError(f"give {len(ports)} values ({names}){grid}, got {text!r}")
    values = []
    for port, chunk, k in zip(ports, chunks, sizes, strict=True):
        if len(chunk) != k:
            raise ExplorerError(
                f"input {port.name} ({port.domain}) needs {k} cells, got {len(chunk)}"
            )
        m = _BOUND.search(port.domain)
        for part in chunk:
            try:
                value = int(part)
            except ValueError:
                raise ExplorerError(f"input {port.name}: {part!r} is not an integer") from None
            if value < 0 or (m and value >= int(m[1])):
                top = f"..{int(m[1]) - 1}" if m else ""
                raise ExplorerError(
                    f"input {port.name} must be in 0{top} ({port.domain}), got {value}"
                )
            values.append(value)
    return tuple(values)


def encode(circuit: Circuit, record: rec.Circuit, values: tuple[int, ...]) -> torch.Tensor:
    """Token sequence (1, n_ctx) of flat port values (see `parse_values`)."""
    ports = record.interface.inputs if record.interface is not None else []
    sizes = [len(p.all_positions()) for p in ports]
    if not ports or len(values) != sum(sizes):
        raise ExplorerError(f"input {values} does not match the circuit's ports")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    arrays = [
        np.array([values[s]]) if k == 1 else np.array([values[s : s + k]])
        for s, k in zip(starts, sizes, strict=True)
    ]
    return circuit.encode(*arrays)


def _view(
    graph: AttributionGraph, influence: torch.Tensor, circuit: Circuit, record: rec.Circuit
) -> ViewGraph:
    """One prompt's AttributionGraph as a ViewGraph (node ids as in `graphview.node_id`)."""
    task, n_layers = circuit.task, graph.n_layers
    tok_names, out_names = task.token_names(), task.output_names()
    catalog = {
        (n.feature.layer, n.feature.index): n.feature
        for n in record.nodes
        if n.feature.node_type == "feature"
    }
    kinds_all = graph.node_kinds.tolist()
    real = graph.node_mask[0]
    adjacency = graph.adjacency[0]
    keep = torch.nonzero(real | (adjacency != 0).any(0) | (adjacency != 0).any(1)).flatten()
    tokens = graph.tokens[0].tolist()
    rows: dict[str, list] = {k: [] for k in ("ids", "kinds", "labels", "rows", "columns")}
    extra: dict[str, list] = {k: [] for k in ("layer", "index", "act", "circuit", "catalog")}
    for i in keep.tolist():
        kind = kinds_all[i]
        activation = None
        in_circuit, catalog_id = True, None
        if kind == FEATURE:
            layer, pos, feat = graph.features[0, i].tolist()
            name, index = "feature", feat
            activation = float(graph.activations[0, i])
            known = catalog.get((layer, feat))
            in_circuit = bool(circuit.keep[layer][feat])
            catalog_id = known.id if known is not None else None
            label = known.label if known is not None and known.label else f"L{layer} F{feat}"
        elif kind == ERROR:
            layer, pos = divmod(i - graph.error_start, graph.n_pos)
            name, index, label = "error", layer, f"error L{layer}"
        elif kind == TOKEN:
            pos = i - graph.token_start
            layer, name, index = 0, "token", tokens[pos]
            label = tok_names[index] if index < len(tok_names) else str(index)
        else:
            slot = i - graph.logit_start
            layer, name = n_layers + 1, "logit"
            index, pos = int(graph.logit_tokens[0, slot]), int(graph.logit_positions[slot])
            prob = float(graph.logit_probs[0, slot])
            out = out_names[index] if index < len(out_names) else str(index)
            label = f'output "{out}" (p={prob:.3f})'
        rows["ids"].append(node_id(name, layer, index, pos))
        rows["kinds"].append(name)
        rows["labels"].append(label)
        rows["rows"].append(row_of(name, layer, n_layers))
        rows["columns"].append(pos)
        extra["layer"].append(layer)
        extra["index"].append(index)
        extra["act"].append(activation)
        extra["circuit"].append(in_circuit)
        extra["catalog"].append(catalog_id)
    sub = adjacency[keep][:, keep]
    dst, src = torch.nonzero(sub, as_tuple=True)
    ranked = np.array([k in ("feature", "error") for k in rows["kinds"]], dtype=bool)
    return ViewGraph(
        ids=rows["ids"],
        kinds=rows["kinds"],
        labels=rows["labels"],
        rows=np.array(rows["rows"], dtype=np.int64),
        columns=rows["columns"],
        layer=extra["layer"],
        index=extra["index"],
        influence=influence[keep].double().numpy() * ranked,
        ranked=ranked,
        activation=extra["act"],
        in_circuit=np.array(extra["circuit"], dtype=bool),
        catalog_ids=extra["catalog"],
        src=src.numpy().astype(np.int64),
        dst=dst.numpy().astype(np.int64),
        weight=sub[dst, src].double().numpy(),
        n_rows=n_layers + 2,
        column_names=[
            tok if name == "out" else f"{name}={tok}"
            for name, tok in zip(
                column_names(record, len(tokens)),
                (tok_names[t] if t < len(tok_names) else str(t) for t in tokens),
                strict=True,
            )
        ],
    )
