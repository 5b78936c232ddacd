"""`extract`: from a run directory to a measured circuit in the catalog.

Phases (the progress output uses the same names):
 1. activations   MLP inputs and outputs over all of the task's inputs
 2. transcoder    train a (cross-layer) transcoder; measure NMSE, L0, dead features and the
                  replacement model's agreement and loss on every input
 3. attribution   attribution graphs of every input, chunk by chunk: each chunk's scores,
                  feature influence and edges are added to running totals, then dropped
 4. circuit       rank features by influence over all inputs; the smallest set meeting the
                  sufficiency target; necessity of that set; its edges averaged from the totals
 5. interpret     Fourier analysis for modular arithmetic (Nanda et al. 2023)
 6. write         artifacts into RUN/extraction/ (written as extraction.partial, then renamed):
                  the circuit record (circuit.json) with the transcoder and the ablation
                  statistics it names by hash, so `Circuit.load` can run it
 7. catalog       the same Task, Model and Circuit records through the catalog API, and the
                  IMPLEMENTS link to the registry function its signature names

Before any of it, the peak memory is estimated (memory.py) and a run that cannot fit is
refused; attribution checks again once the transcoder fixes the size of its graphs.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitlab._atomic import replace_dir, write_json_atomic
from circuitlab._precision import fp32_only
from circuitlab.catalog.records import Artifact
from circuitlab.extraction import analysis, graph_json, memory
from circuitlab.extraction import circuit as circ
from circuitlab.extraction.activations import mlp_activations, task_tokens
from circuitlab.extraction.aggregate import GraphTotals
from circuitlab.extraction.artifact import ABLATION_FILE, Circuit, sha256_file
from circuitlab.extraction.attribution import AttributionConfig, AttributionStream
from circuitlab.extraction.records import catalog_records, implements_records, registry_function
from circuitlab.extraction.transcoder import TranscoderConfig, evaluate
from circuitlab.extraction.transcoder_train import train_transcoder
from circuitlab.training.rundir import safe_name

Progress = Callable[[str, str], None]  # (phase, message)
OUT_DIR = "extraction"


class ExtractionError(ValueError):
    """A run that cannot be extracted (missing files, mismatched checkpoint, unfit task)."""


@dataclass(frozen=True)
class ExtractConfig:
    transcoder: TranscoderConfig = field(default_factory=TranscoderConfig)
    attribution: AttributionConfig = field(default_factory=lambda: AttributionConfig(qk=False))
    target_accuracy: float = 0.99  # sufficiency accuracy the circuit must reach
    # necessity accuracy the circuit should reach when ablated (more features are added while
    # it is above); None = the smallest sufficient set
    necessity_target: float | None = 0.05
    ablation: str = "mean"  # zero | mean | resample
    graph_examples: int = 3  # prompts exported as circuit-tracer graph JSON
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "transcoder": self.transcoder.to_dict(),
            "attribution": asdict(self.attribution),
            "target_accuracy": self.target_accuracy,
            "ablation": self.ablation,
            "necessity_target": self.necessity_target,
            "graph_examples": self.graph_examples,
            "seed": self.seed,
        }


@dataclass
class ExtractResult:
    out_dir: Path
    circuit_id: str | None
    summary: dict[str, Any]


def _plot_sufficiency(curve: list[dict[str, float]], chosen: int, total: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label in (
        ("sufficiency_accuracy", "sufficiency"),
        ("necessity_accuracy", "necessity"),
    ):
        points = [(c["k"], c[key]) for c in curve if key in c]
        if points:
            ax.plot(*zip(*points, strict=True), "o-", ms=3, label=label)
    ax.legend()
    ax.axvline(chosen, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"features kept (of {total}), by influence")
    ax.set_ylabel("accuracy with the rest / the circuit ablated")
    ax.set_title(f"circuit: {chosen} features")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@fp32_only()  # only the transcoder's training steps may run in bf16 (its own autocast)
def extract(
    run_dir: str | Path,
    catalog_url: str | None = None,
    config: ExtractConfig | None = None,
    *,
    progress: Progress | None = None,
    write_catalog: bool = True,
) -> ExtractResult:
    """Run every phase on the run at `run_dir`; returns where the artifacts are and a summary."""
    from circuitlab.models import CheckpointError
    from circuitlab.tasks import TaskError, get_task
    from circuitlab.training import RunDirError, load_run

    config = config or ExtractConfig()
    say = progress or (lambda phase, msg: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def phase_done(name: str) -> None:
        nonlocal clock
        memory.release()  # the next phase starts from what is still held, not from leftovers
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    try:
        info, model = load_run(run_dir)
        task = get_task(info.task)
    except (RunDirError, CheckpointError, TaskError) as exc:
        raise ExtractionError(str(exc)) from None
    run_dir = Path(run_dir)
    if model.cfg.d_vocab != task.d_vocab or model.cfg.n_ctx < task.n_ctx:
        raise ExtractionError(f"the model in {run_dir} does not fit task {task.spec}")
    memory.check_extraction(model.cfg, task, config)  # MemoryBudgetError before any work
    catalog = None
    if write_catalog:  # fail before the long work if the catalog is unreachable
        from circuitlab.catalog import CatalogError, open_catalog

        try:
            catalog = open_catalog(catalog_url)
        except CatalogError as exc:
            raise ExtractionError(f"catalog: {exc}") from None
    try:
        torch.manual_seed(config.seed)
        tokens, targets = task_tokens(task)
        batch = memory.forward_batch(model.cfg, tokens.shape[1])  # inputs per forward pass
        say("activations", f"{len(tokens):,} inputs of {task.spec}")
        acts = mlp_activations(model, tokens, batch)
        phase_done("activations")

        say(
            "transcoder",
            f"training a {config.transcoder.kind} transcoder, "
            f"{config.transcoder.n_features} features per layer",
        )
        tc, tc_log = train_transcoder(acts, config.transcoder, progress=progress is not None)
        tc_metrics = evaluate(tc, model, tokens, targets, acts=acts, batch_size=batch)
        del acts
        phase_done("transcoder")
        say(
            "transcoder",
            f"NMSE {tc_metrics.nmse:.4f}, L0 {tc_metrics.l0:.1f}, top-1 agreement "
            f"{tc_metrics.top1_agreement:.4f}",
        )

        stream = AttributionStream(model, tc, tokens, config.attribution)
        memory.check_attribution(stream, model.cfg, config)
        say(
            "attribution",
            f"attribution graphs of {len(tokens):,} inputs, {stream.layout.n_nodes:,} nodes "
            f"each, {stream.batch:,} at a time",
        )
        totals = GraphTotals.for_model(
            model.cfg,
            tc.n_features,
            tokens.shape[1],
            _example_index(len(tokens), config.graph_examples),
        )
        for chunk in stream:
            totals.add(chunk)
            del chunk  # before the next chunk is computed
        scores = totals.scores()
        phase_done("attribution")
        say(
            "attribution",
            f"replacement score {float(scores.replacement.mean()):.3f}, "
            f"completeness {float(scores.completeness.mean()):.3f}",
        )

        say("circuit", f"smallest circuit with sufficiency accuracy >= {config.target_accuracy}")
        importance = totals.importance()
        # clean activations and errors: ablations, Fourier labels and examples all read them
        ref = circ.reference(model, tc, tokens, seed=config.seed, batch_size=batch)
        keep, faith = circ.select_circuit(
            model,
            tc,
            tokens,
            targets,
            importance,
            target_accuracy=config.target_accuracy,
            ablation=config.ablation,
            necessity_target=config.necessity_target,
            ref=ref,
            batch_size=batch,
        )
        edges = totals.task_edges(keep)
        say(
            "circuit",
            f"{faith.n_features}/{faith.n_features_total} features: sufficiency "
            f"{faith.sufficiency_accuracy:.4f}, necessity drop {faith.necessity_drop:.4f} "
            f"(accuracy {faith.necessity_accuracy:.4f} ablated)",
        )
        components = _components(model, tc, keep, tokens, config)
        say("circuit", f"runs through {components.headline()}")
        phase_done("circuit")

        say("interpret", "interpreting the circuit")
        stats = None  # resample ablation has no summary to run new inputs with
        if config.ablation in ("mean", "zero"):
            stats = circ.AblationStats.of(ref, config.ablation)
        found = analysis.analyze(model, task, info, tc, tokens, keep, ref, stats)
        interpretation, feature_labels = found.interpretation, found.feature_labels
        say("interpret", found.headline)
        examples = _examples(model, task, tc, tokens, keep, importance, ref)
        example_graphs = totals.example_graphs()
        clerps = _clerps(example_graphs, model, task, tokens, ref, feature_labels)
        del ref  # every input's activations: not held through the interface's own passes
        memory.release()
        say("interface", "inferring the interface")
        from circuitlab.extraction.interface import infer_interface

        interface = infer_interface(model, task, batch_size=batch)
        if interface.signature is not None:
            say(
                "interface",
                f"signature {interface.signature.signature} "
                f"(agreement {interface.signature.agreement:.4f})",
            )
        phase_done("interpret")

        summary = {
            "run": str(run_dir),
            "task": task.spec,
            "transcoder": tc_metrics.to_dict(),
            "graph": {
                "replacement_score": float(scores.replacement.mean()),
                "completeness": float(scores.completeness.mean()),
                "n_prompts": totals.n_prompts,
            },
            "circuit": {k: v for k, v in faith.to_dict().items() if k != "curve"},
            "components": components.to_dict(),
            "interpretation": interpretation,
            **found.reports,
            "interface": interface.to_dict(),
            "examples": examples,
            "config": config.to_dict(),
        }
        out = run_dir / OUT_DIR
        partial = run_dir / (OUT_DIR + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        tc.save(
            partial / "transcoder",
            extra={"source_run": str(run_dir), "trained_precision": tc_log.precision},
        )
        artifact = None
        function = registry_function(interface)
        if stats is not None:
            stats.save(partial / ABLATION_FILE)
            artifact = Artifact(
                weights_sha256=sha256_file(run_dir / "model.safetensors"),
                transcoder=f"{OUT_DIR}/transcoder",
                transcoder_sha256=sha256_file(partial / "transcoder" / "transcoder.safetensors"),
                ablation_file=f"{OUT_DIR}/{ABLATION_FILE}",
                ablation_sha256=sha256_file(partial / ABLATION_FILE),
                n_features=tc.n_features,
                function=None if function is None else function.name,
            )
        records = catalog_records(
            info,
            model,
            task,
            transcoder=tc,
            transcoder_metrics=tc_metrics,
            scores=scores,
            importance=importance,
            edges=edges,
            faith=faith,
            interpretation=interpretation,
            feature_labels=feature_labels,
            config=config,
            interface=interface,
            examples=examples,
            artifact=artifact,
        )
        circuit_record = records[-1]
        graph_files = _write_graphs(example_graphs, task, partial, clerps)
        Circuit.write(circuit_record, partial)
        _plot_sufficiency(
            faith.curve, faith.n_features, faith.n_features_total, partial / "sufficiency.png"
        )
        summary["graphs"] = [str(out / "graphs" / g.name) for g in graph_files]
        summary["timings_s"] = timings
        (partial / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        replace_dir(partial, out)
        phase_done("write")

        circuit_id = circuit_record.id
        if catalog is not None:
            say("catalog", f"writing to {catalog.url}")
            catalog.put_many(records)
            catalog.put_many(implements_records(circuit_record, interface, catalog, function))
            phase_done("catalog")
        summary["timings_s"] = timings
        summary["circuit_id"] = circuit_id
        write_json_atomic(out / "summary.json", summary)
        return ExtractResult(out, circuit_id, summary)
    finally:
        if catalog is not None:
            catalog.close()


COMPONENT_INPUTS = 4096  # inputs the component reading runs on at most (a seeded sample)


def _components(model, tc, keep, tokens, config: ExtractConfig):
    """The circuit read on heads and MLPs (circuit_components.py), on the task's inputs."""
    from circuitlab.extraction.circuit_components import circuit_components

    if len(tokens) > COMPONENT_INPUTS:
        gen = torch.Generator().manual_seed(config.seed)
        tokens = tokens[torch.randperm(len(tokens), generator=gen)[:COMPONENT_INPUTS]]
    return circuit_components(model, tc, keep, tokens, config.ablation)


def _examples(model, task, tc, tokens, keep, importance, ref, n_features: int = 8) -> list[dict]:
    """Top activating inputs and output effects of the circuit's most important features."""
    from circuitlab.extraction.interpret import interpret_features, transcoder_directions

    out = []
    for layer, mask in enumerate(keep):
        idx = mask.nonzero().flatten()
        if len(idx) == 0:
            continue
        order = importance[layer, idx].argsort(descending=True)[:n_features]
        chosen = idx[order]
        acts = ref.acts[layer][..., chosen]
        positions = (
            tuple(model.cfg.answer_positions)
            if layer == tc.n_layers - 1
            else tuple(range(acts.shape[1]))
        )
        directions = {t: d[chosen] for t, d in transcoder_directions(tc, layer).items()}
        found = interpret_features(
            model, task, acts, tokens.numpy(), positions, directions, k_examples=5
        )
        for f, interp in zip(chosen.tolist(), found, strict=True):
            out.append({"layer": layer, "feature": f, **interp.to_dict()})
    return out


def _example_index(n_prompts: int, n: int) -> list[int]:
    """The prompts exported as graph JSON: `n` spread evenly over all of them."""
    step = max(1, n_prompts // max(n, 1))
    return list(range(0, min(n_prompts, step * n), step))


def _clerps(graph, model, task, tokens, ref, feature_labels) -> dict[tuple[int, int, int], str]:
    """A label (circuit-tracer's `clerp`) for every feature node of the example graphs, keyed
    (layer, position, feature): the circuit's own label (frequency and purity, or "mixed") for
    circuit features, then the input it fires on most at that position over all inputs."""
    from circuitlab.extraction.interpret import render_input

    if graph is None:
        return {}
    answers = list(model.cfg.answer_positions)
    last = model.cfg.n_layers - 1
    slots = graph.features.shape[1]  # the first nodes of every prompt's graph are features
    real = graph.node_mask[:, :slots]
    found = graph.features[real].reshape(-1, 3).unique(dim=0).tolist()
    out: dict[tuple[int, int, int], str] = {}
    for layer, pos, f in found:
        if layer == last and pos not in answers:
            continue  # the last layer runs at the answer positions only
        row = answers.index(pos) if layer == last else pos
        acts = ref.acts[layer][:, row, f]
        top = int(acts.argmax())
        fires = (
            f'fires most on "{render_input(task, tokens[top].tolist())}" ({float(acts[top]):.3g})'
        )
        own = feature_labels.get((layer, f), {}).get("label")
        out[(layer, pos, f)] = f"{own}; {fires}" if own else f"L{layer} F{f}: {fires}"
    return out


def _write_graphs(graph, task, directory: Path, clerps) -> list[Path]:
    """Every prompt of `graph` (the example prompts' graphs) as circuit-tracer graph JSON, with
    the index `graph-metadata.json` circuit-tracer's frontend reads to list them."""
    out = directory / "graphs"
    out.mkdir()
    written, index_entries = [], []
    names = task.token_names()
    outputs = task.output_names()
    for index in range(graph.n_prompts if graph is not None else 0):
        toks = graph.tokens[index].tolist()
        slug = f"{task.spec}-" + "-".join(names[t] for t in toks)
        data = graph_json.to_circuit_tracer_json(
            graph, index, slug=slug, token_names=names, output_names=outputs, clerps=clerps
        )
        # a task spec may hold `/` (synth_mod_7[a/b+c]): one file, named like a run directory;
        # the frontend fetches `{slug}.json`, so the slug it is given is the file's name
        name = safe_name(slug)
        data["metadata"]["slug"] = name
        written.append(graph_json.write_graph_json(out / f"{name}.json", data))
        index_entries.append(data["metadata"])
    graph_json.write_graph_json(out / graph_json.INDEX_FILE, {"graphs": index_entries})
    return written
