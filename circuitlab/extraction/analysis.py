"""Which mechanism analysis a task gets, run on the model and on its extracted circuit.

One dispatch for the interpretation phase of `extract`:

  modular `a op b mod p`   Fourier analysis (fourier.py, fourier_fits.py) in the coordinates
                           the operation is addition in (residues, or discrete logs for mul and
                           div); circuit features labelled by frequency
  S_n products             irreducible representations (groups.py, group_fits.py); circuit
                           features labelled by irrep
  grid maps                the cell map (cellmap.py) of the model and of the circuit alone,
                           checked against the task's definition
  anything else            no analysis, and the label says so: nothing invents a mechanism

A feature gets a frequency or irrep label only at purity >= PURE_THRESHOLD; below it the label
says "mixed" and names the closest one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from circuitlab.extraction import fourier

FeatureLabels = dict[tuple[int, int], dict[str, Any]]


@dataclass
class Analysis:
    """What the interpretation phase found.

    interpretation: label, description and method ("fourier", "representation", "cell_map",
        "none") for the summary and the catalog.
    reports: JSON reports by name ("fourier", "representation", "cell_map") for summary.json.
    feature_labels: (layer, feature) -> statistics and "label" for the circuit's features.
    headline: one line for the progress output.
    """

    interpretation: dict[str, str]
    reports: dict[str, Any] = field(default_factory=dict)
    feature_labels: FeatureLabels = field(default_factory=dict)
    headline: str = ""


def analyze(model, task, info, tc, tokens, keep, ref, stats=None) -> Analysis:
    """Run the analysis `task`'s family has on the model and the circuit `keep`.

    info: the run (its split gives the excluded loss its training inputs); ref: the reference
    activations (circuit.Reference); stats: the AblationStats that run the circuit alone on new
    inputs (None with resample ablation: the cell map is then measured on the model only)."""
    from circuitlab.tasks.grid import GridTask
    from circuitlab.tasks.permutation import PermutationTask

    train_index = task.split(info.recipe.train_fraction, info.seed).train_index
    if isinstance(task, PermutationTask):
        return _representations(model, task, tc, tokens, keep, ref, train_index)
    if isinstance(task, GridTask):
        return _cell_maps(model, task, tc, keep, stats)
    try:
        fourier.modulus_of(task)
    except fourier.FourierError:
        return _no_analysis(task)
    return _fourier(model, task, tc, tokens, keep, ref, train_index)


def _interpretation(report, method: str) -> dict[str, str]:
    return {"label": report.label(), "description": report.description(), "method": method}


def _no_analysis(task) -> Analysis:
    interpretation = {
        "label": f"circuit for {task.spec} (no mechanistic analysis for this task family)",
        "description": f"circuitlab has no mechanistic analysis for {task.spec}'s task family, "
        "so nothing here claims a mechanism. The circuit's features are described by their "
        "top inputs and output effects (examples).",
        "method": "none",
    }
    return Analysis(interpretation, headline=interpretation["label"])


# --- modular arithmetic --------------------------------------------------------------------


def _fourier(model, task, tc, tokens, keep, ref, train_index) -> Analysis:
    from circuitlab.extraction import fourier_fits

    report = fourier_fits.analyze(model, task, train_index=train_index)
    labels, found = circuit_frequencies(model, task, tc, tokens, keep, ref, report.coordinates)
    out = report.to_dict()
    out["circuit_frequencies"] = list(found)
    out["circuit_vs_embedding_f1"] = fourier.key_f1(found, report.keys.frequencies)
    interpretation = _interpretation(report, "fourier")
    interpretation["description"] += (
        f" Circuit features compute frequencies {{{', '.join(map(str, found))}}} "
        f"(F1 {out['circuit_vs_embedding_f1']:.2f} against the embedding DFT)."
    )
    headline = f"{interpretation['label']}; circuit features: {found}"
    return Analysis(interpretation, {"fourier": out}, labels, headline)


def circuit_frequencies(
    model, task, tc, tokens, keep, ref, coords: fourier.Coordinates
) -> tuple[FeatureLabels, tuple[int, ...]]:
    """Each circuit feature's dominant frequency and purity, and the key frequencies the
    circuit computes (`fourier_fits.circuit_units`). Modular tasks only, in the report's
    coordinates; found from the circuit alone, independent of the embedding."""
    from circuitlab.extraction.fourier_fits import circuit_units

    p = fourier.modulus_of(task)
    inside = (coords.of(tokens[:, 0]) >= 0) & (coords.of(tokens[:, 1]) >= 0)

    def units_of(acts: torch.Tensor) -> fourier.UnitFrequencies:
        grid = fourier.activation_grid(acts, tokens[inside], p, coords=coords)
        return fourier.unit_frequencies(grid)

    per_layer, keys = circuit_units(model, tc, keep, ref, units_of, rows=inside)
    labels: FeatureLabels = {}
    for layer, features, units, weights in per_layer:
        for j, f in enumerate(features):
            k, purity = int(units.dominant[j]), float(units.purity[j])
            pure = purity >= fourier.PURE_THRESHOLD
            if k == 0:
                label = "constant"
            elif pure:
                label = f"k={k} (purity {purity:.2f})"
            else:
                label = f"mixed (closest k={k}, purity {purity:.2f})"
            labels[(layer, f)] = {
                "dominant_frequency": k if pure else None,
                "closest_frequency": k,
                "purity": purity,
                "sum_share": float(units.sum_share[j]),
                "logit_weight": float(weights[j]),
                "label": label,
            }
    return labels, keys


# --- permutation groups ----------------------------------------------------------------------


def _representations(model, task, tc, tokens, keep, ref, train_index) -> Analysis:
    from circuitlab.extraction import group_fits

    report = group_fits.analyze(model, task, train_index=train_index)
    labels, found = group_fits.circuit_features(model, task, tc, tokens, keep, ref)
    out = report.to_dict()
    out["circuit_irreps"] = list(found)
    interpretation = _interpretation(report, "representation")
    if found:
        interpretation["description"] += f" Circuit features compute irreps {', '.join(found)}."
    headline = f"{interpretation['label']}; circuit features: {', '.join(found) or 'none'}"
    return Analysis(interpretation, {"representation": out}, labels, headline)


# --- grids -----------------------------------------------------------------------------------


def circuit_predictor(model, tc, keep, stats, batch_size: int = 4096):
    """tokens (N, S) -> the circuit's answers (N, Q): the model with every feature outside
    `keep` replaced as extraction measured it (stats.hooks), on any inputs."""

    @torch.no_grad()
    def predict(tokens: torch.Tensor) -> torch.Tensor:
        out = []
        for lo in range(0, len(tokens), batch_size):
            with stats.hooks(model, tc, keep):
                out.append(model(tokens[lo : lo + batch_size]).argmax(-1))
        return torch.cat(out)

    return predict


def _cell_maps(model, task, tc, keep, stats) -> Analysis:
    from circuitlab.extraction import cellmap

    of_model = cellmap.analyze(model, task)
    reports: dict[str, Any] = {"model": of_model.to_dict(), "circuit": None}
    report = of_model
    if stats is not None:  # the map the circuit alone implements
        report = cellmap.analyze(model, task, predict=circuit_predictor(model, tc, keep, stats))
        reports["circuit"] = report.to_dict()
    interpretation = _interpretation(report, "cell_map")
    if stats is not None:
        interpretation["description"] += f" The full model: {of_model.label()}."
    else:
        interpretation["description"] += (
            " Measured on the full model: a circuit extracted with resample ablation cannot run "
            "on new inputs."
        )
    return Analysis(interpretation, {"cell_map": reports}, {}, interpretation["label"])
