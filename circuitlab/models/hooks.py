"""Hook points in the TransformerLens style.

An activation is exposed by passing it through a `HookPoint` module, so a hook's name is its
module path (`blocks.0.attn.hook_pattern`). A hook has one signature, `hook(activation, name)`,
and returns a replacement activation or None to keep it. Hooks are only added inside the
`Transformer.hooks(...)` context manager, so none outlive the block that added them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class HookPoint(nn.Module):
    """Identity module that runs its hooks on the activation passing through it."""

    def __init__(self) -> None:
        super().__init__()
        self.name = ""
        self._hooks: list[HookFn] = []

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for hook in self._hooks:
            out = hook(x, self.name)
            if out is not None:
                x = out
        return x
