"""A circuit is one loadable artifact: circuit.json and the catalog hold the same record, and
`Circuit.load` rebuilds exactly the model that was measured, or says which file changed."""

import json
import shutil

import numpy as np
import pytest
import torch

from circuitlab.catalog import open_catalog, record_from_dict
from circuitlab.extraction.artifact import Circuit, CircuitLoadError
from circuitlab.extraction.pipeline import ExtractConfig, extract
from circuitlab.extraction.transcoder import TranscoderConfig
from circuitlab.training import RunSpec, get_recipe, train_stack

SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)
CONFIG = ExtractConfig(transcoder=TranscoderConfig(n_features=32, steps=80, batch_size=128))


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifact")
    run = root / "add11"
    recipe = get_recipe("fast").replace(train_fraction=0.6, max_steps=150, model=SMALL)
    train_stack([RunSpec("add_mod_11", recipe, 0, run)], threads=1)
    url = f"sqlite:///{root / 'cat.db'}"
    result = extract(run, url, CONFIG)
    return run, url, result


def _copy_run(run, tmp_path):
    dest = tmp_path / "copy"
    shutil.copytree(run, dest)
    return dest


def test_circuit_json_is_the_catalog_record(extracted):
    run, url, result = extracted
    on_disk = record_from_dict(json.loads((run / "extraction" / "circuit.json").read_text()))
    assert on_disk.id == result.circuit_id
    with open_catalog(url) as cat:
        stored = cat.get(result.circuit_id)
    assert stored.id == on_disk.id
    assert stored.metrics == on_disk.metrics and stored.artifact == on_disk.artifact
    assert len(stored.edges) == len(on_disk.edges)
    # the raw faithfulness numbers are in the record, beside the normalised ones
    summary = result.summary["circuit"]
    assert stored.metrics.accuracy == pytest.approx(summary["sufficiency_accuracy"])
    assert stored.metrics.extra["necessity_accuracy"] == pytest.approx(
        summary["necessity_accuracy"]
    )
    assert stored.metrics.extra["full_accuracy"] == pytest.approx(summary["full_accuracy"])


def test_loaded_circuit_runs_as_extraction_measured_it(extracted):
    run, url, result = extracted
    circuit = Circuit.load(run)
    with open_catalog(url) as cat:
        by_id = Circuit.load(result.circuit_id[:10], catalog=cat)
    assert by_id.id == circuit.id == result.circuit_id
    assert circuit.n_features == result.summary["circuit"]["n_features"]
    data = circuit.task.dataset()
    tokens = torch.from_numpy(data.inputs)
    targets = data.targets[:, 0]
    a, b = data.inputs[:, 0], data.inputs[:, 1]
    assert torch.equal(circuit.encode(a, b), tokens)
    summary = result.summary["circuit"]
    got = circuit.decode(circuit.logits(tokens))
    assert np.mean(got == targets) == pytest.approx(summary["sufficiency_accuracy"])
    full = circuit.decode(circuit.logits(tokens, mode="model"))
    assert np.mean(full == targets) == pytest.approx(summary["full_accuracy"])
    # feature activations outside the circuit are zero
    acts = circuit.feature_activations(tokens[:5])
    assert all((a[..., ~k] == 0).all() for a, k in zip(acts, circuit.keep, strict=True))


def test_changed_or_missing_files_are_named(extracted, tmp_path):
    run, url, result = extracted
    copy = _copy_run(run, tmp_path)
    ablation = copy / "extraction" / "ablation.safetensors"
    data = bytearray(ablation.read_bytes())
    data[-1] ^= 1
    ablation.write_bytes(bytes(data))
    with pytest.raises(CircuitLoadError, match="ablation.safetensors has changed.*sha256 was"):
        Circuit.load(copy)
    (copy / "extraction" / "transcoder" / "transcoder.safetensors").unlink()
    with pytest.raises(CircuitLoadError, match="transcoder.safetensors is missing"):
        Circuit.load(copy)
    with pytest.raises(CircuitLoadError, match="no circuit"):
        Circuit.load("0123456789ab", catalog=url)
    with pytest.raises(CircuitLoadError, match="no circuit.json"):
        Circuit.load(tmp_path)
