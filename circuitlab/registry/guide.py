"""A learned guide for discovery: predicts which primitives a target uses from its examples.

Method (a property-signature recogniser in the spirit of BUSTLE and DreamCoder's recognition
model, small enough to train in seconds with numpy):
1. Signature. A fixed vector of properties of the examples that relate outputs to inputs: output
   type and sign, the best linear, product, ratio, square and |x| fits of y to the columns,
   log-log slope, oscillation, bit-subset relations, boundedness. The guide therefore
   conditions on inputs *and* outputs (NSSR's guide saw only the inputs).
2. Training set. Random expressions over the search primitives with random relevant and junk
   columns of random kinds (bits, small integers, bytes, reals), optionally wrapped as a*f + b;
   each yields its signature and the set of primitive families it uses.
3. Model. One logistic regression per family (L2, full-batch gradient descent), standardised
   inputs; weights are stored as JSON (`guide.json` beside this file) with the training settings.
4. Proposal. A family predicted with probability >= 0.15 costs 1, else 2; among equal costs,
   likelier operations go first; registered functions always cost 1.
Ablation (`benchmarks/bench_registry.py`): candidates evaluated until the solution, guide vs
uniform, on the acceptance cases and on held-out random targets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from circuitlab.registry import expr as ex
from circuitlab.registry.domains import Kind, RegistryError
from circuitlab.registry.proposer import OpInfo, Proposal, TaskView

WEIGHTS = Path(__file__).with_name("guide.json")

# families the guide predicts; every searched primitive belongs to one
FAMILIES: dict[str, tuple[str, ...]] = {
    "additive": ("ADD", "SUB", "INC", "DEC", "NEG"),
    "MUL": ("MUL",),
    "DIV": ("DIV",),
    "SQUARE": ("SQUARE",),
    "ABS": ("ABS",),
    "bitwise": ("AND", "OR", "XOR", "NOT", "BNOT"),
    "comparison": ("LT", "LE", "EQ", "NE", "COND"),
    "modular": ("MOD", "ADDMOD", "SUBMOD", "MULMOD", "DIVMOD"),
    "elementary": ("SQRT", "EXP", "LOG", "SIN", "COS", "POW"),
}
FAMILY_OF = {p: f for f, ps in FAMILIES.items() for p in ps}


# ---------------------------------------------------------------------------------------------
# 1. signature


def _r2(a: np.ndarray, y: np.ndarray) -> float:
    """R^2 of the affine fit y ~ a (0 when a or y is constant or undefined)."""
    if not np.isfinite(a).all():
        return 0.0
    ac, yc = a - a.mean(), y - y.mean()
    den = float((ac @ ac) * (yc @ yc))
    return float((ac @ yc) ** 2 / den) if den > 0 else 0.0


def _r2_two(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    A = np.stack([a, b, np.ones_like(a)], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    yc = y - y.mean()
    den = float(yc @ yc)
    return float(1 - ((A @ coef - y) ** 2).sum() / den) if den > 0 else 0.0


def _rank(v: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(v, kind="stable"), kind="stable").astype(np.float64)


def signature(X: np.ndarray, y: np.ndarray, kinds: Sequence[Kind]) -> np.ndarray:
    """Properties of (X, y) that hint at the operations relating them. X: (n, k), y: (n,)."""
    with np.errstate(all="ignore"):
        return _signature(np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64), kinds)


def _signature(X: np.ndarray, y: np.ndarray, kinds: Sequence[Kind]) -> np.ndarray:
    n, k = X.shape
    y_int = bool(np.all(y == np.round(y)))
    ints = [j for j in range(k) if kinds[j] in (Kind.INT, Kind.BOOL)]
    f: list[float] = [
        float(y_int),
        float(np.all((y == 0) | (y == 1))),
        float(np.all(y >= 0)),
        float(np.mean(y < 0)),
        float(np.mean(y == 0)),
        float(np.log10(1 + np.std(y)) / 5),
        float(any(kd is Kind.BOOL for kd in kinds)),
        float(len(ints) == k),
        float(any(kd is Kind.REAL for kd in kinds)),
        k / 5,
    ]
    lin = [_r2(X[:, j], y) for j in range(k)]
    f += [max(lin), max(_r2(_rank(X[:, j]), _rank(y)) for j in range(k))]
    f += [max(_r2(np.abs(X[:, j]), y) for j in range(k)) - max(lin)]
    f += [max(_r2(X[:, j] ** 2, y) for j in range(k))]
    prod = [_r2(X[:, i] * X[:, j], y) for i in range(k) for j in range(i, k)]
    f += [max(prod)]
    ratio = [
        _r2(X[:, i] / X[:, j], y)
        for i in range(k)
        for j in range(k)
        if i != j and np.all(X[:, j] != 0)
    ]
    f += [max(ratio, default=0.0)]
    f += [
        max(
            (_r2_two(X[:, i], X[:, j], y) for i in range(k) for j in range(i + 1, k)),
            default=max(lin),
        )
    ]
    # oscillation of y along its best column (sin/cos); log-log slope (powers); exp
    best = int(np.argmax(lin))
    order = np.argsort(X[:, best], kind="stable")
    dy = np.diff(y[order])
    f += [float(np.mean(np.diff(np.sign(dy[dy != 0])) != 0)) if (dy != 0).sum() > 2 else 0.0]
    pos = (np.abs(y) > 0) & (np.abs(X[:, best]) > 0)
    if pos.sum() > 2 and np.ptp(np.log(np.abs(X[pos, best]))) > 0:
        slope = np.polyfit(np.log(np.abs(X[pos, best])), np.log(np.abs(y[pos])), 1)[0]
    else:
        slope = 0.0
    f += [
        float(abs(slope - 2) < 0.3),
        float(abs(slope - 1) < 0.3),
        float(slope < -0.3),
        float(np.clip(slope, -4, 4) / 4),
    ]
    f += [max((_r2(X[:, j], np.log(y)) for j in range(k)), default=0.0) if np.all(y > 0) else 0.0]
    # bit relations (integers only)
    if y_int and ints and np.all(y >= 0) and np.all(X[:, ints] >= 0):
        yi = y.astype(np.int64)
        cols = X[:, ints].astype(np.int64)
        f += [
            max(float(np.mean((yi & c) == yi)) for c in cols.T),
            max(float(np.mean((yi | c) == yi)) for c in cols.T),
            1.0,
        ]
    else:
        f += [0.0, 0.0, 0.0]
    xmax = float(np.abs(X).max()) if X.size else 0.0
    f += [float(y_int and np.all(y >= 0) and y.max() < xmax and max(lin) < 0.5)]
    return np.nan_to_num(np.array(f, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


# ---------------------------------------------------------------------------------------------
# 2. training set


_GRAMMAR = {  # primitives the generator composes, with their arity
    "ADD": 2,
    "SUB": 2,
    "MUL": 2,
    "DIV": 2,
    "INC": 1,
    "DEC": 1,
    "SQUARE": 1,
    "NEG": 1,
    "ABS": 1,
    "AND": 2,
    "OR": 2,
    "XOR": 2,
    "NOT": 1,
    "BNOT": 1,
    "LT": 2,
    "LE": 2,
    "EQ": 2,
    "NE": 2,
    "ADDMOD": 2,
    "SUBMOD": 2,
    "MULMOD": 2,
    "SQRT": 1,
    "EXP": 1,
    "LOG": 1,
    "SIN": 1,
    "COS": 1,
}
_KINDS = (Kind.BOOL, Kind.INT, Kind.INT, Kind.REAL)


def _column(rng: np.random.Generator, kind_ix: int, n: int) -> tuple[np.ndarray, Kind]:
    if kind_ix == 0:
        return rng.integers(0, 2, n).astype(np.float64), Kind.BOOL
    if kind_ix == 1:
        return rng.integers(-10, 11, n).astype(np.float64), Kind.INT
    if kind_ix == 2:
        return rng.integers(0, 256, n).astype(np.float64), Kind.INT
    return rng.uniform(0.5, 10, n), Kind.REAL


def random_task(
    rng: np.random.Generator, n: int = 40
) -> tuple[np.ndarray, np.ndarray, tuple[Kind, ...], set[str], ex.Expr] | None:
    """One random target: (X, y, column kinds, families used, expression), or None if invalid."""
    n_rel = int(rng.integers(1, 4))
    n_junk = int(rng.integers(0, 3))
    kind_ix = int(rng.integers(0, 4))
    cols, kinds = [], []
    for _ in range(n_rel):
        c, kd = _column(rng, kind_ix, n)
        cols.append(c)
        kinds.append(kd)
    for _ in range(n_junk):
        cols.append(rng.uniform(-100, 100, n))
        kinds.append(Kind.REAL)
    perm = rng.permutation(len(cols))
    cols = [cols[i] for i in perm]
    kinds = [kinds[i] for i in perm]
    rel = [int(np.flatnonzero(perm == i)[0]) for i in range(n_rel)]
    families = sorted({FAMILY_OF[o] for o in _GRAMMAR})
    p = 113 if kind_ix == 1 else 256

    def grow(depth: int) -> ex.Expr:
        if depth == 0 or rng.random() < 0.3:
            return ex.Var(int(rng.choice(rel)))
        # family first, then a member: labels stay balanced across families of unequal size
        fam = str(rng.choice(families))
        op = str(rng.choice([o for o in _GRAMMAR if FAMILY_OF[o] == fam]))
        args = [grow(depth - 1) for _ in range(_GRAMMAR[op])]
        return ex.call(op, *args, p=p) if op.endswith("MOD") else ex.call(op, *args)

    e = grow(int(rng.integers(1, 4)))
    if not isinstance(e, ex.Call):
        return None
    with np.errstate(all="ignore"):
        try:
            y = np.asarray(ex.evaluate(e, cols, {}), dtype=np.float64)
        except RegistryError:
            return None
        if rng.random() < 0.3 and kind_ix == 3:
            y = rng.uniform(0.5, 5) * y + rng.uniform(-5, 5)
    y = np.broadcast_to(y, (n,))
    if not np.isfinite(y).all() or np.ptp(y) == 0 or np.abs(y).max() > 1e12:
        return None
    fams = {FAMILY_OF[nd.op] for nd in ex.walk(e) if isinstance(nd, ex.Call)}
    return np.stack(cols, axis=1), y.copy(), tuple(kinds), fams, e


# ---------------------------------------------------------------------------------------------
# 3. model


@dataclass
class GuideModel:
    """Standardisation and one logistic regression per family."""

    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    W: np.ndarray  # (F, L)
    b: np.ndarray  # (L,)
    families: tuple[str, ...]
    meta: dict

    def predict(self, feats: np.ndarray) -> dict[str, float]:
        z = (feats - self.mean) / self.scale
        p = 1 / (1 + np.exp(-(z @ self.W + self.b)))
        return dict(zip(self.families, (float(v) for v in p), strict=True))

    def to_json(self) -> dict:
        return {
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "W": self.W.tolist(),
            "b": self.b.tolist(),
            "families": list(self.families),
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict) -> GuideModel:
        return cls(
            np.array(data["mean"]),
            np.array(data["scale"]),
            np.array(data["W"]),
            np.array(data["b"]),
            tuple(data["families"]),
            dict(data.get("meta", {})),
        )


def training_set(n_tasks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    fams = list(FAMILIES)
    while len(feats) < n_tasks:
        task = random_task(rng)
        if task is None:
            continue
        X, y, kinds, used, _ = task
        feats.append(signature(X, y, kinds))
        labels.append([f in used for f in fams])
    return np.array(feats), np.array(labels, dtype=np.float64)


def train(
    n_tasks: int = 3000, seed: int = 0, steps: int = 2000, l2: float = 1e-3, lr: float = 0.5
) -> GuideModel:
    """Fit the guide on `n_tasks` random targets (deterministic for a seed)."""
    F, L = training_set(n_tasks, seed)
    mean, scale = F.mean(axis=0), F.std(axis=0)
    scale[scale == 0] = 1.0
    Z = (F - mean) / scale
    W = np.zeros((Z.shape[1], L.shape[1]))
    b = np.log((L.mean(axis=0) + 1e-3) / (1 - L.mean(axis=0) + 1e-3))
    for _ in range(steps):
        P = 1 / (1 + np.exp(-(Z @ W + b)))
        G = P - L
        W -= lr * (Z.T @ G / len(Z) + l2 * W)
        b -= lr * G.mean(axis=0)
    P = 1 / (1 + np.exp(-(Z @ W + b)))
    acc = float(((P > 0.5) == (L > 0.5)).mean())
    meta = {
        "n_tasks": n_tasks,
        "seed": seed,
        "steps": steps,
        "l2": l2,
        "lr": lr,
        "train_label_accuracy": round(acc, 4),
        "n_features": int(Z.shape[1]),
    }
    return GuideModel(mean, scale, W, b, tuple(FAMILIES), meta)


# ---------------------------------------------------------------------------------------------
# 4. proposer


class GuideProposer:
    """Costs from the guide's family probabilities (see the module docstring)."""

    name = "guide"

    def __init__(self, model: GuideModel, threshold: float = 0.15) -> None:
        self.model, self.threshold = model, threshold

    def probabilities(self, task: TaskView) -> dict[str, float]:
        return self.model.predict(signature(task.X, task.y, task.kinds))

    def propose(self, task: TaskView, ops: Sequence[OpInfo]) -> Proposal:
        probs = self.probabilities(task)
        costs: dict[str, int] = {}
        score: dict[str, float] = {}
        for op in ops:
            if op.group == "registered":
                costs[op.name], score[op.name] = 1, 2.0
                continue
            fam = FAMILY_OF.get(op.name.split("[")[0])
            p = probs.get(fam, 0.5) if fam else 0.5
            costs[op.name] = 1 if p >= self.threshold else 2
            score[op.name] = p
        order = tuple(sorted(score, key=lambda k: -score[k]))
        return Proposal(costs, order)


def load_guide(path: str | Path | None = None) -> GuideProposer:
    """The shipped guide (or one saved at `path`)."""
    p = Path(path) if path is not None else WEIGHTS
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(
            f"no guide weights at {p}; train them with `python -m circuitlab.registry.guide`"
        ) from None
    return GuideProposer(GuideModel.from_json(data))


def main() -> None:  # pragma: no cover - the shipped weights are produced by this
    import argparse

    ap = argparse.ArgumentParser(description="Train the discovery guide and save its weights.")
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(WEIGHTS))
    args = ap.parse_args()
    model = train(args.tasks, args.seed)
    tmp = Path(args.out + ".tmp")
    tmp.write_text(json.dumps(model.to_json(), indent=1))
    tmp.replace(args.out)
    print(json.dumps(model.meta))


if __name__ == "__main__":
    main()
