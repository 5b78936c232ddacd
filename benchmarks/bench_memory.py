"""Memory benchmark: peak resident memory (RSS) and wall time of `circuitlab extract` on
add_mod_113, add_mod_257 and a 5x5 grid task, beside the extraction's own estimate. Writes
benchmarks/results/memory.json and prints a table of "before" (the code before extraction
streamed over inputs) beside "after" (this tree).

    python benchmarks/bench_memory.py                       # measure this tree ("after")
    python benchmarks/bench_memory.py --label before --source /tmp/before   # an older tree

Each extraction runs in its own process (the driver below, `--child`), so its peak is its own:
the parent reads the child's ru_maxrss from os.wait4 and kills it when its RSS passes
`--kill-above` (a run that would exhaust the machine is recorded as killed, not waited for).
The child records the high-water RSS at every progress message, which shows the phase that
set the peak. Models are trained on first use with `circuitlab train` (fast recipe, seed 0)
into benchmarks/runs/memory/ (ignored by git). Results of the other label are kept, so
"before" and "after" can be measured at different times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "benchmarks" / "runs" / "memory"
RESULTS = REPO / "benchmarks" / "results" / "memory.json"
TASKS = ("add_mod_113", "add_mod_257", "grid_rot90_5x5_c10")
# recipe overrides: full-batch steps over 6,000 grids of 50 tokens, evaluated on 14,000 every
# 10 steps, take ~15 s each on 2 cores; minibatches reach 99.96% in 100 steps (~2 minutes)
TRAIN_SET = {"grid_rot90_5x5_c10": ["batch_size=512", "eval_every=100", "max_steps=3000"]}
GIB = 1024**3


def _kb(path: str, field: str) -> int:
    """A `Field:  N kB` line of a /proc file, in KiB."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(run: Path, out: Path) -> None:
    """Extract `run` in this process; write what happened to `out` as JSON."""
    start = time.perf_counter()
    phases: list[dict] = []

    def progress(phase: str, message: str) -> None:
        phases.append(
            {
                "t": round(time.perf_counter() - start, 2),
                "phase": phase,
                "message": message,
                "hwm_mib": round(_kb("/proc/self/status", "VmHWM") / 1024),
            }
        )
        print(f"{phases[-1]['t']:7.1f}s {phase}: {message}", flush=True)

    from circuitlab.extraction.pipeline import ExtractConfig, extract

    record: dict = {"phases": phases}
    try:  # the estimate exists only in trees that make one
        from circuitlab.extraction.memory import estimate_extraction
        from circuitlab.tasks import get_task
        from circuitlab.training import load_run

        info, model = load_run(run)
        est = estimate_extraction(model.cfg, get_task(info.task), ExtractConfig())
        record["estimate_gib"] = round(est.peak / GIB, 3)
        record["estimate_phases_gib"] = {k: round(v / GIB, 3) for k, v in est.phases.items()}
        del model
    except ImportError:
        pass
    try:
        result = extract(run, f"sqlite:///{out.parent / 'catalog.db'}", progress=progress)
    except Exception as exc:  # recorded: the "before" code fails on the large tasks
        record["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    else:
        s = result.summary
        record["result"] = {
            "circuit_features": s["circuit"]["n_features"],
            "sufficiency_accuracy": s["circuit"]["sufficiency_accuracy"],
            "necessity_accuracy": s["circuit"]["necessity_accuracy"],
            "replacement_score": s["graph"]["replacement_score"],
            "completeness": s["graph"]["completeness"],
            "timings_s": s["timings_s"],
        }
    record["seconds"] = round(time.perf_counter() - start, 1)
    out.write_text(json.dumps(record, indent=2))


def ensure_run(task: str) -> Path:
    """The task's benchmark model (fast recipe, seed 0), trained here on first use."""
    found = sorted(p.parent for p in (RUNS / task).glob("*-seed0/summary.json"))
    if found:
        return found[0]
    print(f"training {task} into {RUNS} ...", flush=True)
    cmd = [sys.executable, "-m", "circuitlab", "train", "--task", task, "--out", str(RUNS)]
    for setting in TRAIN_SET.get(task, []):
        cmd += ["--set", setting]
    subprocess.run([*cmd, "--workers", "1", "--resume"], check=True, cwd=REPO)
    return ensure_run(task)


def measure(task: str, source: Path | None, kill_above: float, timeout: float) -> dict:
    """Run the child on a copy of the task's run; its peak RSS, time and record."""
    run = ensure_run(task)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("extraction*"))
        out = Path(tmp) / "record.json"
        env = dict(os.environ)
        if source is not None:
            env["PYTHONPATH"] = str(source)
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(copy), str(out)], env=env, cwd=tmp
        )
        start, killed, watched = time.perf_counter(), None, 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            with contextlib.suppress(OSError, ValueError):
                watched = max(watched, _kb(f"/proc/{proc.pid}/status", "VmRSS") * 1024)
            elapsed = time.perf_counter() - start
            if killed is None and (watched > kill_above or elapsed > timeout):
                killed = (
                    f"RSS above {kill_above / GIB:.0f} GiB"
                    if watched > kill_above
                    else (f"still running after {timeout:.0f} s")
                )
                proc.kill()
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        record = json.loads(out.read_text()) if out.is_file() else {}
    record.update(
        peak_gib=round(usage.ru_maxrss * 1024 / GIB, 3),  # ru_maxrss is in KiB on Linux
        wall_s=round(seconds, 1),
        cpu_s=round(usage.ru_utime + usage.ru_stime, 1),  # steadier than wall on a busy machine
        exit_status=os.waitstatus_to_exitcode(status),
    )
    if killed:
        record["killed"] = killed
    return record


def describe(entry: dict | None) -> tuple[str, str]:
    if not entry:
        return "-", "-"
    peak = f"{entry['peak_gib']:.2f} GiB"
    if entry.get("killed"):
        peak = f"> {entry['peak_gib']:.1f} GiB, killed ({entry['killed']})"
    elif entry.get("error"):
        peak = f"{entry['peak_gib']:.2f} GiB, failed: {entry['error'][:70]}"
    return peak, f"{entry['wall_s']:.0f} s ({entry.get('cpu_s', 0):.0f} s CPU)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--label", default="after", choices=("before", "after"))
    parser.add_argument("--source", type=Path, help="PYTHONPATH of the circuitlab to measure")
    parser.add_argument("--kill-above", type=float, default=16.0, help="GiB")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per task")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from rich.console import Console
    from rich.table import Table

    for task in args.tasks.split(","):
        print(f"--- {task} ({args.label})", flush=True)
        entry = measure(task, args.source, args.kill_above * GIB, args.timeout)
        entry["date"] = time.strftime("%Y-%m-%d %H:%M")
        results = _load()  # again: another invocation may have written meanwhile
        results["tasks"].setdefault(task, {})[args.label] = entry
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    results = _load()
    total = _kb("/proc/meminfo", "MemTotal") * 1024 / GIB
    results["machine"] = {"cpus": os.cpu_count(), "memory_gib": round(total, 1)}
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    table = Table(title="peak RSS of `circuitlab extract` (each in its own process)")
    for col in ("task", "before", "time", "after", "time", "estimate", "same circuit"):
        table.add_column(col)
    for task, entries in results["tasks"].items():
        before, after = entries.get("before"), entries.get("after")
        same = ""
        if before and after and before.get("result") and after.get("result"):
            same = "yes" if _same(before["result"], after["result"]) else "NO"
        estimate = f"{after['estimate_gib']:.2f} GiB" if after and "estimate_gib" in after else "-"
        table.add_row(task, *describe(before), *describe(after), estimate, same)
    Console().print(table)


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"tasks": {}}


def _same(a: dict, b: dict) -> bool:
    keys = ("circuit_features", "sufficiency_accuracy", "necessity_accuracy")
    close = all(abs(a[k] - b[k]) < 1e-6 for k in ("replacement_score", "completeness"))
    return close and all(a[k] == b[k] for k in keys)


if __name__ == "__main__":
    main()
