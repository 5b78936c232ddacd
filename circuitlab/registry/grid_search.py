"""Discovery on grids: `discover_grid(inputs, outputs) -> Function` over the grid primitives.

Breadth-first enumeration of compositions of the grid primitives (and registered grid
functions), with parameters drawn from the examples (colour counts and colours present, crop
boxes of the output's shape, integer upscale factors), deduplicated by the grids each
composition produces on every example (observational equivalence). A composition is accepted
when it reproduces every training pair and every held-out pair exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry.domains import Domain, Input, Kind, RegistryError
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.primitives import get_primitive
from circuitlab.registry.registry import Registry


@dataclass
class GridResult:
    function: Function | None
    candidates: int
    depth: int
    message: str


def _ops(
    grids: np.ndarray, outputs: np.ndarray, registry: Registry | None
) -> list[tuple[str, dict[str, Any], int | None]]:
    colours = sorted(set(np.unique(grids).tolist()) | set(np.unique(outputs).tolist()))
    k = int(max(colours)) + 1
    ops: list[tuple[str, dict[str, Any], int | None]] = [
        (n, {}, None)
        for n in ("ROT90", "ROT180", "ROT270", "MIRROR", "FLIP", "TRANSPOSE", "ANTITRANSPOSE")
    ]
    ops.append(("RECOLOUR", {"k": k}, None))
    ops += [
        ("REPLACE_COLOUR", {"src": a, "dst": b}, None) for a in colours for b in colours if a != b
    ]
    (h, w), (oh, ow) = grids.shape[1:], outputs.shape[1:]
    for r in range(h):
        for c in range(w):
            for ch in range(1, h - r + 1):
                for cw in range(1, w - c + 1):
                    if (ch, cw) in ((oh, ow), (oh // 2, ow // 2), (oh // 3, ow // 3)) and (
                        ch,
                        cw,
                    ) != (h, w):
                        ops.append(("CROP", {"r": r, "c": c, "h": ch, "w": cw}, None))
    for factor in (2, 3, 4):
        if oh % factor == 0 and ow % factor == 0:
            ops.append(("UPSCALE", {"k": factor}, None))
    if registry is not None:
        for fn in registry.functions():
            if fn.arity == 1 and fn.inputs[0].domain.kind is Kind.GRID:
                ops.append((fn.name, {}, fn.version))
    return ops


def discover_grid(
    inputs: Any,
    outputs: Any,
    *,
    name: str = "G",
    registry: Registry | None = None,
    max_depth: int = 3,
    holdout: float = 0.25,
    seed: int = 0,
) -> Function:
    """The shortest composition of grid operations mapping every input grid to its output.

    inputs: (n, H, W) integer grids; outputs: (n, H', W'). Raises `RegistryError` when no
    composition up to `max_depth` fits (nothing is registered).
    """
    result = search_grid(
        inputs,
        outputs,
        name=name,
        registry=registry,
        max_depth=max_depth,
        holdout=holdout,
        seed=seed,
    )
    if result.function is None:
        raise RegistryError(result.message)
    return result.function


def search_grid(
    inputs: Any,
    outputs: Any,
    *,
    name: str = "G",
    registry: Registry | None = None,
    max_depth: int = 3,
    holdout: float = 0.25,
    seed: int = 0,
) -> GridResult:
    X, Y = _grids(inputs, "inputs"), _grids(outputs, "outputs")
    if len(X) != len(Y):
        raise RegistryError(f"{len(X)} input grids but {len(Y)} output grids")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(X))
    n_hold = int(round(holdout * len(X))) if len(X) >= 4 else 0
    train, hold = order[: len(X) - n_hold], order[len(X) - n_hold :]
    X, Y = X[np.concatenate([train, hold])], Y[np.concatenate([train, hold])]
    n_train = len(train)
    ops = _ops(X, Y, registry)

    def apply(op: tuple[str, dict[str, Any], int | None], g: np.ndarray) -> np.ndarray | None:
        opname, params, version = op
        try:
            if version is None:
                return get_primitive(opname).fn(g, **params)
            assert registry is not None
            return registry.call(opname, g, version=version)
        except RegistryError:
            return None

    def key(g: np.ndarray) -> bytes:
        return hashlib.blake2b(
            np.ascontiguousarray(g).tobytes() + str(g.shape).encode(), digest_size=16
        ).digest()

    frontier: list[tuple[np.ndarray, ex.Expr]] = [(X, ex.Var(0))]
    seen = {key(X)}
    candidates = 0
    for depth in range(1, max_depth + 1):
        nxt: list[tuple[np.ndarray, ex.Expr]] = []
        for vals, e in frontier:
            for op in ops:
                out = apply(op, vals)
                candidates += 1
                if out is None or out.ndim != 3:
                    continue
                k = key(out)
                if k in seen:
                    continue
                seen.add(k)
                opname, params, version = op
                e2 = ex.call(opname, e, version=version, **params)
                # accepted only when the training pairs and the held-out pairs all agree
                if out.shape == Y.shape and np.array_equal(out, Y):
                    fn = Function.new(
                        name,
                        [Input("grid", Domain.infer(X))],
                        e2,
                        output=Domain.infer(Y),
                        provenance=Provenance(
                            source="discovered",
                            seed=seed,
                            search={
                                "candidates": candidates,
                                "depth": depth,
                                "train": n_train,
                                "held_out": len(X) - n_train,
                            },
                        ),
                    )
                    return GridResult(fn, candidates, depth, f"exact: {fn.render()}")
                nxt.append((out, e2))
        frontier = nxt
    return GridResult(
        None,
        candidates,
        max_depth,
        f"no composition of up to {max_depth} grid operations fits "
        f"({candidates:,} candidates); nothing registered",
    )


def _grids(values: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except ValueError:
        raise RegistryError(f"{what}: grids must all have the same shape") from None
    if arr.ndim != 3 or arr.dtype.kind not in "iu" or arr.size == 0:
        raise RegistryError(
            f"{what} must be a non-empty (n, H, W) array of integer colours, "
            f"got shape {arr.shape} of {arr.dtype}"
        )
    if arr.min() < 0:
        raise RegistryError(f"{what}: colours must be >= 0")
    return arr.astype(np.int64)


__all__: Sequence[str] = ("discover_grid", "search_grid", "GridResult")
