"""Transcoders: structure, JumpReLU semantics, training, replacement model, persistence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from circuitlab.extraction.activations import mlp_activations
from circuitlab.extraction.transcoder import (
    WEIGHTS_FILE,
    Transcoder,
    TranscoderConfig,
    TranscoderError,
    evaluate,
    jumprelu,
    replacement_hooks,
    train_transcoder,
)
from circuitlab.models import ModelConfig, Transformer


def tiny_model(n_layers: int = 2, normalization: str | None = "LN", seed: int = 0) -> Transformer:
    cfg = ModelConfig(
        d_vocab=12,
        d_vocab_out=11,
        n_ctx=3,
        n_layers=n_layers,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_mlp=24,
        normalization=normalization,
    )
    return Transformer(cfg, seed=seed).eval()


def all_inputs(p: int = 11) -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)


def mlp_copy(model: Transformer, kind: str = "per_layer") -> Transcoder:
    """A ReLU transcoder whose features are the MLP neurons: an exact replacement."""
    cfg = model.cfg
    tc = Transcoder(
        TranscoderConfig(kind=kind, n_features=cfg.d_mlp, activation="relu"),
        cfg.n_layers,
        cfg.d_model,
    )
    with torch.no_grad():
        for layer in range(cfg.n_layers):
            tc.W_enc[layer].copy_(model.param(f"blocks.{layer}.mlp.W_in"))
            tc.b_enc[layer].copy_(model.param(f"blocks.{layer}.mlp.b_in"))
            tc.b_dec[layer].copy_(model.param(f"blocks.{layer}.mlp.b_out"))
            tc.W_dec[layer].zero_()
            tc.W_dec[layer][0].copy_(model.param(f"blocks.{layer}.mlp.W_out"))
    return tc.eval()


FAST = TranscoderConfig(n_features=32, steps=150, batch_size=64, lr=3e-3, resample_every=50)


def test_config_rejects_out_of_range_values_by_name():
    with pytest.raises(TranscoderError, match="n_features"):
        TranscoderConfig(n_features=0)
    with pytest.raises(TranscoderError, match="activation"):
        TranscoderConfig(activation="gelu")
    with pytest.raises(TranscoderError, match="top_k"):
        TranscoderConfig(n_features=8, activation="topk", top_k=9)
    with pytest.raises(TranscoderError, match="unknown"):
        TranscoderConfig().replace(lambda_=1.0)
    cfg = TranscoderConfig(kind="per_layer", activation="topk", top_k=4)
    assert TranscoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_jumprelu_keeps_values_strictly_above_threshold_and_learns_threshold():
    pre = torch.tensor([[-1.0, 0.025, 0.03, 0.031, 0.5]])
    threshold = torch.full((5,), 0.03, requires_grad=True)
    out = jumprelu(pre, threshold, 0.02)
    assert out.tolist() == [[0.0, 0.0, 0.0, pytest.approx(0.031), 0.5]]
    out.sum().backward()
    # straight-through: -(theta / eps) inside the window |pre - theta| < eps / 2, 0 outside
    assert threshold.grad.tolist() == pytest.approx([0.0, -1.5, -1.5, -1.5, 0.0])
    pre2 = pre.clone().requires_grad_(True)
    jumprelu(pre2, threshold.detach(), 0.02).sum().backward()
    assert pre2.grad.tolist() == [[0.0, 0.0, 0.0, 1.0, 1.0]]


def test_topk_keeps_k_largest_positive():
    tc = Transcoder(TranscoderConfig(n_features=6, activation="topk", top_k=2), 1, 4)
    pre = torch.tensor([[0.5, -1.0, 2.0, 1.0, 0.1, 0.0], [-3.0, -2.0, -1.0, -0.5, 0.2, -4.0]])
    assert tc.activate(0, pre).tolist() == [
        [0.0, 0.0, 2.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, pytest.approx(0.2), 0.0],
    ]


def test_cross_layer_decoders_only_point_forward():
    cross = Transcoder(TranscoderConfig(kind="cross_layer", n_features=5), 3, 4)
    per = Transcoder(TranscoderConfig(kind="per_layer", n_features=5), 3, 4)
    assert [cross.n_targets(l) for l in range(3)] == [3, 2, 1]
    assert cross.decoder(0, 2).shape == (5, 4)
    with pytest.raises(ValueError, match="no decoder 2->1"):
        cross.decoder(2, 1)
    with pytest.raises(ValueError, match="target == source"):
        per.decoder(0, 1)
    acts = [torch.rand(7, 5) for _ in range(3)]
    base = cross.decode(acts)
    # changing layer 2's features leaves layers 0 and 1 untouched; layer 0's reach every layer
    bumped = cross.decode([acts[0], acts[1], acts[2] + 1])
    assert torch.equal(bumped[0], base[0]) and torch.equal(bumped[1], base[1])
    assert not torch.allclose(bumped[2], base[2])
    moved = cross.decode([acts[0] + 1, acts[1], acts[2]])
    assert all(not torch.allclose(m, b) for m, b in zip(moved, base, strict=True))
    moved_per = per.decode([acts[0] + 1, acts[1], acts[2]])
    base_per = per.decode(acts)
    assert torch.equal(moved_per[1], base_per[1]) and torch.equal(moved_per[2], base_per[2])
    # a feature's decoder norm covers all of its decoders
    expected = torch.cat([cross.decoder(0, t) for t in range(3)], dim=1).norm(dim=1)
    assert torch.allclose(cross.decoder_norms()[0], expected)


@pytest.mark.parametrize("normalization", [None, "LN"])
@pytest.mark.parametrize("kind", ["per_layer", "cross_layer"])
def test_replacement_model_with_exact_transcoder_equals_real_model(normalization, kind):
    model = tiny_model(2, normalization)
    tokens = all_inputs()
    tc = mlp_copy(model, kind)
    with torch.no_grad():
        real = model(tokens)
        with replacement_hooks(model, tc):
            repl = model(tokens)
    assert torch.allclose(real, repl, atol=1e-5)
    metrics = evaluate(tc, model, tokens, real.argmax(-1))
    assert metrics.top1_agreement == 1.0 and metrics.nmse < 1e-10 and metrics.kl < 1e-8
    assert metrics.replacement_accuracy == metrics.model_accuracy == 1.0


def test_replacement_model_uses_cross_layer_decoders():
    model = tiny_model(2, None)
    tokens = all_inputs()
    tc = mlp_copy(model, "cross_layer")
    with torch.no_grad():
        tc.W_dec[0][1].normal_()  # layer 0 now also writes to layer 1's MLP output
        captured = {}

        def grab(x, name):
            captured[name] = x

        with replacement_hooks(model, tc), model.hooks([("blocks.1.hook_mlp_out", grab)]):
            model(tokens)
        # hooks run in the order added: `grab` sees the replacement's output (answers only)
        names = lambda n: n.endswith("hook_mlp_in")  # noqa: E731
        with replacement_hooks(model, tc):
            _, rcache = model.run_with_cache(tokens, names=names)  # all positions
        a0 = tc.encode(0, rcache["blocks.0.hook_mlp_in"][:, 2])
        a1 = tc.encode(1, rcache["blocks.1.hook_mlp_in"][:, 2])
        expected = tc.b_dec[1] + a1 @ tc.decoder(1, 1) + a0 @ tc.decoder(0, 1)
    assert captured["blocks.1.hook_mlp_out"].shape == (121, 1, 16)
    assert torch.allclose(captured["blocks.1.hook_mlp_out"][:, 0], expected, atol=1e-5)


@pytest.mark.parametrize("activation", ["jumprelu", "topk", "relu"])
def test_training_reduces_reconstruction_error(activation):
    model = tiny_model(2, "LN")
    tokens = all_inputs()
    acts = mlp_activations(model, tokens)
    cfg = FAST.replace(activation=activation, top_k=6, kind="cross_layer")
    before, _ = train_transcoder(acts, cfg.replace(steps=1, lr=1e-6))
    after, log = train_transcoder(acts, cfg)
    m0 = evaluate(before, model, tokens, acts=acts)
    m1 = evaluate(after, model, tokens, acts=acts)
    assert m1.nmse < 0.5 * m0.nmse
    assert all(a < b for a, b in zip(m1.nmse_per_layer, m0.nmse_per_layer, strict=True))
    assert log.mse[-1] < log.mse[0]
    if activation == "topk":
        assert all(l0 <= 6 for l0 in m1.l0_per_layer)
    assert 0.0 <= m1.dead_fraction <= 1.0 and 0.0 <= m1.top1_agreement <= 1.0


def test_training_is_deterministic_by_seed_and_reports_progress():
    model = tiny_model(1, None)
    acts = mlp_activations(model, all_inputs())
    seen = []
    cfg = FAST.replace(steps=60)
    a, _ = train_transcoder(acts, cfg, callback=lambda step, stats: seen.append(step), log_every=20)
    b, _ = train_transcoder(acts, cfg)
    c, _ = train_transcoder(acts, cfg.replace(seed=1))
    ta, tb, tc_ = a.tensors(), b.tensors(), c.tensors()
    assert all(torch.equal(ta[n], tb[n]) for n in ta)
    assert not torch.equal(ta["W_enc.0"], tc_["W_enc.0"])
    assert seen == [0, 20, 40, 59]


def test_sparsity_penalty_lowers_l0():
    model = tiny_model(1, None)
    tokens = all_inputs()
    acts = mlp_activations(model, tokens)
    cfg = FAST.replace(activation="relu", steps=200, resample_every=0)
    dense, _ = train_transcoder(acts, cfg.replace(sparsity_coeff=0.0))
    sparse, _ = train_transcoder(acts, cfg.replace(sparsity_coeff=0.3))
    l0_dense = evaluate(dense, model, tokens, acts=acts).l0
    l0_sparse = evaluate(sparse, model, tokens, acts=acts).l0
    assert l0_sparse < 0.7 * l0_dense


def test_dead_features_are_resampled():
    model = tiny_model(1, None)
    acts = mlp_activations(model, all_inputs())
    cfg = FAST.replace(steps=60, resample_every=20, dead_window=10, resample_until=1.0)
    # a threshold far above every pre-activation (~N(0, 1)) leaves all features dead
    _, log = train_transcoder(acts, cfg.replace(threshold_init=50.0))
    assert log.resampled >= 2 * FAST.n_features
    _, log = train_transcoder(acts, cfg.replace(resample_every=0, threshold_init=50.0))
    assert log.resampled == 0


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_model(2, "LN")
    acts = mlp_activations(model, all_inputs())
    tc, _ = train_transcoder(acts, FAST.replace(steps=20))
    tc.save(tmp_path / "tc", extra={"run": "x"})
    assert sorted(p.name for p in (tmp_path / "tc").iterdir()) == [
        "transcoder.json",
        "transcoder.safetensors",
    ]
    meta = json.loads((tmp_path / "tc" / "transcoder.json").read_text())
    import circuitlab

    assert meta["circuitlab_version"] == circuitlab.__version__ and meta["extra"] == {"run": "x"}
    loaded = Transcoder.load(tmp_path / "tc")
    x = [a[:, -1] for a in acts.mlp_in]
    with torch.no_grad():
        a1, r1 = tc(x)
        a2, r2 = loaded(x)
    assert all(torch.equal(u, v) for u, v in zip(a1 + r1, a2 + r2, strict=True))
    assert loaded.cfg == tc.cfg


def test_load_reports_missing_and_damaged_files(tmp_path):
    with pytest.raises(TranscoderError, match="missing"):
        Transcoder.load(tmp_path)
    tc = Transcoder(TranscoderConfig(n_features=4), 1, 8)
    tc.save(tmp_path)
    (tmp_path / "transcoder.safetensors").write_bytes(b"garbage")
    with pytest.raises(TranscoderError, match="cannot read"):
        Transcoder.load(tmp_path)
    Transcoder(TranscoderConfig(n_features=5), 1, 8).save(tmp_path / "other")
    (tmp_path / "other" / "transcoder.safetensors").replace(tmp_path / "transcoder.safetensors")
    with pytest.raises(TranscoderError, match="shape"):
        Transcoder.load(tmp_path)


def test_replacement_hooks_reject_a_mismatched_model():
    tc = Transcoder(TranscoderConfig(n_features=4), 1, 16)
    with pytest.raises(TranscoderError, match="layers"), replacement_hooks(tiny_model(2), tc):
        pass


@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
def test_saelens_loads_the_export_and_computes_the_same_outputs(tmp_path, activation):
    sae_lens = pytest.importorskip("sae_lens")
    from circuitlab.extraction.saelens_export import export_saelens

    model = tiny_model(2, "LN")
    acts = mlp_activations(model, all_inputs())
    cfg = FAST.replace(kind="per_layer", activation=activation, steps=40)
    tc, _ = train_transcoder(acts, cfg)
    export_saelens(tc, tmp_path / "sae", model_name="tiny")
    expected_class = {"jumprelu": "JumpReLUTranscoder", "relu": "Transcoder"}[activation]
    for layer in range(2):
        sae = sae_lens.SAE.load_from_disk(tmp_path / "sae" / f"layer_{layer}")
        assert type(sae).__name__ == expected_class
        assert sae.cfg.metadata.hook_name == f"blocks.{layer}.hook_mlp_in"
        x = acts.mlp_in[layer].flatten(0, 1)
        with torch.no_grad():
            ours = tc.encode(layer, x)
            recon = tc.decode([ours if l == layer else torch.zeros_like(ours) for l in range(2)])
            assert (ours > 0).any()
            assert torch.allclose(sae.encode(x), ours, atol=1e-5)
            assert torch.allclose(sae(x), recon[layer], atol=1e-5)


def test_saelens_export_refuses_what_saelens_cannot_load(tmp_path):
    from circuitlab.extraction.saelens_export import export_saelens

    with pytest.raises(TranscoderError, match="per-layer"):
        export_saelens(Transcoder(TranscoderConfig(kind="cross_layer"), 2, 8), tmp_path / "a")
    topk = TranscoderConfig(kind="per_layer", activation="topk", top_k=4)
    with pytest.raises(TranscoderError, match="topk"):
        export_saelens(Transcoder(topk, 1, 8), tmp_path / "b")
    assert not any(tmp_path.iterdir())


def test_progress_bar_runs_and_changes_nothing(capsys):
    model = tiny_model(1, None)
    acts = mlp_activations(model, all_inputs())
    cfg = FAST.replace(steps=5)
    quiet, _ = train_transcoder(acts, cfg)
    shown, _ = train_transcoder(acts, cfg, progress=True)
    assert torch.equal(quiet.tensors()["W_dec.0.0"], shown.tensors()["W_dec.0.0"])


def test_aux_k_trains_only_dead_topk_features():
    from circuitlab.extraction.transcoder_train import _aux_k_loss

    cfg = TranscoderConfig(n_features=8, activation="topk", top_k=2, dead_window=5)
    tc = Transcoder(cfg, 1, 4)
    x, y = torch.randn(32, 4), torch.randn(32, 4)
    pre = tc.pre_activations(0, x)
    recon = tc.decode([tc.activate(0, pre)])
    since_fired = torch.zeros(1, 8, dtype=torch.long)
    assert float(_aux_k_loss(tc, [pre], [y], recon, since_fired, cfg)) == 0.0
    since_fired[0, :3] = 5  # features 0-2 are dead
    _aux_k_loss(tc, [pre], [y], recon, since_fired, cfg).backward()
    moved = tc.W_dec[0].grad[0].abs().sum(-1) > 0
    assert moved[:3].any() and not moved[3:].any()


def test_bf16_training_runs_matmuls_in_bf16_and_saves_float32_weights(tmp_path):
    from safetensors.torch import load_file
    from torch.utils._python_dispatch import TorchDispatchMode

    from circuitlab import _precision

    class MatmulDtypes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[torch.dtype] = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ("mm", "bmm", "addmm", "baddbmm"):
                self.seen |= {a.dtype for a in args if isinstance(a, torch.Tensor)}
            return func(*args, **(kwargs or {}))

    with pytest.raises(TranscoderError, match=r"precision must be one of \('fp32', 'bf16'\)"):
        TranscoderConfig(precision="fp16")
    model = tiny_model(2, "LN")
    tokens = all_inputs()
    acts = mlp_activations(model, tokens)
    cfg = FAST.replace(steps=40, precision="bf16")
    assert TranscoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with MatmulDtypes() as rec:
        tc, log = train_transcoder(acts, cfg)
    fp32, _ = train_transcoder(acts, cfg.replace(precision="fp32"))
    native = _precision.bf16_unsupported("cpu") is None
    assert log.precision == ("bf16" if native else "fp32 (bf16 unsupported)")
    assert (torch.bfloat16 in rec.seen) == native
    assert all(p.dtype == torch.float32 for p in tc.parameters())
    assert log.mse[-1] < log.mse[0] and all(math.isfinite(x) for x in log.loss)
    if native:  # close to, not the same as, the fp32 transcoder
        a, b = tc.tensors()["W_enc.0"], fp32.tensors()["W_enc.0"]
        assert not torch.equal(a, b) and torch.allclose(a, b, atol=0.1)
    tc.save(tmp_path / "tc")
    assert all(
        t.dtype == torch.float32 for t in load_file(str(tmp_path / "tc" / WEIGHTS_FILE)).values()
    )
    loaded = Transcoder.load(tmp_path / "tc")
    assert loaded.cfg.precision == "bf16"
    # used in float32, also inside a caller's bf16 autocast
    metrics = evaluate(loaded, model, tokens, acts=acts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = evaluate(loaded, model, tokens, acts=acts)
    assert again == metrics and metrics.nmse < 1.0
