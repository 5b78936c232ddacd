import json
from collections.abc import Callable

import numpy as np
import pytest
import torch

from circuitlab.extraction.cellmap import (
    CellMapError,
    analyze,
    definition,
    model_predictor,
)
from circuitlab.tasks import get_task
from circuitlab.tasks.grid import GRID_OPS
from circuitlab.training import RunSpec, get_recipe, load_run, train_stack

# Per output cell (row-major) of a 3x3 grid, the input cell it reads, written out by hand:
#   0 1 2
#   3 4 5
#   6 7 8
HAND_MAPS_3X3 = {
    "rot90": (2, 5, 8, 1, 4, 7, 0, 3, 6),  # counter-clockwise: the right column becomes the top row
    "rot180": (8, 7, 6, 5, 4, 3, 2, 1, 0),
    "rot270": (6, 3, 0, 7, 4, 1, 8, 5, 2),  # clockwise: the left column becomes the top row
    "mirror": (2, 1, 0, 5, 4, 3, 8, 7, 6),
    "flip": (6, 7, 8, 3, 4, 5, 0, 1, 2),
    "transpose": (0, 3, 6, 1, 4, 7, 2, 5, 8),
    "antitranspose": (8, 5, 2, 7, 4, 1, 6, 3, 0),
    "recolour": (0, 1, 2, 3, 4, 5, 6, 7, 8),
}


def op_predictor(
    op: str, task, colour_map: tuple[int, ...] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A predictor applying GRID_OPS[op] to the input cells, then optionally `colour_map`."""
    h, w, cells = task.height, task.width, task.height * task.width

    def predict(tokens: torch.Tensor) -> torch.Tensor:
        grids = tokens[:, :cells].numpy().reshape(-1, h, w)
        out = np.ascontiguousarray(GRID_OPS[op][1](grids, task.colours)).reshape(-1, cells)
        if colour_map is not None:
            out = np.asarray(colour_map)[out]
        return torch.from_numpy(out)

    return predict


@pytest.mark.parametrize("op", list(HAND_MAPS_3X3))
def test_definition_matches_hand_written_maps(op):
    defined = definition(get_task(f"grid_{op}_3x3"))
    assert defined.sources == HAND_MAPS_3X3[op]
    colours = (1, 2, 0) if op == "recolour" else (0, 1, 2)
    assert defined.colour_maps == (colours,) * 9
    assert defined.colour_map == colours


def test_definition_of_a_non_square_grid():
    defined = definition(get_task("grid_mirror_3x4_c5"))
    assert defined.sources == (3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8)
    assert defined.colour_map == (0, 1, 2, 3, 4)


@pytest.mark.parametrize("op", list(HAND_MAPS_3X3))
def test_the_op_itself_gives_an_exact_map(op):
    task = get_task(f"grid_{op}_3x3")
    report = analyze(None, task, predict=op_predictor(op, task), n_probe=64)
    assert report.exact and report.is_permutation
    assert report.cell_map == HAND_MAPS_3X3[op] == report.expected_map
    assert report.cells_matching == 9 and report.accuracy == 1.0
    assert report.source_shares() == (1.0,) * 9 and report.leak_shares() == (0.0,) * 9
    assert report.label().endswith("9/9 cells exact")
    assert "matches" in report.description() and "NOT" not in report.description()
    json.dumps(report.to_dict(), allow_nan=False)


def test_a_larger_grid_is_exact_and_fast():
    task = get_task("grid_rot90_5x5_c10")
    report = analyze(None, task, predict=op_predictor("rot90", task))
    assert report.exact and report.colour_map == tuple(range(10))
    assert report.label() == "cell map of rotate 90 ccw: 25/25 cells exact"
    assert report.seconds < 5


def test_a_wrong_rotation_is_a_permutation_that_does_not_match():
    task = get_task("grid_rot90_3x3")
    report = analyze(None, task, predict=op_predictor("rot270", task), n_probe=64)
    assert report.is_permutation and not report.exact
    assert report.cell_map == HAND_MAPS_3X3["rot270"]
    assert report.input_to_output() == tuple((j,) for j in HAND_MAPS_3X3["rot90"])
    assert report.cell_matches == (False,) * 4 + (True,) + (False,) * 4  # the centre stays
    assert report.cells_matching == 1 and report.accuracy < 0.1
    assert report.label() == "cell map of rotate 90 ccw: 1/9 cells match"
    assert "does NOT match" in report.description()


def test_two_swapped_cells_and_a_wrong_colour_map():
    task = get_task("grid_rot90_3x3")
    rot90 = op_predictor("rot90", task)

    def swapped(tokens):
        out = rot90(tokens)
        return out[:, [1, 0, 2, 3, 4, 5, 6, 7, 8]]

    report = analyze(None, task, predict=swapped, n_probe=64)
    assert report.cells_matching == report.sources_matching == 7
    assert report.cell_matches[:2] == (False, False) and report.is_permutation

    recoloured = analyze(None, task, predict=op_predictor("rot90", task, (2, 0, 1)), n_probe=64)
    assert recoloured.sources_matching == 9 and recoloured.cells_matching == 0
    assert recoloured.colour_map == (2, 0, 1) and recoloured.expected_colour_map == (0, 1, 2)
    assert recoloured.colour_map_kind == "a permutation of the colours"
    assert not recoloured.exact


def test_recolour_task_checks_the_colour_map():
    task = get_task("grid_recolour_3x3_c4")
    report = analyze(None, task, predict=op_predictor("recolour", task), n_probe=64)
    assert report.exact and report.colour_map == (1, 2, 3, 0)
    identity = analyze(None, task, predict=op_predictor("mirror", task), n_probe=64)
    assert identity.colour_map == (0, 1, 2, 3) and identity.colour_map_kind == "identity"
    assert identity.cells_matching == 0 and identity.sources_matching == 3  # middle column


def test_maps_that_are_not_permutations():
    task = get_task("grid_rot90_3x3")
    rot90 = op_predictor("rot90", task)

    def constant(tokens):
        return torch.zeros(tokens.shape[0], 9, dtype=torch.long)

    report = analyze(None, task, predict=constant, n_probe=32)
    assert report.cell_map == ("none",) * 9 and not report.is_permutation
    assert report.input_to_output() == ((),) * 9
    assert report.cells_matching == 0
    assert report.label().endswith("(not a permutation)")
    assert "NOT a permutation" in report.description()
    json.dumps(report.to_dict(), allow_nan=False)

    def mixed(tokens):  # output cell 0 reads input cells 2 and 5
        out = rot90(tokens).clone()
        out[:, 0] = (tokens[:, 2] + tokens[:, 5]) % 3
        return out

    report = analyze(None, task, predict=mixed, n_probe=32)
    assert report.cell_map[0] == "several" and report.cell_map[1:] == HAND_MAPS_3X3["rot90"][1:]
    assert not report.is_permutation and report.cells_matching == 8
    assert "output cells that follow several input cells: (0,0);" in report.description()


def test_noisy_predictions_keep_the_map_and_lower_the_accuracy():
    task = get_task("grid_rot90_3x3")
    rot90 = op_predictor("rot90", task)
    noise = np.random.default_rng(1)

    def noisy(tokens):
        out = rot90(tokens).numpy().copy()
        flip = noise.random(out.shape) < 0.1
        out[flip] = (out[flip] + 1) % 3
        return torch.from_numpy(out)

    report = analyze(None, task, predict=noisy, n_probe=128)
    assert report.exact
    assert 0.85 < report.cell_accuracy < 0.95 and report.accuracy < 0.5


def test_deterministic_for_a_seed():
    task = get_task("grid_rot90_3x3")
    rot90 = op_predictor("rot90", task)

    def noisy(tokens):  # deterministic per input grid
        out = rot90(tokens)
        return torch.where(tokens[:, :9].sum(1, keepdim=True) % 4 == 0, 0, out)

    def run(seed):
        d = analyze(None, task, predict=noisy, n_probe=32, seed=seed).to_dict()
        d.pop("seconds")
        return d

    assert run(3) == run(3)
    assert run(3)["influence"] != run(4)["influence"]


def test_bad_inputs_are_refused():
    with pytest.raises(CellMapError, match="grid task"):
        definition(get_task("add_mod_13"))
    task = get_task("grid_rot90_3x3")
    with pytest.raises(CellMapError, match="shape"):
        analyze(None, task, predict=lambda t: torch.zeros(t.shape[0], 4, dtype=torch.long))
    with pytest.raises(CellMapError, match="outside 0..2"):
        analyze(None, task, predict=lambda t: torch.full((t.shape[0], 9), 3, dtype=torch.long))
    with pytest.raises(CellMapError, match="no predictor"):
        analyze(None, task)
    with pytest.raises(CellMapError, match="n_probe"):
        analyze(None, task, predict=op_predictor("rot90", task), n_probe=0)


@pytest.fixture(scope="module")
def trained_rot90(tmp_path_factory):
    """grid_rot90_3x3 on a tiny model: 100% validation accuracy after ~150 minibatch steps."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("runs") / "rot90"
    recipe = get_recipe("fast").replace(
        max_steps=300, batch_size=512, model=dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)
    )
    train_stack([RunSpec("grid_rot90_3x3", recipe, 0, run)], threads=1)
    return load_run(run)[1]


def test_a_trained_model_implements_the_map(trained_rot90):
    task = get_task("grid_rot90_3x3")
    report = analyze(trained_rot90, task)
    assert report.exact and report.is_permutation
    assert report.cell_map == HAND_MAPS_3X3["rot90"]
    assert report.accuracy > 0.99
    assert min(report.source_shares()) > 0.95 and max(report.leak_shares()) < 0.05
    same = analyze(trained_rot90, task, predict=model_predictor(trained_rot90))
    assert same.influence == report.influence
    with pytest.raises(CellMapError, match="does not fit"):
        analyze(trained_rot90, get_task("grid_rot90_4x4"))
