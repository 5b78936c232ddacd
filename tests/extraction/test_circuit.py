import pytest
import torch

from circuitlab.extraction.activations import mlp_activations, task_tokens
from circuitlab.extraction.circuit import (
    CircuitError,
    _accuracy_loss,
    measure,
    reference,
    select_circuit,
    top_k_mask,
)
from circuitlab.extraction.transcoder import TranscoderConfig, train_transcoder
from circuitlab.models import ModelConfig, Transformer
from circuitlab.tasks import get_task


@pytest.fixture(scope="module", params=["per_layer", "cross_layer"])
def setup(request):
    task = get_task("add_mod_11")
    cfg = ModelConfig.for_task(task, n_layers=2, d_model=24, n_heads=2, d_head=12, d_mlp=48)
    model = Transformer(cfg, seed=0)
    tokens, targets = task_tokens(task)
    tc_cfg = TranscoderConfig(kind=request.param, n_features=32, steps=60, batch_size=64)
    tc, _ = train_transcoder(mlp_activations(model, tokens), tc_cfg)
    # the untrained model's own predictions are the targets: accuracy 1 for the full model
    targets = model(tokens).argmax(-1)
    return model, tc, tokens, targets


def mlp_patch(model, tokens, targets, fn):
    def hooks(index):
        hook = fn(index)
        return model.hooks([(lambda n: n.endswith(("hook_mlp_out", "hook_mlp_in")), hook)])

    return _accuracy_loss(model, tokens, targets, 4096, hooks)


def test_necessity_of_nothing_is_the_full_model(setup):
    model, tc, tokens, targets = setup
    ref = reference(model, tc, tokens)
    keep = [torch.zeros(tc.n_features, dtype=torch.bool) for _ in range(tc.n_layers)]
    f = measure(model, tc, tokens, targets, keep, ref, "mean")
    assert f.full_accuracy == 1.0
    assert f.necessity_accuracy == f.full_accuracy
    assert f.necessity_loss == pytest.approx(f.full_loss, abs=1e-5)


def test_zero_sufficiency_of_nothing_leaves_only_decoder_bias(setup):
    model, tc, tokens, targets = setup
    ref = reference(model, tc, tokens)
    keep = [torch.zeros(tc.n_features, dtype=torch.bool) for _ in range(tc.n_layers)]
    f = measure(model, tc, tokens, targets, keep, ref, "zero")

    def bias_only(index):
        def fn(y, name):
            return tc.b_dec[int(name.split(".")[1])].expand_as(y) if name.endswith("out") else None

        return fn

    acc, loss = mlp_patch(model, tokens, targets, bias_only)
    assert f.sufficiency_accuracy == acc
    assert f.sufficiency_loss == pytest.approx(loss, abs=1e-5)


def test_mean_sufficiency_of_everything_replaces_only_the_error(setup):
    # every feature kept, error nodes mean-ablated: MLP out = reconstruction + mean error
    model, tc, tokens, targets = setup
    ref = reference(model, tc, tokens)
    keep = [torch.ones(tc.n_features, dtype=torch.bool) for _ in range(tc.n_layers)]
    f = measure(model, tc, tokens, targets, keep, ref, "mean")

    def recon_plus_mean_error(index):
        mlp_in = {}

        def fn(y, name):
            t = int(name.split(".")[1])
            if name.endswith("hook_mlp_in"):
                mlp_in[t] = y
                return None
            answers = list(model.cfg.answer_positions)
            rows = [x if x.shape[1] == y.shape[1] else x[:, answers] for x in mlp_in.values()]
            acts = [tc.encode(l, rows[l]) for l in range(t + 1)]
            acts += [torch.zeros_like(acts[0])] * (tc.n_layers - t - 1)
            return tc.decode(acts)[t] + ref.errors[t].mean(0, keepdim=True)

        return fn

    acc, loss = mlp_patch(model, tokens, targets, recon_plus_mean_error)
    assert f.sufficiency_accuracy == acc
    assert f.sufficiency_loss == pytest.approx(loss, abs=1e-4)


def test_selected_circuit_is_the_smallest_meeting_the_target(setup):
    model, tc, tokens, targets = setup
    importance = torch.rand(tc.n_layers, tc.n_features, generator=torch.Generator().manual_seed(0))
    keep, f = select_circuit(
        model, tc, tokens, targets, importance, target_accuracy=0.6, ablation="mean"
    )
    k = f.n_features
    assert sum(int(m.sum()) for m in keep) == k
    by_k = {c["k"]: c["sufficiency_accuracy"] for c in f.curve}
    assert k in by_k  # k was measured during the search
    assert by_k[k] >= 0.6 or k == tc.n_layers * tc.n_features
    assert f.sufficiency_accuracy == by_k[k]
    if k - 1 in by_k:
        assert by_k[k - 1] < 0.6
    assert torch.equal(torch.stack(keep), torch.stack(top_k_mask(importance, k)))


def test_bad_requests(setup):
    model, tc, tokens, targets = setup
    with pytest.raises(CircuitError, match="ablation"):
        measure(
            model,
            tc,
            tokens,
            targets,
            [torch.ones(tc.n_features, dtype=torch.bool)] * tc.n_layers,
            reference(model, tc, tokens),
            "gaussian",
        )
    with pytest.raises(CircuitError, match="importance"):
        select_circuit(model, tc, tokens, targets, torch.ones(5))
    with pytest.raises(CircuitError, match="positive importance"):
        select_circuit(model, tc, tokens, targets, torch.zeros(tc.n_layers, tc.n_features))


def test_necessity_target_grows_the_circuit(setup):
    model, tc, tokens, targets = setup
    importance = torch.rand(tc.n_layers, tc.n_features, generator=torch.Generator().manual_seed(1))
    _, small = select_circuit(model, tc, tokens, targets, importance, target_accuracy=0.5)
    keep, grown = select_circuit(
        model, tc, tokens, targets, importance, target_accuracy=0.5, necessity_target=0.3
    )
    assert grown.n_features >= small.n_features
    necessity = {c["k"]: c["necessity_accuracy"] for c in grown.curve if "necessity_accuracy" in c}
    assert necessity, "the necessity search left no trace in the curve"
    every = int((importance > 0).sum())
    if grown.necessity_accuracy > 0.3:  # only when no ranked set reaches the target
        assert necessity[every] > 0.3 and grown.n_features == small.n_features
    if grown.n_features > small.n_features and grown.n_features - 1 in necessity:
        assert necessity[grown.n_features - 1] > 0.3  # it is the smallest such k
