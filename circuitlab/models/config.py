"""ModelConfig: the architecture of a circuitlab transformer, saved into every run directory."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

ACTIVATIONS = ("relu", "gelu")
NORMALIZATIONS = ("LN", None)
ATTENTION_BACKENDS = ("auto", "explicit", "sdpa", "flash")


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

    def __post_init__(self) -> None:
        for name in ("d_vocab", "d_vocab_out", "n_ctx", "n_layers", "d_model", "n_heads", "d_head"):
            if int(getattr(self, name)) < 1:
                raise ModelConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_mlp < 0:
            raise ModelConfigError(f"d_mlp must be >= 0 (0 = attention only), got {self.d_mlp}")
        if self.act_fn not in ACTIVATIONS:
            raise ModelConfigError(f"act_fn must be one of {ACTIVATIONS}, got {self.act_fn!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ModelConfigError(
                f"normalization must be 'LN' or None, got {self.normalization!r}"
            )
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ModelConfigError(
                f"attention_backend must be one of {ATTENTION_BACKENDS}, "
                f"got {self.attention_backend!r}"
            )
        positions = tuple(int(p) for p in self.answer_positions)
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
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ModelConfigError(f"unknown model config fields: {sorted(unknown)}")
        values = dict(data)
        if "answer_positions" in values:
            values["answer_positions"] = tuple(values["answer_positions"])
        return cls(**values)

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
            if name in overrides and int(overrides[name]) < fitted[name]:
                raise ModelConfigError(
                    f"{name}={overrides[name]} is too small for task {task.spec} "
                    f"(it needs {fitted[name]})"
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
