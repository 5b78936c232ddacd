"""Memory budgets: estimate a job's peak before it starts and refuse it when it cannot fit.

A job that dies of memory exhaustion after minutes of compute loses the work and can take the
machine with it; an estimate checked up front costs nothing. Estimates are deliberately
conservative (they count the large tensors, not Python overhead).
"""

from __future__ import annotations

import os
from pathlib import Path

GIB = 1024**3


class MemoryBudgetError(ValueError):
    """A job whose estimated peak memory exceeds what this machine has available."""


def available_bytes() -> int:
    """Memory a new job can use: MemAvailable from /proc/meminfo, bounded by a cgroup limit if
    one is set (containers report the host's memory in /proc/meminfo)."""
    available = _meminfo_available()
    limit = _cgroup_limit()
    if limit is not None:
        available = min(available, limit)
    return available


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return pages * os.sysconf("SC_PAGE_SIZE") if pages > 0 else 1 << 62


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    return None


def format_bytes(n: float) -> str:
    """1.5 GiB, 320 MiB, 65,536 bytes: the unit a reader compares at a glance."""
    if n >= GIB:
        return f"{n / GIB:.1f} GiB"
    if n >= 1024**2:
        return f"{n / 1024**2:.0f} MiB"
    return f"{int(n):,} bytes"


def check_fits(estimate: float, what: str, remedy: str, available: int | None = None) -> None:
    """Refuse `what` when its estimated peak exceeds available memory; `remedy` names the flag
    or setting that lowers the estimate. CIRCUITLAB_MEMORY_LIMIT (bytes, or e.g. `2G`) overrides
    the available figure, for shared machines and for tests."""
    if available is None:
        available = memory_limit()
    if estimate > available:
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(estimate)} of memory but "
            f"{format_bytes(available)} is available; {remedy}"
        )


def memory_limit() -> int:
    """The budget jobs are checked against: CIRCUITLAB_MEMORY_LIMIT if set, else available."""
    text = os.environ.get("CIRCUITLAB_MEMORY_LIMIT", "").strip()
    if not text:
        return available_bytes()
    return parse_bytes(text)


def parse_bytes(text: str) -> int:
    """`2G`, `512M`, `1.5GiB` or a plain number of bytes."""
    units = {"k": 1024, "m": 1024**2, "g": GIB, "t": 1024**4}
    body = text.strip().lower().removesuffix("ib").removesuffix("b")
    scale = units.get(body[-1:], 1) if body else 1
    number = body[:-1] if body[-1:] in units else body
    try:
        value = float(number) * scale
    except ValueError:
        raise MemoryBudgetError(
            f"cannot read memory size {text!r}; write e.g. 2G, 512M or a number of bytes"
        ) from None
    if not value > 0:
        raise MemoryBudgetError(f"memory size must be positive, got {text!r}")
    return int(value)
