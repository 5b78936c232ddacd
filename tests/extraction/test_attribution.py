"""Attribution graphs checked against interventions in the frozen replacement model.

The reference here is independent of attribution.py: the real `Transformer` forward with hooks
that freeze attention patterns and LayerNorm scales to a cached run and replace each MLP output
by the transcoder's decode of fixed activations plus the error. Removing one source (a token's
embedding, a feature's activation, an error vector) and re-running gives its measured effect on
every reader; each edge must equal it (circuit-tracer's bar: 1e-5 on logits, 5e-4 on
pre-activations).
"""

from __future__ import annotations

import math

import pytest
import torch

from circuitlab.extraction import attribution, attribution_frozen
from circuitlab.extraction.attribution import (
    AttributionConfig,
    AttributionError,
    AttributionStream,
    attribute,
)
from circuitlab.extraction.graph import (
    ERROR,
    FEATURE,
    LOGIT,
    TOKEN,
    prune_graph,
    scores_of,
)
from circuitlab.extraction.graph_json import to_circuit_tracer_json, top_qk_pairs
from circuitlab.extraction.transcoder import Transcoder, TranscoderConfig
from circuitlab.models import ModelConfig, Transformer

LOGIT_TOL = 1e-5
ACT_TOL = 5e-4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster, and immune to a busy machine's thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_model(n_layers: int, ln: bool, seed: int = 0, answers=(2, 3)) -> Transformer:
    cfg = ModelConfig(
        d_vocab=7,
        d_vocab_out=6,
        n_ctx=4,
        n_layers=n_layers,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_mlp=32,
        normalization="LN" if ln else None,
        answer_positions=answers,
    )
    model = Transformer(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        # every bias and LayerNorm parameter nonzero, so bias handling is exercised
        for name, p in model.tl_state_dict().items():
            leaf = name.rsplit(".", 1)[1]
            if leaf.startswith("b"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            elif leaf == "w":
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def random_transcoder(model: Transformer, kind: str, seed: int = 0) -> Transcoder:
    cfg = TranscoderConfig(kind=kind, n_features=12, activation="jumprelu", seed=seed)
    tc = Transcoder(cfg, model.cfg.n_layers, model.cfg.d_model)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        tc.b_enc.copy_(0.2 * torch.randn(tc.b_enc.shape, generator=gen))
        tc.b_dec.copy_(0.3 * torch.randn(tc.b_dec.shape, generator=gen))
        for w in tc.W_dec:
            w.copy_(torch.randn(w.shape, generator=gen) / math.sqrt(model.cfg.d_model))
    return tc.eval()


def prompts(model: Transformer, n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (n, model.cfg.n_ctx), generator=gen)


class Frozen:
    """The local replacement model by hooks on the real forward pass (the test's reference)."""

    def __init__(self, model: Transformer, tc: Transcoder, tokens: torch.Tensor) -> None:
        self.model, self.tc, self.tokens = model, tc, tokens
        cfg = model.cfg
        names = lambda n: n.endswith(  # noqa: E731
            ("hook_pattern", "hook_scale", "hook_mlp_in", "hook_mlp_out", "hook_q", "hook_k")
        )
        _, self.cache = model.run_with_cache(tokens, names=names, answers_only=False)
        L = cfg.n_layers
        x = [self.cache[f"blocks.{l}.hook_mlp_in"] for l in range(L)]
        self.acts = [tc.encode(l, x[l]).detach() for l in range(L)]
        recon = tc.decode(self.acts)
        self.errors = [self.cache[f"blocks.{l}.hook_mlp_out"] - recon[l].detach() for l in range(L)]
        emb = model.param("embed.W_E")[tokens] + model.param("pos_embed.W_pos")[: tokens.shape[1]]
        self.token_vectors = emb.detach()  # (B, S, D)

    @torch.no_grad()
    def run(self, acts=None, errors=None, resid_delta=None, layer_delta=None):
        """(pre-activations per layer (B, S, F), demeaned logits (B, S, O), q and k per layer).

        resid_delta (B, S, D) is subtracted from resid_pre of block `layer_delta` (default 0).
        """
        acts = self.acts if acts is None else acts
        errors = self.errors if errors is None else errors
        pre: dict[int, torch.Tensor] = {}
        qk: dict[str, torch.Tensor] = {}
        recon = self.tc.decode(acts)

        def freeze(x, name):
            return self.cache[name]

        def read(x, name):
            layer = int(name.split(".")[1])
            pre[layer] = self.tc.pre_activations(layer, x)

        def write(x, name):
            layer = int(name.split(".")[1])
            return recon[layer] + errors[layer]

        def keep(x, name):
            qk[name] = x

        def shift(x, name):
            return x - resid_delta

        hooks = [
            (lambda n: n.endswith(("hook_pattern", "hook_scale")), freeze),
            (lambda n: n.endswith("hook_mlp_in"), read),
            (lambda n: n.endswith("hook_mlp_out"), write),
            (lambda n: n.endswith(("hook_q", "hook_k")), keep),
        ]
        if resid_delta is not None:
            hooks.append((f"blocks.{layer_delta or 0}.hook_resid_pre", shift))
        with self.model.hooks(hooks):
            logits = self.model(self.tokens, answers_only=False)
        logits = logits - logits.mean(-1, keepdim=True)
        L = self.model.cfg.n_layers
        return [pre[l] for l in range(L)], logits, qk

    def values(self, graph, out) -> torch.Tensor:
        """(B, N) reader values in the graph's node layout from a `run` output."""
        pre, logits, _ = out
        b = torch.arange(graph.n_prompts)
        v = torch.zeros(graph.n_prompts, graph.n_nodes)
        for slot in range(graph.n_feature_slots):
            layer, pos, feat = graph.features[:, slot].unbind(-1)
            stacked = torch.stack(pre)  # (L, B, S, F)
            v[:, slot] = stacked[layer, b, pos, feat] * graph.feature_mask[:, slot]
        for slot in range(graph.logit_tokens.shape[1]):
            pos = int(graph.logit_positions[slot])
            val = logits[b, pos, graph.logit_tokens[:, slot]]
            v[:, graph.logit_start + slot] = val * graph.logit_mask[:, slot]
        return v

    def remove(self, graph, node: int):
        """`run` with source `node` removed in every prompt (padding slots: nothing removed)."""
        kinds = graph.node_kinds
        kind = int(kinds[node])
        if kind == TOKEN:
            pos = node - graph.token_start
            delta = torch.zeros_like(self.token_vectors)
            delta[:, pos] = self.token_vectors[:, pos]
            return self.run(resid_delta=delta)
        if kind == ERROR:
            layer, pos = divmod(node - graph.error_start, graph.n_pos)
            errors = [e.clone() for e in self.errors]
            errors[layer][:, pos] = 0
            return self.run(errors=errors)
        acts = [a.clone() for a in self.acts]
        for b in range(graph.n_prompts):
            if graph.feature_mask[b, node]:
                layer, pos, feat = graph.features[b, node].tolist()
                acts[layer][b, pos, feat] = 0
        return self.run(acts=acts)

    def remove_all(self, graph):
        """`run` with every node removed: what is left is carried by biases alone."""
        acts = [torch.zeros_like(a) for a in self.acts]
        errors = [torch.zeros_like(e) for e in self.errors]
        pre, logits, qk = self.run(acts=acts, errors=errors, resid_delta=self.token_vectors)
        return pre, logits, qk


def check_edges(model, tc, tokens, **config):
    graph = attribute(model, tc, tokens, AttributionConfig(**config))
    frozen = Frozen(model, tc, tokens)
    base = frozen.run()
    # the replacement model with nothing removed is the real model
    real = model(tokens, answers_only=False)
    assert torch.allclose(base[1], real - real.mean(-1, keepdim=True), atol=1e-5)
    base_v = frozen.values(graph, base)
    assert torch.allclose(base_v, graph.target_values(), atol=1e-5)
    kinds = graph.node_kinds
    is_logit_row = (kinds == LOGIT).view(1, -1)
    n_sources = graph.logit_start
    worst_logit = worst_act = 0.0
    for node in range(n_sources):
        measured = base_v - frozen.values(graph, frozen.remove(graph, node))
        diff = (graph.adjacency[:, :, node] - measured).abs()
        worst_logit = max(worst_logit, float((diff * is_logit_row).max()))
        worst_act = max(worst_act, float((diff * ~is_logit_row).max()))
    assert worst_logit <= LOGIT_TOL, worst_logit
    assert worst_act <= ACT_TOL, worst_act
    # every reader = sum of in-edges + what the biases alone give
    bias_v = frozen.values(graph, frozen.remove_all(graph))
    assert torch.allclose(graph.bias_part(), bias_v * graph.node_mask, atol=ACT_TOL)
    return graph, frozen


@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("ln", [False, True])
@pytest.mark.parametrize("kind", ["per_layer", "cross_layer"])
def test_every_edge_equals_the_measured_effect_of_removing_its_source(n_layers, ln, kind):
    model = random_model(n_layers, ln, seed=n_layers + 2 * ln)
    tc = random_transcoder(model, kind, seed=3)
    tokens = prompts(model, 6)
    graph, _ = check_edges(model, tc, tokens, batch_size=4)  # two chunks of different sizes
    kinds = graph.node_kinds
    assert graph.feature_mask.any()
    # the checks are not vacuous: features feed later features and logits, tokens feed both
    fe = graph.adjacency[:, kinds == FEATURE][:, :, kinds == FEATURE]
    assert (fe.abs() > 1e-3).any() == (n_layers > 1)
    assert (graph.adjacency[:, kinds == LOGIT][:, :, kinds == TOKEN].abs() > 1e-3).any()
    assert (graph.adjacency[:, kinds == FEATURE][:, :, kinds == TOKEN].abs() > 1e-3).any()
    # last-layer features only at answer positions, earlier layers up to the last answer
    layers, positions = graph.features[..., 0], graph.features[..., 1]
    last = graph.feature_mask & (layers == n_layers - 1)
    assert set(positions[last].tolist()) <= set(model.cfg.answer_positions)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_general_path_without_token_tables_or_cache(n_layers, monkeypatch):
    """Large models skip the (position, token) tables and recompute the forward passes of the
    first phase; both paths give the same graph."""
    model = random_model(n_layers, True, seed=11)
    tc = random_transcoder(model, "cross_layer")
    tokens = prompts(model, 5)
    fast = attribute(model, tc, tokens, AttributionConfig(batch_size=2))
    monkeypatch.setattr(attribution_frozen, "TOKEN_TABLE_LIMIT", 0)
    monkeypatch.setattr(attribution, "FREEZE_CACHE", 0)
    slow, _ = check_edges(model, tc, tokens, batch_size=2)
    assert torch.allclose(fast.adjacency, slow.adjacency, atol=1e-5)
    assert torch.allclose(fast.qk[-1].pairs, slow.qk[-1].pairs, atol=1e-5)


def test_streamed_chunks_hold_the_same_graphs():
    """AttributionStream yields chunks in the layout `attribute` uses: the same graphs."""
    model = random_model(2, True, seed=4)
    tc = random_transcoder(model, "cross_layer")
    tokens = prompts(model, 7)
    whole = attribute(model, tc, tokens, AttributionConfig(batch_size=7))
    stream = AttributionStream(model, tc, tokens, AttributionConfig(batch_size=3))
    parts = list(stream)
    assert [p.n_prompts for p in parts] == [3, 3, 1] and stream.batch == 3
    assert all(p.n_nodes == whole.n_nodes for p in parts)
    streamed = torch.cat([p.adjacency for p in parts])
    assert torch.allclose(streamed, whole.adjacency, atol=1e-6)
    assert torch.equal(torch.cat([p.features for p in parts]), whole.features)
    assert torch.allclose(torch.cat([p.qk[1].pairs for p in parts]), whole.qk[1].pairs, atol=1e-6)
    # without a batch size, as many prompts per chunk as fit in chunk_bytes
    auto = AttributionStream(model, tc, tokens, AttributionConfig(chunk_bytes=1))
    assert auto.batch == 1 and len(list(auto)) == 7
    assert AttributionStream(model, tc, tokens).batch == 7
    # the chunked wrappers give what one batched call gives
    from circuitlab.extraction.graph import influence_of, node_influence

    direct = node_influence(whole.adjacency, whole.logit_weights())
    assert torch.allclose(influence_of(whole, chunk=2), direct)
    assert torch.equal(scores_of(whole, chunk=2).completeness, scores_of(whole).completeness)
    assert torch.equal(prune_graph(whole, chunk=2).edge_mask, prune_graph(whole).edge_mask)


def test_answer_before_the_end_of_the_sequence():
    """Positions after the last answer cannot matter: no nodes there, edges still exact."""
    model = random_model(2, True, seed=9, answers=(1,))
    tc = random_transcoder(model, "cross_layer", seed=2)
    graph, _ = check_edges(model, tc, prompts(model, 4))
    positions = graph.features[..., 1][graph.feature_mask]
    assert positions.numel() and int(positions.max()) <= 1
    kinds = graph.node_kinds
    late_tokens = graph.token_start + torch.arange(2, model.cfg.n_ctx)
    assert not graph.adjacency[:, :, late_tokens].any()
    assert (graph.adjacency[:, kinds == LOGIT][:, :, kinds == TOKEN].abs() > 1e-3).any()
    # a subset keeps each prompt's graph
    sub = graph.subset([2, 0])
    assert torch.equal(sub.adjacency[1], graph.adjacency[0])
    assert torch.equal(sub.qk[1].pairs[0], graph.qk[1].pairs[2])


def test_logit_targets_are_the_smallest_top_k_reaching_the_probability():
    model = random_model(1, False)
    tc = random_transcoder(model, "per_layer")
    tokens = prompts(model, 5)
    graph = attribute(model, tc, tokens, AttributionConfig(max_logits=4, logit_probability=0.7))
    logits = model(tokens, answers_only=False)
    for b in range(tokens.shape[0]):
        for a in model.cfg.answer_positions:
            probs = logits[b, a].softmax(-1)
            top = probs.sort(descending=True)
            k = min(int((top.values.cumsum(0) < 0.7).sum()) + 1, 4)
            slots = (graph.logit_positions == a) & graph.logit_mask[b]
            assert graph.logit_tokens[b, slots].tolist() == top.indices[:k].tolist()
            assert torch.allclose(graph.logit_probs[b, slots], top.values[:k])


@pytest.mark.parametrize("n_layers,ln", [(1, True), (2, False), (2, True)])
def test_qk_pairs_match_interventions_on_query_and_key_sides(n_layers, ln):
    model = random_model(n_layers, ln, seed=5)
    tc = random_transcoder(model, "cross_layer", seed=1)
    tokens = prompts(model, 4, seed=2)
    graph = attribute(model, tc, tokens, AttributionConfig(batch_size=3))
    frozen = Frozen(model, tc, tokens)
    _, _, base = frozen.run()
    e = model.cfg.d_head
    for qk in graph.qk:
        l, qpos = qk.layer, list(qk.query_positions)
        q0, k0 = base[f"blocks.{l}.attn.hook_q"][:, qpos], base[f"blocks.{l}.attn.hook_k"]
        # the pairs sum to the real scores (unmasked entries)
        scores = torch.einsum("bqhe,bkhe->bhqk", q0, k0) / math.sqrt(e)
        causal = torch.arange(model.cfg.n_ctx).view(1, -1) <= torch.tensor(qpos).view(-1, 1)
        assert torch.allclose(qk.pairs.sum((-1, -2)), scores * causal, atol=1e-4)
        q_removed, k_removed = [], []
        for node in qk.sources.tolist():
            _, _, out = frozen.remove(graph, node)
            q_removed.append(out[f"blocks.{l}.attn.hook_q"][:, qpos])
            k_removed.append(out[f"blocks.{l}.attn.hook_k"])
        for i in range(len(q_removed)):
            # removing source i on the query side only, then on the key side only
            dq = scores - torch.einsum("bqhe,bkhe->bhqk", q_removed[i], k0) / math.sqrt(e)
            dk = scores - torch.einsum("bqhe,bkhe->bhqk", q0, k_removed[i]) / math.sqrt(e)
            assert torch.allclose(qk.query_side()[..., i], dq * causal, atol=1e-4)
            assert torch.allclose(qk.key_side()[..., i], dk * causal, atol=1e-4)
        # a single pair: inclusion-exclusion of removing i on the query and j on the key side
        i, j = len(q_removed) - 1, 0
        both = torch.einsum("bqhe,bkhe->bhqk", q_removed[i], k_removed[j]) / math.sqrt(e)
        qi = torch.einsum("bqhe,bkhe->bhqk", q_removed[i], k0) / math.sqrt(e)
        kj = torch.einsum("bqhe,bkhe->bhqk", q0, k_removed[j]) / math.sqrt(e)
        assert torch.allclose(qk.pairs[..., i, j], (both - qi - kj + scores) * causal, atol=1e-4)
    if n_layers == 2:
        # layer 1's scores depend on layer-0 features: some pair involving a feature is nonzero
        qk1 = graph.qk[1]
        is_feat = qk1.sources < graph.n_feature_slots
        assert (qk1.pairs[..., :-1, :-1][..., is_feat, :].abs() > 1e-4).any()


# ------------------------------------------------------------------------------------------------
# a hand-planted circuit: token 1 anywhere -> feature 0 at '=' -> logit 3


def planted() -> tuple[Transformer, Transcoder]:
    """1 layer, no LayerNorm, d_model 8: tokens 0..3 and '=' (4) are basis vectors e_0..e_4.

    Attention (one head): the query reads '=' and the key reads token 1 with score ln 2, so at
    '=' a key holding token 1 gets weight 2/(2+1+1) = 1/2; values copy the residual. The MLP and
    the transcoder are identical ReLU maps: feature 0 = relu(3 x.e_1 - 0.5) writes 10 e_5,
    feature 1 = relu(3 x.e_3 - 0.5) writes 10 e_6; the unembedding reads e_5 as output 3 and e_6
    as output 0. For `1 2 =`: feature 0 = 3 * 1/2 - 0.5 = 1, logit 3 = 10, other logits 0.
    """
    cfg = ModelConfig(
        d_vocab=5, d_vocab_out=4, n_ctx=3, d_model=8, n_heads=1, d_head=8, d_mlp=2,
        answer_positions=(2,),
    )  # fmt: skip
    model = Transformer(cfg)
    eye = torch.eye(8)
    score = math.log(2.0)
    params = {n: torch.zeros_like(p) for n, p in model.tl_state_dict().items()}
    params["embed.W_E"][:, :5] = torch.eye(5)
    params["blocks.0.attn.W_Q"][0, 4, 0] = score * math.sqrt(8)
    params["blocks.0.attn.W_K"][0, 1, 0] = 1.0
    params["blocks.0.attn.W_V"][0] = eye
    params["blocks.0.attn.W_O"][0] = eye
    params["blocks.0.mlp.W_in"][1, 0] = 3.0
    params["blocks.0.mlp.W_in"][3, 1] = 3.0
    params["blocks.0.mlp.b_in"][:] = -0.5
    params["blocks.0.mlp.W_out"][0, 5] = 10.0
    params["blocks.0.mlp.W_out"][1, 6] = 10.0
    params["unembed.W_U"][5, 3] = 1.0
    params["unembed.W_U"][6, 0] = 1.0
    model.load_tl_state_dict(params)
    tc = Transcoder(
        TranscoderConfig(kind="per_layer", n_features=2, activation="relu", top_k=1), 1, 8
    )
    with torch.no_grad():
        tc.W_enc[0].copy_(params["blocks.0.mlp.W_in"])
        tc.b_enc[0].copy_(params["blocks.0.mlp.b_in"])
        tc.W_dec[0][0].copy_(params["blocks.0.mlp.W_out"])
        tc.b_dec.zero_()
    return model.eval(), tc.eval()


def test_planted_circuit_is_recovered_exactly():
    model, tc = planted()
    graph = attribute(model, tc, torch.tensor([[1, 2, 4], [3, 1, 4]]))
    kinds = graph.node_kinds
    tok = graph.token_start
    # prompt 0 (`1 2 =`): one active feature at '=' with activation 1
    f = graph.feature_mask[0].nonzero().flatten().tolist()
    assert [graph.features[0, i].tolist() for i in f] == [[0, 2, 0]]
    assert graph.activations[0, f[0]].item() == pytest.approx(1.0, abs=1e-6)
    # one logit target, output 3 (p = e^10 / (e^10 + 3))
    assert graph.logit_mask[0].sum() == 1
    logit = graph.logit_start + int(graph.logit_mask[0].nonzero()[0])
    assert graph.logit_tokens[0, logit - graph.logit_start] == 3
    expected = torch.zeros(graph.n_nodes, graph.n_nodes)
    expected[f[0], tok + 0] = 3 * 0.5  # token 1 at position 0, through attention weight 1/2
    # feature -> logit 3 through the demeaned unembedding: 1 * 10 * (1 - 1/4)
    expected[logit, f[0]] = 7.5
    assert torch.allclose(graph.adjacency[0], expected, atol=1e-5)
    assert graph.bias_part()[0, f[0]].item() == pytest.approx(-0.5, abs=1e-5)
    # the error nodes carry nothing: the transcoder is the MLP
    assert graph.adjacency[:, :, kinds == ERROR].abs().max() < 1e-6
    # pruning keeps exactly the circuit, and the scores are perfect
    result = prune_graph(graph)
    kept_edges = result.edge_mask[0].nonzero().tolist()
    assert sorted(kept_edges) == sorted([[f[0], tok], [logit, f[0]]])
    scores = scores_of(graph)
    assert scores.replacement[0].item() == pytest.approx(1.0)
    assert scores.completeness[0].item() == pytest.approx(1.0)
    # QK: the score of '=' on token 1 is the pair ('=' on the query side, token 1 on the key
    # side) and nothing else
    qk = graph.qk[0]
    assert qk.query_positions == (2,)
    pairs = qk.pairs[0, 0, 0]  # (key position, query source, key source)
    expected_pairs = torch.zeros_like(pairs)
    expected_pairs[0, 2, 0] = math.log(2.0)  # sources: tokens at positions 0, 1, 2, then bias
    assert torch.allclose(pairs, expected_pairs, atol=1e-6)
    # the same, by node id: '=' at position 2 on the query side, token 1 at 0 on the key side
    assert top_qk_pairs(graph, 0, top=1) == [
        {
            "layer": 0, "head": 0, "query_pos": 2, "key_pos": 0,
            "query_source": "E_4_2", "key_source": "E_1_0", "value": pytest.approx(math.log(2)),
        }
    ]  # fmt: skip
    # prompt 1 (`3 1 =`): attention 1/4, 1/2, 1/4, so feature 0 = 3/2 - 0.5 = 1 (through token
    # 1 at position 1) and feature 1 = 3/4 - 0.5 = 0.25 (token 3 at position 0); logits 10 and 2.5
    f1 = graph.feature_mask[1].nonzero().flatten().tolist()
    got = {graph.features[1, i, 2].item(): graph.activations[1, i].item() for i in f1}
    assert got == pytest.approx({0: 1.0, 1: 0.25}, abs=1e-6)
    assert graph.logit_mask[1].sum() == 1  # p(3) = e^10 / (e^10 + e^2.5 + 2) > 0.95


def test_planted_circuit_exports_circuit_tracer_json(tmp_path):
    from circuitlab.extraction.graph_json import write_graph_json

    model, tc = planted()
    graph = attribute(model, tc, torch.tensor([[1, 2, 4]]))
    names = ["0", "1", "2", "3", "="]
    data = to_circuit_tracer_json(graph, 0, slug="planted", token_names=names)
    ids = {n["node_id"] for n in data["nodes"]}
    assert {"0_0_2", "E_1_0", "2_3_2"} <= ids
    links = {(x["source"], x["target"]): x["weight"] for x in data["links"]}
    assert set(links) == {("E_1_0", "0_0_2"), ("0_0_2", "2_3_2")}
    assert links[("0_0_2", "2_3_2")] == pytest.approx(7.5, abs=1e-5)
    assert data["metadata"]["schema_version"] == 1
    assert data["metadata"]["prompt_tokens"] == ["1", "2", "="]
    path = write_graph_json(tmp_path / "planted.json", data)
    assert path.read_text().startswith("{")
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_inputs_give_clear_errors():
    model = random_model(1, False)
    tc = random_transcoder(model, "per_layer")
    with pytest.raises(AttributionError, match="batch_size"):
        AttributionConfig(batch_size=0)
    with pytest.raises(AttributionError, match="logit_probability"):
        AttributionConfig(logit_probability=1.5)
    other = Transcoder(TranscoderConfig(kind="per_layer", n_features=4, top_k=2), 2, 16)
    with pytest.raises(AttributionError, match="layers"):
        attribute(model, other, prompts(model, 2))
    with pytest.raises(ValueError, match="d_vocab"):
        attribute(model, tc, torch.full((2, 4), 99))
    with pytest.raises(AttributionError, match="QK pairs"):
        attribute(model, tc, prompts(model, 50), AttributionConfig(qk_max_gb=1e-9))
    assert attribute(model, tc, prompts(model, 50), AttributionConfig(qk=False)).qk == []
    with pytest.raises(AttributionError, match="0 rows"):
        attribute(model, tc, torch.zeros(0, 4, dtype=torch.long))


def test_attribution_runs_in_float32_inside_a_callers_bf16_autocast():
    # attribution switches autocast off: a caller's autocast (or a transcoder trained in bf16)
    # changes nothing, so the edges stay exact
    model = random_model(2, True, seed=5)
    tc = random_transcoder(model, "cross_layer", seed=1)
    tokens = prompts(model, 5)
    plain = attribute(model, tc, tokens, AttributionConfig(batch_size=3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = attribute(model, tc, tokens, AttributionConfig(batch_size=3))
    assert inside.adjacency.dtype == torch.float32
    assert torch.equal(inside.adjacency, plain.adjacency)
    assert torch.equal(inside.qk[1].pairs, plain.qk[1].pairs)
