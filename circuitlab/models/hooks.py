"""Hook points in the TransformerLens style.

An activation is exposed by passing it through a `HookPoint` module, so a hook's name is its
module path (`blocks.0.attn.hook_pattern`). A hook has one signature, `hook(activation, hook)`,
as in TransformerLens, and returns a replacement activation or None to keep it. Its second
argument is a `HookName`: the name as a string, which also answers TransformerLens's
`hook.name` and `hook.layer()`, so hooks written for either library run on both. Hooks are only
added inside the `Transformer.hooks(...)` context manager, so none outlive the block that added
them. `ActivationCache` indexes a cache as TransformerLens does: `cache["pattern", 0]`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class HookName(str):
    """A hook point's name (`blocks.0.attn.hook_pattern`) that is also what TransformerLens
    passes as `hook`: `.name` is the name, `.layer()` the block number."""

    __slots__ = ()

    @property
    def name(self) -> str:
        return str(self)

    def layer(self) -> int:
        """The block the hook point is in (TransformerLens's `HookPoint.layer`)."""
        parts = self.split(".")
        if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"{self} is not inside a block")
        return int(parts[1])


class HookPoint(nn.Module):
    """Identity module that runs its hooks on the activation passing through it."""

    def __init__(self) -> None:
        super().__init__()
        self._name = HookName("")
        self._hooks: list[HookFn] = []

    @property
    def name(self) -> HookName:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = HookName(value)

    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for hook in self._hooks:
            out = hook(x, self._name)
            if out is not None:
                x = out
        return x


# TransformerLens's short activation names (`transformer_lens.utils.get_act_name`)
_IN_ATTN = {"q", "k", "v", "z", "pattern", "attn_scores", "result"}
_IN_MLP = {"pre", "post", "mid"}
_IN_LN = {"scale", "normalized"}
_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "mlp_pre": "pre", "mlp_post": "post"}


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """The full hook name of TransformerLens's short form: ("pattern", 0) ->
    `blocks.0.attn.hook_pattern`, ("resid_post", 1) -> `blocks.1.hook_resid_post`,
    ("scale", 0, "ln1") -> `blocks.0.ln1.hook_scale`, "embed" -> `hook_embed`. A full name
    is returned unchanged."""
    if "." in name or name.startswith("hook_"):
        return name
    short = _ALIASES.get(name, name)
    if layer is None:
        if short in ("embed", "pos_embed"):
            return f"hook_{short}"
        if short in _IN_LN:
            return f"ln_final.hook_{short}"
        raise KeyError(f"{name!r} needs a layer, e.g. cache[{name!r}, 0]")
    if short in _IN_ATTN:
        return f"blocks.{layer}.attn.hook_{short}"
    if short in _IN_MLP:
        return f"blocks.{layer}.mlp.hook_{short}"
    if short in _IN_LN:
        if layer_type not in ("ln1", "ln2"):
            raise KeyError(f"{name!r} needs its LayerNorm: cache[{name!r}, {layer}, 'ln1']")
        return f"blocks.{layer}.{layer_type}.hook_{short}"
    return f"blocks.{layer}.hook_{short}"


class ActivationCache(dict):
    """Hook name -> activation, also indexed by TransformerLens's short forms: `cache["pattern",
    0]`, `cache["resid_post", 1]`, `cache["scale", 0, "ln1"]`, `cache["embed"]`."""

    def __getitem__(self, key: str | tuple) -> torch.Tensor:
        if isinstance(key, tuple):
            key = act_name(*key)
        elif not super().__contains__(key):
            key = act_name(key)  # a full name comes back unchanged, and stays missing
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True
