"""Registering a discovered function: idempotent for the same definition, refused (before any
search) for a name held by a function these examples cannot define."""

from __future__ import annotations

import numpy as np

from circuitlab.registry.domains import RegistryError
from circuitlab.registry.examples import Examples
from circuitlab.registry.function import Function
from circuitlab.registry.registry import Registry


def check_register_name(registry: Registry, name: str, data: Examples, rtol: float = 1e-9) -> None:
    """Refuse, before any search, a name that `data`'s function cannot be registered under: not
    an identifier, a primitive, or held by functions that cannot be the one `data` defines.

    A stored version may be that function when its inputs are columns of `data` with the
    domains `data` gives them and, if exact, it reproduces every output; such a name is left to
    `register_found`, after the search, so that re-running a discovery is not an error.
    """
    registry.check_new_name(name, taken_ok=True)
    if name not in registry:
        return
    if not any(
        _may_define(registry.get(name, v), data, registry, rtol)
        for v in registry.store.versions(name)
    ):
        raise RegistryError(_taken(registry, name, "does not fit these examples"))


def register_found(registry: Registry, fn: Function, rtol: float = 1e-9) -> tuple[Function, bool]:
    """`fn` stored in `registry`, or the stored version with the same definition (see
    `Registry.same_as`) with nothing written: (the registered function, whether it is new).
    A name held by a different function is refused."""
    same = registry.same_as(fn, rtol)
    if same is not None:
        return same, False
    if fn.name in registry:
        raise RegistryError(_taken(registry, fn.name, f"differs from the one found, {fn.render()}"))
    return registry.register(fn), True


def _may_define(fn: Function, data: Examples, registry: Registry, rtol: float) -> bool:
    column = {n: j for j, n in enumerate(data.names)}
    domains = data.domains()
    for i in fn.inputs:
        if i.name not in column or domains[column[i.name]] != i.domain:
            return False
    if fn.status != "exact":
        return True  # an approximate fit: only a new search can tell
    try:
        with np.errstate(all="ignore"):
            pred = fn.evaluate(
                *(data.X[:, column[i.name]] for i in fn.inputs), resolve=registry.resolve
            )
    except RegistryError:
        return False
    tol = rtol * max(float(np.abs(data.y).max()), 1e-300)
    return bool(np.all(np.abs(np.asarray(pred, dtype=np.float64) - data.y) <= tol))


def _taken(registry: Registry, name: str, why: str) -> str:
    latest = registry.get(name)
    return (
        f"a function named {name} already exists ({latest.ref} = {latest.render()}) and {why}; "
        "choose another name (--name) or do not register it (--no-register)"
    )
