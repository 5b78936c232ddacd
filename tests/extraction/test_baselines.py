"""EAP, EAP-IG and ACDC checked against their papers' definitions.

The references are exact edge patching (`patch_effect`, and `_forward` with hand-made ablated
values): EAP is the first-order term of patching one edge, so it equals the exact effect when
the metric is linear in that edge and the derivative of patching (finite differences) in
general; ACDC must recover the single path of a hand-built copying model; EAP-IG at one step is
EAP's clean point reached through the interpolation path.
"""

from __future__ import annotations

import math

import pytest
import torch

from circuitlab.extraction import baselines as bl
from circuitlab.extraction.baselines import INPUT, LOGITS
from circuitlab.models.config import ModelConfig
from circuitlab.models.transformer import Transformer

H00, H01, H10, H11 = ("attn", 0, 0), ("attn", 0, 1), ("attn", 1, 0), ("attn", 1, 1)
PATH = {(INPUT, H00), (H00, H10), (H10, LOGITS)}


def copy_model() -> Transformer:
    """Two attention-only layers: head 0.0 averages the one-hot tokens of the prefix into dims
    3-5 (W_Q = W_K = 0, so the pattern is fixed), head 1.0 copies dims 3-5 to 6-8, which the
    unembedding reads. Every other head is zero: the circuit is input -> 0.0 -> 1.0 -> logits,
    and the model is affine in every residual stream."""
    cfg = ModelConfig(
        d_vocab=3, d_vocab_out=3, n_ctx=3, n_layers=2, d_model=9, n_heads=2, d_head=3, d_mlp=0,
        answer_positions=(0, 1, 2),
    )  # fmt: skip
    model = Transformer(cfg).double()
    state = {k: torch.zeros_like(v) for k, v in model.tl_state_dict().items()}
    eye = torch.eye(3, dtype=torch.float64)
    state["embed.W_E"][:, 0:3] = eye
    state["blocks.0.attn.W_V"][0, 0:3] = eye
    state["blocks.0.attn.W_O"][0, :, 3:6] = eye
    state["blocks.1.attn.W_V"][0, 3:6] = eye
    state["blocks.1.attn.W_O"][0, :, 6:9] = 2 * eye
    state["unembed.W_U"][6:9] = eye
    model.load_tl_state_dict(state)
    return model.eval()


def tokens_all(cfg: ModelConfig) -> torch.Tensor:
    grid = torch.cartesian_prod(*[torch.arange(cfg.d_vocab)] * cfg.n_ctx)
    return grid.view(-1, cfg.n_ctx)


def random_model(normalization: str | None) -> Transformer:
    cfg = ModelConfig(
        d_vocab=4, d_vocab_out=4, n_ctx=4, n_layers=2, d_model=12, n_heads=2, d_head=4, d_mlp=16,
        answer_positions=(2, 3), normalization=normalization, act_fn="gelu",
    )  # fmt: skip
    return Transformer(cfg, seed=3).double().eval()


def linear_metric(lg: torch.Tensor) -> torch.Tensor:
    """Linear in the logits, weighted per example: an unweighted mean would cancel mean and
    resample ablations exactly (their deltas sum to zero over the batch)."""
    weight = torch.arange(lg.shape[0], dtype=lg.dtype).view(-1, 1)
    return (weight * (lg[..., 0] + 2 * lg[..., 1] - 0.5 * lg[..., 2])).mean()


def test_graph_edges_follow_the_residual_stream() -> None:
    cfg = ModelConfig(n_layers=2, n_heads=2, d_mlp=4, d_model=8, d_head=4)
    g = bl.component_graph(cfg)
    assert g.nodes[0] == INPUT and g.nodes[-1] == LOGITS and len(g.nodes) == 8
    assert (H00, ("mlp", 0)) in g.edges and (("mlp", 0), H10) in g.edges
    assert (H00, H01) not in g.edges and (H10, H00) not in g.edges
    assert (("mlp", 0), ("mlp", 0)) not in g.edges
    # input -> 6 components + logits, 0.x -> 4 later + logits, mlp0 -> 3 + logits, 1.x -> 1 + 1
    assert len(g.edges) == 7 + 2 * 5 + 4 + 2 * 2 + 1
    no_mlp = bl.component_graph(ModelConfig(n_layers=2, n_heads=1, d_mlp=0, d_model=8, d_head=4))
    assert all(n[0] != "mlp" for n in no_mlp.nodes)


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_eap_equals_exact_patching_when_the_metric_is_linear(kind: str) -> None:
    model = copy_model()
    tokens = tokens_all(model.cfg)
    scores = bl.eap(model, tokens, kind, metric=linear_metric)
    for edge, score in scores.items():
        exact = bl.patch_effect(model, tokens, [edge], kind, linear_metric)
        assert score == pytest.approx(exact, abs=1e-9), edge
    assert abs(scores[(INPUT, H00)]) > 1e-3
    assert all(abs(s) < 1e-12 for e, s in scores.items() if e not in PATH)


@pytest.mark.parametrize("normalization", [None, "LN"])
def test_eap_is_the_derivative_of_edge_patching(normalization: str | None) -> None:
    """Per-head inputs (q, k, v pulled back through that head's weights) and MLP/LN gradients:
    patching src -> dst to clean + eps * (ablated - clean) changes the metric by eps * EAP."""
    model = random_model(normalization)
    tokens = torch.randint(0, 4, (16, 4), generator=torch.Generator().manual_seed(0))
    metric = bl.task_metric(model, tokens)
    scores = bl.eap(model, tokens, "resample", metric=metric)
    ablated = bl.ablated_outputs(model, tokens, bl.Ablation("resample"))
    with torch.no_grad():
        clean_run = bl.run_components(model, tokens)
        base = float(metric(clean_run.logits))
        eps = 1e-5
        near = {n: v + eps * (ablated[n] - v) for n, v in clean_run.outs.items()}
        for src, dst in scores:
            out = bl.run_components(model, tokens, {dst: [src]}, near).logits
            fd = (float(metric(out)) - base) / eps
            assert scores[(src, dst)] == pytest.approx(fd, rel=1e-3, abs=1e-6), (src, dst)


def test_eap_ig_one_step_is_eap_and_linear_models_need_one_step() -> None:
    model = random_model("LN")
    tokens = torch.randint(0, 4, (8, 4), generator=torch.Generator().manual_seed(1))
    a = bl.eap(model, tokens, "mean")
    b = bl.eap_ig(model, tokens, "mean", steps=1)
    assert a.keys() == b.keys()
    assert all(a[e] == pytest.approx(b[e], rel=1e-9, abs=1e-12) for e in a)
    c = bl.eap_ig(model, tokens, "mean", steps=5)
    assert any(abs(a[e] - c[e]) > 1e-6 for e in a)  # the path matters in a non-linear model
    lin = copy_model()
    toks = tokens_all(lin.cfg)
    e1 = bl.eap(lin, toks, "zero", metric=linear_metric)
    e5 = bl.eap_ig(lin, toks, "zero", steps=5, metric=linear_metric)
    assert all(e1[e] == pytest.approx(e5[e], abs=1e-9) for e in e1)


def test_eap_ig_averages_gradients_on_the_embedding_path() -> None:
    """steps=m equals the mean of m EAP-style products at interpolated embeddings, recomputed
    here by hand with autograd on the logits-reading residual (src -> logits edges)."""
    model = random_model(None)
    tokens = torch.randint(0, 4, (8, 4), generator=torch.Generator().manual_seed(2))
    metric = bl.task_metric(model, tokens)
    ablated = bl.ablated_outputs(model, tokens, bl.Ablation("zero"))
    with torch.no_grad():
        clean = bl.run_components(model, tokens).outs
    grad = 0
    for k in (1, 2, 3):
        point = ablated[INPUT] + k / 3 * (clean[INPUT] - ablated[INPUT])
        run = bl.run_components(model, tokens, input_value=point)
        grad = grad + torch.autograd.grad(metric(run.logits), run.acts["final"])[0] / 3
    got = bl.eap_ig(model, tokens, "zero", steps=3)
    for src in (INPUT, H00, ("mlp", 0), H11):
        want = float(((ablated[src] - clean[src]) * grad).sum())
        assert got[(src, LOGITS)] == pytest.approx(want, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kind", ["zero", "mean", "resample"])
def test_acdc_recovers_the_one_path(kind: str) -> None:
    model = copy_model()
    result = bl.acdc(model, tokens_all(model.cfg), kind, tau=1e-6)
    assert result.edges == PATH
    assert result.nodes == {H00, H10}
    assert bl.roc_auc(result.scores, PATH) == 1.0
    assert result.divergence < 1e-6


def test_roc_auc_ties_get_average_rank() -> None:
    assert bl.roc_auc({"a": 3, "b": 2, "c": 1}, {"a"}) == 1.0
    assert bl.roc_auc({"a": 1, "b": 2, "c": 3}, {"a"}) == 0.0
    assert bl.roc_auc({"a": 1, "b": 1, "c": 1, "d": 1}, {"a", "b"}) == 0.5
    # a and c tie: the pair (a, c) counts one half -> (1 + 0.5) / 2
    assert bl.roc_auc({"a": 2, "b": 3, "c": 2, "d": 0}, {"a", "b"}) == pytest.approx(
        (2 + 1 + 0.5) / 4
    )
    assert math.isnan(bl.roc_auc({"a": 1}, {"a"}))


def test_node_scores() -> None:
    e = {(INPUT, H00): 0.5, (H00, LOGITS): -2.0, (INPUT, H10): 0.1}
    assert bl.node_scores(e, "max") == {H00: 0.5, H10: 0.1}
    assert bl.node_scores(e, "sum_abs") == {H00: 2.5, H10: 0.1}


@pytest.fixture(scope="module")
def reverse_program():
    pytest.importorskip("tracr")
    from circuitlab.models.tracr_import import encode, load_tracr
    from circuitlab.models.tracr_programs import all_inputs, compile_program

    assembled, circuit = compile_program("reverse")
    model = load_tracr(assembled, torch.float64)
    seqs = list(all_inputs("reverse"))
    # one batch per length (no pad mask); with length 4 alone, "length" would be a constant
    batches = [encode(assembled, [s for s in seqs if len(s) == n]) for n in (2, 3, 4)]
    return model, batches, circuit


def test_tracr_reverse_acdc_zero_ablation(reverse_program) -> None:
    model, tokens, circuit = reverse_program
    truth = bl.truth_edges(circuit)
    assert (INPUT, ("attn", 0, 0)) in truth and (("attn", 3, 0), LOGITS) in truth
    graph_edges = set(bl.component_graph(model.cfg).edges)
    assert truth <= graph_edges
    result = bl.acdc(model, tokens, "zero")
    # the one extra edge is real: tracr MLPs read the embedding's constant "one" direction
    assert truth <= result.edges and result.edges - truth == {(INPUT, ("mlp", 0))}
    assert result.nodes == set(circuit.nodes)
    score = bl.score_method("ACDC", model, tokens, circuit, "zero")
    assert score.node_auc == 1.0 and score.edge_auc >= 0.95, score
    eap_score = bl.score_method("EAP", model, tokens, circuit, "zero")
    assert not math.isnan(eap_score.node_auc) and not math.isnan(eap_score.edge_auc)
