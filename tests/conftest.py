"""Suite-wide settings: one torch thread per test process.

Tests use tiny models, where a second thread only adds synchronisation; on a loaded machine
(CI runners, parallel jobs) spinning OpenMP threads slow tiny ops down by orders of magnitude.
"""

import pytest


def pytest_configure(config):
    try:
        import torch
    except ImportError:  # the catalog and registry suites need no torch
        return
    torch.set_num_threads(1)


SMALL_MODEL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)


def train_small_run(tmp_path_factory, task: str, max_steps: int, name: str | None = None):
    """A tiny model of `task` (`fast` recipe, 60% train split, seed 0) trained for `max_steps`
    into a fresh temporary run directory: the run most extraction and pruning tests start from."""
    from circuitlab.training import RunSpec, get_recipe, train_stack

    run = tmp_path_factory.mktemp("runs") / (name or task)
    recipe = get_recipe("fast").replace(train_fraction=0.6, max_steps=max_steps, model=SMALL_MODEL)
    train_stack([RunSpec(task, recipe, 0, run)], threads=1)
    return run


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """`small_run(task, max_steps, name)`: see train_small_run."""
    return lambda task, max_steps, name=None: train_small_run(
        tmp_path_factory, task, max_steps, name
    )
