"""The operations a numeric search may apply: primitives of the stage's groups (with its
modulus and constants) and registered functions, each as a `search.Op`.

A registered function is defined only inside its declared input domains (NaN elsewhere, which
the search drops), so a function is never extrapolated beyond what it was declared on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry.domains import Domain, Kind, is_subkind
from circuitlab.registry.function import Function
from circuitlab.registry.primitives import GROUPS, Primitive, primitives
from circuitlab.registry.registry import Registry
from circuitlab.registry.search import Op, literal
from circuitlab.registry.stages import DIVISORS, Stage, is_prime

if TYPE_CHECKING:
    from circuitlab.registry.results import DiscoveryConfig

# the primitive groups a numeric discovery can search (grids have their own: grid_search.py)
NUMERIC_GROUPS = tuple(g for g in GROUPS if g != "grid")


def build_ops(
    kinds: Sequence[Kind],
    registry: Registry | None,
    cfg: DiscoveryConfig,
    stage: Stage,
    exclude: str | None = None,
) -> list[Op]:
    """The operations one stage of a numeric search may apply: the primitives of its groups
    (modular ones with its modulus, DIVMOD only for a prime one; ADDMOD and MULMOD also with
    each of its constants as an argument, FLOORDIV also with each of DIVISORS), and every
    numeric registered function but `exclude`."""
    ops: list[Op] = []
    if registry is not None:
        for fn in registry.functions():
            if fn.output.kind is Kind.GRID or any(i.domain.kind is Kind.GRID for i in fn.inputs):
                continue
            if fn.name == exclude:
                continue
            ops.append(_function_op(fn, registry))
    for prim in primitives().values():
        if prim.group not in stage.groups or prim.group not in NUMERIC_GROUPS:
            continue
        if prim.name in cfg.exclude or prim.name == "LOOP" or not prim.enumerated:
            continue
        if prim.params == ("p",):
            p = stage.modulus
            if p is None or (prim.name == "DIVMOD" and not is_prime(p)):
                continue
            ops.append(_prim_op(prim, {"p": p}))
            if prim.name in ("ADDMOD", "MULMOD"):
                ks = [k for k in stage.constants if k % p > (prim.name == "MULMOD")]
                ops += [_literal_op(prim, k, {"p": p}) for k in ks]
        elif not prim.params:
            ops.append(_prim_op(prim, {}))
            if prim.name == "FLOORDIV":
                ops += [_literal_op(prim, k, {}) for k in DIVISORS]
    return ops


def _prim_op(prim: Primitive, params: dict[str, int]) -> Op:
    label = prim.name + (
        "[" + ",".join(f"{k}={v}" for k, v in params.items()) + "]" if params else ""
    )
    return Op(
        label,
        prim.group,
        prim.arity,
        prim.out_kind,
        lambda *a: prim.fn(*a, **params),
        lambda args: ex.call(prim.name, *args, **params),
        prim.commutative,
        param_cost=len(params),
    )


def _literal_op(prim: Primitive, k: int, params: dict[str, int]) -> Op:
    """A binary integer primitive with the constant k as one argument, as a unary operation:
    FLOORDIV(a, k), ADDMOD(a, k, p), MULMOD(k, a, p) (a factor first, as it is written). The
    constant costs one, like a parameter."""
    first = prim.name == "MULMOD"
    value = float(k)
    label = f"{prim.name}[" + ",".join([*(f"{n}={v}" for n, v in params.items()), f"#{k}"]) + "]"

    def apply(a: np.ndarray) -> np.ndarray:
        return prim.fn(value, a, **params) if first else prim.fn(a, value, **params)

    def build(args: Sequence[ex.Expr]) -> ex.Expr:
        pair = (literal(k), args[0]) if first else (args[0], literal(k))
        return ex.call(prim.name, *pair, **params)

    return Op(
        label,
        prim.group,
        1,
        lambda kinds: prim.out_kind((kinds[0], Kind.INT)) if len(kinds) == 1 else None,
        apply,
        build,
        param_cost=len(params) + 1,
    )


def _function_op(fn: Function, registry: Registry) -> Op:
    """A registered function as an operation, defined (not NaN) only where every argument lies
    in its input's declared domain: a function is never extrapolated beyond what it was
    declared (or discovered) on, and the search drops candidates undefined anywhere."""
    want = tuple(i.domain.kind for i in fn.inputs)
    out = Kind.REAL if fn.output.kind is Kind.REAL else fn.output.kind

    def rule(kinds: tuple[Kind, ...]) -> Kind | None:
        if len(kinds) != len(want):
            return None
        return (
            out
            if all(is_subkind(k, w) or w is Kind.REAL for k, w in zip(kinds, want, strict=True))
            else None
        )

    def apply(*args: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = np.asarray(
                ex.evaluate(fn.expr, list(args), fn.constant_dict, registry.resolve),
                dtype=np.float64,
            ) + np.zeros_like(args[0])
        inside = np.ones(out.shape, dtype=bool)
        for a, i in zip(args, fn.inputs, strict=True):
            inside &= _inside(a, i.domain)
        return np.where(inside, out, np.nan)

    return Op(
        fn.ref,
        "registered",
        fn.arity,
        rule,
        apply,
        lambda args: ex.call(fn.name, *args, version=fn.version),
    )


def _inside(values: np.ndarray, domain: Domain) -> np.ndarray:
    """Which values lie in `domain`: its kind (0/1, integers), modulus and bounds."""
    ok = np.isfinite(values)
    if domain.kind is Kind.BOOL:
        return ok & ((values == 0) | (values == 1))
    if domain.kind is Kind.INT or domain.modulus is not None:
        ok &= values == np.round(values)
    if domain.modulus is not None:
        ok &= (values >= 0) & (values < domain.modulus)
    if domain.lo is not None:
        ok &= values >= domain.lo
    if domain.hi is not None:
        ok &= values <= domain.hi
    return ok
