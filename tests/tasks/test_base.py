"""Splits, the registry and spec errors shared by every family."""

from __future__ import annotations

import numpy as np
import pytest

from circuitlab.tasks import Task, TaskError, families, get_task
from circuitlab.tasks.base import register_family

SPECS = ["add_mod_7", "s3_compose", "grid_mirror_3x3_c2", "synth_mod_5[a*b+c]"]


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_gives_same_split(spec: str) -> None:
    task = get_task(spec)
    one, two = task.split(0.3, seed=4), get_task(spec).split(0.3, seed=4)
    np.testing.assert_array_equal(one.train_index, two.train_index)
    np.testing.assert_array_equal(one.train.inputs, two.train.inputs)
    np.testing.assert_array_equal(one.val.targets, two.val.targets)


@pytest.mark.parametrize("spec", SPECS)
def test_split_partitions_the_dataset(spec: str) -> None:
    task = get_task(spec)
    data, split = task.dataset(), task.split(0.4, seed=1)
    both = np.concatenate([split.train_index, split.val_index])
    assert sorted(both.tolist()) == list(range(len(data)))
    assert len(split.train) == round(0.4 * len(data))
    np.testing.assert_array_equal(split.train.inputs, data.inputs[split.train_index])
    np.testing.assert_array_equal(split.val.targets, data.targets[split.val_index])


def test_different_seeds_give_different_splits() -> None:
    task = get_task("add_mod_11")
    splits = [task.split(0.5, seed=s).train_index for s in range(3)]
    assert not np.array_equal(splits[0], splits[1])
    assert not np.array_equal(splits[1], splits[2])


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, float("nan")])
def test_bad_fraction_is_rejected(fraction: float) -> None:
    with pytest.raises(TaskError, match="train fraction"):
        get_task("add_mod_7").split(fraction, seed=0)


def test_full_fraction_leaves_empty_validation() -> None:
    split = get_task("add_mod_7").split(1.0, seed=0)
    assert len(split.train) == 49 and len(split.val) == 0


@pytest.mark.parametrize("spec", [f.example for f in families()])
def test_family_examples_satisfy_the_contract(spec: str) -> None:
    task = get_task(spec)
    assert isinstance(task, Task)
    assert task.spec == spec
    assert get_task(task.spec).spec == spec  # the spec round-trips
    data = task.dataset()
    assert data.inputs.dtype == np.int64 and data.targets.dtype == np.int64
    assert data.inputs.shape[1] == task.n_ctx
    assert data.targets.shape[1] == len(task.answer_positions)
    assert data.inputs.min() >= 0 and data.inputs.max() < task.d_vocab
    assert data.targets.min() >= 0 and data.targets.max() < task.d_vocab_out
    assert all(0 <= pos < task.n_ctx for pos in task.answer_positions)
    assert len(task.token_names()) == task.d_vocab
    assert len(task.output_names()) == task.d_vocab_out
    assert len(np.unique(data.inputs, axis=0)) == len(data)  # no duplicate examples


def test_families_cover_all_five_kinds() -> None:
    names = ["modular", "permutation", "grid", "synthesis", "tracr"]
    assert [f.name for f in families()] == names


def test_dataset_is_a_fresh_copy() -> None:
    task = get_task("grid_flip_3x3")
    task.dataset().inputs[:] = 0
    assert task.dataset().inputs.max() > 0


def test_unknown_task_lists_known_forms() -> None:
    with pytest.raises(TaskError, match="unknown task 'frobnicate'.*add_mod_113.*s5_compose"):
        get_task("frobnicate")


def test_duplicate_family_is_refused() -> None:
    with pytest.raises(TaskError, match="already registered"):
        register_family("modular", r"x", "x", "duplicate")(lambda m: get_task("add_mod_7"))
