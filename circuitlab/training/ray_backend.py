"""Sweeps on a Ray cluster (the `ray` extra): the same stacks `parallel.plan` makes, one Ray
task per stack, retried when a worker dies, with progress and results gathered on the driver.

Assumptions and guarantees:
 - Shared filesystem: workers write run directories at the paths the driver names (made
   absolute here), and the driver reads them (resume, retry state). A local cluster shares the
   machine's disk; on a multi-node cluster the output directory must be mounted at the same path
   everywhere (NFS or similar, with working `flock`), and `circuitlab` installed on every node.
 - Writes stay atomic as in local training: a worker writes `RUN.partial/` and renames it to
   `RUN` when finished, under the run's lock (`rundir.RunLock`, an `flock` the kernel drops when
   the holding process dies, however it dies).
 - A killed worker loses nothing but the steps since its last checkpoint: Ray retries the task
   (`max_retries`), and the retry finds what the killed attempt left behind by comparing each
   run's files with the snapshot the driver took before submitting (`_Stamp`): runs the killed
   attempt finished are reported from their summary, runs it checkpointed resume from the
   checkpoint (to the same weights as an uninterrupted run: training is deterministic per
   seed), the others start over.
 - Nothing but the driver touches the catalog (training never writes it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuitlab.training import rundir
from circuitlab.training.parallel import Plan, ProgressEvent, _event, plan, resume_groups
from circuitlab.training.trainer import (
    CHECKPOINT_FILE,
    RunResult,
    RunSpec,
    TrainingInterrupted,
    checkpoint_meta,
    request_stop,
    train_stack,
)

INSTALL_HINT = "--backend ray needs Ray: pip install 'circuitlab[ray]'"
CONNECT_TIMEOUT_S = 3.0  # a reachable cluster answers a TCP connect well within this
BUSY_WAIT_S = 5.0  # a retried task waits this long for a lock still held by a dying attempt
EVENT_INTERVAL_S = 0.25  # a task sends at most ~4 progress events a second


class RayBackendError(RuntimeError):
    """Ray is missing, a cluster cannot be reached, or a task failed for good (one line)."""


class RunBusyError(RuntimeError):
    """A run's lock is still held (by an attempt Ray gave up on that is still exiting); the
    task is retried, once the holder is gone it proceeds."""


def import_ray(local: bool = False) -> Any:
    """The `ray` module, or RayBackendError saying how to install it.

    `local`: this process will start a local instance, which then listens on loopback only
    (Ray's switch for that is read when `ray` is first imported)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise RayBackendError(INSTALL_HINT) from None
    return ray


def _host_port(address: str) -> tuple[str, int]:
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayBackendError(
            f"--address must be auto, HOST:PORT or ray://HOST:PORT, got {address!r}"
        )
    return host, int(port)


def check_address(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, within about `timeout` seconds, a cluster address where no Ray (gRPC) server
    answers (ray.init would retry for minutes). None (start a local instance) always passes."""
    if address is None:
        return
    if address == "auto":
        import_ray()
        env = os.environ.get("RAY_ADDRESS", "")
        if env and env != "auto":
            target = env
        else:
            try:
                from ray._private.services import canonicalize_bootstrap_address_or_die

                target = canonicalize_bootstrap_address_or_die("auto")
            except ConnectionError as exc:
                raise RayBackendError(f"--address auto: {exc}") from None
            except Exception:  # Ray's internals moved: let ray.init find the cluster
                return
    else:
        target = address
    host, port = _host_port(target)
    try:
        # one deadline for the connect and for each read of the answer
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if os.environ.get("RAY_USE_TLS", "0") in ("0", ""):
                _grpc_handshake(sock, f"{host}:{port}")
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise RayBackendError(f"cannot reach a Ray cluster at {target}: {reason}") from None


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big")
    return head + payload


def _hpack(name: str, value: str) -> bytes:
    """A header as an HPACK literal without indexing, new name, no Huffman (RFC 7541 6.2.2)."""

    def string(text: str) -> bytes:
        data, n = text.encode(), len(text.encode())
        if n < 127:  # a length in the 7-bit prefix, else 127 and continuation bytes (5.1)
            return bytes([n]) + data
        out, n = [127], n - 127
        while n >= 128:
            out.append(n % 128 + 128)
            n //= 128
        return bytes([*out, n]) + data

    return b"\x00" + string(name) + string(value)


def _grpc_handshake(sock: socket.socket, authority: str) -> None:
    """Raise OSError unless the peer answers a gRPC call as a gRPC server does (HTTP status
    200, whatever the gRPC status). Ray's GCS and its client server are gRPC servers; a TCP
    connect alone also succeeds against other services, and against proxies that accept any
    connection (and answer such a call with 404)."""
    headers = (
        b"\x83\x86"  # :method POST, :scheme http (HPACK static table)
        + _hpack(":path", "/grpc.health.v1.Health/Check")
        + _hpack(":authority", authority)
        + _hpack("content-type", "application/grpc")
        + _hpack("te", "trailers")
    )
    sock.sendall(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # the client connection preface (RFC 9113 3.4)
        + _frame(4, 0, 0)  # SETTINGS, empty
        + _frame(1, 0x4, 1, headers)  # HEADERS, END_HEADERS, stream 1
        + _frame(0, 0x1, 1, b"\x00\x00\x00\x00\x00")  # DATA: an empty message, END_STREAM
    )

    def read(n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = sock.recv(n - len(data))
            if not part:
                raise OSError("closed the connection: not a Ray cluster")
            data += part
        return data

    for _ in range(64):  # the server's SETTINGS, maybe WINDOW_UPDATE or PING, then HEADERS
        head = read(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        payload = read(length)
        if kind == 4 and not flags & 0x1:
            sock.sendall(_frame(4, 0x1, 0))  # acknowledge the server's SETTINGS
        elif kind == 7:  # GOAWAY
            raise OSError("refused the call: not a Ray cluster")
        elif kind == 1:  # HEADERS; skip padding length and priority fields if flagged
            block = payload[(1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0) :]
            if block[:1] == b"\x88":  # :status 200 (static table index 8)
                return
            raise OSError("answers, but not as a Ray (gRPC) server")
    raise OSError("does not answer as a Ray (gRPC) server")


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Ray, connected: an instance this process already joined is used as it is; otherwise
    `address` None starts a local one on loopback (`num_cpus`, default all cores; no dashboard,
    no usage stats) and "auto", "HOST:PORT" or "ray://HOST:PORT" joins a cluster. Whatever
    this started or joined is shut down (disconnected) on exit."""
    ray = import_ray(local=address is None)
    if ray.is_initialized():
        yield ray
        return
    check_address(address)
    try:
        if address is None:
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                logging_level=logging.ERROR,
            )
        else:
            ray.init(address=address, logging_level=logging.ERROR)
    except Exception as exc:  # ConnectionError, RuntimeError, ValueError, grpc errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if address is None:
            raise RayBackendError(f"cannot start a local Ray instance: {first}") from None
        raise RayBackendError(
            f"cannot connect to {address}: {first} (a cluster with token authentication, "
            "Ray's default, needs RAY_AUTH_MODE=token and its token when given as HOST:PORT)"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


# --- what a retried task finds ---------------------------------------------------------------
@dataclass(frozen=True)
class _Stamp:
    """Identity of a run's summary and checkpoint files when the driver submitted its task:
    a file that differs at retry time was written by an earlier attempt of this sweep (files
    are always replaced by a rename, so a new one is a new inode with a new mtime)."""

    summary: tuple[int, int, int] | None
    checkpoint: tuple[int, int, int] | None

    @classmethod
    def of(cls, run_dir: Path) -> _Stamp:
        ckpt = rundir.partial_path(run_dir) / "checkpoint" / CHECKPOINT_FILE
        return cls(_file_id(run_dir / "summary.json"), _file_id(ckpt))


def _file_id(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _finished_result(spec: RunSpec) -> RunResult:
    summary = json.loads((spec.run_dir / "summary.json").read_text())
    return RunResult(
        spec.run_dir,
        summary["seed"],
        summary["steps"],
        summary["grokked_at"],
        summary["final"],
        summary["wall_time_s"],
        {"finished_by_earlier_attempt": True},
    )


def _attempt_batches(
    chunk: Sequence[RunSpec], stamps: Sequence[_Stamp], resume: bool
) -> tuple[list[RunResult], list[tuple[list[RunSpec], bool]]]:
    """(results of runs an earlier attempt finished, [(runs, resume them?)] still to train).

    A first attempt sees every file as the driver did and trains as `train_many` would; a
    retry resumes every checkpoint its killed predecessor wrote, grouped by checkpoint step
    (a kill in the middle of checkpointing a stack can leave two)."""
    done: list[RunResult] = []
    groups: dict[str, list[RunSpec]] = {}
    for spec, stamp in zip(chunk, stamps, strict=True):
        now = _Stamp.of(spec.run_dir)
        if now.summary is not None and now.summary != stamp.summary:
            done.append(_finished_result(spec))
            continue
        meta = None
        if now.checkpoint is not None and (resume or now.checkpoint != stamp.checkpoint):
            meta = checkpoint_meta(spec.run_dir)
        key = "fresh" if meta is None else f"step {meta['step']}"
        groups.setdefault(key, []).append(spec)
    return done, [(g, key != "fresh") for key, g in groups.items()]


def _wait_unlocked(chunk: Sequence[RunSpec], wait: float = BUSY_WAIT_S) -> None:
    """Wait (briefly) until no process holds a run's lock. The kernel drops an flock when its
    holder dies, so a retry after a killed worker finds the locks free at once; one still held
    means an attempt that is still exiting, or another writer."""
    deadline = time.monotonic() + wait
    for spec in chunk:
        while True:
            try:
                rundir.RunLock(spec.run_dir).acquire().release()
                break
            except rundir.RunDirError as exc:
                if time.monotonic() > deadline:
                    raise RunBusyError(str(exc)) from None
                time.sleep(0.2)


class _Events:
    """The driver's progress mailbox (a Ray actor that takes no CPU): tasks `put` events
    without waiting, the driver `drain`s them."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []

    def put(self, event: ProgressEvent) -> None:
        self.events.append(event)

    def drain(self) -> list[ProgressEvent]:
        out, self.events = self.events, []
        return out


def _train_chunk(
    chunk: list[RunSpec],
    stamps: list[_Stamp],
    resume: bool,
    overwrite: bool,
    threads: int,
    events: Any,
) -> list[RunResult]:
    """One Ray task: train a stack of runs (see `_attempt_batches` for retries)."""
    import circuitlab.training.trainer as trainer

    # ray.cancel (the driver's Ctrl-C) interrupts the main thread as a SIGINT would: stop at
    # the next step with a checkpoint. The worker process outlives the task, so undo both.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda s, f: request_stop()) if in_main else None
    trainer._STOP.clear()
    try:
        _wait_unlocked(chunk)
        results, batches = _attempt_batches(chunk, stamps, resume)
        last = [0.0]

        def report(step: int, max_steps: int, rows: list[dict[str, float]]) -> None:
            now = time.monotonic()
            if events is not None and (now - last[0] >= EVENT_INTERVAL_S or step >= max_steps):
                last[0] = now
                events.put.remote(_event(chunk, step, max_steps, rows))

        for group, resumed in batches:
            step = checkpoint_meta(group[0].run_dir)["step"] if resumed else None
            for res in train_stack(
                group, resume=resumed, overwrite=overwrite, threads=threads, progress=report
            ):
                if step is not None:
                    res.extra["resumed_from_step"] = step
                results.append(res)
        return results
    except TrainingInterrupted:
        return []  # checkpointed; the driver is stopping
    finally:
        trainer._STOP.clear()
        if in_main:
            signal.signal(signal.SIGINT, previous)


# --- the driver --------------------------------------------------------------------------------
def _spread(chunks: list[list[RunSpec]], slots: int) -> list[list[RunSpec]]:
    """Split the largest stacks until there is a task for every slot (or every run has one)."""
    chunks = [list(c) for c in chunks]
    while len(chunks) < slots:
        biggest = max(range(len(chunks)), key=lambda i: len(chunks[i]))
        if len(chunks[biggest]) < 2:
            break
        c = chunks.pop(biggest)
        chunks += [c[0::2], c[1::2]]
    return chunks


def _absolute(spec: RunSpec) -> RunSpec:
    changes = {
        name: getattr(spec, name).absolute()
        for name in ("run_dir", "init", "mask")
        if getattr(spec, name) is not None
    }
    return dataclasses.replace(spec, **changes)


def train_ray(
    specs: Sequence[RunSpec],
    *,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    strategy: str = "auto",
    on_plan: Callable[[Plan], None] | None = None,
    on_event: Callable[[ProgressEvent], None] | None = None,
    on_result: Callable[[RunResult], None] | None = None,
    on_skip: Callable[[RunSpec], None] | None = None,
    cpus_per_task: int = 1,
    num_cpus: int | None = None,
    max_retries: int = 3,
) -> list[RunResult]:
    """Train every run on Ray: stacks as `parallel.plan` makes them (split further so every
    CPU slot of the cluster gets a task), each a Ray task of `cpus_per_task` CPUs and no GPU
    that trains with that many torch threads. Results come back in the order of `specs`;
    callbacks run on this (the driver's) thread. `resume` and `overwrite` mean what they mean
    for `train_many`; a task whose worker dies is retried up to `max_retries` times and
    continues from its checkpoints.

    `address`: None starts a local instance (`num_cpus`, default all cores) for this call;
    "auto", "HOST:PORT" or "ray://HOST:PORT" joins a running cluster. A process already
    connected to Ray (`ray.init` called) uses that connection and keeps it.
    """
    if cpus_per_task < 1:
        raise RayBackendError("cpus_per_task must be >= 1")
    given = {_absolute(s).run_dir: s.run_dir for s in specs}  # workers get absolute paths
    todo = [_absolute(s) for s in specs]
    if resume:
        groups = resume_groups(todo)
        for spec in groups.pop("finished", []):
            if on_skip:
                on_skip(dataclasses.replace(spec, run_dir=given[spec.run_dir]))
        batches = [(group, key != "fresh") for key, group in groups.items()]
    else:
        batches = [(todo, False)] if todo else []
    if not batches:
        return []  # nothing to train: no cluster started or joined
    with ray_session(address, num_cpus) as ray:
        results = _train_connected(
            ray,
            batches,
            given,
            overwrite=overwrite,
            strategy=strategy,
            on_plan=on_plan,
            on_event=on_event,
            on_result=on_result,
            cpus_per_task=cpus_per_task,
            max_retries=max_retries,
        )
    order = {s.run_dir: i for i, s in enumerate(specs)}
    return sorted(results, key=lambda r: order[r.run_dir])


def _train_connected(
    ray: Any,
    batches: list[tuple[list[RunSpec], bool]],
    given: dict[Path, Path],
    *,
    overwrite: bool,
    strategy: str,
    on_plan: Callable[[Plan], None] | None,
    on_event: Callable[[ProgressEvent], None] | None,
    on_result: Callable[[RunResult], None] | None,
    cpus_per_task: int,
    max_retries: int,
) -> list[RunResult]:
    """Plan `batches` ((runs with absolute paths, resume them?)) into tasks, run them, and
    report progress and results under the run directories as given (`given`: absolute ->
    given)."""
    names = {str(k): str(v) for k, v in given.items()}
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < cpus_per_task:
        raise RayBackendError(f"the Ray cluster has {cpus:g} CPU(s); a task needs {cpus_per_task}")
    slots = max(1, int(cpus // cpus_per_task))
    work: list[tuple[list[RunSpec], bool]] = []
    for group, resumed in batches:
        the_plan = plan(group, slots, strategy)
        chunks = _spread(the_plan.chunks, slots)
        if on_plan:
            on_plan(Plan(the_plan.strategy, slots, chunks, the_plan.measured))
        work += [(chunk, resumed) for chunk in chunks]
    if not work:
        return []

    events = ray.remote(num_cpus=0)(_Events).remote()
    task = ray.remote(_train_chunk).options(
        num_cpus=cpus_per_task,
        num_gpus=0,
        max_retries=max_retries,
        retry_exceptions=[RunBusyError],
    )
    pending = {
        task.remote(
            chunk, [_Stamp.of(s.run_dir) for s in chunk], resumed, overwrite, cpus_per_task, events
        ): chunk
        for chunk, resumed in work
    }

    def pump() -> None:
        for name, step, max_steps, val in ray.get(events.drain.remote()):
            if on_event:
                on_event((names.get(name, name), step, max_steps, val))

    results: list[RunResult] = []
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
            pump()
            for ref in ready:
                chunk = pending.pop(ref)
                for res in _get(ray, ref, chunk, max_retries):
                    res.run_dir = given[res.run_dir]
                    results.append(res)
                    if on_result:
                        on_result(res)
        pump()
    except KeyboardInterrupt:
        # Each task checkpoints its stack at the next step and returns; wait for that
        # (a second Ctrl-C stops waiting).
        for ref in pending:
            ray.cancel(ref)
        with contextlib.suppress(KeyboardInterrupt):
            ray.wait(list(pending), num_returns=len(pending), timeout=30)
        raise TrainingInterrupted(
            None, [given[s.run_dir] for c in pending.values() for s in c]
        ) from None
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    finally:
        ray.kill(events)
    return results


def _get(ray: Any, ref: Any, chunk: list[RunSpec], max_retries: int) -> list[RunResult]:
    """A task's results; its failure as the error it raised (a RunDirError stays one), or as a
    RayBackendError when Ray gave up on it."""
    from ray import exceptions as rex

    try:
        return ray.get(ref)
    except rex.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        if cause is not None and not isinstance(cause, RunBusyError):
            raise cause from None
        raise RayBackendError(f"training {chunk[0].run_dir} failed: {exc.cause}") from None
    except (rex.WorkerCrashedError, rex.NodeDiedError, rex.OutOfMemoryError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RayBackendError(
            f"training {chunk[0].run_dir} failed {max_retries + 1} time(s) ({first}); its "
            f"checkpoints are kept: continue with --resume"
        ) from None
    except rex.TaskCancelledError:
        return []
