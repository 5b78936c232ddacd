"""Grid tasks: encoding, transforms against numpy, sampling, and size errors."""

from __future__ import annotations

import numpy as np
import pytest

from circuitlab.tasks import TaskError, get_task
from circuitlab.tasks.grid import GRID_OPS, SAMPLE_SIZE, sample_grids

NUMPY = {
    "rot90": lambda g, k: np.rot90(g),
    "rot180": lambda g, k: np.rot90(g, 2),
    "rot270": lambda g, k: np.rot90(g, -1),
    "mirror": lambda g, k: np.fliplr(g),
    "flip": lambda g, k: np.flipud(g),
    "transpose": lambda g, k: g.T,
    "antitranspose": lambda g, k: np.rot90(g, 2).T,
    "recolour": lambda g, k: (g + 1) % k,
}
SHAPES = {True: [(3, 3), (4, 4), (5, 5)], False: [(3, 3), (3, 5), (5, 4)]}


def test_every_op_has_a_reference() -> None:
    assert set(NUMPY) == set(GRID_OPS)


@pytest.mark.parametrize("op", sorted(GRID_OPS))
def test_transform_matches_numpy_per_grid(op: str) -> None:
    for h, w in SHAPES[GRID_OPS[op][2]]:
        task = get_task(f"grid_{op}_{h}x{w}_c4")
        data = task.dataset()
        cells = h * w
        assert task.n_ctx == 2 * cells and task.answer_positions == tuple(range(cells, 2 * cells))
        assert (data.inputs[:, cells:] == 4).all()  # query tokens
        for i in np.random.default_rng(0).integers(0, len(data), size=50):
            grid = data.inputs[i, :cells].reshape(h, w)
            expected = NUMPY[op](grid, 4)
            np.testing.assert_array_equal(data.targets[i], expected.reshape(-1))


def test_hand_computed_rot90() -> None:
    """Counter-clockwise: the last column becomes the first row."""
    data = get_task("grid_rot90_3x3_c3").dataset()
    grid = np.array([0, 1, 2, 0, 0, 1, 2, 2, 0])  # rows 012 / 001 / 220
    row = np.flatnonzero((data.inputs[:, :9] == grid).all(axis=1))
    assert len(row) == 1
    assert data.targets[row[0]].tolist() == [2, 1, 0, 1, 0, 2, 0, 0, 2]  # 210 / 102 / 002


def test_small_spaces_are_enumerated() -> None:
    data = get_task("grid_mirror_3x3_c2").dataset()
    assert len(data) == 2**9
    assert len(np.unique(data.inputs, axis=0)) == 2**9


def test_large_spaces_are_a_fixed_distinct_sample() -> None:
    grids = sample_grids(4, 4, 2)
    assert grids.shape == (SAMPLE_SIZE, 4, 4)
    assert len(np.unique(grids.reshape(SAMPLE_SIZE, -1), axis=0)) == SAMPLE_SIZE
    np.testing.assert_array_equal(grids, sample_grids(4, 4, 2))  # deterministic
    assert not np.array_equal(grids, sample_grids(4, 4, 2, seed=1))
    # tasks of one shape share their inputs, so their answers can be compared and composed
    rot, flip = get_task("grid_rot90_5x5_c5").dataset(), get_task("grid_flip_5x5_c5").dataset()
    np.testing.assert_array_equal(rot.inputs, flip.inputs)


def test_default_colours_are_three() -> None:
    task = get_task("grid_flip_3x4")
    assert task.spec == "grid_flip_3x4" and task.d_vocab == 4 and task.d_vocab_out == 3
    assert get_task("grid_flip_3x4_c3").spec == "grid_flip_3x4"
    assert task.token_names()[-1] == "?"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("grid_rot90_3x4", "needs a square grid .* got 3x4; ops that need one: rot90"),
        ("grid_transpose_5x3", "needs a square grid"),
        ("grid_mirror_2x3", "height must be in 3..5, got 2"),
        ("grid_mirror_3x6", "width must be in 3..5, got 6"),
        ("grid_mirror_3x3_c1", "colours must be in 2..10"),
        ("grid_mirror_3x3_c11", "colours must be in 2..10"),
        ("grid_shear_3x3", "unknown grid operation 'shear'; known: rot90"),
    ],
)
def test_bad_grid_specs(spec: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        get_task(spec)
