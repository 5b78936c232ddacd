"""Attribution benchmark (issue 5): graphs of every input of a grokked model, their speed and
their replacement / completeness scores, beside circuit-tracer's reference numbers.
Writes benchmarks/results/attribution.json and prints the comparison.

    python benchmarks/bench_attribution.py --transcoder RUN/extraction/transcoder
    python benchmarks/bench_attribution.py --train 512      # train a transcoder first (~10 min)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _shared import shared_run
from rich.console import Console
from rich.table import Table

from circuitlab.extraction.activations import mlp_activations, task_tokens
from circuitlab.extraction.attribution import AttributionConfig, attribute
from circuitlab.extraction.graph import prune_graph, scores_of
from circuitlab.extraction.transcoder import Transcoder, TranscoderConfig, train_transcoder
from circuitlab.tasks import get_task
from circuitlab.training.rundir import load_run, write_json_atomic

RESULTS = Path(__file__).parent / "results" / "attribution.json"
console = Console()

# circuit-tracer on this model (NOTES.md): ~0.14 s per prompt, one prompt at a time; its
# scores on an 18-layer language model with a cross-layer transcoder: 0.61 / 0.80
REFERENCE = {"seconds_per_prompt": 0.14, "replacement": 0.61, "completeness": 0.80}
TARGET = {"seconds_all": 60.0, "replacement": 0.9, "completeness": 0.95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run", type=Path, help="run directory (default: the shared benchmark model)"
    )
    parser.add_argument("--transcoder", type=Path, help="a saved transcoder directory")
    parser.add_argument("--train", type=int, metavar="F", help="train one with F features")
    parser.add_argument("--threads", type=int, default=AttributionConfig.threads)
    parser.add_argument("--batch-size", type=int, default=AttributionConfig.batch_size)
    parser.add_argument("--no-qk", action="store_true", help="skip QK attribution")
    args = parser.parse_args()
    if (args.transcoder is None) == (args.train is None):
        parser.error("give exactly one of --transcoder DIR or --train F")

    args.run = args.run or shared_run()
    info, model = load_run(args.run)
    task = get_task(info.config["task"])
    tokens, _ = task_tokens(task)
    if args.transcoder:
        tc = Transcoder.load(args.transcoder)
    else:
        console.print(f"training a transcoder with {args.train} features ...")
        acts = mlp_activations(model, tokens)
        tc, _ = train_transcoder(acts, TranscoderConfig(n_features=args.train), progress=True)
    torch.set_num_threads(args.threads)  # also for scoring and pruning below
    config = AttributionConfig(batch_size=args.batch_size, qk=not args.no_qk, threads=args.threads)
    attribute(model, tc, tokens[:256], config)  # warm-up
    start = time.perf_counter()
    graph = attribute(model, tc, tokens, config)
    seconds = time.perf_counter() - start
    scores = scores_of(graph)
    pruned = prune_graph(graph)
    n = graph.n_prompts
    real = graph.feature_mask.sum(1).float()
    result = {
        "run": str(args.run),
        "transcoder": {"kind": tc.cfg.kind, "n_features": tc.n_features},
        "threads": args.threads,
        "qk": config.qk,
        "n_prompts": n,
        "seconds_all": seconds,
        "seconds_per_prompt": seconds / n,
        "speedup_vs_circuit_tracer": REFERENCE["seconds_per_prompt"] * n / seconds,
        "nodes_padded": graph.n_nodes,
        "active_features_mean": float(real.mean()),
        "replacement_mean": float(scores.replacement.mean()),
        "replacement_median": float(scores.replacement.median()),
        "replacement_min": float(scores.replacement.min()),
        "completeness_mean": float(scores.completeness.mean()),
        "completeness_min": float(scores.completeness.min()),
        "completeness_median": float(scores.completeness.median()),
        "pruned_nodes_mean": float(pruned.node_mask.sum(-1).float().mean()),
        "pruned_edges_mean": float(pruned.edge_mask.flatten(1).sum(-1).float().mean()),
        "reference": REFERENCE,
        "target": TARGET,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(RESULTS, result)

    table = Table(title=f"attribution graphs, all {n} inputs of {info.config['task']}")
    for col in ("metric", "circuitlab", "circuit-tracer", "target"):
        table.add_column(col)
    ct_all = REFERENCE["seconds_per_prompt"] * n
    table.add_row("seconds, all inputs", f"{seconds:.1f}", f"~{ct_all:.0f}", "<= 60")
    table.add_row("ms per prompt", f"{1000 * seconds / n:.2f}", "~140", "")
    table.add_row(
        "replacement score (mean)",
        f"{result['replacement_mean']:.3f}",
        f"{REFERENCE['replacement']} (LM)",
        ">= 0.9",
    )
    table.add_row(
        "completeness score (mean)",
        f"{result['completeness_mean']:.3f}",
        f"{REFERENCE['completeness']} (LM)",
        ">= 0.95",
    )
    table.add_row("active features per graph", f"{result['active_features_mean']:.1f}", "", "")
    table.add_row(
        "pruned nodes / edges",
        f"{result['pruned_nodes_mean']:.1f} / {result['pruned_edges_mean']:.1f}",
        "",
        "",
    )
    console.print(table)
    console.print(
        f"replacement median {statistics.median(scores.replacement.tolist()):.4f}, "
        f"min {result['replacement_min']:.4f}; completeness min {result['completeness_min']:.4f}"
    )
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
