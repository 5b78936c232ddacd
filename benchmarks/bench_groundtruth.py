"""Circuit-discovery baselines against tracr's known circuits. Writes
benchmarks/results/groundtruth.json and prints the table.

    python benchmarks/bench_groundtruth.py                     # every suite program
    python benchmarks/bench_groundtruth.py --programs hist reverse
    python benchmarks/bench_groundtruth.py --show              # the saved table

For every program of the tracr suite (`circuitlab.models.tracr_programs.SUITE`), compiled at
its default vocabulary and length and loaded in float64, the data is every input of the
program's domain, run one batch per length (the compiled models have no pad mask). For each
ablation (zero, per-position mean, resample = seeded permutation of each batch) and each method
(EAP, EAP-IG with 5 steps, ACDC with tau), it reports node and edge ROC AUC against the
compiled circuit (`baselines.truth_nodes` / `truth_edges`: tracr's edges plus input -> reader
and writer -> logits edges) and the seconds taken. Positions a program leaves undefined
(`undefined_prefix`) are left out of every metric. The ACDC paper's anchor on tracr programs:
edge AUC near 1.0 with zero ablation, 0.2-0.6 with random-input (resample) ablation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from circuitlab.extraction import baselines as bl  # noqa: E402
from circuitlab.models.tracr_import import TracrCircuit, encode, load_tracr  # noqa: E402
from circuitlab.models.tracr_programs import PROGRAMS, SUITE, all_inputs, compile_program  # noqa: E402
from circuitlab.models.transformer import Transformer  # noqa: E402

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


def run(programs: list[str], tau: float, steps: int, numeric_metric: str) -> dict:
    rows = []
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
    summary = {}
    for ablation in bl.ABLATIONS:
        for method in bl.METHODS:
            sel = [r for r in rows if r["ablation"] == ablation and r["method"] == method]
            summary[f"{method}/{ablation}"] = {
                key: _nanmean([r[key] for r in sel]) for key in ("node_auc", "edge_auc", "seconds")
            }
    return {
        "settings": {
            "tau": tau,
            "eap_ig_steps": steps,
            "numeric_eap_metric": numeric_metric,
            "threads": torch.get_num_threads(),
            "machine": platform.platform(),
        },
        "rows": rows,
        "mean": summary,
    }


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
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--show", action="store_true", help="print the saved table")
    args = parser.parse_args()
    if args.show:
        show(json.loads(args.out.read_text()))
        return
    torch.set_num_threads(1)
    result = run(args.programs, args.tau, args.steps, args.numeric_metric)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    show(result)


if __name__ == "__main__":
    main()
