"""Records to storage plans and back: what each record stores, shared by every backend.

`plan_record` turns a validated record (its `to_dict()` form) into a `Plan`: the rows and
relationships a backend writes. `rebuild` turns what a backend read back into the record.
`tokenize` makes the words of full-text search, in Python, so every backend matches the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from circuitlab.catalog import records as rec
from circuitlab.catalog.backend import Link, Loaded, Plan
from circuitlab.catalog.errors import NotFoundError

KindsOf = Callable[[list[str]], dict[str, str]]
_TOKEN_RE = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Words of `text` for full-text search: NFC, case-folded, runs of letters and digits.

    Done here in Python for every backend, so SQLite's FTS5 and Neo4j see the same tokens.
    """
    return _TOKEN_RE.findall(unicodedata.normalize("NFC", text).casefold())


def _plan_task(p: Plan, kinds_of: KindsOf, pending: dict[str, str]) -> None:
    p.name = p.data["spec"]


def _plan_model(p: Plan, kinds_of: KindsOf, pending: dict[str, str]) -> None:
    d = p.data
    p.name = f"{d['task']} model {p.id[:8]}"
    p.task = d["task"]
    p.requires.append((d["task"], ("task",)))
    p.links.append(Link("TRAINED_ON", p.id, "model", d["task"], "task"))
    if d["parent"] is not None:
        p.requires.append((d["parent"], ("model",)))
        p.links.append(
            Link("DERIVED_FROM", p.id, "model", d["parent"], "model", {"how": d["derivation"]})
        )


def _plan_circuit(p: Plan, kinds_of: KindsOf, pending: dict[str, str]) -> None:
    d = p.data
    nodes = d.pop("nodes")
    edges = d.pop("edges")
    p.name = d["interpretation"]["label"]
    p.task, p.model = d["task"], d["model"]
    p.requires += [(d["task"], ("task",)), (d["model"], ("model",))]
    p.links.append(Link("EXTRACTED_FROM", p.id, "circuit", d["model"], "model"))
    for n in nodes:
        f = n["feature"]
        fid = rec.feature_id(f)
        p.features.append({"id": fid, **f})
        p.nodes.append((fid, n["activation"], n["influence"]))
    p.edges = [(e["source"], e["target"], e["weight"]) for e in edges]
    tags = d["tags"]
    p.tags = sorted(set(tags["priors"]) | set(tags["labels"]))
    iface = d["interface"]
    if iface is not None:
        p.domains = [("in", port["name"], port["domain"]) for port in iface["inputs"]]
        p.domains.append(("out", "", iface["output"]["domain"]))
    p.metrics = rec.metric_values(d["metrics"], tags)
    interp = d["interpretation"]
    text = [interp["label"], interp["description"], d["task"], *p.tags]
    if tags["complexity"]:
        text.append(tags["complexity"])
    if iface is not None and iface["signature"]:
        text.append(iface["signature"])
    p.tokens = sorted(set(tokenize(" ".join(text))))
    p.summary = {
        "task": d["task"],
        "model": d["model"],
        "label": interp["label"],
        "n_nodes": len(nodes),
        "n_edges": len(edges),
        "metrics": p.metrics,
        "tags": p.tags,
        "inputs": [port["domain"] for port in iface["inputs"]] if iface else [],
        "output": iface["output"]["domain"] if iface else None,
        "signature": iface["signature"] if iface else None,
    }


def _plan_function(p: Plan, kinds_of: KindsOf, pending: dict[str, str]) -> None:
    p.name = p.data["name"]
    for i, slot in enumerate(p.data["composes"]):
        p.requires.append((slot["function"], ("function",)))
        p.links.append(
            Link(
                "COMPOSES",
                p.id,
                "function",
                slot["function"],
                "function",
                {"slot": slot["slot"]},
                i,
            )
        )


def _plan_program(p: Plan, kinds_of: KindsOf, pending: dict[str, str]) -> None:
    p.name = p.data["name"]
    calls = p.data["calls"]
    kinds = {**kinds_of(calls), **{c: pending[c] for c in calls if c in pending}}
    for i, target in enumerate(calls):
        kind = kinds.get(target)
        if kind not in ("function", "circuit"):
            what = "nothing" if kind is None else f"a {kind}"
            raise NotFoundError(
                f"program.calls[{i}]: {target!r} is {what}, not a function or circuit"
            )
        p.requires.append((target, ("function", "circuit")))
        p.links.append(Link("CALLS", p.id, "program", target, kind, {}, i))


def _plan_implements(p: Plan, kinds_of: KindsOf, pending: dict[str, str]) -> None:
    d = p.data
    p.name = f"{d['circuit'][:8]} implements {d['function'][:8]}"
    p.requires += [(d["circuit"], ("circuit",)), (d["function"], ("function",))]
    props = {"id": p.id, "agreement": d["agreement"], "n_examples": d["n_examples"]}
    p.links.append(Link("IMPLEMENTS", d["circuit"], "circuit", d["function"], "function", props))


_PLANNERS = {
    "task": _plan_task,
    "model": _plan_model,
    "circuit": _plan_circuit,
    "function": _plan_function,
    "program": _plan_program,
    "implements": _plan_implements,
}


def rebuild(loaded: Loaded) -> rec.Record:
    """A record from stored JSON. The circuit graph (validated when it was put) is rebuilt
    directly, which keeps loading a 1,000-edge circuit in the low milliseconds."""
    if loaded.kind == "feature":
        return rec.record_from_dict({"kind": "feature", **loaded.data})
    if loaded.kind != "circuit":
        return rec.record_from_dict({"kind": loaded.kind, **loaded.data})
    circuit = rec.record_from_dict({"kind": "circuit", **loaded.data, "nodes": [], "edges": []})
    Feature, Node, Edge = rec.Feature, rec.Node, rec.Edge
    circuit.nodes = [Node(Feature(**f), a, i) for f, a, i in loaded.nodes]
    circuit.edges = [Edge(s, t, w) for s, t, w in loaded.edges]
    return circuit


def plan_record(data: dict[str, Any], kinds_of: KindsOf, pending: dict[str, str]) -> Plan:
    """The plan of one record from its `to_dict()` form. `kinds_of` looks up stored ids (a
    program's calls); `pending` are ids planned earlier in the same batch."""
    data = dict(data)
    del data["schema"]
    rid = data.pop("id")
    kind = data.pop("kind")
    plan = Plan(kind=kind, id=rid, name="", data=data)
    _PLANNERS[kind](plan, kinds_of, pending)
    return plan
