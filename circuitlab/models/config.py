"""ModelConfig: the architecture of a circuitlab transformer, saved into every run directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from circuitlab import _fields

ACTIVATIONS = ("relu", "gelu")
NORMALIZATIONS = ("LN", None)
ATTENTION_BACKENDS = ("auto", "explicit", "sdpa", "flash")
# Sizes a config may name (inclusive). The upper bounds are far past anything this toolkit
# trains; they exist so that a typo (n_layers: 1000000000) is refused before any allocation.
SIZE_LIMITS = {
    "d_vocab": (1, 1_000_000),
    "d_vocab_out": (1, 1_000_000),
    "n_ctx": (1, 65_536),
    "n_layers": (1, 256),
    "d_model": (1, 65_536),
    "n_heads": (1, 1_024),
    "d_head": (1, 8_192),
    "d_mlp": (0, 262_144),  # 0 = attention only
}


class ModelConfigError(ValueError):
    """An architecture parameter is out of range; the message names it and what is allowed."""


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer. Defaults are Nanda et al. 2023's modular-addition model."""

    d_vocab: int = 114  # input tokens (p numbers and '=')
    d_vocab_out: int = 113  # output tokens (the answer never needs '=')
    n_ctx: int = 3
    n_layers: int = 1
    d_model: int = 128
    n_heads: int = 4
    d_head: int = 32
    d_mlp: int = 512
    act_fn: Literal["relu", "gelu"] = "relu"
    normalization: Literal["LN"] | None = None  # Nanda's model has no LayerNorm
    # Positions whose logits are trained and read. The last block computes queries, MLP and
    # unembedding only there, so for `a b =` tasks it does a third of the work.
    answer_positions: tuple[int, ...] = (2,)
    # Standard deviation of every weight matrix at init is init_scale / sqrt(fan_in).
    init_scale: float = 1.0
    attention_backend: Literal["auto", "explicit", "sdpa", "flash"] = "auto"
    # False: every position attends to every position (bidirectional, as in TransformerLens's
    # attention_dir="bidirectional"); imported models may need it.
    causal: bool = True

    def __post_init__(self) -> None:
        for name, (lo, hi) in SIZE_LIMITS.items():
            value = _fields.integer(name, getattr(self, name), ModelConfigError, lo, hi)
            object.__setattr__(self, name, value)
        init = _fields.number("init_scale", self.init_scale, ModelConfigError, 0.0, lo_open=True)
        object.__setattr__(self, "init_scale", init)
        if self.act_fn not in ACTIVATIONS:
            raise ModelConfigError(f"act_fn must be one of {ACTIVATIONS}, got {self.act_fn!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ModelConfigError(
                f"normalization must be 'LN' or None, got {self.normalization!r}"
            )
        if not isinstance(self.causal, bool):
            raise ModelConfigError(f"causal must be true or false, got {self.causal!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ModelConfigError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, "
                f"got {self.attention_backend!r}"
            )
        if isinstance(self.answer_positions, (str, bytes)) or not hasattr(
            self.answer_positions, "__iter__"
        ):
            raise ModelConfigError(
                f"answer_positions must be a list of positions, got {self.answer_positions!r}"
            )
        positions = tuple(
            _fields.integer("answer_positions", p, ModelConfigError, 0, self.n_ctx - 1)
            for p in self.answer_positions
        )
        if not positions or any(not 0 <= p < self.n_ctx for p in positions):
            raise ModelConfigError(
                f"answer_positions must be non-empty and within [0, n_ctx={self.n_ctx}), "
                f"got {positions}"
            )
        object.__setattr__(self, "answer_positions", positions)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["answer_positions"] = list(self.answer_positions)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ModelConfigError(f"a model config is a mapping of fields, got {data!r:.80}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelConfigError(f"unknown model config fields: {sorted(map(str, unknown))}")
        return cls(**data)

    @classmethod
    def for_task(cls, task: Any, **overrides: Any) -> ModelConfig:
        """A config whose vocabularies, context and answer positions fit `task`.

        Overrides may change the architecture, but never make the model unable to read the
        task: a smaller vocabulary or context is refused with the task's numbers.
        """
        fitted = {
            "d_vocab": task.d_vocab,
            "d_vocab_out": task.d_vocab_out,
            "n_ctx": task.n_ctx,
            "answer_positions": tuple(task.answer_positions),
        }
        for name in ("d_vocab", "d_vocab_out", "n_ctx"):
            if (
                name in overrides
                and _fields.integer(name, overrides[name], ModelConfigError, 1) < fitted[name]
            ):
                raise ModelConfigError(
                    f"{name}={overrides[name]} is too small for task {task.spec} "
                    f"(it needs {fitted[name]})"
                )
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelConfigError(
                f"unknown model fields: {sorted(map(str, unknown))}; "
                f"known: {', '.join(cls.__dataclass_fields__)}"
            )
        cfg = cls(**(fitted | overrides))
        if cfg.answer_positions != fitted["answer_positions"]:
            raise ModelConfigError(
                f"answer_positions {cfg.answer_positions} differ from task {task.spec}'s "
                f"{fitted['answer_positions']}"
            )
        return cfg

    @property
    def n_params(self) -> int:
        d, h, dh, f = self.d_model, self.n_heads, self.d_head, self.d_mlp
        per_layer = 4 * h * d * dh + 3 * h * dh + d + 2 * d * f + f + d
        if self.normalization:
            per_layer += 4 * d
        total = self.d_vocab * d + self.n_ctx * d + self.n_layers * per_layer
        total += d * self.d_vocab_out + self.d_vocab_out + (2 * d if self.normalization else 0)
        return total
