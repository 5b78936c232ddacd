"""Every numbered item of issue 12 as a scenario, run through the public CLI.

What passes is what the issue asks for, judged from what happens: a clean error (nonzero exit,
a short message, no traceback) with nothing written, or success with the data intact; never a
traceback, a hang, a lost or corrupted run or record, or a file outside --out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faults.fixtures import SINGLE, Fixtures, published, train_args
from faults.harness import Case, Done, Job, compare_run, read_jsonl, tree

DATA, SECURITY, ERRORS = "issue12: data", "issue12: security", "issue12: errors"
QUICK_STEPS = ("max_steps=20",)
# what a run directory holds besides its checkpoint
RUN_OUTPUTS = (
    "config.json",
    "metrics.jsonl",
    "model.safetensors",
    "model_config.json",
    "summary.json",
    "curves.png",
)
LONG = train_args(sets=("max_steps=1000", "checkpoint_every=20"))


# ---------------------------------------------------------------------------------------------
# helpers


def new_files(root: Path, before: set[str]) -> list[str]:
    return sorted(p for p in tree(root) - before if (root / p).is_file())


def nothing_written(case: Case, done: Done, root: Path, before: set[str]) -> None:
    """A refused command must leave nothing behind (README: 'and nothing is written')."""
    if done.rc in (0, None) or done.timed_out:
        return
    left = new_files(root, before)
    case.check(
        not left,
        "violation",
        f"refused (exit {done.rc}) but left {len(left)} file(s), e.g. {left[:2]}",
    )


def partials(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*.partial")) if out.exists() else []


def verify_runs(
    case: Case, out: Path, ref_runs: dict[str, Path], when: str, reported: set[str] | None = None
) -> None:
    """Every reference run is published under `out` and equals it; no partial left. Runs in
    `reported` (already counted as lost by an earlier case of the same lineage) are noted, not
    counted again; newly bad ones are added to it."""
    for rel, ref in ref_runs.items():
        test = out / rel
        problems = compare_run(test, ref) if test.is_dir() else ["was not published"]
        if problems and reported is not None and rel in reported:
            case.note(f"{when}: {rel} still differs (counted in an earlier kill)")
            continue
        for problem in problems:
            case.problem("lost", f"{when}: {rel}: {problem}")
        if problems and reported is not None:
            reported.add(rel)
    left = partials(out)
    case.check(not left, "violation", f"{when}: partial directories left: {left[:2]}")


def export_file(path: Path, records: list[dict[str, Any]]) -> Path:
    from circuitlab.catalog import SCHEMA_VERSION

    header = {"format": "circuitlab-catalog", "schema": SCHEMA_VERSION, "counts": {}}
    path.write_text("".join(json.dumps(r) + "\n" for r in [header, *records]))
    return path


def labelled_circuit(label: str, n_features: int = 20, seed: int = 1) -> list[dict[str, Any]]:
    """Task, model and one circuit (as export dicts, no ids) whose label is `label`."""
    from circuitlab.catalog import synthetic

    model = synthetic.model()
    circuit = synthetic.circuit(model, seed=seed, n_features=n_features, n_edges=2 * n_features)
    data = circuit.to_dict()
    data.pop("id")
    data["interpretation"]["label"] = label
    return [synthetic.task().to_dict(), model.to_dict(), data]


def record_id(data: dict[str, Any]) -> str | None:
    """The id the catalog would give this record (None if it is not a valid record)."""
    from circuitlab.catalog import CatalogError, record_from_dict

    try:
        return record_from_dict(data).id
    except (CatalogError, ValueError, TypeError):
        return None


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def modify_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


# ---------------------------------------------------------------------------------------------
# 1-5: data lost or corrupted


def bolt_reput(job: Job, fx: Fixtures) -> None:
    with job.case(
        "1 bolt re-put 4x",
        DATA,
        "put one 200-feature circuit into the Bolt catalog "
        "4 times (catalog import); counts must not change, show and export must work",
    ) as c:
        records = labelled_circuit("re-put", n_features=200, seed=1)
        cid = record_id(records[2])
        path = export_file(job.work / "one.jsonl", records)
        with fx.bolt(job) as (url, env):
            seen = []
            for _ in range(4):
                c.run(
                    ["catalog", "-c", url, "import", str(path)],
                    env=env,
                    expect_ok="lost",
                    primary=False,
                )
                st = c.run(
                    ["catalog", "-c", url, "stats", "--json"],
                    env=env,
                    expect_ok="lost",
                    primary=False,
                )
                if st.rc == 0:
                    counts = json.loads(st.stdout)["counts"]
                    seen.append((counts.get("HAS_FEATURE"), counts.get("feature")))
            c.note(f"(HAS_FEATURE, feature) after each put: {seen}")
            c.check(
                len(set(seen)) <= 1 and all(h == 200 for h, _ in seen),
                "lost",
                f"HAS_FEATURE links after puts 1-4: {[h for h, _ in seen]} (200 features)",
            )
            c.run(
                ["catalog", "-c", url, "show", cid or "x"], env=env, expect_ok="lost", primary=False
            )
            c.run(["catalog", "-c", url, "export", "all.jsonl"], env=env, expect_ok="lost")


def workers_parent_kill(job: Job, fx: Fixtures) -> None:
    from faults.fixtures import WORKERS

    with job.case(
        "2 kill -9 parent of --workers 2",
        DATA,
        "kill -9 the parent of a --workers 2 "
        "sweep (4 seeds) while its workers train; no worker may outlive it; --resume "
        "then publishes runs equal to an uninterrupted sweep",
    ) as c:
        ref = fx.workers()
        out = job.work / "out"
        p = c.start(WORKERS, timeout=300)
        killed = p.kill9_after(
            ref.train_seconds * 0.4,
            ready=lambda: any(out.rglob("metrics.jsonl")),
            ready_timeout=120,
        )
        c.record(p.wait(), primary=False)
        if not killed:
            c.note("the sweep ended before the kill")
        orphans = c.orphans(grace=5.0, kill=False)  # left running, as a user would
        c.run([*WORKERS, "--resume"], timeout=300, expect_ok="lost")
        if orphans:
            job.wait_marked(60)
            job.kill_marked()
        verify_runs(c, out, ref.runs, "after --resume")


def same_command_twice(job: Job, fx: Fixtures) -> None:
    with job.case(
        "3 same train command twice at once",
        DATA,
        "start the same train command "
        "twice, the second while the first trains; the published run must equal an "
        "uninterrupted one, the loser must fail cleanly",
    ) as c:
        ref = fx._runs("long", LONG)
        out = job.work / "out"
        first = c.start(LONG, timeout=240)
        t0 = time.monotonic()
        while (
            first.running() and not any(out.rglob("metrics.jsonl")) and time.monotonic() - t0 < 60
        ):
            time.sleep(0.01)
        second = c.start(LONG, timeout=240)
        done = sorted([first.wait(), second.wait()], key=lambda d: d.rc != 0)
        c.record(done[0], primary=False)
        c.record(done[1])
        c.check(any(d.rc == 0 for d in done), "lost", "neither command finished the run")
        verify_runs(c, out, ref.runs, "after both ended")


def _snapshots(c: Case, out: Path, dest: Path) -> tuple[Path, Path]:
    """Train SINGLE, pause it (SIGSTOP) at two different checkpoints, copy `out` each time,
    then kill it: two on-disk states of one run, older and newer."""
    dest.mkdir(parents=True, exist_ok=True)
    p = c.start(SINGLE, cwd=dest, timeout=240)

    def ckpt_files(root: Path) -> dict[str, bytes]:
        """Checkpoint files (whatever the partial run holds beyond its outputs) -> sha256."""
        found = {}
        for part in root.rglob("*.partial"):
            for f in part.rglob("*"):
                if f.is_file() and f.name not in RUN_OUTPUTS and not f.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        found[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).digest()
        return found

    snaps: list[Path] = []
    last: dict[str, bytes] = {}
    t0 = time.monotonic()
    while len(snaps) < 2 and p.running() and time.monotonic() - t0 < 120:
        files = ckpt_files(out)
        if files and files != last:
            p.send(signal.SIGSTOP)
            time.sleep(0.02)
            snap = dest / f"snap{len(snaps)}"
            shutil.copytree(out, snap)
            p.send(signal.SIGCONT)
            copied = ckpt_files(snap)  # judged on the copy: what the cases below will use
            if copied and copied != last and all(last.get(k) != v for k, v in copied.items()):
                snaps.append(snap)
                last = copied
            else:
                shutil.rmtree(snap)
        time.sleep(0.005)
    p.send(signal.SIGKILL)
    c.record(p.wait(), primary=False, judge=False)
    if len(snaps) < 2:
        raise RuntimeError("training ended before two checkpoints could be copied")
    return snaps[0], snaps[1]


def checkpoints(job: Job, fx: Fixtures) -> None:
    """4: a kill between checkpoint files, simulated on a copy for every checkpoint file; 5: a
    torn last line in metrics.jsonl. Resume must give the uninterrupted weights or refuse."""
    ref = fx.single()
    setup = job.work / "setup"
    cases: list[tuple[str, str, Callable[[Path], None]]] = []
    with job.case(
        "4 checkpoint snapshots (setup)",
        DATA,
        "train, pause (SIGSTOP) at two "
        "checkpoints, copy the run each time, kill -9: the states resumed below",
    ) as c:
        older, newer = _snapshots(c, setup / "out", setup)
    if job.results[-1].problems:
        return
    old_parts = {str(f.relative_to(older)): f for f in older.rglob("*") if f.is_file()}
    for f in sorted(newer.rglob("*")):
        rel = str(f.relative_to(newer))
        if (
            not f.is_file()
            or ".partial" not in rel
            or f.name.endswith(".tmp")
            or f.name in RUN_OUTPUTS
        ):
            continue
        if rel in old_parts and old_parts[rel].read_bytes() != f.read_bytes():
            cases.append(
                (
                    f"4 checkpoint: {f.name} from the previous checkpoint",
                    f"a kill between checkpoint files, simulated: {f.name} from the older "
                    "checkpoint, the rest from the newer",
                    lambda d, rel=rel: shutil.copy(old_parts[rel], d / rel),
                )
            )
        cases.append(
            (
                f"4 checkpoint: {f.name} truncated",
                f"{f.name} cut to half its length",
                lambda d, rel=rel: (d / rel).write_bytes(
                    (d / rel).read_bytes()[: (d / rel).stat().st_size // 2]
                ),
            )
        )
        cases.append(
            (
                f"4 checkpoint: {f.name} removed",
                f"{f.name} deleted",
                lambda d, rel=rel: (d / rel).unlink(),
            )
        )

    def torn(d: Path) -> None:
        (metrics,) = [m for m in d.rglob("metrics.jsonl") if ".partial" in str(m)]
        with open(metrics, "a") as fh:
            fh.write('{"step": 99, "train_lo')

    cases.append(
        (
            "5 torn last line of metrics.jsonl",
            "half a JSON row appended to the metrics.jsonl of an interrupted run",
            torn,
        )
    )
    for i, (name, what, damage) in enumerate(cases):
        with job.case(
            name,
            DATA,
            f"{what}; then `train --resume`: the uninterrupted run's "
            "weights and metrics, or a clean refusal",
        ) as c:
            d = job.work / f"v{i}"
            shutil.copytree(newer, d / "out")
            damage(d / "out")
            done = c.run([*SINGLE, "--resume"], cwd=d, timeout=180)
            if done.rc == 0:
                verify_runs(c, d / "out", ref.runs, "after --resume")


# ---------------------------------------------------------------------------------------------
# 6-9: security


def name_escape(job: Job, fx: Fixtures) -> None:
    out = "d1/d2/d3/d4/out"
    with job.case(
        "6 --set name=x/../../../../escaped",
        SECURITY,
        "a recipe name with ../ must not put a run outside --out",
    ) as c:
        before = tree(job.work)
        done = c.run(train_args(sets=(*QUICK_STEPS, "name=x/../../../../escaped"), out=out))
        outside = [
            p
            for p in tree(job.work) - before
            if not (p == out or p.startswith(out + "/") or out.startswith(p + "/"))
        ]
        c.check(not outside, "violation", f"wrote outside --out: {sorted(outside)[:3]}")
        nothing_written(c, done, job.work, before)


def slash_task(job: Job, fx: Fixtures) -> None:
    spec = "synth_mod_7[a/b+c]"
    with job.case(
        f"6 task {spec}: train + extract",
        SECURITY,
        "a legal task spec with '/' must train and extract inside the run directory",
    ) as c:
        before = tree(job.work)
        c.run(train_args(task=spec, sets=QUICK_STEPS), expect_ok="violation", timeout=180)
        outside = [p for p in tree(job.work) - before if not (p == "out" or p.startswith("out/"))]
        c.check(not outside, "violation", f"wrote outside --out: {sorted(outside)[:3]}")
        runs = published(job.work / "out")
        c.check(len(runs) == 1, "violation", f"expected one published run, found {list(runs)}")
        for run in runs.values():
            rel = str(run.relative_to(job.work))
            c.run(["runs", "out"], expect_ok="violation", primary=False)
            c.run(
                ["extract", rel, "--catalog", f"sqlite:///{job.work / 'cat.db'}"],
                expect_ok="violation",
                timeout=240,
            )
            c.check(
                (run / "extraction" / "circuit.json").is_file(),
                "violation",
                f"no {rel}/extraction/circuit.json after extract",
            )


# label -> (what it is, the text that must appear literally when shown, or None)
MARKUP_LABELS = {
    "closing tag": ("fourier [/x] closing", "[/x]"),
    "bold": ("[bold red]loud[/bold red] label", "[bold red]"),
    "link": ("[link=http://example.invalid/x]click me[/link]", "[link="),
    "OSC 8 hyperlink": ("\x1b]8;;http://example.invalid/x\x1b\\click me\x1b]8;;\x1b\\", None),
    "ESC clear screen": ("\x1b[2J\x1b[31mred text", None),
}


def markup_labels(job: Job, fx: Fixtures) -> None:
    for what, (label, literal) in MARKUP_LABELS.items():
        with job.case(
            f"7 catalog label: {what}",
            SECURITY,
            f"a circuit labelled {label!r} "
            "is listed, searched and shown as plain text: no markup applied, no "
            "escape byte on the terminal, the rest of the catalog still readable",
        ) as c:
            d = job.work / what.replace(" ", "_")
            d.mkdir()
            records = labelled_circuit(label)
            cid = record_id(records[2])
            path = export_file(d / "in.jsonl", records)
            url = f"sqlite:///{d / 'cat.db'}"
            imp = c.run(["catalog", "-c", url, "import", str(path)], primary=False)
            if imp.rc != 0:
                c.note("the label was refused at import")
                continue
            for args in (["list"], ["search", "--text", "click"], ["show", cid or "x"]):
                done = c.run(["catalog", "-c", url, *args], expect_ok="violation")
                if done.rc != 0:
                    continue
                c.check(
                    "\x1b" not in done.stdout,
                    "violation",
                    f"catalog {args[0]}: an ESC byte from the label reached the terminal",
                )
                if literal and args[0] != "search":
                    c.check(
                        literal in done.stdout,
                        "violation",
                        f"catalog {args[0]}: label not shown literally ({literal!r} missing: "
                        "read as markup?)",
                    )


def markup_paths(job: Job, fx: Fixtures) -> None:
    with job.case(
        "7 task name with markup",
        SECURITY,
        "train --task 'add_mod_7[/x]': an unknown task, refused cleanly",
    ) as c:
        before = tree(job.work)
        done = c.run(train_args(task="add_mod_7[/x]", sets=QUICK_STEPS))
        c.check(done.rc != 0, "violation", "an unknown task was accepted")
        nothing_written(c, done, job.work, before)
    out = "o[/x]/[bold]r"
    with job.case(
        "7 --out path with markup",
        SECURITY,
        f"train --out {out!r}, then runs and extract on it: all work, paths printed literally",
    ) as c:
        c.run(train_args(sets=QUICK_STEPS, out=out), expect_ok="violation")
        runs = published(job.work / out)
        if c.check(len(runs) == 1, "violation", f"no run published under {out!r}"):
            c.run(["runs", out], expect_ok="violation", primary=False)
            (run,) = runs.values()
            c.run(
                ["extract", str(run.relative_to(job.work)), "--no-catalog", "--steps", "50"],
                expect_ok="violation",
                timeout=180,
            )
    for url in (
        "bolt://[/x]:7687/db",
        "[link=http://example.invalid]x[/link]",
        f"sqlite:///{job.work}/[/x]/c.db",
    ):
        with job.case(
            f"7 catalog URL {url.replace(str(job.work), 'WORK')}",
            SECURITY,
            "a catalog URL with markup: stats works or fails cleanly",
        ) as c:
            c.run(["catalog", "-c", url, "stats"], timeout=60)


def huge_label(job: Job, fx: Fixtures) -> None:
    with job.case(
        "8 1 MB label: catalog show within 20 s",
        SECURITY,
        "import a circuit whose "
        "label is 1,000,000 characters; refused cleanly, or list and show each "
        "finish within 20 s",
    ) as c:
        label = ("wrap these words " * 70_000)[:1_000_000]
        records = labelled_circuit(label)
        cid = record_id(records[2])
        url = f"sqlite:///{job.work / 'cat.db'}"
        imp = c.run(
            ["catalog", "-c", url, "import", str(export_file(job.work / "in.jsonl", records))],
            timeout=120,
        )
        if imp.rc == 0:
            c.run(["catalog", "-c", url, "show", cid or "x"], timeout=20)
            c.run(["catalog", "-c", url, "list"], timeout=20)


def bolt_password(job: Job, fx: Fixtures) -> None:
    with job.case(
        "9 Bolt test server password per start",
        SECURITY,
        "start the local Bolt server twice: the root password must differ between starts",
    ) as c:
        passwords = []
        for _ in range(2):
            with fx.bolt(job) as (_, env):
                passwords.append(env.get("NEO4J_PASSWORD"))
        c.check(
            passwords[0] != passwords[1],
            "violation",
            "both starts used the same fixed root password",
        )


# ---------------------------------------------------------------------------------------------
# 10-15: errors that must be one line


BAD_CONFIGS: dict[str, Callable[[dict[str, Any]], None]] = {
    'd_model "abc"': lambda d: d["model"].__setitem__("d_model", "abc"),
    "d_model 128.5": lambda d: d["model"].__setitem__("d_model", 128.5),
    "task an int": lambda d: d.__setitem__("task", 7),
    "task missing": lambda d: d.pop("task"),
    'recipe "fast"': lambda d: d.__setitem__("recipe", "fast"),
    'seed "abc"': lambda d: d.__setitem__("seed", "abc"),
    "train_fraction 5": lambda d: d["recipe"].__setitem__("train_fraction", 5),
    "n_layers 10**9": lambda d: d["model"].__setitem__("n_layers", 10**9),
}


def bad_configs(job: Job, fx: Fixtures) -> None:
    for what, change in BAD_CONFIGS.items():
        with job.case(
            f"10 config.json {what}",
            ERRORS,
            f"config.json of a finished run with "
            f"{what}: extract (4 GB cap) refuses in one line, writes nothing; runs "
            "lists without a traceback",
        ) as c:
            d = job.work / f"c{len(job.results)}"
            run = fx.tiny_run(d / "run")
            modify_json(run / "config.json", change)
            before = tree(d)
            done = c.run(["extract", "run", "--no-catalog"], cwd=d, timeout=120)
            nothing_written(c, done, d, before)
            c.run(["runs", "."], cwd=d, primary=False, timeout=60)


def bad_weights(job: Job, fx: Fixtures) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    def nan(run: Path) -> None:
        t = load_file(str(run / "model.safetensors"))
        t = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in t.items()}
        save_file(t, str(run / "model.safetensors"))

    def int64(run: Path) -> None:
        t = load_file(str(run / "model.safetensors"))
        save_file({k: v.astype(np.int64) for k, v in t.items()}, str(run / "model.safetensors"))

    variants = [
        ("NaN weights", nan, []),
        ("int64 weights", int64, []),
        ("--features 100000000", None, ["--features", "100000000"]),
    ]
    for what, damage, extra in variants:
        with job.case(
            f"11 extract: {what}",
            ERRORS,
            f"extract on {what} (4 GB cap): a "
            "one-line error and nothing written, or a result with strict JSON",
        ) as c:
            d = job.work / f"w{len(job.results)}"
            run = fx.tiny_run(d / "run")
            if damage:
                damage(run)
            before = tree(d)
            done = c.run(
                ["extract", "run", "--catalog", f"sqlite:///{d / 'cat.db'}", *extra],
                cwd=d,
                timeout=180,
            )
            nothing_written(c, done, d, before)


def bad_sets(job: Job, fx: Fixtures) -> None:
    for value in ("lr=", "stop_val_acc=abc", "batch_size=2.5", "lr=abc", "lr=inf"):
        with job.case(
            f"12 --set {value}",
            ERRORS,
            f"train --set {value}: refused in one line "
            "before anything is written (or trained with strict JSON)",
        ) as c:
            d = job.work / f"s{len(job.results)}"
            d.mkdir()
            before = tree(d)
            done = c.run(train_args(sets=(*QUICK_STEPS, value)), cwd=d, timeout=120)
            nothing_written(c, done, d, before)


def bad_outs(job: Job, fx: Fixtures) -> None:
    def case(
        name: str,
        args: list[str],
        what: str,
        setup: Callable[[Path], Any] | None = None,
        readonly: bool = False,
        timeout: float = 90,
        then: Any = None,
    ) -> None:
        with job.case(name, ERRORS, what) as c:
            d = job.work / f"o{len(job.results)}"
            d.mkdir()
            os.chmod(d, 0o755)
            info = setup(d) if setup else None
            before = tree(d)
            done = c.run(args, cwd=d, readonly=readonly, timeout=timeout)
            c.check(done.rc != 0, "violation", "accepted")
            nothing_written(c, done, d, before)
            if then:
                then(c, d, info)

    def make_file(d: Path) -> str:
        (d / "afile").write_text("keep me\n")
        return sha(d / "afile")

    case(
        "13 --out is a file",
        train_args(sets=QUICK_STEPS, out="afile"),
        "train --out FILE: refused cleanly, the file unchanged",
        make_file,
        then=lambda c, d, h: c.check(sha(d / "afile") == h, "lost", "the --out file changed"),
    )
    case(
        "13 --out /proc",
        train_args(sets=QUICK_STEPS, out="/proc/circuitlab-faults"),
        "train --out /proc/...: refused cleanly",
    )

    def make_ro(d: Path) -> None:
        (d / "ro").mkdir()
        os.chmod(d / "ro", 0o555)

    def writable(c: Case, d: Path, info: Any) -> None:
        os.chmod(d / "ro", 0o755)

    case(
        "13 --out unwritable",
        train_args(sets=QUICK_STEPS, out="ro/out"),
        "train --out in a directory the user cannot write: refused cleanly",
        make_ro,
        readonly=True,
        then=writable,
    )
    case(
        "13 --threads -1",
        [*train_args(sets=QUICK_STEPS, extra=()), "--threads", "-1"],
        "train --threads -1: refused cleanly",
    )
    case(
        "13 --seeds 0-100000000",
        train_args(seeds="0-100000000", sets=QUICK_STEPS),
        "train --seeds 0-100000000 (4 GB cap): refused cleanly and quickly",
        timeout=60,
    )


def catalog_files(job: Job, fx: Fixtures) -> None:
    with job.case(
        "14 read-only catalog: stats",
        ERRORS,
        "stats and list on a catalog the user can only read must work",
    ) as c:
        d = job.work / "ro"
        d.mkdir()
        url = f"sqlite:///{d / 'cat.db'}"
        records = labelled_circuit("read only")
        c.run(
            ["catalog", "-c", url, "import", str(export_file(job.work / "in.jsonl", records))],
            primary=False,
            expect_ok="error",
        )
        for f in d.iterdir():
            os.chmod(f, 0o444)
        os.chmod(d, 0o555)
        before = {f.name: sha(f) for f in d.iterdir()}
        try:
            c.run(
                ["catalog", "-c", url, "list"], readonly=True, expect_ok="violation", primary=False
            )
            c.run(["catalog", "-c", url, "stats"], readonly=True, expect_ok="violation")
            c.check({f.name: sha(f) for f in d.iterdir()} == before, "lost", "the catalog changed")
        finally:
            os.chmod(d, 0o755)
    with job.case(
        "14 import bad file into sqlite:///nonexistent/dir/x.db",
        ERRORS,
        "a bad export file is refused before any directory or catalog is made",
    ) as c:
        (job.work / "bad.jsonl").write_text("this is not an export\n")
        done = c.run(
            ["catalog", "-c", f"sqlite:///{job.work}/nonexistent/dir/x.db", "import", "bad.jsonl"]
        )
        c.check(done.rc != 0, "violation", "a bad file was imported")
        c.check(
            not (job.work / "nonexistent").exists(),
            "violation",
            "created nonexistent/dir (and a catalog) for a refused import",
        )
    with job.case(
        "14 0-byte file as catalog",
        ERRORS,
        "stats and list on an empty file: refused or empty, and the file left untouched",
    ) as c:
        empty = job.work / "empty.db"
        empty.write_bytes(b"")
        mtime = empty.stat().st_mtime_ns
        before = tree(job.work)
        for args in (["list"], ["stats"]):
            c.run(["catalog", "-c", str(empty), *args])
        c.check(
            empty.stat().st_size == 0 and empty.stat().st_mtime_ns == mtime,
            "violation",
            f"the 0-byte file was modified ({empty.stat().st_size} bytes now)",
        )
        extra = sorted(tree(job.work) - before)
        c.check(not extra, "violation", f"files created beside it: {extra[:3]}")


def ctrl_c(job: Job, fx: Fixtures) -> None:
    with job.case(
        "15 Ctrl-C during training",
        ERRORS,
        "SIGINT to the train command's process "
        "group once training logged 2 metrics rows: exit 130 and a message naming "
        "--resume; --resume then "
        "finishes the run",
    ) as c:
        out = job.work / "out"
        p = c.start(LONG, timeout=180)

        def training() -> bool:  # two metrics rows: past setup, inside the training loop
            return any(len(m.read_text().splitlines()) >= 2 for m in out.rglob("metrics.jsonl"))

        t0 = time.monotonic()
        while p.running() and not training() and time.monotonic() - t0 < 60:
            time.sleep(0.01)
        time.sleep(0.2)
        if not p.send(signal.SIGINT, group=True):
            c.note("training ended before Ctrl-C")
        done = c.record(p.wait(30), judge=False)
        c.check(done.rc == 130, "violation", f"Ctrl-C exit code {done.rc}, not 130")
        c.check(
            "--resume" in done.stdout + done.stderr,
            "violation",
            "nothing printed mentions --resume",
        )
        c.run([*LONG, "--resume"], timeout=180, expect_ok="lost", primary=False)
        for rel, run in published(out).items():
            rows, bad = read_jsonl(run / "metrics.jsonl")
            steps = [r.get("step") for r in rows]
            c.check(
                not bad and steps == sorted(set(steps)),
                "lost",
                f"{rel}: metrics after Ctrl-C and --resume are not complete and in order",
            )
        c.check(bool(published(out)), "lost", "no run published after --resume")


JOBS: list[tuple[str, Callable[[Job, Fixtures], None], bool]] = [
    # (name, scenario, needs a Bolt server)
    ("i01-bolt-reput", bolt_reput, True),
    ("i02-workers-kill", workers_parent_kill, False),
    ("i03-same-twice", same_command_twice, False),
    ("i04-checkpoints", checkpoints, False),
    ("i06-name-escape", name_escape, False),
    ("i06-slash-task", slash_task, False),
    ("i07-markup-labels", markup_labels, False),
    ("i07-markup-paths", markup_paths, False),
    ("i08-huge-label", huge_label, False),
    ("i09-bolt-password", bolt_password, True),
    ("i10-bad-configs", bad_configs, False),
    ("i11-bad-weights", bad_weights, False),
    ("i12-bad-sets", bad_sets, False),
    ("i13-bad-outs", bad_outs, False),
    ("i14-catalog-files", catalog_files, False),
    ("i15-ctrl-c", ctrl_c, False),
]
