"""Task synthesis: new modular tasks from an expression over up to three operands.

Spec: `synth_mod_{p}[{expr}]`, e.g. `synth_mod_97[a*b+c]` (quote it in a shell). Input
`a b c =` (one token per operand, then `=`), answer expr mod p at the `=` position.

The expression language (parsed with `ast`, never evaluated as Python):
1. Operands `a`, `b`, `c`. The declared operands run from `a` to the highest letter used, so
   `a*c` declares a, b and c (and is rejected below, because it ignores b).
2. Integer constants, unary `-`, `+`, `-`, `*`, `/` (modular division: examples whose divisor is
   0 mod p are dropped), `**` or `^` with a non-negative integer constant exponent (`^` means
   power here, as in the modular op formulas), parentheses.
3. Calls to any registered modular operation by name, e.g. `add(mul(a, b), c)` or
   `x2y2(a, b+c)`; operations that divide drop examples where they are undefined.

Every example of Z_p^k is enumerated (k declared operands, at most MAX_EXAMPLES of them). A
composition is ill-posed, and rejected with a TaskError, when its output is constant, equals one
operand on every example, or does not depend on some declared operand (for example `a+b-b`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import numpy as np

from circuitlab.tasks.base import Dataset, Task, TaskError, register_family
from circuitlab.tasks.modular import OPERATIONS, apply_op, check_prime, inverse_table, is_prime

OPERANDS = ("a", "b", "c")
MAX_EXAMPLES = 2_100_000  # p^k: three operands allow p <= 127
MAX_EXPR_CHARS = 200
MAX_EXPONENT = 10**6

Values = tuple[np.ndarray, np.ndarray]  # residues mod p, and where they are defined


def parse_expression(text: str) -> ast.expr:
    """Parse and validate an expression; a TaskError says what is allowed otherwise."""
    if not text.strip():
        raise TaskError("synthesis expression is empty; write e.g. synth_mod_97[a*b+c]")
    if len(text) > MAX_EXPR_CHARS:
        raise TaskError(f"synthesis expression is longer than {MAX_EXPR_CHARS} characters")
    try:
        tree = ast.parse(text.replace("^", "**"), mode="eval").body
    except SyntaxError:
        raise TaskError(f"cannot parse synthesis expression {text!r}") from None
    _check(tree, text)
    return tree


_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Pow)
_ALLOWED = (
    "operands a, b, c, integers, + - * / ** (or ^), parentheses and calls to modular ops "
    f"({', '.join(OPERATIONS)})"
)


def _check(node: ast.AST, text: str) -> None:
    if isinstance(node, ast.Name):
        if node.id not in OPERANDS:
            raise TaskError(f"unknown name {node.id!r} in {text!r}; allowed: {_ALLOWED}")
    elif isinstance(node, ast.Constant):
        if type(node.value) is not int:
            raise TaskError(f"constant {node.value!r} in {text!r} is not an integer")
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        _check(node.operand, text)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
        if isinstance(node.op, ast.Pow):
            exponent = node.right
            if not (
                isinstance(exponent, ast.Constant)
                and type(exponent.value) is int
                and 0 <= exponent.value <= MAX_EXPONENT
            ):
                raise TaskError(
                    f"exponents must be integer constants in 0..{MAX_EXPONENT} in {text!r}"
                )
        _check(node.left, text)
        _check(node.right, text)
    elif isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in OPERATIONS:
            name = ast.unparse(node.func)
            known = ", ".join(OPERATIONS)
            raise TaskError(f"unknown operation {name!r} in {text!r}; known: {known}")
        if len(node.args) != 2 or node.keywords:
            raise TaskError(f"{node.func.id}(x, y) takes exactly two arguments in {text!r}")
        for arg in node.args:
            _check(arg, text)
    else:
        raise TaskError(f"{ast.unparse(node)!r} is not allowed in {text!r}; allowed: {_ALLOWED}")


def _names(tree: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in OPERANDS}


def operands_of(tree: ast.expr) -> tuple[str, ...]:
    """Declared operands: `a` up to the highest operand letter used (none for a constant)."""
    used = _names(tree)
    if not used:
        return ()
    return OPERANDS[: max(OPERANDS.index(u) for u in used) + 1]


def _power(x: np.ndarray, e: int, p: int) -> np.ndarray:
    result, base = np.ones_like(x), x % p
    while e:
        if e & 1:
            result = result * base % p
        base = base * base % p
        e >>= 1
    return result


def evaluate(tree: ast.expr, env: dict[str, np.ndarray], p: int) -> Values:
    """Evaluate a validated tree on arrays of residues; returns (values mod p, defined)."""
    shape = next(iter(env.values())).shape
    if isinstance(tree, ast.Name):
        return env[tree.id], np.ones(shape, dtype=bool)
    if isinstance(tree, ast.Constant):
        return np.full(shape, tree.value % p, dtype=np.int64), np.ones(shape, dtype=bool)
    if isinstance(tree, ast.UnaryOp):
        x, ok = evaluate(tree.operand, env, p)
        return (-x % p if isinstance(tree.op, ast.USub) else x), ok
    if isinstance(tree, ast.Call):
        (x, ok_x), (y, ok_y) = (evaluate(arg, env, p) for arg in tree.args)
        z, ok = apply_op(tree.func.id, x, y, p)
        return z, ok & ok_x & ok_y
    assert isinstance(tree, ast.BinOp)  # guaranteed by _check
    x, ok_x = evaluate(tree.left, env, p)
    if isinstance(tree.op, ast.Pow):
        return _power(x, tree.right.value, p), ok_x
    y, ok_y = evaluate(tree.right, env, p)
    ok = ok_x & ok_y
    if isinstance(tree.op, ast.Add):
        return (x + y) % p, ok
    if isinstance(tree.op, ast.Sub):
        return (x - y) % p, ok
    if isinstance(tree.op, ast.Mult):
        return x * y % p, ok
    nonzero = y != 0  # ast.Div
    return x * inverse_table(p)[y] % p, ok & nonzero


def ill_posed_reason(values: np.ndarray, valid: np.ndarray, names: tuple[str, ...]) -> str | None:
    """Why a composition is ill-posed, or None. `values` and `valid` have one axis per operand
    (p, ..., p); an operand is ignored when values are equal along its axis wherever defined."""
    if not valid.any():
        return "it is undefined on every input (division by zero)"
    defined = values[valid]
    if np.all(defined == defined[0]):
        return f"its output is the constant {int(defined[0])}"
    grids = np.meshgrid(*(np.arange(values.shape[0]),) * len(names), indexing="ij")
    for name, grid in zip(names, grids, strict=True):
        if np.array_equal(defined, grid[valid]):
            return f"its output equals the operand {name} on every input"
    big = np.iinfo(np.int64).max
    for axis, name in enumerate(names):
        lo = np.where(valid, values, big).min(axis=axis)
        hi = np.where(valid, values, -1).max(axis=axis)
        seen = valid.any(axis=axis)
        if np.all(lo[seen] == hi[seen]):
            return f"its output does not depend on the operand {name}"
    return None


@dataclass
class SynthesisTask(Task):
    expr: str
    p: int
    _data: Dataset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.expr = "".join(self.expr.split())
        check_prime(self.p, "synth_mod_p")
        tree = parse_expression(self.expr)
        self.operands = operands_of(tree)
        k = len(self.operands)
        where = f"synth_mod_{self.p}[{self.expr}]"
        if k == 0:
            raise TaskError(f"{where} is ill-posed: it uses no operand (a, b, c)")
        missing = [name for name in self.operands if name not in _names(tree)]
        if missing:
            raise TaskError(
                f"{where} is ill-posed: it does not use the operand {', '.join(missing)}; operands"
                f" are declared in order ({' '.join(self.operands)} =), so rename them"
            )
        if self.p**k > MAX_EXAMPLES:
            largest = max(q for q in range(2, self.p) if is_prime(q) and q**k <= MAX_EXAMPLES)
            raise TaskError(
                f"{where} would have p^{k} = {self.p**k:,} examples; with {k} operands p must be"
                f" at most {largest}"
            )
        axes = np.meshgrid(*(np.arange(self.p, dtype=np.int64),) * k, indexing="ij")
        values, valid = evaluate(tree, dict(zip(self.operands, axes, strict=True)), self.p)
        shape = axes[0].shape  # constants evaluate to full arrays, but be explicit
        values, valid = np.broadcast_to(values, shape), np.broadcast_to(valid, shape)
        reason = ill_posed_reason(values, valid, self.operands)
        if reason:
            raise TaskError(f"{where} is ill-posed: {reason}")
        columns = [axis[valid] for axis in axes]
        columns.append(np.full(len(columns[0]), self.p, dtype=np.int64))
        self._data = Dataset(np.stack(columns, axis=1), values[valid][:, None].astype(np.int64))

        self.spec = where
        self.d_vocab = self.p + 1  # numbers 0..p-1 and '=' (token p)
        self.d_vocab_out = self.p
        self.n_ctx = k + 1
        self.answer_positions = (k,)

    def dataset(self) -> Dataset:
        return Dataset(self._data.inputs.copy(), self._data.targets.copy())

    def token_names(self) -> list[str]:
        return [str(i) for i in range(self.p)] + ["="]

    def describe(self) -> str:
        return f"({self.expr}) mod {self.p}, input {' '.join(self.operands)} ="


def synthesize(expr: str, p: int) -> SynthesisTask:
    """Build the task `expr mod p`, raising a TaskError when the expression is ill-posed."""
    return SynthesisTask(expr, p)


@register_family(
    "synthesis",
    r"synth(?P<rest>.*)",
    "synth_mod_31[a*b+c]",
    "synth_mod_{p}[expr], expr over a, b, c with + - * / ^, integers and modular ops as "
    "functions, e.g. add(mul(a,b),c); ill-posed expressions are rejected",
)
def _synthesis(match: re.Match[str]) -> Task:
    form = re.fullmatch(r"_mod_(?P<p>\d+)\[(?P<expr>.*)\]", match["rest"], flags=re.DOTALL)
    if form is None:
        raise TaskError(f"synthesis specs look like synth_mod_97[a*b+c], got {match.string!r}")
    return SynthesisTask(form["expr"], int(form["p"]))
