"""Fault-injection benchmark (issue 12): hostile inputs, kill -9 and collisions, run through the
public CLI against whatever the code does today. Writes benchmarks/results/faults.json (every
case: name, category, command, outcome, exit code, first line of stderr, problems) and prints,
per category: cases tried, ok, clean errors, tracebacks, runs or records lost or corrupted,
orphan processes, hangs and other failures (goal: 0 in the last five columns), then every
failing case with what it showed.

    python benchmarks/bench_faults.py                # everything: ~19 CPU-minutes of commands
    python benchmarks/bench_faults.py --quick        # a subset (see --help): ~3 CPU-minutes
    python benchmarks/bench_faults.py --only 'kill'  # jobs or categories matching a regex
    python benchmarks/bench_faults.py --seed 1       # other kill moments and fuzz inputs

Categories:
- issue12: data / security / errors: every numbered item of issue 12 as a scenario
  (faults/issue12.py);
- kill -9: train single / stack / workers, extract, catalog sqlite / bolt: at least 20 random
  kill -9 each (--kills), each followed by a re-run and integrity checks (faults/kills.py);
- fuzz: --set / config.json / discover csv: seeded random inputs (faults/fuzz.py).

A case is one scenario or one kill or one fuzz input, in its own directory under a temp root
(deleted at the end unless --keep); every command has a timeout and a 4 GB address-space cap;
processes are marked through their environment, so stray ones are found in /proc and killed by
pid. The Bolt server is ArcadeDB from the `arcadedb-embedded` wheel, started on loopback per job
(as tests/catalog/conftest.py does). Linux only (/proc). Kill moments and fuzz inputs come from
a seeded RNG; where a kill lands in the program still depends on the machine's speed.

On an idle 2-core machine the wall time is about the CPU time / 2 (the JSON records both and the
load average); on a loaded one it stretches accordingly. References (uninterrupted runs, an
uninterrupted extraction) are remade for each version of circuitlab's source, and the JSON says
whether the source changed during the run (then a case that straddled the change may differ).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import fuzz, issue12, kills  # noqa: E402
from faults.fixtures import Fixtures  # noqa: E402
from faults.harness import KINDS, CaseResult, Job, Suite, source_hash  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "faults.json"
COLUMNS = (
    "cases",
    "ok",
    "clean errors",
    "tracebacks",
    "lost/corrupted",
    "orphans",
    "hangs",
    "other failures",
)
# left out by --quick: the jobs that need worker pools, Bolt servers or long reference runs
SLOW = {
    "kill-workers",
    "kill-bolt",
    "kill-stack",
    "i01-bolt-reput",
    "i02-workers-kill",
    "i03-same-twice",
    "i06-slash-task",
    "i09-bolt-password",
    "i15-ctrl-c",
}
ORDER = (
    "issue12: data",
    "issue12: security",
    "issue12: errors",
    "kill -9: train single",
    "kill -9: train stack",
    "kill -9: train workers",
    "kill -9: extract",
    "kill -9: catalog sqlite",
    "kill -9: catalog bolt",
    "fuzz: --set",
    "fuzz: config.json",
    "fuzz: discover csv",
)


def plan(args: argparse.Namespace, suite: Suite, fx: Fixtures) -> list[tuple[str, str, Callable]]:
    """(job name, category, fn(job)) in the order they start: long jobs first."""
    jobs: list[tuple[str, str, Callable]] = []
    n_kills = args.kills if args.kills is not None else (2 if args.quick else 20)
    seed = args.seed
    kill_jobs = {
        "workers": (
            "kill -9: train workers",
            lambda j: kills.train(j, fx, "workers", n_kills, seed),
        ),
        "bolt": (
            "kill -9: catalog bolt",
            lambda j: kills.catalog(j, fx, "bolt", n_kills, seed, 12),
        ),
        "stack": ("kill -9: train stack", lambda j: kills.train(j, fx, "stack", n_kills, seed)),
        "single": ("kill -9: train single", lambda j: kills.train(j, fx, "single", n_kills, seed)),
        "extract": ("kill -9: extract", lambda j: kills.extraction(j, fx, n_kills, seed)),
        "sqlite": (
            "kill -9: catalog sqlite",
            lambda j: kills.catalog(j, fx, "sqlite", n_kills, seed, 150),
        ),
    }
    for name, (category, fn) in kill_jobs.items():
        jobs.append((f"kill-{name}", category, fn))
    for name, fn, _bolt in issue12.JOBS:
        jobs.append((name, "issue12", lambda j, fn=fn: fn(j, fx)))
    sizes = {"set": 24, "config": 16, "csv": 40}
    if args.fuzz is not None or args.quick:
        sizes = dict.fromkeys(sizes, 4 if args.fuzz is None else args.fuzz)
    for kind, fn in fuzz.FUZZERS.items():
        category = {
            "set": "fuzz: --set",
            "config": "fuzz: config.json",
            "csv": "fuzz: discover csv",
        }[kind]
        for first, count in fuzz.chunks(sizes[kind], 10):
            jobs.append(
                (
                    f"fuzz-{kind}-{first}",
                    category,
                    lambda j, fn=fn, first=first, count=count: fn(j, fx, seed, first, count),
                )
            )
    if args.quick:
        jobs = [j for j in jobs if j[0] not in SLOW]
    if args.only:
        pattern = re.compile(args.only)
        jobs = [j for j in jobs if pattern.search(j[0]) or pattern.search(j[1])]
    return jobs


def run_job(suite: Suite, name: str, fn: Callable[[Job], None]) -> None:
    job = suite.job(name)
    try:
        fn(job)
    except Exception as exc:  # noqa: BLE001 - recorded as a harness error, the rest goes on
        with job.case(f"{name} (setup)", _category(name), "the job could not run") as c:
            c.problem("error", f"{type(exc).__name__}: {exc}"[:500])
    finally:
        job.kill_marked()


def _category(job_name: str) -> str:
    if job_name.startswith("kill-"):
        return f"kill -9: {job_name[5:]}"
    if job_name.startswith("fuzz-"):
        return f"fuzz: {job_name.split('-')[1]}"
    return "issue12"


def summarize(results: list[CaseResult]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for r in results:
        row = table.setdefault(r.category, dict.fromkeys(COLUMNS, 0))
        kinds = {p["kind"] for p in r.problems}
        row["cases"] += 1
        row["ok"] += r.outcome == "ok"
        row["clean errors"] += r.outcome == "clean error"
        row["tracebacks"] += "traceback" in kinds
        row["lost/corrupted"] += "lost" in kinds
        row["orphans"] += "orphan" in kinds
        row["hangs"] += "hang" in kinds
        row["other failures"] += bool(kinds) and not kinds & {"traceback", "lost", "orphan", "hang"}
    order = {c: i for i, c in enumerate(ORDER)}
    return dict(sorted(table.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])))


def print_report(
    summary: dict[str, dict[str, int]], results: list[CaseResult], seconds: float
) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    table = Table(title=f"fault injection: {len(results)} cases in {seconds / 60:.1f} min")
    table.add_column("category")
    for col in COLUMNS:
        table.add_column(col, justify="right")
    total = dict.fromkeys(COLUMNS, 0)
    for category, row in summary.items():
        table.add_row(escape(category), *[str(row[c]) for c in COLUMNS])
        for c in COLUMNS:
            total[c] += row[c]
    table.add_row("[bold]all[/]", *[f"[bold]{total[c]}[/]" for c in COLUMNS])
    console.print(table)
    failing = [r for r in results if not r.passed]
    console.print(f"\n[bold]{len(failing)} failing case(s)[/] (goal 0):")
    order = {c: i for i, c in enumerate(ORDER)}
    for r in sorted(failing, key=lambda r: (order.get(r.category, 99), r.name)):
        first = r.problems[0]["message"] if r.problems else ""
        more = f" (+{len(r.problems) - 1} more)" if len(r.problems) > 1 else ""
        console.print(
            f"- {escape(r.category)} | {escape(r.name)} | {escape(r.outcome)}: "
            f"{escape(first[:300])}{escape(more)}",
            highlight=False,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a subset: no worker pools, Bolt "
        "servers or long runs; 2 kills per scenario, 4 fuzz inputs per kind",
    )
    parser.add_argument("--kills", type=int, help="kills per kill scenario (default 20)")
    parser.add_argument("--fuzz", type=int, help="fuzz inputs per kind (default 24/16/40)")
    parser.add_argument("--seed", type=int, default=0, help="seed of kill moments and fuzz")
    parser.add_argument("--jobs", type=int, default=2, help="jobs run side by side")
    parser.add_argument("--only", help="regex over job names and categories")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_faults_"))
    os.chmod(root, 0o755)  # another user (nobody) runs some cases inside
    suite = Suite(root, args.seed, args.quick)
    fx = Fixtures(suite)
    suite.fixtures = fx
    jobs = plan(args, suite, fx)
    load0 = os.getloadavg()
    source0 = source_hash()
    print(
        f"{len(jobs)} jobs, {args.jobs} at a time, under {root} (load average {load0[0]:.1f})",
        flush=True,
    )
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # same clean-up as Ctrl-C
    try:
        pending = {pool.submit(run_job, suite, name, fn) for name, _, fn in jobs}
        while pending:  # a timeout, so that Ctrl-C is seen while jobs run
            _, pending = wait(pending, timeout=0.5)
    except KeyboardInterrupt:
        print("interrupted: killing what the benchmark started", flush=True)
        pool.shutdown(wait=False, cancel_futures=True)
        suite.sweep()
        time.sleep(0.5)  # a job thread may have started one more command meanwhile
        suite.sweep()
        shutil.rmtree(root, ignore_errors=True)
        os._exit(130)
    pool.shutdown()
    stray = suite.sweep()
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    source1 = source_hash()
    results = suite.results
    summary = summarize(results)
    out: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "seed": args.seed,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(seconds, 1),
        # CPU time of the commands (and their waited-for children): on an idle machine with
        # N cores the wall time is about this / N
        "child_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        # the references (uninterrupted runs, extraction) are remade for each version of the
        # source; a case that straddled a change may still show a difference that is no fault
        "source_sha256": {"start": source0, "end": source1},
        "source_changed_during_run": source0 != source1,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": load0,
            "load_average_at_end": os.getloadavg(),
        },
        "kinds": KINDS,
        "count_checks": fx.count_keys,
        "fixture_seconds": fx.seconds,
        "stray_processes_at_end": stray,
        "summary": summary,
        "cases": [r.to_dict() for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print_report(summary, results, seconds)
    print(
        f"commands used {out['child_cpu_seconds'] / 60:.1f} CPU-minutes; load average "
        f"{load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    )
    if source0 != source1:
        print(
            "WARNING: circuitlab's source changed while the benchmark ran; references were "
            "remade for each version, but a case that straddled a change may show a difference "
            "that is not a fault"
        )
    print(f"results in {args.out}" + (f"; cases under {root}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
