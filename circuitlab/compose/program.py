"""Programs: a composition script as data, a typed DAG of calls.

A composition script is plain Python over library functions:

    def f(a, b, c):
        return add(mul(a, b), c)

`Program.trace(f)` calls `f` with one symbol per argument; every library function that receives
a symbol records a call instead of computing (types flow from the functions' interfaces, so no
annotation is needed). `Program.build` makes the same thing from explicit calls. Either way:

1. every reference names an input or an earlier call (no cycles, no unknown names);
2. every edge is type-checked before anything runs: a mismatch names both ends, e.g.
   "mul_mod_113 (v1: Z_113) cannot flow into add_mod_97.a (Z_97)";
3. running it evaluates each call once on whole batches (the functions chunk internally);
4. it is stored in the catalog as a `Program` record whose `CALLS` point at the circuits and
   functions it uses, and rendered back as readable Python (`to_python`).
"""

from __future__ import annotations

import inspect
import keyword
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from circuitlab.compose.functions import LibraryFunction, Param
from circuitlab.compose.trace import Step, Trace
from circuitlab.compose.types import CompositionError, ValueType

FORMAT = 1
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Call:
    """One call of a program: `id = function(*args)`; args name inputs, earlier calls, or are
    integer constants."""

    id: str
    function: str  # the callee's LibraryFunction.ref
    args: tuple[str | int, ...]


class Symbol:
    """A value inside a program being traced: an input or the result of a recorded call."""

    def __init__(self, builder: _Builder, name: str, type: ValueType | None, source: str) -> None:
        self.builder = builder
        self.name = name
        self.type = type
        self.source = source  # what produced it, for error messages

    def __repr__(self) -> str:
        return f"Symbol({self.name}: {self.type})"

    def __bool__(self) -> bool:
        raise CompositionError(
            f"{self.name} is a program value: control flow on it (if/while/and/or) cannot be "
            "traced; compose library functions instead"
        )


class _Builder:
    def __init__(self) -> None:
        self.inputs: list[Symbol] = []
        self.calls: list[Call] = []
        self.functions: dict[str, LibraryFunction] = {}


def record_call(fn: LibraryFunction, args: tuple[Any, ...]) -> Symbol:
    """Record `fn(*args)` into the program the symbols among `args` belong to."""
    builders = {a.builder for a in args if isinstance(a, Symbol)}
    if len(builders) != 1:
        raise CompositionError("values of two programs being traced cannot meet in one call")
    (builder,) = builders
    if len(args) != fn.arity:
        raise CompositionError(f"{fn.name} takes {fn.arity} arguments, got {len(args)}")
    refs: list[str | int] = []
    types: list[ValueType] = []
    for param, arg in zip(fn.params, args, strict=True):
        if isinstance(arg, Symbol):
            if arg.type is None:  # an input first used here takes this parameter's type
                arg.type = param.type
            _check_edge(arg.source, arg.name, arg.type, fn, param)
            refs.append(arg.name)
            types.append(arg.type)
        else:
            value = param.type.check(arg, f"{fn.name}.{param.name}")
            if value.ndim != 0:
                raise CompositionError(
                    f"{fn.name}.{param.name}: a traced program takes single constants, got an "
                    f"array of shape {value.shape}; make it an input instead"
                )
            refs.append(int(value))
            types.append(param.type)
    out = fn.result_type(tuple(types))
    if out is None:
        raise CompositionError(
            f"{fn.name} cannot take arguments of types {[str(t) for t in types]}"
        )
    call = Call(f"v{len(builder.calls) + 1}", fn.ref, tuple(refs))
    builder.calls.append(call)
    builder.functions[fn.ref] = fn
    return Symbol(builder, call.id, out, fn.name)


def _check_edge(
    source: str, name: str, given: ValueType, fn: LibraryFunction, param: Param
) -> None:
    if not param.type.accepts(given):
        raise CompositionError(
            f"{source} ({name}: {given}) cannot flow into {fn.name}.{param.name} ({param.type})"
        )


class Program:
    """A typed DAG of calls over library functions. Build with `trace` or `build`."""

    def __init__(
        self,
        name: str,
        inputs: Sequence[Param],
        calls: Sequence[Call],
        output: str,
        functions: Mapping[str, LibraryFunction],
    ) -> None:
        self.name = name
        self.inputs = tuple(inputs)
        self.calls = tuple(calls)
        self.output = output
        self.functions = dict(functions)
        self.output_type = self._check()

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def trace(cls, fn: Callable[..., Any], *, name: str | None = None, **types: Any) -> Program:
        """The program a composition function computes. Argument types come from `types`
        (e.g. a="Z_31"), from string annotations, or from the first function each flows into."""
        builder = _Builder()
        symbols = []
        for pname, p in inspect.signature(fn).parameters.items():
            hint = types.get(pname, p.annotation)
            typ = None if hint is inspect.Parameter.empty else ValueType.of(hint)
            symbols.append(Symbol(builder, pname, typ, f"input {pname}"))
        builder.inputs = symbols
        result = fn(*symbols)
        if not isinstance(result, Symbol) or result.builder is not builder:
            raise CompositionError(
                f"{fn.__name__} must return the result of a library call on its arguments"
            )
        untyped = [s.name for s in symbols if s.type is None]
        if untyped:
            raise CompositionError(f"inputs {untyped} are never used; remove them or use them")
        inputs = [Param(s.name, s.type) for s in symbols]
        return cls(name or fn.__name__, inputs, builder.calls, result.name, builder.functions)

    @classmethod
    def build(
        cls,
        name: str,
        inputs: Sequence[Param],
        calls: Sequence[Call],
        output: str,
        functions: Mapping[str, LibraryFunction],
    ) -> Program:
        """A program from explicit calls (checked exactly like a traced one)."""
        return cls(name, inputs, calls, output, functions)

    def _check(self) -> ValueType:
        """Names, order (no cycles), functions and types; returns the output type."""
        if not _NAME.fullmatch(self.name) or keyword.iskeyword(self.name):
            raise CompositionError(f"program name must be an identifier, got {self.name!r}")
        types: dict[str, ValueType] = {}
        sources: dict[str, str] = {}
        for p in self.inputs:
            if p.name in types:
                raise CompositionError(f"input {p.name!r} is declared twice")
            types[p.name], sources[p.name] = p.type, f"input {p.name}"
        later = {c.id for c in self.calls}
        for call in self.calls:
            if call.id in types:
                raise CompositionError(f"{call.id!r} is defined twice")
            fn = self.functions.get(call.function)
            if fn is None:
                raise CompositionError(f"call {call.id}: unknown function {call.function!r}")
            if len(call.args) != fn.arity:
                raise CompositionError(
                    f"call {call.id}: {fn.name} takes {fn.arity} arguments, got {len(call.args)}"
                )
            arg_types = []
            for param, arg in zip(fn.params, call.args, strict=True):
                if isinstance(arg, int):
                    param.type.check(arg, f"{call.id}: {fn.name}.{param.name}")
                    arg_types.append(param.type)
                    continue
                if arg not in types:
                    what = (
                        "a cycle (it is computed later or by itself)"
                        if arg in later
                        else "not an input or an earlier call"
                    )
                    raise CompositionError(f"call {call.id}: argument {arg!r} is {what}")
                _check_edge(sources[arg], arg, types[arg], fn, param)
                arg_types.append(types[arg])
            out = fn.result_type(tuple(arg_types))
            if out is None:
                raise CompositionError(f"call {call.id}: {fn.name} cannot take {arg_types}")
            types[call.id], sources[call.id] = out, fn.name
        if self.output not in types:
            raise CompositionError(f"output {self.output!r} is not an input or a call")
        return types[self.output]

    # -- running --------------------------------------------------------------------------------

    def __call__(self, *args: Any) -> np.ndarray:
        return self.run(*args)

    def run(self, *args: Any, trace: bool = False) -> Any:
        """Evaluate on batches of inputs (broadcast); `trace=True` also returns the Trace."""
        if len(args) != len(self.inputs):
            names = ", ".join(p.name for p in self.inputs)
            raise CompositionError(f"{self.name} takes {len(self.inputs)} inputs ({names})")
        env: dict[str, Any] = {
            p.name: p.type.check(a, f"{self.name}.{p.name}")
            for p, a in zip(self.inputs, args, strict=True)
        }
        steps: list[Step] = []
        for call in self.calls:
            fn = self.functions[call.function]
            values = [env[a] if isinstance(a, str) else a for a in call.args]
            if trace:
                env[call.id], sub = fn(*values, trace=True)
                for step in sub.steps:
                    step.node = call.id
                steps += sub.steps
            else:
                env[call.id] = fn(*values)
        out = env[self.output]
        return (out, Trace(steps)) if trace else out

    # -- views and persistence ------------------------------------------------------------------

    def signature(self) -> str:
        return f"{self.name}({', '.join(map(str, self.inputs))}) -> {self.output_type}"

    def __repr__(self) -> str:
        return f"<program {self.signature()}, {len(self.calls)} calls>"

    def to_python(self) -> str:
        """The program as the Python function it stands for."""
        names = {ref: identifier(fn.name) for ref, fn in self.functions.items()}
        args = ", ".join(f'{p.name}: "{p.type}"' for p in self.inputs)
        lines = [f'def {self.name}({args}) -> "{self.output_type}":']
        for call in self.calls:
            fn = self.functions[call.function]
            argv = ", ".join(str(a) for a in call.args)
            lines.append(f"    {call.id} = {names[call.function]}({argv})  # {fn.ref}")
        lines.append(f"    return {self.output}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "inputs": [{"name": p.name, "type": str(p.type)} for p in self.inputs],
            "calls": [
                {"id": c.id, "function": c.function, "args": list(c.args)} for c in self.calls
            ],
            "output": self.output,
            "names": {ref: fn.name for ref, fn in self.functions.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], library: Any) -> Program:
        """A program from `to_dict`; `library` (a Library) resolves the function references."""
        try:
            if data.get("format", FORMAT) > FORMAT:
                raise CompositionError(f"program format {data['format']} is newer than {FORMAT}")
            inputs = [Param(str(p["name"]), ValueType.parse(p["type"])) for p in data["inputs"]]
            calls = [
                Call(str(c["id"]), str(c["function"]), tuple(c["args"])) for c in data["calls"]
            ]
            output = str(data["output"])
            name = str(data["name"])
        except (KeyError, TypeError) as exc:
            raise CompositionError(f"malformed program: missing or bad field {exc}") from None
        refs = {c.function for c in calls}
        return cls(name, inputs, calls, output, {r: library.resolve(r) for r in sorted(refs)})

    def to_record(self) -> Any:
        """The catalog `Program` record; its CALLS point at each circuit and catalog function
        it uses (primitives and models have no catalog record and appear in the body only)."""
        from circuitlab.catalog import Program as ProgramRecord

        calls: list[str] = []
        for call in self.calls:
            cid = self.functions[call.function].catalog_id
            if cid is not None and cid not in calls:
                calls.append(cid)
        return ProgramRecord(
            name=self.name,
            body=self.to_dict(),
            calls=calls,
            description=self.signature(),
        )


def identifier(name: str, prefix: str = "f_") -> str:
    """`name` as a Python identifier: other characters become `_`; a name that would start
    with a digit, be empty or be a keyword gets `prefix`."""
    out = re.sub(r"\W", "_", name)
    return out if _NAME.fullmatch(out) and not keyword.iskeyword(out) else f"{prefix}{out}"
