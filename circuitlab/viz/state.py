"""The graph view's state and its URL query string, so a link reproduces what was on screen.

    /circuit/<id>?mode=input&input=37,75&node=0.8&edge=0.01&pinned=F0.3,F0.17
        &groups=trig:F0.3|F0.17&clicked=F0.3&sub=1

A query written by hand or by an older version never raises: a value that does not parse falls
back to its default (the page then shows the default), an unknown node id is ignored.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

if TYPE_CHECKING:
    from circuitlab.viz.graphview import ViewGraph

MODES = ("circuit", "input")
DEFAULT_NODE_FRACTION = 0.8  # circuit-tracer's default node threshold
_NAME = re.compile(r"[^\w .-]+")


@dataclass
class ViewState:
    mode: str = "circuit"  # the task-level circuit or the attribution graph of one input
    values: tuple[int, ...] | None = None  # input port values (None: the circuit's example)
    node_fraction: float = DEFAULT_NODE_FRACTION
    min_weight: float = 0.0
    pinned: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # supernode name -> member ids
    clicked: str = ""
    subgraph: bool = False  # show only the pinned nodes

    def to_query(self) -> str:
        """ "?..." with only the fields that differ from the defaults ("" when none do)."""
        q: dict[str, str] = {}
        if self.mode != "circuit":
            q["mode"] = self.mode
        if self.values is not None:
            q["input"] = ",".join(map(str, self.values))
        if self.node_fraction != DEFAULT_NODE_FRACTION:
            q["node"] = repr(self.node_fraction)
        if self.min_weight:
            q["edge"] = repr(self.min_weight)  # exact: the counts must not move on reload
        if self.pinned:
            q["pinned"] = ",".join(self.pinned)
        if self.groups:
            q["groups"] = ";".join(f"{n}:{'|'.join(ids)}" for n, ids in self.groups.items())
        if self.clicked:
            q["clicked"] = self.clicked
        if self.subgraph:
            q["sub"] = "1"
        return "?" + urlencode(q, safe=",:;|@.") if q else ""

    @classmethod
    def from_query(cls, search: str | None) -> ViewState:
        q = {k: v[-1] for k, v in parse_qs((search or "").lstrip("?")).items()}
        state = cls()
        if q.get("mode") in MODES:
            state.mode = q["mode"]
        try:
            state.values = tuple(int(v) for v in q["input"].split(",")) if "input" in q else None
        except ValueError:
            state.values = None
        state.node_fraction = _number(q.get("node"), DEFAULT_NODE_FRACTION, 0.0, 1.0)
        state.min_weight = _number(q.get("edge"), 0.0, 0.0, math.inf)
        state.pinned = _ids(q.get("pinned", ""))
        for part in q.get("groups", "").split(";"):
            name, _, members = part.partition(":")
            name = clean_name(name)
            if name and _ids(members, "|"):
                state.groups[name] = _ids(members, "|")
        state.clicked = q.get("clicked", "")[:100]
        state.subgraph = q.get("sub") == "1"
        return state


def to_store(state: ViewState, rev: int = 0) -> dict[str, Any]:
    """The state as the page's dcc.Store holds it (JSON)."""
    data = asdict(state)
    data["values"] = None if state.values is None else list(state.values)
    data["rev"] = rev  # bumped when a label is saved: the figure and panel redraw
    return data


def from_store(data: dict[str, Any]) -> ViewState:
    fields = {k: v for k, v in data.items() if k != "rev"}
    if fields.get("values") is not None:
        fields["values"] = tuple(fields["values"])
    return ViewState(**fields)


def slider_range(graph: ViewGraph) -> tuple[float, float]:
    """log10 span of the edge slider: the smallest to the largest |weight| of the graph."""
    lo, hi = graph.weight_range()
    lo_log, hi_log = math.floor(math.log10(lo) * 10) / 10, math.ceil(math.log10(hi) * 10) / 10
    return lo_log, max(hi_log, lo_log + 0.1)


def min_weight_of(value: float | None, lo: float) -> float:
    """The slider's leftmost position keeps every edge (0); elsewhere |weight| >= 10**value."""
    return 0.0 if value is None or value <= lo + 1e-9 else 10.0**value


def clean_name(name: str) -> str:
    """A supernode name that survives the URL: letters, digits, space, '.', '-', '_'."""
    return _NAME.sub("", name).strip()[:40]


def _number(text: str | None, default: float, lo: float, hi: float) -> float:
    try:
        value = float(text) if text is not None else default
    except ValueError:
        return default
    return value if math.isfinite(value) and lo <= value <= hi else default


def _ids(text: str, sep: str = ",") -> list[str]:
    out: list[str] = []
    for part in text.split(sep):
        part = part.strip()[:100]
        if part and part not in out:
            out.append(part)
    return out
