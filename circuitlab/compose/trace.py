"""Traces: what each step of a call did, for people (`to_text`) and for tools (`to_dict`).

A step names the function or circuit it called (name and reference), its inputs and output and,
for a circuit, the features that fired on each of the first inputs with their activation and
label (e.g. "k=44 (purity 0.97)"), strongest first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SHOWN = 4  # values of a batch shown per input or output in the text rendering


@dataclass(frozen=True)
class FeatureFiring:
    """One transcoder feature active on one input: where it lives, how strongly, what it is."""

    layer: int
    feature: int
    activation: float
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "feature": self.feature,
            "activation": self.activation,
            "label": self.label,
        }


@dataclass
class Step:
    """One call: function name, reference, kind, inputs by parameter, output, and per input
    (the first few of a batch) the circuit features that fired."""

    function: str
    ref: str
    kind: str
    inputs: dict[str, np.ndarray]
    output: np.ndarray
    features: list[list[FeatureFiring]] = field(default_factory=list)
    node: str = ""  # the program node this step computed, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "function": self.function,
            "ref": self.ref,
            "kind": self.kind,
            "inputs": {k: np.asarray(v).tolist() for k, v in self.inputs.items()},
            "output": np.asarray(self.output).tolist(),
            "features": [[f.to_dict() for f in fired] for fired in self.features],
        }


def _show(value: np.ndarray) -> str:
    value = np.asarray(value)
    if value.ndim == 0:
        return str(value.item())
    if value.ndim == 2 and value.shape[0] <= 6:  # one grid
        return "[" + " / ".join(" ".join(map(str, row)) for row in value.tolist()) + "]"
    flat = value.reshape(-1) if value.ndim == 1 else value
    head = ", ".join(_show(v) for v in flat[:SHOWN])
    return f"[{head}{', ...' if len(flat) > SHOWN else ''}] ({len(flat)})"


@dataclass
class Trace:
    """The steps of a call or a program run, in execution order."""

    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": [s.to_dict() for s in self.steps]}

    def to_text(self) -> str:
        lines = []
        for i, step in enumerate(self.steps, 1):
            target = f"{step.node} = " if step.node else ""
            args = ", ".join(f"{k}={_show(v)}" for k, v in step.inputs.items())
            lines.append(f"{i}. {target}{step.function}({args}) -> {_show(step.output)}")
            lines.append(f"   {step.kind} {step.ref}")
            for j, fired in enumerate(step.features):
                if not fired:
                    continue
                shown = ", ".join(
                    f"L{f.layer}F{f.feature} {f.label} ({f.activation:.2f})" for f in fired
                )
                lines.append(f"   input {j}: {shown}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()
