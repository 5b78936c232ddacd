"""The learned guide: conditions on outputs, is deterministic, and beats uniform ordering."""

from __future__ import annotations

import numpy as np
import pytest

from circuitlab.registry import RegistryError
from circuitlab.registry.cases import cases
from circuitlab.registry.discover import search
from circuitlab.registry.domains import Domain, Kind
from circuitlab.registry.guide import FAMILIES, load_guide, signature, train, training_set
from circuitlab.registry.proposer import OpInfo, TaskView, UniformProposer

CASES = cases(seed=0)


def _view(case) -> TaskView:
    kinds = tuple(Domain.infer(case.X[:, j]).kind for j in range(case.X.shape[1]))
    return TaskView(case.X, case.y, kinds)


def test_guide_conditions_on_the_outputs():
    rng = np.random.default_rng(0)
    X = rng.uniform(1, 10, (40, 2))
    kinds = (Kind.REAL, Kind.REAL)
    ratio, product = X[:, 0] / X[:, 1], X[:, 0] * X[:, 1]
    assert not np.array_equal(signature(X, ratio, kinds), signature(X, product, kinds))
    guide = load_guide()
    p_ratio = guide.probabilities(TaskView(X, ratio, kinds))
    p_product = guide.probabilities(TaskView(X, product, kinds))
    assert p_ratio["DIV"] > 0.5 > p_product["DIV"]  # same inputs, different outputs
    ops = [
        OpInfo("DIV", "arithmetic", 2),
        OpInfo("MUL", "arithmetic", 2),
        OpInfo("KE@1", "registered", 2),
    ]
    prop = guide.propose(TaskView(X, ratio, kinds), ops)
    assert (
        prop.costs["DIV"] == 1
        and prop.costs["KE@1"] == 1
        and set(prop.order) == {"DIV", "MUL", "KE@1"}
    )


def test_training_is_deterministic_and_learns_something():
    a, b = train(n_tasks=300, seed=1, steps=300), train(n_tasks=300, seed=1, steps=300)
    assert np.array_equal(a.W, b.W) and a.families == tuple(FAMILIES)
    _, labels = training_set(300, seed=1)
    rate = labels.mean(axis=0)
    majority = float(np.mean(np.maximum(rate, 1 - rate)))  # best constant classifier
    assert a.meta["train_label_accuracy"] > majority + 0.02


@pytest.mark.timeout(120)
def test_ablation_guide_needs_fewer_candidates_than_uniform():
    guide = load_guide()
    total = {"uniform": 0, "guide": 0}
    for name in ("KE", "POWER", "KE_CORRELATED", "PE_JUNK", "XOR_INT", "FORCE"):
        case = CASES[name]
        for prop in (UniformProposer(), guide):
            result = search((case.X, case.y), names=case.names, proposer=prop)
            assert result.function is not None and case.check(result.function.evaluate)
            total[prop.name] += result.stats.evaluated
    assert total["guide"] * 5 < total["uniform"], total


def test_missing_weights_are_a_clear_error(tmp_path):
    with pytest.raises(RegistryError, match="no guide weights"):
        load_guide(tmp_path / "none.json")
