"""Catalog records for an extraction: the Task, the Model (checkpoint) and the Circuit.

The catalog knows storage, not torch: everything here is turned into plain JSON values.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from circuitlab.catalog import (
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

if TYPE_CHECKING:
    from torch import Tensor

    from circuitlab.extraction.circuit import Faithfulness, TaskEdges
    from circuitlab.extraction.graph import GraphScores
    from circuitlab.extraction.interface import InterfaceDefinition
    from circuitlab.extraction.pipeline import ExtractConfig
    from circuitlab.extraction.transcoder import Transcoder, TranscoderMetrics
    from circuitlab.models import Transformer
    from circuitlab.tasks.base import Task as TaskDefinition
    from circuitlab.training.rundir import RunInfo

EDGE_MIN = 1e-6  # averaged edges smaller than this (in logit units) are not stored


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def model_record(info: RunInfo, model: Transformer) -> Model:
    summary, config = info.summary, info.config
    final = {k: float(v) for k, v in summary.get("final", {}).items() if isinstance(v, int | float)}
    return Model(
        task=info.task,
        weights_sha256=_sha256(info.path / "model.safetensors"),
        architecture=model.cfg.to_dict(),
        n_params=model.cfg.n_params,
        attention=model.cfg.attention_backend,
        training={
            "recipe": config.get("recipe", {}),
            "seed": config.get("seed"),
            "steps": summary.get("steps"),
            "grokked_at": summary.get("grokked_at"),
        },
        metrics=final,
        metadata=Metadata(
            source_run=str(info.path), extra={"versions": config.get("versions", {})}
        ),
    )


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
) -> list[Any]:
    """[Task, Model, Circuit] ready for `Catalog.put_many`, followed by the verified signature
    as a Function and the circuit's IMPLEMENTS edge to it when the interface has one.

    `importance` is (n_layers, n_features); `edges` holds the circuit's averaged direct effects;
    `feature_labels` maps (layer, feature) to Fourier statistics for the Circuit's nodes."""
    task_rec = task_record(task)
    model_rec = model_record(info, model)
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
            k = stats.get("dominant_frequency")
            label = f"k={k} (purity {stats['purity']:.2f})" if k else f"L{layer} F{f}"
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
    full = max(faith.full_accuracy, 1e-12)
    metrics = Metrics(
        sufficiency=faith.sufficiency_accuracy / full,
        necessity=1.0 - faith.necessity_accuracy / full,
        ablation=faith.ablation,
        accuracy=faith.sufficiency_accuracy,
        replacement_score=float(scores.replacement.mean()),
        completeness=float(scores.completeness.mean()),
        n_examples=faith.n_inputs,
        extra={
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
        metadata=Metadata(source_run=str(info.path), extra={"extraction": config.to_dict()}),
    )
    out: list[Any] = [task_rec, model_rec, circuit]
    signature = None if interface is None else interface.signature
    if signature is not None and signature.agreement > 0:
        function = Function(
            name=signature.function,
            signature=signature.signature,
            expression=signature.expression,
            input_domains=[port.domain for port in circuit.interface.inputs],
            output_domain=circuit.interface.output.domain,
            description=f"{signature.call}: a registry primitive"
            if signature.primitive
            else signature.call,
            properties={"call": signature.call, "primitive": signature.primitive},
        )
        out += [
            function,
            Implements(
                circuit=circuit.id,
                function=function.id,
                agreement=signature.agreement,
                n_examples=signature.n_examples,
            ),
        ]
    return out
