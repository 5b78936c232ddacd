"""AI Feynman benchmark: symbolic discovery on the 100 Feynman equations (Udrescu & Tegmark 2020).

    python benchmarks/bench_feynman.py                       # all 100, 60 s each, noise-free
    python benchmarks/bench_feynman.py --only I.12.1,I.14.3 --budget 10
    python benchmarks/bench_feynman.py --noise 0.01          # 1% noise: is the structure chosen?
    python benchmarks/bench_feynman.py --resume              # go on with an interrupted run
    python benchmarks/bench_feynman.py --show                # print the saved table

Data: for each equation of benchmarks/data/feynman_equations.csv, --rows rows (default 200)
drawn uniformly in each variable's [low, high] with a numpy generator seeded by (--seed, the
equation's Number); y computed from the formula in float64 (sympy lambdify with numpy; arcsin
is asin, ln is log). Rows where y is not finite are redrawn, and the number redrawn recorded.
The variables are the names present in the row (the `# variables` column is wrong on a few
rows); a name that is not an identifier would be renamed and the mapping recorded.

Discovery: `circuitlab.registry.search` (returns a result, never raises on a failed search,
writes nothing: no registry is given and use_registry=False), with
DiscoveryConfig(max_seconds=--budget, use_registry=False, seed=--seed), and each column's units
from benchmarks/data/feynman_units.csv (the benchmark's units table; --no-units leaves them
out, so no dimensional analysis). --oracle also lets discovery query the formula as a black
box (as it can query a circuit): its symmetry and separability tests run on it; results go to
feynman_oracle.json. Each equation runs in
its own spawned process (--workers at a time, numpy/BLAS/torch threads 1); a process still
running budget + 30 s after it started is killed and the equation recorded as "timeout".

Exactness (noise-free), decided here, independently of the search's own acceptance:
  (1) symbolic: sympy.simplify(found - truth) == 0, variables positive (every range is >= 0),
      the found constants as circuitlab wrote them (floats stay floats), under a time limit
      (--simplify-seconds, SIGALRM) and skipped for expressions over 200 operations;
  (2) numeric: the found function (circuitlab's own evaluator, `Function.on_columns`) and the
      formula on 1,000 fresh probes in the ranges (another seed): the same non-finite pattern
      and max |found - truth| <= 1e-9 * max |truth|.
  exact = (1) or (2); `exact_how` records which held ("symbolic+numeric", "symbolic",
  "numeric").
Statuses: exact (or structure, with noise), wrong (a function, not the truth), failed (no
function within the budget), timeout (killed at budget + 30 s), error (an exception: the
message is recorded).

Noisy mode (--noise 0.01): y * (1 + 0.01 * N(0, 1)) on the training rows; discovery with
DiscoveryConfig(approximate=True, max_cost=--max-cost, default 9: approximate mode's own
default, 5, is below most of these formulas). "True structure chosen" (status structure) =
the chosen function, evaluated on 1,000 fresh noise-free probes, agrees with the formula
within --structure-rtol (default 1e-3) relative: max |found - truth| <= 1e-3 * max |truth|.
Its fitted constants carry the noise (a least-squares coefficient fitted on the 150 training
rows with 1% noise has a relative error of order 0.01/sqrt(150) ~ 8e-4), so max_rel_error is
recorded for every equation and a stricter or looser threshold can be applied to the JSON later.

Results: benchmarks/results/feynman.json (feynman_noisy.json with noise), written after every
equation (temp file + os.replace), so a killed run keeps what it has; --resume skips the
equations already in the file when its config is the same. References (noise-free, solved of
100): AI Feynman 100, Eureqa 71 (Udrescu & Tegmark 2020). Target: all, at least 90.
Times are wall-clock on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import re
import signal
import statistics
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np
import sympy
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
DATA = HERE / "data" / "feynman_equations.csv"
# each variable's units as exponents of m, s, kg, T (kelvin), V (volt): the benchmark's own
# units table (AI Feynman's units.csv, as copied in PhySO's benchmarking/FeynmanBenchmark), plus
# Gamma, which the equations spell with a capital and the table does not list
UNITS = HERE / "data" / "feynman_units.csv"
RESULTS = HERE / "results" / "feynman.json"
RESULTS_NOISY = HERE / "results" / "feynman_noisy.json"
RESULTS_ORACLE = HERE / "results" / "feynman_oracle.json"
REFERENCE = {"AI Feynman": 100, "Eureqa": 71}  # noise-free, of 100 (Udrescu & Tegmark 2020)
TARGET = "all 100 exact within 60 s each on 2 cores; at least 90"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
GRACE_SECONDS = 30.0  # a worker still running budget + this is killed ("timeout")
PROBES = 1000
EXACT_RTOL = 1e-9
MAX_SYMBOLIC_OPS = 200  # larger expressions skip sympy.simplify
NOISY_MAX_COST = 9
SOLVED = ("exact", "structure")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
console = Console()


# ---------------------------------------------------------------------------------------------
# equations and data


@dataclass(frozen=True)
class Equation:
    name: str  # the Filename column, e.g. I.6.2a
    number: int
    output: str
    formula: str
    variables: tuple[tuple[str, float, float], ...]  # (name, low, high), the names present

    @property
    def names(self) -> list[str]:
        return [v[0] for v in self.variables]

    def columns(self) -> list[str]:
        """The column names given to discovery: each variable's name when it is an identifier
        (all are, in the AI Feynman table), else a sanitised one (see `renamed`)."""
        out: list[str] = []
        for name in self.names:
            col = name if _IDENT.match(name) else re.sub(r"\W+", "_", name).strip("_") or "x"
            if col[0].isdigit():
                col = f"v_{col}"
            while col in out:
                col += "_"
            out.append(col)
        return out

    def renamed(self) -> dict[str, str]:
        return {n: c for n, c in zip(self.names, self.columns(), strict=True) if n != c}

    def symbols(self) -> list[sympy.Symbol]:
        return [sympy.Symbol(n) for n in self.names]

    def truth(self) -> sympy.Expr:
        """The formula as a sympy expression over plain symbols named as the variables (a
        variable named I, beta or gamma is a symbol here, not sympy's constant or function)."""
        local: dict[str, Any] = {n: sympy.Symbol(n) for n in self.names}
        local.update(arcsin=sympy.asin, ln=sympy.log, pi=sympy.pi)
        return sympy.sympify(self.formula, locals=local)

    def truth_fn(self) -> Callable[..., np.ndarray]:
        """The formula as a numpy function of the variables, in order."""
        return sympy.lambdify(self.symbols(), self.truth(), modules="numpy")

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n rows uniform in each variable's [low, high]."""
        lows = np.array([v[1] for v in self.variables])
        highs = np.array([v[2] for v in self.variables])
        return rng.uniform(lows, highs, (n, len(self.variables)))


def load_equations(path: Path = DATA) -> list[Equation]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        variables = []
        for i in range(1, 11):
            name = (r.get(f"v{i}_name") or "").strip()
            if name:
                variables.append((name, float(r[f"v{i}_low"]), float(r[f"v{i}_high"])))
        out.append(
            Equation(
                r["Filename"].strip(),
                int(r["Number"]),
                r["Output"].strip(),
                r["Formula"].strip(),
                tuple(variables),
            )
        )
    return out


def evaluate_truth(eq: Equation, X: np.ndarray, fn: Callable[..., np.ndarray] | None = None):
    fn = fn or eq.truth_fn()
    with np.errstate(all="ignore"):
        y = np.asarray(fn(*X.T), dtype=np.float64)
    return np.broadcast_to(y, (X.shape[0],)).copy()


def make_data(eq: Equation, n: int, seed: int, noise: float = 0.0):
    """(X, y, redrawn): n rows in the ranges with finite y (rows where it is not are drawn
    again, at most 100 times), and y with relative Gaussian noise when asked."""
    rng = np.random.default_rng([seed, eq.number])
    fn = eq.truth_fn()
    X = eq.draw(rng, n)
    y = evaluate_truth(eq, X, fn)
    redrawn = 0
    for _ in range(100):
        bad = ~np.isfinite(y)
        if not bad.any():
            break
        redrawn += int(bad.sum())
        X[bad] = eq.draw(rng, int(bad.sum()))
        y[bad] = evaluate_truth(eq, X[bad], fn)
    else:
        raise ValueError(f"{eq.name}: y is not finite on {int((~np.isfinite(y)).sum())} rows")
    if noise:
        y = y * (1 + noise * np.random.default_rng([seed, eq.number, 2]).standard_normal(n))
    return X, y, redrawn


def probes(eq: Equation, seed: int, n: int = PROBES) -> np.ndarray:
    """Fresh inputs for the check: drawn in the ranges with a seed the data never use."""
    return eq.draw(np.random.default_rng([seed, eq.number, 1]), n)


# ---------------------------------------------------------------------------------------------
# the exactness check


class _Timeout(BaseException):  # BaseException: sympy's `except Exception` cannot swallow it
    pass


def symbolic_equal(found: sympy.Expr, truth: sympy.Expr, seconds: float) -> str:
    """'equal' when sympy.simplify(found - truth) is 0 (variables positive: every range of
    the table is >= 0), else 'different', 'timeout' (over `seconds`, SIGALRM: only in a
    main thread), 'skipped' (too large, or no alarm available) or 'error'."""
    if sympy.count_ops(found) + sympy.count_ops(truth) > MAX_SYMBOLIC_OPS:
        return "skipped"
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        return "skipped"
    free = found.free_symbols | truth.free_symbols
    pos = {s: sympy.Symbol(s.name, positive=True) for s in free}

    def alarm(signum: int, frame: Any) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        diff = sympy.simplify(found.xreplace(pos) - truth.xreplace(pos))
        return "equal" if diff == 0 else "different"
    except _Timeout:
        return "timeout"
    except Exception:
        return "error"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def max_rel_error(found: np.ndarray, truth: np.ndarray) -> float:
    """max |found - truth| / max |truth| where the truth is finite; inf when the non-finite
    patterns differ or the truth is nowhere finite."""
    found = np.broadcast_to(np.asarray(found, dtype=np.float64), truth.shape)
    ok_t, ok_f = np.isfinite(truth), np.isfinite(found)
    if not ok_t.any() or not np.array_equal(ok_t, ok_f):
        return math.inf
    scale = float(np.max(np.abs(truth[ok_t])))
    err = float(np.max(np.abs(found[ok_t] - truth[ok_t])))
    if scale == 0:
        return 0.0 if err == 0 else math.inf
    return err / scale


def check(
    eq: Equation,
    found: Any,
    *,
    seed: int = 0,
    rtol: float = EXACT_RTOL,
    simplify_seconds: float = 10.0,
    n_probes: int = PROBES,
) -> dict[str, Any]:
    """Does `found` (a circuitlab `Function` discovered on eq.columns(), a sympy expression
    or a string over the variable names) compute the equation? Numeric: on n_probes fresh
    probes, the same non-finite pattern and max error <= rtol * max |truth|. Symbolic (when
    simplify_seconds > 0): simplify(found - truth) == 0. Returns {ok, how, max_rel_error,
    symbolic}: ok = symbolic or numeric."""
    P = probes(eq, seed, n_probes)
    truth = evaluate_truth(eq, P)
    back = {sympy.Symbol(c): sympy.Symbol(n) for n, c in zip(eq.names, eq.columns(), strict=True)}
    if hasattr(found, "on_columns"):  # a Function: circuitlab's evaluator, and its sympy form
        table = {c: P[:, j] for j, c in enumerate(eq.columns())}
        with np.errstate(all="ignore"):
            values = found.on_columns(table)
        try:
            expr = found.sympy().xreplace(back)
        except Exception:
            expr = None
    else:
        expr = found if isinstance(found, sympy.Expr) else _parse(eq, str(found))
        fn = sympy.lambdify(eq.symbols(), expr, modules="numpy")
        with np.errstate(all="ignore"):
            values = np.asarray(fn(*P.T), dtype=np.float64)
    err = max_rel_error(values, truth)
    numeric = err <= rtol
    symbolic = (
        symbolic_equal(expr, eq.truth(), simplify_seconds)
        if expr is not None and simplify_seconds > 0
        else "skipped"
    )
    how = [w for w, ok in (("symbolic", symbolic == "equal"), ("numeric", numeric)) if ok]
    return {
        "ok": bool(how),
        "how": "+".join(how) or None,
        "max_rel_error": err,
        "symbolic": symbolic,
    }


def _parse(eq: Equation, text: str) -> sympy.Expr:
    local: dict[str, Any] = {n: sympy.Symbol(n) for n in eq.names}
    local.update(arcsin=sympy.asin, ln=sympy.log, pi=sympy.pi)
    return sympy.sympify(text, locals=local)


# ---------------------------------------------------------------------------------------------
# one equation


@dataclass(frozen=True)
class Options:
    budget: float = 60.0
    rows: int = 200
    seed: int = 0
    noise: float = 0.0
    max_cost: int | None = None  # None: discovery's default (9); noisy: NOISY_MAX_COST
    structure_rtol: float = 1e-3
    simplify_seconds: float = 10.0
    memory: str = "2G"
    units: bool = True  # give discovery the variables' units (dimensional analysis)
    # give discovery the formula as an oracle it may query (a black box, as a circuit is):
    # symmetry and separability tests run on it
    oracle: bool = False

    def config(self) -> dict[str, Any]:
        """What a result depends on (compared by --resume)."""
        return {
            **asdict(self),
            "max_cost": self.cost_limit,
            "probes": PROBES,
            "exact_rtol": EXACT_RTOL,
            "hard_limit_seconds": self.budget + GRACE_SECONDS,
            "data_sha256": hashlib.sha256(DATA.read_bytes()).hexdigest(),
        }

    @property
    def cost_limit(self) -> int | None:
        if self.max_cost is not None:
            return self.max_cost
        return NOISY_MAX_COST if self.noise else None


def run_equation(eq: Equation, opts: Options) -> dict[str, Any]:
    """Draw the data, search, check. Never raises for a failed search (status failed)."""
    from circuitlab.registry import DiscoveryConfig, search

    rec: dict[str, Any] = {
        "name": eq.name,
        "number": eq.number,
        "formula": eq.formula,
        "n_vars": len(eq.variables),
        "renamed": eq.renamed(),
    }
    X, y, redrawn = make_data(eq, opts.rows, opts.seed, opts.noise)
    rec["redrawn_rows"] = redrawn
    cfg = DiscoveryConfig(
        seed=opts.seed,
        max_seconds=opts.budget,
        use_registry=False,
        approximate=bool(opts.noise),
        max_cost=opts.cost_limit,
        memory_bytes=opts.memory,
    )
    units = None
    data: Any = (X, y)
    if opts.units:
        from circuitlab.registry import Examples, Units

        table = Units.read(UNITS)
        cols = eq.columns()  # identifiers: a renamed column keeps its variable's units
        out = eq.output if eq.output not in cols else eq.output + "_out"
        dims = {c: table.of(n) for n, c in zip(eq.names, cols, strict=True)}
        units = Units(table.base, {**dims, out: table.of(eq.output)})
        data = Examples.from_arrays(X, y, cols, out)
    oracle = None
    if opts.oracle:
        fn = eq.truth_fn()

        def oracle(*cols: np.ndarray) -> np.ndarray:
            return evaluate_truth(eq, np.stack(np.broadcast_arrays(*cols), axis=1), fn)

    t0 = time.perf_counter()
    result = search(data, names=eq.columns(), name="F", config=cfg, units=units, oracle=oracle)
    rec["seconds"] = time.perf_counter() - t0
    fn = result.function
    rec.update(
        search_status=result.status,
        stopped=result.stats.stopped,
        level=result.stats.level,
        candidates=result.stats.candidates,
        pairs=result.stats.pairs,
        units=result.units,
        structure=result.structure,
        found=fn.render() if fn else None,
        found_sympy=None,
        cost=fn.complexity if fn else None,
        exact_how=None,
        max_rel_error=None,
        symbolic=None,
        message=result.message,
        # the staged searches run (stage, cost limit, level reached, seconds, outcome)
        stages=[
            {k: st[k] for k in ("stage", "max_cost", "level", "candidates", "seconds", "outcome")}
            for st in (run.to_dict() for run in result.stages)
        ],
    )
    if fn is None:
        rec["status"] = "failed"
        return rec
    with contextlib.suppress(Exception):  # sympy has no closed form for every primitive
        rec["found_sympy"] = str(fn.sympy())
    t1 = time.perf_counter()
    if opts.noise:
        c = check(eq, fn, seed=opts.seed, rtol=opts.structure_rtol, simplify_seconds=0)
        rec["status"] = "structure" if c["ok"] else "wrong"
    else:
        c = check(eq, fn, seed=opts.seed, simplify_seconds=opts.simplify_seconds)
        rec["status"] = "exact" if c["ok"] else "wrong"
    rec.update(exact_how=c["how"], max_rel_error=c["max_rel_error"], symbolic=c["symbolic"])
    rec["check_seconds"] = time.perf_counter() - t1
    return rec


def _worker(eq: Equation, opts: Options, conn: Any) -> None:
    """In a spawned process: one equation, its record sent back through `conn`."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    try:
        rec = run_equation(eq, opts)
    except Exception as exc:
        rec = _stub(eq, "error")
        rec["message"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc()[-2000:]
    conn.send(rec)
    conn.close()


def _stub(eq: Equation, status: str) -> dict[str, Any]:
    return {
        "name": eq.name,
        "number": eq.number,
        "formula": eq.formula,
        "n_vars": len(eq.variables),
        "status": status,
        "found": None,
        "cost": None,
        "seconds": None,
        "exact_how": None,
        "max_rel_error": None,
    }


# ---------------------------------------------------------------------------------------------
# running many, results file


def run_many(
    eqs: Sequence[Equation],
    opts: Options,
    workers: int,
    on_done: Callable[[dict[str, Any]], None],
    grace: float = GRACE_SECONDS,
) -> None:
    """Each equation in its own spawned process, `workers` at a time; one still running
    budget + grace seconds after its start is killed and recorded as timeout."""
    ctx = mp.get_context("spawn")
    pending = list(eqs)
    running: dict[str, tuple[Any, Any, float, Equation]] = {}
    limit = opts.budget + grace
    try:
        while pending or running:
            while pending and len(running) < max(1, workers):
                eq = pending.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker, args=(eq, opts, send), name=f"feynman-{eq.name}")
                with _one_thread_env():
                    proc.start()
                send.close()
                running[eq.name] = (proc, recv, time.perf_counter(), eq)
            waitables = [r for _, r, _, _ in running.values()]
            waitables += [p.sentinel for p, _, _, _ in running.values()]
            wait(waitables, timeout=1.0)
            for name, (proc, recv, start, eq) in list(running.items()):
                rec = None
                if recv.poll():
                    try:
                        rec = recv.recv()
                    except EOFError:
                        rec = None
                    if rec is not None:
                        proc.join(10)
                if rec is None and not proc.is_alive():
                    proc.join()
                    rec = _stub(eq, "error")
                    rec["message"] = f"worker exited with code {proc.exitcode} and no result"
                    rec["seconds"] = time.perf_counter() - start
                elif rec is None and time.perf_counter() - start > limit:
                    proc.kill()
                    proc.join()
                    rec = _stub(eq, "timeout")
                    rec["seconds"] = time.perf_counter() - start
                    rec["message"] = f"killed after {limit:g} s (budget + {grace:g} s)"
                if rec is not None:
                    if proc.is_alive():
                        proc.kill()
                        proc.join()
                    recv.close()
                    rec["wall_seconds"] = time.perf_counter() - start
                    del running[name]
                    on_done(rec)
    finally:
        for proc, recv, _, _ in running.values():  # interrupted: end our own workers
            proc.kill()
            proc.join()
            recv.close()


@contextlib.contextmanager
def _one_thread_env() -> Iterator[None]:
    """numpy/BLAS threads 1 in the environment a spawned worker starts with (it imports
    numpy afresh), this process's own environment restored afterwards."""
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: "1" for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def machine() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    from circuitlab import __version__

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "load_average_at_start": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sympy": sympy.__version__,
        "circuitlab": __version__,
        "threads_per_equation": 1,
    }


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    cfg = res["config"]
    recs = list(res["equations"].values())
    key = "structure" if cfg["noise"] else "exact"
    solved = [r for r in recs if r["status"] in SOLVED]
    within = [r for r in solved if r["seconds"] is not None and r["seconds"] <= cfg["budget"]]
    secs = [r["seconds"] for r in solved if r["seconds"] is not None]
    all_secs = [r["seconds"] for r in recs if r["seconds"] is not None]
    return {
        key: len(solved),
        "solved": len(solved),
        "of": len(recs),
        "within_budget": len(within),
        "budget_seconds": cfg["budget"],
        # the search's wall time past its budget (approximate mode always runs to the budget
        # or the cost limit, so with noise most equations end just past it)
        "max_overrun_seconds": max(
            (r["seconds"] - cfg["budget"] for r in recs if "search_status" in r), default=None
        ),
        "median_seconds_solved": statistics.median(secs) if secs else None,
        "median_seconds": statistics.median(all_secs) if all_secs else None,
        "statuses": dict(Counter(r["status"] for r in recs)),
        "criterion": (
            f"structure: chosen function within {cfg['structure_rtol']:g} relative of the "
            f"formula on {PROBES} fresh noise-free probes"
            if cfg["noise"]
            else f"exact: sympy.simplify(found - truth) == 0, or within {EXACT_RTOL:g} "
            f"relative on {PROBES} fresh probes"
        ),
        "reference_noise_free": {**REFERENCE, "of": 100},
        "target": TARGET,
    }


def write_json(path: Path, res: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.floating | np.integer):
        return obj.item()
    return str(obj)


def _clean(rec: dict[str, Any]) -> dict[str, Any]:
    """JSON has no inf: an infinite error is written as null with a note."""
    err = rec.get("max_rel_error")
    if isinstance(err, float) and not math.isfinite(err):
        rec["max_rel_error"] = None
        rec["max_rel_error_note"] = "non-finite pattern differs, or error not finite"
    return rec


# ---------------------------------------------------------------------------------------------
# printing


def print_table(res: dict[str, Any]) -> None:
    cfg = res["config"]
    noisy = bool(cfg["noise"])
    title = f"AI Feynman equations, {cfg['rows']} rows, budget {cfg['budget']:g} s" + (
        f", {cfg['noise']:.0%} noise" if noisy else ", noise-free"
    )
    t = Table(title=title)
    for col in ("equation", "vars", "status", "seconds", "rel. error", "found"):
        t.add_column(col, overflow="fold")
    for r in res["equations"].values():
        how = (r.get("exact_how") or "").replace("symbolic", "sym").replace("numeric", "num")
        status = r["status"] + (f" ({how})" if how else "")
        err = r.get("max_rel_error")
        t.add_row(
            r["name"],
            str(r["n_vars"]),
            status,
            f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-",
            f"{err:.1e}" if err is not None else "-",
            r.get("found_sympy") or r.get("found") or "-",
        )
    console.print(t)
    console.print(summary_line(res))


def summary_line(res: dict[str, Any]) -> str:
    s = res["summary"]
    what = "true structure chosen" if res["config"]["noise"] else "exact"
    med = s["median_seconds_solved"]
    line = (
        f"{what}: {s['solved']}/{s['of']} ({s['within_budget']} within the "
        f"{s['budget_seconds']:g} s budget"
        + (f", median {med:.2f} s" if med is not None else "")
        + "); reference (noise-free, of 100): AI Feynman 100, Eureqa 71"
    )
    other = {k: v for k, v in s["statuses"].items() if k not in SOLVED}
    if other:
        line += "; " + ", ".join(f"{k} {v}" for k, v in sorted(other.items()))
    return line


# ---------------------------------------------------------------------------------------------
# command line


def select(eqs: list[Equation], only: str | None, first: int | None) -> list[Equation]:
    if only:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        by_name = {e.name: e for e in eqs}
        unknown = [w for w in wanted if w not in by_name]
        if unknown:
            raise SystemExit(f"unknown equation(s) {unknown}; e.g. {list(by_name)[:5]}")
        eqs = [by_name[w] for w in wanted]
    if first is not None:
        eqs = eqs[:first]
    return eqs


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--only", help="comma list of equations (Filename), e.g. I.6.2a,I.12.1")
    ap.add_argument("--first", type=int, help="the first N equations of the table")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per equation (60)")
    ap.add_argument("--rows", type=int, default=200, help="rows of data per equation (200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.0, help="relative Gaussian noise (0.01)")
    ap.add_argument(
        "--max-cost", type=int, help=f"search cost limit (default 9; {NOISY_MAX_COST} with noise)"
    )
    ap.add_argument("--structure-rtol", type=float, default=1e-3, help="noisy criterion (1e-3)")
    ap.add_argument("--simplify-seconds", type=float, default=10.0, help="sympy time limit (10)")
    ap.add_argument("--memory", default="2G", help="bytes each search may hold (2G)")
    ap.add_argument(
        "--no-units",
        action="store_true",
        help="search without the variables' units (no dimensional analysis)",
    )
    ap.add_argument(
        "--oracle",
        action="store_true",
        help="let discovery query the formula as a black box (symmetry and separability tests)",
    )
    ap.add_argument("--workers", type=int, default=1, help="equations at a time (1)")
    ap.add_argument("--out", help="results JSON (default results/feynman[_noisy].json)")
    ap.add_argument("--resume", action="store_true", help="skip equations already in --out")
    ap.add_argument("--show", action="store_true", help="print the table saved in --out")
    args = ap.parse_args(argv)
    default = RESULTS_ORACLE if args.oracle else RESULTS
    out = Path(args.out) if args.out else (RESULTS_NOISY if args.noise else default)
    if args.show:
        if not out.exists():
            raise SystemExit(f"no results at {out}")
        res = json.loads(out.read_text())
        print_table(res)
        return res
    opts = Options(
        budget=args.budget,
        rows=args.rows,
        seed=args.seed,
        noise=args.noise,
        max_cost=args.max_cost,
        structure_rtol=args.structure_rtol,
        simplify_seconds=args.simplify_seconds,
        memory=args.memory,
        units=not args.no_units,
        oracle=args.oracle,
    )
    config = json.loads(json.dumps(opts.config()))
    done: dict[str, Any] = {}
    if args.resume and out.exists():
        old = json.loads(out.read_text())
        if old.get("config") != config:
            diff = {
                k: (old.get("config", {}).get(k), v)
                for k, v in config.items()
                if old.get("config", {}).get(k) != v
            }
            raise SystemExit(f"--resume: {out} was run with another config (saved, now): {diff}")
        done = old.get("equations", {})
    eqs = select(load_equations(), args.only, args.first)
    todo = [e for e in eqs if e.name not in done]
    res: dict[str, Any] = {
        "config": config,
        "machine": machine(),
        "run": {
            "workers": args.workers,
            "selected": len(eqs),
            "skipped_resumed": len(eqs) - len(todo),
        },
        "equations": dict(done),
    }
    res["summary"] = summarise(res)
    console.print(
        f"{len(todo)} equation(s) to run ({len(eqs) - len(todo)} already in {out}), budget "
        f"{opts.budget:g} s, {opts.rows} rows"
        + (f", noise {opts.noise:g}" if opts.noise else "")
        + f", {args.workers} worker(s)"
    )
    t0 = time.perf_counter()

    order = {e.name: i for i, e in enumerate(load_equations())}

    def on_done(rec: dict[str, Any]) -> None:
        res["equations"][rec["name"]] = _clean(rec)
        res["equations"] = dict(  # the table's order, whatever order they finished in
            sorted(res["equations"].items(), key=lambda kv: order.get(kv[0], len(order)))
        )
        res["summary"] = summarise(res)
        res["run"]["wall_seconds"] = time.perf_counter() - t0
        write_json(out, res)
        secs = f"{rec['seconds']:.1f} s" if rec.get("seconds") is not None else "-"
        console.print(
            f"  {rec['name']:<10} {rec['status']:<9} {secs:>8}  "
            f"{rec.get('found_sympy') or rec.get('found') or rec.get('message') or ''}"
        )

    write_json(out, res)
    run_many(todo, opts, args.workers, on_done)
    res["run"]["wall_seconds"] = time.perf_counter() - t0
    write_json(out, res)
    print_table(res)
    console.print(f"written to {out}")
    return res


if __name__ == "__main__":
    main()
