"""A suite of small RASP programs compiled by tracr: models whose circuits are known exactly.

Most come from `tracr.compiler.lib` (the programs of the RASP and tracr papers); `double_hist`,
`min_token` and `max_token` are written here. Vocabularies and lengths are kept small so that
every input can be enumerated when checking a conversion or scoring a circuit-discovery method.

Each program also names its domain: `sort_unique` is only defined on inputs without repeated
tokens (with repeats its aggregate averages several values and the argmax is a tie), and
`detect_pattern` leaves its first output undefined (None in RASP).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from circuitlab.models.tracr_import import TracrCircuit, TracrCompilation, compile_with_circuit


def _all_inputs(seq: Sequence[Any]) -> bool:
    return True


def _distinct(seq: Sequence[Any]) -> bool:
    return len(set(seq)) == len(seq)


@dataclass(frozen=True)
class TracrProgram:
    """A RASP program builder with the vocabulary and length it is compiled for by default."""

    name: str
    build: Callable[[frozenset[Any], int], Any]  # (vocab, max_seq_len) -> RASP SOp
    vocab: frozenset[Any]
    max_seq_len: int
    categorical: bool
    domain: Callable[[Sequence[Any]], bool] = _all_inputs
    min_len: int = 1
    # leading output positions the program leaves undefined (None in RASP): the compiled model
    # writes nothing there, so its argmax is an arbitrary tie
    undefined_prefix: int = 0
    description: str = ""


def _lib() -> Any:
    from tracr.compiler import lib

    return lib


def _rasp() -> Any:
    from tracr.rasp import rasp

    return rasp


def _length(vocab: frozenset[Any], n: int) -> Any:
    return _lib().make_length()


def _reverse(vocab: frozenset[Any], n: int) -> Any:
    return _lib().make_reverse(_rasp().tokens)


def _hist(vocab: frozenset[Any], n: int) -> Any:
    return _lib().make_hist()


def _sort(vocab: frozenset[Any], n: int) -> Any:
    rasp = _rasp()
    return _lib().make_sort(rasp.tokens, rasp.tokens, max_seq_len=n, min_key=1)


def _sort_unique(vocab: frozenset[Any], n: int) -> Any:
    rasp = _rasp()
    return _lib().make_sort_unique(rasp.tokens, rasp.tokens)


def _sort_freq(vocab: frozenset[Any], n: int) -> Any:
    return _lib().make_sort_freq(max_seq_len=n)


def _frac_prevs(vocab: frozenset[Any], n: int) -> Any:
    rasp = _rasp()
    first = min(vocab)
    return _lib().make_frac_prevs(rasp.tokens == first)


def _pair_balance(vocab: frozenset[Any], n: int) -> Any:
    return _lib().make_pair_balance(_rasp().tokens, "(", ")")


def _shuffle_dyck(vocab: frozenset[Any], n: int) -> Any:
    return _lib().make_shuffle_dyck(pairs=["()"])


def _shuffle_dyck2(vocab: frozenset[Any], n: int) -> Any:
    return _lib().make_shuffle_dyck2()


def _count_less_freq(vocab: frozenset[Any], n: int) -> Any:
    return _lib().make_count_less_freq(2)


def _detect_pattern(vocab: frozenset[Any], n: int) -> Any:
    a, b = sorted(vocab)[:2]
    return _lib().detect_pattern(_rasp().tokens, [a, b])


def _double_hist(vocab: frozenset[Any], n: int) -> Any:
    """How many positions hold a token exactly as frequent as this one (a histogram of the
    histogram): two SelectorWidths in series, so a two-layer circuit."""
    rasp = _rasp()
    hist = _lib().make_hist()
    same = rasp.Select(hist, hist, rasp.Comparison.EQ).named("same_freq")
    return rasp.SelectorWidth(same).named("double_hist")


def _extreme(largest: bool) -> Any:
    """The smallest (largest) token at every position: count the tokens beating each token,
    mark the positions none beat, and average the tokens there (all equal, so categorical)."""
    rasp = _rasp()
    cmp = rasp.Comparison.GT if largest else rasp.Comparison.LT
    name = "max" if largest else "min"
    beaten = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, cmp)).named(f"{name}_rank")
    is_best = rasp.Map(lambda r: r == 0, beaten).named(f"is_{name}")
    pick = rasp.Select(is_best, rasp.tokens, lambda key, query: key).named(f"select_{name}")
    return rasp.Aggregate(pick, rasp.tokens).named(f"{name}_token")


def _min_token(vocab: frozenset[Any], n: int) -> Any:
    return _extreme(largest=False)


def _max_token(vocab: frozenset[Any], n: int) -> Any:
    return _extreme(largest=True)


_DIGITS = frozenset({1, 2, 3})
_PARENS = frozenset({"(", ")"})

SUITE: dict[str, TracrProgram] = {
    p.name: p
    for p in (
        TracrProgram("length", _length, _DIGITS, 4, True, description="sequence length"),
        TracrProgram("reverse", _reverse, _DIGITS, 4, True, description="tokens reversed"),
        TracrProgram("hist", _hist, _DIGITS, 4, True, description="count of own token"),
        TracrProgram("sort", _sort, _DIGITS, 4, True, description="sort, ties by position"),
        TracrProgram(
            "sort_unique",
            _sort_unique,
            frozenset({1, 2, 3, 4}),
            4,
            True,
            domain=_distinct,
            description="sort of distinct tokens",
        ),
        TracrProgram("sort_freq", _sort_freq, _DIGITS, 4, True, description="sort by frequency"),
        TracrProgram(
            "frac_prevs",
            _frac_prevs,
            _DIGITS,
            4,
            False,
            description="fraction of tokens so far equal to the smallest token (numerical)",
        ),
        TracrProgram(
            "pair_balance",
            _pair_balance,
            _PARENS,
            5,
            False,
            description="(opens - closes) / length so far (numerical)",
        ),
        TracrProgram(
            # an even length: at an odd one no full-length input is balanced and the task's
            # answer would be constant
            "shuffle_dyck",
            _shuffle_dyck,
            _PARENS,
            6,
            True,
            description="balanced parentheses",
        ),
        TracrProgram(
            "count_less_freq",
            _count_less_freq,
            _DIGITS,
            4,
            True,
            description="positions whose token occurs at most twice",
        ),
        TracrProgram(
            "detect_pattern",
            _detect_pattern,
            _DIGITS,
            4,
            True,
            undefined_prefix=1,
            description="pattern `1 2` ends here",
        ),
        TracrProgram("double_hist", _double_hist, _DIGITS, 4, True, description="hist of hist"),
        TracrProgram("min_token", _min_token, _DIGITS, 4, True, description="smallest token"),
        TracrProgram("max_token", _max_token, _DIGITS, 4, True, description="largest token"),
    )
}
PROGRAMS: tuple[str, ...] = tuple(SUITE)


def compile_full(
    name: str, vocab: set[Any] | frozenset[Any] | None = None, max_seq_len: int | None = None
) -> TracrCompilation:
    """Compile a suite program (default vocabulary and length unless given), keeping the RASP
    graph and craft model alongside the weights and circuit."""
    if name not in SUITE:
        raise KeyError(f"unknown tracr program {name!r}; known: {', '.join(PROGRAMS)}")
    spec = SUITE[name]
    vocab = frozenset(spec.vocab if vocab is None else vocab)
    n = spec.max_seq_len if max_seq_len is None else int(max_seq_len)
    return compile_with_circuit(spec.build(vocab, n), set(vocab), n)


def compile_program(
    name: str, vocab: set[Any] | frozenset[Any] | None = None, max_seq_len: int | None = None
) -> tuple[Any, TracrCircuit]:
    """(tracr AssembledTransformerModel, its ground-truth TracrCircuit) for a suite program."""
    comp = compile_full(name, vocab, max_seq_len)
    return comp.assembled, comp.circuit


def all_inputs(
    name: str, vocab: set[Any] | frozenset[Any] | None = None, max_seq_len: int | None = None
) -> Iterator[tuple[Any, ...]]:
    """Every input of the program's domain, shortest first (without BOS)."""
    spec = SUITE[name]
    tokens = sorted(spec.vocab if vocab is None else vocab, key=repr)
    n = spec.max_seq_len if max_seq_len is None else int(max_seq_len)
    for length in range(spec.min_len, n + 1):
        for seq in itertools.product(tokens, repeat=length):
            if spec.domain(seq):
                yield seq
