"""Extraction benchmark (issue 5): quality and speed of `circuitlab extract` on a grokked
add_mod_113 model trained by circuitlab, beside the reference numbers of circuit-tracer and
Anthropic's circuit-tracing papers. Writes benchmarks/results/extraction.json.

    python benchmarks/bench_extraction.py [--run RUN_DIR]

Without --run it uses the shared benchmark model (add_mod_113, fast recipe, seed 0, under
runs/bench/; trained on first use, ~1.5 minutes on 2 idle cores). The run is copied, so its own
directory is left as it was.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _shared import shared_run
from rich.console import Console
from rich.table import Table

from circuitlab.extraction.activations import task_tokens
from circuitlab.extraction.attribution import AttributionConfig, attribute
from circuitlab.extraction.pipeline import ExtractConfig, extract
from circuitlab.extraction.transcoder import Transcoder
from circuitlab.tasks import get_task
from circuitlab.training import load_run

RESULTS = Path(__file__).parent / "results" / "extraction.json"
console = Console()

# circuit-tracer / Ameisen et al. 2025 reference numbers (shared/NOTES.md)
REFERENCE = {
    "transcoder_nmse": "11.5% (CLT, 18-layer LM)",
    "top1_agreement": "50% (replacement model, LM)",
    "replacement_score": "0.61 (CLT, LM)",
    "completeness": "0.80 (CLT, LM)",
    "attribution_seconds": "~1,800 s (0.14 s/prompt, circuit-tracer on this model)",
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        source = args.run or shared_run()
        shutil.copytree(source, run, ignore=shutil.ignore_patterns("extraction*"))
        start = time.perf_counter()
        result = extract(
            run,
            f"sqlite:///{tmp}/catalog.db",
            ExtractConfig(),
            progress=lambda phase, msg: console.print(
                f"[dim]{time.perf_counter() - start:6.1f}s[/] {phase}: {msg}"
            ),
        )
        total = time.perf_counter() - start
        s = result.summary
        # attribution of all inputs, timed alone, with the extraction's transcoder
        _, model = load_run(run)
        tc = Transcoder.load(result.out_dir / "transcoder")
        tokens, _ = task_tokens(get_task("add_mod_113"))
        t0 = time.perf_counter()
        attribute(model, tc, tokens, AttributionConfig(qk=False))
        attribution_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        attribute(model, tc, tokens, AttributionConfig(qk=True))
        attribution_qk_s = time.perf_counter() - t0

    c, t, g, f = s["circuit"], s["transcoder"], s["graph"], s["fourier"] or {}
    kept = c["n_features"] / c["n_features_total"]
    rows = [
        (
            "transcoder normalized MSE",
            t["nmse"],
            "<= 0.05",
            t["nmse"] <= 0.05,
            REFERENCE["transcoder_nmse"],
        ),
        (
            "replacement top-1 agreement (12,769 inputs)",
            t["top1_agreement"],
            ">= 0.99",
            t["top1_agreement"] >= 0.99,
            REFERENCE["top1_agreement"],
        ),
        (
            "transcoder L0 / dead fraction",
            f"{t['l0']:.1f} / {t['dead_fraction']:.2f}",
            "",
            None,
            "",
        ),
        (
            "graph replacement score",
            g["replacement_score"],
            ">= 0.9",
            g["replacement_score"] >= 0.9,
            REFERENCE["replacement_score"],
        ),
        (
            "graph completeness",
            g["completeness"],
            ">= 0.95",
            g["completeness"] >= 0.95,
            REFERENCE["completeness"],
        ),
        ("circuit features kept", kept, "<= 0.25", kept <= 0.25, ""),
        (
            "sufficiency accuracy",
            c["sufficiency_accuracy"],
            ">= 0.99",
            c["sufficiency_accuracy"] >= 0.99,
            "",
        ),
        (
            "necessity accuracy",
            c["necessity_accuracy"],
            "<= 0.05",
            c["necessity_accuracy"] <= 0.05,
            "",
        ),
        (
            "key frequency F1 vs embedding DFT",
            f.get("circuit_vs_embedding_f1"),
            "= 1.0",
            f.get("circuit_vs_embedding_f1") == 1.0,
            "",
        ),
        (
            "attribution, all 12,769 inputs (s)",
            attribution_s,
            "<= 60",
            attribution_s <= 60,
            REFERENCE["attribution_seconds"],
        ),
        (
            "attribution with QK, all inputs (s)",
            attribution_qk_s,
            "",
            None,
            "circuit-tracer: no QK attribution",
        ),
        ("whole extract (s)", total, "<= 300", total <= 300, ""),
    ]
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "threads": args.threads,
        "summary": s,
        "attribution_s": attribution_s,
        "attribution_qk_s": attribution_qk_s,
        "extract_s": total,
        "checks": {
            name: {"value": value, "target": target, "met": met}
            for name, value, target, met, _ in rows
        },
        "reference": REFERENCE,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, default=str))
    table = Table(title="circuitlab extract on a grokked add_mod_113 model")
    for col in ("measure", "circuitlab", "target", "met", "reference"):
        table.add_column(col)
    for name, value, target, met, ref in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(name, shown, target, {True: "yes", False: "NO", None: ""}[met], ref)
    console.print(table)
    console.print(
        f"circuit: {s['interpretation']['label']}; "
        f"circuit frequencies {f.get('circuit_frequencies')}, "
        f"embedding DFT {f.get('keys', {}).get('frequencies')}"
    )


if __name__ == "__main__":
    main()
