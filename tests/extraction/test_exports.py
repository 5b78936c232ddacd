"""`circuitlab export`: each format is loaded by the library it is for and run."""

import json
import subprocess
import sys
import warnings

import pytest
import torch

from circuitlab.extraction.pipeline import ExtractConfig, extract
from circuitlab.extraction.transcoder import Transcoder, TranscoderConfig, replacement_hooks
from circuitlab.models.export import LOGIT_RTOL, load_hooked_transformer
from circuitlab.tasks import get_task
from circuitlab.training import load_run

CONFIG = ExtractConfig(transcoder=TranscoderConfig(n_features=32, steps=80, batch_size=128))


def circuitlab(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def extracted(small_run):
    run = small_run("add_mod_13", 150, "add13")
    extract(run, None, CONFIG)
    return run


def _all_inputs():
    data = get_task("add_mod_13").dataset()
    return torch.tensor(data.inputs), torch.tensor(data.targets[:, 0])


def test_transformer_lens_export_loads_and_agrees_within_the_stated_bound(extracted, tmp_path):
    pytest.importorskip("transformer_lens")
    result = circuitlab("export", extracted, "--to", "transformer-lens", "--out", tmp_path / "tl")
    assert result.returncode == 0, result.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hooked = load_hooked_transformer(tmp_path / "tl")
    _, model = load_run(extracted)
    tokens, _ = _all_inputs()
    with torch.no_grad():
        ours, theirs = model(tokens)[:, 0], hooked(tokens)[:, -1]
    bound = LOGIT_RTOL * float(ours.abs().max()) + 1e-6
    assert float((ours - theirs).abs().max()) <= bound
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_an_exported_model_imports_back_as_the_same_model(extracted, tmp_path):
    pytest.importorskip("transformer_lens")
    exported = circuitlab("export", extracted, "--to", "transformer-lens", "--out", tmp_path / "tl")
    assert exported.returncode == 0, exported.stderr
    back = circuitlab(
        "import", tmp_path / "tl", "--task", "add_mod_13", "--out", tmp_path / "r",
        "--min-accuracy", "0",  # the test's model is small and not fully grokked
    )  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert "transformer-lens layout" in " ".join(back.stdout.split())
    _, model = load_run(extracted)
    _, again = load_run(tmp_path / "r")
    for name, tensor in model.tl_state_dict().items():
        assert torch.equal(again.tl_state_dict()[name], tensor), name


def test_saelens_run_with_saes_reproduces_the_replacement_model(extracted, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    result = circuitlab("export", extracted, "--to", "sae-lens", "--out", tmp_path / "sl")
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "sl" / "model" / "config.json").read_text())
    assert config["use_hook_mlp_in"] is True
    sae_cfg = json.loads((tmp_path / "sl" / "transcoders" / "layer_0" / "cfg.json").read_text())
    assert sae_cfg["metadata"]["trained_positions"] == [2]
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hooked = sae_lens.HookedSAETransformer(HookedTransformerConfig(**config))
    hooked.load_state_dict(load_file(str(tmp_path / "sl" / "model" / "model.safetensors")))
    sae = sae_lens.SAE.load_from_disk(tmp_path / "sl" / "transcoders" / "layer_0")
    tokens, answers = _all_inputs()
    with torch.no_grad():
        spliced = hooked.run_with_saes(tokens, saes=[sae])[:, -1]
        plain = hooked(tokens)[:, -1]
        _, model = load_run(extracted)
        tc = Transcoder.load(extracted / "extraction" / "transcoder")
        with replacement_hooks(model, tc):
            replaced = model(tokens)[:, 0]
    # sae-lens splices the transcoder in where we do: the same replacement model
    torch.testing.assert_close(spliced, replaced, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(spliced, plain)  # and it did splice something in
    ours_acc = float((replaced.argmax(-1) == answers).float().mean())
    theirs_acc = float((spliced.argmax(-1) == answers).float().mean())
    assert theirs_acc == ours_acc


def test_saelens_export_of_a_layernorm_model_reads_what_the_mlp_reads(tmp_path):
    """With LayerNorm, TransformerLens's hook_mlp_in is the residual before ln2; the transcoder
    reads after it (`ln2.hook_normalized`), and run_with_saes must splice in there."""
    sae_lens = pytest.importorskip("sae_lens")
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig

    from circuitlab.training import RunSpec, get_recipe, train_stack

    run = tmp_path / "ln"
    model = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64, normalization="LN")
    recipe = get_recipe("fast").replace(train_fraction=0.6, max_steps=60, model=model)
    train_stack([RunSpec("add_mod_13", recipe, 0, run)], threads=1)
    extract(run, None, CONFIG)
    result = circuitlab("export", run, "--to", "sae-lens", "--out", tmp_path / "sl")
    assert result.returncode == 0, result.stderr
    sae_dir = tmp_path / "sl" / "transcoders" / "layer_0"
    hook = json.loads((sae_dir / "cfg.json").read_text())["metadata"]["hook_name"]
    assert hook == "blocks.0.ln2.hook_normalized"
    config = json.loads((tmp_path / "sl" / "model" / "config.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hooked = sae_lens.HookedSAETransformer(HookedTransformerConfig(**config))
    hooked.load_state_dict(load_file(str(tmp_path / "sl" / "model" / "model.safetensors")))
    tokens, _ = _all_inputs()
    with torch.no_grad():
        spliced = hooked.run_with_saes(tokens, saes=[sae_lens.SAE.load_from_disk(sae_dir)])
        _, ours = load_run(run)
        tc = Transcoder.load(run / "extraction" / "transcoder")
        with replacement_hooks(ours, tc):
            replaced = ours(tokens)[:, 0]
    torch.testing.assert_close(spliced[:, -1], replaced, atol=1e-4, rtol=1e-4)


def test_circuit_tracer_export_is_the_graph_directory(extracted, tmp_path):
    result = circuitlab("export", extracted, "--to", "circuit-tracer", "--out", tmp_path / "ct")
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "ct" / "graph-metadata.json").read_text())
    names = {p.name for p in (tmp_path / "ct").glob("*.json")} - {"graph-metadata.json"}
    assert names and {g["slug"] + ".json" for g in index["graphs"]} == names


def test_bad_exports_are_one_line_and_write_nothing(small_run, tmp_path):
    bare = small_run("add_mod_7", 20, "add7")  # never extracted
    cases = [
        (bare, "sae-lens", "circuitlab extract"),
        (bare, "circuit-tracer", "circuitlab extract"),
        (bare, "onnx", "--to must be one of"),
        (tmp_path / "nothing", "transformer-lens", "no run directory"),
    ]
    for run, to, words in cases:
        out = tmp_path / "out"
        result = circuitlab("export", run, "--to", to, "--out", out)
        assert result.returncode == 2, (to, result.stderr)
        assert words in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
        assert not out.exists() and not (tmp_path / "out.partial").exists()
