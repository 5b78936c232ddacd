"""Recipe precision bf16: matmuls in bfloat16 under autocast, weights/softmax/loss in float32,
stack-independent, resumable, and a one-line fp32 fallback where the CPU has no native bf16."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from circuitlab import _precision
from circuitlab.models import ModelConfig
from circuitlab.models import functional as Fn
from circuitlab.training import Recipe, RunSpec, read_run, train_stack
from circuitlab.training.trainer import _Stack, _stack_data

SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)
NATIVE_BF16 = _precision.bf16_unsupported("cpu") is None
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 matmul")


def recipe(**changes) -> Recipe:
    base = Recipe(name="test", lr=3e-3, max_steps=10, eval_every=10, stop_val_acc=2.0, model=SMALL)
    return base.replace(**changes)


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class Dtypes(TorchDispatchMode):
    """Records (op name, input dtypes) of every aten op, after autocast has cast them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        dtypes = [a.dtype for a in args if isinstance(a, torch.Tensor)]
        self.seen.append((func.overloadpacket.__name__, dtypes))
        return func(*args, **(kwargs or {}))

    def inputs(self, *names: str) -> list[list[torch.dtype]]:
        return [d for n, d in self.seen if n in names]


@needs_bf16
def test_bf16_run_trains_float32_weights_and_tracks_the_fp32_loss(tmp_path):
    r = recipe(eval_every=1, max_steps=3)
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    train_stack([RunSpec("add_mod_13", r, 0, fp32)])
    train_stack([RunSpec("add_mod_13", r.replace(precision="bf16"), 0, bf16)])
    assert read_run(bf16).summary["precision"] == "bf16"
    assert read_run(fp32).summary["precision"] == "fp32"
    weights = load_file(str(bf16 / "model.safetensors"))
    init = Fn.init_params(RunSpec("add_mod_13", r, 0, bf16).model_config(), 0)
    assert all(w.dtype == torch.float32 for w in weights.values())
    assert not torch.equal(weights["blocks.0.mlp.W_in"], init["blocks.0.mlp.W_in"])
    for a, b in zip(rows(fp32)[:2], rows(bf16)[:2], strict=True):  # steps 0 and 1
        for key in ("train_loss", "val_loss"):
            # bf16 keeps 8 significant bits: logits off by ~0.4%, the loss by less
            assert a[key] != b[key] and math.isclose(a[key], b[key], rel_tol=2e-2), key


@needs_bf16
def test_softmax_log_softmax_and_loss_see_float32_while_matmuls_run_in_bf16():
    # add_mod_13 full batch uses the (position, token) tables in block 0; a batch of 8 does not
    for batch in (0, 8):
        r = recipe(precision="bf16", batch_size=batch)
        spec = RunSpec("add_mod_13", r, 0, "/nonexistent")
        x, y, _, _ = _stack_data([spec])
        stack = _Stack([spec], spec.model_config())
        n = batch or x.shape[1]
        with Dtypes() as rec:
            stack.step(x[:, :n], y[:, :n])
        assert rec.inputs("_softmax") and rec.inputs("_log_softmax")
        for dtypes in rec.inputs(
            "_softmax",
            "_log_softmax",
            "nll_loss_forward",
            "_softmax_backward_data",
            "_log_softmax_backward_data",
        ):
            assert {d for d in dtypes if d.is_floating_point} == {torch.float32}
        assert any(torch.bfloat16 in d for d in rec.inputs("bmm", "baddbmm"))
        assert all(p.dtype == torch.float32 for p in stack.params.values())
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in stack.params.values())


@needs_bf16
def test_attention_scores_are_float32_before_the_softmax_on_the_einsum_path():
    # 12 positions: q*k products by einsum (a bf16 matmul under autocast), not multiply-and-sum
    cfg = ModelConfig(d_vocab=10, d_vocab_out=10, n_ctx=12, answer_positions=(11,), **SMALL)
    params = {n: p.unsqueeze(0) for n, p in Fn.init_params(cfg, 0).items()}
    tokens = torch.randint(0, 10, (1, 4, 12), generator=torch.Generator().manual_seed(0))
    seen = []

    def hook(name, x):
        if name.endswith(("hook_attn_scores", "hook_pattern")):
            seen.append(x.dtype)
        return x

    with torch.autocast("cpu", dtype=torch.bfloat16), Dtypes() as rec:
        logits = Fn.forward(params, cfg, tokens, hook=hook, answers_only=False)
    assert logits.dtype == torch.bfloat16  # the unembedding is a bf16 matmul
    assert seen == [torch.float32, torch.float32]
    assert all(set(d) == {torch.float32} for d in rec.inputs("_softmax"))
    assert any(torch.bfloat16 in d for d in rec.inputs("bmm", "baddbmm"))


@pytest.mark.parametrize(
    "m,k,n,models,seed",
    # shapes and seeds where a raw bf16 baddbmm of a stack differs from its models alone
    # (torch 2.13, oneDNN only above 16**3 multiply-adds per call, the model axis counted)
    [(8, 64, 8, 16, 19), (2, 64, 16, 16, 18), (2, 512, 4, 8, 4), (8, 64, 8, 16, 7)],
)
def test_small_matmuls_give_the_same_bits_stacked_and_alone_under_bf16(m, k, n, models, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(models, m, k, generator=gen)
    w = torch.randn(models, k, n, generator=gen, requires_grad=True)
    b = torch.randn(models, n, generator=gen, requires_grad=True)
    q = torch.randn(models, m, 1, k, generator=gen)

    def run(index):
        ws, bs = (t.detach()[index].requires_grad_() for t in (w, b))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = Fn._linear(x[index], ws, bs)
            mixed = Fn._einsum("mbqd,mhde->mbqhe", q[index], ws.unsqueeze(1))
        (out.float().square().sum() + mixed.float().sum()).backward()
        return out, mixed, ws.grad, bs.grad

    stacked = run(slice(None))
    alone = [run(slice(i, i + 1)) for i in range(models)]
    for j, value in enumerate(stacked):
        assert torch.equal(value, torch.cat([a[j] for a in alone]))


def test_bf16_on_a_cpu_without_it_trains_fp32_with_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        _precision, "bf16_unsupported", lambda device="cpu": "the CPU has no avx512_bf16 flag"
    )
    monkeypatch.setattr(_precision, "_warned", set())
    asked, plain = tmp_path / "asked", tmp_path / "plain"
    train_stack([RunSpec("add_mod_13", recipe(precision="bf16"), 0, asked)])
    train_stack([RunSpec("add_mod_13", recipe(precision="bf16"), 1, tmp_path / "again")])
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "bf16" in line]
    assert len(warnings) == 1 and "avx512_bf16" in warnings[0] and "fp32" in warnings[0]
    assert read_run(asked).summary["precision"] == "fp32 (bf16 unsupported)"
    assert read_run(asked).config["recipe"]["precision"] == "bf16"  # what was asked for
    train_stack([RunSpec("add_mod_13", recipe(), 0, plain)])
    wa, wp = (
        load_file(str(asked / "model.safetensors")),
        load_file(str(plain / "model.safetensors")),
    )
    assert all(torch.equal(wa[k], wp[k]) for k in wa)


def test_detection_names_the_missing_cpu_flag(monkeypatch):
    check = _precision.bf16_unsupported.__wrapped__  # uncached
    monkeypatch.setattr(_precision, "_cpu_flags", lambda: {"fpu", "avx2", "avx512f"})
    monkeypatch.setattr(_precision.platform, "machine", lambda: "x86_64")
    reason = check("cpu")
    assert "avx512_bf16" in reason and "amx_bf16" in reason
    monkeypatch.setattr(_precision, "_cpu_flags", lambda: {"avx512f", "amx_bf16"})
    assert _precision._missing_cpu_flag() is None
    monkeypatch.setattr(_precision.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(_precision, "_cpu_flags", lambda: {"fp", "asimd"})
    assert "bf16" in check("cpu")
    assert _precision.resolve("fp32") == ("fp32", "fp32")
    with pytest.raises(ValueError, match="precision"):
        _precision.resolve("fp16")
