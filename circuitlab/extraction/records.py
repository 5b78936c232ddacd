"""Catalog records for an extraction: the Task, the Model (checkpoint) and the Circuit.

The catalog knows storage, not torch: everything here is turned into plain JSON values.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitlab.catalog import (
    Artifact,
    Circuit,
    Edge,
    Example,
    Feature,
    Function,
    Implements,
    Interpretation,
    Metadata,
    Metrics,
    Model,
    Node,
    Tags,
    Task,
)
from circuitlab.extraction.artifact import sha256_file

if TYPE_CHECKING:
    from torch import Tensor

    from circuitlab.extraction.aggregate import TaskEdges
    from circuitlab.extraction.circuit import Faithfulness
    from circuitlab.extraction.graph import GraphScores
    from circuitlab.extraction.interface import InterfaceDefinition
    from circuitlab.extraction.pipeline import ExtractConfig
    from circuitlab.extraction.transcoder import Transcoder, TranscoderMetrics
    from circuitlab.models import ModelConfig, Transformer
    from circuitlab.tasks.base import Task as TaskDefinition
    from circuitlab.training.rundir import RunInfo

EDGE_MIN = 1e-6  # averaged edges smaller than this (in logit units) are not stored


def task_record(task: TaskDefinition) -> Task:
    family = type(task).__module__.rsplit(".", 1)[-1]
    return Task(
        spec=task.spec,
        family=family,
        description=task.describe(),
        d_vocab=task.d_vocab,
        d_vocab_out=task.d_vocab_out,
        n_ctx=task.n_ctx,
        n_examples=len(task.dataset()),
    )


def model_record(
    info: RunInfo,
    cfg: ModelConfig,
    parent: Model | None = None,
    *,
    weights_sha256: str | None = None,
    weights: dict[str, Tensor] | None = None,
) -> Model:
    """The Model record of the run at `info`; `parent` is the record of the run it was derived
    from (its config.json `parent`), which becomes its DERIVED_FROM. `weights_sha256` and
    `weights` (TransformerLens names) spare reading model.safetensors again when the caller
    already has them."""
    summary, config = info.summary, info.config
    final = {k: float(v) for k, v in summary.get("final", {}).items() if isinstance(v, int | float)}
    derived = config.get("parent")
    method = derived.get("method", {}) if derived else {}
    extra: dict[str, Any] = {"versions": config.get("versions", {})}
    if derived and parent is None:  # the parent's run is gone or changed: keep what was said
        extra["parent"] = derived
    return Model(
        task=info.task,
        weights_sha256=weights_sha256 or sha256_file(info.path / "model.safetensors"),
        architecture=cfg.to_dict(),
        n_params=cfg.n_params,
        attention=cfg.attention_backend,
        pruning=_pruning(info, cfg, weights) if derived and derived["how"] == "prune" else None,
        lora_rank=int(method["rank"]) if derived and derived["how"] == "lora" else None,
        parent=None if parent is None else parent.id,
        derivation=None if parent is None else derived["how"],
        training={
            "recipe": config.get("recipe", {}),
            "seed": config.get("seed"),
            "steps": summary.get("steps"),
            "grokked_at": summary.get("grokked_at"),
            **({"derivation": method} if derived else {}),
        },
        metrics=final,
        metadata=Metadata(source_run=str(info.path), extra=extra),
    )


def _parent_tasks(lineage: list[Model], task: Task) -> list[Task]:
    """Task records of ancestors trained on another task (a LoRA base), for TRAINED_ON."""
    from circuitlab.tasks import get_task

    specs = dict.fromkeys(m.task for m in lineage if m.task != task.spec)
    return [task_record(get_task(spec)) for spec in specs]


def _pruning(info: RunInfo, cfg: ModelConfig, weights: dict[str, Tensor] | None) -> float:
    """Share of zero weight-matrix entries in the run's weights (structured pruning included:
    a removed neuron zeroes its rows and columns)."""
    from circuitlab.models import Transformer
    from circuitlab.training.prune import weight_sparsity

    if weights is None:
        weights = Transformer.load(info.path / "model.safetensors", cfg).tl_state_dict()
    return round(weight_sparsity(weights, cfg), 6)


def model_lineage(info: RunInfo, model: Transformer) -> list[Model]:
    """The run's Model record (of its loaded `model`) last, after those of the runs it derives
    from, parents first (a DERIVED_FROM target must be stored before its source).

    An ancestor is followed through its run directory only while that directory still holds
    the weights its child names (sha256): a moved, deleted or retrained parent ends the chain,
    and the child keeps the recorded provenance in `metadata.extra["parent"]` instead of a link
    to the wrong checkpoint."""
    from circuitlab.training.rundir import RunDirError, read_run

    chain = [info]
    hashes: list[str | None] = [None]  # an ancestor's, checked below; the run's own: computed
    seen = {info.path.resolve()}
    while (derived := chain[-1].config.get("parent")) is not None:
        path = Path(derived["run"])
        if not path.is_absolute():
            path = chain[-1].path / path
        try:
            parent = read_run(path)
        except RunDirError:
            break
        if path.resolve() in seen:  # a cycle (hand-edited config.json): stop, not loop
            break
        if sha256_file(parent.path / "model.safetensors") != derived["weights_sha256"]:
            break
        seen.add(path.resolve())
        chain.append(parent)
        hashes.append(derived["weights_sha256"])
    records: list[Model] = []
    for run, sha in zip(reversed(chain), reversed(hashes), strict=True):
        parent_record = records[-1] if records else None
        if run is info:
            own = model_record(run, model.cfg, parent_record, weights=model.tl_state_dict())
            records.append(own)
        else:
            records.append(model_record(run, run.model_config, parent_record, weights_sha256=sha))
    return records


def catalog_records(
    info: RunInfo,
    model: Transformer,
    task: TaskDefinition,
    *,
    transcoder: Transcoder,
    transcoder_metrics: TranscoderMetrics,
    scores: GraphScores,
    importance: Tensor,
    edges: TaskEdges,
    faith: Faithfulness,
    interpretation: dict[str, Any],
    feature_labels: dict[tuple[int, int], dict[str, Any]],
    config: ExtractConfig,
    interface: InterfaceDefinition | None = None,
    examples: Sequence[dict[str, Any]] = (),
    artifact: Artifact | None = None,
) -> list[Any]:
    """[Task, ..., Model, Circuit] ready for `Catalog.put_many` (the circuit last; a derived
    model's ancestors and their tasks come before it); `implements_records` adds the link
    to the function the interface's signature names.

    `importance` is (n_layers, n_features); `edges` holds the circuit's averaged direct effects;
    `feature_labels` maps (layer, feature) to Fourier statistics for the Circuit's nodes."""
    task_rec = task_record(task)
    lineage = model_lineage(info, model)
    model_rec = lineage[-1]
    model_id = model_rec.id
    tc_name = f"{transcoder.cfg.kind}-{transcoder.n_features}"
    names = task.token_names()
    n_layers = model.cfg.n_layers
    features: dict[tuple, Feature] = {}
    nodes: list[Node] = []
    for key in edges.keys:
        if key[0] == "feature":
            _, layer, f = key
            stats = {
                "importance": float(importance[layer, f]),
                **feature_labels.get((layer, f), {}),
            }
            label = stats.pop("label", None) or f"L{layer} F{f}"
            feature = Feature(
                model=model_id,
                node_type="feature",
                layer=layer,
                index=f,
                transcoder=tc_name,
                label=label,
                stats=stats,
            )
            influence = float(importance[layer, f])
        elif key[0] == "token":
            pos = key[1]
            label = "=" if pos in model.cfg.answer_positions else f"operand {chr(ord('a') + pos)}"
            feature = Feature(
                model=model_id,
                node_type="token",
                layer=0,
                index=pos,
                position=pos,
                label=label,
                stats={"vocabulary": len(names)},
            )
            influence = None
        else:
            pos = key[1]
            feature = Feature(
                model=model_id,
                node_type="logit",
                layer=n_layers + 1,
                index=pos,
                position=pos,
                label=f"answer at position {pos}",
            )
            influence = None
        features[key] = feature
        nodes.append(Node(feature=feature, influence=influence))
    w = edges.weights
    edge_records = []
    for t, s in (w.abs() > EDGE_MIN).nonzero().tolist():
        edge_records.append(
            Edge(
                source=features[edges.keys[s]].id,
                target=features[edges.keys[t]].id,
                weight=float(w[t, s]),
            )
        )
    metrics = Metrics(
        sufficiency=faith.sufficiency,
        necessity=faith.necessity_drop,
        ablation=faith.ablation,
        accuracy=faith.sufficiency_accuracy,
        replacement_score=float(scores.replacement.mean()),
        completeness=float(scores.completeness.mean()),
        n_examples=faith.n_inputs,
        extra={
            "full_accuracy": faith.full_accuracy,
            "full_loss": faith.full_loss,
            "features_kept": float(faith.n_features),
            "features_total": float(faith.n_features_total),
            "sufficiency_loss": faith.sufficiency_loss,
            "necessity_accuracy": faith.necessity_accuracy,
            "necessity_loss": faith.necessity_loss,
            "transcoder_nmse": transcoder_metrics.nmse,
            "transcoder_l0": transcoder_metrics.l0,
            "replacement_top1_agreement": transcoder_metrics.top1_agreement,
        },
    )
    kept_share = faith.n_features / max(faith.n_features_total, 1)
    example_records = []
    for ex in examples:
        feature = features.get(("feature", ex["layer"], ex["feature"]))
        for top in ex.get("top_examples", [])[:3]:
            example_records.append(
                Example(
                    tokens=list(top["tokens"]),
                    text=top["text"],
                    value=float(top["value"]),
                    feature=feature.id if feature else None,
                )
            )
    circuit = Circuit(
        task=task.spec,
        model=model_id,
        nodes=nodes,
        edges=edge_records,
        interface=None if interface is None else interface.to_record(),
        examples=example_records,
        interpretation=Interpretation(**interpretation),
        metrics=metrics,
        tags=Tags(
            priors=["Core_Number"]
            if interpretation.get("method") == "fourier"
            else ["Task_Specific"],
            complexity="low" if kept_share < 0.1 else "medium" if kept_share < 0.3 else "high",
        ),
        artifact=artifact,
        metadata=Metadata(source_run=str(info.path), extra={"extraction": config.to_dict()}),
    )
    return [task_rec, *_parent_tasks(lineage, task_rec), *lineage, circuit]


_PARAM = re.compile(r"(\w+)=(\d+)")
_GRID_DOMAIN = re.compile(r"grid\[(\d+)x(\d+)\]:Z_(\d+)")


def registry_function(interface: InterfaceDefinition) -> Any | None:
    """The registry function a verified primitive signature names, with the task's parameters
    fixed: ADDMOD(a, b, p=113) becomes ADDMOD_113(a: Z_113, b: Z_113) -> Z_113. None when the
    signature is not a registry primitive."""
    from circuitlab.registry import Domain, Function, Input, Kind, call
    from circuitlab.registry.expr import Var

    sig = interface.signature
    if sig is None or not sig.primitive:
        return None
    params = {k: int(v) for k, v in _PARAM.findall(sig.call)}

    def domain(text: str) -> Domain:
        if m := _GRID_DOMAIN.fullmatch(text):
            return Domain(Kind.GRID, shape=(int(m[1]), int(m[2])), colours=int(m[3]))
        return Domain(Kind.INT, modulus=int(text.removeprefix("Z_")))

    inputs = [Input(p.name, domain(p.domain)) for p in interface.inputs]
    out = interface.output.domain
    grid = _GRID_DOMAIN.fullmatch(interface.inputs[0].domain)
    suffix = f"{grid[1]}x{grid[2]}_c{grid[3]}" if grid else out.removeprefix("Z_")
    expr = call(sig.function, *(Var(i) for i in range(len(inputs))), **params)
    return Function.new(
        f"{sig.function}_{suffix}",
        inputs,
        expr,
        output=domain(out),
        description=f"{sig.expression}: the registry primitive {sig.call}",
    )


def implements_records(
    circuit: Circuit, interface: InterfaceDefinition | None, catalog: Any, fn: Any | None
) -> list[Any]:
    """The Function the circuit's verified signature names and the IMPLEMENTS edge to it.

    A primitive signature links the registry's own function `fn` (`registry_function`;
    registered in the catalog's registry when it is not there yet, so
    `Registry.open(catalog_url)` can call it); any other verified signature (S_n products,
    synthesis tasks; `fn` None) gets a Function record naming it."""
    signature = None if interface is None else interface.signature
    if signature is None or signature.agreement <= 0:
        return []
    details = {"call": signature.call, "expression": signature.expression}
    if fn is not None:
        from circuitlab.registry import Registry
        from circuitlab.registry.catalog_store import CatalogStore

        store = CatalogStore(catalog)
        registry = Registry(store)
        if fn.name not in registry:
            registry.register(fn)
        stored = registry.get(fn.name)
        function_id = store.record_id(stored.name, stored.version)
        out: list[Any] = []
    else:
        function = Function(
            name=signature.function,
            signature=signature.signature,
            expression=signature.expression,
            input_domains=[port.domain for port in circuit.interface.inputs],
            output_domain=circuit.interface.output.domain,
            description=signature.call,
            properties={"call": signature.call, "primitive": False},
        )
        function_id = function.id
        out = [function]
    out.append(
        Implements(
            circuit=circuit.id,
            function=function_id,
            agreement=signature.agreement,
            n_examples=signature.n_examples,
            details=details,
        )
    )
    return out
