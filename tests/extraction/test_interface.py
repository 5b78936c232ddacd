"""Interface definitions: ports by family, signatures against known operations, boundary
statistics, catalog records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuitlab.catalog import Circuit, record_from_dict
from circuitlab.extraction import boundary
from circuitlab.extraction import interface as itf
from circuitlab.models import ModelConfig, Transformer
from circuitlab.tasks import get_task


def _model(task, seed: int = 0, **overrides) -> Transformer:
    sizes = {"d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64} | overrides
    cfg = ModelConfig.for_task(task, **sizes)
    return Transformer(cfg, seed=seed).eval()


@pytest.mark.parametrize(
    ("spec", "names", "positions", "domain", "out_domain", "out_positions"),
    [
        ("add_mod_113", ["a", "b"], [(0,), (1,)], "Z_113", "Z_113", (2,)),
        ("s5_compose", ["x", "y"], [(0,), (1,)], "S_5", "S_5", (2,)),
        ("synth_mod_7[a*b+c]", ["a", "b", "c"], [(0,), (1,), (2,)], "Z_7", "Z_7", (3,)),
        (
            "grid_rot90_3x3",
            ["grid"],
            [tuple(range(9))],
            "grid[3x3]:Z_3",
            "grid[3x3]:Z_3",
            tuple(range(9, 18)),
        ),
        (
            "grid_mirror_3x4_c5",
            ["grid"],
            [tuple(range(12))],
            "grid[3x4]:Z_5",
            "grid[3x4]:Z_5",
            tuple(range(12, 24)),
        ),
    ],
)
def test_ports_by_family(spec, names, positions, domain, out_domain, out_positions):
    ports, out = itf.ports_of(get_task(spec))
    assert [p.name for p in ports] == names
    assert [p.positions for p in ports] == positions
    assert all(p.domain == domain for p in ports)
    assert out.domain == out_domain and out.positions == out_positions
    assert out.vocabulary == get_task(spec).d_vocab_out


def _best(spec: str, outputs: np.ndarray | None = None, inputs: np.ndarray | None = None):
    task = get_task(spec)
    data = task.dataset()
    inputs = data.inputs if inputs is None else inputs
    outputs = data.targets if outputs is None else outputs
    return itf.match_signatures(task, inputs, outputs)


@pytest.mark.parametrize(
    ("spec", "function", "call", "primitive"),
    [
        ("add_mod_13", "ADDMOD", "ADDMOD(a, b, p=13)", True),
        ("sub_mod_13", "SUBMOD", "SUBMOD(a, b, p=13)", True),
        ("mul_mod_13", "MULMOD", "MULMOD(a, b, p=13)", True),
        ("div_mod_13", "DIVMOD", "DIVMOD(a, b, p=13)", True),  # b = 0 is not an input
        ("x2y_mod_13", "x2y_mod", "x2y_mod(a, b, p=13)", False),
        ("s4_conj", "s4_conj", "s4_conj(x, y)", False),
        ("s3_xyx", "s3_xyx", "s3_xyx(x, y)", False),
        ("grid_rot90_3x3", "ROT90", "ROT90(grid)", True),
        ("grid_antitranspose_3x3", "ANTITRANSPOSE", "ANTITRANSPOSE(grid)", True),
        ("grid_recolour_3x4_c4", "RECOLOUR", "RECOLOUR(grid, k=4)", True),
        ("synth_mod_5[a*b+c]", "synth_mod_5[a*b+c]", "synth_mod_5[a*b+c](a, b, c)", False),
    ],
)
def test_the_task_itself_is_the_best_signature(spec, function, call, primitive):
    matches = _best(spec)
    best = matches[0]
    assert (best.function, best.call, best.primitive) == (function, call, primitive)
    assert best.agreement == 1.0 and best.n_examples == len(get_task(spec).dataset())
    assert all(m.agreement < 1.0 for m in matches[1:])
    assert [m.agreement for m in matches] == sorted((m.agreement for m in matches), reverse=True)


def test_signature_agreement_counts_wrong_outputs():
    data = get_task("add_mod_11").dataset()
    outputs = data.targets.copy()
    outputs[:3] = (outputs[:3] + 1) % 11
    best = _best("add_mod_11", outputs)[0]
    assert best.function == "ADDMOD"
    assert best.agreement == pytest.approx(1 - 3 / 121)
    assert best.signature == "ADDMOD(a: Z_11, b: Z_11, p=11) -> Z_11"
    assert best.expression == "(a+b) mod 11"


def test_a_grid_answer_must_match_in_every_cell():
    data = get_task("grid_flip_3x3").dataset()
    outputs = data.targets.copy()
    outputs[:10, 4] = (outputs[:10, 4] + 1) % 3  # one wrong cell in 10 grids
    best = _best("grid_flip_3x3", outputs)[0]
    assert best.function == "FLIP" and best.agreement == pytest.approx(1 - 10 / len(data))


def test_boundary_stats_of_hand_built_vectors(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(20_000, 8, dtype=torch.float64)
    x[:, :2] = torch.randn(20_000, 2, generator=gen, dtype=torch.float64)  # isotropic in 2 dims
    x[:, 5] = 3.0  # a constant offset: mean, not variance
    stats = boundary.boundary_stats("site", x).stats
    assert stats["effective_rank"] == pytest.approx(2.0, abs=0.02)
    assert stats["participation_ratio"] == pytest.approx(2.0, abs=0.05)
    assert stats["rank_99"] == 2.0 and stats["n_vectors"] == 20_000
    assert stats["mean_vector_norm"] == pytest.approx(3.0, abs=0.05)
    assert stats["max_std"] == pytest.approx(1.0, abs=0.02) and stats["min_std"] == 0.0
    flat = boundary.boundary_stats("site", torch.ones(5, 4)).stats
    assert flat["effective_rank"] == 0.0 and flat["mean_norm"] == pytest.approx(2.0)
    # the statistics go over chunks of rows; chunks of 3 rows give the same, x is untouched
    before = x.clone()
    monkeypatch.setattr(boundary, "CHUNK_ELEMENTS", 24)
    chunked = boundary.boundary_stats("site", x).stats
    assert chunked == pytest.approx(stats, rel=1e-9, abs=1e-12) and torch.equal(x, before)


def test_infer_interface_on_an_untrained_model_has_no_signature():
    task = get_task("add_mod_7")
    definition = itf.infer_interface(_model(task), task)
    assert definition.signature is None  # a random model computes no known operation
    assert definition.candidates and definition.candidates[0].agreement < 0.5
    assert [b.site for b in definition.reads] == ["blocks.0.hook_mlp_in"]
    assert [b.site for b in definition.writes] == ["blocks.0.hook_mlp_out"]
    assert definition.reads[0].dim == 32 and definition.reads[0].stats["n_vectors"] == 49
    # accepting every agreement names the best candidate anyway
    loose = itf.infer_interface(_model(task), task, min_agreement=0.0)
    assert loose.signature == loose.candidates[0]


@pytest.mark.parametrize(
    "overrides",
    [{"n_layers": 2, "normalization": "LN"}, {"d_mlp": 0}],
)
def test_boundaries_follow_the_architecture(overrides):
    task = get_task("grid_mirror_3x3_c2")  # 512 grids
    model = _model(task, **overrides)
    definition = itf.infer_interface(model, task, max_boundary_inputs=300)
    reads = [b.site for b in definition.reads]
    if model.cfg.d_mlp:
        assert reads == ["blocks.0.hook_mlp_in", "blocks.1.hook_mlp_in"]
    else:
        assert reads == ["blocks.0.hook_resid_pre"]
        assert [b.site for b in definition.writes] == ["blocks.0.hook_attn_out"]
    # every answer position of every sampled input is one vector
    assert all(b.stats["n_vectors"] == 300 * 9 for b in definition.reads + definition.writes)


def test_json_round_trip_and_catalog_record():
    task = get_task("grid_rot180_3x3_c2")
    definition = itf.infer_interface(_model(task), task, min_agreement=0.0)
    data = json.loads(json.dumps(definition.to_dict()))
    assert itf.InterfaceDefinition.from_dict(data) == definition
    record = definition.to_record()
    assert record.inputs[0].name == "grid" and record.inputs[0].position == 0
    assert record.inputs[0].all_positions() == list(range(9))  # every cell, not just the first
    assert record.output.position == 9 and record.output.all_positions() == list(range(9, 18))
    assert record.signature == definition.signature.signature
    # the catalog validates it as part of a circuit, and loads it back equal
    circuit = Circuit(task=task.spec, model="0" * 64, nodes=[], interface=record)
    assert record_from_dict(circuit.to_dict()).interface == record


def test_model_that_does_not_fit_the_task_is_refused():
    with pytest.raises(itf.InterfaceError, match="output vocabulary 7 != task's 11"):
        itf.infer_interface(_model(get_task("add_mod_7")), get_task("add_mod_11"))
    with pytest.raises(itf.InterfaceError, match="min_agreement"):
        itf.infer_interface(_model(get_task("add_mod_7")), get_task("add_mod_7"), min_agreement=2)


@pytest.mark.parametrize(
    ("spec", "function"), [("add_mod_7", "ADDMOD"), ("s3_compose", "s3_compose")]
)
def test_trained_model_gets_its_signature(tmp_path, spec, function):
    """A model trained on all inputs of a tiny task computes the task's operation on all of
    them, and the interface names it."""
    from circuitlab.training import RunSpec, get_recipe, load_run, train_stack

    threads = torch.get_num_threads()
    try:
        recipe = get_recipe("fast").replace(train_fraction=1.0, max_steps=400)
        train_stack([RunSpec(spec, recipe, 0, tmp_path / "run")], threads=1)
    finally:
        torch.set_num_threads(threads)
    _, model = load_run(tmp_path / "run")
    definition = itf.infer_interface(model, get_task(spec))
    assert definition.signature is not None
    assert definition.signature.function == function and definition.signature.agreement == 1.0


def test_signatures_on_a_shuffled_subset_of_inputs():
    """Operations are looked up by input, not by row order."""
    task = get_task("s3_conj")
    data = task.dataset()
    rows = np.random.default_rng(0).permutation(len(data))[:20]
    best = itf.match_signatures(task, data.inputs[rows], data.targets[rows])[0]
    assert (best.function, best.agreement, best.n_examples) == ("s3_conj", 1.0, 20)
    synth = get_task("synth_mod_5[a*b+c]")
    sdata = synth.dataset()
    best = itf.match_signatures(synth, sdata.inputs[rows], sdata.targets[rows])[0]
    assert (best.agreement, best.n_examples) == (1.0, 20)
