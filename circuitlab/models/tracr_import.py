"""Importing tracr-compiled transformers, whose circuit is known by construction.

tracr (`tracr-pypi`, DeepMind's RASP compiler) turns a RASP program into transformer weights.
Because every attention head and MLP was written by the compiler for one RASP operation, these
models are ground truth for circuit discovery: this module converts their weights into
circuitlab's (TransformerLens) layout and records which heads and MLPs implement the program.

Layout facts relied on (tracr 1.0.0, `tracr/compiler/assemble.py` and `transformer/model.py`):

- tracr layer i is an attention sublayer then an MLP sublayer, exactly one circuitlab block.
  tracr already pads every layer to the largest head count, key size and MLP width with zero
  weights (and a sublayer the program does not use is all zeros), so padding is exact.
- Attention divides scores by sqrt(key_size) like ours by sqrt(d_head); with d_head = key_size
  nothing changes, and `_query_scale` keeps W_Q right should the two ever differ.
- There is no LayerNorm, the activation is ReLU and no position is masked (tracr's compiled
  model has no pad mask), so `causal=False` (or tracr's own `causal`) reproduces it.
- The input starts with the compiler's BOS token, an ordinary vocabulary entry here; token ids
  are those of `assembled.input_encoder`. Position 0 (BOS) has a zero position embedding.
- The output is read from the residual stream by a projection onto the sink's output subspace
  (tracr's `unembed`): that matrix becomes `unembed.W_U`, so argmax of our logits at positions
  1..n is tracr's decoded output. Numerical programs have one output dimension (the value).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from circuitlab.models.config import ModelConfig
from circuitlab.models.transformer import Transformer

if TYPE_CHECKING:
    from tracr.compiler.assemble import AssembledTransformerModel

# A component of the converted model: ("attn", layer, head) or ("mlp", layer).
CircuitNode = tuple[Any, ...]
CircuitEdge = tuple[CircuitNode, CircuitNode]


class TracrImportError(ValueError):
    """The compiled model uses a feature the conversion does not reproduce exactly."""


@dataclass(frozen=True)
class TracrCircuit:
    """The components a compiled RASP program uses, and how information flows between them.

    `nodes` holds ("attn", layer, head) and ("mlp", layer) in circuitlab's block numbering;
    every other head and MLP of the converted model is all zeros. `edges` are (src, dst) pairs
    read off the RASP graph: dst implements an operation one of whose operands src computes
    (Select and other weightless expressions are looked through), plus attention -> MLP inside
    a SelectorWidth. `input_nodes` read tokens or indices directly from the embedding and
    `output_nodes` write the program's output subspace. `labels` names the RASP expressions
    each component implements (one MLP layer may hold several) and `neurons` the MLP hidden
    units of each MLP expression, since tracr combines an MLP layer's expressions side by side.
    """

    nodes: frozenset[CircuitNode]
    edges: frozenset[CircuitEdge]
    input_nodes: frozenset[CircuitNode] = frozenset()
    output_nodes: frozenset[CircuitNode] = frozenset()
    labels: dict[CircuitNode, tuple[str, ...]] = field(default_factory=dict)
    neurons: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)

    @property
    def heads(self) -> frozenset[CircuitNode]:
        return frozenset(n for n in self.nodes if n[0] == "attn")

    @property
    def mlps(self) -> frozenset[CircuitNode]:
        return frozenset(n for n in self.nodes if n[0] == "mlp")


@dataclass
class TracrCompilation:
    """A compiled program with the compiler state the circuit is read from."""

    assembled: AssembledTransformerModel
    circuit: TracrCircuit
    program: Any  # the RASP SOp
    graph: Any  # networkx.DiGraph of RASP expressions annotated by the compiler
    craft_model: Any  # tracr.craft.transformers.SeriesWithResiduals


# ---------------------------------------------------------------------------------------------
# Weights


def is_categorical(assembled: AssembledTransformerModel) -> bool:
    """Whether the program's output is categorical (decoded by argmax) rather than numerical."""
    from tracr.transformer import encoder

    return isinstance(assembled.output_encoder, encoder.CategoricalEncoder)


def _unembed_matrix(assembled: AssembledTransformerModel, d_model: int) -> np.ndarray:
    """tracr's own residual -> output readout, (d_model, d_out), probed on the identity so it
    is whatever `unembed` does rather than a re-derivation of the output subspace."""
    import haiku as hk
    import jax.numpy as jnp

    def probe() -> Any:
        model = assembled.get_compiled_model()
        return model.unembed(jnp.eye(d_model), use_unembed_argmax=False)

    out = np.asarray(hk.without_apply_rng(hk.transform(probe)).apply(assembled.params))
    return out.reshape(d_model, -1)


# tracr divides attention scores by sqrt(key_size), circuitlab by sqrt(d_head): W_Q and b_Q are
# multiplied by sqrt(d_head) / sqrt(key_size), which is 1 as long as d_head == key_size.
def _query_scale(d_head: int, key_size: int) -> float:
    return math.sqrt(d_head) / math.sqrt(key_size)


def tracr_to_circuitlab(
    assembled: AssembledTransformerModel, dtype: torch.dtype = torch.float32
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A compiled tracr model as a circuitlab config and TransformerLens-named parameters.

    The function is unchanged: `Transformer(cfg).load_tl_state_dict(params)` gives, at every
    position, tracr's residual readout as logits (up to float rounding).
    """
    mc = assembled.model_config
    if mc.layer_norm:
        raise TracrImportError("tracr model has LayerNorm; compiled models never do")
    import jax

    if mc.activation_function is not jax.nn.relu:
        raise TracrImportError(f"tracr activation {mc.activation_function} is not ReLU")
    p = {
        k: {n: np.asarray(v, dtype=np.float64) for n, v in d.items()}
        for k, d in assembled.params.items()
    }
    w_e = p["token_embed"]["embeddings"]
    w_pos = p["pos_embed"]["embeddings"]
    d_vocab, d_model = w_e.shape
    n_heads, key_size, n_layers = mc.num_heads, mc.key_size, mc.num_layers
    d_mlp = mc.mlp_hidden_size
    w_u = _unembed_matrix(assembled, d_model)
    n_ctx = w_pos.shape[0]
    cfg = ModelConfig(
        d_vocab=d_vocab,
        d_vocab_out=w_u.shape[1],
        n_ctx=n_ctx,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=key_size,
        d_mlp=d_mlp,
        act_fn="relu",
        normalization=None,
        answer_positions=tuple(range(1, n_ctx)),
        causal=bool(mc.causal),
    )
    scale = _query_scale(cfg.d_head, key_size)

    def heads_in(w: np.ndarray) -> np.ndarray:  # (d_model, H*K) -> (H, d_model, K)
        return w.reshape(d_model, n_heads, key_size).transpose(1, 0, 2)

    out: dict[str, np.ndarray] = {"embed.W_E": w_e, "pos_embed.W_pos": w_pos}
    for layer in range(n_layers):
        t, b = f"transformer/layer_{layer}", f"blocks.{layer}"
        for ours, theirs, factor in (("Q", "query", scale), ("K", "key", 1.0), ("V", "value", 1.0)):
            out[f"{b}.attn.W_{ours}"] = heads_in(p[f"{t}/attn/{theirs}"]["w"]) * factor
            out[f"{b}.attn.b_{ours}"] = (
                p[f"{t}/attn/{theirs}"]["b"].reshape(n_heads, key_size) * factor
            )
        out[f"{b}.attn.W_O"] = p[f"{t}/attn/linear"]["w"].reshape(n_heads, key_size, d_model)
        out[f"{b}.attn.b_O"] = p[f"{t}/attn/linear"]["b"]
        out[f"{b}.mlp.W_in"] = p[f"{t}/mlp/linear_1"]["w"]
        out[f"{b}.mlp.b_in"] = p[f"{t}/mlp/linear_1"]["b"]
        out[f"{b}.mlp.W_out"] = p[f"{t}/mlp/linear_2"]["w"]
        out[f"{b}.mlp.b_out"] = p[f"{t}/mlp/linear_2"]["b"]
    out["unembed.W_U"] = w_u
    out["unembed.b_U"] = np.zeros(w_u.shape[1])
    params = {k: torch.tensor(v, dtype=dtype) for k, v in out.items()}
    return cfg, params


def load_tracr(
    assembled: AssembledTransformerModel, dtype: torch.dtype = torch.float32
) -> Transformer:
    """The compiled model as a circuitlab `Transformer` (in `dtype`; float64 for exactness)."""
    cfg, params = tracr_to_circuitlab(assembled, dtype)
    model = Transformer(cfg).to(dtype)
    model.load_tl_state_dict(params)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Inputs and outputs


def encode(
    assembled: AssembledTransformerModel,
    seqs: Iterable[Sequence[Any]],
    pad_to: int | None = None,
) -> torch.Tensor:
    """Token ids (B, 1 + n) of RASP inputs, each prefixed by the compiler's BOS.

    Inputs must be equally long unless `pad_to` is given: then they are right-padded with the
    compiler's PAD token to 1 + pad_to ids. Padding is for `tracr_readout` only, which masks
    it; circuitlab's model does not (tracr's compiled models are run unpadded).
    """
    enc = assembled.input_encoder
    rows = [enc.encode([enc.bos_token, *seq]) for seq in seqs]
    if pad_to is not None:
        rows = [row + [enc.pad_encoding] * (1 + pad_to - len(row)) for row in rows]
    return torch.tensor(rows, dtype=torch.long)


def decode(assembled: AssembledTransformerModel, logits: torch.Tensor) -> list[list[Any]]:
    """RASP output values from logits (B, n, O) at the non-BOS positions: argmax decoded by the
    output encoder for categorical programs, the single logit for numerical ones."""
    if is_categorical(assembled):
        ids = logits.argmax(-1).tolist()
        return [assembled.output_encoder.decode(row) for row in ids]
    return logits[..., 0].tolist()


def tracr_readout(assembled: AssembledTransformerModel, tokens: torch.Tensor) -> np.ndarray:
    """tracr's own output-space readout (B, S, O) for token ids (B, S): its compiled forward
    pass with the final argmax switched off, i.e. the values our logits must equal.

    If `tokens` contain the PAD id, the pass masks them as keys (tracr's `pad_token` mask, with
    -1e30 scores, so they get exactly zero attention): the outputs at real positions are then
    those of the unpadded input (up to float32 summation order), and inputs of many lengths
    share one compilation.
    """
    import haiku as hk
    import jax
    import jax.numpy as jnp

    pad = assembled.input_encoder.pad_encoding
    masked = pad is not None and bool((tokens == pad).any())

    def run(ids: Any) -> Any:
        model = assembled.get_compiled_model()
        model.use_unembed_argmax = False
        if masked:
            model.pad_token = pad
        return model(ids, use_dropout=False).unembedded_output

    # one XLA compilation of the whole pass per input shape, not one per operation
    fn = jax.jit(hk.without_apply_rng(hk.transform(run)).apply)
    out = np.asarray(fn(assembled.params, jnp.asarray(tokens.numpy())), dtype=np.float64)
    return out.reshape(*tokens.shape, -1)


# ---------------------------------------------------------------------------------------------
# Compilation that keeps the ground-truth circuit


def compile_with_circuit(
    program: Any,
    vocab: set[Any],
    max_seq_len: int,
    *,
    causal: bool = False,
    compiler_bos: str = "BOS",
    compiler_pad: str = "PAD",
    mlp_exactness: int = 100,
    fast_init: bool = True,
) -> TracrCompilation:
    """`compile_rasp_to_model`, step by step, keeping the graph and craft model it discards.

    The steps and arguments are those of `tracr.compiler.compiling.compile_rasp_to_model`
    (tracr 1.0.0); the circuit is then read from which craft block each RASP expression became.
    `fast_init` skips the random initialisation tracr's assembler draws and then overwrites
    (see `_zero_initializer`): the weights are identical and compiling is ~4x faster.
    """
    from tracr.compiler import (
        basis_inference,
        craft_graph_to_model,
        craft_model_to_transformer,
        expr_to_craft_graph,
        rasp_to_graph,
        validating,
    )
    from tracr.craft import bases
    from tracr.rasp import rasp

    for special in (compiler_bos, compiler_pad):
        if special in vocab:
            raise ValueError(f"compiler token {special!r} must not be in the vocabulary {vocab}")
    unsupported = validating.static_validate(program)
    if unsupported:
        reasons = "; ".join(f"{e.expr.name}: {e.reason}" for e in unsupported)
        raise NotImplementedError(f"tracr cannot compile this program: {reasons}")
    extracted = rasp_to_graph.extract_rasp_graph(program)
    graph, sources, sink = extracted.graph, extracted.sources, extracted.sink
    basis_inference.infer_bases(graph, sink, vocab, max_seq_len)
    expr_to_craft_graph.add_craft_components_to_rasp_graph(
        graph,
        bos_dir=bases.BasisDirection(rasp.tokens.label, compiler_bos),
        mlp_exactness=mlp_exactness,
    )
    craft_model = craft_graph_to_model.craft_graph_to_model(graph, sources)
    with _zero_initializer() if fast_init else contextlib.nullcontext():
        assembled = craft_model_to_transformer.craft_model_to_transformer(
            craft_model=craft_model,
            graph=graph,
            sink=sink,
            max_seq_len=max_seq_len,
            causal=causal,
            compiler_bos=compiler_bos,
            compiler_pad=compiler_pad,
        )
    circuit = circuit_from_craft(graph, sources, sink, craft_model)
    return TracrCompilation(assembled, circuit, program, graph, craft_model)


@contextlib.contextmanager
def _zero_initializer() -> Iterator[None]:
    """Make haiku's VarianceScaling initializer return zeros for the duration of the block.

    tracr's assembler builds its parameters with `forward.init`, whose weights are drawn with
    VarianceScaling (tracr/transformer/model.py) and then all set to zero and overwritten
    (`assemble_craft_model`); drawing them costs one XLA compilation per weight shape, ~2 s per
    program on CPU. Embeddings use their given matrices, not this initializer. Not thread-safe.
    """
    import haiku as hk

    cls = hk.initializers.VarianceScaling
    original = cls.__call__
    cls.__call__ = lambda self, shape, dtype: np.zeros(shape, dtype)  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.__call__ = original  # type: ignore[method-assign]


def _half_blocks(block: Any) -> list[Any]:
    """A graph node's craft block as sublayer blocks (SelectorWidth is attention then MLP)."""
    from tracr.craft import transformers

    if isinstance(block, transformers.SeriesWithResiduals):
        return [b for sub in block.blocks for b in _half_blocks(sub)]
    return [block]


def circuit_from_craft(graph: Any, sources: Any, sink: Any, craft_model: Any) -> TracrCircuit:
    """The circuit of a compiled program, from the RASP graph and the craft model built from it.

    Each expression's sublayers are placed as `craft_graph_to_model` places them (its layer
    allocation; a SelectorWidth fills an attention and the next MLP sublayer), the non-empty
    sublayers in order are the craft model's blocks, and tracr's assembler gives each block its
    layer. Within a layer, heads are found by identity (a layer's MultiAttentionHead wraps the
    expressions' heads, not copies) and MLP neurons by hidden basis direction (a layer's MLPs
    are combined side by side; hidden directions are unique within a layer, not across them).
    """
    from tracr.compiler import assemble, craft_graph_to_model, nodes
    from tracr.craft import transformers

    allocation = dict(craft_graph_to_model._allocate_modules_to_layers(graph, sources))
    halves_of: dict[Any, list[Any]] = {}
    used: set[int] = set()
    for node_id, first in allocation.items():
        block = graph.nodes[node_id].get(nodes.MODEL_BLOCK)
        if block is None or first < 0:
            continue
        halves_of[node_id] = _half_blocks(block)
        used.update(range(first, first + len(halves_of[node_id])))
    _, module_names = assemble._get_model_config_and_module_names(craft_model)
    if len(used) != len(craft_model.blocks):
        raise TracrImportError(
            f"{len(used)} sublayers allocated but the craft model has {len(craft_model.blocks)}"
        )
    # sublayer number -> (circuitlab layer, craft block)
    placed = {
        half: (int(name.split("/")[1].removeprefix("layer_")), block)
        for half, name, block in zip(sorted(used), module_names, craft_model.blocks, strict=True)
    }

    # per RASP expression: the components reading its operands and the ones writing its value
    reads: dict[Any, list[CircuitNode]] = {}
    writes: dict[Any, list[CircuitNode]] = {}
    edges: set[CircuitEdge] = set()
    labels: dict[CircuitNode, list[str]] = {}
    neurons: dict[str, tuple[int, tuple[int, ...]]] = {}
    for node_id, halves in halves_of.items():
        stages: list[list[CircuitNode]] = []
        for offset, half in enumerate(halves):
            layer, block = placed[allocation[node_id] + offset]
            if isinstance(half, transformers.MLP):
                if not isinstance(block, transformers.MLP):
                    raise TracrImportError(f"{node_id}: MLP placed in an attention sublayer")
                units = list(block.fst.output_space.basis)
                neurons[str(node_id)] = (
                    layer,
                    tuple(units.index(d) for d in half.fst.output_space.basis),
                )
                stages.append([("mlp", layer)])
            else:
                ids = [id(h) for h in block.as_multi().heads()]
                heads = half.as_multi().heads()
                stages.append([("attn", layer, ids.index(id(h))) for h in heads])
        for before, after in itertools.pairwise(stages):
            edges.update((a, b) for a in before for b in after)
        reads[node_id], writes[node_id] = stages[0], stages[-1]
        for comp in (c for stage in stages for c in stage):
            labels.setdefault(comp, []).append(str(node_id))

    def producers(node_id: Any, seen: set[Any]) -> tuple[set[Any], bool]:
        """Expressions with weights that `node_id` reads, looking through weightless ones
        (Select, tokens, indices); and whether the embedding is read directly."""
        found, from_input = set(), False
        for pred in graph.predecessors(node_id):
            if pred in seen:
                continue
            seen.add(pred)
            if pred in writes:
                found.add(pred)
            elif not any(True for _ in graph.predecessors(pred)):
                from_input = True  # a source: tokens or indices
            else:
                more, inp = producers(pred, seen)
                found |= more
                from_input |= inp
        return found, from_input

    input_nodes: set[CircuitNode] = set()
    for node_id, targets in reads.items():
        found, from_input = producers(node_id, set())
        for src in found:
            edges.update((a, b) for a in writes[src] for b in targets)
        if from_input:
            input_nodes.update(targets)
    output_nodes = set(writes.get(sink[nodes.ID], []))
    all_nodes = frozenset(labels)
    return TracrCircuit(
        nodes=all_nodes,
        edges=frozenset(edges),
        input_nodes=frozenset(input_nodes),
        output_nodes=frozenset(output_nodes),
        labels={k: tuple(v) for k, v in labels.items()},
        neurons=neurons,
    )


def nonzero_components(params: dict[str, torch.Tensor], cfg: ModelConfig) -> set[CircuitNode]:
    """Heads and MLPs of converted weights with any non-zero parameter: what a compiled
    program's circuit must equal, since tracr leaves every unused component at zero."""
    found: set[CircuitNode] = set()
    for layer in range(cfg.n_layers):
        a = f"blocks.{layer}.attn"
        for h in range(cfg.n_heads):
            if any(params[f"{a}.{w}"][h].abs().max() > 0 for w in ("W_Q", "W_K", "W_V", "W_O")):
                found.add(("attn", layer, h))
        m = f"blocks.{layer}.mlp"
        if any(params[f"{m}.{w}"].abs().max() > 0 for w in ("W_in", "b_in", "W_out", "b_out")):
            found.add(("mlp", layer))
    return found
