"""Library functions: circuits, models, registry functions and primitives behind one call.

Every callable in a composition follows one convention:

1. positional arguments, one per parameter: ints, lists, numpy or torch arrays;
2. each checked against its parameter's domain (a value outside names the port, the domain and
   the value), then broadcast against the others (a grid counts as one value);
3. evaluated in chunks of `chunk_size` values, so memory stays bounded on any batch;
4. the result is a numpy array of the broadcast batch shape (grids add their (H, W));
5. `trace=True` returns `(result, Trace)`: the call, its inputs and outputs and, for circuits,
   the features that fired;
6. called with a program variable instead of a value, the call is recorded into the program
   being traced (see `program.py`) instead of computed.

Circuits and models read token sequences, so each evaluates its distinct inputs once: a
modular circuit called on 1.4M pairs of Z_113 runs the model on at most 12,769 of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from circuitlab.compose.trace import FeatureFiring, Step, Trace
from circuitlab.compose.types import CompositionError, ValueType

DEFAULT_CHUNK = 1 << 16
TRACE_FEATURES = 5  # strongest features listed per input in a trace
TRACE_INPUTS = 16  # inputs of a batch whose features a trace lists


@dataclass(frozen=True)
class Param:
    """One parameter of a library function: a name and a value type."""

    name: str
    type: ValueType

    def __str__(self) -> str:
        return f"{self.name}: {self.type}"


class LibraryFunction(ABC):
    """A typed, batched, traceable callable (see the module docstring for the convention).

    name: how programs and traces show it (`add_mod_113`, `ADDMOD_113`, `ROT90`).
    ref: stable reference a program stores and the Library resolves again
        (`circuit:<id>`, `model:<weights sha256>`, `function:NAME@VERSION`, `primitive:NAME`).
    kind: circuit | model | function | primitive.
    catalog_id: id of the catalog record a program's CALLS edge points at, when there is one.
    priors: prior-alignment tags (Core_Number, Core_Geometry, ...), which the solver prefers.
    """

    kind: str = ""

    def __init__(
        self,
        name: str,
        ref: str,
        params: tuple[Param, ...],
        output: ValueType,
        *,
        catalog_id: str | None = None,
        priors: tuple[str, ...] = (),
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        self.name = name
        self.ref = ref
        self.params = params
        self.output = output
        self.catalog_id = catalog_id
        self.priors = priors
        self.chunk_size = chunk_size

    # -- types ----------------------------------------------------------------------------------

    @property
    def arity(self) -> int:
        return len(self.params)

    def signature(self) -> str:
        return f"{self.name}({', '.join(map(str, self.params))}) -> {self.output}"

    def result_type(self, args: tuple[ValueType, ...]) -> ValueType | None:
        """The output type for arguments of these types, or None when one does not fit."""
        if len(args) != self.arity:
            return None
        if all(p.type.accepts(a) for p, a in zip(self.params, args, strict=True)):
            return self.output
        return None

    def __repr__(self) -> str:
        return f"<{self.kind} {self.signature()}>"

    # -- calling --------------------------------------------------------------------------------

    def __call__(self, *args: Any, trace: bool = False) -> Any:
        from circuitlab.compose.program import Symbol, record_call

        if any(isinstance(a, Symbol) for a in args):
            return record_call(self, args)
        arrays, batch = self.prepare(args)
        flat = [a.reshape(-1, *a.shape[len(batch) :]) for a in arrays]
        out = self.evaluate_flat(flat)
        result = out.reshape(tuple(batch) + out.shape[1:])
        if not trace:
            return result
        step = Step(
            function=self.name,
            ref=self.ref,
            kind=self.kind,
            inputs={p.name: a for p, a in zip(self.params, arrays, strict=True)},
            output=result,
            features=self.explain(*(a[:TRACE_INPUTS] for a in flat)),
        )
        return result, Trace([step])

    def prepare(self, args: tuple[Any, ...]) -> tuple[list[np.ndarray], tuple[int, ...]]:
        """Check every argument against its parameter and broadcast them: the arrays (each of
        the batch shape plus its value's own dimensions) and the batch shape."""
        if len(args) != self.arity:
            names = ", ".join(p.name for p in self.params)
            raise CompositionError(
                f"{self.name} takes {self.arity} arguments ({names}), got {len(args)}"
            )
        arrays = [
            p.type.check(a, f"{self.name}.{p.name}") for p, a in zip(self.params, args, strict=True)
        ]
        batches = [
            a.shape[: a.ndim - p.type.item_ndim] for p, a in zip(self.params, arrays, strict=True)
        ]
        try:
            batch = np.broadcast_shapes(*batches)
        except ValueError:
            raise CompositionError(
                f"{self.name}: argument batch shapes {batches} do not broadcast"
            ) from None
        arrays = [
            np.broadcast_to(a, batch + a.shape[a.ndim - p.type.item_ndim :])
            for p, a in zip(self.params, arrays, strict=True)
        ]
        return arrays, tuple(batch)

    def _empty(self) -> np.ndarray:
        shape = (0, *self.output.shape) if self.output.is_grid and self.output.shape else (0,)
        return np.zeros(shape, dtype=np.int64)

    def evaluate_flat(self, flat: list[np.ndarray]) -> np.ndarray:
        """Outputs for a flat batch of any size, `chunk_size` values at a time."""
        n = len(flat[0]) if flat else 1
        chunks = [
            self.evaluate(*(a[start : start + self.chunk_size] for a in flat))
            for start in range(0, n, self.chunk_size)
        ]
        return np.concatenate(chunks) if chunks else self._empty()

    @abstractmethod
    def evaluate(self, *args: np.ndarray) -> np.ndarray:
        """Outputs for a flat batch: each argument (N,) or (N, H, W), already checked."""

    def explain(self, *args: np.ndarray) -> list[list[FeatureFiring]]:
        """Per input, the features that fired (circuits only; others explain nothing)."""
        return []


def distinct_rows(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of (N, S) integer tokens and, per row, the index of its distinct row."""
    if len(tokens) <= 1:
        return tokens, np.zeros(len(tokens), dtype=np.int64)
    base = int(tokens.max()) + 1
    if base ** tokens.shape[1] < 2**62:  # one int64 key per row: faster than unique(axis=0)
        keys = np.zeros(len(tokens), dtype=np.int64)
        for column in tokens.T:
            keys = keys * base + column
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        return tokens[first], inverse.reshape(-1)
    unique, inverse = np.unique(tokens, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)
