"""Models circuitlab did not train: is `circuitlab import` right and fast on them? Writes
benchmarks/results/import.json and prints the table.

    python benchmarks/bench_import.py            # seeds 0-2
    python benchmarks/bench_import.py --seeds 0
    python benchmarks/bench_import.py --show     # the saved table

For each seed, a TransformerLens `HookedTransformer` in Nanda et al.'s configuration (1 layer,
no LayerNorm, ReLU, d_model 128, 4 heads, d_mlp 512, p = 113) is trained here by
TransformerLens itself, with plain torch AdamW (lr 1e-2, weight decay 2, 30% of the pairs,
full batch, to 100% validation), and saved twice: as TransformerLens's state dict with its
config, and in the layout of Nanda et al.'s own code (W_E and the MLP transposed, W_O
flattened, no attention biases), made here by explicit transposes. Then, per file:
`import_model` time (read, convert, check accuracy on all 12,769 pairs, write the run), whether
the imported logits equal TransformerLens's (for Nanda's layout, TransformerLens's model with
the attention and unembedding biases that layout lacks set to zero), the key frequencies of
circuitlab's analysis against numpy's DFT of the TransformerLens model's own W_E (F1), and
`circuitlab extract`'s sufficiency on the imported run. Models land in benchmarks/runs/import/
(ignored by git).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from _shared import independent_fourier_keys
from rich.console import Console
from rich.table import Table

from circuitlab.extraction import fourier_fits
from circuitlab.extraction.fourier import key_f1
from circuitlab.extraction.pipeline import extract
from circuitlab.tasks import get_task
from circuitlab.training import load_run
from circuitlab.training.imported import import_model

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "benchmarks" / "runs" / "import"
RESULTS = REPO / "benchmarks" / "results" / "import.json"
TASK = "add_mod_113"
console = Console(width=160)


def train_tl(seed: int, max_steps: int = 3000) -> tuple[object, dict]:
    """A HookedTransformer trained by TransformerLens on add_mod_113 until 100% validation."""
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=128, d_head=32, n_heads=4, d_mlp=512, d_vocab=114,
        d_vocab_out=113, n_ctx=3, act_fn="relu", normalization_type=None, device="cpu",
        seed=seed,
    )  # fmt: skip
    model = HookedTransformer(cfg)
    split = get_task(TASK).split(0.3, seed)
    x, y = torch.tensor(split.train.inputs), torch.tensor(split.train.targets[:, 0])
    vx, vy = torch.tensor(split.val.inputs), torch.tensor(split.val.targets[:, 0])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=2.0, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    start, step, val_acc = time.perf_counter(), 0, 0.0
    while step < max_steps:
        F.cross_entropy(model(x)[:, -1], y).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        step += 1
        if step % 10 == 0:
            with torch.no_grad():
                val_acc = float((model(vx)[:, -1].argmax(-1) == vy).float().mean())
            if val_acc >= 1.0:
                break
    info = {"steps": step, "val_acc": val_acc, "train_seconds": time.perf_counter() - start}
    return model, info


def nanda_layout(state: dict[str, torch.Tensor], n_heads: int, d_head: int) -> dict:
    """TransformerLens's state dict rewritten in Nanda et al.'s layout."""
    out = {
        "embed.W_E": state["embed.W_E"].T.contiguous(),
        "pos_embed.W_pos": state["pos_embed.W_pos"],
        "unembed.W_U": state["unembed.W_U"],
        "blocks.0.attn.mask": torch.tril(torch.ones(3, 3)),
    }
    for x in "QKV":
        out[f"blocks.0.attn.W_{x}"] = state[f"blocks.0.attn.W_{x}"].transpose(1, 2).contiguous()
    w_o = state["blocks.0.attn.W_O"]
    out["blocks.0.attn.W_O"] = w_o.reshape(n_heads * d_head, -1).T.contiguous()
    out["blocks.0.mlp.W_in"] = state["blocks.0.mlp.W_in"].T.contiguous()
    out["blocks.0.mlp.W_out"] = state["blocks.0.mlp.W_out"].T.contiguous()
    out["blocks.0.mlp.b_in"] = state["blocks.0.mlp.b_in"]
    out["blocks.0.mlp.b_out"] = state["blocks.0.mlp.b_out"]
    return out


def measure(seed: int) -> list[dict]:
    root = RUNS / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    tl_file, nanda_file = root / "tl_state.pt", root / "nanda.pt"
    meta_file = root / "trained.json"
    if not meta_file.is_file():
        console.print(f"training a HookedTransformer with TransformerLens, seed {seed} ...")
        model, info = train_tl(seed)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(state, tl_file)
        torch.save({"model": nanda_layout(state, 4, 32), "epoch": info["steps"]}, nanda_file)
        meta_file.write_text(json.dumps(info))
    info = json.loads(meta_file.read_text())
    state = torch.load(tl_file, weights_only=True)
    w_e = state["embed.W_E"][:113].double().numpy()
    tokens = torch.tensor(get_task(TASK).dataset().inputs)
    # Nanda's layout has no attention or unembedding biases: its reference is TransformerLens's
    # model with them zeroed (the model the file holds)
    unbiased = {
        k: torch.zeros_like(v) if k.rsplit(".", 1)[1] in ("b_Q", "b_K", "b_V", "b_O", "b_U") else v
        for k, v in state.items()
    }
    references = {
        "transformer-lens": _tl_logits(state, tokens),
        "nanda": _tl_logits(unbiased, tokens),
    }
    rows = []
    for layout, path in (("transformer-lens", tl_file), ("nanda", nanda_file)):
        tl_logits = references[layout]
        out = root / f"run-{layout}"
        start = time.perf_counter()
        result = import_model(path, TASK, out, overwrite=True)
        seconds = time.perf_counter() - start
        _, ours = load_run(out)
        with torch.no_grad():
            logits = ours(tokens)[:, 0]
        report = fourier_fits.analyze(ours, get_task(TASK))
        keys = tuple(report.keys.frequencies)
        reference = independent_fourier_keys(w_e, len(keys))
        extracted = extract(out, None)
        rows.append(
            {
                "seed": seed,
                "layout": result.layout,
                "tl_train_steps": info["steps"],
                "tl_val_acc": info["val_acc"],
                "import_seconds": seconds,
                "acc_all": result.acc_all,
                "max_abs_logit_diff": float((logits - tl_logits).abs().max()),
                "max_abs_logit": float(tl_logits.abs().max()),
                "keys": list(keys),
                "independent_keys": reference,
                "key_f1": key_f1(keys, tuple(reference)),
                "label": report.label(),
                "sufficiency": extracted.summary["circuit"]["sufficiency"],
                "necessity_drop": extracted.summary["circuit"]["necessity_drop"],
                "circuit_features": extracted.summary["circuit"].get("n_features"),
                "notes": list(result.notes),
            }
        )
    return rows


def _tl_logits(state: dict, tokens: torch.Tensor) -> torch.Tensor:
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=128, d_head=32, n_heads=4, d_mlp=512, d_vocab=114,
        d_vocab_out=113, n_ctx=3, act_fn="relu", normalization_type=None, device="cpu",
    )  # fmt: skip
    model = HookedTransformer(cfg)
    model.load_state_dict(state)
    with torch.no_grad():
        return model(tokens)[:, -1]


def print_table(out: dict) -> None:
    table = Table(title="circuitlab import of models TransformerLens trained (add_mod_113)")
    for col in (
        "seed", "layout", "import s", "acc", "max |dlogit|", "keys", "DFT keys", "F1",
        "sufficiency",
    ):  # fmt: skip
        table.add_column(col)
    for r in out["rows"]:
        suff = r["sufficiency"]
        table.add_row(
            str(r["seed"]), r["layout"], f"{r['import_seconds']:.2f}", f"{r['acc_all']:.2%}",
            f"{r['max_abs_logit_diff']:.1e}", str(r["keys"]), str(r["independent_keys"]),
            f"{r['key_f1']:.2f}", "-" if suff is None else f"{suff:.2%}",
        )  # fmt: skip
    console.print(table)
    s = out["summary"]
    console.print(
        f"import <= 10 s: {s['import_le_10s']}/{s['models']}; key F1 = 1: {s['f1_is_1']}/"
        f"{s['models']}; sufficiency >= 99%: {s['sufficiency_ge_99']}/{s['models']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--show", action="store_true", help="print the saved results only")
    args = parser.parse_args()
    if args.show:
        print_table(json.loads(RESULTS.read_text()))
        return
    torch.set_num_threads(2)
    rows = [r for seed in map(int, args.seeds.split(",")) for r in measure(seed)]
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.processor() or platform.machine()}, 2 torch threads",
        "rows": rows,
        "summary": {
            "models": len(rows),
            "import_le_10s": sum(r["import_seconds"] <= 10 for r in rows),
            "f1_is_1": sum(r["key_f1"] == 1.0 for r in rows),
            "sufficiency_ge_99": sum((r["sufficiency"] or 0) >= 0.99 for r in rows),
            "max_import_seconds": max(r["import_seconds"] for r in rows),
            "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in rows),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print_table(out)


if __name__ == "__main__":
    main()
