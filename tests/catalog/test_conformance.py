"""The catalog conformance suite: the same assertions for every backend (see conftest.BACKENDS)."""

from __future__ import annotations

import copy
import dataclasses
import random

import pytest

from circuitlab.catalog import (
    Catalog,
    CatalogError,
    Circuit,
    Edge,
    Feature,
    Interface,
    Interpretation,
    Metadata,
    Model,
    Node,
    NotFoundError,
    Output,
    Port,
    Program,
    RecordError,
    synthetic,
    tokenize,
)
from circuitlab.catalog.backend import Plan
from circuitlab.catalog.synthetic import World


def fill(cat: Catalog, world: World) -> None:
    for record in world.records():
        cat.put(record)


def _counts(cat: Catalog) -> dict[str, int]:
    return cat.stats().counts


# -- round trip and idempotence ---------------------------------------------------------------


def test_round_trip_is_lossless_for_every_kind(cat: Catalog, world: World) -> None:
    fill(cat, world)
    for record in world.records():
        assert cat.get(record.id) == record
    feature = world.circuits[0].nodes[5].feature
    assert cat.get(feature.id) == feature
    assert cat.kind_of(world.task.id) == "task"


def test_put_is_idempotent_and_order_free(cat: Catalog, world: World) -> None:
    fill(cat, world)
    before = _counts(cat)
    ids = [cat.put(r) for r in world.records()]
    assert ids == [r.id for r in world.records()]
    assert _counts(cat) == before
    shuffled = copy.deepcopy(world.circuits[4])
    random.Random(1).shuffle(shuffled.nodes)
    shuffled.edges.reverse()
    shuffled.metadata = Metadata(created="2030-01-01T00:00:00+00:00")
    assert cat.put(shuffled) == world.circuits[4].id
    assert _counts(cat) == before
    assert cat.get(shuffled.id) == shuffled  # replaced: latest order and metadata


def test_putting_a_circuit_again_and_again_stores_it_once(
    cat: Catalog, world: World, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from circuitlab.catalog import export_catalog

    fill(cat, world)
    before = _counts(cat)
    circuit = synthetic.circuit(world.model, seed=7, n_features=200, n_edges=1000)
    cat.put(circuit)
    once = _counts(cat)
    for _ in range(4):  # ArcadeDB left half the old HAS_FEATURE links from the 3rd put on
        # (with circuits this big: 100 features did not show it)
        cat.put(circuit)
        assert _counts(cat) == once
    assert once["HAS_FEATURE"] == before["HAS_FEATURE"] + 200
    assert cat.get(circuit.id) == circuit
    assert len(cat.graph(circuit.id).edges) == 1000
    export_catalog(cat, tmp_path / "all.jsonl")


def test_counts_match_what_was_put(cat: Catalog, world: World) -> None:
    fill(cat, world)
    counts = _counts(cat)
    features = {n.feature.id for c in world.circuits for n in c.nodes}
    assert counts["circuit"] == len(world.circuits)
    assert counts["feature"] == len(features)
    assert counts["HAS_FEATURE"] == sum(len(c.nodes) for c in world.circuits)
    assert counts["ATTRIBUTES"] == sum(len(c.edges) for c in world.circuits)
    assert counts["IMPLEMENTS"] == counts["implements"] == 2
    assert counts["DERIVED_FROM"] == 1 and counts["COMPOSES"] == 1 and counts["CALLS"] == 2


def test_missing_references_are_refused_and_nothing_is_stored(cat: Catalog, world: World) -> None:
    with pytest.raises(NotFoundError, match="put it first"):
        cat.put(world.model)  # its task is not in the catalog
    cat.put(world.task)
    with pytest.raises(NotFoundError):
        cat.put(world.circuits[1])  # its model is missing
    with pytest.raises(NotFoundError, match="calls"):
        cat.put(Program(name="p", calls=["f" * 64]))
    counts = _counts(cat)
    assert counts["task"] == 1
    assert sum(counts.values()) == 1


# -- atomicity --------------------------------------------------------------------------------


class _Exploding(list):
    """A list that fails half-way through being read, like a crash in the middle of a put."""

    def _boom(self) -> None:
        raise RuntimeError("simulated crash in the middle of a put")

    def __iter__(self):  # type: ignore[override]
        for i, item in enumerate(list.__iter__(self)):
            if i == len(self) // 2:
                self._boom()
            yield item

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice) and (index.start or 0) >= len(self) // 2:
            self._boom()
        return list.__getitem__(self, index)


def _explode_edges(cat: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Catalog._plan
    if hasattr(cat.backend, "edge_batch"):  # send some edges before the crash
        monkeypatch.setattr(cat.backend, "edge_batch", 50)

    def plan(self: Catalog, record):  # type: ignore[no-untyped-def]
        p: Plan = original(self, record)
        p.edges = _Exploding(p.edges)
        return p

    monkeypatch.setattr(Catalog, "_plan", plan)


def test_failure_in_the_middle_of_a_put_leaves_nothing(
    cat: Catalog, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(cat, world)
    before = _counts(cat)
    fresh = synthetic.circuit(world.model, seed=99, n_features=40, n_edges=300)
    new_features = [n.feature.id for n in fresh.nodes if not cat.exists(n.feature.id)]
    assert len(new_features) > 20
    _explode_edges(cat, monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cat.put(fresh)
    assert _counts(cat) == before
    assert not cat.exists(fresh.id)
    assert not any(cat.exists(f) for f in new_features)
    # Replacing an existing circuit that fails keeps the old one intact.
    changed = copy.deepcopy(world.circuits[3])
    changed.edges.reverse()
    with pytest.raises(RuntimeError):
        cat.put(changed)
    monkeypatch.undo()
    assert cat.get(world.circuits[3].id) == world.circuits[3]
    assert _counts(cat) == before


# -- search -----------------------------------------------------------------------------------


def _reference(circuits: list[Circuit], **q) -> list[str]:  # type: ignore[no-untyped-def]
    """The search semantics, written plainly over the records."""

    def metrics(c: Circuit) -> dict[str, float]:
        m = {
            k: getattr(c.metrics, k)
            for k in ("sufficiency", "necessity", "accuracy", "replacement_score", "completeness")
        }
        m = {k: v for k, v in m.items() if v is not None}
        m.update(c.metrics.extra)
        if c.tags.generality is not None:
            m["generality"] = c.tags.generality
        return m

    def keep(c: Circuit) -> bool:
        tags = set(c.tags.priors) | set(c.tags.labels)
        domains = {p.domain for p in c.interface.inputs} | {c.interface.output.domain}
        text = [c.interpretation.label, c.interpretation.description, c.task, *tags]
        text += [c.tags.complexity or "", c.interface.signature or ""]
        words = set(tokenize(" ".join(text)))
        m = metrics(c)
        return (
            q.get("task") in (None, c.task)
            and q.get("model") in (None, c.model)
            and set(q.get("tags", ())) <= tags
            and q.get("domain") in (None, *domains)
            and q.get("complexity") in (None, c.tags.complexity)
            and set(tokenize(q.get("text") or "")) <= words
            and (q.get("feature") is None or q["feature"] in {n.feature.id for n in c.nodes})
            and all(k in m and m[k] >= v for k, v in q.get("minimum", {}).items())
            and all(k in m and m[k] <= v for k, v in q.get("maximum", {}).items())
        )

    hits = [c for c in circuits if keep(c)]
    order = q.get("order_by", "id")
    if order == "id":
        hits.sort(key=lambda c: c.id)
    elif order == "task":
        hits.sort(key=lambda c: (c.task, c.id))
    else:
        hits.sort(key=lambda c: (order not in metrics(c), -metrics(c).get(order, 0.0), c.id))
    offset = q.get("offset", 0)
    limit = q.get("limit", 100)
    return [c.id for c in hits][offset : None if limit is None else offset + limit]


def _queries(world: World) -> list[dict]:
    c0 = world.circuits[0]
    return [
        {},
        {"task": "add_mod_113"},
        {"task": "nope"},
        {"model": world.child.id},
        {"tags": ["Core_Number"]},
        {"tags": ["Core_Number", c0.tags.labels[0]]},
        {"domain": "Z_113"},
        {"domain": "Z_7"},
        {"complexity": "high"},
        {"text": "FOURIER"},
        {"text": "synthetic circuit"},
        {"text": c0.interpretation.label},
        {"feature": c0.nodes[7].feature.id},
        {"minimum": {"sufficiency": 0.5}},
        {"minimum": {"sufficiency": 0.2, "necessity": 0.3}, "maximum": {"accuracy": 0.9}},
        {"minimum": {"restricted_loss": 1.0}},
        {"minimum": {"unknown_metric": 0.0}},
        {"order_by": "necessity"},  # some circuits lack it: they come last
        {"order_by": "generality", "limit": 5, "offset": 2},
        {"order_by": "task", "tags": ["Logic"]},
        {
            "task": "add_mod_113",
            "minimum": {"generality": 0.3},
            "text": "synthetic",
            "order_by": "sufficiency",
        },
    ]


def test_search_matches_the_reference_semantics(cat: Catalog, world: World) -> None:
    fill(cat, world)
    assert any(c.metrics.necessity is None for c in world.circuits)
    for q in _queries(world):
        got = [s.id for s in cat.search(**q)]
        assert got == _reference(world.circuits, **q), q
    assert len(cat.search(limit=None)) == len(world.circuits)


def test_metric_names_are_those_some_circuit_has(cat: Catalog, world: World) -> None:
    assert cat.metric_names() == []
    fill(cat, world)
    expect = {name for s in cat.search(limit=None) for name in s.metrics}
    assert cat.metric_names() == sorted(expect)
    assert {"sufficiency", "generality", "restricted_loss"} <= expect


def test_search_summaries_carry_the_circuit(cat: Catalog, world: World) -> None:
    fill(cat, world)
    c = world.circuits[5]
    (hit,) = [s for s in cat.search(limit=None) if s.id == c.id]
    assert (hit.task, hit.model, hit.label) == (c.task, c.model, c.interpretation.label)
    assert (hit.n_nodes, hit.n_edges) == (len(c.nodes), len(c.edges))
    assert hit.metrics["sufficiency"] == c.metrics.sufficiency
    assert hit.inputs == ["Z_113", "Z_113"] and hit.output == "Z_113"


def test_bad_search_arguments_are_refused(cat: Catalog) -> None:
    with pytest.raises(CatalogError, match="no words"):
        cat.search(text="  -- ")
    with pytest.raises(CatalogError, match="order_by"):
        cat.search(order_by="sufficiency desc; drop")
    with pytest.raises(CatalogError, match="minimum"):
        cat.search(minimum={"a b": 1.0})


# -- graph queries ----------------------------------------------------------------------------


def test_graph_is_pruned_by_weight(cat: Catalog, world: World) -> None:
    fill(cat, world)
    c = world.circuits[2]
    g = cat.graph(c.id, min_abs_weight=0.8)
    order = {(e.source, e.target): i for i, e in enumerate(c.edges)}
    expect = sorted(
        (e for e in c.edges if abs(e.weight) >= 0.8),
        key=lambda e: (-abs(e.weight), order[(e.source, e.target)]),
    )
    assert g.edges == expect and g.edges
    touched = {e.source for e in expect} | {e.target for e in expect}
    assert [n.feature.id for n in g.nodes] == [
        n.feature.id for n in c.nodes if n.feature.id in touched
    ]
    assert (
        cat.graph(c.id, top_k=3).edges
        == sorted(c.edges, key=lambda e: (-abs(e.weight), order[(e.source, e.target)]))[:3]
    )


def test_circuits_using_a_feature_and_feature_lookup(cat: Catalog, world: World) -> None:
    fill(cat, world)
    feature = world.circuits[1].nodes[10].feature
    users = sorted(c.id for c in world.circuits if feature.id in {n.feature.id for n in c.nodes})
    assert len(users) >= 2  # shared
    assert [s.id for s in cat.circuits_using(feature.id)] == users
    found = cat.features(model=feature.model, layer=feature.layer, index=feature.index)
    assert feature.id in found
    for fid in found:
        f = cat.get(fid)
        assert (f.model, f.layer, f.index) == (feature.model, feature.layer, feature.index)
    assert cat.features(model=feature.model, node_type="logit") != []


def test_lineage_walks_up_and_down(cat: Catalog, world: World) -> None:
    fill(cat, world)
    c1 = world.circuits[1]
    add, add3 = world.functions
    lin = cat.lineage(c1.id)
    assert lin.of_kind("task") == [world.task.id]
    assert lin.of_kind("model") == [world.model.id]
    assert lin.of_kind("function") == sorted([add.id, add3.id])  # add3 composes add
    assert lin.of_kind("program") == [world.program.id]
    assert lin.of_kind("circuit") == [c1.id]
    rels = {(k.src, k.rel, k.dst) for k in lin.links}
    assert (c1.id, "IMPLEMENTS", add.id) in rels
    assert (world.program.id, "CALLS", c1.id) in rels
    implements = next(k for k in lin.links if k.rel == "IMPLEMENTS")
    assert implements.props["agreement"] == pytest.approx(0.998)

    down = cat.lineage(world.task.id)
    assert down.of_kind("model") == sorted([world.model.id, world.child.id])
    assert down.of_kind("circuit") == sorted(c.id for c in world.circuits)
    assert set(down.of_kind("function")) == {add.id, add3.id}
    assert down.nodes[world.task.id] == ("task", "add_mod_113")

    child = cat.lineage(world.child.id)
    assert child.of_kind("model") == sorted([world.model.id, world.child.id])
    assert (world.child.id, "DERIVED_FROM", world.model.id) in {
        (k.src, k.rel, k.dst) for k in child.links
    }
    assert child.of_kind("circuit") == sorted(
        c.id for c in world.circuits if c.model == world.child.id
    )


def test_interface_compatibility(cat: Catalog, world: World) -> None:
    fill(cat, world)
    c0, c1 = world.circuits[0], world.circuits[1]
    parity = Circuit(
        task=c0.task,
        model=c0.model,
        nodes=c0.nodes[:3],
        edges=[],
        interface=Interface(inputs=[Port("x", "Z_113", 0)], output=Output("Z_2", 2)),
        interpretation=Interpretation(label="parity"),
    )
    cat.put(parity)
    down = cat.compatible(c1.id, "downstream")
    targets = sorted({d.downstream for d in down})
    assert targets == sorted([c.id for c in world.circuits] + [parity.id])
    assert {(d.downstream, d.port) for d in down if d.downstream == c0.id} == {
        (c0.id, "a"),
        (c0.id, "b"),
    }
    assert cat.compatible(parity.id, "downstream") == []  # nothing reads Z_2
    up = cat.compatible(parity.id, "upstream")
    assert sorted(u.upstream for u in up) == sorted(c.id for c in world.circuits)
    assert all(u.port == "x" and u.domain == "Z_113" for u in up)
    assert [(d.upstream, d.downstream, d.port) for d in down] == sorted(
        (d.upstream, d.downstream, d.port) for d in down
    )


# -- size, Unicode, NaN -----------------------------------------------------------------------


def test_a_circuit_of_20000_edges(cat: Catalog, world: World) -> None:
    cat.put(world.task)
    cat.put(world.model)
    big = synthetic.circuit(world.model, seed=7, n_features=400, n_edges=20_000)
    cid = cat.put(big)
    assert cat.get(cid) == big
    assert _counts(cat)["ATTRIBUTES"] == 20_000
    assert len(cat.graph(cid, top_k=50).edges) == 50


UNICODE = "Fourier κύκλος 加法 مجموع e\u0301 \u200d 🎯 \x00 naïve Straße"


def test_unicode_round_trips_and_is_searchable(cat: Catalog, world: World) -> None:
    cat.put(world.task)
    cat.put(world.model)
    c = copy.deepcopy(world.circuits[1])
    c.interpretation = Interpretation(
        label=UNICODE, description="Ångström 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", method="ünïcode"
    )
    c.nodes[4].feature.label = "特徴 🎯"
    c.metadata = Metadata(extra={"ключ": ["значение", "\x00"]})
    cat.put(c)
    assert cat.get(c.id) == c
    assert cat.get(c.nodes[4].feature.id).label == "特徴 🎯"
    for text in ("κύκλος", "加法", "STRASSE", "ÅNGSTRÖM", "مجموع"):
        assert [s.id for s in cat.search(text=text)] == [c.id], text
    assert cat.search(text="kuklos") == []


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda c: setattr(c.edges[3], "weight", float("nan")), "circuit.edges[3].weight"),
        (lambda c: setattr(c.metrics, "sufficiency", float("inf")), "circuit.metrics.sufficiency"),
        (lambda c: setattr(c.nodes[2], "activation", float("-nan")), "circuit.nodes[2].activation"),
        (lambda c: c.metadata.extra.update(x=[1.0, float("nan")]), "circuit.metadata.extra.x[1]"),
        (
            lambda c: setattr(c.interpretation, "label", "bad \ud800"),
            "circuit.interpretation.label",
        ),
    ],
)
def test_nan_and_broken_unicode_are_refused_naming_the_field(
    cat: Catalog,
    world: World,
    mutate,
    field,  # type: ignore[no-untyped-def]
) -> None:
    cat.put(world.task)
    cat.put(world.model)
    before = _counts(cat)
    c = copy.deepcopy(world.circuits[1])
    mutate(c)
    with pytest.raises(RecordError) as err:
        cat.put(c)
    assert str(err.value).startswith(field + ":")
    assert _counts(cat) == before


# -- deletion ---------------------------------------------------------------------------------


def test_delete_keeps_shared_features_and_drops_orphans(cat: Catalog, world: World) -> None:
    fill(cat, world)
    victim = world.circuits[4]
    others = {n.feature.id for c in world.circuits if c is not victim for n in c.nodes}
    mine = [n.feature.id for n in victim.nodes]
    assert any(f in others for f in mine) and any(f not in others for f in mine)
    assert cat.delete(victim.id) == [victim.id]
    assert not cat.exists(victim.id)
    for fid in mine:
        assert cat.exists(fid) == (fid in others)
    for c in world.circuits:
        if c is not victim:
            assert cat.get(c.id) == c
    assert _counts(cat)["ATTRIBUTES"] == sum(len(c.edges) for c in world.circuits) - len(
        victim.edges
    )


def test_delete_refuses_referenced_records_unless_cascading(cat: Catalog, world: World) -> None:
    fill(cat, world)
    c1 = world.circuits[1]
    add, add3 = world.functions
    with pytest.raises(CatalogError, match="referenced by program"):
        cat.delete(c1.id)
    with pytest.raises(CatalogError, match="referenced by"):
        cat.delete(world.model.id)
    with pytest.raises(CatalogError, match="referenced by"):
        cat.delete(add.id)
    with pytest.raises(CatalogError, match="referenced by"):
        cat.delete(c1.nodes[5].feature.id)
    # An IMPLEMENTS relationship goes with its circuit; the function stays.
    deleted = cat.delete(world.circuits[2].id)
    assert deleted == [world.circuits[2].id]
    assert not cat.exists(world.implements[1].id)
    assert cat.exists(add.id)
    # Cascading from the child model removes its circuits only.
    gone = cat.delete(world.child.id, cascade=True)
    assert sorted(gone) == sorted(
        [world.child.id]
        + [c.id for c in world.circuits if c.model == world.child.id and c is not world.circuits[2]]
    )
    assert cat.exists(world.model.id)
    # Cascading from the task removes everything downstream, functions aside.
    cat.delete(world.task.id, cascade=True)
    counts = _counts(cat)
    assert counts["function"] == 2
    assert sum(v for k, v in counts.items() if k not in ("function", "COMPOSES")) == 0


def test_delete_an_implements_relationship(cat: Catalog, world: World) -> None:
    fill(cat, world)
    imp = world.implements[0]
    assert cat.delete(imp.id) == [imp.id]
    assert _counts(cat)["IMPLEMENTS"] == 1
    assert cat.get(world.circuits[1].id) == world.circuits[1]
    # Re-measuring replaces the agreement instead of adding a relationship.
    again = dataclasses.replace(world.implements[1], agreement=0.9)
    assert cat.put(again) == world.implements[1].id
    assert _counts(cat)["IMPLEMENTS"] == 1
    assert cat.get(again.id).agreement == 0.9


def test_ids_prefixes_and_missing_records(cat: Catalog, world: World) -> None:
    fill(cat, world)
    c = world.circuits[0]
    assert cat.get(c.id[:10]) == c
    with pytest.raises(NotFoundError):
        cat.get("0" * 64)
    with pytest.raises(NotFoundError, match="at least 4"):
        cat.get("ab")
    assert cat.ids("circuit") == sorted(x.id for x in world.circuits)
    assert cat.ids("task") == ["add_mod_113"]
    assert cat.ids("circuit", limit=3, offset=2) == sorted(x.id for x in world.circuits)[2:5]
    with pytest.raises(CatalogError, match="kind"):
        cat.ids("circuits")
    assert [r.id for r in cat.records("function")] == sorted(f.id for f in world.functions)


def test_putting_a_feature_alone_is_refused(cat: Catalog, world: World) -> None:
    with pytest.raises(RecordError, match="circuits"):
        cat.put(world.circuits[0].nodes[0].feature)


def test_feature_annotations_are_shared(cat: Catalog, world: World) -> None:
    fill(cat, world)
    feature = world.circuits[1].nodes[10].feature
    users = [c for c in world.circuits if feature.id in {n.feature.id for n in c.nodes}]
    relabelled = copy.deepcopy(users[0])
    for node in relabelled.nodes:
        if node.feature.id == feature.id:
            node.feature.label = "cos(w_14 (a+b))"
    cat.put(relabelled)
    assert cat.get(feature.id).label == "cos(w_14 (a+b))"
    other = cat.get(users[1].id)
    assert [n.feature.label for n in other.nodes if n.feature.id == feature.id] == [
        "cos(w_14 (a+b))"
    ]


def test_a_second_world_gets_identical_ids(cat: Catalog) -> None:
    a, b = synthetic.world(3), synthetic.world(3)
    assert [r.id for r in a.records()] == [r.id for r in b.records()]
    model = Model(task="add_mod_113", weights_sha256="0" * 64)
    feature = Feature(model=model.id, node_type="feature", layer=0, index=1)
    c = Circuit(task="add_mod_113", model=model.id, nodes=[Node(feature)], edges=[])
    cat.put(a.task)
    cat.put(model)
    assert cat.put(c) == c.id
    with pytest.raises(RecordError, match="not one of the circuit's nodes"):
        cat.put(dataclasses.replace(c, edges=[Edge(feature.id, "1" * 64, 1.0)]))


# -- a writer killed in the middle of a put ---------------------------------------------------

_KILLED_WRITER = """
import sys, time
from circuitlab.catalog import Catalog, open_catalog, synthetic

class Stall(list):
    # Hands edges over until half-way, then says so and hangs: the parent kills us there.
    def __iter__(self):
        for i, item in enumerate(list.__iter__(self)):
            if i == len(self) // 2:
                print("MIDWAY", flush=True)
                time.sleep(600)
            yield item
    def __getitem__(self, index):
        if isinstance(index, slice) and (index.start or 0) >= len(self) // 2:
            print("MIDWAY", flush=True)
            time.sleep(600)
        return list.__getitem__(self, index)

original = Catalog._plan
def plan(self, record):
    p = original(self, record)
    p.edges = Stall(p.edges)
    return p
Catalog._plan = plan

cat = open_catalog(sys.argv[1])
if hasattr(cat.backend, "edge_batch"):  # several UNWIND batches, so some edges are sent
    cat.backend.edge_batch = 1000
world = synthetic.world()
cat.put(synthetic.circuit(world.model, seed=123, n_features=300, n_edges=8000))
"""


def test_a_killed_writer_leaves_the_catalog_as_it_was(cat: Catalog, world: World) -> None:
    import os
    import signal
    import subprocess
    import sys

    fill(cat, world)
    before = _counts(cat)
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, cat.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "MIDWAY", child.stderr.read()  # type: ignore[union-attr]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert _counts(cat) == before
    for record in world.records():
        assert cat.get(record.id) == record
    extra = synthetic.circuit(world.model, seed=124, n_features=30, n_edges=100)
    cat.put(extra)  # the catalog still takes writes (no stale lock)
    assert cat.get(extra.id) == extra


# -- moving a whole catalog between backends --------------------------------------------------


def test_export_import_round_trip_through_this_backend(
    cat: Catalog, world: World, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from circuitlab.catalog import export_catalog, import_catalog, open_catalog

    source = open_catalog(tmp_path / "source.db")
    fill(source, world)
    first = tmp_path / "first.jsonl"
    export_catalog(source, first)
    source.close()
    counts = import_catalog(cat, first)
    assert counts["circuit"] == len(world.circuits)
    second = tmp_path / "second.jsonl"
    export_catalog(cat, second)
    assert (
        second.read_bytes() == first.read_bytes()
    )  # SQLite -> this backend gives the same catalog
    back = open_catalog(tmp_path / "back.db")
    import_catalog(back, second)
    third = tmp_path / "third.jsonl"
    export_catalog(back, third)
    back.close()
    assert third.read_bytes() == first.read_bytes()  # ... and back again


# -- batched puts -----------------------------------------------------------------------------


def test_put_many_equals_put_and_batches_are_atomic(cat: Catalog, world: World) -> None:
    ids = cat.put_many(world.records(), max_edges=150)  # several batches
    assert ids == [r.id for r in world.records()]
    for record in world.records():
        assert cat.get(record.id) == record
    before = _counts(cat)
    fresh = [
        synthetic.circuit(world.model, seed=200 + i, n_features=25, n_edges=50) for i in range(3)
    ]
    bad = Model(task="no_such_task", weights_sha256="1" * 64)  # fails inside the batch
    with pytest.raises(NotFoundError):
        cat.put_many([fresh[0], fresh[1], bad, fresh[2]])
    assert _counts(cat) == before
    assert not any(cat.exists(c.id) for c in fresh)
    assert cat.put_many([*fresh, fresh[0]]) == [c.id for c in fresh] + [fresh[0].id]
    assert _counts(cat)["circuit"] == before["circuit"] + 3


# -- concurrent writers -----------------------------------------------------------------------

_WRITER = """
import sys
from circuitlab.catalog import open_catalog, synthetic
world = synthetic.world()
pool = synthetic.feature_pool(world.model.id, d_latent=40)
cat = open_catalog(sys.argv[1])
offset = int(sys.argv[2])
for seed in range(offset, offset + 4):  # circuits of both writers share new features
    cat.put(synthetic.circuit(world.model, seed=seed, n_features=30, n_edges=60, pool=pool))
print("done", flush=True)
"""


def test_two_writers_at_once_lose_nothing(cat: Catalog, world: World) -> None:
    import os
    import subprocess
    import sys

    fill(cat, world)
    before = _counts(cat)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, cat.url, str(offset)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for offset in (500, 600)
    ]
    for w in writers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0 and out.strip() == "done", err[-2000:]
    pool = synthetic.feature_pool(world.model.id, d_latent=40)
    circuits = [
        synthetic.circuit(world.model, seed=s, n_features=30, n_edges=60, pool=pool)
        for s in (*range(500, 504), *range(600, 604))
    ]
    for c in circuits:
        assert cat.get(c.id) == c
    counts = _counts(cat)
    assert counts["circuit"] == before["circuit"] + 8
    features = {n.feature.id for c in [*world.circuits, *circuits] for n in c.nodes}
    assert counts["feature"] == len(features)
