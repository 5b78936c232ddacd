"""Many runs at once: stacked in one process, looped, and spread over worker processes.

On this kind of CPU one process does not use two cores well for matmuls (~93 vs ~2x100
GFLOP/s), so independent work goes to one single-threaded worker per core. Inside a worker,
stacking models pays off when they are small and overhead-bound, and costs when they are large
and compute-bound (activations thrash the cache), so `auto` measures both and picks.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from circuitlab._memory import check_fits, memory_limit
from circuitlab.training.recipe import RecipeError
from circuitlab.training.trainer import (
    SHARED_FIELDS,
    RunResult,
    RunSpec,
    TrainingInterrupted,
    checkpoint_meta,
    estimate_peak_bytes,
    measure_step_time,
    request_stop,
    train_stack,
)

STRATEGIES = ("auto", "stack", "loop")
MAX_STACK = 64
# Below this much single-thread work, worker processes cost more to start than they save
# (measured: 4 Nanda models x 60 steps ran 0.78x as fast on 2 workers as in one process).
MIN_WORKER_SECONDS = 60.0


@dataclass(frozen=True)
class Plan:
    strategy: str  # "stack", "loop", or "mixed" when task groups differ
    workers: int
    chunks: list[list[RunSpec]]  # each chunk is one train_stack call
    measured: dict[str, float]  # seconds per model-step, when measured


def group_stackable(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Partition runs into groups that may share a stack (same task and shared recipe fields)."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        key = repr((spec.task, [getattr(spec.recipe, f) for f in SHARED_FIELDS]))
        groups.setdefault(key, []).append(spec)
    return list(groups.values())


def _split(items: list[RunSpec], parts: int) -> list[list[RunSpec]]:
    parts = max(1, min(parts, len(items)))
    return [items[i::parts] for i in range(parts)]


def plan(specs: Sequence[RunSpec], workers: int | None = None, strategy: str = "auto") -> Plan:
    """Decide how to run `specs`: worker count, and stack or loop, by measured step times.

    `auto`, when more than one worker could run, first times one model single-threaded to
    estimate the whole job; short jobs stay in this process. It then times a stack against one
    model under the threads the job will really run with (a stack that loses single-threaded can
    win on two threads). A single run is never timed.
    """
    if strategy not in STRATEGIES:
        raise RecipeError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    workers = max(1, min(workers or os.cpu_count() or 1, len(specs)))
    groups = group_stackable(specs)
    workers, max_stack = _memory_bounds(groups, workers)
    measured: dict[str, float] = {}
    picks = [strategy] * len(groups)
    single: list[float | None] = [None] * len(groups)  # one model, one thread, s/step
    if strategy == "auto" and workers > 1:
        single = [_timed(group[:1], threads=1) for group in groups]
        estimated = sum(
            sum(s.recipe.max_steps for s in group) * t
            for group, t in zip(groups, single, strict=True)
        )
        measured["estimated_single_thread_s"] = estimated
        if estimated < MIN_WORKER_SECONDS:
            # Starting worker processes (spawn, import torch, build data) costs seconds:
            # short jobs run faster in this process on all its threads.
            workers = 1
    if strategy == "auto":
        threads = None if workers == 1 else 1
        for i, group in enumerate(groups):
            if len(group) == 1:
                picks[i] = "loop"
                continue
            size = min(len(group), max_stack, -(-len(group) // workers))
            one = single[i] if threads == 1 and single[i] else _timed(group[:1], threads)
            many = _timed(group[:size], threads) / size
            measured |= {"loop_s_per_model_step": one, f"stack{size}_s_per_model_step": many}
            picks[i] = "stack" if many < 0.95 * one else "loop"
    chunks: list[list[RunSpec]] = []
    for group, pick in zip(groups, picks, strict=True):
        if pick == "loop":
            chunks += [[s] for s in group]
        else:
            for part in _split(group, workers):
                chunks += [part[i : i + max_stack] for i in range(0, len(part), max_stack)]
    chosen = picks[0] if len(set(picks)) == 1 else "mixed"
    return Plan(chosen, workers, chunks, measured)


def _memory_bounds(groups: list[list[RunSpec]], workers: int) -> tuple[int, int]:
    """Workers and models per stack that fit in memory (see `estimate_peak_bytes`); a single
    run that cannot fit is refused before anything starts, with the setting that helps."""
    limit = memory_limit()
    max_stack = MAX_STACK
    for group in groups:
        one = estimate_peak_bytes(group[:1])
        check_fits(
            one,
            f"training {group[0].task}",
            "train on minibatches (e.g. --set batch_size=512) or a smaller model",
            limit,
        )
        workers = max(1, min(workers, int(limit // one)))
        per_model = estimate_peak_bytes(group[:2]) - one if len(group) > 1 else one
        room = limit / workers - one
        max_stack = max(1, min(max_stack, 1 + int(room // max(per_model, 1.0))))
    return workers, max_stack


def _timed(specs: Sequence[RunSpec], threads: int | None) -> float:
    """Seconds per step of `specs` stacked, with `threads` torch threads (None: as now)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return measure_step_time(specs)
    finally:
        torch.set_num_threads(before)


def resume_groups(specs: Sequence[RunSpec]) -> dict[str, list[RunSpec]]:
    """Runs by how they resume: "finished", "fresh" (no checkpoint), or "step N" (checkpoint)."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        if (spec.run_dir / "summary.json").is_file():
            key = "finished"
        else:
            meta = checkpoint_meta(spec.run_dir)
            key = "fresh" if meta is None else f"step {meta['step']}"
        groups.setdefault(key, []).append(spec)
    return groups


ProgressEvent = tuple[str, int, int, float]  # (run dir, step, max steps, best val acc)


def _event(
    chunk: list[RunSpec], step: int, max_steps: int, rows: list[dict[str, float]]
) -> ProgressEvent:
    """A stack's progress, named by its first run, with the best validation accuracy in it."""
    return (str(chunk[0].run_dir), step, max_steps, max(r["val_acc"] for r in rows))


_EVENTS = None  # a worker's progress queue, set by _init_worker


def _init_worker(events: object, parent: int) -> None:
    """Pool worker set-up: die with the parent, and stop at the next step on Ctrl-C (the
    terminal sends SIGINT to the whole process group; the worker checkpoints and returns)."""
    global _EVENTS
    _EVENTS = events
    die_with_parent(parent)
    signal.signal(signal.SIGINT, lambda signum, frame: request_stop())


def die_with_parent(parent: int | None = None) -> None:
    """Make this process exit when its parent does, however the parent dies (kill -9 too): a
    worker left running would keep writing a run directory nobody watches. Linux delivers
    SIGKILL through prctl(PR_SET_PDEATHSIG); a watchdog thread covers other systems.

    `parent` is the pid the parent gave us: a spawned worker spends a second importing torch
    before it gets here, and a parent killed in that second has already been replaced by init
    (or a subreaper) as our parent, which os.getppid() alone would not notice."""
    parent = os.getppid() if parent is None else parent
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def _worker_run(args: tuple[list[RunSpec], bool, bool]) -> list[RunResult]:
    chunk, resume, overwrite = args

    def report(step: int, max_steps: int, rows: list[dict[str, float]]) -> None:
        if _EVENTS is not None:
            _EVENTS.put(_event(chunk, step, max_steps, rows))  # type: ignore[attr-defined]

    try:
        return train_stack(chunk, resume=resume, overwrite=overwrite, threads=1, progress=report)
    except TrainingInterrupted:  # checkpointed; a BaseException would kill the pool worker
        return []


def train_many(
    specs: Sequence[RunSpec],
    *,
    workers: int | None = None,
    strategy: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    on_plan: Callable[[Plan], None] | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    threads: int | None = None,
    on_skip: Callable[[RunSpec], None] | None = None,
) -> list[RunResult]:
    """Train every run: stacked or looped per the plan, one single-threaded worker per core.

    `threads` sets torch's threads when everything runs in this process (None: torch's default).
    With one worker everything runs in this process using all its threads.

    With `resume`, finished runs are skipped (`on_skip` hears of each), runs with a checkpoint
    continue from it (runs stacked together only when checkpointed at the same step), and runs
    that never checkpointed start over.
    """
    if resume:
        groups = resume_groups(specs)
        for spec in groups.pop("finished", []):
            if on_skip:
                on_skip(spec)
        batches = [(group, key != "fresh") for key, group in groups.items()]
    else:
        batches = [(list(specs), False)]
    results = []
    for group, resumed in batches:
        the_plan = plan(group, workers, strategy)
        if on_plan:
            on_plan(the_plan)
        results += _run_plan(the_plan, resumed, overwrite, on_event, on_result, threads)
    order = {s.run_dir: i for i, s in enumerate(specs)}
    return sorted(results, key=lambda r: order[r.run_dir])


def _run_plan(
    the_plan: Plan,
    resume: bool,
    overwrite: bool,
    on_event: Callable[[ProgressEvent], None] | None,
    on_result: Callable[[RunResult], None] | None,
    threads: int | None,
) -> list[RunResult]:
    results: list[RunResult] = []
    if the_plan.workers == 1:
        for chunk in the_plan.chunks:

            def report(step, max_steps, rows, chunk=chunk):
                if on_event:
                    on_event(_event(chunk, step, max_steps, rows))

            for res in train_stack(
                chunk, resume=resume, overwrite=overwrite, progress=report, threads=threads
            ):
                results.append(res)
                if on_result:
                    on_result(res)
        return results
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            try:
                event = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if on_event:
                on_event(event)

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    pool = ctx.Pool(the_plan.workers, initializer=_init_worker, initargs=(events, os.getpid()))
    try:
        jobs = [(chunk, resume, overwrite) for chunk in the_plan.chunks]
        for chunk_results in pool.imap_unordered(_worker_run, jobs):
            for res in chunk_results:
                results.append(res)
                if on_result:
                    on_result(res)
        pool.close()
    except KeyboardInterrupt:
        # Each worker checkpoints its stack and returns, and jobs not yet started return at
        # once. The terminal sent SIGINT to the workers too; a `kill -INT` of this process
        # alone did not, so pass it on. Wait for them (a second Ctrl-C stops waiting).
        for worker in pool._pool:  # no public API lists a pool's processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGINT)
        pool.close()
        try:
            pool.join()
        except KeyboardInterrupt:
            pool.terminate()
        raise TrainingInterrupted(None, [s.run_dir for c in the_plan.chunks for s in c]) from None
    finally:
        pool.terminate()
        pool.join()
        stop.set()
        pumper.join()
        events.close()
    return results
