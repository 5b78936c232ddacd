"""Training precision: fp32, or bf16 matmuls under autocast with fp32 weights and losses.

`bf16` runs the forward and backward matrix multiplies in bfloat16 (`torch.autocast`) while
the parameters, their gradients and the optimizer state stay float32, and the code that calls
`autocast` casts attention scores and logits to float32 before every softmax, log-softmax and
loss (float error in the softmax can stop grokking: Prieto et al. 2025). Where the device has
no native bf16 matrix multiply, training falls back to fp32 and says so once per process.

Only training steps (and the evaluation of a model being trained) run under autocast; the
attribution and edge code run with autocast switched off (`fp32_only`).
"""

from __future__ import annotations

import contextlib
import functools
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# torch is imported inside the functions: recipes (and so the CLI) read PRECISIONS without it
PRECISIONS = ("fp32", "bf16")
# what summary.json records when bf16 was asked for on a device without it
FALLBACK = "fp32 (bf16 unsupported)"
# x86 CPU flags (/proc/cpuinfo) of a native bf16 dot product: AVX512-BF16 (Zen 4, Cooper Lake
# and later) or AMX-BF16 (Sapphire Rapids and later); aarch64 calls its extension `bf16`
X86_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_FLAGS = ("bf16",)

_warned: set[str] = set()


def _cpu_flags() -> set[str] | None:
    """The CPU feature flags of /proc/cpuinfo (`flags` on x86, `Features` on ARM), None where
    there is no such file (not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags |= set(value.split())
    return flags


def _missing_cpu_flag() -> str | None:
    """Why this CPU has no native bf16 matmul according to its flags, None when it has one or
    the flags cannot tell (no /proc/cpuinfo, an unknown architecture)."""
    flags = _cpu_flags()
    if not flags:
        return None
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        wanted = X86_FLAGS
    elif machine in ("aarch64", "arm64"):
        wanted = ARM_FLAGS
    else:
        return None
    if flags & set(wanted):
        return None
    return f"the CPU has no {' or '.join(wanted)} flag"


def _probe(device_type: str) -> str | None:
    """A tiny matmul under bf16 autocast: None when it runs and gives bfloat16, else why not."""
    import torch

    try:
        a = torch.ones(4, 4, device=device_type)
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = a @ a
    except Exception as exc:  # any failure means: no usable bf16 path
        return f"a bf16 matmul under autocast failed ({type(exc).__name__}: {exc})"
    if out.dtype != torch.bfloat16:
        return f"a matmul under bf16 autocast gave {out.dtype}"
    return None


@functools.cache
def bf16_unsupported(device_type: str = "cpu") -> str | None:
    """None when bf16 autocast matmuls run natively on `device_type`, else the reason (naming
    the missing CPU flag). Decided once per process and device type."""
    import torch

    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if not torch.cuda.is_bf16_supported():
            return "this CUDA device has no bf16 support (compute capability < 8.0)"
        return _probe("cuda")
    if device_type != "cpu":
        return f"bf16 training is not implemented for device type {device_type!r}"
    missing = _missing_cpu_flag()
    if missing:
        return missing
    if not torch.backends.mkldnn.is_available():
        return "torch was built without oneDNN (mkldnn), which runs bf16 matmuls on CPU"
    return _probe("cpu")


def resolve(precision: str, device_type: str = "cpu") -> tuple[str, str]:
    """(precision to run, label to record) for the precision asked for.

    bf16 on a device without it runs fp32, recorded as FALLBACK, with a one-line warning on
    stderr (once per process and reason)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return "fp32", "fp32"
    reason = bf16_unsupported(device_type)
    if reason is None:
        return "bf16", "bf16"
    if reason not in _warned:
        _warned.add(reason)
        print(
            f"circuitlab: warning: precision bf16 asked for, but {reason}; training in fp32",
            file=sys.stderr,
            flush=True,
        )
    return "fp32", FALLBACK


def autocast(precision: str, device_type: str = "cpu") -> contextlib.AbstractContextManager[Any]:
    """The context a training forward runs in: bf16 autocast, or nothing for fp32."""
    import torch

    if precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def fp32_only() -> Iterator[None]:
    """Autocast off (CPU, and CUDA when present) for the duration of the block, whatever the
    caller set up: attribution and its exactness checks compute in float32."""
    import torch

    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available():
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield
