"""The four kinds of library function: circuits, whole models, registry functions, primitives.

- `CircuitFunction` runs an extracted circuit: the replacement model with only the circuit's
  features, the rest ablated exactly as extraction measured it (`mode="model"` runs the full
  model of the same run instead).
- `ModelFunction` runs a trained model on its task's interface (for tasks where extraction
  gives no circuit, or to compare).
- `SymbolicFunction` calls a registry function (`KE(m, v) = 0.5*m*v^2`).
- `PrimitiveFunction` calls a registry primitive with its parameters fixed (`ADDMOD` with
  p = 31, `ROT90`); grid primitives work on grids of any shape and say how they change it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from circuitlab.compose.functions import LibraryFunction, Param, distinct_rows
from circuitlab.compose.trace import FeatureFiring
from circuitlab.compose.types import CompositionError, ValueType


def _interface_params(interface) -> tuple[tuple[Param, ...], ValueType]:
    params = tuple(Param(p.name, ValueType.parse(p.domain)) for p in interface.inputs)
    return params, ValueType.parse(interface.output.domain)


class CircuitFunction(LibraryFunction):
    """An extracted circuit (`circuitlab.extraction.Circuit`) as a library function."""

    kind = "circuit"

    def __init__(self, circuit: Any, *, mode: str = "circuit", name: str | None = None) -> None:
        from circuitlab.extraction.artifact import MODES

        if mode not in MODES:
            raise CompositionError(f"mode must be one of {MODES}, got {mode!r}")
        if circuit.interface is None:
            raise CompositionError(f"circuit {circuit.id[:12]} has no interface to call it by")
        params, output = _interface_params(circuit.interface)
        record = circuit.record
        super().__init__(
            name or record.task,
            f"circuit:{circuit.id}",
            params,
            output,
            catalog_id=circuit.id,
            priors=tuple(record.tags.priors),
        )
        self.circuit = circuit
        self.mode = mode
        if mode == "model":
            self.kind = "model"

    @property
    def label(self) -> str:
        return self.circuit.record.interpretation.label

    def _tokens(self, args: tuple[np.ndarray, ...]) -> np.ndarray:
        return self.circuit.encode(*args).numpy()

    def evaluate_flat(self, flat: list[np.ndarray]) -> np.ndarray:
        """Each distinct input once, `chunk_size` distinct inputs at a time."""
        import torch

        unique, inverse = distinct_rows(self._tokens(tuple(flat)))
        outs = [
            self.circuit.decode(
                self.circuit.logits(torch.from_numpy(unique[i : i + self.chunk_size]), self.mode)
            )
            for i in range(0, len(unique), self.chunk_size)
        ]
        return np.concatenate(outs)[inverse] if outs else self._empty()

    def evaluate(self, *args: np.ndarray) -> np.ndarray:
        return self.evaluate_flat(list(args))

    def explain(self, *args: np.ndarray) -> list[list[FeatureFiring]]:
        import torch

        if self.mode != "circuit" or len(args[0]) == 0:
            return []
        acts = self.circuit.feature_activations(torch.from_numpy(self._tokens(args)))
        answers = list(self.circuit.model.cfg.answer_positions)
        last = len(acts) - 1
        fired: list[list[FeatureFiring]] = [[] for _ in range(len(args[0]))]
        for layer, a in enumerate(acts):
            at = a if layer == last else a[:, answers]  # (N, Q, F) at the answer positions
            strongest = at.amax(1)  # (N, F)
            for i, row in enumerate(strongest):
                for f in row.nonzero().flatten().tolist():
                    label = self.circuit.labels.get((layer, f), f"L{layer} F{f}")
                    fired[i].append(FeatureFiring(layer, f, float(row[f]), label))
        from circuitlab.compose.functions import TRACE_FEATURES

        return [sorted(f, key=lambda x: -x.activation)[:TRACE_FEATURES] for f in fired]


class ModelFunction(LibraryFunction):
    """A trained model, called on its task's interface (inferred from the task)."""

    kind = "model"

    def __init__(self, run_dir: Any, name: str | None = None) -> None:
        from pathlib import Path

        import torch

        from circuitlab.extraction.artifact import sha256_file
        from circuitlab.extraction.interface import ports_of
        from circuitlab.tasks import get_task
        from circuitlab.training import load_run

        info, model = load_run(run_dir)
        self.task = get_task(info.task)
        self.model = model.eval()
        ports, out = ports_of(self.task)
        params = tuple(Param(p.name, ValueType.parse(p.domain)) for p in ports)
        self._positions = [list(p.positions) for p in ports]
        self._template = self.task.dataset().inputs[0].copy()
        self._grid = ValueType.parse(out.domain)
        sha = sha256_file(Path(run_dir) / "model.safetensors")
        super().__init__(name or info.task, f"model:{sha}", params, self._grid)
        self._torch = torch

    def evaluate(self, *args: np.ndarray) -> np.ndarray:
        return self.evaluate_flat(list(args))

    def evaluate_flat(self, args: list[np.ndarray]) -> np.ndarray:
        n = len(args[0])
        tokens = np.broadcast_to(self._template, (n, len(self._template))).copy()
        for positions, value in zip(self._positions, args, strict=True):
            tokens[:, positions] = value.reshape(n, len(positions))
        unique, inverse = distinct_rows(tokens)
        with self._torch.no_grad():
            pred = [
                self.model(self._torch.from_numpy(unique[i : i + self.chunk_size])).argmax(-1)
                for i in range(0, len(unique), self.chunk_size)
            ]
        out = self._torch.cat(pred).numpy().astype(np.int64) if pred else np.zeros((0, 1), np.int64)
        out = out.reshape(len(out), *self._grid.shape) if self._grid.is_grid else out[:, 0]
        return out[inverse]


class SymbolicFunction(LibraryFunction):
    """A registry function (name@version), evaluated exactly by the registry."""

    kind = "function"

    def __init__(self, fn: Any, registry: Any = None, catalog_id: str | None = None) -> None:
        params = tuple(Param(i.name, ValueType.from_registry(i.domain)) for i in fn.inputs)
        super().__init__(
            fn.name,
            f"function:{fn.name}@{fn.version}",
            params,
            ValueType.from_registry(fn.output),
            catalog_id=catalog_id,
        )
        self.fn = fn
        self.registry = registry

    def __str__(self) -> str:
        return str(self.fn)

    def evaluate(self, *args: np.ndarray) -> np.ndarray:
        resolve = None if self.registry is None else self.registry.resolve
        out = np.asarray(self.fn.evaluate(*args, resolve=resolve))
        if self.output.kind != "real" and out.dtype.kind == "f":
            if not np.all(np.isfinite(out)):
                raise CompositionError(f"{self.name} is undefined on some of its inputs")
            out = np.rint(out).astype(np.int64)
        return out


# How each grid primitive changes a grid's shape (others keep it).
_SWAPS_AXES = {"ROT90", "ROT270", "TRANSPOSE", "ANTITRANSPOSE"}


class PrimitiveFunction(LibraryFunction):
    """A registry primitive with its parameters fixed. Modular primitives take `p` and work on
    Z_p; grid primitives take any grid (`shape` None) unless a shape is given."""

    kind = "primitive"

    def __init__(
        self,
        name: str,
        *,
        types: tuple[ValueType, ...] | None = None,
        output: ValueType | None = None,
        **params: int,
    ) -> None:
        from circuitlab.registry import get_primitive

        self.primitive = get_primitive(name)
        missing = [k for k in self.primitive.params if k not in params]
        if missing:
            raise CompositionError(f"primitive {name} needs parameters {missing}")
        self.fixed = params
        self.is_grid = self.primitive.group == "grid"
        if types is None:
            if self.is_grid:
                types = (ValueType("grid"),) * self.primitive.arity
            elif "p" in params:
                types = (ValueType("mod", params["p"]),) * self.primitive.arity
            else:
                types = (ValueType("int"),) * self.primitive.arity
        output = output or (types[0] if types else ValueType("int"))
        shown = "".join(f"_{v}" for k, v in sorted(params.items()) if k != "k" or not self.is_grid)
        label = name + (shown if not self.is_grid else "")
        ref_params = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        super().__init__(
            label,
            f"primitive:{name}" + (f"({ref_params})" if ref_params else ""),
            tuple(Param(n, t) for n, t in zip("abc", types, strict=False)),
            output,
            priors=("Core_Geometry",) if self.is_grid else ("Core_Number",),
        )

    def result_type(self, args: tuple[ValueType, ...]) -> ValueType | None:
        if not self.is_grid:
            return super().result_type(args)
        if len(args) != 1 or not args[0].is_grid or not self.params[0].type.accepts(args[0]):
            return None
        shape = args[0].shape
        if shape is not None and self.primitive.name in _SWAPS_AXES:
            shape = (shape[1], shape[0])
        if self.primitive.name in ("CROP", "UPSCALE"):
            return self.output if self.output.shape else None
        return ValueType("grid", args[0].n, shape)

    def evaluate(self, *args: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = np.asarray(self.primitive.fn(*args, **self.fixed))
        if self.is_grid:
            return out.astype(np.int64)
        if out.dtype.kind == "f":
            if not np.all(np.isfinite(out)):
                raise CompositionError(f"{self.name} is undefined on some of its inputs")
            out = np.rint(out).astype(np.int64)
        return out
