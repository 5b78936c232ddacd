import json
import subprocess
import sys

import pytest

from circuitlab.extraction.pipeline import ExtractConfig, extract
from circuitlab.extraction.transcoder import TranscoderConfig
from circuitlab.training import read_run

CONFIG = ExtractConfig(transcoder=TranscoderConfig(n_features=32, steps=80, batch_size=128))


def circuitlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def run_dir(small_run):
    return small_run("add_mod_13", 150, "add13")


def test_prune_extract_compare(run_dir, tmp_path):
    res = circuitlab("prune", run_dir, "--sparsity", "0.2,0", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    sweep = tmp_path / "add13-prune-magnitude"
    assert (sweep / "curve.png").is_file()
    curve = json.loads((sweep / "curve.json").read_text())["points"]
    assert [p["sparsity"] for p in curve] == [0.0, 0.2]
    child = sweep / "s0.2"
    assert read_run(child).config["parent"]["how"] == "prune"
    # extraction runs on the pruned model unchanged
    extract(run_dir, None, CONFIG)
    extract(child, None, CONFIG)
    res = circuitlab("compare", run_dir, child / "extraction", "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["related"] is True
    kf = report["key_frequencies"]
    assert set(kf["shared"]) | set(kf["lost"]) == set(kf["a"])
    overlap = report["feature_overlap"]
    assert overlap["available"] and overlap["shared_basis"]
    assert -1.0 <= overlap["mean_matched_cosine"] <= 1.0
    assert report["circuit_size"]["a"] > 0 and report["sufficiency"]["a"] is not None
    # a circuit compared with itself matches every feature exactly
    same = json.loads(circuitlab("compare", run_dir, run_dir, "--json").stdout)
    assert same["feature_overlap"]["mean_matched_cosine"] == pytest.approx(1.0)
    text = circuitlab("compare", run_dir, child)
    assert text.returncode == 0 and "key frequencies" in text.stdout


def test_compare_without_extraction_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    res = circuitlab("compare", tmp_path, tmp_path)
    assert res.returncode == 2 and "circuitlab extract" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_derived_models_are_cataloged_with_their_ancestors(run_dir, tmp_path):
    from circuitlab.catalog import open_catalog
    from circuitlab.training import PruneConfig, prune

    # gradual pruning chains its points: s0.5 derives from s0.3, which derives from the run
    sweep, _ = prune(run_dir, PruneConfig(sparsities=(0.3, 0.5), finetune=5), out=tmp_path)
    child = sweep / "s0.5"
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    result = extract(child, url, CONFIG)
    with open_catalog(url) as cat:
        model = cat.get(cat.get(result.circuit_id).model)
        middle = cat.get(model.parent)
        root = cat.get(middle.parent)
        assert (model.derivation, middle.derivation, root.parent) == ("prune", "prune", None)
        assert model.metadata.source_run == str(child)
        assert root.metadata.source_run == str(run_dir)
        assert model.pruning == pytest.approx(0.5, abs=0.01)
        assert middle.pruning == pytest.approx(0.3, abs=0.01)
    # a parent whose weights changed since is not linked: its recorded provenance is kept
    middle_weights = sweep / "s0.3" / "model.safetensors"
    middle_weights.write_bytes((run_dir / "model.safetensors").read_bytes())
    url2 = f"sqlite:///{tmp_path / 'cat2.db'}"
    again = extract(child, url2, CONFIG)
    with open_catalog(url2) as cat:
        model = cat.get(cat.get(again.circuit_id).model)
        assert model.parent is None and model.derivation is None
        assert model.metadata.extra["parent"]["run"] == str(sweep / "s0.3")
