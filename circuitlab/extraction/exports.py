"""`circuitlab export RUN --to FORMAT`: a run's model and extraction in other tools' formats.

- `transformer-lens`: the model as `HookedTransformer` loads it (`models.export`).
- `sae-lens`: that model in `model/`, and the extraction's transcoder as sae-lens transcoders in
  `layer_{l}/` (`saelens_export`), which `HookedSAETransformer.run_with_saes` splices in.
- `circuit-tracer`: the extraction's attribution graphs and their `graph-metadata.json` index,
  the directory circuit-tracer's frontend serves.

Each is written beside its destination and renamed into place when complete.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from circuitlab._atomic import replace_dir

FORMATS = ("transformer-lens", "sae-lens", "circuit-tracer")


class ExportRunError(ValueError):
    """An export that cannot be made (a user mistake or a missing library): one line saying
    what to do. Nothing is written."""


@dataclass(frozen=True)
class ExportResult:
    out: Path
    files: tuple[str, ...]
    how_to_load: str


def _extraction(run_dir: Path, what: str) -> Path:
    from circuitlab.extraction.pipeline import OUT_DIR

    found = run_dir / OUT_DIR
    if not (found / "summary.json").is_file():
        raise ExportRunError(
            f"{run_dir} has no extraction; {what} comes from it: run `circuitlab extract "
            f"{run_dir}` first"
        )
    return found


def export_run(run_dir: str | Path, to: str, out: str | Path, *, overwrite: bool = False):
    """Write run `run_dir` in format `to` (one of FORMATS) to the directory `out`."""
    from circuitlab.extraction.saelens_export import export_saelens
    from circuitlab.extraction.transcoder import Transcoder, TranscoderError
    from circuitlab.models import CheckpointError
    from circuitlab.models.export import ExportError, save_hooked_transformer
    from circuitlab.training import RunDirError, load_run

    if to not in FORMATS:
        raise ExportRunError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and not overwrite:
        raise ExportRunError(f"{out} already exists; pass --overwrite or choose another --out")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if to == "circuit-tracer":
            graphs = _extraction(run_dir, "the attribution graphs") / "graphs"
            shutil.copytree(graphs, tmp)
            how = (
                "circuit-tracer's frontend: `from circuit_tracer.frontend.local_server import "
                f"serve; serve(data_dir='{out}', port=8041)`"
            )
        else:
            _, model = load_run(run_dir)
            model_dir = tmp / "model" if to == "sae-lens" else tmp
            save_hooked_transformer(model, model_dir)
            how = (
                "`circuitlab.models.export.load_hooked_transformer(path)`, or "
                "HookedTransformer(HookedTransformerConfig(**json.load(config.json))) and "
                "load_state_dict(safetensors.torch.load_file(model.safetensors))"
            )
            if to == "sae-lens":
                tc = Transcoder.load(_extraction(run_dir, "the transcoder") / "transcoder")
                positions = list(model.cfg.answer_positions)
                export_saelens(
                    tc,
                    tmp / "transcoders",
                    model_name=run_dir.name,
                    positions=positions,
                    ln2=[
                        tuple(model.param(f"blocks.{l}.ln2.{x}").detach() for x in "wb")
                        for l in range(model.cfg.n_layers)
                    ]
                    if model.cfg.normalization
                    else None,
                )
                how = (
                    "HookedSAETransformer from model/ (load_hooked_transformer's config and "
                    "weights), SAE.load_from_disk('transcoders/layer_0'), then "
                    "model.run_with_saes(tokens, saes=[...]); the transcoders were trained at "
                    f"positions {positions} only"
                )
    except (RunDirError, CheckpointError, ExportError, TranscoderError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportRunError(str(exc)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = tuple(sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()))
    replace_dir(tmp, out)
    return ExportResult(out, files, how)
