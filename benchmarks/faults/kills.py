"""Random kill -9 of training (single, stacked, --workers 2), extraction and catalog puts
(SQLite and Bolt), each followed by a re-run and integrity checks.

The work is done in lineages: a fresh command is killed at a random moment, then re-run
(`--resume` for training, the same command otherwise), the re-run may be killed again (2-5
kills per lineage, drawn from the seeded RNG), and the last re-run is let finish. Each kill is
one case, holding: the killed command, the checks of what it left on disk, and the re-run that
followed it (killed in turn, which starts the next case, or finished and fully verified).

Kill moments: mostly a uniform delay after the command's first write (its files under the
output directory change), up to the length of an uninterrupted run; a sixth of them a uniform
delay from the process start (during imports and setup).

After every kill: no process of the job outlives the killed one (grace 1 s, 5 s for worker
pools); nothing is published unfinished (a published run equals the uninterrupted reference, a
published extraction directory has every file); the SQLite catalog passes PRAGMA
integrity_check; every record `catalog export` returns equals the record that was put; `catalog
stats` counts agree with the records present. After every finished re-run: the reference
weights bit for bit, the reference metrics rows in order, no `.partial` left, the catalog holding
exactly the expected records and counts; at the end, one more re-run changes nothing.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faults.fixtures import CatalogSource, Fixtures, RefRuns, published
from faults.harness import (
    Case,
    Done,
    Job,
    Proc,
    compare_run,
    sqlite_integrity,
    strip_meta,
    tree,
)
from faults.issue12 import verify_runs


def signature(root: Path) -> frozenset[tuple[str, int, int]]:
    out = set()
    for p in root.rglob("*") if root.exists() else []:
        try:
            st = p.stat()
        except OSError:
            continue
        out.add((str(p), st.st_mtime_ns, st.st_size))
    return frozenset(out)


def changed(root: Path) -> Callable[[], bool]:
    """True once anything under root differs from now."""
    before = signature(root)
    return lambda: signature(root) != before


class Killer:
    """Seeded kill moments: (delay, wait-for-first-write?)."""

    def __init__(self, rng: random.Random, window: float, startup: float = 3.0) -> None:
        self.rng = rng
        self.window = window
        self.startup = startup

    def kill(self, proc: Proc, watch: Path | None) -> tuple[bool, str]:
        if watch is None or self.rng.random() < 1 / 6:
            delay = self.rng.uniform(0.2, self.startup + self.window)
            return proc.kill9_after(delay), f"{delay:.2f} s after start"
        delay = self.rng.uniform(0.0, self.window * 1.1)
        return proc.kill9_after(delay, changed(watch), 120), f"{delay:.2f} s after first write"


def lineages(
    job: Job,
    rng: random.Random,
    n_kills: int,
    *,
    name: str,
    category: str,
    scenario: str,
    setup: Callable[[Path], dict[str, Any]],
    argv: Callable[[dict[str, Any], bool], list[str]],
    watch: Callable[[dict[str, Any]], Path | None],
    killer: Killer,
    after_kill: Callable[[Case, dict[str, Any]], None],
    after_finish: Callable[[Case, dict[str, Any], Done, bool], None],
    teardown: Callable[[dict[str, Any]], None] | None = None,
    timeout: float = 300,
) -> None:
    """Kill, check, re-run, ... as described in the module docstring."""
    kills = attempts = lineage = 0
    while kills < n_kills and attempts < 3 * n_kills + 5:
        lineage += 1
        d = job.work / f"l{lineage}"
        d.mkdir()
        state = setup(d)
        state["dir"] = d
        length = rng.randint(2, 5)
        try:
            attempts += 1
            proc = job.start(argv(state, False), cwd=d, timeout=timeout, env=state.get("env"))
            killed, when = killer.kill(proc, watch(state))
            killed_done: Done | None = proc.wait()
            if not killed:  # it finished first: no kill to count; aim earlier next time
                killer.window *= 0.7
                continue
            in_lineage = 0
            while killed_done is not None:
                kills += 1
                in_lineage += 1
                last = kills >= n_kills
                with job.case(f"{name} kill {kills}", category, scenario) as c:
                    c.note(f"lineage {lineage}, kill {in_lineage} of up to {length}, {when}")
                    c.record(killed_done)  # the main command, unless a re-run finishes
                    killed_done = None
                    after_kill(c, state)
                    proc = c.start(argv(state, True), cwd=d, timeout=timeout, env=state.get("env"))
                    if in_lineage < length and not last:
                        attempts += 1
                        killed, when = killer.kill(proc, watch(state))
                        if killed:
                            killed_done = proc.wait()
                            c.sweep = False  # its orphans are the next case's to judge
                    if killed_done is None:
                        done = c.record(proc.wait(), expect_ok="lost")
                        c.orphans(grace=1.0)
                        after_finish(c, state, done, last)
        finally:
            if teardown:
                teardown(state)


# ---------------------------------------------------------------------------------------------
# training


def train(job: Job, fx: Fixtures, kind: str, n_kills: int, seed: int) -> None:
    get: Callable[[], RefRuns] = {"single": fx.single, "stack": fx.stack, "workers": fx.workers}[
        kind
    ]
    ref = get()  # fetched again at each check: remade if circuitlab's source changed
    grace = 5.0 if kind == "workers" else 1.0
    rng = random.Random(f"{seed}-train-{kind}")

    def after_kill(c: Case, st: dict[str, Any]) -> None:
        c.orphans(grace=grace)
        ref = get()
        out = st["dir"] / "out"
        reported = st.setdefault("reported", set())  # runs already counted in this lineage
        for rel, run in published(out).items():
            if rel not in ref.runs:
                c.problem("violation", f"unexpected run directory published: {rel}")
                continue
            problems = compare_run(run, ref.runs[rel])
            if problems and rel in reported:
                c.note(f"{rel} still differs (counted in an earlier kill)")
                continue
            for problem in problems:
                c.problem("lost", f"published after the kill: {rel}: {problem}")
            if problems:
                reported.add(rel)

    def after_finish(c: Case, st: dict[str, Any], done: Done, last: bool) -> None:
        verify_runs(
            c,
            st["dir"] / "out",
            get().runs,
            "after the finished --resume",
            st.setdefault("reported", set()),
        )

    lineages(
        job,
        rng,
        n_kills,
        name=f"train {kind}",
        category=f"kill -9: train {kind}",
        scenario=f"kill -9 `{' '.join(['circuitlab', *ref.args])}` at a random moment, then "
        "--resume (killed again or finished): reference weights and metrics, no orphans",
        setup=lambda d: {},
        argv=lambda st, again: [*ref.args, *(["--resume"] if again else [])],
        watch=lambda st: st["dir"] / "out",
        killer=Killer(rng, max(ref.train_seconds, 0.5)),
        after_kill=after_kill,
        after_finish=after_finish,
    )


# ---------------------------------------------------------------------------------------------
# extraction


def extraction(job: Job, fx: Fixtures, n_kills: int, seed: int) -> None:
    ref = fx.extraction()
    rng = random.Random(f"{seed}-extract")

    def setup(d: Path) -> dict[str, Any]:
        fx.tiny_run(d / "run")
        return {"url": f"sqlite:///{d / 'catalog.db'}"}

    def records(c: Case, st: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]] | None:
        url = st["url"]
        exp = c.run(
            ["catalog", "-c", url, "export", "x.jsonl"],
            cwd=st["dir"],
            primary=False,
            expect_ok="lost",
        )
        stats = c.run(
            ["catalog", "-c", url, "stats", "--json"],
            cwd=st["dir"],
            primary=False,
            expect_ok="lost",
        )
        if exp.rc != 0 or stats.rc != 0:
            return None
        found = {}
        for line in (st["dir"] / "x.jsonl").read_text().splitlines()[1:]:
            if line.strip():
                data = json.loads(line)
                found[data["id"]] = strip_meta(data)
        return found, json.loads(stats.stdout)["counts"]

    def check_dir(c: Case, st: dict[str, Any], when: str) -> None:
        ref = fx.extraction(st["dir"] / "run")
        ext = st["dir"] / "run" / "extraction"
        if ext.exists():
            files = tree(ext)
            missing = sorted(ref.files - files)
            c.check(
                not missing,
                "lost",
                f"{when}: run/extraction published without {len(missing)} file(s) "
                f"(e.g. {missing[:2]})",
            )

    def after_kill(c: Case, st: dict[str, Any]) -> None:
        c.orphans(grace=1.0)
        ref = fx.extraction(st["dir"] / "run")  # the same weights, uninterrupted
        check_dir(c, st, "after the kill")
        bad = sqlite_integrity(st["dir"] / "catalog.db")
        c.check(bad is None, "lost", f"after the kill: {bad}")
        if (st["dir"] / "catalog.db").exists():
            got = records(c, st)
            if got:
                for rid, rec in got[0].items():
                    c.check(
                        ref.records.get(rid) == rec,
                        "lost",
                        f"after the kill: {rec.get('kind')} {rid[:12]} differs from the "
                        "uninterrupted extraction's",
                    )

    def after_finish(c: Case, st: dict[str, Any], done: Done, last: bool) -> None:
        ref = fx.extraction(st["dir"] / "run")
        check_dir(c, st, "after the re-run")
        for again in range(2 if last else 1):
            if again:  # idempotence: one more full extraction changes nothing
                c.run(
                    ["extract", "run", "--catalog", st["url"]],
                    cwd=st["dir"],
                    timeout=300,
                    expect_ok="lost",
                    primary=False,
                )
            got = records(c, st)
            if got is None:
                continue
            found, counts = got
            when = "after another extract" if again else "after the re-run"
            missing = [f"{ref.records[i]['kind']} {i[:12]}" for i in set(ref.records) - set(found)]
            extra = [f"{found[i].get('kind')} {i[:12]}" for i in set(found) - set(ref.records)]
            c.check(
                not missing and not extra,
                "lost",
                f"{when}: the catalog lacks {missing} and holds {extra} compared with an "
                "uninterrupted extraction",
            )
            diff = [i for i in found if i in ref.records and found[i] != ref.records[i]]
            c.check(not diff, "lost", f"{when}: {len(diff)} record(s) differ")
            c.check(counts == ref.counts, "lost", f"{when}: stats {_diff(counts, ref.counts)}")

    lineages(
        job,
        rng,
        n_kills,
        name="extract",
        category="kill -9: extract",
        scenario="kill -9 `circuitlab extract run --catalog sqlite:///...` at a random moment, "
        "re-run it: no half-written extraction published, catalog intact and equal to an "
        "uninterrupted extraction's",
        setup=setup,
        argv=lambda st, again: ["extract", "run", "--catalog", st["url"]],
        watch=lambda st: None,
        killer=Killer(rng, max(ref.seconds - 2.5, 1.0), startup=2.5),
        after_kill=after_kill,
        after_finish=after_finish,
    )


def _diff(a: dict[str, int], b: dict[str, int]) -> str:
    return ", ".join(
        f"{k} {a.get(k)} (expected {b.get(k)})"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    )


# ---------------------------------------------------------------------------------------------
# catalog puts


def catalog(job: Job, fx: Fixtures, backend: str, n_kills: int, seed: int, n_circuits: int) -> None:
    src: CatalogSource = fx.catalog_source(n_circuits)
    rng = random.Random(f"{seed}-catalog-{backend}")
    keys = fx.count_keys
    expected = {i: strip_meta(r) for i, r in src.records.items()}
    servers: dict[Path, Any] = {}

    def setup(d: Path) -> dict[str, Any]:
        if backend == "sqlite":
            return {"url": f"sqlite:///{d / 'catalog.db'}", "env": {}}
        ctx = fx.bolt(job)
        url, env = ctx.__enter__()
        servers[d] = ctx
        return {"url": url, "env": env}

    def teardown(st: dict[str, Any]) -> None:
        ctx = servers.pop(st.get("dir"), None)
        if ctx is not None:
            ctx.__exit__(None, None, None)

    def read(c: Case, st: dict[str, Any], when: str) -> dict[str, Any] | None:
        d, url, env = st["dir"], st["url"], st["env"]
        exp = c.run(
            ["catalog", "-c", url, "export", "x.jsonl"],
            cwd=d,
            env=env,
            primary=False,
            expect_ok="lost",
            timeout=120,
        )
        stats = c.run(
            ["catalog", "-c", url, "stats", "--json"],
            cwd=d,
            env=env,
            primary=False,
            expect_ok="lost",
            timeout=120,
        )
        if exp.rc != 0 or stats.rc != 0:
            return None
        found = {}
        for line in (d / "x.jsonl").read_text().splitlines()[1:]:
            if line.strip():
                data = json.loads(line)
                found[data["id"]] = strip_meta(data)
        for rid, rec in found.items():
            c.check(
                expected.get(rid) == rec,
                "lost",
                f"{when}: {rec.get('kind')} {rid[:12]} differs from the record put",
            )
        counts = json.loads(stats.stdout)["counts"]
        want = fx.expected_counts(src, set(found))
        off = {k: (counts.get(k), want[k]) for k in keys if counts.get(k) != want[k]}
        c.check(
            not off,
            "lost",
            f"{when}: counts disagree with the records present: "
            + ", ".join(f"{k} {a} (records imply {b})" for k, (a, b) in off.items()),
        )
        return found

    def after_kill(c: Case, st: dict[str, Any]) -> None:
        c.orphans(grace=1.0)
        if backend == "sqlite":
            bad = sqlite_integrity(st["dir"] / "catalog.db")
            c.check(bad is None, "lost", f"after the kill: {bad}")
        if backend == "bolt" or (st["dir"] / "catalog.db").exists():
            found = read(c, st, "after the kill")
            present = sorted(i for i in found or () if i in src.nodes)
            if present:  # one of the circuits that made it, shown as a user would
                c.run(
                    ["catalog", "-c", st["url"], "show", rng.choice(present)],
                    cwd=st["dir"],
                    env=st["env"],
                    expect_ok="lost",
                    primary=False,
                )

    def after_finish(c: Case, st: dict[str, Any], done: Done, last: bool) -> None:
        d, url, env = st["dir"], st["url"], st["env"]
        for again in range(2 if last else 1):
            when = "after another import" if again else "after the re-run"
            if again:
                c.run(
                    ["catalog", "-c", url, "import", str(src.path)],
                    cwd=d,
                    env=env,
                    expect_ok="lost",
                    primary=False,
                    timeout=300,
                )
            found = read(c, st, when)
            if found is not None:
                c.check(
                    set(found) == set(expected),
                    "lost",
                    f"{when}: {len(found)} records, {len(expected)} were put",
                )
        cid = rng.choice(src.circuits)
        c.run(["catalog", "-c", url, "show", cid], cwd=d, env=env, expect_ok="lost", primary=False)
        killer.window = max(killer.window, done.seconds)

    killer = Killer(rng, 1.5 if backend == "sqlite" else 4.0, startup=0.0)
    lineages(
        job,
        rng,
        n_kills,
        name=f"catalog {backend}",
        category=f"kill -9: catalog {backend}",
        scenario=f"kill -9 `circuitlab catalog import` of {n_circuits} circuits into "
        f"{'SQLite' if backend == 'sqlite' else 'a Bolt server (ArcadeDB)'}, re-import: "
        "integrity, every record intact, counts consistent, re-put idempotent",
        setup=setup,
        argv=lambda st, again: ["catalog", "-c", st["url"], "import", str(src.path)],
        watch=lambda st: None,
        killer=killer,
        after_kill=after_kill,
        after_finish=after_finish,
        teardown=teardown,
    )


JOBS = ("single", "stack", "workers", "extract", "sqlite", "bolt")
