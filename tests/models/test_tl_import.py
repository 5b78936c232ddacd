"""Importing TransformerLens and Nanda-layout checkpoints: the conversion is checked against
layouts built here by hand (transposes written out in the test), and against real
`HookedTransformer`s built by TransformerLens itself."""

import json
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import save_file

from circuitlab.models import ModelConfig, Transformer
from circuitlab.models.tl_import import ImportFormatError, convert, read_weights
from circuitlab.training import load_run, read_run
from circuitlab.training.imported import ImportModelError, import_model


def circuitlab(*args: str) -> subprocess.CompletedProcess:
    """The real command line (its one-line errors and exit codes come from `main`)."""
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _random_model(seed: int = 3, **overrides) -> Transformer:
    base = dict(
        d_vocab=14,
        d_vocab_out=13,
        n_ctx=3,
        answer_positions=(2,),
        d_model=32,
        n_heads=4,
        d_head=8,
        d_mlp=64,
    )
    model = Transformer(ModelConfig(**(base | overrides)), seed=seed)
    with torch.no_grad():  # non-zero biases and gains, so their mapping is checked too
        for name, p in model.tl_state_dict().items():
            if name.rsplit(".", 1)[1] in ("b", "w") or ".b_" in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    return model


def _nanda_state(model: Transformer) -> dict[str, torch.Tensor]:
    """The model in Nanda et al.'s layout, written out here: W_E (d_model, d_vocab), W_Q/K/V
    (heads, d_head, d_model), W_O (d_model, heads * d_head), W_in (d_mlp, d_model), W_out
    (d_model, d_mlp), no attention or unembedding biases, a causal-mask buffer."""
    cfg, sd = model.cfg, model.tl_state_dict()
    out = {
        "embed.W_E": sd["embed.W_E"].T.clone(),
        "pos_embed.W_pos": sd["pos_embed.W_pos"].clone(),
        "unembed.W_U": sd["unembed.W_U"].clone(),
    }
    for layer in range(cfg.n_layers):
        att, mlp = f"blocks.{layer}.attn", f"blocks.{layer}.mlp"
        for x in "QKV":
            out[f"{att}.W_{x}"] = sd[f"{att}.W_{x}"].permute(0, 2, 1).clone()
        w_o = sd[f"{att}.W_O"]  # (h, e, d) -> (d, h*e), head-major as Nanda's rearrange
        out[f"{att}.W_O"] = w_o.reshape(cfg.n_heads * cfg.d_head, cfg.d_model).T.clone()
        out[f"{att}.mask"] = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx))
        out[f"{mlp}.W_in"] = sd[f"{mlp}.W_in"].T.clone()
        out[f"{mlp}.b_in"] = sd[f"{mlp}.b_in"].clone()
        out[f"{mlp}.W_out"] = sd[f"{mlp}.W_out"].T.clone()
        out[f"{mlp}.b_out"] = sd[f"{mlp}.b_out"].clone()
    return out


def _without_absent_biases(model: Transformer) -> Transformer:
    """The same model with the biases Nanda's layout lacks set to zero."""
    with torch.no_grad():
        for name, p in model.tl_state_dict().items():
            if name.rsplit(".", 1)[1] in ("b_Q", "b_K", "b_V", "b_O", "b_U"):
                p.zero_()
    return model


def test_nanda_layout_converts_to_the_same_function():
    model = _without_absent_biases(_random_model())
    converted = convert(_nanda_state(model))
    assert converted.layout == "nanda"
    assert converted.cfg.d_vocab == 14 and converted.cfg.d_head == 8 and converted.cfg.d_mlp == 64
    assert any("b_Q" in note for note in converted.notes)  # filled-in biases are said
    twin = Transformer(converted.cfg)
    twin.load_tl_state_dict(converted.params)
    tokens = torch.randint(0, 14, (32, 3), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(twin(tokens), model(tokens), atol=0, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(normalization="LN", n_layers=2, act_fn="gelu"),
        dict(d_mlp=0, n_layers=2),
        dict(causal=False, n_layers=2),
    ],
)
def test_hooked_transformer_round_trip(overrides):
    pytest.importorskip("transformer_lens")
    from circuitlab.models.export import to_hooked_transformer
    from circuitlab.models.tl_import import from_hooked_transformer

    model = _random_model(**overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        hooked = to_hooked_transformer(model)
    tokens = torch.randint(0, 14, (16, 3), generator=torch.Generator().manual_seed(0))
    # TransformerLens itself computes the same logits, bidirectional attention included
    torch.testing.assert_close(hooked(tokens), model(tokens, answers_only=False), atol=1e-5, rtol=0)
    converted = from_hooked_transformer(hooked)
    assert converted.layout == "transformer-lens" and converted.cfg.causal == model.cfg.causal
    assert converted.cfg.act_fn == model.cfg.act_fn
    for name, tensor in model.tl_state_dict().items():
        assert torch.equal(converted.params[name], tensor), name


def test_bidirectional_attention_sees_later_tokens():
    causal = _random_model(n_layers=2)
    bidir = Transformer(ModelConfig(**(causal.cfg.to_dict() | {"causal": False})))
    bidir.load_tl_state_dict(causal.tl_state_dict())
    tokens = torch.tensor([[1, 2, 13], [1, 2, 12]])
    # position 0's residual depends on position 2 only without the causal mask
    _, c_cache = causal.run_with_cache(tokens, answers_only=False)
    _, b_cache = bidir.run_with_cache(tokens, answers_only=False)
    c0, b0 = c_cache["blocks.0.hook_resid_post"][:, 0], b_cache["blocks.0.hook_resid_post"][:, 0]
    assert torch.equal(c0[0], c0[1]) and not torch.allclose(b0[0], b0[1])


def test_import_writes_a_run_that_later_stages_read(small_run, tmp_path):
    run = small_run("add_mod_13", 150, "add13")
    _, model = load_run(run)
    nanda = _nanda_state(_without_absent_biases(model))
    # Nanda's models answer over every token, '=' included: one output column more
    nanda["unembed.W_U"] = torch.cat([nanda["unembed.W_U"], torch.zeros(32, 1)], dim=1)
    ckpt = tmp_path / "grokked.pt"
    torch.save({"model": nanda, "epoch": 150}, ckpt)
    out = tmp_path / "imported"
    result = circuitlab("import", ckpt, "--task", "add_mod_13", "--out", out, "--min-accuracy", "0")
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())  # rich wraps lines at the terminal width
    assert "(nanda layout)" in said and "output columns 13..13 dropped" in said
    info = read_run(out)
    assert info.config["imported"]["layout"] == "nanda"
    assert info.config["imported"]["sha256"] and info.recipe.train_fraction == 1.0
    _, twin = load_run(out)
    tokens = torch.tensor([[a, b, 13] for a in range(13) for b in range(13)])
    torch.testing.assert_close(twin(tokens), _without_absent_biases(model)(tokens)[..., :13])
    assert info.summary["acc_all"] == pytest.approx(
        float((twin(tokens)[:, 0].argmax(-1) == (tokens[:, 0] + tokens[:, 1]) % 13).float().mean())
    )
    # extraction takes the imported run as it takes a trained one
    from circuitlab.extraction.pipeline import ExtractConfig, extract
    from circuitlab.extraction.transcoder import TranscoderConfig

    small = ExtractConfig(transcoder=TranscoderConfig(n_features=32, steps=80, batch_size=128))
    extracted = extract(out, None, small)
    assert (extracted.out_dir / "summary.json").is_file() and "sufficiency" in str(
        extracted.summary
    )


def test_import_refuses_low_accuracy_unless_forced(tmp_path):
    model = _random_model(d_vocab=14, d_vocab_out=13)  # untrained: near chance
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.tl_state_dict().items()}, str(path))
    out = tmp_path / "run"
    with pytest.raises(ImportModelError, match="below 99%.*--force"):
        import_model(path, "add_mod_13", out)
    assert not out.exists() and not list(tmp_path.glob("run*"))
    result = import_model(path, "add_mod_13", out, force=True)
    assert result.layout == "transformer-lens" and result.acc_all < 0.5 and out.is_dir()


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd.pop("blocks.0.mlp.W_out"), "missing tensor blocks.0.mlp.W_out"),
        (lambda sd: sd.update(extra=torch.zeros(2)), r"unexpected tensors \['extra'\]"),
        (
            lambda sd: sd.update({"blocks.0.mlp.b_in": torch.zeros(5)}),
            r"blocks.0.mlp.b_in has shape \(5,\)",
        ),
    ],
)
def test_bad_state_dicts_are_named(mutate, message):
    sd = dict(_random_model().tl_state_dict())
    mutate(sd)
    with pytest.raises(ImportFormatError, match=message):
        convert(sd)


def test_pickles_that_run_code_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": Payload()}, fh, protocol=2)
    with pytest.raises(ImportFormatError, match="code execution"):
        read_weights(path)
    assert "code ran" not in capsys.readouterr().out
    result = circuitlab("import", path, "--task", "add_mod_13", "--out", tmp_path / "o")
    assert result.returncode == 2 and "code execution" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and "code ran" not in result.stdout
    assert not (tmp_path / "o").exists()


def test_cli_bad_inputs_are_one_line(tmp_path):
    model = _random_model(d_vocab=8, d_vocab_out=7)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in model.tl_state_dict().items()}, str(path))
    cases = [
        (["--task", "add_mod_13"], "reads 8 tokens but add_mod_13 uses 14"),
        (["--task", "nope_99"], "task"),
        (["--task", "add_mod_7", "--config", str(tmp_path / "none.json")], "readable JSON config"),
    ]
    (tmp_path / "cfg.json").write_text(json.dumps({"act_fn": "solu"}))
    cases.append((["--task", "add_mod_7", "--config", str(tmp_path / "cfg.json")], "solu"))
    for args, words in cases:
        out = tmp_path / "o"
        result = circuitlab("import", path, *args, "--out", out)
        assert result.returncode == 2, (args, result.stderr)
        assert words in " ".join(result.stderr.split()) and "Traceback" not in result.stderr
        assert not out.exists()
