"""Circuits before and after: compare two extracted circuits (e.g. a run and its pruned or
LoRA-adapted child) from the files `circuitlab extract` writes, without running anything.

Method (`compare(a, b)`; each side a run directory, its `extraction/` or a circuit.json):
 1. read each side's circuit record (circuit.json), extraction summary (Fourier analysis) and
    the decoder rows of its circuit features from the transcoder's safetensors;
 2. key frequencies of the embedding and of the circuit's features: shared, lost (in A only)
    and gained (in B only);
 3. feature overlap: cosine between the unit decoder directions (all target layers of a
    cross-layer feature, concatenated) of A's and B's circuit features, matched one-to-one by
    the Hungarian algorithm (maximum total cosine); meaningful when both models share a
    residual basis, i.e. one derives from the other (`related`), since independent training
    rotates the residual stream arbitrarily;
 4. sufficiency, necessity and circuit size (features kept of the transcoder's, edges) side by
    side.

Reads only files (JSON and safetensors) so that training never imports extraction.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from circuitlab.training import rundir

MATCH_THRESHOLD = 0.7  # a matched pair counts as the same feature at this cosine or above


class CompareError(ValueError):
    """A side cannot be compared (no extraction, unreadable files); nothing is written."""


@dataclass
class Side:
    path: str  # run directory
    task: str
    weights_sha256: str
    key_frequencies: list[int]
    circuit_frequencies: list[int]
    sufficiency: float | None
    necessity: float | None
    n_features: int
    n_features_total: int | None
    n_edges: int
    label: str
    parent: dict[str, Any] | None
    features: list[tuple[int, int]]  # (layer, index) of the circuit's features


def _locate(path: Path) -> tuple[Path, Path]:
    """(run directory, circuit.json) for a run, its extraction directory or a circuit.json."""
    for circuit in (path, path / "circuit.json", path / "extraction" / "circuit.json"):
        if circuit.is_file():
            run = circuit.parent.parent
            return run, circuit
    if path.is_dir() and (path / "config.json").is_file():
        raise CompareError(f"{path} has no extracted circuit; run `circuitlab extract {path}`")
    raise CompareError(f"no run, extraction directory or circuit.json at {path}")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path} does not hold a JSON object")
    return data


def read_side(path: str | Path) -> tuple[Side, torch.Tensor | None]:
    """A side's circuit facts and its features' unit decoder directions (F, D) or None."""
    run, circuit_file = _locate(Path(path))
    record = _json(circuit_file)
    summary_file = circuit_file.parent / "summary.json"
    summary = _json(summary_file) if summary_file.is_file() else {}
    fourier = summary.get("fourier") or {}
    config = _json(run / "config.json") if (run / "config.json").is_file() else {}
    metrics = record.get("metrics") or {}
    extra = metrics.get("extra") or {}
    features = sorted(
        (int(n["feature"]["layer"]), int(n["feature"]["index"]))
        for n in record.get("nodes", [])
        if n.get("feature", {}).get("node_type") == "feature"
    )
    artifact = record.get("artifact") or {}
    side = Side(
        path=str(run),
        task=str(record.get("task", "?")),
        weights_sha256=str(artifact.get("weights_sha256", "")),
        key_frequencies=sorted((fourier.get("keys") or {}).get("frequencies", [])),
        circuit_frequencies=sorted(fourier.get("circuit_frequencies", [])),
        sufficiency=metrics.get("sufficiency"),
        necessity=metrics.get("necessity"),
        n_features=len(features),
        n_features_total=int(extra["features_total"]) if "features_total" in extra else None,
        n_edges=len(record.get("edges", [])),
        label=str((record.get("interpretation") or {}).get("label", "")),
        parent=config.get("parent"),
        features=features,
    )
    return side, _decoders(run, artifact, features)


def _decoders(run: Path, artifact: dict[str, Any], features: list[tuple[int, int]]):
    """Unit decoder directions of `features` from the transcoder's safetensors, or None."""
    from safetensors.torch import load_file

    where = artifact.get("transcoder")
    if not where or not features:
        return None
    file = run / where / "transcoder.safetensors"
    if not file.is_file():
        return None
    tensors = load_file(str(file))
    rows = []
    for layer, index in features:
        parts = [
            t[index]
            for k, t in sorted(tensors.items())
            if k.startswith(f"W_dec.{layer}.") or k == f"W_dec.{layer}"
        ]
        if not parts:
            return None
        rows.append(torch.cat(parts).float())
    dec = torch.stack(rows)
    return dec / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)


def related(a: Side, b: Side) -> bool:
    """Whether one side's model derives from the other's (by the weights' content hash)."""

    def ancestors(side: Side) -> set[str]:
        out, parent, seen = set(), side.parent, 0
        while isinstance(parent, dict) and seen < 64:
            out.add(parent.get("weights_sha256", ""))
            config = Path(parent.get("run", "")) / "config.json"
            parent = _json(config).get("parent") if config.is_file() else None
            seen += 1
        return out

    return a.weights_sha256 in ancestors(b) or b.weights_sha256 in ancestors(a)


def match_features(da: torch.Tensor, db: torch.Tensor) -> list[tuple[int, int, float]]:
    """One-to-one matching of A's and B's features maximising the summed cosine."""
    from scipy.optimize import linear_sum_assignment

    cos = (da @ db.T).double()
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    return [(int(r), int(c), float(cos[r, c])) for r, c in zip(rows, cols, strict=True)]


def _sets(a: list[int], b: list[int]) -> dict[str, list[int]]:
    return {
        "a": a,
        "b": b,
        "shared": sorted(set(a) & set(b)),
        "lost": sorted(set(a) - set(b)),
        "gained": sorted(set(b) - set(a)),
    }


def compare(a: str | Path, b: str | Path) -> dict[str, Any]:
    """The comparison of circuits A and B as a JSON-ready dict (see the module doc)."""
    side_a, dec_a = read_side(a)
    side_b, dec_b = read_side(b)
    overlap: dict[str, Any] = {"available": False}
    if dec_a is not None and dec_b is not None and dec_a.shape[1] == dec_b.shape[1]:
        pairs = match_features(dec_a, dec_b)
        cosines = [c for _, _, c in pairs]
        same = [p for p in pairs if p[2] >= MATCH_THRESHOLD]
        overlap = {
            "available": True,
            "shared_basis": related(side_a, side_b),
            "threshold": MATCH_THRESHOLD,
            "matched": len(same),
            "share_of_a": len(same) / max(side_a.n_features, 1),
            "share_of_b": len(same) / max(side_b.n_features, 1),
            "mean_matched_cosine": sum(cosines) / max(len(cosines), 1),
            "pairs": [
                {"a": list(side_a.features[i]), "b": list(side_b.features[j]), "cosine": c}
                for i, j, c in sorted(pairs, key=lambda p: -p[2])
            ],
        }
    elif dec_a is not None and dec_b is not None:
        overlap["reason"] = "the transcoders have different widths (d_model or layers)"
    else:
        overlap["reason"] = "a transcoder file is missing or the circuit has no features"
    a_dict, b_dict = asdict(side_a), asdict(side_b)
    return {
        "a": a_dict,
        "b": b_dict,
        "related": related(side_a, side_b),
        "key_frequencies": _sets(side_a.key_frequencies, side_b.key_frequencies),
        "circuit_frequencies": _sets(side_a.circuit_frequencies, side_b.circuit_frequencies),
        "feature_overlap": overlap,
        "sufficiency": {"a": side_a.sufficiency, "b": side_b.sufficiency},
        "necessity": {"a": side_a.necessity, "b": side_b.necessity},
        "circuit_size": {
            "a": side_a.n_features,
            "b": side_b.n_features,
            "a_total": side_a.n_features_total,
            "b_total": side_b.n_features_total,
            "a_edges": side_a.n_edges,
            "b_edges": side_b.n_edges,
        },
    }


def check_sides(a: Path, b: Path) -> None:
    """Fail early (one line) when either side has nothing to compare."""
    for p in (a, b):
        _locate(p)
    if rundir.partial_path(a).exists() and not a.exists():
        raise CompareError(f"{a} is unfinished")
