"""Two small circuits (add and mul mod 11) in one catalog, shared by the compose tests."""

import pytest

from circuitlab.compose import Library
from circuitlab.extraction.pipeline import ExtractConfig, extract
from circuitlab.extraction.transcoder import TranscoderConfig
from circuitlab.registry import Domain, Function, Input, Kind, call
from circuitlab.registry.expr import Var
from circuitlab.training import RunSpec, get_recipe, train_stack

SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)
CONFIG = ExtractConfig(transcoder=TranscoderConfig(n_features=32, steps=80, batch_size=128))


@pytest.fixture(scope="session")
def small_catalog(tmp_path_factory):
    """(catalog URL, {task: circuit id}) for add_mod_11 and mul_mod_11 (not grokked: the tests
    check composition against the circuits themselves, not against arithmetic)."""
    root = tmp_path_factory.mktemp("compose")
    url = f"sqlite:///{root / 'catalog.db'}"
    recipe = get_recipe("fast").replace(train_fraction=0.6, max_steps=120, model=SMALL)
    ids = {}
    for task in ("add_mod_11", "mul_mod_11"):
        run = root / task
        train_stack([RunSpec(task, recipe, 0, run)], threads=1)
        ids[task] = extract(run, url, CONFIG).circuit_id
    return url, ids


@pytest.fixture()
def lib(small_catalog):
    """A Library on the small catalog, with ADDMOD_11 registered as extraction registers it
    for a grokked model (these are not grokked, so extraction found no signature)."""
    with Library(small_catalog[0]) as library:
        if "ADDMOD_11" not in library.registry:
            z11 = Domain(Kind.INT, modulus=11)
            addmod = call("ADDMOD", Var(0), Var(1), p=11)
            fn = Function.new("ADDMOD_11", [Input("a", z11), Input("b", z11)], addmod, output=z11)
            library.registry.register(fn)
        yield library
