"""Circuit-discovery baselines against tracr's known circuits. Writes
benchmarks/results/groundtruth.json and prints the table.

    python benchmarks/bench_groundtruth.py                     # every suite program
    python benchmarks/bench_groundtruth.py --programs hist reverse
    python benchmarks/bench_groundtruth.py --show              # the saved table

For every program of the tracr suite (`circuitlab.models.tracr_programs.SUITE`), compiled at
its default vocabulary and length and loaded in float64, the data is every input of the
program's domain, run one batch per length (the compiled models have no pad mask). For each
ablation (zero, per-position mean, resample = seeded permutation of each batch) and each method
(EAP, EAP-IG with 5 steps, ACDC with tau, and circuitlab's own circuit), it reports node and
edge ROC AUC against the compiled circuit (`baselines.truth_nodes` / `truth_edges`: tracr's
edges plus input -> reader and writer -> logits edges) and the seconds taken. Positions a
program leaves undefined (`undefined_prefix`) are left out of every metric. The ACDC paper's
anchor on tracr programs: edge AUC near 1.0 with zero ablation, 0.2-0.6 with random-input
(resample) ablation.

circuitlab's row ("circuit"): the program is imported as a run (`circuitlab import
tracr:PROGRAM`), extracted with that ablation (transcoder, attribution, the smallest circuit of
features meeting the sufficiency target on the task's full-length inputs), and the circuit is
read on the component graph over the same inputs as the baselines
(`circuit_components.circuit_components`). Its seconds are the whole extraction plus the
reading. Numerical programs have no row: extraction selects circuits by accuracy, which a
numerical output does not have.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from circuitlab.extraction import ExtractConfig, extract  # noqa: E402
from circuitlab.extraction import baselines as bl  # noqa: E402
from circuitlab.extraction.artifact import circuit_record, feature_mask  # noqa: E402
from circuitlab.extraction.circuit_components import circuit_components  # noqa: E402
from circuitlab.extraction.transcoder import Transcoder  # noqa: E402
from circuitlab.models.tracr_import import TracrCircuit, encode, load_tracr  # noqa: E402
from circuitlab.models.tracr_programs import PROGRAMS, SUITE, all_inputs, compile_program  # noqa: E402
from circuitlab.models.transformer import Transformer  # noqa: E402
from circuitlab.training import load_run  # noqa: E402
from circuitlab.training.imported import import_model  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "groundtruth.json"


def program_data(
    name: str,
) -> tuple[Transformer, list[torch.Tensor], TracrCircuit, list[int]]:
    assembled, circuit = compile_program(name)
    model = load_tracr(assembled, torch.float64)
    seqs = list(all_inputs(name))
    batches = [
        encode(assembled, [s for s in seqs if len(s) == n]) for n in sorted({len(s) for s in seqs})
    ]
    positions = list(range(1 + SUITE[name].undefined_prefix, model.cfg.n_ctx))
    # inputs too short to reach a defined output (detect_pattern's length 1) carry no signal
    batches = [b for b in batches if b.shape[1] > positions[0]]
    return model, batches, circuit, positions


CIRCUIT = "circuit"  # circuitlab's own method in the rows


def read_circuit(
    run_dir: Path,
    ablation: str,
    tokens,
    truth: TracrCircuit,
    positions: list[int] | None = None,
) -> tuple[bl.MethodScore, dict, float]:
    """Extract `run_dir` with `ablation`, read its circuit on the components over `tokens` and
    score it against `truth`: (score, the extraction's circuit summary, seconds of the reading).
    The score's seconds are the extraction plus the reading."""
    start = time.perf_counter()
    result = extract(run_dir, config=ExtractConfig(ablation=ablation), write_catalog=False)
    _, model = load_run(run_dir)
    transcoder = Transcoder.load(result.out_dir / "transcoder")
    keep = feature_mask(circuit_record(result.out_dir), transcoder.n_layers, transcoder.n_features)
    read_start = time.perf_counter()
    scores = circuit_components(model, transcoder, keep, tokens, ablation, positions)
    end = time.perf_counter()
    found = bl.MethodScore(
        CIRCUIT,
        ablation,
        bl.roc_auc(scores.nodes, bl.truth_nodes(truth)),
        bl.roc_auc(scores.edges, bl.truth_edges(truth)),
        end - start,
    )
    return found, result.summary["circuit"], end - read_start


def our_circuit(
    name: str, ablation: str, batches: list[torch.Tensor], positions: list[int], workdir: Path
) -> tuple[bl.MethodScore, dict]:
    """Import the program (once), extract it with `ablation` and read its circuit."""
    run_dir = workdir / name
    start = time.perf_counter()
    if not run_dir.exists():
        import_model(f"tracr:{name}", f"tracr_{name}", run_dir)
    imported = time.perf_counter() - start
    found, summary, read_seconds = read_circuit(
        run_dir, ablation, batches, compile_program(name)[1], positions
    )
    found = dataclasses.replace(found, seconds=found.seconds + imported)
    return found, {
        "n_features": summary["n_features"],
        "n_features_total": summary["n_features_total"],
        "sufficiency": summary["sufficiency"],
        "extract_inputs": summary["n_inputs"],
        "read_seconds": read_seconds,
    }


def nanda_circuit(cfg) -> TracrCircuit:
    """The circuit of a grokked 1-layer modular-addition model (Nanda et al. 2023): every head
    moves a and b to the `=` position, the MLP reads them and computes the logits (their
    logits ~ W_U W_out times the neuron activations). Not in it: the MLP's read of the
    residual at `=` (a constant token) and the direct paths from the heads and the embedding
    to the logits."""
    heads = frozenset(("attn", 0, h) for h in range(cfg.n_heads))
    mlp = ("mlp", 0)
    return TracrCircuit(
        nodes=heads | {mlp},
        edges=frozenset((h, mlp) for h in heads),
        input_nodes=heads,
        output_nodes=frozenset({mlp}),
    )


def grokked_rows(tau: float, steps: int, workdir: Path) -> list[dict]:
    """Every method on the grokked add_mod_113 model the other benchmarks share (all 12,769
    inputs), scored against `nanda_circuit`."""
    from _shared import shared_run

    from circuitlab.extraction.activations import task_tokens
    from circuitlab.tasks import get_task

    run_dir = workdir / "add_mod_113"
    shutil.copytree(shared_run(), run_dir)  # extraction writes into the run: use a copy
    _, model = load_run(run_dir)
    model = model.eval()
    tokens = task_tokens(get_task("add_mod_113"))[0]
    truth = nanda_circuit(model.cfg)
    rows = []
    for ablation in bl.ABLATIONS:
        for method in bl.METHODS:
            s = bl.score_method(method, model, tokens, truth, ablation, tau=tau, steps=steps)
            rows.append(_row("add_mod_113", s, len(tokens), model.cfg))
        s, _, _ = read_circuit(run_dir, ablation, tokens, truth)
        rows.append(_row("add_mod_113", s, len(tokens), model.cfg))
        for r in rows[-4:]:
            print(f"add_mod_113      {ablation:9s} {r['method']:7s} node {r['node_auc']:.3f} "
                  f"edge {r['edge_auc']:.3f} {r['seconds']:.2f}s", flush=True)  # fmt: skip
    return rows


def _row(program: str, s: bl.MethodScore, n_inputs: int, cfg) -> dict:
    return {
        "program": program,
        "ablation": s.ablation,
        "method": s.method,
        "node_auc": s.node_auc,
        "edge_auc": s.edge_auc,
        "seconds": s.seconds,
        "n_inputs": n_inputs,
        "n_edges": len(bl.component_graph(cfg).edges),
    }


def run(
    programs: list[str], tau: float, steps: int, numeric_metric: str, grokked_too: bool = True
) -> dict:
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="bench_groundtruth_"))
    for name in programs:
        model, batches, circuit, positions = program_data(name)
        numeric = model.cfg.d_vocab_out == 1
        kind = numeric_metric if numeric else "logprob"
        metric = bl.metric_factory(lambda m, t, k=kind, p=positions: bl.task_metric(m, t, k, p))
        div = bl.metric_factory(lambda m, t, p=positions: bl.divergence_from_clean(m, t, "auto", p))
        for ablation in bl.ABLATIONS:
            for method in bl.METHODS:
                s = bl.score_method(
                    method, model, batches, circuit, ablation,
                    tau=tau, steps=steps, metric=metric, divergence=div,
                )  # fmt: skip
                rows.append(
                    {
                        "program": name,
                        "ablation": ablation,
                        "method": method,
                        "node_auc": s.node_auc,
                        "edge_auc": s.edge_auc,
                        "seconds": s.seconds,
                        "eap_metric": kind,
                        "n_inputs": sum(len(b) for b in batches),
                        "n_edges": len(bl.component_graph(model.cfg).edges),
                        "n_true_edges": len(bl.truth_edges(circuit)),
                    }
                )
                print(f"{name:16s} {ablation:9s} {method:7s} node {s.node_auc:.3f} "
                      f"edge {s.edge_auc:.3f} {s.seconds:.2f}s", flush=True)  # fmt: skip
            if numeric:
                continue
            s, extra = our_circuit(name, ablation, batches, positions, workdir)
            rows.append(
                {
                    "program": name,
                    "ablation": ablation,
                    "method": CIRCUIT,
                    "node_auc": s.node_auc,
                    "edge_auc": s.edge_auc,
                    "seconds": s.seconds,
                    "n_inputs": sum(len(b) for b in batches),
                    **extra,
                }
            )
            print(f"{name:16s} {ablation:9s} {CIRCUIT:7s} node {s.node_auc:.3f} "
                  f"edge {s.edge_auc:.3f} {s.seconds:.2f}s ({extra['n_features']} features, "
                  f"sufficiency {extra['sufficiency']:.3f})", flush=True)  # fmt: skip
    grokked = grokked_rows(tau, steps, workdir) if grokked_too else []
    shutil.rmtree(workdir, ignore_errors=True)
    summary = {}
    for ablation in bl.ABLATIONS:
        for method in (*bl.METHODS, CIRCUIT):
            sel = [r for r in rows if r["ablation"] == ablation and r["method"] == method]
            summary[f"{method}/{ablation}"] = {
                key: _nanmean([r[key] for r in sel]) for key in ("node_auc", "edge_auc", "seconds")
            }
    return {
        "targets": targets(rows),
        "settings": {
            "tau": tau,
            "eap_ig_steps": steps,
            "numeric_eap_metric": numeric_metric,
            "threads": torch.get_num_threads(),
            "machine": platform.platform(),
        },
        "rows": rows,
        "mean": summary,
        "add_mod_113": grokked,
    }


def targets(rows: list[dict]) -> dict:
    """Per ablation, over the programs circuitlab extracts: the mean AUCs of every method on
    those programs, where our node AUC is >= 0.95, and where it is >= the best baseline's
    (programs whose every component is in the circuit have no node AUC and are left out)."""
    out = {}
    for ablation in bl.ABLATIONS:
        ours = {
            r["program"]: r for r in rows if r["ablation"] == ablation and r["method"] == CIRCUIT
        }
        base = [r for r in rows if r["ablation"] == ablation and r["program"] in ours]
        entry: dict = {"programs": len(ours), "mean_on_these_programs": {}}
        for method in (*bl.METHODS, CIRCUIT):
            sel = [r for r in base if r["method"] == method]
            entry["mean_on_these_programs"][method] = {
                key: _nanmean([r[key] for r in sel]) for key in ("node_auc", "edge_auc")
            }
        for key in ("node_auc", "edge_auc"):
            scored = [p for p, r in ours.items() if not math.isnan(r[key])]
            best = {
                p: max(r[key] for r in base if r["program"] == p and r["method"] != CIRCUIT)
                for p in scored
            }
            entry[key] = {
                "scored": len(scored),
                "at_least_0.95": [p for p in scored if ours[p][key] >= 0.95],
                "below_0.95": [p for p in scored if ours[p][key] < 0.95],
                "at_least_best_baseline": [p for p in scored if ours[p][key] >= best[p] - 1e-12],
                "below_best_baseline": {
                    p: [round(ours[p][key], 3), round(best[p], 3)]
                    for p in scored
                    if ours[p][key] < best[p] - 1e-12
                },
            }
        out[ablation] = entry
    return out


def _nanmean(values: list[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return sum(ok) / len(ok) if ok else float("nan")


def show(result: dict) -> None:
    table = Table(title="Circuit discovery vs tracr ground truth (ROC AUC; nan = no negatives)")
    for col in ("program", "ablation", "method", "node AUC", "edge AUC", "s"):
        table.add_column(
            col, justify="left" if col in ("program", "ablation", "method") else "right"
        )
    for r in result["rows"]:
        table.add_row(
            r["program"], r["ablation"], r["method"],
            f"{r['node_auc']:.3f}", f"{r['edge_auc']:.3f}", f"{r['seconds']:.2f}",
        )  # fmt: skip
    for key, m in result["mean"].items():
        method, ablation = key.split("/")
        table.add_row(
            "[b]mean[/b]", ablation, method,
            f"{m['node_auc']:.3f}", f"{m['edge_auc']:.3f}", f"{m['seconds']:.2f}",
        )  # fmt: skip
    Console().print(table)
    summary = Table(title="circuitlab's circuits on the programs it extracts (categorical)")
    for col in ("ablation", "AUC", "mean: EAP", "EAP-IG", "ACDC", "circuit", ">= 0.95",
                ">= best baseline", "below best (ours, best)"):  # fmt: skip
        summary.add_column(col, justify="left" if col in ("ablation", "AUC") else "right")
    for ablation, entry in result.get("targets", {}).items():
        for key in ("node_auc", "edge_auc"):
            t, means = entry[key], entry["mean_on_these_programs"]
            summary.add_row(
                ablation, key.split("_")[0],
                *(f"{means[m][key]:.3f}" for m in (*bl.METHODS, CIRCUIT)),
                f"{len(t['at_least_0.95'])}/{t['scored']}",
                f"{len(t['at_least_best_baseline'])}/{t['scored']}",
                ", ".join(f"{p} {a:.2f}<{b:.2f}" for p, (a, b) in t["below_best_baseline"].items()),
            )  # fmt: skip
    Console().print(summary)
    if result.get("add_mod_113"):
        grokked = Table(title="grokked add_mod_113 against Nanda et al.'s circuit (edge AUC)")
        for col in ("ablation", "method", "edge AUC", "s"):
            grokked.add_column(col, justify="left" if col in ("ablation", "method") else "right")
        for r in result["add_mod_113"]:
            grokked.add_row(
                r["ablation"], r["method"], f"{r['edge_auc']:.3f}", f"{r['seconds']:.2f}"
            )
        Console().print(grokked)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--programs", nargs="+", default=list(PROGRAMS), choices=PROGRAMS)
    parser.add_argument("--tau", type=float, default=1e-3, help="ACDC threshold")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps")
    parser.add_argument(
        "--numeric-metric",
        default="neg_mse",
        choices=("neg_mse", "output"),
        help="EAP metric for numeric programs (neg_mse has zero gradient at the clean point)",
    )
    parser.add_argument(
        "--no-grokked", action="store_true", help="skip the grokked add_mod_113 model"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--show", action="store_true", help="print the saved table")
    args = parser.parse_args()
    if args.show:
        show(json.loads(args.out.read_text()))
        return
    torch.set_num_threads(1)
    result = run(args.programs, args.tau, args.steps, args.numeric_metric, not args.no_grokked)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    show(result)


if __name__ == "__main__":
    main()
