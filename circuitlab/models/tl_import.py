"""Reading TransformerLens checkpoints into circuitlab's parameter layout, without running code.

Two layouts are recognised by their tensors, not by a version number:

- TransformerLens (2.x/3.x `HookedTransformer.state_dict()`): our own names and shapes, plus
  buffers we do not keep (`blocks.N.attn.IGNORE`, `blocks.N.attn.mask`).
- Nanda et al.'s grokking code (the "progress measures" models, written with an early
  TransformerLens): the same names, but `embed.W_E` is (d_model, d_vocab), `attn.W_Q/K/V` are
  (n_heads, d_head, d_model), `attn.W_O` is (d_model, n_heads * d_head), `mlp.W_in` is
  (d_mlp, d_model) and `mlp.W_out` (d_model, d_mlp); attention and unembedding have no biases.

The architecture is read off the shapes (vocabularies, widths, heads, layers, LayerNorm, MLP or
attention only); what shapes cannot say (the activation function, causal or bidirectional
attention) comes from a TransformerLens config when one is given, else from the caller.
Weights load from safetensors, or from `torch.load(weights_only=True)`, which refuses any file
that would need code to run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuitlab.models import functional
from circuitlab.models.config import ACTIVATIONS, ModelConfig, ModelConfigError

# buffers TransformerLens keeps in its state dict; recomputed here, never weights
BUFFER_SUFFIXES = (".IGNORE", ".mask")
# wrappers that training scripts put around a state dict (torch.save({"model": sd, ...}))
STATE_KEYS = ("model", "state_dict", "model_state_dict")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


class ImportFormatError(ValueError):
    """A checkpoint that cannot be read as a transformer: the message names the key, shape or
    file and what would be needed."""


@dataclass(frozen=True)
class Converted:
    """A checkpoint in circuitlab's layout.

    layout: "transformer-lens" or "nanda"; params: TransformerLens name -> tensor in our shapes
    (biases the source lacks are zeros); cfg: the architecture read off the shapes; notes: what
    was dropped or filled in, for the run's provenance.
    """

    layout: str
    cfg: ModelConfig
    params: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Name -> tensor from a safetensors file or a torch checkpoint, loaded with
    `weights_only=True`: a pickle that needs code to run is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise ImportFormatError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ImportFormatError(f"{path} is not a readable safetensors file: {exc}") from None
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ImportFormatError(
            f"{path.name}: expected a checkpoint ending in {', '.join(WEIGHT_SUFFIXES)}"
        )
    import pickle

    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown object"
        raise ImportFormatError(
            f"{path.name} holds objects that only code execution could rebuild, and circuitlab "
            f"does not run code from checkpoints ({first[:160]}). Save the state dict alone "
            "(torch.save(model.state_dict(), ...)) or as safetensors"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ImportFormatError(f"{path.name} is not a readable torch checkpoint: {exc}") from None
    return state_dict_of(loaded, path.name)


def state_dict_of(loaded: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: a state dict, or one under a `model`/`state_dict`
    key (as training scripts save it)."""
    if isinstance(loaded, Mapping):
        for key in STATE_KEYS:
            if isinstance(loaded.get(key), Mapping):
                return state_dict_of(loaded[key], f"{where}[{key!r}]")
        tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(loaded) and all(isinstance(k, str) for k in loaded):
            return dict(tensors)
    raise ImportFormatError(
        f"{where} is not a state dict (a mapping of names to tensors, possibly under "
        f"{' or '.join(repr(k) for k in STATE_KEYS)})"
    )


def _layers(state: Mapping[str, torch.Tensor]) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not found:
        raise ImportFormatError("no transformer blocks (no 'blocks.0.*' tensors)")
    if found != set(range(max(found) + 1)):
        raise ImportFormatError(f"blocks are not numbered 0..{max(found)}: {sorted(found)}")
    return max(found) + 1


def _need(state: Mapping[str, torch.Tensor], name: str, dims: int) -> torch.Tensor:
    if name not in state:
        raise ImportFormatError(f"missing tensor {name}")
    tensor = state[name]
    if tensor.dim() != dims:
        raise ImportFormatError(f"{name} has shape {tuple(tensor.shape)}; expected {dims} dims")
    return tensor


def convert(
    state: Mapping[str, torch.Tensor],
    *,
    act_fn: str = "relu",
    causal: bool = True,
    tl_config: Mapping[str, Any] | None = None,
) -> Converted:
    """A TransformerLens or Nanda-layout state dict in circuitlab's layout (see the module
    docstring). `tl_config` (a HookedTransformerConfig's fields) overrides act_fn and causal."""
    state = {k: v for k, v in state.items() if not k.endswith(BUFFER_SUFFIXES)}
    if tl_config:
        act_fn = tl_config.get("act_fn") or act_fn
        causal = tl_config.get("attention_dir", "causal") != "bidirectional"
        if tl_config.get("normalization_type") not in (None, "LN"):
            raise ImportFormatError(
                f"normalization_type {tl_config['normalization_type']!r} is not supported "
                "(only LN or none); load the model with fold_ln=False, center_writing_weights="
                "False, center_unembed=False before saving it"
            )
        if tl_config.get("positional_embedding_type", "standard") != "standard":
            raise ImportFormatError(
                f"positional_embedding_type {tl_config['positional_embedding_type']!r} is not "
                "supported (only learned absolute positions, 'standard')"
            )
    if act_fn not in ACTIVATIONS:
        raise ImportFormatError(f"act_fn {act_fn!r} is not supported ({' or '.join(ACTIVATIONS)})")
    n_layers = _layers(state)
    w_pos = _need(state, "pos_embed.W_pos", 2)
    n_ctx, d_model = w_pos.shape
    w_q = _need(state, "blocks.0.attn.W_Q", 3)
    w_e = _need(state, "embed.W_E", 2)
    nanda = w_q.shape[2] == d_model and (w_q.shape[1] != d_model or w_e.shape[0] == d_model)
    if nanda and w_e.shape[0] != d_model:
        raise ImportFormatError(
            f"embed.W_E has shape {tuple(w_e.shape)}; with W_Q laid out (heads, d_head, d_model)"
            f" it should be (d_model={d_model}, d_vocab)"
        )
    n_heads = w_q.shape[0]
    d_head = w_q.shape[1] if nanda else w_q.shape[2]
    params: dict[str, torch.Tensor] = {
        "embed.W_E": (w_e.T if nanda else w_e).contiguous(),
        "pos_embed.W_pos": w_pos,
    }
    notes: list[str] = []
    for layer in range(n_layers):
        att = f"blocks.{layer}.attn"
        for x in "QKV":
            w = _need(state, f"{att}.W_{x}", 3)
            params[f"{att}.W_{x}"] = w.transpose(1, 2).contiguous() if nanda else w
        w_o = _need(state, f"{att}.W_O", 2 if nanda else 3)
        params[f"{att}.W_O"] = (
            w_o.T.reshape(n_heads, d_head, d_model).contiguous() if nanda else w_o
        )
        mlp = f"blocks.{layer}.mlp"
        if f"{mlp}.W_in" in state:
            w_in, w_out = _need(state, f"{mlp}.W_in", 2), _need(state, f"{mlp}.W_out", 2)
            params[f"{mlp}.W_in"] = w_in.T.contiguous() if nanda else w_in
            params[f"{mlp}.W_out"] = w_out.T.contiguous() if nanda else w_out
    d_mlp = params["blocks.0.mlp.W_in"].shape[1] if "blocks.0.mlp.W_in" in params else 0
    w_u = _need(state, "unembed.W_U", 2)
    params["unembed.W_U"] = w_u
    normalization = "LN" if "blocks.0.ln1.w" in state or "ln_final.w" in state else None
    try:
        cfg = ModelConfig(
            d_vocab=params["embed.W_E"].shape[0],
            d_vocab_out=w_u.shape[1],
            n_ctx=n_ctx,
            n_layers=n_layers,
            d_model=d_model,
            n_heads=n_heads,
            d_head=d_head,
            d_mlp=d_mlp,
            act_fn=act_fn,  # type: ignore[arg-type]
            normalization=normalization,  # type: ignore[arg-type]
            answer_positions=(n_ctx - 1,),
            causal=causal,
        )
    except ModelConfigError as exc:
        raise ImportFormatError(f"the tensors describe no valid model: {exc}") from None
    shapes = functional.param_shapes(cfg)
    filled = []
    for name, shape in shapes.items():
        if name not in params:
            if name in state:
                params[name] = state[name]
            elif name.rsplit(".", 1)[1].startswith("b"):
                params[name] = torch.zeros(shape)
                filled.append(name)
            else:
                raise ImportFormatError(f"missing tensor {name} (shape {shape})")
        if tuple(params[name].shape) != shape:
            raise ImportFormatError(
                f"{name} has shape {tuple(params[name].shape)}; the other tensors imply {shape}"
            )
    extra = sorted(set(state) - set(shapes))
    if extra:
        raise ImportFormatError(
            f"unexpected tensors {extra[:6]}{' ...' if len(extra) > 6 else ''}: not part of a "
            "TransformerLens model circuitlab can run"
        )
    if filled:
        notes.append(f"biases absent from the checkpoint set to zero: {_summarise(filled)}")
    params = {n: params[n].detach().to(torch.float32).contiguous() for n in shapes}
    return Converted("nanda" if nanda else "transformer-lens", cfg, params, notes)


def _summarise(names: list[str]) -> str:
    """`blocks.0.attn.b_Q, blocks.1.attn.b_Q` -> `attn.b_Q (2 layers)`, shorter for notes."""
    counts: dict[str, int] = {}
    for name in names:
        leaf = re.sub(r"^blocks\.\d+\.", "", name)
        counts[leaf] = counts.get(leaf, 0) + 1
    return ", ".join(f"{k} ({v} layers)" if v > 1 else k for k, v in counts.items())


def from_hooked_transformer(model: Any) -> Converted:
    """A live `transformer_lens.HookedTransformer` (its state dict and config)."""
    cfg = model.cfg
    tl_config = {
        "act_fn": cfg.act_fn,
        "attention_dir": getattr(cfg, "attention_dir", "causal"),
        "normalization_type": cfg.normalization_type,
        "positional_embedding_type": cfg.positional_embedding_type,
    }
    return convert(model.state_dict(), tl_config=tl_config)  # convert checks act_fn
