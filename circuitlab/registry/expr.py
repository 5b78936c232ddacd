"""Expressions: typed DAGs over primitives, registered functions, inputs and named constants.

An expression is built from four immutable node types: `Var(i)` (the i-th input of the enclosing
function), `Const(name)` (a named constant whose value the function stores), `MathConst(name)`
(pi or e, whose value is fixed here rather than stored, so a constant found to be 1/(2*pi) is
kept exactly as DIV(1, MUL(2, PI))) and `Call(op, args)` (a primitive or a registered function,
pinned by version, with integer parameters such as a modulus). Nodes may be shared, so an
expression is a DAG; evaluation computes each shared node once. Evaluation is vectorised: every
input is an array over rows and so is the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from circuitlab.registry.domains import RegistryError
from circuitlab.registry.primitives import get_primitive, is_primitive

if TYPE_CHECKING:
    from circuitlab.registry.function import Function

Resolver = Callable[[str, "int | None"], "Function"]


@dataclass(frozen=True, eq=True)
class Var:
    index: int


@dataclass(frozen=True, eq=True)
class Const:
    name: str


@dataclass(frozen=True, eq=True)
class MathConst:
    """A mathematical constant by name (a key of MATH_CONSTANTS), rendered PI or EULER."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in MATH_CONSTANTS:
            raise RegistryError(
                f"unknown mathematical constant {self.name!r}; known: {sorted(MATH_CONSTANTS)}"
            )


# value and rendered name; e is EULER so it cannot be mistaken for a column named E
MATH_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
MATH_NAMES: dict[str, str] = {"pi": "PI", "e": "EULER"}


@dataclass(frozen=True, eq=True)
class Call:
    op: str
    args: tuple[Expr, ...]
    params: tuple[tuple[str, Any], ...] = ()  # sorted (name, value); LOOP's body is an Expr
    version: int | None = None  # pinned version of a registered function; None for primitives

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)


Expr = Var | Const | MathConst | Call


def call(op: str, *args: Expr, version: int | None = None, **params: Any) -> Call:
    """Build a call node; parameters are stored sorted so equal calls compare equal."""
    return Call(op, tuple(args), tuple(sorted(params.items())), version)


# ---------------------------------------------------------------------------------------------
# traversal


def walk(expr: Expr) -> Iterator[Expr]:
    """Every distinct node once (pre-order), following LOOP bodies too."""
    seen: set[int] = set()
    stack = [expr]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if isinstance(node, Call):
            stack.extend(reversed(node.args))
            body = node.param_dict.get("body")
            if body is not None:
                stack.append(body)


def size(expr: Expr) -> int:
    """Complexity: number of nodes of the expression as a tree (a call of a function counts 1).

    A constant counts 1 however it is written: DIV(1, MUL(2, PI)) is one constant, like 0.159,
    so writing a constant exactly never makes a formula look more complex."""
    if isinstance(expr, Call):
        if is_constant(expr):
            return 1
        body = expr.param_dict.get("body")
        return 1 + sum(size(a) for a in expr.args) + (size(body) if body is not None else 0)
    return 1


def is_constant(expr: Expr) -> bool:
    """True for a closed expression of constants and primitives (no input, no function call)."""
    if isinstance(expr, Const | MathConst):
        return True
    if isinstance(expr, Var) or not is_primitive(expr.op) or expr.op == "LOOP" or not expr.args:
        return False
    return all(is_constant(a) for a in expr.args)


def variables(expr: Expr) -> set[int]:
    """Indices of the inputs the expression reads (a LOOP body's Var(0) is its own)."""
    out: set[int] = set()

    def visit(node: Expr) -> None:
        if isinstance(node, Var):
            out.add(node.index)
        elif isinstance(node, Call):
            for a in node.args:
                visit(a)

    visit(expr)
    return out


def constants_used(expr: Expr) -> set[str]:
    return {n.name for n in walk(expr) if isinstance(n, Const)}


def function_calls(expr: Expr) -> list[tuple[str, int | None]]:
    """Registered functions called, in pre-order (the index in this list is the COMPOSES slot)."""
    return [(n.op, n.version) for n in walk(expr) if isinstance(n, Call) and not is_primitive(n.op)]


def substitute(expr: Expr, mapping: Mapping[int, Expr]) -> Expr:
    """Replace Var(i) by mapping[i] (used to renumber inputs)."""
    if isinstance(expr, Var):
        return mapping.get(expr.index, expr)
    if isinstance(expr, Call):
        return Call(
            expr.op, tuple(substitute(a, mapping) for a in expr.args), expr.params, expr.version
        )
    return expr


def operations(expr: Expr) -> set[str]:
    """The names of the operations `expr` applies (primitives and registered functions)."""
    return {n.op for n in walk(expr) if isinstance(n, Call)}


def fresh_name(taken: Mapping[str, object], stem: str) -> str:
    """stem0, stem1, ...: the first not in `taken` (a constant's name beside others)."""
    i = 0
    while f"{stem}{i}" in taken:
        i += 1
    return f"{stem}{i}"


def rename_constants(expr: Expr, names: Mapping[str, str]) -> Expr:
    """Const(c) renamed names[c] (the others kept): to put two expressions' constants side by
    side in one table."""
    if isinstance(expr, Const):
        return Const(names.get(expr.name, expr.name))
    if isinstance(expr, Call):
        return Call(
            expr.op, tuple(rename_constants(a, names) for a in expr.args), expr.params, expr.version
        )
    return expr


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(
    expr: Expr,
    inputs: Sequence[np.ndarray],
    constants: Mapping[str, float],
    resolve: Resolver | None = None,
) -> np.ndarray:
    """Value of `expr` with Var(i) bound to inputs[i] (arrays broadcast against each other)."""
    memo: dict[int, np.ndarray] = {}

    def ev(node: Expr) -> np.ndarray:
        key = id(node)
        if key in memo:
            return memo[key]
        if isinstance(node, Var):
            if not 0 <= node.index < len(inputs):
                raise RegistryError(f"expression reads input {node.index} but has {len(inputs)}")
            out = inputs[node.index]
        elif isinstance(node, Const):
            if node.name not in constants:
                raise RegistryError(f"expression uses constant {node.name!r} that is not defined")
            out = np.float64(constants[node.name])
        elif isinstance(node, MathConst):
            out = np.float64(MATH_CONSTANTS[node.name])
        else:
            args = [ev(a) for a in node.args]
            out = _apply(node, args, constants, resolve)
        memo[key] = out
        return out

    return ev(expr)


def _apply(
    node: Call, args: list[np.ndarray], constants: Mapping[str, float], resolve: Resolver | None
) -> np.ndarray:
    if is_primitive(node.op):
        prim = get_primitive(node.op)
        if len(args) != prim.arity:
            raise RegistryError(f"{node.op} takes {prim.arity} arguments, got {len(args)}")
        params = node.param_dict
        if node.op == "LOOP":
            return _loop(args[0], args[1], params, constants, resolve)
        missing = set(prim.params) - set(params)
        if missing:
            raise RegistryError(f"{node.op} needs parameter(s) {sorted(missing)}")
        return prim.fn(*args, **params)
    if resolve is None:
        raise RegistryError(f"{node.op} is not a primitive and no registry was given to resolve it")
    fn = resolve(node.op, node.version)
    if len(args) != fn.arity:
        raise RegistryError(f"{fn.name} takes {fn.arity} arguments, got {len(args)}")
    return evaluate(fn.expr, args, fn.constant_dict, resolve)


def _loop(
    count: np.ndarray,
    x: np.ndarray,
    params: dict[str, Any],
    constants: Mapping[str, float],
    resolve: Resolver | None,
) -> np.ndarray:
    """Bounded iteration: x <- body(x), count times per row; count is clipped to [0, bound]."""
    body, bound = params.get("body"), params.get("bound")
    if body is None or not isinstance(bound, int) or not 0 <= bound <= 4096:
        raise RegistryError("LOOP needs a body expression and an integer bound in [0, 4096]")
    n = np.clip(np.nan_to_num(np.asarray(count, dtype=np.float64)), 0, bound).astype(np.int64)
    x = np.asarray(x, dtype=np.float64)
    n, x = np.broadcast_arrays(n, x)
    x = x.copy()
    for step in range(int(n.max(initial=0))):
        active = step < n
        x = np.where(active, evaluate(body, [x], constants, resolve), x)
    return x


# ---------------------------------------------------------------------------------------------
# serialisation and rendering


def to_json(expr: Expr) -> Any:
    if isinstance(expr, Var):
        return {"var": expr.index}
    if isinstance(expr, Const):
        return {"const": expr.name}
    if isinstance(expr, MathConst):
        return {"math": expr.name}
    out: dict[str, Any] = {"op": expr.op, "args": [to_json(a) for a in expr.args]}
    if expr.params:
        out["params"] = {
            k: ({"expr": to_json(v)} if isinstance(v, Var | Const | MathConst | Call) else v)
            for k, v in expr.params
        }
    if expr.version is not None:
        out["version"] = expr.version
    return out


def from_json(data: Any) -> Expr:
    if not isinstance(data, dict):
        raise RegistryError(f"expression node must be an object, got {data!r}")
    if "var" in data:
        return Var(int(data["var"]))
    if "const" in data:
        return Const(str(data["const"]))
    if "math" in data:
        return MathConst(str(data["math"]))
    if "op" not in data:
        raise RegistryError(f"expression node needs var, const, math or op: {data!r}")
    params = {
        k: (from_json(v["expr"]) if isinstance(v, dict) and "expr" in v else v)
        for k, v in data.get("params", {}).items()
    }
    return call(
        str(data["op"]),
        *(from_json(a) for a in data.get("args", [])),
        version=data.get("version"),
        **params,
    )


def _fmt_const(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def render(expr: Expr, names: Sequence[str], constants: Mapping[str, float] | None = None) -> str:
    """Readable form `MUL(0.5, MUL(m, SQUARE(v)))`; constants shown by value when known."""
    if isinstance(expr, Var):
        return names[expr.index] if expr.index < len(names) else f"x{expr.index}"
    if isinstance(expr, Const):
        if constants is not None and expr.name in constants:
            return _fmt_const(constants[expr.name])
        return expr.name
    if isinstance(expr, MathConst):
        return MATH_NAMES[expr.name]
    parts = [render(a, names, constants) for a in expr.args]
    for k, v in expr.params:
        parts.append(
            f"{k}={render(v, ['x'], constants)}"
            if isinstance(v, Var | Const | MathConst | Call)
            else f"{k}={v}"
        )
    return f"{expr.op}({', '.join(parts)})"


def to_sympy(
    expr: Expr,
    names: Sequence[str],
    constants: Mapping[str, float],
    resolve: Resolver | None = None,
) -> Any:
    """A sympy expression with registered functions inlined (for display and simplification)."""
    import sympy

    symbols = [sympy.Symbol(n) for n in names]

    def conv(node: Expr, env: Sequence[Any], consts: Mapping[str, float]) -> Any:
        if isinstance(node, Var):
            return env[node.index]
        if isinstance(node, Const):
            return (
                sympy.nsimplify(consts[node.name], rational=False, tolerance=0)
                if float(consts[node.name]).is_integer()
                else sympy.Float(consts[node.name])
            )
        if isinstance(node, MathConst):
            return {"pi": sympy.pi, "e": sympy.E}[node.name]
        args = [conv(a, env, consts) for a in node.args]
        if not is_primitive(node.op):
            if resolve is None:
                return sympy.Function(node.op)(*args)
            fn = resolve(node.op, node.version)
            return conv(fn.expr, args, fn.constant_dict)
        return _sympy_prim(node, args)

    return conv(expr, symbols, constants)


def _sympy_prim(node: Call, a: list[Any]) -> Any:
    import sympy

    op, p = node.op, node.param_dict
    one, zero = sympy.Integer(1), sympy.Integer(0)
    table: dict[str, Callable[[], Any]] = {
        "ADD": lambda: a[0] + a[1],
        "SUB": lambda: a[0] - a[1],
        "MUL": lambda: a[0] * a[1],
        "DIV": lambda: a[0] / a[1],
        "INC": lambda: a[0] + 1,
        "DEC": lambda: a[0] - 1,
        "SQUARE": lambda: a[0] ** 2,
        "NEG": lambda: -a[0],
        "ABS": lambda: sympy.Abs(a[0]),
        "MOD": lambda: sympy.Mod(a[0], p["p"]),
        "ADDMOD": lambda: sympy.Mod(a[0] + a[1], p["p"]),
        "SUBMOD": lambda: sympy.Mod(a[0] - a[1], p["p"]),
        "MULMOD": lambda: sympy.Mod(a[0] * a[1], p["p"]),
        "FLOORDIV": lambda: sympy.floor(a[0] / a[1]),
        "NOT": lambda: 1 - a[0],
        "BNOT": lambda: -a[0] - 1,
        "LT": lambda: sympy.Piecewise((one, sympy.Lt(a[0], a[1])), (zero, True)),
        "LE": lambda: sympy.Piecewise((one, sympy.Le(a[0], a[1])), (zero, True)),
        "EQ": lambda: sympy.Piecewise((one, sympy.Eq(a[0], a[1])), (zero, True)),
        "NE": lambda: sympy.Piecewise((one, sympy.Ne(a[0], a[1])), (zero, True)),
        "COND": lambda: sympy.Piecewise((a[1], sympy.Ne(a[0], 0)), (a[2], True)),
        "SQRT": lambda: sympy.sqrt(a[0]),
        "EXP": lambda: sympy.exp(a[0]),
        "LOG": lambda: sympy.log(a[0]),
        "SIN": lambda: sympy.sin(a[0]),
        "COS": lambda: sympy.cos(a[0]),
        "ASIN": lambda: sympy.asin(a[0]),
        "TANH": lambda: sympy.tanh(a[0]),
        "POW": lambda: a[0] ** a[1],
    }
    if op in table:
        return table[op]()
    extra = [sympy.Integer(v) for k, v in node.params if isinstance(v, int)]
    return sympy.Function(op)(*a, *extra)
