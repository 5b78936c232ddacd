"""`circuitlab extract RUN_DIR`: from a checkpoint to a measured circuit in the catalog."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from circuitlab.cli.common import CatalogOption, CliError, console, plain


def register(app: typer.Typer) -> None:
    @app.command("extract")
    def extract_cmd(
        run_dir: Path = typer.Argument(
            ..., help="A finished run directory (see `circuitlab runs`)."
        ),
        catalog: CatalogOption = None,
        no_catalog: bool = typer.Option(False, "--no-catalog", help="Write artifacts only."),
        kind: str = typer.Option(
            "cross_layer", "--kind", help="Transcoder: cross_layer or per_layer."
        ),
        features: int = typer.Option(
            0, "--features", help="Transcoder features per layer (0 = default)."
        ),
        steps: int = typer.Option(0, "--steps", help="Transcoder training steps (0 = default)."),
        precision: str = typer.Option(
            "fp32",
            "--precision",
            help="Transcoder training matmuls: fp32 or bf16 (weights, loss and attribution stay "
            "fp32; bf16 falls back to fp32 on a CPU without native bf16).",
        ),
        target: float = typer.Option(
            0.99, "--target", help="Sufficiency accuracy the circuit must reach."
        ),
        ablation: str = typer.Option(
            "mean", "--ablation", help="How features are ablated: mean, zero or resample."
        ),
        qk: bool = typer.Option(
            False, "--qk/--no-qk", help="Also attribute attention scores (QK)."
        ),
        batch_size: int = typer.Option(
            0,
            "--batch-size",
            help="Prompts per attribution chunk (0 = as many as fit in 512 MiB); memory grows "
            "with it, results do not change.",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the transcoder and resampling."),
    ) -> None:
        """Extract the circuit of a trained model: transcoder, attribution graphs of every
        input, the smallest faithful circuit, its interpretation; artifacts go to
        RUN_DIR/extraction/ and the circuit into the catalog."""
        from circuitlab._memory import MemoryBudgetError
        from circuitlab.extraction.activations import ActivationError
        from circuitlab.extraction.attribution import AttributionConfig, AttributionError
        from circuitlab.extraction.circuit import ABLATIONS, CircuitError
        from circuitlab.extraction.pipeline import ExtractConfig, ExtractionError, extract
        from circuitlab.extraction.transcoder import TranscoderConfig, TranscoderError

        if ablation not in ABLATIONS:
            raise CliError(f"--ablation must be one of {', '.join(ABLATIONS)}, got {ablation!r}")
        if not 0.0 < target <= 1.0:
            raise CliError(f"--target must be in (0, 1], got {target}")
        if batch_size < 0:
            raise CliError(f"--batch-size must be >= 0 (0 = automatic), got {batch_size}")
        try:
            changes = {"kind": kind, "seed": seed, "precision": precision}
            if features:
                changes["n_features"] = features
            if steps:
                changes["steps"] = steps
            tc_cfg = TranscoderConfig().replace(**changes)
        except TranscoderError as exc:
            raise CliError(str(exc)) from None
        config = ExtractConfig(
            transcoder=tc_cfg,
            attribution=AttributionConfig(qk=qk, batch_size=batch_size or None),
            target_accuracy=target,
            ablation=ablation,
            seed=seed,
        )
        start = time.perf_counter()

        def progress(phase: str, message: str) -> None:
            elapsed = f"{time.perf_counter() - start:6.1f}s "
            console.print(Text.assemble((elapsed, "dim"), (phase, "bold"), " ", plain(message)))

        try:
            result = extract(
                run_dir,
                None if no_catalog else catalog,
                config,
                progress=progress,
                write_catalog=not no_catalog,
            )
        except (
            ExtractionError,
            ActivationError,
            TranscoderError,
            AttributionError,
            CircuitError,
            MemoryBudgetError,
        ) as exc:  # a run that cannot be extracted, said in one line
            raise CliError(str(exc)) from None
        s = result.summary
        # task names, paths and labels are data: plain() keeps rich from reading them as markup
        table = Table(title=plain(f"circuit of {s['task']} ({run_dir})"), show_header=False)
        c, t, g = s["circuit"], s["transcoder"], s["graph"]
        table.add_row("interpretation", plain(s["interpretation"]["label"]))
        table.add_row("features kept", f"{c['n_features']} of {c['n_features_total']}")
        table.add_row(
            "sufficiency",
            f"accuracy {c['sufficiency_accuracy']:.4f}, loss {c['sufficiency_loss']:.4f} "
            f"({c['ablation']} ablation)",
        )
        table.add_row(
            "necessity",
            f"drop {c['necessity_drop']:.4f} (accuracy {c['necessity_accuracy']:.4f}, loss "
            f"{c['necessity_loss']:.4f} with the circuit ablated)",
        )
        table.add_row("full model", f"accuracy {c['full_accuracy']:.4f}, loss {c['full_loss']:.4f}")
        table.add_row(
            "transcoder",
            f"NMSE {t['nmse']:.4f}, L0 {t['l0']:.1f}, dead {t['dead_fraction']:.2%}, "
            f"top-1 agreement {t['top1_agreement']:.4f}",
        )
        table.add_row(
            "graphs",
            f"replacement {g['replacement_score']:.3f}, completeness {g['completeness']:.3f}, "
            f"{g['n_prompts']:,} prompts",
        )
        table.add_row("artifacts", plain(result.out_dir))
        table.add_row("graph JSON", plain(", ".join(Path(p).name for p in s.get("graphs", []))))
        if result.circuit_id:
            table.add_row("catalog id", result.circuit_id)
        table.add_row("time", f"{time.perf_counter() - start:.0f}s")
        console.print(table)
