"""Running, killing and judging commands; comparing runs and catalogs; recording cases.

Every command runs as its own process session (so a timeout can kill its whole group), with its
output in files (a pipe would keep us waiting on orphans that inherited it), with HOME and the
default catalog and registry pointed into its case directory (nothing touches ~/.circuitlab),
under an address-space cap, and with an environment variable that marks it and every process it
starts: that mark is how stray processes (orphaned workers) are found in /proc, and how they are
killed, by pid, when a case ends.

A case's outcome comes only from what was observed: exit codes, stderr, files on disk,
processes. Problems, most severe first (the first one present names the outcome):

    error      the benchmark itself could not run the case (a bug here or a failed fixture)
    hang       a command outlived its timeout
    traceback  "Traceback" on stderr
    lost       a run or record lost or corrupted (weights differ from an uninterrupted run,
               metrics rows missing or out of order, a half-written directory published, a
               catalog that fails its integrity check or whose records or counts are wrong)
    orphan     processes left running after their parent died
    crash      a command died of a signal nobody sent
    unclean    nonzero exit without a traceback but with no message or a long one
    violation  anything else the scenario forbids: files outside --out, a partial run left
               by a refused command, NaN/Infinity in a JSON file, a wrong exit code, a legal
               input refused

With no problem, a case is "ok" when its main command exited 0 and "clean error" otherwise.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback as _traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PYTHON = sys.executable
CLI = [PYTHON, "-m", "circuitlab"]
MARK = "CIRCUITLAB_FAULTS_JOB"
MEM_CAP = 4 << 30  # bytes of address space for every circuitlab command
TRACEBACK = "Traceback (most recent call last)"
MAX_ERROR_LINES = 12  # a "short message": at most this many lines and characters on stderr
MAX_ERROR_CHARS = 10_000  # generous: a message may quote a long input back

KINDS: dict[str, str] = {
    "error": "harness error",
    "hang": "hang",
    "traceback": "traceback",
    "lost": "lost/corrupted",
    "orphan": "orphans",
    "crash": "crash",
    "unclean": "unclean error",
    "violation": "violation",
}


class HarnessError(Exception):
    """The benchmark could not set up a case (e.g. a reference run failed)."""


# ---------------------------------------------------------------------------------------------
# commands


@dataclass
class Done:
    """A command that ended (by itself, by our signal, or by its timeout)."""

    argv: list[str]
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    sent: str | None = None  # the signal we sent it, if any

    @property
    def first_line(self) -> str:
        return _first(self.stderr)

    @property
    def last_line(self) -> str:
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""

    @property
    def traceback(self) -> bool:
        return TRACEBACK in self.stderr


def _first(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _preexec(mem: int | None) -> Callable[[], None]:
    def fn() -> None:
        # a benchmark started in the background of a non-interactive shell ignores SIGINT, and
        # that would be inherited: commands get Ctrl-C as they would in a terminal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if mem:
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    return fn


def restricted() -> list[str]:
    """A command prefix under which file modes bind (a read-only file cannot be written, a
    0555 directory cannot get new entries): nothing for an ordinary user; for root, setpriv
    dropping the capabilities that override file permissions."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        raise HarnessError("running as root without setpriv: cannot make a file read-only")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


class Proc:
    """A running command of a case."""

    def __init__(
        self,
        job: Job,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        timeout: float,
        mem: int | None,
    ) -> None:
        self.job = job
        self.argv = argv
        n = job.next_log()
        self.out_path = job.logs / f"{n:04d}.out"
        self.err_path = job.logs / f"{n:04d}.err"
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.timeout = timeout
        self.sent: str | None = None
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_preexec(mem),
            )
        self.pid = self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def send(self, sig: int, group: bool = False) -> bool:
        """Signal the command (only its main process, or its whole process group)."""
        if not self.running():
            return False
        try:
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        self.sent = signal.Signals(sig).name
        return True

    def wait(self, timeout: float | None = None) -> Done:
        """Wait for the end (at most until the deadline; then kill the group: a hang)."""
        remaining = self.deadline - time.monotonic() if timeout is None else timeout
        timed_out = False
        try:
            rc = self.popen.wait(max(0.0, remaining))
        except subprocess.TimeoutExpired:
            timed_out = True
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.job.kill_marked()
            rc = self.popen.wait()
        return Done(
            self.argv,
            rc,
            self.out_path.read_text(errors="replace"),
            self.err_path.read_text(errors="replace"),
            round(time.monotonic() - self.started, 3),
            timed_out,
            self.sent,
        )

    def kill9_after(
        self, delay: float, ready: Callable[[], bool] | None = None, ready_timeout: float = 60
    ) -> bool:
        """kill -9 the main process `delay` s after `ready()` first holds (or after the start);
        False when it ended by itself first."""
        t0 = time.monotonic()
        if ready is not None:
            while self.running() and not ready() and time.monotonic() - t0 < ready_timeout:
                time.sleep(0.01)
            t0 = time.monotonic()
        while self.running() and time.monotonic() - t0 < delay:
            time.sleep(0.005)
        return self.send(signal.SIGKILL)


def source_hash() -> str:
    """sha256 of the circuitlab package's Python sources (what the CLI runs): references are
    remade when it changes, and a run reports whether it changed under it."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("circuitlab")
    if spec is None or spec.origin is None:
        return "unknown"
    root = Path(spec.origin).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        digest.update(str(path.relative_to(root)).encode() + b"\0" + data + b"\0")
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# stray processes


def marked_pids(value: str, prefix: bool = False) -> dict[int, str]:
    """Live processes whose environment carries our mark `value` (or any mark starting with
    it), with their command lines."""
    needle = f"{MARK}={value}".encode()
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
            if state in (b"Z", b"X"):
                continue
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            if not any(e.startswith(needle) if prefix else e == needle for e in env):
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
        found[int(entry)] = cmd[:200]
    return found


def kill_pids(pids: dict[int, str] | list[int], wait: float = 5.0) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{pid}/stat", "rb") as fh:
                    if fh.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                        break
            except OSError:
                break
            time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# files


class _NonStrict(ValueError):
    pass


def _refuse(constant: str) -> Any:
    raise _NonStrict(constant)


def strict_loads(text: str) -> Any:
    """json.loads that refuses NaN, Infinity and -Infinity."""
    return json.loads(text, parse_constant=_refuse)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def nonstrict_json(
    root: Path, planted: dict[Path, tuple[int, int]] | None = None, limit: int = 64 << 20
) -> list[str]:
    """Files under root (.json, .jsonl) holding NaN/Infinity: 'path: NaN (line 3)'. Files the
    benchmark planted as inputs are skipped while unchanged."""
    found = []
    planted = planted or {}
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".json", ".jsonl") or not path.is_file() or path.is_symlink():
            continue
        try:
            if path.stat().st_size > limit or planted.get(path) == _stamp(path):
                continue
            text = path.read_text(errors="replace")
        except OSError:
            continue
        docs = list(enumerate(text.splitlines(), 1)) if path.suffix == ".jsonl" else [(0, text)]
        for line, doc in docs:
            if not doc.strip():
                continue
            try:
                strict_loads(doc)
            except _NonStrict as exc:
                where = f" (line {line})" if line else ""
                found.append(f"{path.relative_to(root)}: {exc}{where}")
                break
            except (json.JSONDecodeError, RecursionError):
                continue  # torn or invalid: not what this check is about
    return found


def tree(root: Path) -> set[str]:
    """Every path under root, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Rows of a JSON Lines file and how many lines did not parse (strictly) as objects."""
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = strict_loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def load_tensors(path: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def weights_diff(test: Path, ref: Path) -> str | None:
    """None when both safetensors files hold the same tensors bit for bit."""
    try:
        a, b = load_tensors(test), load_tensors(ref)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the finding
        return f"unreadable weights {test.name}: {type(exc).__name__}: {exc}"[:300]
    if set(a) != set(b):
        return f"weights hold tensors {sorted(set(a) ^ set(b))[:3]} not in the reference"
    differ = [
        k
        for k in sorted(a)
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()
    ]
    if differ:
        return f"weights differ from the uninterrupted run in {len(differ)} tensors ({differ[0]})"
    return None


def describe_steps(steps: list[Any]) -> str:
    if not steps:
        return "0 rows"
    nums = [s for s in steps if isinstance(s, int | float)]
    in_order = all(x < y for x, y in zip(nums, nums[1:], strict=False))
    dups = len(nums) - len(set(nums))
    return (
        f"{len(steps)} rows, steps {nums[0] if nums else '?'}..{nums[-1] if nums else '?'}"
        + ("" if in_order else ", out of order")
        + (f", {dups} duplicated" if dups else "")
    )


RUN_FILES = ("config.json", "model.safetensors", "metrics.jsonl", "summary.json")


def compare_run(test: Path, ref: Path) -> list[str]:
    """What differs between a run directory and the reference run of the same command."""
    missing = [f for f in RUN_FILES if not (test / f).is_file()]
    if missing:
        return [f"{test.name} published without {', '.join(missing)}"]
    problems = []
    diff = weights_diff(test / "model.safetensors", ref / "model.safetensors")
    if diff:
        problems.append(diff)
    rows, bad = read_jsonl(test / "metrics.jsonl")
    ref_rows, _ = read_jsonl(ref / "metrics.jsonl")
    if bad:
        problems.append(f"metrics.jsonl has {bad} unreadable line(s)")
    steps, ref_steps = [r.get("step") for r in rows], [r.get("step") for r in ref_rows]
    if steps != ref_steps:
        problems.append(
            f"metrics: {describe_steps(steps)}; uninterrupted run: {describe_steps(ref_steps)}"
        )
    else:
        keys = [k for k in (ref_rows[0] if ref_rows else {}) if "loss" in k or "acc" in k]
        for r, q in zip(rows, ref_rows, strict=True):
            off = [k for k in keys if not _same(r.get(k), q.get(k))]
            if off:
                problems.append(f"metrics at step {r.get('step')} differ in {off}")
                break
    try:
        summary = strict_loads((test / "summary.json").read_text())
        ref_summary = strict_loads((ref / "summary.json").read_text())
        if summary.get("steps") != ref_summary.get("steps"):
            problems.append(
                f"summary says {summary.get('steps')} steps, uninterrupted run "
                f"{ref_summary.get('steps')}"
            )
        if (
            rows
            and isinstance(rows[-1].get("step"), int)
            and summary.get("steps") != rows[-1].get("step")
        ):
            problems.append(
                f"summary says {summary.get('steps')} steps, metrics end at {rows[-1].get('step')}"
            )
    except (ValueError, AttributeError, OSError) as exc:
        problems.append(f"summary.json unreadable: {exc}"[:200])
    return problems


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def sqlite_integrity(path: Path) -> str | None:
    """None when PRAGMA integrity_check says ok (or there is no file)."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = con.execute("PRAGMA integrity_check").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        return f"sqlite cannot check {path.name}: {exc}"
    if rows != [("ok",)]:
        return f"PRAGMA integrity_check: {rows[:3]}"
    return None


def strip_meta(obj: Any) -> Any:
    """A record without its metadata (provenance, timestamps), at any depth."""
    if isinstance(obj, dict):
        return {k: strip_meta(v) for k, v in obj.items() if k != "metadata"}
    if isinstance(obj, list):
        return [strip_meta(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# cases and jobs


@dataclass
class CmdRecord:
    command: str
    exit_code: int | None
    seconds: float
    stderr_first_line: str
    stderr_last_line: str
    timed_out: bool
    signal_sent: str | None


@dataclass
class CaseResult:
    name: str
    category: str
    scenario: str
    outcome: str
    passed: bool
    exit_code: int | None
    command: str
    stderr_first_line: str
    stderr_last_line: str
    problems: list[dict[str, str]]
    seconds: float
    commands: list[CmdRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Case:
    """One case: its commands, what they showed, its problems."""

    def __init__(self, job: Job, name: str, category: str, scenario: str) -> None:
        self.job = job
        self.name = name
        self.category = category
        self.scenario = scenario
        self.problems: list[tuple[str, str]] = []
        self.commands: list[CmdRecord] = []
        self.notes: list[str] = []
        self.primary: Done | None = None
        self.started = time.monotonic()
        # kill the job's leftover processes when the case ends; off when the next case is to
        # judge them (the orphans of a kill that belongs to it)
        self.sweep = True

    # -- running -----------------------------------------------------------------------------
    def start(self, args: list[str], **kw: Any) -> Proc:
        """Start `circuitlab ARGS` (see Job.start)."""
        return self.job.start(args, **kw)

    def run(
        self,
        args: list[str],
        *,
        judge: bool = True,
        expect_ok: str | None = None,
        primary: bool = True,
        **kw: Any,
    ) -> Done:
        done = self.start(args, **kw).wait()
        self.record(done, judge=judge, expect_ok=expect_ok, primary=primary)
        return done

    def record(
        self, done: Done, *, judge: bool = True, expect_ok: str | None = None, primary: bool = True
    ) -> Done:
        """Keep a finished command, and judge it: hang, traceback, crash, unclean message."""
        cmd = self.job.show(done.argv)
        self.commands.append(
            CmdRecord(
                cmd,
                done.rc,
                done.seconds,
                done.first_line,
                done.last_line,
                done.timed_out,
                done.sent,
            )
        )
        if primary:
            self.primary = done
        short = cmd if len(cmd) < 160 else cmd[:157] + "..."
        if done.timed_out:
            self.problem("hang", f"no end within {round(done.seconds)} s: {short}")
            return done
        if done.traceback:
            self.problem("traceback", f"{short}: {done.last_line}")
        if not judge or done.sent == "SIGKILL":
            return done
        if done.rc is not None and done.rc < 0 and not done.sent:
            self.problem("crash", f"{short}: died of {signal.Signals(-done.rc).name}")
        elif done.rc and not done.traceback:
            lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
            if not lines:
                self.problem("unclean", f"{short}: exit {done.rc} with nothing on stderr")
            elif len(lines) > MAX_ERROR_LINES or len(done.stderr) > MAX_ERROR_CHARS:
                self.problem(
                    "unclean",
                    f"{short}: exit {done.rc}, {len(lines)} lines on stderr ({done.first_line})",
                )
        if expect_ok and done.rc != 0 and not done.timed_out:
            self.problem(expect_ok, f"{short}: exit {done.rc}: {done.first_line or done.last_line}")
        return done

    # -- judging -----------------------------------------------------------------------------
    def problem(self, kind: str, message: str) -> None:
        assert kind in KINDS, kind
        if (kind, message) not in self.problems:
            self.problems.append((kind, message[:600]))

    def check(self, ok: bool, kind: str, message: str) -> bool:
        if not ok:
            self.problem(kind, message)
        return ok

    def plant(self, path: Path) -> None:
        """`path` is an input the benchmark wrote: not judged by the strict-JSON check."""
        self.job.planted[path] = _stamp(path)

    def note(self, text: str) -> None:
        self.notes.append(text[:300])

    def orphans(self, grace: float = 1.0, kill: bool = True) -> dict[int, str]:
        """Processes of this job still alive after `grace` seconds: an 'orphan' problem."""
        left = self.job.wait_marked(grace)
        if left:
            cmds = "; ".join(f"{pid}: {c[:90]}" for pid, c in list(left.items())[:3])
            self.problem("orphan", f"{len(left)} process(es) outlived their parent: {cmds}")
            if kill:
                kill_pids(left)
        return left

    def result(self) -> CaseResult:
        kinds = [k for k, _ in self.problems]
        worst = next((k for k in KINDS if k in kinds), None)
        p = self.primary
        if worst:
            outcome = KINDS[worst]
        elif p is None or p.rc == 0 or p.sent:  # ended as planned by our signal
            outcome = "ok"
        else:
            outcome = "clean error"
        return CaseResult(
            name=self.name,
            category=self.category,
            scenario=self.scenario,
            outcome=outcome,
            passed=worst is None,
            exit_code=None if p is None else p.rc,
            command="" if p is None else self.job.show(p.argv),
            stderr_first_line="" if p is None else p.first_line,
            stderr_last_line="" if p is None else p.last_line,
            problems=[{"kind": k, "message": m} for k, m in self.problems],
            seconds=round(time.monotonic() - self.started, 2),
            commands=self.commands,
            notes=self.notes,
        )


class Job:
    """A unit of scheduling: its own directories and process mark; records one or more cases.

    Directories: ROOT/work (the cwd and the files under test), ROOT/home (HOME, default catalog
    and registry), ROOT/logs (stdout/stderr of every command)."""

    _lock = threading.Lock()
    _count = 0

    def __init__(self, suite: Suite, name: str) -> None:
        with Job._lock:
            Job._count += 1
            n = Job._count
        self.suite = suite
        self.name = name
        self.tag = f"{suite.tag}-{n}"
        self.root = suite.root / f"{n:03d}-{name}"
        self.work = self.root / "work"
        self.home = self.root / "home"
        self.logs = self.root / "logs"
        for d in (self.work, self.home, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self._log = 0
        self.results: list[CaseResult] = []
        self.flagged_json: set[str] = set()
        self.planted: dict[Path, tuple[int, int]] = {}

    def start(
        self,
        args: list[str],
        *,
        cwd: Path | None = None,
        timeout: float = 90,
        mem: int | None = MEM_CAP,
        readonly: bool = False,
        env: dict[str, str] | None = None,
        raw: bool = False,
    ) -> Proc:
        """Start `circuitlab ARGS` (or ARGS itself with raw=True) in this job; with readonly,
        file modes bind even for root (see `restricted`)."""
        argv = list(args) if raw else [*CLI, *args]
        if readonly:
            argv = [*restricted(), *argv]
        return Proc(self, argv, cwd=cwd or self.work, env=self.env(env), timeout=timeout, mem=mem)

    def next_log(self) -> int:
        self._log += 1
        return self._log

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CIRCUITLAB_", "NEO4J_", "COLUMNS"))
        }
        env.update(
            {
                "HOME": str(self.home),
                "CIRCUITLAB_CATALOG": str(self.home / "catalog.db"),
                "CIRCUITLAB_REGISTRY": str(self.home / "functions"),
                "PYTHONUNBUFFERED": "1",
                MARK: self.tag,
            }
        )
        env.update(extra or {})
        return env

    def show(self, argv: list[str]) -> str:
        """A command as a user would type it, paths inside this job shortened."""
        if argv and argv[0] == "setpriv":
            argv = argv[argv.index("--") + 1 :]
        args = ["circuitlab", *argv[3:]] if argv[:3] == CLI else list(argv)
        text = shlex.join(args)
        return text.replace(str(self.root), "$CASE")

    def wait_marked(self, grace: float) -> dict[int, str]:
        deadline = time.monotonic() + grace
        while True:
            left = marked_pids(self.tag)
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def kill_marked(self) -> None:
        kill_pids(marked_pids(self.tag))

    @contextmanager
    def case(self, name: str, category: str, scenario: str) -> Iterator[Case]:
        """Record one case; an exception inside is a harness error of this case, not a crash
        of the benchmark."""
        case = Case(self, name, category, scenario)
        try:
            yield case
        except HarnessError as exc:
            case.problem("error", str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug in a scenario must not stop the suite
            where = _traceback.extract_tb(exc.__traceback__)[-1]
            case.problem(
                "error",
                f"benchmark: {type(exc).__name__}: {exc} "
                f"({Path(where.filename).name}:{where.lineno})",
            )
        finally:
            for item in nonstrict_json(self.work, self.planted):
                if item not in self.flagged_json:
                    self.flagged_json.add(item)
                    case.problem("violation", f"NaN/Infinity in JSON: {item}")
            left = marked_pids(self.tag) if case.sweep else {}
            if left:  # e.g. from a timeout; never leave them to the next case
                kill_pids(left)
            result = case.result()
            self.results.append(result)
            self.suite.report(result)


class Suite:
    """Everything one benchmark run shares: the temp root, the mark, the RNG seed, options."""

    def __init__(self, root: Path, seed: int, quick: bool, verbose: bool = True) -> None:
        self.root = root
        self.seed = seed
        self.quick = quick
        self.verbose = verbose
        self.tag = f"{os.getpid()}x{int(time.time())}"
        self.results: list[CaseResult] = []
        self._lock = threading.Lock()
        self.fixtures: Any = None  # set by the runner

    def job(self, name: str) -> Job:
        return Job(self, name)

    def report(self, result: CaseResult) -> None:
        with self._lock:
            self.results.append(result)
            if self.verbose:
                mark = "  " if result.passed else "!!"
                detail = (
                    result.problems[0]["message"] if result.problems else result.stderr_first_line
                )
                print(
                    f"{mark} {result.category:<22} {result.name:<44} {result.outcome:<14} "
                    f"{result.seconds:6.1f}s  {detail[:110]}",
                    flush=True,
                )

    def sweep(self) -> int:
        """Kill every process any of our jobs left behind; how many there were."""
        left = marked_pids(self.tag + "-", prefix=True)
        kill_pids(left)
        return len(left)
