"""Primitives: the fixed, vectorised operations every registry function is built from.

Each primitive maps numpy arrays to a numpy array elementwise over rows (numeric values are float64,
grids int64 of shape (..., H, W)), so one call evaluates a whole batch of candidate programs on all
examples at once. Invalid points (division by zero, log of a negative number, overflow) give NaN
instead of raising: a candidate that is undefined on a training row is simply rejected by the
search. The table refuses duplicate names; functions refer to primitives by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from circuitlab.registry.domains import Kind, RegistryError, join

KindRule = Callable[[tuple[Kind, ...]], Kind | None]


@dataclass(frozen=True)
class Primitive:
    """A named, typed, vectorised operation.

    params are integer parameters fixed in the expression (a modulus, colours, a crop box), not
    inputs: `MOD(x; p=113)`. `group` lets a proposer switch whole families on or off.
    """

    name: str
    arity: int
    kind_rule: KindRule
    fn: Callable[..., np.ndarray]
    group: str
    doc: str
    params: tuple[str, ...] = ()
    commutative: bool = False
    sympy_name: str | None = None  # rendered as sympy.Function(sympy_name) when no closed form
    # False: never a candidate of the enumeration, only written into fitted or inverted forms
    enumerated: bool = True

    def out_kind(self, kinds: tuple[Kind, ...]) -> Kind | None:
        return self.kind_rule(kinds) if len(kinds) == self.arity else None


# ---------------------------------------------------------------------------------------------
# kind rules


def _numeric(kinds: tuple[Kind, ...]) -> Kind | None:
    return join(*kinds) if all(k.numeric for k in kinds) else None


def _real(kinds: tuple[Kind, ...]) -> Kind | None:
    return Kind.REAL if all(k.numeric for k in kinds) else None


def _int_or_real(kinds: tuple[Kind, ...]) -> Kind | None:
    """Arithmetic that leaves {0, 1} (ADD of two bools is an int)."""
    k = _numeric(kinds)
    return Kind.INT if k is Kind.BOOL else k


def _integer(kinds: tuple[Kind, ...]) -> Kind | None:
    return join(*kinds) if all(k in (Kind.BOOL, Kind.INT) for k in kinds) else None


def _int_only(kinds: tuple[Kind, ...]) -> Kind | None:
    return Kind.INT if all(k in (Kind.BOOL, Kind.INT) for k in kinds) else None


def _bool_only(kinds: tuple[Kind, ...]) -> Kind | None:
    return Kind.BOOL if all(k is Kind.BOOL for k in kinds) else None


def _compare(kinds: tuple[Kind, ...]) -> Kind | None:
    return Kind.BOOL if all(k.numeric for k in kinds) else None


def _cond(kinds: tuple[Kind, ...]) -> Kind | None:
    if kinds[0] is not Kind.BOOL:
        return None
    return join(kinds[1], kinds[2])


def _grid(kinds: tuple[Kind, ...]) -> Kind | None:
    return Kind.GRID if all(k is Kind.GRID for k in kinds) else None


# ---------------------------------------------------------------------------------------------
# implementations (all vectorised; NaN marks an undefined point)


def _safe(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def wrapped(*args: np.ndarray, **params: int) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = fn(*args, **params)
        return np.where(np.isfinite(out), out, np.nan) if out.dtype.kind == "f" else out

    return wrapped


def _ints(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a).astype(np.int64) for a in arrays)


def _bitwise(op: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray]:
    def fn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ia, ib = _ints(a, b)
        return op(ia, ib).astype(np.float64)

    return fn


def _check_modulus(p: int) -> int:
    if not isinstance(p, int | np.integer) or not 2 <= p < 2**31:
        raise RegistryError(f"modulus p must be an integer in [2, 2**31), got {p!r}")
    return int(p)


def _mod(a: np.ndarray, p: int) -> np.ndarray:
    (ia,) = _ints(a)
    return np.mod(ia, _check_modulus(p)).astype(np.float64)


def _addmod(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    ia, ib = _ints(a, b)
    p = _check_modulus(p)
    return np.mod(np.mod(ia, p) + np.mod(ib, p), p).astype(np.float64)


def _submod(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    ia, ib = _ints(a, b)
    p = _check_modulus(p)
    return np.mod(np.mod(ia, p) - np.mod(ib, p), p).astype(np.float64)


def _mulmod(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    ia, ib = _ints(a, b)
    p = _check_modulus(p)
    return np.mod(np.mod(ia, p) * np.mod(ib, p), p).astype(np.float64)


def _powmod(base: np.ndarray, exponent: int, p: int) -> np.ndarray:
    result = np.ones_like(base)
    base = np.mod(base, p)
    while exponent:
        if exponent & 1:
            result = np.mod(result * base, p)
        base = np.mod(base * base, p)
        exponent >>= 1
    return result


def _divmod(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """a * b^(p-2) mod p: division in Z_p for prime p; NaN where b = 0 mod p."""
    ia, ib = _ints(a, b)
    p = _check_modulus(p)
    inv = _powmod(ib, p - 2, p)
    out = np.mod(np.mod(ia, p) * inv, p).astype(np.float64)
    return np.where(np.mod(ib, p) == 0, np.nan, out)


def _floordiv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """floor(a / b) of integers; NaN where b = 0, or where |a| >= 2**53 (float64 no longer
    holds every integer there, so the quotient could be off by one)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        out = np.floor(a / b)
    return np.where((b == 0) | (np.abs(a) >= 2.0**53), np.nan, out)


def _grid_param(value: int, name: str, lo: int) -> int:
    if not isinstance(value, int | np.integer) or value < lo:
        raise RegistryError(f"grid parameter {name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _recolour(g: np.ndarray, k: int) -> np.ndarray:
    return np.mod(g + 1, _grid_param(k, "k", 1))


def _replace_colour(g: np.ndarray, src: int, dst: int) -> np.ndarray:
    return np.where(g == _grid_param(src, "src", 0), _grid_param(dst, "dst", 0), g)


def _crop(g: np.ndarray, r: int, c: int, h: int, w: int) -> np.ndarray:
    r, c = _grid_param(r, "r", 0), _grid_param(c, "c", 0)
    h, w = _grid_param(h, "h", 1), _grid_param(w, "w", 1)
    if r + h > g.shape[-2] or c + w > g.shape[-1]:
        raise RegistryError(
            f"CROP box rows {r}..{r + h - 1}, cols {c}..{c + w - 1} exceeds a "
            f"{g.shape[-2]}x{g.shape[-1]} grid"
        )
    return g[..., r : r + h, c : c + w]


def _upscale(g: np.ndarray, k: int) -> np.ndarray:
    k = _grid_param(k, "k", 1)
    return np.repeat(np.repeat(g, k, axis=-2), k, axis=-1)


def _flag(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


_TABLE: dict[str, Primitive] = {}


def _add(p: Primitive) -> None:
    if p.name in _TABLE:
        raise RegistryError(f"primitive {p.name} is already defined")
    _TABLE[p.name] = p


for _p in [
    # arithmetic
    Primitive("ADD", 2, _int_or_real, _safe(np.add), "arithmetic", "a + b", commutative=True),
    Primitive("SUB", 2, _int_or_real, _safe(np.subtract), "arithmetic", "a - b"),
    Primitive("MUL", 2, _numeric, _safe(np.multiply), "arithmetic", "a * b", commutative=True),
    Primitive("DIV", 2, _real, _safe(np.true_divide), "arithmetic", "a / b (NaN where b = 0)"),
    Primitive("INC", 1, _int_or_real, _safe(lambda a: a + 1.0), "arithmetic", "a + 1"),
    Primitive("DEC", 1, _int_or_real, _safe(lambda a: a - 1.0), "arithmetic", "a - 1"),
    Primitive("SQUARE", 1, _numeric, _safe(np.square), "arithmetic", "a * a"),
    Primitive("NEG", 1, _int_or_real, _safe(np.negative), "arithmetic", "-a"),
    Primitive("ABS", 1, _numeric, _safe(np.abs), "arithmetic", "|a|"),
    # integer division (integer inputs; Python's a // b, rounding toward minus infinity)
    Primitive("FLOORDIV", 2, _int_only, _floordiv, "integer", "floor(a / b) (NaN where b = 0)"),
    # bitwise on integers (logical on booleans)
    Primitive("AND", 2, _integer, _bitwise(np.bitwise_and), "bitwise", "a & b", commutative=True),
    Primitive("OR", 2, _integer, _bitwise(np.bitwise_or), "bitwise", "a | b", commutative=True),
    Primitive("XOR", 2, _integer, _bitwise(np.bitwise_xor), "bitwise", "a ^ b", commutative=True),
    Primitive("NOT", 1, _bool_only, lambda a: 1.0 - a, "bitwise", "logical not of a boolean"),
    Primitive(
        "BNOT",
        1,
        _int_only,
        lambda a: (~_ints(a)[0]).astype(np.float64),
        "bitwise",
        "bitwise complement ~a = -a - 1 of an integer",
    ),
    # modular arithmetic (integer inputs, modulus parameter p)
    Primitive("MOD", 1, _int_only, _mod, "modular", "a mod p (in [0, p))", params=("p",)),
    Primitive(
        "ADDMOD", 2, _int_only, _addmod, "modular", "(a + b) mod p", params=("p",), commutative=True
    ),
    Primitive("SUBMOD", 2, _int_only, _submod, "modular", "(a - b) mod p", params=("p",)),
    Primitive(
        "MULMOD", 2, _int_only, _mulmod, "modular", "(a * b) mod p", params=("p",), commutative=True
    ),
    Primitive(
        "DIVMOD", 2, _int_only, _divmod, "modular", "a * b^-1 mod p (p prime)", params=("p",)
    ),
    # comparisons (booleans as 0/1) and control
    Primitive("LT", 2, _compare, lambda a, b: _flag(a < b), "comparison", "1 if a < b else 0"),
    Primitive("LE", 2, _compare, lambda a, b: _flag(a <= b), "comparison", "1 if a <= b else 0"),
    Primitive(
        "EQ",
        2,
        _compare,
        lambda a, b: _flag(a == b),
        "comparison",
        "1 if a == b else 0",
        commutative=True,
    ),
    Primitive(
        "NE",
        2,
        _compare,
        lambda a, b: _flag(a != b),
        "comparison",
        "1 if a != b else 0",
        commutative=True,
    ),
    Primitive("COND", 3, _cond, lambda c, a, b: np.where(c != 0, a, b), "control", "a if c else b"),
    # LOOP is evaluated by the expression evaluator (its body is an expression); see expr.py
    Primitive(
        "LOOP",
        2,
        lambda k: k[1] if k[0] in (Kind.BOOL, Kind.INT) else None,
        lambda *a, **p: None,
        "control",
        "apply body n times to x (n clipped to [0, bound])",
        params=("body", "bound"),
    ),
    # safe elementary functions (NaN outside the domain or on overflow)
    Primitive("SQRT", 1, _real, _safe(np.sqrt), "elementary", "sqrt(a), NaN for a < 0"),
    Primitive("EXP", 1, _real, _safe(np.exp), "elementary", "e^a, NaN on overflow"),
    Primitive("LOG", 1, _real, _safe(np.log), "elementary", "ln(a), NaN for a <= 0"),
    Primitive("SIN", 1, _real, _safe(np.sin), "elementary", "sin(a)"),
    Primitive(
        "POW",
        2,
        _real,
        _safe(np.power),
        "elementary",
        "a ** b, NaN where undefined (used for fitted exponents)",
    ),
    Primitive("COS", 1, _real, _safe(np.cos), "elementary", "cos(a)"),
    # the inverses of output transforms (discover.TRANSFORMS), never enumerated
    Primitive(
        "ASIN",
        1,
        _real,
        _safe(np.arcsin),
        "elementary",
        "arcsin(a), NaN outside [-1, 1]",
        enumerated=False,
    ),
    Primitive("TANH", 1, _real, _safe(np.tanh), "elementary", "tanh(a)", enumerated=False),
    # grids: (..., H, W) integer colour arrays, as in the grid tasks
    Primitive(
        "ROT90",
        1,
        _grid,
        lambda g: np.rot90(g, 1, axes=(-2, -1)),
        "grid",
        "rotate 90 degrees counter-clockwise",
    ),
    Primitive(
        "ROT180", 1, _grid, lambda g: np.rot90(g, 2, axes=(-2, -1)), "grid", "rotate 180 degrees"
    ),
    Primitive(
        "ROT270",
        1,
        _grid,
        lambda g: np.rot90(g, 3, axes=(-2, -1)),
        "grid",
        "rotate 90 degrees clockwise",
    ),
    Primitive(
        "MIRROR",
        1,
        _grid,
        lambda g: np.flip(g, axis=-1),
        "grid",
        "mirror left-right (reverse each row)",
    ),
    Primitive(
        "FLIP",
        1,
        _grid,
        lambda g: np.flip(g, axis=-2),
        "grid",
        "flip up-down (reverse the row order)",
    ),
    Primitive(
        "TRANSPOSE",
        1,
        _grid,
        lambda g: np.swapaxes(g, -2, -1),
        "grid",
        "reflect in the main diagonal",
    ),
    Primitive(
        "ANTITRANSPOSE",
        1,
        _grid,
        lambda g: np.swapaxes(np.flip(g, axis=(-2, -1)), -2, -1),
        "grid",
        "reflect in the anti-diagonal",
    ),
    Primitive(
        "RECOLOUR",
        1,
        _grid,
        _recolour,
        "grid",
        "cycle the k colours: c -> (c + 1) mod k",
        params=("k",),
    ),
    Primitive(
        "REPLACE_COLOUR",
        1,
        _grid,
        _replace_colour,
        "grid",
        "replace colour src by dst, other cells unchanged",
        params=("src", "dst"),
    ),
    Primitive(
        "CROP",
        1,
        _grid,
        _crop,
        "grid",
        "the h x w box at row r, column c",
        params=("r", "c", "h", "w"),
    ),
    Primitive("UPSCALE", 1, _grid, _upscale, "grid", "repeat each cell k x k times", params=("k",)),
]:
    _add(_p)

GROUPS: tuple[str, ...] = (
    "arithmetic",
    "integer",
    "modular",
    "bitwise",
    "comparison",
    "control",
    "elementary",
    "grid",
)


def primitives() -> dict[str, Primitive]:
    """All primitives by name (a copy: the table itself is fixed)."""
    return dict(_TABLE)


def get_primitive(name: str) -> Primitive:
    try:
        return _TABLE[name]
    except KeyError:
        raise RegistryError(f"unknown primitive {name!r}; known: {', '.join(_TABLE)}") from None


def is_primitive(name: str) -> bool:
    return name in _TABLE


@dataclass(frozen=True)
class PrimitiveSet:
    """A subset of primitives by group or name, for searches that should not use everything."""

    names: tuple[str, ...] = field(default_factory=lambda: tuple(_TABLE))

    @classmethod
    def of(cls, *groups_or_names: str) -> PrimitiveSet:
        names: list[str] = []
        for item in groups_or_names:
            if item in GROUPS:
                names += [p.name for p in _TABLE.values() if p.group == item]
            else:
                names.append(get_primitive(item).name)
        return cls(tuple(dict.fromkeys(names)))
