"""Task and Dataset: the contract between tasks and everything to their right.

Every task is a fixed-length token sequence problem. The model reads `inputs` (n, n_ctx) and is
scored only at `answer_positions` (the same positions for every example of a task), where the
targets are tokens of a separate output vocabulary. Binary operations read `a b =` and answer at
the `=` position; grid tasks read the input grid followed by one query token per output cell and
answer at every query position. Knowing the answer positions lets the model skip the MLP and
unembedding everywhere else, which is most of the cost on these tiny sequences.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class TaskError(ValueError):
    """A task spec or parameter a user gave is invalid; the message says what is allowed."""


@dataclass(frozen=True)
class Dataset:
    """Examples of one task as integer arrays (numpy, so tasks need no torch).

    inputs:  (n, n_ctx) int64 input tokens
    targets: (n, n_answers) int64 output tokens, one per answer position
    """

    inputs: np.ndarray
    targets: np.ndarray

    def __post_init__(self) -> None:
        if self.inputs.ndim != 2 or self.targets.ndim != 2:
            raise TaskError("Dataset arrays must be 2-D: inputs (n, n_ctx), targets (n, n_answers)")
        if len(self.inputs) != len(self.targets):
            raise TaskError(
                f"inputs has {len(self.inputs)} rows but targets has {len(self.targets)}"
            )

    def __len__(self) -> int:
        return len(self.inputs)

    def subset(self, index: np.ndarray) -> Dataset:
        return Dataset(self.inputs[index], self.targets[index])


@dataclass(frozen=True)
class Split:
    """A deterministic train/validation split: indices into the task's full dataset."""

    train: Dataset
    val: Dataset
    train_index: np.ndarray
    val_index: np.ndarray


class Task(ABC):
    """An algorithmic task named by a spec string such as `add_mod_113` or `s5_compose`."""

    spec: str
    d_vocab: int  # input vocabulary size
    d_vocab_out: int  # output vocabulary size
    n_ctx: int  # sequence length
    answer_positions: tuple[int, ...]

    @abstractmethod
    def dataset(self) -> Dataset:
        """All examples (or a fixed, seeded sample when the space is too large to enumerate)."""

    def token_names(self) -> list[str]:
        """Human-readable names of the input tokens, index = token id."""
        return [str(i) for i in range(self.d_vocab)]

    def output_names(self) -> list[str]:
        return [str(i) for i in range(self.d_vocab_out)]

    def describe(self) -> str:
        return self.spec

    def split(self, train_fraction: float, seed: int) -> Split:
        """Shuffle with `seed` and take the first `train_fraction` of examples for training."""
        if not 0.0 < train_fraction <= 1.0:
            raise TaskError(f"train fraction must be in (0, 1], got {train_fraction}")
        data = self.dataset()
        order = np.random.default_rng(seed).permutation(len(data))
        n_train = max(1, int(round(train_fraction * len(data))))
        train_index, val_index = np.sort(order[:n_train]), np.sort(order[n_train:])
        return Split(data.subset(train_index), data.subset(val_index), train_index, val_index)


# --- registry -------------------------------------------------------------------------------
# A family is a regex over spec strings plus a factory; the first family whose pattern matches
# builds the task. Families refuse duplicate names so a plugin cannot silently shadow a built-in.

TaskFactory = Callable[[re.Match[str]], Task]


@dataclass(frozen=True)
class TaskFamily:
    name: str
    pattern: re.Pattern[str]
    factory: TaskFactory
    example: str  # a valid spec, shown by `circuitlab tasks`
    summary: str


_FAMILIES: dict[str, TaskFamily] = {}


def register_family(name: str, pattern: str, example: str, summary: str):
    """Decorator: register a factory building tasks whose spec fully matches `pattern`."""

    def wrap(factory: TaskFactory) -> TaskFactory:
        if name in _FAMILIES:
            raise TaskError(f"task family {name!r} is already registered")
        _FAMILIES[name] = TaskFamily(name, re.compile(pattern), factory, example, summary)
        return factory

    return wrap


def families() -> list[TaskFamily]:
    return list(_FAMILIES.values())


def get_task(spec: str) -> Task:
    """Build the task named by `spec`; a clear TaskError names the known forms otherwise."""
    for family in _FAMILIES.values():
        match = family.pattern.fullmatch(spec)
        if match:
            return family.factory(match)
    examples = ", ".join(f.example for f in _FAMILIES.values())
    raise TaskError(
        f"unknown task {spec!r}; known forms include: {examples} (see `circuitlab tasks`)"
    )
