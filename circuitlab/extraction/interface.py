"""Interface definitions: how to call a model's circuit as a function, inferred from the model
and its task.

1. Ports: the input positions that carry arguments (not the constant `=` or query tokens), with
   their value domain ("Z_113", "S_5", "grid[3x3]:Z_3") and encoding (value = token id).
2. Output: its domain, answer positions and decoding (argmax over the output vocabulary).
3. Boundary: statistics of the latent representation where the circuit reads (each MLP's input,
   `blocks.{l}.hook_mlp_in`) and writes (`blocks.{l}.hook_mlp_out`) at the answer positions over
   all inputs: norms, per-dimension mean and std, effective rank. Two circuits whose boundaries
   differ wildly in scale or rank cannot be spliced without an adapter (boundary.py).
4. Signature: the model's argmax outputs on every input compared with each known operation of
   the task's family (the modular OPERATIONS table, the S_n products, the grid transforms, a
   synthesis task's own expression). The best match is the signature when it agrees on at least
   `min_agreement` of the inputs (default: all); it is named by the registry primitive that
   computes it (e.g. ADDMOD) when one does, checked by evaluating that primitive on the same
   inputs.

`InterfaceDefinition.to_record()` gives the catalog's `Interface` record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from circuitlab.catalog import records
from circuitlab.extraction.boundary import BoundaryStats, measure_boundaries
from circuitlab.tasks.base import Task, TaskError
from circuitlab.tasks.grid import GRID_OPS, GridTask
from circuitlab.tasks.modular import OPERATIONS, ModularTask, apply_op
from circuitlab.tasks.permutation import PERMUTATION_OPS, PermutationTask
from circuitlab.tasks.synthesis import SynthesisTask

DEFAULT_MIN_AGREEMENT = 1.0  # "matches on all inputs"; lower it to accept near-misses
MAX_BOUNDARY_INPUTS = 20_000  # inputs used for boundary statistics (all of every built-in task)

# Task operation -> registry primitive computing it (verified on the inputs before it is used).
MODULAR_PRIMITIVES = {"add": "ADDMOD", "sub": "SUBMOD", "mul": "MULMOD", "div": "DIVMOD"}
GRID_PRIMITIVES = {op: op.upper() for op in GRID_OPS}  # ROT90, ..., RECOLOUR (param k)


class InterfaceError(ValueError):
    """The model and task do not fit together (vocabulary, context, answer positions)."""


@dataclass(frozen=True)
class InputPort:
    """One argument: read at `positions` (one token, or a row-major block for a grid)."""

    name: str
    positions: tuple[int, ...]
    domain: str
    encoding: str


@dataclass(frozen=True)
class OutputSpec:
    """The result: `domain`, read at `positions` by `decoding` over `vocabulary` output tokens."""

    domain: str
    positions: tuple[int, ...]
    decoding: str
    vocabulary: int


@dataclass(frozen=True)
class SignatureMatch:
    """A known operation compared with the model on every input.

    function: registry primitive name (e.g. "ADDMOD") when one computes the operation, else the
        task family's name for it (e.g. "x2y_mod", "s5_compose").
    call: how to call it on the ports, e.g. "ADDMOD(a, b, p=113)".
    signature: typed form, e.g. "ADDMOD(a: Z_113, b: Z_113, p=113) -> Z_113".
    expression: what it computes, e.g. "(a+b) mod 113".
    agreement: share of the n_examples inputs (where the operation is defined) on which the
        model's argmax output equals the operation's value at every answer position.
    primitive: `function` is a registry primitive, verified on these inputs.
    """

    function: str
    call: str
    signature: str
    expression: str
    agreement: float
    n_examples: int
    primitive: bool


@dataclass
class InterfaceDefinition:
    """How to call the circuit a model computes for a task (see the module docstring)."""

    task: str
    inputs: list[InputPort]
    output: OutputSpec
    reads: list[BoundaryStats] = field(default_factory=list)
    writes: list[BoundaryStats] = field(default_factory=list)
    signature: SignatureMatch | None = None
    candidates: list[SignatureMatch] = field(default_factory=list)  # best first

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (lists for tuples)."""
        return _jsonable(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InterfaceDefinition:
        def port(d: dict[str, Any]) -> InputPort:
            return InputPort(d["name"], tuple(d["positions"]), d["domain"], d["encoding"])

        def boundary(d: dict[str, Any]) -> BoundaryStats:
            return BoundaryStats(d["site"], int(d["dim"]), dict(d["stats"]))

        out = data["output"]
        sig = data.get("signature")
        return cls(
            task=data["task"],
            inputs=[port(p) for p in data["inputs"]],
            output=OutputSpec(
                out["domain"], tuple(out["positions"]), out["decoding"], int(out["vocabulary"])
            ),
            reads=[boundary(b) for b in data.get("reads", [])],
            writes=[boundary(b) for b in data.get("writes", [])],
            signature=None if sig is None else SignatureMatch(**sig),
            candidates=[SignatureMatch(**c) for c in data.get("candidates", [])],
        )

    def to_record(self) -> records.Interface:
        """The catalog's Interface record, with every position of each port and the output."""
        return records.Interface(
            inputs=[
                records.Port(
                    name=p.name,
                    domain=p.domain,
                    position=p.positions[0],
                    encoding=p.encoding,
                    positions=list(p.positions),
                )
                for p in self.inputs
            ],
            output=records.Output(
                domain=self.output.domain,
                position=self.output.positions[0],
                decoding=self.output.decoding,
                positions=list(self.output.positions),
            ),
            reads=[records.Boundary(b.site, b.dim, dict(b.stats)) for b in self.reads],
            writes=[records.Boundary(b.site, b.dim, dict(b.stats)) for b in self.writes],
            signature=None if self.signature is None else self.signature.signature,
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# --- 1-2. ports and output --------------------------------------------------------------------


def ports_of(task: Task) -> tuple[list[InputPort], OutputSpec]:
    """The input ports and output of a task, by family; unknown families get one port per input
    position whose token varies over the dataset."""
    answers = tuple(task.answer_positions)
    if isinstance(task, ModularTask | SynthesisTask):
        domain = f"Z_{task.p}"
        names = ("a", "b") if isinstance(task, ModularTask) else task.operands
        ports = [InputPort(n, (i,), domain, "token") for i, n in enumerate(names)]
        return ports, OutputSpec(domain, answers, "argmax", task.d_vocab_out)
    if isinstance(task, PermutationTask):
        domain = f"S_{task.n}"
        enc = "token (lexicographic rank of the one-line permutation)"
        ports = [InputPort(n, (i,), domain, enc) for i, n in enumerate(("x", "y"))]
        return ports, OutputSpec(domain, answers, "argmax (same token order)", task.d_vocab_out)
    if isinstance(task, GridTask):
        cells = task.height * task.width
        colours = f"Z_{task.colours}"
        domain_in = f"grid[{task.height}x{task.width}]:{colours}"
        out_h, out_w = task.transform(np.zeros((1, task.height, task.width), np.int64)).shape[1:]
        domain_out = f"grid[{out_h}x{out_w}]:{colours}"
        port = InputPort("grid", tuple(range(cells)), domain_in, "tokens row-major (colour ids)")
        out = OutputSpec(domain_out, answers, "argmax per cell, row-major", task.d_vocab_out)
        return [port], out
    inputs = task.dataset().inputs
    varying = [i for i in range(inputs.shape[1]) if len(np.unique(inputs[:, i])) > 1]
    domain = f"tokens[{task.d_vocab}]"
    ports = [InputPort(f"x{j}", (i,), domain, "token") for j, i in enumerate(varying)]
    return ports, OutputSpec(f"tokens[{task.d_vocab_out}]", answers, "argmax", task.d_vocab_out)


def check_fit(model: Any, task: Task) -> None:
    """Raise InterfaceError unless the model reads and answers the task's sequences."""
    cfg = model.cfg
    problems = []
    if cfg.d_vocab < task.d_vocab:
        problems.append(f"input vocabulary {cfg.d_vocab} < task's {task.d_vocab}")
    if cfg.d_vocab_out != task.d_vocab_out:
        problems.append(f"output vocabulary {cfg.d_vocab_out} != task's {task.d_vocab_out}")
    if cfg.n_ctx < task.n_ctx:
        problems.append(f"context {cfg.n_ctx} < task's sequence length {task.n_ctx}")
    ours, theirs = tuple(cfg.answer_positions), tuple(task.answer_positions)
    if ours != theirs:
        problems.append(f"answer positions {ours} != task's {theirs}")
    if problems:
        raise InterfaceError(f"model does not fit task {task.spec}: " + "; ".join(problems))


# --- 4. symbolic signature --------------------------------------------------------------


@torch.no_grad()
def predict(model: Any, tokens: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    """Argmax output tokens (n, Q) at the answer positions."""
    out = [model(tokens[i : i + batch_size]).argmax(-1) for i in range(0, len(tokens), batch_size)]
    return torch.cat(out).cpu().numpy()


@dataclass(frozen=True)
class _Candidate:
    function: str
    call: str
    signature: str
    expression: str
    expected: np.ndarray  # (n, Q) values
    valid: np.ndarray  # (n,) where the operation is defined
    primitive: bool


def _modular_candidates(task: ModularTask, inputs: np.ndarray) -> list[_Candidate]:
    from circuitlab.registry import get_primitive

    p, dom = task.p, f"Z_{task.p}"
    a, b = inputs[:, 0], inputs[:, 1]
    found = []
    for op, (formula, _, _) in OPERATIONS.items():
        values, valid = apply_op(op, a, b, p)
        name, is_prim = f"{op}_mod", False
        prim = MODULAR_PRIMITIVES.get(op)
        if prim is not None:
            with np.errstate(all="ignore"):
                got = get_primitive(prim).fn(a[valid], b[valid], p=p)
            if np.array_equal(got.astype(np.int64), values[valid]):
                name, is_prim = prim, True
        found.append(
            _Candidate(
                name,
                f"{name}(a, b, p={p})",
                f"{name}(a: {dom}, b: {dom}, p={p}) -> {dom}",
                f"({formula}) mod {p}",
                values[:, None],
                valid,
                is_prim,
            )
        )
    return found


def _permutation_candidates(task: PermutationTask, inputs: np.ndarray) -> list[_Candidate]:
    dom = f"S_{task.n}"
    found = []
    for op, formula in PERMUTATION_OPS.items():
        sibling = PermutationTask(task.n, op).dataset()
        expected, valid = _lookup(sibling.inputs, sibling.targets, inputs)
        name = f"s{task.n}_{op}"
        found.append(
            _Candidate(
                name,
                f"{name}(x, y)",
                f"{name}(x: {dom}, y: {dom}) -> {dom}",
                formula,
                expected,
                valid,
                False,
            )
        )
    return found


def _grid_candidates(task: GridTask, inputs: np.ndarray) -> list[_Candidate]:
    from circuitlab.registry import get_primitive

    h, w, k = task.height, task.width, task.colours
    cells = h * w
    grids = inputs[:, :cells].reshape(-1, h, w)
    dom = f"grid[{h}x{w}]:Z_{k}"
    found = []
    for op, (description, _, _) in GRID_OPS.items():
        try:
            sibling = GridTask(op, h, w, k)
        except TaskError:
            continue  # e.g. a rotation of a non-square grid
        out = sibling.transform(grids)
        if out.shape[1] * out.shape[2] != len(task.answer_positions):
            continue
        prim = GRID_PRIMITIVES[op]
        params = {"k": k} if "k" in get_primitive(prim).params else {}
        got = get_primitive(prim).fn(grids, **params)
        is_prim = np.array_equal(np.asarray(got), out)
        name = prim if is_prim else f"grid_{op}"
        extra = "".join(f", {key}={v}" for key, v in params.items())
        found.append(
            _Candidate(
                name,
                f"{name}(grid{extra})",
                f"{name}(grid: {dom}{extra}) -> grid[{out.shape[1]}x{out.shape[2]}]:Z_{k}",
                description,
                out.reshape(len(grids), -1),
                np.ones(len(grids), dtype=bool),
                is_prim,
            )
        )
    return found


def _synthesis_candidates(task: SynthesisTask, inputs: np.ndarray) -> list[_Candidate]:
    data = task.dataset()
    expected, valid = _lookup(data.inputs, data.targets, inputs)
    dom = f"Z_{task.p}"
    args = ", ".join(task.operands)
    typed = ", ".join(f"{o}: {dom}" for o in task.operands)
    return [
        _Candidate(
            task.spec,
            f"{task.spec}({args})",
            f"{task.spec}({typed}) -> {dom}",
            f"({task.expr}) mod {task.p}",
            expected,
            valid,
            False,
        )
    ]


def _lookup(
    keys: np.ndarray, values: np.ndarray, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """values of the rows of `keys` equal to each row of `query`: (n, Q) and found (n,)."""
    if keys.shape == query.shape and np.array_equal(keys, query):  # the usual case: same dataset
        return values.astype(np.int64), np.ones(len(query), dtype=bool)
    table = {row.tobytes(): i for i, row in enumerate(np.ascontiguousarray(keys))}
    index = np.array(
        [table.get(row.tobytes(), -1) for row in np.ascontiguousarray(query)], dtype=np.int64
    )
    found = index >= 0
    out = np.zeros((len(query), values.shape[1]), dtype=np.int64)
    out[found] = values[index[found]]
    return out, found


def candidate_operations(task: Task, inputs: np.ndarray) -> list[_Candidate]:
    """The known operations of the task's family, evaluated on `inputs`."""
    inputs = np.asarray(inputs, dtype=np.int64)
    if isinstance(task, ModularTask):
        return _modular_candidates(task, inputs)
    if isinstance(task, SynthesisTask):
        return _synthesis_candidates(task, inputs)
    if isinstance(task, PermutationTask):
        return _permutation_candidates(task, inputs)
    if isinstance(task, GridTask):
        return _grid_candidates(task, inputs)
    return []


def match_signatures(task: Task, inputs: np.ndarray, outputs: np.ndarray) -> list[SignatureMatch]:
    """Agreement of model outputs (n, Q) with each known operation, best first (ties keep the
    family's order, so `add` wins over operations that coincide with it on these inputs)."""
    matches = []
    for cand in candidate_operations(task, inputs):
        n = int(cand.valid.sum())
        if n == 0:
            continue
        same = (outputs[cand.valid] == cand.expected[cand.valid]).all(axis=1)
        matches.append(
            SignatureMatch(
                function=cand.function,
                call=cand.call,
                signature=cand.signature,
                expression=cand.expression,
                agreement=float(same.mean()),
                n_examples=n,
                primitive=cand.primitive,
            )
        )
    return sorted(matches, key=lambda m: -m.agreement)


# --- the whole inference ----------------------------------------------------------------


@torch.no_grad()
def infer_interface(
    model: Any,
    task: Task,
    *,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_boundary_inputs: int = MAX_BOUNDARY_INPUTS,
    seed: int = 0,
    batch_size: int = 4096,
) -> InterfaceDefinition:
    """Ports, output, boundary statistics and signature of `model` on all of `task`'s inputs.

    The signature is the best-matching known operation when it agrees with the model's argmax
    output on at least `min_agreement` of the inputs where it is defined (default 1.0: every
    input; a grokked model is exact). Every candidate's agreement is recorded either way.
    Boundary statistics use at most `max_boundary_inputs` inputs (a seeded sample beyond that).
    The model runs `batch_size` inputs at a time.
    """
    if not 0.0 <= min_agreement <= 1.0:
        raise InterfaceError(f"min_agreement must be in [0, 1], got {min_agreement}")
    check_fit(model, task)
    inputs, outputs = ports_of(task)
    data = task.dataset()
    tokens = torch.from_numpy(data.inputs).long()
    predicted = predict(model, tokens, batch_size)
    candidates = match_signatures(task, data.inputs, predicted)
    best = candidates[0] if candidates and candidates[0].agreement >= min_agreement else None
    sample = tokens
    if len(tokens) > max_boundary_inputs:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(tokens), max_boundary_inputs, replace=False))
        sample = tokens[torch.from_numpy(pick)]
    reads, writes = measure_boundaries(model, sample, batch_size)
    return InterfaceDefinition(
        task=task.spec,
        inputs=inputs,
        output=outputs,
        reads=reads,
        writes=writes,
        signature=best,
        candidates=candidates,
    )
