"""Few-shot tasks in an ARC-style JSON file, and the library `circuitlab solve` searches.

The format (`circuitlab solve TASKS.json` reads it; ARC's own one-task files load too):

    {"description": "...",                          optional
     "tasks": [
       {"name": "mul_then_add_31",                   required, unique
        "domain": "Z_31",                            optional: type of every input and output
        "train": [{"input": [3, 5, 7], "output": 22}, ...],   one or more demonstrations
        "test":  [{"input": [1, 2, 3], "output": 5}, ...],    output optional (then unscored)
        "steps": 2, "program": "(a*b + c) mod 31"},  optional notes: the generating program
       {"name": "rot90", "domain": "grid[3x3]:Z_3",
        "train": [{"input": [[0, 1, 2], [2, 0, 1], [1, 1, 0]], "output": [[2, 1, 0], ...]}],
        ...}]}

A value is an int or a grid (a list of equal-length lists of ints). An input is one value, or
a list of values for a function of several arguments (`[3, 5]`: two ints; `[[1, 2], [3, 4]]`:
one 2x2 grid). Every pair of a task has the inputs and output of its first pair's kinds.
`steps` is the fewest calls of the primitive library that compute the task (null: none within
3); it is for benchmarks and never shown to the solver. A malformed file is refused with one
line naming the file, the line, the task and the field.

The example set `examples/arc_tasks.json` is generated, deterministically by seed, with

    python -m circuitlab.compose.arc_examples --seed 0 --out examples/arc_tasks.json
"""

from __future__ import annotations

import itertools
import json
import json.decoder
import json.scanner
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from circuitlab.compose.functions import LibraryFunction
from circuitlab.compose.kinds import PrimitiveFunction
from circuitlab.compose.types import CompositionError, ValueType

MODULAR_OPS = ("ADDMOD", "SUBMOD", "MULMOD", "DIVMOD")
GRID_OPS = ("ROT90", "ROT180", "ROT270", "MIRROR", "FLIP", "TRANSPOSE", "ANTITRANSPOSE")
TASK_KEYS = ("name", "train", "test", "domain", "steps", "program")
TOP_KEYS = ("tasks", "description", "generator")


class TaskFormatError(ValueError):
    """A malformed tasks file: the message names the file, line, task and field."""


@dataclass
class Task:
    """One few-shot task. Inputs are tuples of values (an int or an int64 grid); a test output
    is None when the file does not give it."""

    name: str
    train: list[tuple[tuple[Any, ...], Any]]
    test: list[tuple[tuple[Any, ...], Any | None]]
    domain: str | None = None
    steps: int | None = None
    program: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def pair(inputs: tuple[Any, ...], output: Any) -> dict[str, Any]:
            given = _plain(inputs[0]) if len(inputs) == 1 else [_plain(v) for v in inputs]
            return {"input": given} | ({} if output is None else {"output": _plain(output)})

        out: dict[str, Any] = {"name": self.name}
        if self.domain:
            out["domain"] = self.domain
        out["train"] = [pair(i, o) for i, o in self.train]
        out["test"] = [pair(i, o) for i, o in self.test]
        if self.steps is not None or self.program:
            out["steps"], out["program"] = self.steps, self.program
        return out


def _plain(value: Any) -> Any:
    return np.asarray(value).tolist()


# -- loading -----------------------------------------------------------------------------------


class _Bad(Exception):
    def __init__(self, path: list[Any], where: str, message: str) -> None:
        super().__init__(message)
        self.path, self.where, self.message = path, where, message


def load_tasks(path: str | Path) -> list[Task]:
    """The tasks of a file in the format above (or one ARC task file); TaskFormatError if not."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskFormatError(f"{path}: cannot read: {exc}") from None
    return parse_tasks(text, str(path))


def parse_tasks(text: str, source: str = "TASKS.json") -> list[Task]:
    """The tasks of a file's text; `source` names it in errors."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskFormatError(
            f"{source} line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}"
        ) from None
    try:
        return _tasks(data, Path(source).stem)
    except _Bad as bad:
        line = _line_of(text, bad.path)
        raise TaskFormatError(f"{source} line {line}: {bad.where}: {bad.message}") from None


def _tasks(data: Any, stem: str) -> list[Task]:
    if isinstance(data, dict) and "tasks" not in data and "train" in data:
        return [_task(data, [], stem, "task")]  # one ARC task file
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise _Bad([], "top level", 'expected an object with a "tasks" list')
    for key in data:
        if key not in TOP_KEYS:
            raise _Bad(
                [key], "top level", f"unknown field {key!r} (expected {', '.join(TOP_KEYS)})"
            )
    if not data["tasks"]:
        raise _Bad(["tasks"], "tasks", "the list is empty")
    tasks: list[Task] = []
    names: set[str] = set()
    for i, raw in enumerate(data["tasks"]):
        task = _task(raw, ["tasks", i], None, f"task {i}")
        if task.name in names:
            raise _Bad(["tasks", i, "name"], f"task {i}", f"name {task.name!r} is used twice")
        names.add(task.name)
        tasks.append(task)
    return tasks


def _task(raw: Any, path: list[Any], default_name: str | None, where: str) -> Task:
    if not isinstance(raw, dict):
        raise _Bad(path, where, "expected an object with name, train and test")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise _Bad([*path, "name"], where, "name: required, a non-empty string")
    where = f"{where} ({name})"
    unknown = [k for k in raw if k not in TASK_KEYS]
    if unknown:
        raise _Bad(
            [*path, unknown[0]],
            where,
            f"unknown field {unknown[0]!r} (expected {', '.join(TASK_KEYS)})",
        )
    domain = raw.get("domain")
    dtype = None
    if domain is not None:
        try:
            dtype = ValueType.parse(domain) if isinstance(domain, str) else None
        except CompositionError as exc:
            raise _Bad([*path, "domain"], where, f"domain: {exc}") from None
        if dtype is None:
            raise _Bad([*path, "domain"], where, "domain: expected a string such as Z_31")
    steps = raw.get("steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        raise _Bad([*path, "steps"], where, "steps: expected a non-negative int or null")
    program = raw.get("program")
    if program is not None and not isinstance(program, str):
        raise _Bad([*path, "program"], where, "program: expected a string")
    kinds: list[Any] = []
    sets = {}
    for part in ("train", "test"):
        pairs = raw.get(part)
        if not isinstance(pairs, list) or not pairs:
            raise _Bad([*path, part], where, f"{part}: required, a non-empty list of pairs")
        sets[part] = [
            _pair(p, [*path, part, j], where, f"{part}[{j}]", part == "train", kinds, dtype)
            for j, p in enumerate(pairs)
        ]
    return Task(name, sets["train"], sets["test"], domain, steps, program)


def _pair(raw, path, where, field_, need_output, kinds, dtype) -> tuple[tuple, Any]:
    if not isinstance(raw, dict) or "input" not in raw:
        raise _Bad(path, where, f'{field_}: expected an object with "input" and "output"')
    extra = [k for k in raw if k not in ("input", "output")]
    if extra:
        raise _Bad([*path, extra[0]], where, f"{field_}: unknown field {extra[0]!r}")
    if need_output and "output" not in raw:
        raise _Bad(path, where, f"{field_}.output: required in a demonstration")
    inputs = _inputs(raw["input"], [*path, "input"], where, f"{field_}.input")
    output = raw.get("output")
    if output is not None:
        output = _value(output, [*path, "output"], where, f"{field_}.output")
    shape = ([_kind(v) for v in inputs], None if output is None else _kind(output))
    if not kinds:
        kinds.append(shape)
    first_in, first_out = kinds[0]
    if shape[0] != first_in:
        raise _Bad(
            [*path, "input"],
            where,
            f"{field_}.input: {_describe(shape[0])}, but the "
            f"first demonstration has {_describe(first_in)}",
        )
    if output is not None and shape[1] != first_out:
        raise _Bad(
            [*path, "output"],
            where,
            f"{field_}.output: {shape[1]}, but the first demonstration's is {first_out}",
        )
    if dtype is not None:
        for k, v in [*((f"input[{i}]", v) for i, v in enumerate(inputs)), ("output", output)]:
            if v is None:
                continue
            at = [*path, "input" if k != "output" else "output"]
            if dtype.is_grid != (_kind(v) == "grid"):
                raise _Bad(at, where, f"{field_}.{k}: a {_kind(v)} where the domain is {dtype}")
            try:
                dtype.check(v, f"{field_}.{k}")
            except CompositionError as exc:
                raise _Bad(at, where, f"{exc} (domain)") from None
    return tuple(inputs), output


def _kind(v: Any) -> str:
    return "grid" if isinstance(v, np.ndarray) and v.ndim == 2 else "int"


def _describe(kinds: list[str]) -> str:
    return f"{len(kinds)} input(s) ({', '.join(kinds)})"


def _inputs(raw: Any, path, where, field_) -> list[Any]:
    if isinstance(raw, list) and raw and not _is_grid(raw):
        return [_value(v, [*path, i], where, f"{field_}[{i}]") for i, v in enumerate(raw)]
    return [_value(raw, path, where, field_)]


def _is_grid(raw: Any) -> bool:
    return isinstance(raw, list) and all(
        isinstance(r, list) and all(_is_int(c) for c in r) for r in raw
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _value(raw: Any, path, where, field_) -> Any:
    if _is_int(raw):
        return raw
    if _is_grid(raw) and raw and raw[0]:
        widths = {len(r) for r in raw}
        if len(widths) == 1:
            return np.array(raw, dtype=np.int64)
        raise _Bad(path, where, f"{field_}: grid rows have different lengths {sorted(widths)}")
    raise _Bad(
        path,
        where,
        f"{field_}: expected an int or a grid (a list of lists of ints), "
        f"got {json.dumps(raw)[:40]}",
    )


def _line_of(text: str, path: list[Any]) -> int:
    """Line of the value at `path` (a key's own line for a scalar): the JSON is parsed again
    with the pure-Python scanner, which says where every object and array starts."""
    starts: dict[int, int] = {}

    def obj(s_and_end, *args, **kw):
        value, end = json.decoder.JSONObject(s_and_end, *args, **kw)
        starts[id(value)] = s_and_end[1] - 1
        return value, end

    def arr(s_and_end, *args, **kw):
        value, end = json.decoder.JSONArray(s_and_end, *args, **kw)
        starts[id(value)] = s_and_end[1] - 1
        return value, end

    decoder = json.JSONDecoder()
    decoder.parse_object, decoder.parse_array = obj, arr
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    node = decoder.decode(text)
    offset = starts.get(id(node), 0)
    for step in path:
        try:
            child = node[step]
        except (KeyError, IndexError, TypeError):
            break
        if id(child) in starts:
            offset = starts[id(child)]
        elif isinstance(step, str):
            found = text.find(json.dumps(step), offset)
            offset = found if found >= 0 else offset
        node = child
    return text.count("\n", 0, offset) + 1


# -- the default library -----------------------------------------------------------------------


def default_library(tasks: Sequence[Task]) -> list[LibraryFunction]:
    """Registry primitives for the domains of the tasks: the modular ones mod every p seen (a
    task's domain, else the smallest prime above its largest integer), grid ones for every
    number of colours seen (the domain's, else the largest colour + 1)."""
    moduli, colours = set(), set()
    for task in tasks:
        values = [v for inputs, out in task.train for v in (*inputs, out)]
        values += [v for inputs, _ in task.test for v in inputs]
        dtype = ValueType.parse(task.domain) if task.domain else None
        ints = [int(v) for v in values if _kind(v) == "int"]
        grids = [v for v in values if _kind(v) == "grid"]
        if ints:
            moduli.add(dtype.n if dtype and dtype.kind == "mod" else _prime_above(max(ints)))
        if grids:
            k = (
                dtype.n
                if dtype and dtype.is_grid and dtype.n
                else max(int(g.max()) for g in grids) + 1
            )
            colours.add(max(k, 2))
    return primitive_library(sorted(moduli), sorted(colours))


def _prime_above(n: int) -> int:
    p = max(n + 1, 2)
    while any(p % d == 0 for d in range(2, int(p**0.5) + 1)):
        p += 1
    return p


def primitive_library(
    moduli: Sequence[int] = (), colours: Sequence[int] = ()
) -> list[LibraryFunction]:
    """The registry's core primitives as library functions: add, sub, mul and div mod each p,
    and with grids the eight symmetries' generators, RECOLOUR and REPLACE_COLOUR for k colours."""
    fns: dict[str, LibraryFunction] = {}
    for p in sorted(set(moduli)):
        for op in MODULAR_OPS:
            f = PrimitiveFunction(op, p=p)
            fns[f.ref] = f
    if colours:
        for op in GRID_OPS:
            fns[f"primitive:{op}"] = PrimitiveFunction(op)
    for k in sorted(set(colours)):
        f = PrimitiveFunction("RECOLOUR", k=k)
        fns[f.ref] = f
        for src, dst in itertools.permutations(range(k), 2):
            f = PrimitiveFunction("REPLACE_COLOUR", src=src, dst=dst)
            fns.setdefault(f.ref, f)
    return list(fns.values())


def dump_tasks(
    tasks: Sequence[Task], path: str | Path, description: str = "", generator: str = ""
) -> None:
    """Write tasks in the documented format: one pair per line, so errors name a useful line."""
    lines = ["{"]
    if description:
        lines.append(f' "description": {json.dumps(description)},')
    if generator:
        lines.append(f' "generator": {json.dumps(generator)},')
    lines.append(' "tasks": [')
    for i, task in enumerate(tasks):
        d = task.to_dict()
        head = {k: v for k, v in d.items() if k not in ("train", "test")}
        lines.append("  {" + json.dumps(head)[1:-1] + ",")
        for part in ("train", "test"):
            lines.append(f'   "{part}": [')
            rows = [f"    {json.dumps(p)}" for p in d[part]]
            lines.append(",\n".join(rows))
            lines.append("   ]" + ("," if part == "train" else ""))
        lines.append("  }" + ("," if i < len(tasks) - 1 else ""))
    lines += [" ]", "}"]
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
