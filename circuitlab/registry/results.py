"""The configuration and results of a discovery, and what every stage of it reports.

`DiscoveryConfig` (what a discovery may do), `DiscoveryResult` (what it found, with the
results table and the stage runs), `StageRun` (one search or fit of a staged discovery),
`Found` (the best exact fit so far, with its stage) and `Entry` (a fit for the results table);
`provenance` and `total_stats` summarise the stage runs for a function's provenance and the
result's statistics; `front` is the Pareto front of the results table.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from circuitlab import __version__
from circuitlab.registry.domains import RegistryError
from circuitlab.registry.examples import Examples
from circuitlab.registry.function import Function, Provenance
from circuitlab.registry.ops import NUMERIC_GROUPS
from circuitlab.registry.sampling import Sample, check_memory, check_search_rows
from circuitlab.registry.search import SearchStats
from circuitlab.registry.stages import Stage


class DiscoveryError(RegistryError):
    """No function fits the examples within the search budget; nothing was registered."""

    def __init__(self, message: str, result: DiscoveryResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class DiscoveryConfig:
    """Settings of one discovery (recorded in the function's provenance)."""

    seed: int = 0
    holdout: float = 0.25  # fraction of rows held out for acceptance (none below 4 rows)
    probes: int = 64  # fresh in-domain inputs every accepted function must be defined on
    max_cost: int | None = None  # None: 9, or approximate_max_cost in approximate mode
    max_seconds: float = 60.0
    max_bank: int = 400_000  # ~330 MB of float64 values at 100 rows
    # bytes a search may hold (its bank of candidate values and pair-fit vectors, and its
    # evaluation batches): the bank keeps at most min(max_bank, what fits) candidates. A size
    # such as "512M" or "2G" (powers of 1024) is accepted too
    memory_bytes: int = 2 * 1024**3
    # training rows every candidate is evaluated on: a seeded sample of them when there are
    # more (and at most search_rows // 2 held-out rows), so a 10,000-row table costs what 256
    # rows do; an accepted fit is still checked on every row (see the module docstring)
    search_rows: int = 256
    rtol: float = 1e-9
    pairs: bool = True
    approximate: bool = False  # on failure, return the best fit by description length
    # approximate mode never stops at an exact fit, so it would use the whole budget: a lower
    # default limit, used only when max_cost is not given
    approximate_max_cost: int = 5
    # primitive groups searched, all at once (a comma list is accepted too); None: a staged
    # search, groups chosen from the data (stages.py)
    groups: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ("POW",)  # primitives left out by name (POW: fitted only)
    # moduli of the modular operations, each tried in its own stage in this order (an int or
    # a comma list is accepted too); None: inferred from the data (stages.infer_moduli)
    moduli: tuple[int, ...] | None = None
    use_registry: bool = True  # offer registered functions as building blocks
    # the cost limit of a staged search's first round (every stage up to this cost, so that a
    # small modular formula is not kept waiting by a deep arithmetic search); each later round
    # raises it by ROUND_STEP, up to cost_limit
    stage_cost: int = 5
    # after the first round finds nothing, search transforms of the output (1/y, y^2, log y,
    # arcsin y, ...) up to stage_cost and invert the fit (`transform_stage`; real data, exact
    # mode)
    transforms: bool = True

    def __post_init__(self) -> None:
        if self.max_cost is not None and self.max_cost < 1:
            raise RegistryError(f"max_cost must be at least 1, got {self.max_cost}")
        if not 0 <= self.holdout < 1:
            raise RegistryError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.stage_cost < 1:
            raise RegistryError(f"stage_cost must be at least 1, got {self.stage_cost}")
        self.search_rows = check_search_rows(self.search_rows)
        self.memory_bytes = check_memory(self.memory_bytes)
        if self.groups is not None:
            self.groups = check_groups(self.groups)
        if self.moduli is not None:
            self.moduli = check_moduli(self.moduli)
            if self.groups is not None and "modular" not in self.groups:
                raise RegistryError(
                    "moduli are for the modular group, which the groups given leave out; "
                    "add modular to them"
                )

    @property
    def cost_limit(self) -> int:
        """The highest cost searched: max_cost when given, else 9 (approximate mode: 5)."""
        if self.max_cost is not None:
            return self.max_cost
        return self.approximate_max_cost if self.approximate else 9

    @property
    def cost_limit_note(self) -> str:
        """The limit and where it comes from (said in the output, never applied silently)."""
        if self.max_cost is None and self.approximate:
            return (
                f"cost limit {self.cost_limit} (the approximate-mode default; raise it with "
                "--max-cost)"
            )
        return f"cost limit {self.cost_limit}"


def check_groups(groups: Sequence[str] | str) -> tuple[str, ...]:
    """`groups` (names, or one comma list) as a tuple without repeats; refuses an empty list
    or a name that is not a numeric primitive group, naming the known ones."""
    items = groups.split(",") if isinstance(groups, str) else groups
    out = tuple(dict.fromkeys(str(g).strip() for g in items))
    unknown = [g for g in out if g not in NUMERIC_GROUPS]
    if unknown or not out:
        what = f"unknown primitive group {', '.join(map(repr, unknown))}" if unknown else "no group"
        raise RegistryError(f"{what}; the groups are {', '.join(NUMERIC_GROUPS)}")
    return out


def check_moduli(moduli: Sequence[Any] | int | str) -> tuple[int, ...]:
    """`moduli` (integers, one integer, or a comma list) as a tuple of ints without repeats;
    refuses anything not an integer in [2, 2**31)."""
    if isinstance(moduli, str):
        moduli = moduli.split(",")
    elif isinstance(moduli, int | np.integer):
        moduli = [moduli]
    out: list[int] = []
    for m in moduli:
        try:
            if isinstance(m, bool) or not isinstance(m, int | np.integer | str):
                raise ValueError
            value = int(m.strip() if isinstance(m, str) else m)
        except ValueError:
            raise RegistryError(f"a modulus must be an integer, got {m!r}") from None
        if not 2 <= value < 2**31:
            raise RegistryError(f"a modulus must be in [2, 2**31), got {value}")
        out.append(value)
    if not out:
        raise RegistryError("no modulus given")
    return tuple(dict.fromkeys(out))


@dataclass
class TableRow:
    complexity: int
    loss: float  # mean squared error on the training rows
    score: float  # -d ln(loss) / d complexity against the previous row (PySR's score)
    expression: str
    sympy: str
    chosen: bool = False


@dataclass
class DiscoveryResult:
    function: Function | None
    status: str  # exact | approximate | failed
    stats: SearchStats
    table: list[TableRow] = field(default_factory=list)
    relevance: dict[str, bool] = field(default_factory=dict)
    message: str = ""
    proposer: str = "uniform"
    stages: list[StageRun] = field(default_factory=list)  # the searches run, in order
    # the power-law stage's outcome (powerlaw.py): "exact: ...", why it was no monomial, or
    # "" when it was not tried (given groups, approximate mode); listed in `stages` only
    # when exact
    power_law: str = ""
    # dimensional analysis (dimensions.py): "y = P * f(g): exact", why it found nothing, or ""
    # when no units were given
    units: str = ""
    # with an oracle: what the symmetry and separability tests found (separable.py)
    structure: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "function": self.function.render() if self.function else None,
            "candidates": self.stats.candidates,
            "pairs": self.stats.pairs,
            "evaluated": self.stats.evaluated,
            "bank": self.stats.bank,
            "level": self.stats.level,
            "max_cost": self.stats.max_cost,
            "stopped": self.stats.stopped,
            "refine": self.stats.refine,
            "restarts": self.stats.restarts,
            "seconds": round(self.stats.seconds, 4),
            "relevance": self.relevance,
            "proposer": self.proposer,
            "stages": [r.to_dict() for r in self.stages],
            "power_law": self.power_law,
            "units": self.units,
            "structure": self.structure,
            "message": self.message,
        }


@dataclass
class StageRun:
    """One search of a staged discovery: its stage, cost limit, time budget and outcome."""

    stage: Stage
    max_cost: int
    budget: float  # seconds allowed
    stats: SearchStats
    found: bool

    @property
    def outcome(self) -> str:
        if self.found:
            return "exact"
        return self.stats.stopped or f"no exact fit up to cost {self.max_cost}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage.label,
            "groups": list(self.stage.groups),
            "modulus": self.stage.modulus,
            "max_cost": self.max_cost,
            "level": self.stats.level,
            "candidates": self.stats.candidates,
            "pairs": self.stats.pairs,
            "seconds": round(self.stats.seconds, 4),
            "outcome": self.outcome,
        }


@dataclass
class Found:
    """The best exact fit of a round so far, with the search that found it."""

    key: tuple[Any, ...]  # smaller is better: complexity, constants, registered calls
    fn: Function
    rel: dict[str, bool]
    entries: list[Entry]  # its search's fits for the results table, this one included
    run: StageRun


@dataclass
class Entry:
    """A fit for the results table: its function, loss, and description length (bits)."""

    complexity: int
    loss: float
    fn: Function
    hyp: Any
    dl: float
    sympy: str
    var: float  # variance of the training outputs (the scale of the scores)


def provenance(
    data: Examples,
    sample: Sample,
    cfg: DiscoveryConfig,
    proposer: str,
    runs: list[StageRun],
    stage: Stage,
) -> Provenance:
    stats = total_stats(runs, cfg, sum(r.stats.seconds for r in runs))
    rows = sample.full or sample.rows
    return Provenance(
        source="discovered",
        data_hash=data.data_hash(),
        seed=cfg.seed,
        search={
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
            "proposer": proposer,
            "cost_limit": cfg.cost_limit,
            "stage": stage.label,  # the groups (and modulus) it was found with
            "stages_run": len(runs),
            "candidates": stats.candidates,
            "pairs": stats.pairs,
            "restarts": stats.restarts,
            "seconds": round(stats.seconds, 4),
            "columns": list(data.names),  # the row layout it was found on (see on_columns)
            "rows": {
                "train": rows.n_train,
                "held_out": rows.n_hold,
                "probes": int(rows.X.shape[0] - rows.n_train - rows.n_hold),
                # those every candidate was evaluated on (all, at most search_rows rows)
                "searched_train": sample.rows.n_train,
                "searched_held_out": sample.rows.n_hold,
            },
        },
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        package_version=__version__,
    )


def total_stats(runs: list[StageRun], cfg: DiscoveryConfig, seconds: float) -> SearchStats:
    """The statistics of a staged search: counts added up over its runs, the level reached by
    the last one, and why it stopped (said of the whole search, not of one stage)."""
    last = runs[-1]
    out = SearchStats(
        candidates=sum(r.stats.candidates for r in runs),
        pairs=sum(r.stats.pairs for r in runs),
        bank=max(r.stats.bank for r in runs),
        level=last.stats.level,
        max_cost=cfg.cost_limit,
        seconds=seconds,
        stopped=last.stats.stopped,
        refine=last.stats.refine,
        restarts=sum(r.stats.restarts for r in runs),
    )
    if last.found:
        return out
    if last.stats.stopped.startswith("time") or seconds >= cfg.max_seconds:
        out.stopped = f"time budget of {cfg.max_seconds:g} s ran out at cost {last.stats.level}"
        if len(runs) > 1:
            out.stopped += f" of {last.stage.label}, after {len(runs)} stage searches"
    elif len(runs) > 1:
        full = {r.stage for r in runs if r.max_cost == cfg.cost_limit}
        banked = [r for r in runs if r.stats.stopped.startswith("bank")]
        bank = sorted({r.stage.label for r in banked})
        out.stopped = f"no exact fit up to cost {cfg.cost_limit} in {len(full)} stages" + (
            f" (in {'; '.join(bank)}: {banked[-1].stats.stopped})" if bank else ""
        )
    return out


# ---------------------------------------------------------------------------------------------
# rows and operations


def pareto_front(entries: list[Entry], exact: bool) -> list[TableRow]:
    """Pareto front of the fits (lower loss at every step up in complexity), with PySR's
    score; the exact fit (the last row) is chosen, else the row with the shortest
    description length."""
    ordered = sorted(entries, key=lambda e: (e.complexity, e.loss))
    front: list[Entry] = []
    for e in ordered:
        if not front or e.loss < front[-1].loss * (1 - 1e-9):
            if front and e.complexity == front[-1].complexity:
                front[-1] = e
            else:
                front.append(e)
    floor = 1e-30 * (front[0].var if front else 1.0)
    rows: list[TableRow] = []
    for i, e in enumerate(front):
        if i == 0:
            score = 0.0
        else:
            pc, pl = front[i - 1].complexity, front[i - 1].loss
            score = -(math.log(max(e.loss, floor)) - math.log(max(pl, floor))) / max(
                e.complexity - pc, 1
            )
        row = TableRow(e.complexity, e.loss, score, e.fn.render(), e.sympy)
        row._hyp = e.hyp  # type: ignore[attr-defined]
        rows.append(row)
    if rows:
        if exact:
            rows[-1].chosen = True
        else:
            rows[int(np.argmin([e.dl for e in front]))].chosen = True
    return rows
