"""`tracr_PROGRAM` tasks: the RASP programs of `models.tracr_programs` as classification tasks.

Each input is the compiler's BOS followed by every sequence of the program's full length in
its domain (vocabulary {1, 2, 3} and 4 tokens for most), with the token ids of tracr's input
encoder; the answers are the program's outputs (`rasp.evaluate`, in the output encoder's ids)
at every position it defines. So a compiled model imported with `circuitlab import
tracr:PROGRAM` answers all of them, and `extract` finds its circuit, whose ground truth is
known. Categorical programs only; building a task compiles the program (the `tracr` extra).
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import Any

import numpy as np

from circuitlab.tasks.base import Dataset, Task, TaskError, register_family


@functools.lru_cache(maxsize=32)
def compiled(program: str) -> Any:
    """The program's `TracrCompilation` (compiled once per process)."""
    try:
        from circuitlab.models.tracr_programs import SUITE, compile_full
    except ImportError as exc:
        raise TaskError(
            f"tracr tasks need the tracr extra: pip install 'circuitlab[tracr]' ({exc})"
        ) from None
    if program not in SUITE:
        raise TaskError(f"unknown tracr program {program!r}; known: {', '.join(SUITE)}")
    if not SUITE[program].categorical:
        raise TaskError(
            f"tracr program {program!r} outputs a number, not a class; categorical ones: "
            + ", ".join(p for p, s in SUITE.items() if s.categorical)
        )
    return compile_full(program)


class TracrTask(Task):
    def __init__(self, program: str) -> None:
        from circuitlab.models.tracr_programs import SUITE

        comp = compiled(program)
        self.program, self.spec = program, f"tracr_{program}"
        self._suite = SUITE[program]
        self._input = comp.assembled.input_encoder.encoding_map
        self._output = comp.assembled.output_encoder.encoding_map
        n = self._suite.max_seq_len
        self.d_vocab, self.d_vocab_out, self.n_ctx = len(self._input), len(self._output), n + 1
        self.answer_positions = tuple(range(1 + self._suite.undefined_prefix, n + 1))

    def dataset(self) -> Dataset:
        from tracr.rasp import rasp

        comp, n = compiled(self.program), self._suite.max_seq_len
        bos = self._input[comp.assembled.input_encoder.bos_token]
        seqs = [
            s
            for s in itertools.product(sorted(self._suite.vocab, key=repr), repeat=n)
            if self._suite.domain(s)
        ]
        inputs = np.array([[bos, *(self._input[t] for t in s)] for s in seqs], dtype=np.int64)
        skip = self._suite.undefined_prefix
        targets = np.array(
            [[self._output[v] for v in rasp.evaluate(comp.program, list(s))[skip:]] for s in seqs],
            dtype=np.int64,
        )
        return Dataset(inputs, targets)

    def token_names(self) -> list[str]:
        return [str(t) for t, _ in sorted(self._input.items(), key=lambda kv: kv[1])]

    def output_names(self) -> list[str]:
        return [str(t) for t, _ in sorted(self._output.items(), key=lambda kv: kv[1])]

    def describe(self) -> str:
        return f"{self.spec}: {self._suite.description} (tracr-compiled RASP, ground truth known)"


@register_family(
    "tracr",
    r"tracr_(?P<program>[a-z_]+)",
    "tracr_sort",
    "a tracr-compiled RASP program (sort, reverse, hist, ...; the tracr extra)",
)
def _tracr(match: re.Match[str]) -> Task:
    return TracrTask(match["program"])
