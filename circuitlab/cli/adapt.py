"""`circuitlab prune`, `circuitlab adapt` and `circuitlab compare`: derived models and their
circuits before and after."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from circuitlab.cli.common import CliError, console, plain


def parse_sparsities(text: str) -> list[float]:
    """'0.5,0.9,0.95' -> [0.5, 0.9, 0.95]; each in [0, 1)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = float(part)
        except ValueError:
            raise CliError(f"--sparsity must be numbers like 0.5,0.9, got {text!r}") from None
        if not 0.0 <= value < 1.0:
            raise CliError(
                f"--sparsity {part} is outside [0, 1): it is the fraction of weights removed"
            )
        values.append(value)
    if not values:
        raise CliError("--sparsity needs at least one value")
    return values


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def register(app: typer.Typer) -> None:
    @app.command("prune")
    def prune_cmd(
        run: Path = typer.Argument(..., help="A finished run directory."),
        method: str = typer.Option(
            "magnitude", "--method", "-m", help="magnitude, lottery, neurons or heads."
        ),
        sparsity: str = typer.Option(
            "0.5", "--sparsity", help="Fraction removed, in [0, 1); commas make a sweep."
        ),
        scope: str = typer.Option(
            "global", "--scope", help="Magnitude threshold over all matrices or per matrix."
        ),
        rounds: int = typer.Option(
            1, "--rounds", help="Pruning rounds (lottery: with rewinding; magnitude: gradual)."
        ),
        finetune: int = typer.Option(
            0, "--finetune", help="Masked fine-tuning steps after pruning (per round)."
        ),
        max_steps: int = typer.Option(
            0, "--max-steps", help="lottery: training budget per round (0 = the run's recipe)."
        ),
        finetune_lr: float = typer.Option(
            0.0,
            "--finetune-lr",
            help="Learning rate of the masked fine-tuning (0 = the run's recipe's). Pruned "
            "weights fine-tune best well below a grokking recipe's rate (e.g. 1e-3 after fast).",
        ),
        basis: str = typer.Option(
            "standard",
            "--basis",
            help="magnitude: standard (the trained weights) or principal (first rewrite them, "
            "exactly, in the principal axes of the residual stream and heads, scales balanced; "
            "models without LayerNorm).",
        ),
        out: Path = typer.Option(
            None, "--out", "-o", help="Where the sweep directory goes (default: beside RUN)."
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace pruned runs."),
    ) -> None:
        """Prune a trained model; every sparsity becomes a run directory, and the sweep gets
        curve.json and curve.png (accuracy on all inputs against sparsity).

        `lottery --rounds 1` on a grokked run is a grokking ticket: the grokked model's
        magnitude mask on the initial weights, retrained with the run's recipe and seed.
        """
        from circuitlab.training import RunDirError
        from circuitlab.training.derived import DerivedError
        from circuitlab.training.prune import PruneConfig, prune

        values = parse_sparsities(sparsity)
        try:
            config = PruneConfig(
                method,
                tuple(values),
                scope,
                rounds,
                finetune,
                max_steps or None,
                basis,
                finetune_lr or None,
            )
            root, points = prune(
                run, config, out, overwrite=overwrite, progress=lambda m: console.print(plain(m))
            )
        except (DerivedError, RunDirError) as exc:
            raise CliError(str(exc)) from None
        for p in points:
            grok = "" if p.grokked_at is None else f", 99% val at step {p.grokked_at:,}"
            console.print(
                plain(
                    f"sparsity {p.sparsity:g} (weights {p.weight_sparsity:.3f} zero): accuracy "
                    f"{p.acc_all:.4f} on all inputs, val {p.val_acc:.4f}{grok} -> {p.run}"
                )
            )
        console.print(plain(f"curve: {root / 'curve.json'}, {root / 'curve.png'}"))

    @app.command("adapt")
    def adapt_cmd(
        run: Path = typer.Argument(..., help="The base run directory."),
        task: str = typer.Option(..., "--task", "-t", help="Target task (same vocabulary)."),
        rank: int = typer.Option(4, "--rank", help="LoRA rank."),
        alpha: float = typer.Option(0.0, "--alpha", help="LoRA alpha (0 = 2 x rank)."),
        targets: str = typer.Option(
            "",
            "--targets",
            help="Matrices to adapt, comma-separated leaves (W_in) or full names; default all "
            "weight matrices. NAME:R gives that matrix its own rank (W_V:8,W_pos:3).",
        ),
        lr: float = typer.Option(0.0, "--lr", help="Learning rate (0 = the LoRA recipe's)."),
        max_steps: int = typer.Option(0, "--max-steps", help="Step budget (0 = recipe's)."),
        weight_decay: float = typer.Option(
            None,
            "--weight-decay",
            help="AdamW weight decay on the adapter's A and B (default: the LoRA recipe's, 0).",
        ),
        decay: bool = typer.Option(
            False,
            "--decay/--constant-lr",
            help="Let the learning rate decay linearly to 0 at --max-steps (after the warmup).",
        ),
        seed: int = typer.Option(0, "--seed", help="Data split and adapter init seed."),
        adapter: Path = typer.Option(
            None, "--adapter", help="Use this trained adapter (peft format) instead of training."
        ),
        out: Path = typer.Option(None, "--out", "-o", help="Parent of the adapted run."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the adapted run."),
    ) -> None:
        """Adapt a trained model to another task of the same vocabulary with LoRA (peft).

        Writes a run directory with the merged weights (`extract` reads it as any run), the
        adapter in peft's format (`adapter/`, loads with `PeftModel.from_pretrained`) and the
        base run, its weights' sha256, rank and targets in config.json.
        """
        from circuitlab.training import RecipeError, RunDirError
        from circuitlab.training.derived import DerivedError
        from circuitlab.training.lora import (
            DEFAULT_TARGETS,
            LORA_RECIPE,
            LoraSpec,
            adapt,
            apply_adapter,
        )

        try:
            if adapter is not None:
                result = apply_adapter(run, adapter, task, out, overwrite=overwrite)
            else:
                changes = {"lr": lr} if lr else {}
                if max_steps:
                    changes["max_steps"] = max_steps
                if weight_decay is not None:
                    changes["weight_decay"] = weight_decay
                names, ranks = _targets(targets)
                spec = LoraSpec(
                    rank,
                    alpha or None,
                    names or DEFAULT_TARGETS,
                    LORA_RECIPE.replace(**changes),
                    seed,
                    decay,
                    ranks,
                )
                result = adapt(
                    run,
                    task,
                    spec,
                    out,
                    overwrite=overwrite,
                    progress=lambda row: (
                        console.print(
                            plain(
                                f"step {row['step']:>5}: train {row['train_acc']:.4f}, "
                                f"val {row['val_acc']:.4f}"
                            )
                        )
                        if row["step"] % 100 == 0
                        else None
                    ),
                )
        except (DerivedError, RunDirError, RecipeError) as exc:
            raise CliError(str(exc)) from None
        m = result.merge
        grok = "not reached" if result.grokked_at is None else f"step {result.grokked_at:,}"
        console.print(
            plain(
                f"adapted run: {result.run_dir}\n99% validation: {grok}; final val "
                f"{_fmt(result.final.get('val_acc'))}; {result.trainable:,} trainable parameters "
                f"({result.trainable_fraction:.2%})\nmerged vs adapted: max |logit diff| "
                f"{m['max_abs_logit_diff']:.2e} over {m['n_inputs']:,} inputs, predictions "
                f"{'identical' if m['identical_predictions'] else 'DIFFER'}",
                multiline=True,
            )
        )

    @app.command("compare")
    def compare_cmd(
        a: Path = typer.Argument(..., help="Run, extraction directory or circuit.json."),
        b: Path = typer.Argument(..., help="Run, extraction directory or circuit.json."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Compare two extracted circuits: key frequencies kept and lost, feature overlap
        (matched cosine of decoder directions), sufficiency, necessity and circuit size."""
        from circuitlab.training.compare import CompareError, compare

        try:
            report = compare(a, b)
        except CompareError as exc:
            raise CliError(str(exc)) from None
        if as_json:
            console.print_json(json.dumps(report))
            return
        console.print(plain(_render(report), multiline=True))


def _render(r: dict) -> str:
    kf, cf, ov = r["key_frequencies"], r["circuit_frequencies"], r["feature_overlap"]
    size = r["circuit_size"]
    lines = [
        f"A: {r['a']['path']} ({r['a']['task']})",
        f"B: {r['b']['path']} ({r['b']['task']})"
        + ("  [derived from A or A from B]" if r["related"] else ""),
        f"key frequencies      A {kf['a']}  B {kf['b']}",
        f"  shared {kf['shared']}, lost {kf['lost']}, gained {kf['gained']}",
        f"circuit frequencies  A {cf['a']}  B {cf['b']}",
        f"  shared {cf['shared']}, lost {cf['lost']}, gained {cf['gained']}",
        f"sufficiency          A {_fmt(r['sufficiency']['a'])}  B {_fmt(r['sufficiency']['b'])}",
        f"necessity            A {_fmt(r['necessity']['a'])}  B {_fmt(r['necessity']['b'])}",
        f"circuit size         A {size['a']}/{size['a_total']} features, {size['a_edges']} edges"
        f"  B {size['b']}/{size['b_total']} features, {size['b_edges']} edges",
    ]
    if ov["available"]:
        basis = "" if ov["shared_basis"] else " (unrelated models: residual bases differ)"
        lines.append(
            f"feature overlap      {ov['matched']} matched at cosine >= {ov['threshold']} "
            f"({ov['share_of_a']:.0%} of A, {ov['share_of_b']:.0%} of B), mean matched "
            f"cosine {ov['mean_matched_cosine']:.3f}{basis}"
        )
    else:
        lines.append(f"feature overlap      unavailable: {ov.get('reason', '')}")
    return "\n".join(lines)


def _targets(text: str) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """`W_Q,W_V:8` -> (("W_Q", "W_V"), (("W_V", 8),))."""
    names: list[str] = []
    ranks: list[tuple[str, int]] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, rank = item.partition(":")
        names.append(name.strip())
        if rank:
            try:
                ranks.append((name.strip(), int(rank)))
            except ValueError:
                raise CliError(
                    f"--targets {item!r}: the rank after ':' must be an integer"
                ) from None
    return tuple(names), tuple(ranks)
