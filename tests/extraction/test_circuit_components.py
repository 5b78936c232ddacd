"""A feature circuit read on the component graph, checked against patching the real model.

Without LayerNorm the logit targets are linear in the final residual, so an edge into the
logits must equal removing the source's (ablated) output from the final residual alone; a QK
edge into a last-layer head must equal recomputing that head's queries and keys without the
source when nothing after the head is nonlinear. On tracr's sort, the circuit circuitlab
extracts must name exactly the compiled program's heads and MLPs.
"""

from __future__ import annotations

import pytest
import torch

from circuitlab.extraction.circuit_components import circuit_components
from circuitlab.extraction.component_patching import INPUT, LOGITS
from circuitlab.extraction.transcoder import Transcoder, TranscoderConfig
from circuitlab.models.config import ModelConfig
from circuitlab.models.transformer import Transformer


def tiny(zero_last_mlp: bool = False) -> tuple[Transformer, Transcoder, torch.Tensor]:
    cfg = ModelConfig(
        d_vocab=5, d_vocab_out=5, n_ctx=4, n_layers=2, d_model=12, n_heads=2, d_head=4, d_mlp=16,
        answer_positions=(2, 3), normalization=None,
    )  # fmt: skip
    model = Transformer(cfg, seed=1)
    if zero_last_mlp:  # layer 1's MLP writes a constant: nothing after its heads is nonlinear
        state = model.tl_state_dict()
        state["blocks.1.mlp.W_out"] = torch.zeros_like(state["blocks.1.mlp.W_out"])
        model.load_tl_state_dict(state)
    model = model.double().eval()
    tc = Transcoder(TranscoderConfig(n_features=24, activation="relu", seed=2), 2, 12).double()
    tokens = torch.randint(0, 5, (20, 4), generator=torch.Generator().manual_seed(0))
    return model, tc, tokens


def targets(logits: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """(B, P) demeaned logit of the clean model's prediction at the answer positions."""
    at = logits[:, [2, 3]]
    pick = clean[:, [2, 3]].argmax(-1, keepdim=True)
    return at.gather(-1, pick)[..., 0] - at.mean(-1)


def head_outputs(model: Transformer, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    _, cache = model.run_with_cache(tokens, answers_only=False)
    z = cache[f"blocks.{layer}.attn.hook_z"]
    return torch.einsum("bshe,hed->bshd", z, model.param(f"blocks.{layer}.attn.W_O"))


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_edges_into_the_logits_equal_patching_the_final_residual(ablation: str) -> None:
    model, tc, tokens = tiny()
    keep = [torch.rand(24, generator=torch.Generator().manual_seed(t)) < 0.5 for t in range(2)]
    scores = circuit_components(model, tc, keep, tokens, ablation)
    with torch.no_grad():
        clean = model(tokens, answers_only=False)
        _, cache = model.run_with_cache(tokens, answers_only=False)
        acts = [tc.encode(t, cache[f"blocks.{t}.hook_mlp_in"]) * keep[t] for t in range(2)]
        writes = {
            ("attn", 0, 0): head_outputs(model, tokens, 0)[:, :, 0],
            ("attn", 1, 1): head_outputs(model, tokens, 1)[:, :, 1],
            # MLP 1's circuit write: layer 0's features through their cross-layer decoders too
            ("mlp", 1): acts[0] @ tc.W_dec[0][1] + acts[1] @ tc.W_dec[1][0],
        }
    for src, out in writes.items():
        delta = out - (out.mean(0, keepdim=True) if ablation == "mean" else 0)
        remove = [("blocks.1.hook_resid_post", lambda x, n, d=delta: x - d)]
        with torch.no_grad(), model.hooks(remove):
            patched = model(tokens, answers_only=False)
        expected = (targets(clean, clean) - targets(patched, clean)).abs().sum()
        assert scores.edges[(src, LOGITS)] == pytest.approx(float(expected), rel=1e-9), src


def test_qk_edges_equal_recomputing_the_pattern() -> None:
    model, tc, tokens = tiny(zero_last_mlp=True)
    keep = [torch.ones(24, dtype=torch.bool), torch.zeros(24, dtype=torch.bool)]
    scores = circuit_components(model, tc, keep, tokens, "zero")
    with torch.no_grad():
        clean = model(tokens, answers_only=False)
        src_out = head_outputs(model, tokens, 0)[:, :, 0]
        _, cache = model.run_with_cache(tokens, answers_only=False)
        resid = cache["blocks.1.hook_resid_pre"] - src_out

    def recompute(x: torch.Tensor, name) -> torch.Tensor:
        which = name[-1].upper()
        x = x.clone()
        x[:, :, 1] = resid @ model.param(f"blocks.1.attn.W_{which}")[1]
        x[:, :, 1] += model.param(f"blocks.1.attn.b_{which}")[1]
        return x

    hooks = [("blocks.1.attn.hook_q", recompute), ("blocks.1.attn.hook_k", recompute)]
    with torch.no_grad(), model.hooks(hooks):
        patched = model(tokens, answers_only=False)
    expected = (targets(clean, clean) - targets(patched, clean)).abs().sum()
    assert expected > 1e-3  # the source moves the pattern
    assert scores.qk[(("attn", 0, 0), ("attn", 1, 1))] == pytest.approx(float(expected), rel=1e-9)
    # QK edges exist only into heads of later layers
    assert all(d[0] == "attn" and (s == INPUT or s[1] < d[1]) for s, d in scores.qk)


def test_what_the_circuit_does_not_read_scores_zero() -> None:
    model, tc, tokens = tiny()
    none = [torch.zeros(24, dtype=torch.bool)] * 2
    scores = circuit_components(model, tc, none, tokens, "mean")
    assert scores.nodes[("mlp", 0)] == 0 and scores.nodes[("mlp", 1)] == 0
    assert all(v == 0 for (s, d), v in scores.edges.items() if d[0] == "mlp")
    assert scores.nodes[("attn", 1, 0)] > 0  # heads still reach the logits directly
    assert set(scores.nodes) == {("attn", l, h) for l in (0, 1) for h in (0, 1)} | {
        ("mlp", 0),
        ("mlp", 1),
    }


def test_layernorm_models_and_resample_are_scored() -> None:
    cfg = ModelConfig(
        d_vocab=5, d_vocab_out=5, n_ctx=4, n_layers=2, d_model=12, n_heads=2, d_head=4, d_mlp=16,
        answer_positions=(3,), normalization="LN",
    )  # fmt: skip
    model = Transformer(cfg, seed=4).double().eval()
    tc = Transcoder(TranscoderConfig(n_features=24, activation="relu"), 2, 12).double()
    keep = [torch.ones(24, dtype=torch.bool)] * 2
    tokens = torch.randint(0, 5, (16, 4), generator=torch.Generator().manual_seed(1))
    a = circuit_components(model, tc, keep, tokens, "resample")
    b = circuit_components(model, tc, keep, tokens, "resample")
    assert a == b  # seeded
    assert all(v > 0 and torch.isfinite(torch.tensor(v)) for v in a.nodes.values())


@pytest.mark.slow
def test_tracr_sort_circuit_names_the_compiled_components(tmp_path) -> None:
    pytest.importorskip("tracr")
    from circuitlab.extraction import ExtractConfig, extract
    from circuitlab.extraction import baselines as bl
    from circuitlab.extraction.artifact import circuit_record, feature_mask
    from circuitlab.models.tracr_import import encode
    from circuitlab.models.tracr_programs import all_inputs, compile_program
    from circuitlab.training import load_run
    from circuitlab.training.imported import import_model

    import_model("tracr:sort", "tracr_sort", tmp_path / "run")
    config = ExtractConfig(ablation="resample")
    result = extract(tmp_path / "run", config=config, write_catalog=False)
    _, model = load_run(tmp_path / "run")
    tc = Transcoder.load(result.out_dir / "transcoder")
    keep = feature_mask(circuit_record(result.out_dir), tc.n_layers, tc.n_features)
    assembled, truth = compile_program("sort")
    seqs = list(all_inputs("sort"))
    lengths = sorted({len(s) for s in seqs})
    batches = [encode(assembled, [s for s in seqs if len(s) == n]) for n in lengths]
    scores = circuit_components(model, tc, keep, batches, "mean", range(1, model.cfg.n_ctx))
    assert bl.roc_auc(scores.nodes, bl.truth_nodes(truth)) == 1.0
    assert bl.roc_auc(scores.edges, bl.truth_edges(truth)) >= 0.95
    # the MLP that computes sort's keys reaches the moving head only through its pattern
    edge = (("mlp", 0), ("attn", 1, 0))
    assert edge in bl.truth_edges(truth) and scores.qk[edge] > 0


def test_cross_layer_writes_are_the_edge_between_their_mlps() -> None:
    model, tc, tokens = tiny()
    keep = [torch.ones(24, dtype=torch.bool), torch.zeros(24, dtype=torch.bool)]
    # no circuit feature reads at layer 1: only layer 0's decoders into layer 1 join the MLPs
    crossed = circuit_components(model, tc, keep, tokens, "zero")
    assert crossed.edges[(("mlp", 0), ("mlp", 1))] > 0
    per_layer = Transcoder(
        TranscoderConfig(n_features=24, activation="relu", kind="per_layer", seed=2), 2, 12
    )
    plain = circuit_components(model, per_layer.double(), keep, tokens, "zero")
    assert plain.edges[(("mlp", 0), ("mlp", 1))] == 0
