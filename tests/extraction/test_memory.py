"""Memory budgets of extraction: the estimate, refusals, and clean CLI errors for bad runs."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuitlab._memory import MemoryBudgetError
from circuitlab.extraction.attribution import AttributionConfig, AttributionStream, attribute
from circuitlab.extraction.memory import check_attribution, estimate_extraction
from circuitlab.extraction.pipeline import ExtractConfig, extract
from circuitlab.extraction.transcoder import TranscoderConfig
from circuitlab.models import ModelConfig
from circuitlab.tasks import get_task
from circuitlab.training import load_run

CONFIG = ExtractConfig(transcoder=TranscoderConfig(n_features=32, steps=40, batch_size=64))
GIB = 1024**3


@pytest.fixture(scope="module")
def run_dir(small_run):
    return small_run("add_mod_7", 20, "add7")


@pytest.fixture
def run_copy(run_dir, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """`circuitlab ARGS` in this process: (exit code, stderr)."""
    from circuitlab.cli import main

    monkeypatch.setattr(sys, "argv", ["circuitlab", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code, capsys.readouterr().err


def assert_clean_refusal(code: int, err: str, run, *words: str) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err
    assert not (run / "extraction").exists() and not (run / "extraction.partial").exists()


def test_estimate_grows_with_what_lowers_it():
    task, big = get_task("add_mod_113"), get_task("add_mod_257")
    cfg = ModelConfig.for_task(task)
    base = estimate_extraction(cfg, task, ExtractConfig())
    assert 0.3 * GIB < base.peak < 2 * GIB
    more = ExtractConfig(transcoder=TranscoderConfig(n_features=4096))
    assert estimate_extraction(cfg, task, more).phases["circuit"] > 2 * base.phases["circuit"]
    chunk = ExtractConfig(attribution=AttributionConfig(qk=False, batch_size=20_000))
    assert estimate_extraction(cfg, task, chunk).phases["attribution"] > base.phases["attribution"]
    larger = estimate_extraction(ModelConfig.for_task(big), big, ExtractConfig())
    assert larger.phases["circuit"] > base.phases["circuit"]
    huge = ExtractConfig(transcoder=TranscoderConfig(n_features=100_000_000))
    assert estimate_extraction(cfg, task, huge).peak > 100 * GIB


def test_extract_refuses_before_any_work(run_copy, monkeypatch):
    monkeypatch.setenv("CIRCUITLAB_MEMORY_LIMIT", "64M")
    with pytest.raises(MemoryBudgetError, match="needs about .* 64 MiB is available; lower --"):
        extract(run_copy, None, CONFIG, write_catalog=False)
    assert not (run_copy / "extraction").exists()


def test_attribution_is_checked_again_with_the_real_layout(run_dir, monkeypatch):
    from circuitlab.extraction.activations import task_tokens

    info, model = load_run(run_dir)
    tokens, _ = task_tokens(get_task(info.task))
    from circuitlab.extraction.transcoder import Transcoder

    tc = Transcoder(TranscoderConfig(n_features=32), model.cfg.n_layers, model.cfg.d_model)
    stream = AttributionStream(model, tc, tokens, AttributionConfig(qk=False, batch_size=3))
    assert stream.chunk_bytes() >= 3 * stream.prompt_bytes() > 0
    check_attribution(stream, model.cfg, CONFIG)  # fits
    monkeypatch.setenv("CIRCUITLAB_MEMORY_LIMIT", "1K")
    with pytest.raises(MemoryBudgetError, match=r"--batch-size \(prompts .* now 3\)"):
        check_attribution(stream, model.cfg, CONFIG)
    with pytest.raises(MemoryBudgetError, match="AttributionStream"):
        attribute(model, tc, tokens, AttributionConfig(qk=False))


def test_extract_with_chunks_of_one_prompt_gives_the_same_circuit(run_dir, tmp_path):
    runs = []
    for name, batch in (("whole", None), ("ones", 1)):
        run = tmp_path / name
        shutil.copytree(run_dir, run)
        config = replace(CONFIG, attribution=AttributionConfig(qk=False, batch_size=batch))
        runs.append(extract(run, None, config, write_catalog=False).summary)
    whole, ones = runs
    assert ones["circuit"] == whole["circuit"]
    assert ones["graph"] == pytest.approx(whole["graph"], rel=1e-6)
    assert [e["feature"] for e in ones["examples"]] == [e["feature"] for e in whole["examples"]]


def test_cli_refuses_nan_weights(run_copy, monkeypatch, capsys):
    state = load_file(run_copy / "model.safetensors")
    name = next(iter(state))
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, run_copy / "model.safetensors")
    code, err = cli(monkeypatch, capsys, "extract", run_copy, "--no-catalog")
    assert_clean_refusal(code, err, run_copy, "NaN")


def test_cli_refuses_integer_weights(run_copy, monkeypatch, capsys):
    state = load_file(run_copy / "model.safetensors")
    save_file({k: v.to(torch.int64) for k, v in state.items()}, run_copy / "model.safetensors")
    code, err = cli(monkeypatch, capsys, "extract", run_copy, "--no-catalog")
    assert_clean_refusal(code, err, run_copy, "dtype")


def test_cli_refuses_what_memory_cannot_hold(run_copy, monkeypatch, capsys):
    code, err = cli(monkeypatch, capsys, "extract", run_copy, "--no-catalog", "--features", 10**8)
    assert_clean_refusal(code, err, run_copy, "needs about", "--features", "now 100000000")
    monkeypatch.setenv("CIRCUITLAB_MEMORY_LIMIT", "64M")
    code, err = cli(monkeypatch, capsys, "extract", run_copy, "--no-catalog")
    assert_clean_refusal(code, err, run_copy, "64 MiB is available")
    monkeypatch.delenv("CIRCUITLAB_MEMORY_LIMIT")
    code, err = cli(monkeypatch, capsys, "extract", run_copy, "--no-catalog", "--batch-size", -1)
    assert_clean_refusal(code, err, run_copy, "--batch-size")
