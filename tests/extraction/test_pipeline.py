import json
import os
import subprocess
import sys

import pytest

from circuitlab.catalog import open_catalog
from circuitlab.extraction.pipeline import ExtractConfig, ExtractionError, extract
from circuitlab.extraction.transcoder import TranscoderConfig
from circuitlab.training import RunSpec, get_recipe, train_stack

SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)
CONFIG = ExtractConfig(transcoder=TranscoderConfig(n_features=32, steps=80, batch_size=128))


@pytest.fixture(scope="module")
def run_dir(small_run):
    return small_run("add_mod_13", 150, "add13")


def test_extract_writes_artifacts_and_catalog(run_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    result = extract(run_dir, url, CONFIG)
    out = run_dir / "extraction"
    assert result.out_dir == out
    for name in (
        "summary.json",
        "circuit.json",
        "sufficiency.png",
        "transcoder/transcoder.safetensors",
    ):
        assert (out / name).is_file(), name
    graphs = sorted((out / "graphs").glob("*.json"))
    assert graphs and json.loads(graphs[0].read_text())["metadata"]["schema_version"] == 1
    summary = json.loads((out / "summary.json").read_text())
    circuit = summary["circuit"]
    assert circuit["n_inputs"] == 169 and 0 < circuit["n_features"] <= circuit["n_features_total"]
    assert summary["circuit_id"] == result.circuit_id
    with open_catalog(url) as cat:
        record = cat.get(result.circuit_id)
        assert record.task == "add_mod_13"
        assert record.metrics.n_examples == 169
        assert record.metrics.accuracy == pytest.approx(circuit["sufficiency_accuracy"])
        # one meaning of necessity: the catalog's is the drop summary.json names as such
        drop = 1 - circuit["necessity_accuracy"] / circuit["full_accuracy"]
        assert circuit["necessity_drop"] == pytest.approx(drop)
        assert record.metrics.necessity == pytest.approx(drop)
        assert record.metrics.extra["necessity_accuracy"] == circuit["necessity_accuracy"]
        assert [port.domain for port in record.interface.inputs] == ["Z_13", "Z_13"]
        assert record.interface.output.domain == "Z_13"
        assert record.examples and all(len(e.tokens) == 3 for e in record.examples)
        kinds = {n.feature.node_type for n in record.nodes}
        assert kinds == {"feature", "token", "logit"}
        assert sum(n.feature.node_type == "feature" for n in record.nodes) == circuit["n_features"]
        model = cat.get(record.model)
        assert model.task == "add_mod_13" and model.metadata.source_run == str(run_dir)
    # extracting again replaces the artifacts and keeps a single circuit for the same content
    again = extract(run_dir, url, CONFIG)
    assert again.circuit_id == result.circuit_id
    assert not (run_dir / "extraction.partial").exists()


def test_bad_inputs_fail_cleanly(run_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        (broken / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(ExtractionError, match="model.safetensors"):
        extract(broken, None, CONFIG, write_catalog=False)
    (broken / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes()[:64])
    with pytest.raises(ExtractionError, match="checkpoint"):
        extract(broken, None, CONFIG, write_catalog=False)
    assert not (broken / "extraction").exists()
    with pytest.raises(ExtractionError, match="catalog"):
        extract(run_dir, "neo4j://127.0.0.1:9", CONFIG)


def test_cli_errors_are_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "circuitlab", "extract", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "no run directory" in res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "circuitlab", "extract", str(tmp_path), "--ablation", "gauss"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "--ablation" in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "circuitlab", "extract", str(tmp_path), "--precision", "fp16"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "precision" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_verified_signature_becomes_a_function_and_implements_edge(run_dir, tmp_path, monkeypatch):
    # The small fixture model has not grokked, so its interface has no signature; give it one
    # to check the plumbing from a verified signature to (Circuit)-[:IMPLEMENTS]->(Function).
    import dataclasses

    from circuitlab.extraction import interface as itf

    real = itf.infer_interface

    def with_signature(model, task, **kwargs):
        found = real(model, task, **kwargs)
        match = itf.SignatureMatch(
            "ADDMOD",
            "ADDMOD(a, b, p=13)",
            "ADDMOD(a: Z_13, b: Z_13, p=13) -> Z_13",
            "(a+b) mod 13",
            0.75,
            169,
            True,
        )
        return dataclasses.replace(found, signature=match)

    monkeypatch.setattr(itf, "infer_interface", with_signature)
    url = f"sqlite:///{tmp_path / 'cat.db'}"
    result = extract(run_dir, url, CONFIG)
    with open_catalog(url) as cat:
        counts = cat.stats().counts
        assert counts["function"] == 1 and counts["IMPLEMENTS"] == 1
        (fid,) = cat.ids("function")
        function = cat.get(fid)
        assert function.name == "ADDMOD_13" and function.input_domains == ["Z_13", "Z_13"]
        (iid,) = cat.ids("implements")
        edge = cat.get(iid)
        assert edge.circuit == result.circuit_id and edge.function == fid and edge.agreement == 0.75
        assert cat.get(result.circuit_id).artifact.function == "ADDMOD_13"
    # IMPLEMENTS points at the registry's own function, callable through the registry
    from circuitlab.registry import Registry

    registry = Registry.open(url)
    assert registry.call("ADDMOD_13", [7, 12], [9, 5]).tolist() == [3, 4]
    # extracting again reuses that function instead of adding a copy
    extract(run_dir, url, CONFIG)
    with open_catalog(url) as cat:
        assert cat.stats().counts["function"] == 1


@pytest.mark.parametrize("normalization", [None, "LN"])
def test_two_layer_models_extract(tmp_path, normalization):
    model = dict(SMALL, n_layers=2, normalization=normalization)
    recipe = get_recipe("fast").replace(train_fraction=0.6, max_steps=60, model=model)
    run = tmp_path / "run"
    train_stack([RunSpec("sub_mod_11", recipe, 1, run)], threads=1)
    result = extract(run, None, CONFIG, write_catalog=False)
    summary = result.summary
    assert (
        summary["transcoder"]["nmse_per_layer"]
        and len(summary["transcoder"]["nmse_per_layer"]) == 2
    )
    circuit = json.loads((result.out_dir / "circuit.json").read_text())
    layers = {
        n["feature"]["layer"] for n in circuit["nodes"] if n["feature"]["node_type"] == "feature"
    }
    assert layers and layers <= {0, 1}
    assert summary["circuit"]["n_features_total"] == 2 * CONFIG.transcoder.n_features
    assert 0.0 <= summary["graph"]["replacement_score"] <= 1.0
    # the circuit read on heads and MLPs: every one of both layers, shares of one whole
    nodes = summary["components"]["nodes"]
    assert set(nodes) == {f"L{l}H{h}" for l in (0, 1) for h in range(SMALL["n_heads"])} | {
        "MLP0",
        "MLP1",
    }
    assert sum(nodes.values()) == pytest.approx(1.0, abs=1e-3)
    assert summary["components"]["edges"][0]["share"] > 0


def test_brackets_and_slashes_in_names_are_data(tmp_path):
    # a task spec with `/` names graph files (escaped like run directories) and a run path with
    # `[/x]` is printed as text, not read as rich markup
    run = tmp_path / "mk[/x]" / "run"
    recipe = get_recipe("fast").replace(max_steps=20, model=SMALL)
    train_stack([RunSpec("synth_mod_5[a/b+c]", recipe, 0, run)], threads=1)
    res = subprocess.run(
        [sys.executable, "-m", "circuitlab", "extract", str(run), "--no-catalog"]
        + ["--features", "16", "--steps", "40"],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ | {"COLUMNS": "400"},
    )
    assert res.returncode == 0, res.stderr
    assert "mk[/x]" in res.stdout
    folder = run / "extraction" / "graphs"
    graphs = sorted(p for p in folder.iterdir() if p.name != "graph-metadata.json")
    assert graphs and all(g.name.startswith("synth_mod_5[a%2Fb+c]-") for g in graphs)
    # the frontend fetches `{slug}.json`: the slug is the file's (escaped) name
    assert json.loads(graphs[0].read_text())["metadata"]["slug"] == graphs[0].stem
    # a family with no mechanistic analysis says so and claims no mechanism
    interpretation = json.loads((run / "extraction" / "summary.json").read_text())["interpretation"]
    assert interpretation["method"] == "none"
    assert "no mechanistic analysis" in interpretation["label"]


def test_graph_folder_opens_in_circuit_tracers_frontend(run_dir, tmp_path):
    # circuit-tracer's frontend lists graph-metadata.json's "graphs", fetches `{slug}.json`
    # and validates it with these pydantic models (circuit_tracer/frontend/graph_models.py,
    # fields as in circuit-tracer 0.5; the package itself cannot be installed beside ours)
    from pydantic import BaseModel

    class Metadata(BaseModel):
        slug: str
        scan: str
        transcoder_list: list[str]
        prompt_tokens: list[str]
        prompt: str
        node_threshold: float | None = None
        schema_version: int | None = 1

    class QParams(BaseModel):
        pinnedIds: list[str]
        supernodes: list[list[str]]
        linkType: str
        clickedId: str
        sg_pos: str

    class Node(BaseModel):
        node_id: str
        feature: int
        layer: str
        ctx_idx: int
        feature_type: str
        token_prob: float = 0.0
        is_target_logit: bool = False
        run_idx: int = 0
        reverse_ctx_idx: int = 0
        jsNodeId: str
        clerp: str = ""
        influence: float | None = None
        activation: float | None = None

    class Link(BaseModel):
        source: str
        target: str
        weight: float

    class Model(BaseModel):
        metadata: Metadata
        qParams: QParams
        nodes: list[Node]
        links: list[Link]

    extract(run_dir, None, CONFIG, write_catalog=False)
    folder = run_dir / "extraction" / "graphs"
    index = json.loads((folder / "graph-metadata.json").read_text())
    listed = [Metadata(**m).slug for m in index["graphs"]]
    files = sorted(p.stem for p in folder.glob("*.json") if p.name != "graph-metadata.json")
    assert sorted(listed) == files and files
    for slug in listed:
        graph = Model(**json.loads((folder / f"{slug}.json").read_text()))
        assert graph.metadata.slug == slug
        ids = {n.node_id for n in graph.nodes}
        assert all(link.source in ids and link.target in ids for link in graph.links)
        features = [n for n in graph.nodes if n.feature_type == "cross layer transcoder"]
        assert features and all(n.clerp for n in features)  # every feature is labelled
