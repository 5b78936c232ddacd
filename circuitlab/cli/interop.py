"""`circuitlab import` and `circuitlab export`: models trained elsewhere (TransformerLens, Nanda et
al.'s grokking code) as run directories, and runs in TransformerLens, sae-lens and
circuit-tracer's formats."""

from __future__ import annotations

from pathlib import Path

import typer

from circuitlab.cli.common import CliError, console, plain


def register(app: typer.Typer) -> None:
    @app.command("import")
    def import_cmd(
        source: Path = typer.Argument(
            ...,
            help="A checkpoint (.safetensors, or a torch file of a state dict), a directory "
            "`export --to transformer-lens` wrote, or tracr:PROGRAM (with --task tracr_PROGRAM).",
        ),
        task: str = typer.Option(..., "--task", "-t", help="The task it was trained on."),
        out: Path = typer.Option(..., "--out", "-o", help="The run directory to write."),
        config: Path = typer.Option(
            None, "--config", help="TransformerLens config as JSON (act_fn, attention_dir, ...)."
        ),
        act_fn: str = typer.Option("relu", "--act-fn", help="relu or gelu (without --config)."),
        bidirectional: bool = typer.Option(
            False, "--bidirectional", help="Attention is not causal (without --config)."
        ),
        train_fraction: float = typer.Option(
            1.0, "--train-fraction", help="Its training split if it is circuitlab's (with --seed)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of that split."),
        min_accuracy: float = typer.Option(
            0.99, "--min-accuracy", help="Refuse a model below this accuracy on all inputs."
        ),
        force: bool = typer.Option(False, "--force", help="Import even below --min-accuracy."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT."),
    ) -> None:
        """Import a TransformerLens model (or a Nanda-style grokking checkpoint) as a run
        directory that `extract`, `prune`, `adapt` and `explore` take.

        Weights are read without running code (safetensors, or torch.load with
        weights_only=True). The architecture comes from the tensors' shapes; the model is
        checked on every input of the task before anything is written. The split it was
        trained on is unknown, so every input counts as training unless you give
        --train-fraction and --seed.
        """
        from circuitlab.training.imported import ImportModelError, import_model

        try:
            result = import_model(
                source,
                task,
                out,
                act_fn=act_fn,
                causal=not bidirectional,
                tl_config=config,
                train_fraction=train_fraction,
                seed=seed,
                min_accuracy=min_accuracy,
                force=force,
                overwrite=overwrite,
            )
        except ImportModelError as exc:
            raise CliError(str(exc)) from None
        console.print(
            plain(
                f"imported {source} ({result.layout} layout) -> {result.run_dir}: "
                f"{result.acc_all:.2%} of {task}'s inputs right, {result.seconds:.1f} s"
            )
        )
        for note in result.notes:
            console.print(plain(f"  note: {note}"))

    @app.command("export")
    def export_cmd(
        run: Path = typer.Argument(..., help="A finished run directory."),
        to: str = typer.Option(
            ..., "--to", help="transformer-lens, sae-lens (needs an extraction) or circuit-tracer."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="The directory to write."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT."),
    ) -> None:
        """Write a run in another tool's format: the model as TransformerLens loads it; the
        model with the extraction's transcoders for sae-lens's run_with_saes; or the
        extraction's attribution graphs for circuit-tracer's frontend."""
        from circuitlab.extraction.exports import ExportRunError, export_run

        try:
            result = export_run(run, to, out, overwrite=overwrite)
        except ExportRunError as exc:
            raise CliError(str(exc)) from None
        console.print(plain(f"wrote {len(result.files)} files to {result.out}"))
        console.print(plain(f"load with: {result.how_to_load}"))
