"""Attribution graphs in the local replacement model, exact and batched over prompts.

Method (Ameisen et al. 2025, "Circuit tracing"; circuit-tracer), with one difference in how it
is computed: circuit-tracer runs backward passes per batch of nodes and one prompt at a time;
small models let us write the Jacobians of the frozen linear paths as explicit einsums and run
them over hundreds of prompts at once.

1. Run the real model once and keep what the local replacement model freezes: attention
   patterns, LayerNorm scales, and every layer's MLP input and output.
2. Encode each MLP input with the transcoder: feature activations, reconstructions, and error
   nodes e_t = MLP_out_t - reconstruction_t, so the replacement model reproduces the real
   forward exactly. Logit targets per answer position: the smallest top-k reaching 95%
   probability (at most 10), each read through its demeaned unembedding column.
3. With patterns and scales frozen and every MLP output held at reconstruction + error, the
   residual stream is linear in what the nodes write into it: token embeddings (with positional
   embeddings) into x_0, and each feature's decoders and each error of layer t into x_{t+1}.
4. Readers (a feature's encoder direction through the frozen LayerNorm, a logit's demeaned
   unembedding through the frozen final LayerNorm) are pulled back layer by layer through the
   frozen attention (the exact Jacobian, by einsums over heads and positions) to every residual
   site. Edge (source -> reader) = the source's written vector . the reader's pulled-back
   direction at the source's site and position. A feature's pre-activation is the sum of its
   in-edges plus the part carried by biases; likewise a logit target's demeaned logit.
5. QK attribution (beyond circuit-tracer): the residual at attention layer l is the sum of the
   nodes' vectors pushed forward through the frozen earlier layers plus a bias part, and the
   query and key vectors are linear in it (LayerNorm scales frozen), so every attention score
   splits exactly into (query source, key source) pair terms (`QKAttribution`).

Phases: "features" (forward and encode every chunk of prompts, which fixes one padded node
layout for all of them), then "edges" (edges and QK pairs chunk by chunk). `AttributionStream`
yields the second phase's chunks one at a time, so a task's graphs are aggregated in memory
bounded by one chunk (about batch * nodes^2 floats), whatever the number of prompts;
`attribute` keeps them all. On the grokked p = 113 model (512 features, ~82 active per prompt)
all 12,769 graphs take ~7-12 s on one thread, against ~0.14 s per prompt for circuit-tracer
(benchmarks/bench_attribution.py). The math lives in attribution_frozen.py (weights, the
frozen forward pass, the layout) and attribution_edges.py (edges, QK pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from circuitlab._memory import check_fits
from circuitlab._precision import fp32_only
from circuitlab.extraction.activations import check_tokens
from circuitlab.extraction.attribution_edges import chunk_graph, qk_query_positions, qk_sources
from circuitlab.extraction.attribution_frozen import (
    TOKEN_TABLE_LIMIT,
    AttributionError,
    Frozen,
    Layout,
    chunk_layout,
    freeze,
    frozen_weights,
    merge_layouts,
)
from circuitlab.extraction.graph import AttributionGraph, concat_graphs
from circuitlab.extraction.transcoder import Transcoder
from circuitlab.models import ModelConfig, Transformer

# The first phase's forward passes are kept for the second when they take at most this many
# bytes and both phases use the same chunks; otherwise they are run again, which costs little
# next to the edges.
FREEZE_CACHE = 256 * 2**20
DEFAULT_BATCH = 256  # prompts per chunk at most when AttributionConfig.batch_size is None


@dataclass(frozen=True)
class AttributionConfig:
    """How graphs are built. Defaults are circuit-tracer's."""

    max_logits: int = 10  # logit targets per answer position, at most
    logit_probability: float = 0.95  # smallest top-k whose probabilities reach this
    # prompts per chunk of the edge computation; None = as many as fit in `chunk_bytes` (at
    # most DEFAULT_BATCH): a chunk's memory grows with batch * nodes^2 and nodes with the task
    batch_size: int | None = None
    chunk_bytes: int = 512 * 2**20  # working memory of one chunk when batch_size is None
    qk: bool = True  # also attribute attention scores (memory ~ prompts * heads * sources^2)
    # `attribute` refuses QK pairs larger than this (use AttributionStream or qk=False instead)
    qk_max_gb: float = 2.0
    # torch threads while attributing (restored afterwards); 0 keeps the current setting. The
    # products are small: on a busy 2-core machine a second thread made the whole p = 113 run
    # 10x slower (measured, thread-pool contention), so one is the default.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.max_logits < 1:
            raise AttributionError(f"max_logits must be >= 1, got {self.max_logits}")
        if not 0.0 < self.logit_probability <= 1.0:
            raise AttributionError(
                f"logit_probability must be in (0, 1], got {self.logit_probability}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise AttributionError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.chunk_bytes < 1:
            raise AttributionError(f"chunk_bytes must be >= 1, got {self.chunk_bytes}")
        if self.threads < 0:
            raise AttributionError(f"threads must be >= 0 (0 = unchanged), got {self.threads}")


def prompt_bytes(layout: Layout, cfg: ModelConfig, n_features: int, qk: bool) -> int:
    """Working memory of one prompt in a chunk of the second phase, in bytes: its adjacency
    with what scoring and aggregating it take (a normalised copy, masks and indices: 6x in
    all), its frozen forward pass, the readers' gradients pulled back through the layers, and
    its QK pairs. Conservative: the largest temporaries are counted as if alive together
    (measured on a 5x5 grid model, 461 nodes: 3.4-4 MB per prompt, this says 6.3)."""
    N, S, L = layout.n_nodes, layout.n_pos, layout.n_layers
    D, H, E = cfg.d_model, cfg.n_heads, cfg.d_head
    readers = layout.n_features + layout.n_logits
    frozen = S * (3 * L * n_features + 4 * L * D + 2 * L * H * S + cfg.d_vocab_out)
    tables = n_features * H * cfg.n_ctx * cfg.d_vocab <= TOKEN_TABLE_LIMIT
    # one layer with token tables: each reader's token edges are looked up, (H, S) values;
    # otherwise gradients are carried back through the layers, (S, D + 2 H E) per reader
    pulled = 3 * readers * (H * S if L == 1 and tables else S * (D + 2 * H * E))
    pairs = 0
    if qk:
        for l in range(L):
            n_src = len(qk_sources(layout, l)) + 1
            n_query = len(qk_query_positions(cfg, l, S))
            pairs += 2 * H * n_query * S * n_src**2 + 3 * n_src * S * (D + H * E)
    return 4 * (6 * N * N + frozen + pulled + pairs)


class AttributionStream:
    """The attribution graphs of many prompts in one node layout, one chunk at a time.

    Creating it runs the first phase over every prompt: the forward pass and encoding, which
    fix the layout (the most active features per layer, the most logit targets per answer
    position). Iterating runs the second phase and yields the graphs of `batch` consecutive
    prompts at a time, in order; only the chunk being yielded is held. `progress(phase, done,
    total)` is called after each chunk of either phase.
    """

    @torch.no_grad()
    def __init__(
        self,
        model: Transformer,
        transcoder: Transcoder,
        tokens: Tensor,
        config: AttributionConfig | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        self.config = config = config or AttributionConfig()
        self.model, self.transcoder, self.progress = model, transcoder, progress
        self._kind = _check(model, transcoder)
        self.tokens = check_tokens(model, tokens)
        n = self.tokens.shape[0]
        if n == 0:
            raise AttributionError("no prompts to attribute: tokens has 0 rows")
        answers = tuple(model.cfg.answer_positions)
        first = min(config.batch_size or DEFAULT_BATCH, n)
        layouts = []
        self._frozen: list[Frozen | None] | None = []
        with _eval_mode(model, config.threads):
            for i, lo in enumerate(range(0, n, first)):
                fr = freeze(model, transcoder, self.tokens[lo : lo + first], want_qk=config.qk)
                layouts.append(chunk_layout(fr, config, answers))
                # every prompt's pass has the same size: the first chunk tells whether all fit
                if i == 0 and fr.nbytes() * n > FREEZE_CACHE * fr.tokens.shape[0]:
                    self._frozen = None
                if self._frozen is not None:
                    self._frozen.append(fr)
                del fr
                if progress:
                    progress("features", i + 1, -(-n // first))
        self.layout = merge_layouts(layouts)
        per_prompt = self.prompt_bytes()
        fit = max(1, min(DEFAULT_BATCH, config.chunk_bytes // per_prompt))
        self.batch = min(config.batch_size or fit, n)
        if self._frozen is None or self.batch != first:
            self._frozen = []  # kept only when the second phase reuses every chunk as it is

    @property
    def n_prompts(self) -> int:
        return int(self.tokens.shape[0])

    def prompt_bytes(self) -> int:
        """Working memory of one prompt of a chunk (see `prompt_bytes`)."""
        return prompt_bytes(self.layout, self.model.cfg, self.transcoder.n_features, self.config.qk)

    def chunk_bytes(self) -> int:
        """Working memory of the second phase: one chunk, plus the first phase's kept passes."""
        kept = sum(fr.nbytes() for fr in self._frozen if fr is not None)
        return self.batch * self.prompt_bytes() + kept

    def graph_bytes(self, n_prompts: int) -> int:
        """Memory of the finished graphs of `n_prompts` prompts (what `attribute` returns)."""
        N = self.layout.n_nodes
        per_prompt = 4 * N * N + 40 * self.layout.n_features + 20 * self.layout.n_logits
        if self.config.qk:
            per_prompt += 4 * sum(
                self.model.cfg.n_heads
                * len(qk_query_positions(self.model.cfg, l, self.layout.n_pos))
                * self.layout.n_pos
                * (len(qk_sources(self.layout, l)) + 1) ** 2
                for l in range(self.layout.n_layers)
            )
        return n_prompts * per_prompt

    def __iter__(self) -> Iterator[AttributionGraph]:
        return self.graphs()

    def graphs(self, adjacency: Tensor | None = None) -> Iterator[AttributionGraph]:
        """The chunks' graphs in order; with `adjacency` (n_prompts, N, N) of zeros, each chunk
        writes its adjacency into its rows there instead of a new tensor."""
        model, config, n = self.model, self.config, self.n_prompts
        with fp32_only():
            weights = frozen_weights(model, self.transcoder)
        chunks = -(-n // self.batch)
        for i, lo in enumerate(range(0, n, self.batch)):
            sl = slice(lo, min(lo + self.batch, n))
            # threads and eval mode only while computing, not while the caller holds the chunk
            with torch.no_grad(), _eval_mode(model, config.threads):
                fr = self._take(i) or freeze(model, self.transcoder, self.tokens[sl], config.qk)
                out = None if adjacency is None else adjacency[sl]
                graph = chunk_graph(fr, self.layout, weights, self._kind, config, model.cfg, out)
                del fr
            if self.progress:
                self.progress("edges", i + 1, chunks)
            yield graph
            del graph  # not held while the next chunk is computed

    def _take(self, i: int) -> Frozen | None:
        if i >= len(self._frozen):
            return None
        fr, self._frozen[i] = self._frozen[i], None
        return fr


def _check(model: Transformer, transcoder: Transcoder) -> str:
    cfg = model.cfg
    if not cfg.d_mlp:
        raise AttributionError("the model has no MLPs (d_mlp=0): there are no features")
    if transcoder.n_layers != cfg.n_layers or transcoder.d_model != cfg.d_model:
        raise AttributionError(
            f"transcoder has {transcoder.n_layers} layers of d_model {transcoder.d_model}, the "
            f"model {cfg.n_layers} of {cfg.d_model}"
        )
    kind = transcoder.cfg.kind
    if kind not in ("per_layer", "cross_layer"):
        raise AttributionError(f"unknown transcoder kind {kind!r}")
    return kind


@torch.no_grad()
def attribute(
    model: Transformer,
    transcoder: Transcoder,
    tokens: Tensor,
    config: AttributionConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> AttributionGraph:
    """Attribution graphs of every prompt in `tokens` (B, S), in one padded layout, all held at
    once: refused (MemoryBudgetError) when they would not fit in memory; aggregate over an
    `AttributionStream` instead. `progress(phase, done, total)` is called after each chunk.
    """
    stream = AttributionStream(model, transcoder, tokens, config, progress)
    n = stream.n_prompts
    if stream.config.qk:
        _check_qk_size(stream.layout, model.cfg, n, stream.config.qk_max_gb)
    check_fits(
        stream.graph_bytes(n) + stream.chunk_bytes(),
        f"attribution graphs of {n:,} prompts ({stream.layout.n_nodes:,} nodes each)",
        "aggregate them chunk by chunk over an AttributionStream instead of `attribute`",
    )
    adjacency = torch.zeros(n, stream.layout.n_nodes, stream.layout.n_nodes)
    return concat_graphs(list(stream.graphs(adjacency)), adjacency)


def _check_qk_size(layout: Layout, cfg, n_prompts: int, max_gb: float) -> None:
    """QK pairs grow with the square of the sources per layer: refuse what will not fit."""
    size = 0
    for l in range(layout.n_layers):
        n_src = len(qk_sources(layout, l)) + 1
        n_query = len(qk_query_positions(cfg, l, layout.n_pos))
        size += n_prompts * cfg.n_heads * n_query * layout.n_pos * n_src**2
    gb = 4 * size / 1e9
    if gb > max_gb:
        raise AttributionError(
            f"QK pairs of {n_prompts} prompts would take {gb:.1f} GB (qk_max_gb={max_gb}): "
            "attribute fewer prompts at a time (AttributionStream) or set qk=False"
        )


@contextmanager
def _eval_mode(model: Transformer, threads: int = 0) -> Iterator[None]:
    """Eval mode, `threads` torch threads and autocast off (attribution and its exactness are
    float32, also for a transcoder trained in bf16) for the duration of the block."""
    was_training, before = model.training, torch.get_num_threads()
    model.eval()
    if threads:
        torch.set_num_threads(threads)
    try:
        with fp32_only():
            yield
    finally:
        model.train(was_training)
        torch.set_num_threads(before)
