"""Records: validation names the field, ids are content hashes, JSON round trips."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from circuitlab.catalog import (
    Circuit,
    Feature,
    Function,
    Implements,
    Interface,
    Metrics,
    Model,
    Node,
    Output,
    Port,
    RecordError,
    SchemaVersionError,
    Slot,
    Tags,
    Task,
    record_from_dict,
    synthetic,
)


@pytest.fixture
def circuit() -> Circuit:
    return synthetic.circuit(synthetic.model(), seed=3, n_features=12, n_edges=30)


def _error(record) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(RecordError) as err:
        record.to_dict()
    return str(err.value)


def test_every_record_round_trips_through_json() -> None:
    world = synthetic.world(4)
    for record in world.records():
        text = json.dumps(record.to_dict())
        back = record_from_dict(json.loads(text))
        assert back == record
        assert back.id == record.id


def test_ids_are_content_hashes() -> None:
    a, b = synthetic.world(3), synthetic.world(3)
    assert a.circuits[0].id == b.circuits[0].id
    assert len(a.circuits[0].id) == 64 and int(a.circuits[0].id, 16) >= 0
    assert a.task.id == "add_mod_113"
    changed = copy.deepcopy(a.circuits[0])
    changed.edges[0].weight += 1e-9
    assert changed.id != a.circuits[0].id
    relabelled = copy.deepcopy(a.circuits[0])
    relabelled.metadata.created = "1999-01-01"
    assert relabelled.id == a.circuits[0].id  # metadata is provenance, not content
    f = a.circuits[0].nodes[4].feature
    g = copy.deepcopy(f)
    g.label, g.stats = "another label", {"top": [1, 2]}
    assert g.id == f.id  # feature ids hash identity only
    imp = Implements(circuit="a" * 64, function="b" * 64, agreement=0.5)
    assert Implements(circuit="a" * 64, function="b" * 64, agreement=0.9).id == imp.id


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: setattr(c, "task", ""), "circuit.task: must not be empty"),
        (lambda c: setattr(c, "task", "add mod"), "circuit.task: must not contain whitespace"),
        (lambda c: setattr(c, "nodes", "x"), "circuit.nodes: expected a list"),
        (
            lambda c: setattr(c.nodes[1].feature, "node_type", "blob"),
            "circuit.nodes[1].feature.node_type: must be one of",
        ),
        (
            lambda c: setattr(c.nodes[2].feature, "layer", 1.5),
            "circuit.nodes[2].feature.layer: expected an integer",
        ),
        (
            lambda c: setattr(c.nodes[2].feature, "position", -1),
            "circuit.nodes[2].feature.position: must be >= 0",
        ),
        (
            lambda c: setattr(c.nodes[2].feature, "model", "f" * 64),
            "circuit.nodes[2].feature.model: ",
        ),
        (
            lambda c: c.nodes.append(copy.deepcopy(c.nodes[0])),
            "circuit.nodes[12].feature: duplicate",
        ),
        (
            lambda c: setattr(c.edges[4], "weight", True),
            "circuit.edges[4].weight: expected a number",
        ),
        (
            lambda c: setattr(c.edges[4], "weight", "0.5"),
            "circuit.edges[4].weight: expected a number",
        ),
        (lambda c: setattr(c.edges[5], "source", "0" * 64), "circuit.edges[5].source: "),
        (lambda c: c.edges.append(copy.deepcopy(c.edges[0])), "circuit.edges[30]: duplicate edge"),
        (lambda c: setattr(c.metrics, "accuracy", 1.5), "circuit.metrics.accuracy: must be <= 1.0"),
        (
            lambda c: setattr(c.metrics, "ablation", "median"),
            "circuit.metrics.ablation: must be one of",
        ),
        (
            lambda c: c.metrics.extra.update({"sufficiency": 1.0}),
            "circuit.metrics.extra.sufficiency: clashes",
        ),
        (
            lambda c: c.metrics.extra.update({"bad key": 1.0}),
            "circuit.metrics.extra key: must be letters",
        ),
        (
            lambda c: setattr(c.tags, "priors", ["Core_Magic"]),
            "circuit.tags.priors[0]: must be one of",
        ),
        (
            lambda c: setattr(c.tags, "priors", ["Logic", "Logic"]),
            "circuit.tags.priors[1]: duplicate",
        ),
        (lambda c: setattr(c.tags, "generality", -0.1), "circuit.tags.generality: must be >= 0.0"),
        (
            lambda c: setattr(c.interface, "inputs", [Port("a", "Z_3", 0), Port("a", "Z_3", 1)]),
            "circuit.interface.inputs[1]: duplicate",
        ),
        (
            lambda c: setattr(c.interface, "output", Output("", 2)),
            "circuit.interface.output.domain: must not be empty",
        ),
        (
            lambda c: setattr(c.interface.reads[0], "dim", 0),
            "circuit.interface.reads[0].dim: must be >= 1",
        ),
        (
            lambda c: setattr(c.examples[0], "tokens", [1, "2"]),
            "circuit.examples[0].tokens[1]: expected an integer",
        ),
        (
            lambda c: setattr(c.metadata, "extra", {"x": {1: 2}}),
            "circuit.metadata.extra.x: object keys must be strings",
        ),
        (
            lambda c: setattr(c.metadata, "extra", {"x": object()}),
            "circuit.metadata.extra.x: not JSON data",
        ),
        (lambda c: setattr(c, "interface", "Z_113"), "circuit.interface: expected Interface"),
    ],
)
def test_validation_names_the_field(circuit: Circuit, mutate, message) -> None:  # type: ignore[no-untyped-def]
    mutate(circuit)
    assert _error(circuit).startswith(message)


def test_other_records_validate_too() -> None:
    assert _error(Task(spec="")).startswith("task.spec: must not be empty")
    m = Model(task="add_mod_113", weights_sha256="xyz")
    assert _error(m).startswith("model.weights_sha256: must be 64 lowercase hex digits")
    m = Model(task="add_mod_113", weights_sha256="0" * 64, parent="a" * 64)
    assert _error(m).startswith("model.derivation: parent and derivation go together")
    m = Model(task="t", weights_sha256="0" * 64, lora_rank=0)
    assert _error(m).startswith("model.lora_rank: must be >= 1")
    f = Function(name="f", composes=[Slot("x", "a" * 64), Slot("x", "b" * 64)])
    assert _error(f).startswith("function.composes[1]: duplicate")
    assert _error(Implements(circuit="a" * 64, function="b" * 64, agreement=1.2)).startswith(
        "implements.agreement: must be <= 1.0"
    )


def test_numpy_scalars_are_accepted_as_numbers() -> None:
    model = synthetic.model()
    f = Feature(model=model.id, node_type="feature", layer=np.int64(1), index=np.int32(7))
    c = Circuit(
        task="add_mod_113",
        model=model.id,
        nodes=[Node(f, activation=np.float32(0.5))],
        metrics=Metrics(sufficiency=np.float64(0.25)),
        tags=Tags(generality=np.float16(0.5)),
    )
    data = c.to_dict()
    assert data["nodes"][0]["activation"] == 0.5 and type(data["nodes"][0]["activation"]) is float
    assert (
        data["nodes"][0]["feature"]["layer"] == 1
        and type(data["nodes"][0]["feature"]["layer"]) is int
    )
    json.dumps(data)


def test_from_dict_refuses_unknown_fields_newer_schemas_and_wrong_ids() -> None:
    data = synthetic.task().to_dict()
    with pytest.raises(RecordError, match="task.colour: unknown field"):
        record_from_dict({**data, "colour": "red"})
    with pytest.raises(SchemaVersionError, match="newer than this circuitlab"):
        record_from_dict({**data, "schema": 99})
    with pytest.raises(RecordError, match="kind: must be one of"):
        record_from_dict({**data, "kind": "galaxy"})
    model = synthetic.model().to_dict()
    with pytest.raises(RecordError, match="model.id: .* does not match"):
        record_from_dict({**model, "id": "0" * 64})
    missing = {k: v for k, v in model.items() if k != "task"}
    with pytest.raises(RecordError, match="model.task: missing required field"):
        record_from_dict(missing)
    with pytest.raises(RecordError, match="circuit.interface.inputs"):
        record_from_dict(
            {
                **synthetic.circuit(synthetic.model(), n_features=5, n_edges=4).to_dict(),
                "interface": {"output": {"domain": "Z", "position": 0}},
            }
        )


def test_interface_records_build_from_plain_dicts() -> None:
    model = synthetic.model()
    f = Feature(model=model.id, node_type="feature", layer=0, index=0)
    c = Circuit(
        task="add_mod_113",
        model=model.id,
        nodes=[Node(f)],
        interface={
            "inputs": [{"name": "a", "domain": "Z_5", "position": 0}],  # type: ignore[arg-type]
            "output": {"domain": "Z_5", "position": 2},
        },
    )
    assert c.to_dict()["interface"]["inputs"][0]["encoding"] == "token"
    assert isinstance(record_from_dict(c.to_dict()).interface, Interface)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda c: setattr(c.interpretation, "label", "x" * 1_001),
            "circuit.interpretation.label: is 1,001 characters long; at most 1,000",
        ),
        (
            lambda c: setattr(c.interpretation, "description", "x" * 10_001),
            "circuit.interpretation.description: is 10,001 characters long; at most 10,000",
        ),
        (
            lambda c: setattr(c.nodes[3].feature, "label", "x" * 1_000_000),
            "circuit.nodes[3].feature.label: is 1,000,000 characters long; at most 1,000",
        ),
        (
            lambda c: setattr(c.metadata, "extra", {"log": "x" * 10_001}),
            "circuit.metadata.extra.log: is 10,001 characters long; at most 10,000",
        ),
    ],
)
def test_the_catalog_bounds_text(circuit: Circuit, tmp_path, mutate, message) -> None:  # type: ignore[no-untyped-def]
    from circuitlab.catalog import open_catalog

    circuit.interpretation.label = "x" * 1_000
    circuit.interpretation.description = "x" * 10_000
    longest = copy.deepcopy(circuit)
    mutate(circuit)
    with open_catalog(tmp_path / "cat.db") as cat:
        cat.put(synthetic.task())
        cat.put(synthetic.model())
        with pytest.raises(RecordError) as err:
            cat.put(circuit)
        assert str(err.value).startswith(message)
        assert cat.stats().counts["circuit"] == 0
        cat.put(longest)
    assert record_from_dict(circuit.to_dict()) == circuit  # stored long ago, it still loads
