"""Export per-layer transcoders in the on-disk format sae-lens loads.

One directory per layer, `layer_{l}/cfg.json` + `layer_{l}/sae_weights.safetensors`, readable with
`sae_lens.SAE.load_from_disk(path)` (sae-lens >= 6; tested with 6.54): a JumpReLU transcoder
becomes sae-lens's `JumpReLUTranscoder`, a ReLU one its `Transcoder`. sae-lens reads
`blocks.{l}.hook_mlp_in` and writes `blocks.{l}.hook_mlp_out` of the TransformerLens export of the
model (`circuitlab.models.export`, which turns on `use_hook_mlp_in`: without it sae-lens silently
reads `hook_mlp_out`). With LayerNorm the transcoders read `ln2.hook_normalized` instead, with
ln2's gain and bias folded into their encoders (see `export_saelens`). Writing needs no
sae-lens; the format is plain JSON and safetensors. sae-lens has no TopK transcoder and no
cross-layer transcoders, so those are refused.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from circuitlab._atomic import replace_dir
from circuitlab.extraction.transcoder import Transcoder, TranscoderError

SAE_LENS_FORMAT_VERSION = "6.54.12"  # the sae-lens version whose format this writes
ARCHITECTURES = {"jumprelu": "jumprelu_transcoder", "relu": "transcoder"}


def saelens_config(
    tc: Transcoder,
    layer: int,
    model_name: str = "circuitlab",
    positions: list[int] | None = None,
    normalized: bool = False,
) -> dict[str, Any]:
    """The cfg.json sae-lens expects for layer `layer` of a per-layer transcoder. `positions`:
    the only sequence positions it was trained at (circuitlab trains at the answer positions;
    elsewhere its reconstructions are worse), recorded in the metadata. `normalized`: the
    model has LayerNorm, and the transcoder reads TransformerLens's `ln2.hook_normalized`
    (the residual normalized, before ln2's gain and bias, which `export_saelens` folds into
    the encoder): TransformerLens has no hook on the MLP's input itself, and its `hook_mlp_in`
    is the residual before ln2."""
    import circuitlab

    return {
        "architecture": ARCHITECTURES[tc.cfg.activation],
        "d_in": tc.d_model,
        "d_sae": tc.n_features,
        "d_out": tc.d_model,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAE_LENS_FORMAT_VERSION,
            "sae_lens_training_version": None,
            "model_name": model_name,
            "model_class_name": "HookedTransformer",
            "hook_name": f"blocks.{layer}.ln2.hook_normalized"
            if normalized
            else f"blocks.{layer}.hook_mlp_in",
            "hook_name_out": f"blocks.{layer}.hook_mlp_out",
            "hook_head_index": None,
            "prepend_bos": False,
            "trained_with": f"circuitlab {circuitlab.__version__}",
            "trained_positions": positions,
            "trained_positions_note": (
                None
                if positions is None
                else f"trained on activations at sequence positions {positions} only; "
                "reconstructions at other positions are not what it was fitted to"
            ),
        },
    }


def export_saelens(
    tc: Transcoder,
    directory: str | Path,
    model_name: str = "circuitlab",
    positions: list[int] | None = None,
    ln2: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> Path:
    """Write `directory/layer_{l}/` for every layer, all at once or not at all.

    `ln2`: each layer's ln2 (gain, bias) when the model has LayerNorm. Our transcoder reads
    the MLP's input x_hat * gain + bias; sae-lens reads `ln2.hook_normalized` (x_hat), so the
    affine is folded into the encoder: W_enc' = gain[:, None] * W_enc, b_enc' = b_enc + bias
    @ W_enc, the same pre-activations exactly (up to float rounding)."""
    if tc.cfg.kind != "per_layer" and tc.n_layers > 1:
        raise TranscoderError(
            "sae-lens loads per-layer transcoders only; this one is cross_layer with "
            f"{tc.n_layers} layers (train with kind='per_layer' to export)"
        )
    if tc.cfg.activation not in ARCHITECTURES:
        raise TranscoderError(
            f"sae-lens has no {tc.cfg.activation!r} transcoder; exportable activations: "
            f"{sorted(ARCHITECTURES)}"
        )
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = tc.tensors()
    for layer in range(tc.n_layers):
        out = tmp / f"layer_{layer}"
        out.mkdir()
        w_enc, b_enc = tensors[f"W_enc.{layer}"], tensors[f"b_enc.{layer}"]
        if ln2 is not None:
            gain, bias = ln2[layer]
            w_enc, b_enc = gain[:, None] * w_enc, b_enc + bias @ w_enc
        weights = {
            "W_enc": w_enc.contiguous(),
            "b_enc": b_enc.contiguous(),
            "W_dec": tensors[f"W_dec.{layer}.{layer}"],
            "b_dec": tensors[f"b_dec.{layer}"],
        }
        if tc.cfg.activation == "jumprelu":
            weights["threshold"] = tensors[f"threshold.{layer}"]
        save_file(weights, str(out / "sae_weights.safetensors"))
        cfg = saelens_config(tc, layer, model_name, positions, normalized=ln2 is not None)
        (out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    replace_dir(tmp, directory)
    return directory
