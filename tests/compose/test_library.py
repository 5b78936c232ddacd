"""Library functions: one calling convention over circuits, models, registry functions and
primitives, and the circuits run exactly as `Circuit` runs them."""

import numpy as np
import pytest
import torch

from circuitlab.compose import CompositionError, DomainError
from circuitlab.registry import Function, Registry, call
from circuitlab.registry.expr import Var


def _by_hand(fn, a, b):
    circuit = fn.circuit
    logits = circuit.logits(circuit.encode(np.asarray(a), np.asarray(b)), mode=fn.mode)
    return circuit.decode(logits)


def test_task_name_gives_its_circuit_and_calls_broadcast(lib, small_catalog):
    _, ids = small_catalog
    add = lib["add_mod_11"]
    assert add.kind == "circuit" and add.catalog_id == ids["add_mod_11"]
    assert [str(p.type) for p in add.params] == ["Z_11", "Z_11"] and str(add.output) == "Z_11"
    a, b = np.meshgrid(np.arange(11), np.arange(11), indexing="ij")
    expected = _by_hand(add, a.reshape(-1), b.reshape(-1)).reshape(11, 11)
    assert np.array_equal(add(a, b), expected)  # (11, 11) in, (11, 11) out
    assert np.array_equal(add(np.arange(11)[:, None], np.arange(11)), expected)  # broadcast
    assert add(3, 4) == expected[3, 4] and add(3, 4).shape == ()
    assert np.array_equal(add(torch.tensor([3, 5]), [4, 4]), expected[[3, 5], 4])
    add.chunk_size = 7  # chunked evaluation gives the same answers
    assert np.array_equal(add(a, b), expected)


def test_model_mode_runs_the_whole_model(lib, small_catalog):
    _, ids = small_catalog
    circuit, model = lib.circuit(ids["mul_mod_11"][:8]), lib.circuit(ids["mul_mod_11"], "model")
    a, b = np.meshgrid(np.arange(11), np.arange(11))
    assert np.array_equal(
        model(a, b), _by_hand(model, a.reshape(-1), b.reshape(-1)).reshape(11, 11)
    )
    assert model.kind == "model" and circuit.kind == "circuit"
    run = circuit.circuit.run_dir
    direct = lib.model(run)
    assert np.array_equal(direct(a, b), model(a, b))


def test_bad_calls_name_the_port_the_domain_and_the_value(lib):
    add = lib["add_mod_11"]
    with pytest.raises(DomainError, match=r"add_mod_11\.b: 11 is outside Z_11"):
        add(3, 11)
    with pytest.raises(CompositionError, match="takes 2 arguments"):
        add(3)
    with pytest.raises(CompositionError, match="do not broadcast"):
        add([1, 2], [1, 2, 3])
    with pytest.raises(CompositionError, match="neither a task"):
        lib["add_mod_13"]
    with pytest.raises(CompositionError, match="no circuit"):
        lib.circuit("ffffffffff")


def test_trace_of_a_call_lists_labelled_features(lib):
    add = lib["add_mod_11"]
    value, trace = add([1, 2], 3, trace=True)
    (step,) = trace.steps
    assert step.ref == add.ref and np.array_equal(step.output, value)
    assert len(step.features) == 2 and step.features[0]
    firing = step.features[0][0]
    assert firing.label and firing.activation > 0
    assert add.circuit.keep[firing.layer][firing.feature]  # only circuit features fire
    text = trace.to_text()
    assert "add_mod_11" in text and firing.label in text
    assert trace.to_dict()["steps"][0]["features"][0][0]["layer"] == firing.layer


def test_registry_functions_and_primitives(lib, tmp_path):
    ke = Function.new("KE", ["m", "v"], call("MUL", Var(0), call("SQUARE", Var(1))))
    assert ke(2.0, 3.0) == 18.0 and str(ke) == "KE(m, v) = m*v^2"
    # evaluated on the row layout it was found on, junk columns included
    assert ke.on_columns(np.array([[9.0, 2.0, 3.0]]), ["junk", "m", "v"]).tolist() == [18.0]
    Registry(lib.store).register(ke)
    fn = lib.function("KE")
    assert fn(2, [1, 3]).tolist() == [2.0, 18.0] and fn.catalog_id is not None
    addmod = lib.function("ADDMOD_11")
    assert str(addmod.output) == "Z_11" and addmod(7, 9) == 5
    rot = lib.primitive("ROT90")
    grid = np.arange(6).reshape(2, 3) % 3
    assert np.array_equal(rot(grid), np.rot90(grid))
    assert str(rot.result_type((rot.params[0].type.parse("grid[2x3]:Z_3"),))) == "grid[3x2]:Z_3"
    assert lib.primitive("MULMOD", p=11)(3, 4) == 1


def test_verify_measures_agreement_and_records_implements(lib, small_catalog):
    url, ids = small_catalog
    add = lib["add_mod_11"]
    result = lib.verify(add, lib.function("ADDMOD_11"))
    a, b = np.meshgrid(np.arange(11), np.arange(11))
    truth = np.mean(add(a, b) == (a + b) % 11)
    assert result.exhaustive and result.n_examples == 121
    assert result.agreement == pytest.approx(truth)
    assert len(result.mismatches) == min(5, round((1 - truth) * 121))
    edge = lib.catalog.get(result.recorded)
    assert edge.circuit == ids["add_mod_11"] and edge.agreement == pytest.approx(truth)
    sampled = lib.verify(add, lib.primitive("ADDMOD", p=11), sample=50, record=False)
    assert not sampled.exhaustive and sampled.n_examples == 50 and sampled.recorded is None
    with pytest.raises(CompositionError, match="inputs differ"):
        lib.verify(add, lib.primitive("ADDMOD", p=13))
