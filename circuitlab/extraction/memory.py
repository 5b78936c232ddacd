"""Extraction's peak memory, estimated before it starts and checked against the machine's.

A run that exhausts memory dies after minutes of work (or takes the machine with it); the
estimate costs nothing. It counts the large tensors of each phase, on top of what earlier phases
still hold, plus the interpreter's baseline:

  activations  MLP inputs and outputs of every input, at the positions that matter
  transcoder   those activations, the parameters with gradients and Adam state, one batch
  attribution  one chunk of graphs (the chunk size adapts to `AttributionConfig.chunk_bytes`
               unless a batch size is given) and the running totals (aggregate.py)
  circuit      every input's feature activations and errors (the ablation reference), one
               forward batch with ablation hooks
  interpret    the reference with the Fourier analysis (modular tasks), then the interface's
               boundary statistics

The size of an attribution graph depends on how many features fire per position, unknown until
the transcoder is trained: the estimate assumes ASSUMED_ACTIVE per position (the benchmark
models fire 12-16; a layout's width is the most on any input), and `check_attribution` checks
again with the real layout before the edges are computed.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from dataclasses import dataclass
from typing import TYPE_CHECKING

from circuitlab._memory import check_fits, format_bytes
from circuitlab.extraction.activations import layer_positions
from circuitlab.extraction.aggregate import GraphTotals
from circuitlab.extraction.attribution import (
    DEFAULT_BATCH,
    FREEZE_CACHE,
    AttributionStream,
    prompt_bytes,
)
from circuitlab.extraction.attribution_frozen import Layout
from circuitlab.models import ModelConfig

if TYPE_CHECKING:
    from circuitlab.extraction.pipeline import ExtractConfig

BASE = 450 * 2**20  # interpreter, torch, numpy, matplotlib and the model (measured ~300 MiB)
ASSUMED_ACTIVE = 48  # features per position an attribution layout is assumed to hold
FORWARD_BATCH = 4096  # inputs per forward pass at most (activations, evaluation, ablations)
# ... and as many as take at most this many bytes: run_with_cache holds ~2.3x a plain pass
# (measured on a 5x5 grid model: 4,096 inputs of 50 tokens took 1.7 GB)
FORWARD_BYTES = 256 * 2**20
FOURIER_CHUNK = 8 * 2**20  # bytes of a chunk temporary (fourier.py, boundary.py)
BOUNDARY_INPUTS = 20_000  # inputs the interface's boundary statistics use at most


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated bytes at the peak of each phase (what it holds with what earlier phases hold)."""

    base: int
    phases: dict[str, int]

    @property
    def peak(self) -> int:
        return self.base + max(self.phases.values())

    @property
    def largest(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)


def _forward_bytes(cfg: ModelConfig, seq: int, n: int) -> int:
    """Activations alive at once in an answers-only forward pass over `n` inputs: the residual
    stream and the largest of one layer's attention scores, queries/keys/values or MLP hidden
    (the last layer runs at the answer positions only), then the logits and their softmax."""
    S, Q, D, H, E = seq, len(cfg.answer_positions), cfg.d_model, cfg.n_heads, cfg.d_head
    widest = 0
    for layer in range(cfg.n_layers):
        P = Q if layer == cfg.n_layers - 1 else S  # query / MLP positions
        widest = max(
            widest, S * D + 2 * P * D + max(2 * H * P * S, (P + 2 * S) * H * E, 2 * P * cfg.d_mlp)
        )
    return 4 * n * (widest + 3 * Q * cfg.d_vocab_out)


def forward_batch(cfg: ModelConfig, seq: int) -> int:
    """Inputs per forward pass: FORWARD_BATCH, fewer when a pass over them would take more than
    FORWARD_BYTES (long sequences: a grid task's 50 tokens)."""
    per_input = 3 * _forward_bytes(cfg, seq, 1)
    return max(1, min(FORWARD_BATCH, FORWARD_BYTES // per_input))


def _assumed_layout(cfg: ModelConfig, seq: int, n_features: int, max_logits: int) -> Layout:
    """A layout with ASSUMED_ACTIVE features per position that can reach an answer."""
    widths = [len(p) * min(n_features, ASSUMED_ACTIVE) for p in layer_positions(cfg, seq)]
    logits = [min(max_logits, cfg.d_vocab_out)] * len(cfg.answer_positions)
    offsets = lambda counts: tuple(sum(counts[:i]) for i in range(len(counts) + 1))  # noqa: E731
    answers = tuple(cfg.answer_positions)
    return Layout(offsets(widths), offsets(logits), answers, cfg.n_layers, seq)


def estimate_extraction(
    cfg: ModelConfig, task, config: ExtractConfig, n_inputs: int | None = None
) -> MemoryEstimate:
    """The estimated peak of `extract` on all of `task`'s inputs (or `n_inputs` of them)."""
    n = len(task.dataset().inputs) if n_inputs is None else n_inputs
    seq, L, D, M, O = task.n_ctx, cfg.n_layers, cfg.d_model, cfg.d_mlp, cfg.d_vocab_out
    tc, attr = config.transcoder, config.attribution
    F = tc.n_features
    rows = sum(len(p) for p in layer_positions(cfg, seq))  # MLP rows per input, all layers
    batch = min(n, forward_batch(cfg, seq))
    forward = 3 * _forward_bytes(cfg, seq, batch)
    activations = 4 * n * rows * D * 2  # MLP inputs and outputs
    decoders = L * (L + 1) // 2 if tc.kind == "cross_layer" else L
    params = 4 * (L * D * F + decoders * F * D + 3 * L * F + L * D)
    step_rows = min(n, tc.batch_size) * rows
    # a training step (activations, pre-activations, their gradients, the sparsity terms) and
    # the normalisation's temporaries, one layer's activations at a time
    train = 4 * step_rows * (8 * F + (4 + L) * D) + activations // (2 * L)
    evaluation = 4 * batch * rows * (3 * F + 2 * D) + forward
    layout = _assumed_layout(cfg, seq, F, attr.max_logits)
    per_prompt = prompt_bytes(layout, cfg, F, attr.qk)
    chunk = per_prompt * (attr.batch_size or min(DEFAULT_BATCH, n))
    if attr.batch_size is None:
        chunk = max(per_prompt, min(chunk, attr.chunk_bytes))
    totals = GraphTotals.nbytes(cfg, F, seq, n)
    reference = 4 * n * rows * (F + D)
    ablations = 4 * batch * rows * (5 * F + 2 * D) + forward
    fourier = 0
    if getattr(task, "p", None) is not None and seq == 3:  # modular: fourier_fits.analyze
        # the last MLP's activations, a copy as a grid, their projection, the logits
        temporary = min(FOURIER_CHUNK, 8 * n * max(M, O))  # a float64 chunk of those
        fourier = 4 * n * (4 * M + 2 * O) + 10 * temporary + forward
    answers = min(n, BOUNDARY_INPUTS) * len(cfg.answer_positions)
    # every read and write site's vectors in float32, float64 chunks of them (boundary.py)
    boundary = answers * D * 8 * L + 3 * min(FOURIER_CHUNK, 8 * answers * D) + forward
    phases = {
        "activations": activations + forward,
        "transcoder": activations + 4 * params + max(train, evaluation),
        "attribution": params + totals + chunk + FREEZE_CACHE,
        "circuit": params + totals + reference + ablations,
        "interpret": params + max(reference + fourier, boundary),
    }
    return MemoryEstimate(BASE, phases)


def release() -> None:
    """Give the memory a finished phase freed back to the system. glibc keeps freed blocks
    under 32 MiB on its heap, so without this each phase's peak stacked on the leftovers of
    the last (a 5x5 grid extraction: 0.2-0.5 GB per phase); elsewhere this only collects."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _remedy(config: ExtractConfig, largest: str, batch: int | None = None) -> str:
    """The flag that lowers the phase's memory, or what to do when none does."""
    features = f"--features (transcoder features per layer, now {config.transcoder.n_features})"
    if largest == "attribution":
        now = batch if batch is not None else config.attribution.batch_size or "auto"
        return f"lower --batch-size (prompts per attribution chunk, now {now}) or {features}"
    if largest in ("transcoder", "circuit"):
        return f"lower {features}"
    return (
        "no extraction setting lowers this phase (it grows with the task's inputs and the "
        "model's width): free memory, or raise CIRCUITLAB_MEMORY_LIMIT if the estimate is "
        "too cautious"
    )


def check_extraction(cfg: ModelConfig, task, config: ExtractConfig) -> MemoryEstimate:
    """The estimate, or MemoryBudgetError naming it and the flag that lowers it."""
    est = estimate_extraction(cfg, task, config)
    check_fits(
        est.peak,
        f"extracting a circuit of {task.spec} (largest phase: {est.largest})",
        _remedy(config, est.largest),
    )
    return est


def check_attribution(stream: AttributionStream, cfg: ModelConfig, config: ExtractConfig) -> None:
    """Check attribution again with the layout the trained transcoder gives. What the process
    already holds is no longer available, so only what attribution adds is counted."""
    totals = GraphTotals.nbytes(cfg, stream.transcoder.n_features, stream.layout.n_pos, 0)
    check_fits(
        stream.chunk_bytes() + totals,
        f"attribution ({stream.layout.n_nodes:,} nodes per graph, {stream.batch:,} graphs "
        f"per chunk of {format_bytes(stream.chunk_bytes())})",
        _remedy(config, "attribution", stream.batch),
    )
