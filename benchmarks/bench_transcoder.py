"""Transcoder benchmark (issue 5): quality and training time of the default transcoder on a
grokked model, against the issue's targets and the published reference numbers.

    python benchmarks/bench_transcoder.py                                  # the shared p=113 run
    python benchmarks/bench_transcoder.py --run RUN_DIR [--run RUN_DIR2] [--kind per_layer]
    python benchmarks/bench_transcoder.py --two-layer add_mod_47   # + 2-layer models, LN and not,
                                                                   # per-layer and cross-layer

Writes benchmarks/results/transcoder.json. Without --run it measures the shared benchmark model
(add_mod_113, fast, seed 0 under runs/bench/; trained on first use).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from _shared import shared_run
from rich.console import Console
from rich.table import Table

from circuitlab.extraction.activations import mlp_activations, task_tokens
from circuitlab.extraction.transcoder import TranscoderConfig, evaluate, train_transcoder
from circuitlab.tasks import get_task
from circuitlab.training import RunSpec, get_recipe, load_run, train_stack

RESULTS = Path(__file__).parent / "results" / "transcoder.json"
console = Console()

# Ameisen et al. 2025 (cross-layer transcoder on an 18-layer language model)
REFERENCE = {"nmse": 0.115, "l0": 88.0, "top1_agreement": 0.50}
TARGETS = {"nmse": ("<=", 0.05), "top1_agreement": (">=", 0.99)}


def bench(run_dir: Path, cfg: TranscoderConfig) -> dict:
    info, model = load_run(run_dir)
    tokens, targets = task_tokens(get_task(info.task))
    start = time.perf_counter()
    acts = mlp_activations(model, tokens)
    collect_s = time.perf_counter() - start
    tc, log = train_transcoder(acts, cfg, progress=True)
    start = time.perf_counter()
    metrics = evaluate(tc, model, tokens, targets, acts=acts)
    eval_s = time.perf_counter() - start
    return {
        "run": str(run_dir),
        "task": info.task,
        "n_layers": model.cfg.n_layers,
        "normalization": model.cfg.normalization,
        "config": cfg.to_dict(),
        "collect_seconds": collect_s,
        "train_seconds": log.seconds,
        "eval_seconds": eval_s,
        "resampled": log.resampled,
        "metrics": metrics.to_dict(),
    }


def two_layer_runs(task: str, root: Path) -> list[Path]:
    """Train 2-layer models (no LayerNorm, LayerNorm) on `task` with the fast recipe."""
    runs = []
    for norm in (None, "LN"):
        model = {"n_layers": 2, "d_model": 64, "d_mlp": 256, "n_heads": 4, "d_head": 16}
        recipe = get_recipe("fast").replace(
            train_fraction=0.5, max_steps=1500, model={**model, "normalization": norm}
        )
        run = root / f"{task}-2L-{norm or 'noLN'}"
        console.print(f"training {run.name}")
        train_stack([RunSpec(task, recipe, 0, run)], threads=1)
        runs.append(run)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", help="run directory (repeatable)")
    parser.add_argument("--kind", choices=["per_layer", "cross_layer"], default="cross_layer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--two-layer", metavar="TASK", help="also train and test 2-layer models")
    args = parser.parse_args()
    runs = args.run or [shared_run()]
    for run in runs:
        if not run.is_dir():
            parser.error(f"no run directory {run}; train one: circuitlab train --task add_mod_113")
    cfg = TranscoderConfig(kind=args.kind, seed=args.seed)
    results = [bench(run, cfg) for run in runs]
    if args.two_layer:
        with tempfile.TemporaryDirectory() as tmp:
            for run in two_layer_runs(args.two_layer, Path(tmp)):
                for kind in ("per_layer", "cross_layer"):
                    results.append(bench(run, cfg.replace(kind=kind)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": {"cpus": torch.get_num_threads(), "python": platform.python_version()},
        "targets": TARGETS,
        "reference": REFERENCE,
        "results": results,
    }
    RESULTS.write_text(json.dumps(payload, indent=2) + "\n")
    table = Table(
        title="transcoder: ours vs target vs reference (Ameisen et al. 2025, 18-layer LM)"
    )
    for col in ("run", "metric", "ours", "target", "reference"):
        table.add_column(col)
    for r in results:
        m = r["metrics"]
        name = f"{r['task']} L{r['n_layers']} {r['normalization'] or 'noLN'} {r['config']['kind']}"
        rows = [
            ("normalized MSE", f"{m['nmse']:.4f}", "<= 0.05", f"{REFERENCE['nmse']}"),
            ("L0 per layer", f"{m['l0']:.1f}", "sparse", f"{REFERENCE['l0']:.0f}"),
            ("dead fraction", f"{m['dead_fraction']:.3f}", "", ""),
            ("top-1 agreement", f"{m['top1_agreement']:.4f}", ">= 0.99", "0.50"),
            (
                "loss model / replacement",
                f"{m['model_loss']:.4f} / {m['replacement_loss']:.4f}",
                "",
                "",
            ),
            ("train seconds", f"{r['train_seconds']:.1f}", "~60", ""),
        ]
        for i, row in enumerate(rows):
            table.add_row(name if i == 0 else "", *row)
    console.print(table)
    console.print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
