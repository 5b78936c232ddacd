"""tracr-compiled models imported into circuitlab: the converted transformer computes tracr's
function on every input of a small space, and the recorded circuit is exactly the set of
components the compiler wrote. Each program is compiled, converted and run once (cached)."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("tracr")

from circuitlab.models import ModelConfig, Transformer  # noqa: E402
from circuitlab.models import tracr_import as ti  # noqa: E402
from circuitlab.models import tracr_programs as tp  # noqa: E402

ATOL = 1e-5  # tracr runs in float32; its readouts reach ~5
TIE = 1e-3  # a smaller top-2 gap in tracr's readout would make argmax arbitrary


@dataclass
class Run:
    """One program compiled, converted and evaluated on every input of its small space."""

    comp: ti.TracrCompilation
    cfg: ModelConfig
    params: dict[str, torch.Tensor]
    model: Transformer
    seqs: dict[int, list[tuple[Any, ...]]]  # length -> every input of that length
    ours: dict[int, np.ndarray]  # length -> our logits (B, 1 + n, O)
    ref: dict[int, np.ndarray]  # length -> tracr's readout (B, 1 + n, O)


@functools.cache
def run(name: str) -> Run:
    comp = tp.compile_full(name)
    cfg, params = ti.tracr_to_circuitlab(comp.assembled)
    model = Transformer(cfg)
    model.load_tl_state_dict(params)
    spec = tp.SUITE[name]
    tokens = sorted(spec.vocab, key=repr)
    seqs = {  # the whole space, in the program's domain or not
        n: list(itertools.product(tokens, repeat=n))
        for n in range(spec.min_len, spec.max_seq_len + 1)
    }
    # tracr's readout in one call (PAD masked, one compilation); ours unpadded, length by length
    flat = [s for group in seqs.values() for s in group]
    ref_all = ti.tracr_readout(comp.assembled, ti.encode(comp.assembled, flat, spec.max_seq_len))
    ours, ref, start = {}, {}, 0
    for n, group in seqs.items():
        with torch.no_grad():
            ids = ti.encode(comp.assembled, group)
            ours[n] = model(ids, answers_only=False).double().numpy()
        ref[n] = ref_all[start : start + len(group), : n + 1]
        start += len(group)
    return Run(comp, cfg, params, model, seqs, ours, ref)


@pytest.mark.parametrize("name", tp.PROGRAMS)
def test_logits_equal_tracr_readout_on_every_input(name):
    r = run(name)
    for n, group in r.seqs.items():
        assert r.ours[n].shape == r.ref[n].shape == (len(group), n + 1, r.cfg.d_vocab_out)
        diff = np.abs(r.ours[n] - r.ref[n]).max()
        assert diff <= ATOL, f"{name}, length {n}: max |logit diff| {diff:.3g}"


@pytest.mark.parametrize("name", tp.PROGRAMS)
def test_outputs_equal_tracr_and_rasp_at_every_defined_position(name):
    """Categorical: no near-ties in tracr's readout, our argmax is tracr's, and decoded it is
    what RASP itself evaluates. Numerical: the single logit is RASP's value."""
    from tracr.rasp import rasp

    r, spec = run(name), tp.SUITE[name]
    assembled, program = r.comp.assembled, r.comp.program
    assert ti.is_categorical(assembled) == spec.categorical
    checked = 0
    for n, group in r.seqs.items():
        keep = [i for i, s in enumerate(group) if spec.domain(s)]
        at = slice(1 + spec.undefined_prefix, None)  # BOS and undefined outputs left out
        ours, ref = r.ours[n][keep, at], r.ref[n][keep, at]
        decoded = ti.decode(assembled, torch.from_numpy(ours))
        expected = [rasp.evaluate(program, list(group[i]))[spec.undefined_prefix :] for i in keep]
        if spec.categorical:
            top2 = np.sort(ref, -1)[..., -2:]
            assert (top2[..., 1] - top2[..., 0] > TIE).all(), f"{name}: tie in tracr's output"
            assert (ours.argmax(-1) == ref.argmax(-1)).all()
            assert decoded == expected
        else:
            np.testing.assert_allclose(decoded, expected, atol=1e-3)
        checked += len(keep)
    assert checked > 0


@pytest.mark.parametrize("name", tp.PROGRAMS)
def test_config_is_the_compiled_architecture(name):
    r = run(name)
    cfg, mc = r.cfg, r.comp.assembled.model_config
    assert (cfg.causal, cfg.normalization, cfg.act_fn) == (False, None, "relu")
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head) == (mc.num_layers, mc.num_heads, mc.key_size)
    assert cfg.d_mlp == mc.mlp_hidden_size
    assert cfg.answer_positions == tuple(range(1, tp.SUITE[name].max_seq_len + 1))
    assert cfg.d_vocab == r.comp.assembled.input_encoder.vocab_size  # BOS and PAD included
    # answer-position logits of full-length inputs are the all-position logits after BOS
    n = tp.SUITE[name].max_seq_len
    ids = ti.encode(r.comp.assembled, r.seqs[n][:7])
    with torch.no_grad():
        torch.testing.assert_close(r.model(ids), r.model(ids, answers_only=False)[:, 1:])
        # and the float64 load computes the same function
        wide = ti.load_tracr(r.comp.assembled, torch.float64)(ids, answers_only=False)
        np.testing.assert_allclose(wide.numpy(), r.ours[n][:7], atol=ATOL)


@pytest.mark.parametrize("name", tp.PROGRAMS)
def test_circuit_is_the_nonzero_components(name):
    r = run(name)
    circuit = r.comp.circuit
    assert circuit.nodes, f"{name}: empty ground-truth circuit"
    assert set(circuit.nodes) == ti.nonzero_components(r.params, r.cfg)
    assert circuit.output_nodes and circuit.output_nodes <= circuit.nodes
    assert circuit.input_nodes and circuit.input_nodes <= circuit.nodes

    def order(node: tuple) -> tuple[int, int]:  # attention before the MLP of the same block
        return (node[1], 0 if node[0] == "attn" else 1)

    for src, dst in circuit.edges:
        assert src in circuit.nodes and dst in circuit.nodes
        assert order(src) < order(dst), f"{name}: edge {src} -> {dst} runs backwards"
    targets = {dst for _, dst in circuit.edges}
    sources = {src for src, _ in circuit.edges}
    for node in circuit.nodes:  # every component is fed by the input or another component,
        assert node in circuit.input_nodes or node in targets, (name, node)
        # and everything computed is used (these programs have no dead code)
        assert node in circuit.output_nodes or node in sources, (name, node)
        assert circuit.labels[node]
    for label, (layer, units) in circuit.neurons.items():
        assert ("mlp", layer) in circuit.nodes and units, label
        assert max(units) < r.cfg.d_mlp


def test_suite_has_enough_programs_and_known_circuits():
    assert len(tp.PROGRAMS) >= 8
    with pytest.raises(KeyError, match="unknown tracr program"):
        tp.compile_program("no_such_program")
    # a SelectorWidth is one head then the MLP of the same block: hist is exactly that
    _, circuit = tp.compile_program("hist")
    assert circuit.nodes == {("attn", 0, 0), ("mlp", 0)}
    assert circuit.edges == {(("attn", 0, 0), ("mlp", 0))}
    # sort: keys made unique (MLP 0), the SelectorWidth target position (head 1.0 + MLP 1),
    # then the head moving each token to its place
    _, circuit = tp.compile_program("sort")
    assert circuit.nodes == {("mlp", 0), ("attn", 1, 0), ("mlp", 1), ("attn", 2, 0)}
    assert circuit.output_nodes == {("attn", 2, 0)}
    assert (("mlp", 1), ("attn", 2, 0)) in circuit.edges


def test_stepwise_compile_gives_tracr_compilers_weights():
    """`compile_with_circuit` (with its skipped random init) and tracr's own
    `compile_rasp_to_model` give identical weights and decoded outputs."""
    from tracr.compiler import compiling

    comp = tp.compile_full("sort")
    theirs = compiling.compile_rasp_to_model(
        comp.program, vocab={1, 2, 3}, max_seq_len=4, compiler_bos="BOS", compiler_pad="PAD"
    )
    assert theirs.residual_labels == comp.assembled.residual_labels
    assert set(theirs.params) == set(comp.assembled.params)
    for module, leaves in theirs.params.items():
        for leaf, value in leaves.items():
            np.testing.assert_array_equal(value, comp.assembled.params[module][leaf])
    seq = [3, 1, 2, 1]
    ours = run("sort").model(ti.encode(comp.assembled, [seq]), answers_only=False)
    assert ti.decode(comp.assembled, ours[:, 1:])[0] == theirs.apply(["BOS", *seq]).decoded[1:]


def test_attention_scores_equal_tracrs():
    """Same scores head by head, so the 1/sqrt(d_head) scaling is tracr's 1/sqrt(key_size)."""
    r = run("sort")
    seq = (2, 1, 3, 1)
    out = r.comp.assembled.apply(["BOS", *seq])
    ids = ti.encode(r.comp.assembled, [seq])
    with torch.no_grad():
        _, cache = r.model.run_with_cache(ids)
    for layer, logits in enumerate(out.attn_logits):
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"].double().numpy()
        np.testing.assert_allclose(scores, np.asarray(logits), atol=1e-4, rtol=1e-6)


def test_padded_readout_equals_unpadded():
    """The suite reads tracr's outputs for all lengths in one padded call; PAD keys are masked,
    so the real positions are those of the unpadded inputs (up to float32 summation order)."""
    r = run("sort_freq")
    group = r.seqs[2]
    alone = ti.tracr_readout(r.comp.assembled, ti.encode(r.comp.assembled, group))
    np.testing.assert_allclose(alone, r.ref[2], rtol=1e-6, atol=1e-7)
