"""Deterministic synthetic catalog records, for tests and benchmarks (not for science).

Shapes follow the real thing: a 2-layer model on add_mod_113, transcoder features drawn from a
shared pool (so circuits share features), token and logit nodes, random attribution weights, an
interface with two Z_p inputs and a Z_p output. Everything comes from `random.Random(seed)`.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from circuitlab.catalog.records import (
    PRIORS,
    Boundary,
    Circuit,
    Edge,
    Example,
    Feature,
    Function,
    Implements,
    Interface,
    Interpretation,
    Metadata,
    Metrics,
    Model,
    Node,
    Output,
    Port,
    Program,
    Slot,
    Tags,
    Task,
)

WORDS = (
    "fourier",
    "addition",
    "carry",
    "rotation",
    "parity",
    "lookup",
    "trig",
    "product",
    "mirror",
)


def task(p: int = 113) -> Task:
    return Task(
        spec=f"add_mod_{p}",
        family="modular",
        description=f"(a + b) mod {p}",
        d_vocab=p + 1,
        d_vocab_out=p,
        n_ctx=3,
        n_examples=p * p,
        params={"p": p, "op": "add"},
        metadata=Metadata(created="2026-01-01T00:00:00+00:00"),
    )


def model(task_spec: str = "add_mod_113", seed: int = 0, parent: Model | None = None) -> Model:
    weights = hashlib.sha256(f"{task_spec}/{seed}".encode()).hexdigest()
    return Model(
        task=task_spec,
        weights_sha256=weights,
        architecture={"n_layers": 2, "d_model": 128, "n_heads": 4, "d_mlp": 512, "act_fn": "relu"},
        n_params=226_000,
        attention="einsum",
        pruning=0.5 if parent is not None else None,
        parent=parent.id if parent is not None else None,
        derivation="prune" if parent is not None else None,
        training={"seed": seed, "lr": 1e-3, "weight_decay": 1.0, "steps": 5000},
        metrics={"train_acc": 1.0, "val_acc": 0.999},
        metadata=Metadata(
            created="2026-01-01T00:00:00+00:00", source_run=f"runs/{task_spec}/{seed}"
        ),
    )


def feature_pool(
    model_id: str, n_layers: int = 2, d_latent: int = 512, n_ctx: int = 3
) -> list[Feature]:
    """Transcoder features of every layer at every position (n_layers * d_latent * n_ctx)."""
    return [
        Feature(
            model=model_id,
            node_type="feature",
            layer=layer,
            index=i,
            position=pos,
            transcoder="tc0",
            label=f"L{layer}F{i}",
        )
        for layer in range(n_layers)
        for i in range(d_latent)
        for pos in range(n_ctx)
    ]


def circuit(
    model_rec: Model,
    *,
    seed: int = 0,
    n_features: int = 200,
    n_edges: int = 1000,
    pool: list[Feature] | None = None,
    p: int = 113,
) -> Circuit:
    """A circuit of `n_features` features (2 tokens, 1 logit, the rest from `pool`) and
    `n_edges` distinct weighted edges."""
    rng = random.Random(seed)
    mid = model_rec.id
    pool = pool if pool is not None else feature_pool(mid)
    special = [
        Feature(model=mid, node_type="token", layer=0, index=rng.randrange(p), position=0),
        Feature(model=mid, node_type="token", layer=0, index=rng.randrange(p), position=1),
        Feature(model=mid, node_type="logit", layer=3, index=rng.randrange(p), position=2),
    ]
    chosen = special + rng.sample(pool, n_features - len(special))
    nodes = [
        Node(f, activation=round(rng.uniform(0, 5), 6), influence=round(rng.random(), 6))
        for f in chosen
    ]
    ids = [f.id for f in chosen]
    if n_edges > n_features * (n_features - 1):
        raise ValueError(f"{n_edges} edges do not fit between {n_features} features")
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < n_edges:
        a, b = rng.randrange(n_features), rng.randrange(n_features)
        if a != b:
            pairs.add((a, b))
    edges = [Edge(ids[a], ids[b], round(rng.gauss(0, 1), 6)) for a, b in sorted(pairs)]
    rng.shuffle(edges)
    words = rng.sample(WORDS, 2)
    return Circuit(
        task=model_rec.task,
        model=mid,
        nodes=nodes,
        edges=edges,
        interface=Interface(
            inputs=[Port("a", f"Z_{p}", 0), Port("b", f"Z_{p}", 1)],
            output=Output(f"Z_{p}", 2),
            reads=[
                Boundary("blocks.0.hook_resid_pre", 128, {"mean_norm": round(rng.uniform(1, 9), 4)})
            ],
            writes=[
                Boundary(
                    "blocks.1.hook_resid_post", 128, {"mean_norm": round(rng.uniform(1, 9), 4)}
                )
            ],
            signature=f"add_mod_{p}(a: Z_{p}, b: Z_{p}) -> Z_{p}" if rng.random() < 0.5 else None,
        ),
        interpretation=Interpretation(
            label=f"{words[0]} {words[1]} #{seed}",
            description=f"Synthetic circuit {seed} using {words[0]} features.",
            method="synthetic",
        ),
        examples=[Example(tokens=[1, 2, p], text=f"1 + 2 = {3 % p}", value=round(rng.random(), 6))],
        metrics=Metrics(
            sufficiency=round(rng.random(), 4),
            necessity=round(rng.random(), 4) if seed % 4 else None,  # some lack a metric
            ablation="mean",
            accuracy=round(rng.random(), 4),
            n_examples=p * p,
            extra={"restricted_loss": round(rng.uniform(0, 2), 4)},
        ),
        tags=Tags(
            priors=sorted(rng.sample(PRIORS, rng.randrange(1, 3))),
            complexity=rng.choice(["low", "medium", "high"]),
            generality=round(rng.random(), 4),
            labels=[words[0]],
        ),
        metadata=Metadata(created="2026-01-01T00:00:00+00:00", source_run="runs/synthetic"),
    )


@dataclass
class World:
    """A small catalog: one task, a model and a pruned child, circuits, functions, a program."""

    task: Task
    model: Model
    child: Model
    circuits: list[Circuit]
    functions: list[Function]
    implements: list[Implements]
    program: Program

    def records(self) -> list:
        """Every record, in an order that puts referenced records first."""
        return [
            self.task,
            self.model,
            self.child,
            *self.circuits,
            *self.functions,
            *self.implements,
            self.program,
        ]


def world(n_circuits: int = 12) -> World:
    """A related set of records: circuits of both models share features; circuit 1 implements
    add_mod and a program calls both; circuit 2 implements it less well."""
    the_task = task()
    base = model(seed=0)
    child = model(seed=0, parent=base)
    # Small feature pools, so circuits share features.
    pools = {m.id: feature_pool(m.id, d_latent=16) for m in (base, child)}
    circuits = []
    for i in range(n_circuits):
        source = base if i % 3 else child
        circuits.append(circuit(source, seed=i, n_features=20, n_edges=60, pool=pools[source.id]))
    add = Function(
        name="add_mod",
        signature="(a: Z_n, b: Z_n) -> Z_n",
        expression="(a + b) % n",
        input_domains=["Z_113", "Z_113"],
        output_domain="Z_113",
    )
    add3 = Function(name="add3", expression="add(add(a, b), c)", composes=[Slot("inner", add.id)])
    implements = [
        Implements(circuit=circuits[1].id, function=add.id, agreement=0.998, n_examples=12769),
        Implements(circuit=circuits[2].id, function=add.id, agreement=0.75, n_examples=12769),
    ]
    program = Program(name="sum3", body={"steps": ["c1", "add"]}, calls=[add.id, circuits[1].id])
    return World(the_task, base, child, circuits, [add, add3], implements, program)
