"""Seeded fuzzing of `train --set`, a run's config.json (read by `extract` and `runs`) and the
CSV files of `discover`: random strings, numbers, huge values, unicode, markup, empty. Each
input must end in exit 0 or a clean error (nothing written), never a traceback or a hang; any
JSON written must stay strict. The same --seed gives the same inputs.
"""

from __future__ import annotations

import json
import random
import string
from typing import Any

from faults.fixtures import Fixtures, train_args
from faults.harness import Job
from faults.issue12 import nothing_written, tree

SET_FIELDS = (
    "lr",
    "weight_decay",
    "train_fraction",
    "optimizer",
    "betas",
    "eps",
    "warmup_steps",
    "grad_clip",
    "batch_size",
    "grokfast_alpha",
    "grokfast_lambda",
    "eval_every",
    "stop_val_acc",
    "checkpoint_every",
    "model",
    "name",
)  # max_steps stays 3 so that an accepted value trains for a moment, not for hours
ODD_FIELDS = ("", " ", "LR", "lr ", "no_such_field", "max_steps.x", "model.d_model", "λ", "[/x]")

WORDS = (
    "",
    " ",
    "true",
    "false",
    "None",
    "null",
    "adamw",
    "lion",
    "fast",
    "[0.9,0.98]",
    "{}",
    '{"d_model": 8}',
    "=",
    "x=y",
    ",",
    "1,,2",
    "0.01,0.003",
    "λ",
    "🙂",
    "日本語",
    "\u202e",
    "e\u0301",
    "[bold]x",
    "[/]",
    "[link=http://example.invalid]y[/link]",
    "\x1b[31m",
    "0x10",
    "1_000",
    "1e",
    "+1",
    "١٢",
    "１２",
    "½",
    "../..",
    "/",
    "a/b",
    "~",
    "$HOME",
    "%s",
    "'",
    '"',
)
NUMBERS = (
    "0",
    "1",
    "-1",
    "2",
    "7",
    "0.5",
    "1.5",
    "-2.5",
    "1e-3",
    "3.14159",
    "-0.0",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e308",
    "1e309",
    "1e-320",
    "9223372036854775808",
    "18446744073709551616",
)


def rand_text(rng: random.Random, n: int | None = None) -> str:
    n = rng.randint(1, 12) if n is None else n
    alphabet = string.printable.replace("\x0b", "").replace("\x0c", "") + "λß€🙂\u202e"
    return "".join(rng.choice(alphabet) for _ in range(n))


def rand_value(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.3:
        return rng.choice(NUMBERS)
    if pick < 0.45:
        k = rng.randint(1, 400)
        return rng.choice(["", "-"]) + "1" + "0" * k
    if pick < 0.75:
        return rng.choice(WORDS)
    if pick < 0.9:
        return rand_text(rng).replace("\0", "")
    return rng.choice(["a", "7", "[", "é"]) * rng.choice([300, 5000])


def rand_json(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if pick < 0.25:
        return rng.choice([0, 1, -1, 7, 2**31, 2**63, 10**30, -(10**18), 10**400])
    if pick < 0.4:
        return rng.choice([0.5, -0.5, 128.5, 1e308, -1e-308, 1e-320, 3.0])
    if pick < 0.65:
        return rng.choice(
            [
                "",
                "abc",
                "add_mod_7",
                "fast",
                "λ",
                "[/x]",
                "\x1b[2J",
                "nan",
                "x" * 10_000,
                rand_text(rng),
            ]
        )
    if pick < 0.75:
        return rng.choice([None, True, False])
    if pick < 0.88 or depth > 2:
        return [rand_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rand_text(rng, 4): rand_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


# ---------------------------------------------------------------------------------------------


def fuzz_set(job: Job, fx: Fixtures, seed: int, first: int, count: int) -> None:
    for n in range(first, first + count):
        rng = random.Random(f"{seed}-set-{n}")
        if rng.random() < 0.1:
            item = rng.choice([rand_value(rng), f"={rand_value(rng)}", "", "=", "lr"])
        else:
            field = rng.choice(ODD_FIELDS) if rng.random() < 0.1 else rng.choice(SET_FIELDS)
            item = f"{field}={rand_value(rng)}"
        with job.case(
            f"--set #{n}: {item[:40]!r}",
            "fuzz: --set",
            f"train --set {item!r} (plus max_steps=3): exit 0 or a clean error, nothing written",
        ) as c:
            d = job.work / f"s{n}"
            d.mkdir()
            before = tree(d)
            done = c.run(train_args(sets=("max_steps=3", item)), cwd=d, timeout=120)
            nothing_written(c, done, d, before)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append((*prefix, k))
            if k != "versions":
                out += _paths(v, (*prefix, k))
    return out


def _mutate(rng: random.Random, config: dict[str, Any]) -> tuple[str, bytes]:
    """(description, new bytes of config.json)."""
    pick = rng.random()
    if pick < 0.1:  # text-level damage
        text = json.dumps(config, indent=2)
        how = rng.choice(["truncated", "empty", "NaN", "latin-1", "null", "nested"])
        if how == "truncated":
            return how, text[: rng.randint(0, len(text) - 1)].encode()
        if how == "empty":
            return how, b""
        if how == "NaN":
            return "seed NaN", text.replace('"seed": 0', '"seed": NaN').encode()
        if how == "latin-1":
            return how, text.replace("add_mod_7", "add_mod_7\xe9").encode("latin-1")
        if how == "null":
            return how, b"null"
        return "nested 5000 deep", ("[" * 5000 + "]" * 5000).encode()
    paths = _paths(config)
    path = rng.choice(paths)
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if pick < 0.25:
        del parent[path[-1]]
        return f"delete {'.'.join(map(str, path))}", json.dumps(config).encode()
    if pick < 0.32:
        name = rand_text(rng, 6)
        parent[name] = rand_json(rng)
        return f"add {'.'.join(map(str, path[:-1]))}.{name!r}", json.dumps(config).encode()
    if pick < 0.36:
        value = rand_json(rng)
        return f"whole file {json.dumps(value)[:30]}", json.dumps(value).encode()
    value = rand_json(rng)
    parent[path[-1]] = value
    return (f"{'.'.join(map(str, path))} = {json.dumps(value)[:40]}", json.dumps(config).encode())


def fuzz_config(job: Job, fx: Fixtures, seed: int, first: int, count: int) -> None:
    for n in range(first, first + count):
        rng = random.Random(f"{seed}-config-{n}")
        with job.case(
            f"config.json #{n}",
            "fuzz: config.json",
            "a finished run's config.json "
            "mutated; extract (4 GB cap) and sometimes runs: exit 0 or a clean error, "
            "nothing written on error",
        ) as c:
            d = job.work / f"c{n}"
            run = fx.tiny_run(d / "run")
            config = json.loads((run / "config.json").read_text())
            what, data = _mutate(rng, config)
            c.scenario = f"config.json: {what}; " + c.scenario
            c.name = f"config.json #{n}: {what[:40]}"
            (run / "config.json").write_bytes(data)
            c.plant(run / "config.json")
            before = tree(d)
            done = c.run(
                ["extract", "run", "--no-catalog", "--steps", "50", "--features", "32"],
                cwd=d,
                timeout=180,
            )
            nothing_written(c, done, d, before)
            if rng.random() < 0.35:
                c.run(["runs", "."], cwd=d, timeout=60, primary=False)


COLUMNS = (
    "a",
    "b",
    "c",
    "x",
    "y",
    "out",
    "",
    " ",
    "a",
    "λ",
    "[bold]h",
    "1col",
    "a b",
    "x" * 300,
    '"q,uoted"',
    "\x1b[31m",
)
CELLS = (
    "nan",
    "inf",
    "-inf",
    "1e308",
    "",
    "abc",
    "１２",
    "0x1F",
    "1_000",
    " 5 ",
    '"7"',
    "TRUE",
    "1e-320",
    "-0",
    "[/x]",
)


def _cell(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.5:
        return str(rng.randint(-20, 20))
    if pick < 0.6:
        return str(round(rng.uniform(-100, 100), rng.randint(0, 6)))
    if pick < 0.7:
        return "1" + "0" * rng.randint(15, 400)
    return rng.choice(CELLS)


def _csv(rng: random.Random) -> tuple[str, bytes | None]:
    """(description, bytes) of a CSV; None bytes: the path is a directory."""
    pick = rng.random()
    if pick < 0.04:
        return "a directory", None
    if pick < 0.1:
        return "empty file", b""
    if pick < 0.14:
        return "random bytes", bytes(rng.randrange(256) for _ in range(rng.randint(1, 400)))
    rows = rng.choice([0, 1, 2, 3, 10, 50, 300])
    if pick < 0.45:  # a clean table with a real function behind it
        p = rng.choice([7, 11, 13])
        op = rng.choice(["a+b", "a*b", "(a+b)%p", "a-b", "a*a+b"])
        lines = ["a,b,y"]
        for _ in range(rows):
            a, b = rng.randint(0, p - 1), rng.randint(0, p - 1)
            lines.append(f"{a},{b},{eval(op, {'a': a, 'b': b, 'p': p})}")  # noqa: S307
        text = "\n".join(lines) + "\n"
        desc = f"y = {op}, {rows} rows"
        if rng.random() < 0.3:  # one damaged cell
            cells = text.split(",")
            k = rng.randrange(len(cells))
            cells[k] = _cell(rng)
            text = ",".join(cells)
            desc += ", one cell damaged"
        return desc, (("\ufeff" if rng.random() < 0.1 else "") + text).encode()
    cols = [rng.choice(COLUMNS) for _ in range(rng.randint(0, 4))]
    lines = [",".join(cols)]
    for _ in range(rows):
        width = len(cols) if rng.random() > 0.2 else rng.randint(0, len(cols) + 2)
        lines.append(",".join(_cell(rng) for _ in range(width)))
    return f"{len(cols)} random columns, {rows} rows", ("\n".join(lines) + "\n").encode()


def fuzz_csv(job: Job, fx: Fixtures, seed: int, first: int, count: int) -> None:
    for n in range(first, first + count):
        rng = random.Random(f"{seed}-csv-{n}")
        what, data = _csv(rng)
        opts: list[str] = []
        if rng.random() < 0.2:
            opts += ["--output", rng.choice(["y", "a", "nope", "", "λ"])]
        if rng.random() < 0.2:
            opts += ["--approximate"]
        if rng.random() < 0.15:
            opts += ["--proposer", "guide"]
        if rng.random() < 0.3:
            opts += ["--no-register"]
        if rng.random() < 0.3:
            opts += ["--json"]
        with job.case(
            f"csv #{n}: {what[:40]}",
            "fuzz: discover csv",
            f"discover on a CSV ({what}) {' '.join(opts)}: exit 0 or a clean error within 60 s",
        ) as c:
            d = job.work / f"v{n}"
            d.mkdir()
            path = d / "data.csv"
            if data is None:
                path.mkdir()
            else:
                path.write_bytes(data)
            c.run(
                ["discover", "data.csv", "--registry", "reg", "--max-seconds", "3", *opts],
                cwd=d,
                timeout=60,
            )


def chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(size, total - i)) for i in range(0, total, size)]


FUZZERS = {"set": fuzz_set, "config": fuzz_config, "csv": fuzz_csv}
