"""Ray backend benchmark: 16 training runs of >= 10 s each, (a) one after another in this
process on one thread, (b) as Ray tasks on a local 2-CPU cluster; then a worker killed
mid-run, whose task Ray retries from its checkpoint. Writes benchmarks/results/ray.json and
prints the comparison.

    python benchmarks/bench_ray.py                    # ~10 min on 2 cores
    python benchmarks/bench_ray.py --trials 4 --seconds 2 --results /tmp/ray.json

Targets: (b) / (a) wall time <= 0.6, and per-run overhead <= 1 s, where the overhead is
(b)'s wall time x CPUs / runs minus (a)'s mean run time: what each run costs beyond its own
training when the cluster's CPUs run them. Both are reported with the cluster already up (as
with `--address`) and with the local cluster's start included (as `--backend ray` alone).
Other jobs on the machine skew both: the load average before and after is recorded, and
(c), the same runs on the local backend's two worker processes, is the control that shares
the machine's part of the loss (two busy cores each run slower than one) but not Ray's.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from safetensors.torch import load_file

from circuitlab._atomic import write_json_atomic
from circuitlab.training import RunSpec, get_recipe, train_stack
from circuitlab.training import ray_backend as rb
from circuitlab.training.parallel import train_many
from circuitlab.training.rundir import lock_path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "ray.json"
CPUS = 2
console = Console()


def load() -> dict:
    one, five, fifteen = os.getloadavg()
    return {"load_1m": one, "load_5m": five, "load_15m": fifteen, "cores": os.cpu_count()}


def calibrate(task: str, seconds: float, work: Path) -> int:
    """Steps for one run to take about `seconds` on one thread, from two short real runs (so
    evaluations, set-up and files are counted, the fixed part once)."""
    took = {}
    for probe in (40, 120):
        recipe = get_recipe("fast").replace(
            max_steps=probe, stop_val_acc=2.0, checkpoint_every=10**6
        )
        start = time.perf_counter()
        train_stack([RunSpec(task, recipe, 99, work / "calibrate")], overwrite=True, threads=1)
        took[probe] = time.perf_counter() - start
    per_step = max((took[120] - took[40]) / 80, 1e-4)
    fixed = max(took[40] - 40 * per_step, 0.0)
    return max(40, math.ceil((seconds - fixed) / per_step))


def same_weights(a: Path, b: Path) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--task", default="add_mod_59")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.5, help="target time of one run")
    ap.add_argument("--work", type=Path, default=HERE / "runs" / "ray")
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    ap.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="skip (c), the same runs on the local backend's worker processes",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    load_before = load()
    console.print(f"[bold]ray[/]: load before {load_before}")

    steps = calibrate(args.task, args.seconds, args.work)
    recipe = get_recipe("fast").replace(
        max_steps=steps, stop_val_acc=2.0, checkpoint_every=max(10, steps // 4)
    )
    seeds = list(range(args.trials))
    console.print(f"{args.trials} runs of {args.task}, {steps} steps each (~{args.seconds} s)")

    # (a) one after another, one thread
    local = [RunSpec(args.task, recipe, s, args.work / "local" / f"seed{s}") for s in seeds]
    times, trained = [], []
    start = time.perf_counter()
    for spec in local:
        t = time.perf_counter()
        (r,) = train_stack([spec], overwrite=True, threads=1)
        times.append(time.perf_counter() - t)
        trained.append(r.wall_time)  # the training loop alone, as a worker reports it
        console.print(f"  (a) seed {spec.seed}: {times[-1]:.1f} s")
    wall_a = time.perf_counter() - start
    mean_a = statistics.mean(times)

    # (c) control: the local backend's worker processes (multiprocessing), same CPUs. What
    # (b) loses beyond (c) is Ray's; what both lose is the machine's (two busy cores, other jobs)
    control = None
    if args.control:
        pool = [RunSpec(args.task, recipe, s, args.work / "pool" / f"seed{s}") for s in seeds]
        t = time.perf_counter()
        done = train_many(pool, workers=CPUS, strategy="loop", overwrite=True)
        control = {
            "c_pool_wall_s": round(time.perf_counter() - t, 2),
            "c_mean_training_loop_in_worker_s": round(
                statistics.mean(r.wall_time for r in done), 3
            ),
        }
        control["ratio_c_over_a"] = round(control["c_pool_wall_s"] / wall_a, 3)
        control["overhead_per_run_c_s"] = round(
            control["c_pool_wall_s"] * CPUS / args.trials - mean_a, 3
        )
        console.print(f"  (c) {CPUS} pool workers: {control['c_pool_wall_s']:.1f} s")

    # (b) Ray tasks on a local cluster
    remote = [RunSpec(args.task, recipe, s, args.work / "ray" / f"seed{s}") for s in seeds]
    start = time.perf_counter()
    with rb.ray_session(None, num_cpus=CPUS) as ray:
        started = time.perf_counter() - start
        console.print(f"  local Ray cluster up in {started:.1f} s")
        t = time.perf_counter()
        results = rb.train_ray(
            remote,
            overwrite=True,
            strategy="loop",
            on_result=lambda r: console.print(f"  (b) {r.run_dir.name}: {r.wall_time:.1f} s"),
        )
        wall_b = time.perf_counter() - t
        worker_times = [r.wall_time for r in results]

        # a worker killed after the run's first checkpoint: retried, resumed, same weights
        spec = RunSpec(args.task, recipe, 0, args.work / "killed" / "seed0")
        killed: list[tuple[int, int]] = []

        def kill_once(event) -> None:
            name, step, _, _ = event
            if not killed and step > recipe.checkpoint_every + recipe.eval_every:
                try:
                    pid = int(lock_path(Path(name)).read_text())
                except (FileNotFoundError, ValueError):  # finished already (or just started)
                    return
                os.kill(pid, signal.SIGKILL)
                killed.append((pid, step))
                console.print(f"  killed worker {pid} at step {step}")

        t = time.perf_counter()
        (res,) = rb.train_ray([spec], overwrite=True, on_event=kill_once)
        retry_wall = time.perf_counter() - t
        ray.shutdown()  # counted: `--backend ray` alone pays it
    wall_b_started = time.perf_counter() - start - retry_wall
    equal = sum(same_weights(a.run_dir, b.run_dir) for a, b in zip(local, remote, strict=True))
    retry = {
        "killed_worker_pid": killed[0][0] if killed else None,
        "killed_at_step": killed[0][1] if killed else None,
        "resumed_from_step": res.extra.get("resumed_from_step"),
        "steps": res.steps,
        "same_weights_as_uninterrupted": same_weights(local[0].run_dir, spec.run_dir),
        "wall_s": round(retry_wall, 2),
    }
    retry["ok"] = bool(
        killed and retry["resumed_from_step"] and retry["same_weights_as_uninterrupted"]
    )
    load_after = load()

    def overhead(wall: float) -> float:
        return wall * CPUS / args.trials - mean_a

    report = {
        "task": args.task,
        "trials": args.trials,
        "steps_per_run": steps,
        "cpus": CPUS,
        "ray_version": ray.__version__,
        "a_sequential_wall_s": round(wall_a, 2),
        "a_mean_run_s": round(mean_a, 3),
        "a_run_s": [round(x, 2) for x in times],
        "b_cluster_start_s": round(started, 2),
        "b_wall_s": round(wall_b, 2),
        "b_wall_with_start_s": round(wall_b_started, 2),
        "a_mean_training_loop_s": round(statistics.mean(trained), 3),
        "b_mean_training_loop_in_worker_s": round(statistics.mean(worker_times), 3),
        # how much slower the same loop ran with both CPUs busy (other jobs' load included)
        "b_slowdown_of_training_loop": round(
            statistics.mean(worker_times) / statistics.mean(trained), 3
        ),
        # what is left of the overhead once that slowdown is taken out: Ray, worker start-up
        # (imports), set-up and files of each run
        "overhead_per_run_beyond_slowdown_s": round(
            wall_b * CPUS / args.trials
            - statistics.mean(worker_times)
            - (mean_a - statistics.mean(trained)),
            3,
        ),
        "ratio_b_over_a": round(wall_b / wall_a, 3),
        "ratio_b_with_start_over_a": round(wall_b_started / wall_a, 3),
        "overhead_per_run_s": round(overhead(wall_b), 3),
        "overhead_per_run_with_start_s": round(overhead(wall_b_started), 3),
        "targets": {"ratio": 0.6, "overhead_per_run_s": 1.0},
        "control_multiprocessing": control,
        "runs_with_same_weights": f"{equal}/{args.trials}",
        "kill_and_retry": retry,
        "load_before": load_before,
        "load_after": load_after,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results, report)

    table = Table(title=f"{args.trials} runs of {args.task} ({steps} steps): one process vs Ray")
    for col in ("", "wall s", "ratio to (a)", "overhead / run s"):
        table.add_column(col, justify="left" if not col else "right")
    table.add_row("(a) one after another, 1 thread", f"{wall_a:.1f}", "1", "-")
    table.add_row(
        f"(b) Ray, {CPUS} CPUs, cluster up",
        f"{wall_b:.1f}",
        f"{report['ratio_b_over_a']:.3f}",
        f"{report['overhead_per_run_s']:.2f}",
    )
    table.add_row(
        f"(b) Ray, {CPUS} CPUs, with its start ({started:.1f} s)",
        f"{wall_b_started:.1f}",
        f"{report['ratio_b_with_start_over_a']:.3f}",
        f"{report['overhead_per_run_with_start_s']:.2f}",
    )
    if control:
        table.add_row(
            f"(c) control: {CPUS} local worker processes",
            f"{control['c_pool_wall_s']:.1f}",
            f"{control['ratio_c_over_a']:.3f}",
            f"{control['overhead_per_run_c_s']:.2f}",
        )
    console.print(table)
    console.print(
        f"training loop: {report['a_mean_training_loop_s']:.2f} s alone, "
        f"{report['b_mean_training_loop_in_worker_s']:.2f} s in a Ray worker (x"
        f"{report['b_slowdown_of_training_loop']:.2f} with both CPUs busy); overhead per run "
        f"beyond that slowdown {report['overhead_per_run_beyond_slowdown_s']:.2f} s; same "
        f"weights in {equal}/{args.trials} runs. Kill and retry: "
        f"{'ok' if retry['ok'] else 'FAILED'} (killed at step {retry['killed_at_step']}, resumed "
        f"from {retry['resumed_from_step']}, same weights "
        f"{retry['same_weights_as_uninterrupted']}). Load {load_before['load_1m']:.2f} before, "
        f"{load_after['load_1m']:.2f} after; results in {args.results}"
    )
    return 0 if retry["ok"] and equal == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
