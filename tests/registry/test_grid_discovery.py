"""Discovery on grids: the grid tasks' transforms and compositions of them."""

from __future__ import annotations

import numpy as np
import pytest

from circuitlab.registry import Registry, RegistryError
from circuitlab.registry.grid_search import discover_grid
from circuitlab.tasks.grid import GRID_OPS, sample_grids

GRIDS = sample_grids(3, 3, 4, size=40)


@pytest.mark.parametrize("op", sorted(GRID_OPS))
def test_each_grid_task_transform_is_found(op: str):
    _, transform, _ = GRID_OPS[op]
    fn = discover_grid(GRIDS, transform(GRIDS, 4), name="T")
    fresh = sample_grids(3, 3, 4, size=60, seed=9)[40:]
    assert np.array_equal(fn.evaluate(fresh), transform(fresh, 4)), fn.render()
    assert fn.complexity <= 3


def test_compositions_and_registered_grid_functions():
    target = np.rot90((GRIDS + 1) % 4, 1, axes=(1, 2))
    fn = discover_grid(GRIDS, target, name="ROT_RECOLOUR")
    assert np.array_equal(fn.evaluate(GRIDS), target) and fn.complexity == 3
    reg = Registry()
    reg.register(fn)
    twice = np.rot90((target + 1) % 4, 1, axes=(1, 2))
    again = discover_grid(GRIDS, twice, name="TWICE", registry=reg)
    assert again.uses() and reg.register(again).layer == 2
    small = np.repeat(np.repeat(GRIDS[:, :2, :2], 2, axis=1), 2, axis=2)
    crop_up = discover_grid(GRIDS, small, name="ZOOM")
    assert np.array_equal(crop_up.evaluate(GRIDS), small)


def test_grid_failures_are_clear():
    rng = np.random.default_rng(0)
    with pytest.raises(RegistryError, match="nothing registered"):
        discover_grid(GRIDS, rng.integers(0, 4, GRIDS.shape), max_depth=1)
    with pytest.raises(RegistryError, match="integer colours"):
        discover_grid(GRIDS.astype(float), GRIDS)
    with pytest.raises(RegistryError, match="input grids"):
        discover_grid(GRIDS, GRIDS[:5])
