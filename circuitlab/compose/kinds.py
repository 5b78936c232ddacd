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

from abc import abstractmethod
from typing import Any

import numpy as np

from circuitlab.compose.functions import TRACE_FEATURES, LibraryFunction, Param, distinct_rows
from circuitlab.compose.trace import FeatureFiring
from circuitlab.compose.types import CompositionError, ValueType


def _interface_params(interface) -> tuple[tuple[Param, ...], ValueType]:
    params = tuple(Param(p.name, ValueType.parse(p.domain)) for p in interface.inputs)
    return params, ValueType.parse(interface.output.domain)


class _TokenFunction(LibraryFunction):
    """A function computed by a transformer on token sequences: each distinct input sequence is
    run once, `chunk_size` distinct sequences at a time."""

    @abstractmethod
    def _tokens(self, args: tuple[np.ndarray, ...]) -> np.ndarray:
        """(N, n_ctx) token sequences for checked arguments."""

    @abstractmethod
    def _predict(self, tokens: Any) -> np.ndarray:
        """Decoded outputs for a (n, n_ctx) tensor of token sequences."""

    def evaluate_flat(self, flat: list[np.ndarray]) -> np.ndarray:
        import torch

        unique, inverse = distinct_rows(self._tokens(tuple(flat)))
        with torch.no_grad():
            outs = [
                self._predict(torch.from_numpy(unique[i : i + self.chunk_size]))
                for i in range(0, len(unique), self.chunk_size)
            ]
        return np.concatenate(outs)[inverse] if outs else self._empty()

    def evaluate(self, *args: np.ndarray) -> np.ndarray:
        return self.evaluate_flat(list(args))


class CircuitFunction(_TokenFunction):
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

    def _predict(self, tokens: Any) -> np.ndarray:
        return self.circuit.decode(self.circuit.logits(tokens, self.mode))

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
        return [sorted(f, key=lambda x: -x.activation)[:TRACE_FEATURES] for f in fired]


class ModelFunction(_TokenFunction):
    """A trained model, called on its task's interface (inferred from the task)."""

    kind = "model"

    def __init__(self, run_dir: Any, name: str | None = None) -> None:
        from pathlib import Path

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
        self._domain = out.domain
        sha = sha256_file(Path(run_dir) / "model.safetensors")
        super().__init__(name or info.task, f"model:{sha}", params, ValueType.parse(out.domain))

    def _tokens(self, args: tuple[np.ndarray, ...]) -> np.ndarray:
        from circuitlab.extraction.artifact import encode_tokens

        return encode_tokens(self._template, self._positions, args)

    def _predict(self, tokens: Any) -> np.ndarray:
        from circuitlab.extraction.artifact import decode_argmax

        return decode_argmax(self.model(tokens), self._domain)


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
    """A registry primitive with its parameters fixed, named with them (ADDMOD_31). Modular
    primitives take `p` and work on Z_p; grid primitives take any grid (`shape` None) unless a
    shape is given, and say how they change its shape and which palettes they fit."""

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
        # parameters in the name: ADDMOD_31, RECOLOUR_3, REPLACE_COLOUR_1_0; ROT90 has none
        label = name + "".join(f"_{params[k]}" for k in self.primitive.params)
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
        colours = args[0].n
        if colours is not None and not self._fits_palette(colours):
            return None
        return ValueType("grid", colours, shape)

    def _fits_palette(self, colours: int) -> bool:
        """RECOLOUR(k) cycles exactly k colours; REPLACE_COLOUR's colours must be in the grid's
        palette. Anything else would type its output with the wrong palette (RECOLOUR(k=4) on a
        3-colour grid writes colour 3)."""
        if self.primitive.name == "RECOLOUR":
            return self.fixed["k"] == colours
        if self.primitive.name == "REPLACE_COLOUR":
            return max(self.fixed["src"], self.fixed["dst"]) < colours
        return True

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
