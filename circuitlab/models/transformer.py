"""`Transformer`: an nn.Module around the functional core, with TransformerLens-named hooks."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from circuitlab.models import functional
from circuitlab.models.config import ModelConfig
from circuitlab.models.hooks import ActivationCache, HookFn, HookPoint

if TYPE_CHECKING:
    import numpy as np

NameFilter = str | Callable[[str], bool]


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated or does not match its config."""


class WeightTable(nn.Module):
    """The model's parameters, read once per forward pass by calling the table.

    The functional core takes parameters as a dict of tensors, so no projection is an
    `nn.Linear` a LoRA library could wrap. Reading them through this module's `forward` is the
    one place a parametrization applies: peft's `target_parameters` (`lora.ParamWrapper`) wraps
    this module and substitutes `W + scale * B @ A` for the duration of the call, and the
    tensors it returns carry the adapter into the ordinary forward pass, hooks included.
    """

    def __init__(self) -> None:
        super().__init__()
        self._keys: list[str] = []

    def __setitem__(self, key: str, value: nn.Parameter) -> None:
        self.register_parameter(key, value)
        self._keys.append(key)

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)  # a parametrized attribute reads as W + delta

    def keys(self) -> list[str]:
        return list(self._keys)

    def forward(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Key -> parameter as it reads now; `tokens` only gives peft's wrapper an input."""
        return {key: getattr(self, key) for key in self._keys}


def unwrapped(module: nn.Module) -> nn.Module:
    """The module under any peft wrappers (`base_layer` chains)."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


class Transformer(nn.Module):
    """A decoder-only transformer for algorithmic tasks.

    Parameters live under TransformerLens names (`blocks.0.mlp.W_in`, ...) and every activation
    passes a `HookPoint` of the TransformerLens name. `forward` returns logits only at the
    task's answer positions unless `answers_only=False`.
    """

    def __init__(self, cfg: ModelConfig, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.weights = WeightTable()
        self._param_names: dict[str, str] = {}  # TL name -> WeightTable key (no dots allowed)
        for name, tensor in functional.init_params(cfg, seed).items():
            key = name.replace(".", "__")
            self.weights[key] = nn.Parameter(tensor)
            self._param_names[name] = key
        self.hook_points = nn.ModuleDict()
        self._hook_by_name: dict[str, HookPoint] = {}
        for name in functional.hook_names(cfg):
            point = HookPoint()
            point.name = name
            self.hook_points[name.replace(".", "__")] = point
            self._hook_by_name[name] = point

    # --- parameters under their TransformerLens names ----------------------------------------
    @property
    def _params(self) -> WeightTable:
        """The stored parameters (under a peft wrapper, the base weights without the adapter)."""
        return unwrapped(self.weights)

    @staticmethod
    def weight_key(name: str) -> str:
        """The module path of a parameter given its TransformerLens name: what peft's
        `target_parameters` names (`blocks.0.mlp.W_in` -> `weights.blocks__0__mlp__W_in`)."""
        return "weights." + name.replace(".", "__")

    def tl_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: self._params[key] for name, key in self._param_names.items()}

    def load_tl_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self._param_names)
        if set(state) != expected:
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise CheckpointError(
                f"checkpoint does not match config: missing {missing[:5]}, unexpected {extra[:5]}"
            )
        with torch.no_grad():
            for name, key in self._param_names.items():
                if state[name].shape != self._params[key].shape:
                    raise CheckpointError(
                        f"checkpoint tensor {name} has shape {tuple(state[name].shape)}, "
                        f"config expects {tuple(self._params[key].shape)}"
                    )
                self._params[key].copy_(state[name])

    def param(self, name: str) -> torch.Tensor:
        return self._params[self._param_names[name]]

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        return dict(self._hook_by_name)

    # --- forward -------------------------------------------------------------------------
    def forward(
        self,
        tokens: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
        *,
        answers_only: bool = True,
    ) -> torch.Tensor:
        """tokens (B, S) -> logits (B, Q, O) at answer positions, or (B, S, O) for all.

        `tokens` may be a tensor, a numpy integer array (such as `task.dataset().inputs`) or
        nested lists of ints.
        """
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ValueError(f"sequence length {tokens.shape[-1]} exceeds n_ctx={self.cfg.n_ctx}")
        active = {n: p for n, p in self._hook_by_name.items() if p.active}
        need_pattern = any(n.endswith(("hook_pattern", "hook_attn_scores")) for n in active)
        backend = functional.resolve_backend(self.cfg, tokens.device, need_pattern)
        hook = None
        if active:

            def hook(name: str, x: torch.Tensor) -> torch.Tensor:
                point = active.get(name)
                return x if point is None else point(x[0]).unsqueeze(0)

        table = self.weights(tokens)  # read through any adapter wrapped around the table
        params = {name: table[key].unsqueeze(0) for name, key in self._param_names.items()}
        logits = functional.forward(
            params,
            self.cfg,
            tokens.unsqueeze(0),
            answers_only=answers_only,
            hook=hook,
            backend=backend,
        )
        return logits[0]

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[NameFilter, HookFn]]) -> Iterator[Transformer]:
        """Add `(name or predicate, hook)` pairs for the duration of the block."""
        added: list[tuple[HookPoint, HookFn]] = []
        try:
            for name_filter, fn in fwd_hooks:
                matched = [
                    p
                    for n, p in self._hook_by_name.items()
                    if (name_filter(n) if callable(name_filter) else n == name_filter)
                ]
                if not matched:
                    raise KeyError(f"no hook point matches {name_filter!r}; see model.hook_dict")
                for point in matched:
                    point._hooks.append(fn)
                    added.append((point, fn))
            yield self
        finally:
            for point, fn in added:
                point._hooks.remove(fn)

    def run_with_cache(
        self,
        tokens: torch.Tensor | np.ndarray | Sequence[Sequence[int]],
        names: NameFilter | None = None,
        *,
        answers_only: bool = False,
    ) -> tuple[torch.Tensor, ActivationCache]:
        """Logits and the activations (all hook points, or those `names` selects), keyed by
        hook name and by TransformerLens's short forms (`cache["pattern", 0]`)."""
        cache = ActivationCache()

        def save(x: torch.Tensor, name: str) -> None:
            cache[name] = x.detach()

        selector: NameFilter = names if names is not None else (lambda n: True)
        with self.hooks([(selector, save)]):
            logits = self(tokens, answers_only=answers_only)
        return logits, cache

    # --- persistence: safetensors weights + JSON config ------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        state = {n: t.detach().contiguous().cpu() for n, t in self.tl_state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "circuitlab"})
        (directory / "model_config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))

    @classmethod
    def load(cls, weights: str | Path, cfg: ModelConfig) -> Transformer:
        weights = Path(weights)
        if not weights.is_file():
            raise CheckpointError(f"no checkpoint at {weights}")
        _check_header(weights, cfg)  # before allocating: a config may name a huge model
        try:
            state = load_file(str(weights))
        except Exception as exc:  # safetensors raises several types for truncated files
            raise CheckpointError(f"cannot read checkpoint {weights}: {exc}") from None
        for name, tensor in state.items():
            if not torch.isfinite(tensor).all():
                raise CheckpointError(
                    f"checkpoint {weights} has NaN or infinite values in {name}: the run "
                    f"diverged or the file is damaged; retrain it (e.g. with a lower lr)"
                )
        model = cls(cfg)
        model.load_tl_state_dict(state)
        return model


_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def _check_header(weights: Path, cfg: ModelConfig) -> None:
    """Names, shapes and dtypes of a checkpoint against its config, read from the safetensors
    header alone (no tensor is loaded or allocated)."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
            header = {k: (tuple(t.get_shape()), t.get_dtype()) for k, t in slices.items()}
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise CheckpointError(f"cannot read checkpoint {weights}: {exc}") from None
    expected = functional.param_shapes(cfg)
    if set(header) != set(expected):
        missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
        raise CheckpointError(
            f"checkpoint {weights} does not match its config: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for name, (shape, dtype) in header.items():
        want = tuple(expected[name])
        if shape != want:
            raise CheckpointError(
                f"checkpoint tensor {name} has shape {shape}, config expects {want}"
            )
        if dtype not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"checkpoint tensor {name} has dtype {dtype}; weights must be floating point"
            )
