"""What many cases share, made once per benchmark run and on first use (thread-safe):
uninterrupted reference runs, a reference extraction, synthetic catalog exports, Bolt servers.

References are made through the same public CLI the cases use; when one fails, every case
that needs it reports a harness error naming the failed command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faults.harness import (
    CLI,
    MEM_CAP,
    Done,
    HarnessError,
    Job,
    Proc,
    source_hash,
    strip_meta,
    tree,
)

TASK = "add_mod_7"  # 49 inputs: every command runs in seconds
SINGLE_SETS = ("max_steps=400", "checkpoint_every=20")
STACK_SETS = ("max_steps=300", "checkpoint_every=20")
WORKER_SETS = ("max_steps=300", "checkpoint_every=20")
SEEDS = "0-3"


def train_args(
    *,
    seeds: str = "0",
    sets: tuple[str, ...] = SINGLE_SETS,
    out: str = "out",
    task: str = TASK,
    extra: tuple[str, ...] = ("--threads", "1"),
) -> list[str]:
    args = ["train", "--task", task, "--seeds", seeds, "--out", out]
    for s in sets:
        args += ["--set", s]
    return args + list(extra)


SINGLE = train_args()
STACK = train_args(
    seeds=SEEDS, sets=STACK_SETS, extra=("--strategy", "stack", "--workers", "1", "--threads", "1")
)
WORKERS = train_args(seeds=SEEDS, sets=WORKER_SETS, extra=("--strategy", "stack", "--workers", "2"))


def published(out: Path) -> dict[str, Path]:
    """Run directories under `out` that look finished (summary.json, not *.partial)."""
    return {
        str(p.parent.relative_to(out)): p.parent
        for p in sorted(out.rglob("summary.json"))
        if not any(part.endswith((".partial", ".old", ".tmp")) for part in p.parent.parts)
        and p.parent.name != "extraction"
    }


@dataclass(frozen=True)
class RefRuns:
    args: list[str]
    out: Path
    runs: dict[str, Path]  # path relative to --out -> run directory
    seconds: float  # the whole command
    train_seconds: float  # the longest run's own wall time (summary.json)


@dataclass(frozen=True)
class RefExtraction:
    run: Path  # the run it extracted (a copy of the single reference run)
    files: set[str]  # RUN/extraction, relative
    records: dict[str, Any]  # catalog records by id, without metadata
    counts: dict[str, int]  # catalog stats
    seconds: float


@dataclass(frozen=True)
class CatalogSource:
    path: Path  # an export file: header line + one record per line
    records: dict[str, dict[str, Any]]  # id -> to_dict()
    nodes: dict[str, tuple[int, int, frozenset[str]]]  # circuit id -> (nodes, edges, features)
    circuits: list[str]


def cli(
    job: Job,
    args: list[str],
    timeout: float = 300,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Done:
    return Proc(
        job, [*CLI, *args], cwd=cwd or job.work, env=job.env(env), timeout=timeout, mem=MEM_CAP
    ).wait()


def _must(job: Job, done: Done, what: str) -> Done:
    if done.rc != 0:
        raise HarnessError(
            f"{what} failed: `{job.show(done.argv)}` exit {done.rc}: "
            f"{done.last_line or done.first_line}"
        )
    return done


class Fixtures:
    def __init__(self, suite: Any) -> None:
        self.suite = suite
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._values: dict[str, tuple[bool, Any]] = {}
        self.count_keys: list[str] = []
        self.seconds: dict[str, float] = {}  # how long each fixture took to make

    def _once(self, key: str, make: Any, versioned: bool = False) -> Any:
        """make() once per key (and, when versioned, per version of circuitlab's source: a
        reference is only a reference for the code that made it)."""
        if versioned:
            key = f"{key}@{source_hash()[:12]}"
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._values:
                t0 = time.monotonic()
                try:
                    self._values[key] = (True, make())
                except HarnessError as exc:
                    self._values[key] = (False, str(exc))
                except Exception as exc:  # noqa: BLE001
                    self._values[key] = (False, f"fixture {key}: {type(exc).__name__}: {exc}")
                self.seconds[key] = round(time.monotonic() - t0, 1)
        ok, value = self._values[key]
        if not ok:
            raise HarnessError(value)
        return value

    # -- training ----------------------------------------------------------------------------
    def _runs(self, key: str, args: list[str]) -> RefRuns:
        def make() -> RefRuns:
            job = self.suite.job(f"fixture-{key}")
            done = _must(job, cli(job, args), f"reference run {key}")
            out = job.work / "out"
            runs = published(out)
            if not runs:
                raise HarnessError(f"reference run {key} published no run under {out}")
            walls = [
                json.loads((p / "summary.json").read_text()).get("wall_time_s", 0)
                for p in runs.values()
            ]
            return RefRuns(args, out, runs, done.seconds, float(max(walls)))

        return self._once(key, make, versioned=True)

    def single(self) -> RefRuns:
        return self._runs("single", SINGLE)

    def stack(self) -> RefRuns:
        return self._runs("stack", STACK)

    def workers(self) -> RefRuns:
        return self._runs("workers", WORKERS)

    def tiny_run(self, dest: Path) -> Path:
        """A copy of the single reference run (a finished add_mod_7 run) at dest."""
        (src,) = self.single().runs.values()
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns("extraction*"))
        return dest

    # -- extraction --------------------------------------------------------------------------
    def extraction(self, source: Path | None = None) -> RefExtraction:
        """An uninterrupted extraction of the run at `source` (default: the single reference
        run), made once per content of that run and version of circuitlab's source."""
        source = source or next(iter(self.single().runs.values()))
        content = hashlib.sha256()  # the run's files: weights, config, summary (not extraction)
        for f in sorted(source.iterdir()):
            if f.is_file():
                content.update(f.name.encode() + b"\0" + f.read_bytes())
        weights = content.hexdigest()

        def make() -> RefExtraction:
            job = self.suite.job("fixture-extraction")
            run = job.work / "run"
            shutil.copytree(source, run, ignore=shutil.ignore_patterns("extraction*"))
            url = f"sqlite:///{job.work / 'catalog.db'}"
            done = _must(job, cli(job, ["extract", "run", "--catalog", url]), "reference extract")
            records, counts = self.read_catalog(job, url)
            return RefExtraction(run, tree(run / "extraction"), records, counts, done.seconds)

        return self._once(f"extraction-{weights[:12]}", make, versioned=True)

    def read_catalog(
        self, job: Job, url: str, env: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """Every record (by id, without metadata) and the stats of a catalog, via the CLI."""
        dest = job.root / f"export-{time.monotonic_ns()}.jsonl"
        _must(
            job,
            cli(job, ["catalog", "-c", url, "export", str(dest)], env=env, timeout=120),
            "catalog export",
        )
        records = {}
        for line in dest.read_text().splitlines()[1:]:
            if line.strip():
                data = json.loads(line)
                records[data["id"]] = strip_meta(data)
        dest.unlink()
        stats = _must(
            job,
            cli(job, ["catalog", "-c", url, "stats", "--json"], env=env, timeout=120),
            "catalog stats",
        )
        return records, json.loads(stats.stdout)["counts"]

    # -- catalog -----------------------------------------------------------------------------
    def catalog_source(self, n_circuits: int) -> CatalogSource:
        def make() -> CatalogSource:
            from circuitlab.catalog import synthetic

            job = self.suite.job(f"fixture-catalog{n_circuits}")
            model = synthetic.model()
            pool = synthetic.feature_pool(model.id)
            circuits = [
                synthetic.circuit(model, seed=i, n_features=60, n_edges=150, pool=pool)
                for i in range(n_circuits)
            ]
            records = [synthetic.task(), model, *circuits]
            path = job.root / f"catalog{n_circuits}.jsonl"
            header = {"format": "circuitlab-catalog", "schema": 1, "counts": {}}
            dicts = [r.to_dict() for r in records]
            header["schema"] = dicts[0]["schema"]
            path.write_text("".join(json.dumps(d) + "\n" for d in [header, *dicts]))
            nodes = {
                c.id: (len(c.nodes), len(c.edges), frozenset(n.feature.id for n in c.nodes))
                for c in circuits
            }
            source = CatalogSource(
                path, {d["id"]: d for d in dicts}, nodes, [c.id for c in circuits]
            )
            # which stats keys follow from the records alone: checked on a fresh SQLite import
            url = f"sqlite:///{job.work / 'check.db'}"
            _must(job, cli(job, ["catalog", "-c", url, "import", str(path)]), "reference import")
            _, counts = self.read_catalog(job, url)
            expected = self.expected_counts(source, set(source.records))
            self.count_keys = sorted(k for k, v in expected.items() if counts.get(k) == v)
            return source

        return self._once(f"catalog{n_circuits}", make)

    @staticmethod
    def expected_counts(source: CatalogSource, present: set[str]) -> dict[str, int]:
        kinds = [source.records[i]["kind"] for i in present if i in source.records]
        circuits = [i for i in present if i in source.nodes]
        return {
            "task": kinds.count("task"),
            "model": kinds.count("model"),
            "circuit": len(circuits),
            "feature": len(frozenset().union(*(source.nodes[c][2] for c in circuits))),
            "HAS_FEATURE": sum(source.nodes[c][0] for c in circuits),
            "ATTRIBUTES": sum(source.nodes[c][1] for c in circuits),
            "EXTRACTED_FROM": len(circuits),
            "TRAINED_ON": kinds.count("model"),
        }

    # -- Bolt --------------------------------------------------------------------------------
    @contextmanager
    def bolt(self, job: Job) -> Iterator[tuple[str, dict[str, str]]]:
        """A fresh local Bolt + Cypher server (ArcadeDB) for one job: (url, credentials env)."""
        try:
            from circuitlab.catalog.arcadedb import LocalBoltServer
        except ImportError as exc:
            raise HarnessError(f"no Bolt server available: {exc}") from None
        server = LocalBoltServer(job.root / "bolt", heap="1g")
        try:
            server.start()
        except Exception as exc:  # noqa: BLE001
            raise HarnessError(f"the local Bolt server did not start: {exc}"[:400]) from None
        try:
            yield server.url, dict(server.env())
        finally:
            server.stop()
            shutil.rmtree(job.root / "bolt", ignore_errors=True)


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}
