"""Catalog records: the typed, JSON-able data the catalog stores (see DESIGN.md, "Catalog graph").

Records are plain dataclasses of JSON data (str, int, float, bool, lists, dicts, nested records).
They are validated when they enter the catalog (`Catalog.put`, `to_dict`, `from_dict`): a record
that breaks the schema raises `RecordError` whose message starts with the dotted field path, e.g.
``circuit.edges[3].weight: must be a finite number, got nan``.

Ids. A Task's id is its spec (`add_mod_113`): a task is defined by its spec. Every other record's
id is the sha256 (64 hex digits) of its canonical JSON (sorted keys, no spaces) without its
`metadata`, so the same content always gets the same id and putting it twice stores it once;
metadata (dates, versions, source run) describes where a record came from, not what it is. A
Circuit's id does not depend on the order of its nodes and edges. A Feature's id hashes only its
identity (model, transcoder, node type, layer, index, position): the same latent seen by two
circuits is one Feature node, and its label and statistics are annotations that a later put
updates. An Implements relationship's id hashes its two ends, so re-measuring the agreement of a
circuit with a function replaces the old value.

Graph relationships are carried by the records: Model.task (TRAINED_ON), Model.parent
(DERIVED_FROM {how}), Circuit.model (EXTRACTED_FROM), Circuit.nodes (HAS_FEATURE), Circuit.edges
(ATTRIBUTES {weight}), Function.composes (COMPOSES {slot}), Program.calls (CALLS), and the
Implements record ((Circuit)-[:IMPLEMENTS {agreement}]->(Function)). Referenced records must be in
the catalog before the record that references them is put.

NaN and infinities are refused in every numeric field (JSON has no NaN and the backends would
store it differently); use null (None) for a value that was not measured.

Text is bounded when it enters the catalog (`Catalog.put`, import): labels, names, paths and
signatures of circuits at most 1,000 characters (`LABEL_LEN`), descriptions, function
expressions and strings inside free-form JSON at most 10,000 (`TEXT_LEN`); ids and task specs
keep their tighter limits. Records stored before these limits still load.
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
import numbers
import operator
from dataclasses import dataclass
from typing import Any, ClassVar

from circuitlab.catalog import _check as check
from circuitlab.catalog._check import LABEL_LEN, TEXT_LEN
from circuitlab.catalog._spec import (
    Fast,
    content_hash,
    dump,
    fast,
    fld,
    listof,
    load,
    nested,
    optional,
    prim,
)
from circuitlab.catalog.errors import RecordError, SchemaVersionError

SCHEMA_VERSION = 1
"""Version of the record JSON format; bumped (with a migration) when a field changes meaning."""

PRIORS = ("Core_Number", "Core_Geometry", "Logic", "Sequence", "Task_Specific")
"""Prior-alignment tags a circuit can carry (Circuit.tags.priors)."""

NODE_TYPES = ("token", "feature", "neuron", "head", "error", "logit")
"""What a graph node is: an input token, a transcoder feature, an MLP neuron, an attention head,
a transcoder error node, or an output logit."""

DERIVATIONS = ("prune", "lora", "finetune")
"""How a Model can be derived from its parent (the `how` of DERIVED_FROM)."""

ABLATIONS = ("mean", "zero", "resample", "none")
"""Ablations that faithfulness metrics can be measured with."""

_STR = prim(check.string)  # at most LABEL_LEN characters
_OPT_STR = prim(check.opt_string)
_TEXT = prim(check.string, max_len=TEXT_LEN)
_ID = prim(check.record_id)
_OPT_ID = optional(_ID)
_REAL = prim(check.real)
_OPT_REAL = prim(check.opt_real)
_UNIT = prim(check.opt_real, lo=0.0, hi=1.0)
_INT = prim(check.integer)
_OPT_NAT = prim(check.opt_integer, lo=0)
_JSON = prim(check.json_object)
_REALS = prim(check.real_map)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _version() -> str:
    from circuitlab import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# Records (the nodes of the catalog graph) and their parts


class _Record:
    """Shared behaviour of the records: validated JSON form and content id."""

    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """Validated JSON form, with `kind`, `schema` and `id` added."""
        data = dump(self, self.kind)
        return {"kind": self.kind, "schema": SCHEMA_VERSION, "id": self._id(data), **data}

    @property
    def id(self) -> str:
        return self._id(dump(self, self.kind))

    def _id(self, data: dict[str, Any]) -> str:
        content = {k: v for k, v in data.items() if k != "metadata"}
        return content_hash({"kind": self.kind, **content})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Load a record from its `to_dict` form; unknown fields are refused."""
        return record_from_dict(data, expect=cls.kind)


@dataclass
class Metadata:
    """Provenance of a record; excluded from its content id.

    circuitlab_version: version of circuitlab that wrote the record.
    created: ISO 8601 UTC time the record was made.
    git_revision: git commit of the code that made it, when known.
    source_run: run directory (or other path/URL) the record was derived from.
    extra: any further JSON provenance (resolved config, host, command line).
    """

    circuitlab_version: str = fld(_STR, factory=_version)
    created: str = fld(_STR, factory=_now)
    git_revision: str | None = fld(_OPT_STR, default=None)
    source_run: str | None = fld(_OPT_STR, default=None)
    extra: dict[str, Any] = fld(_JSON, factory=dict)


@dataclass
class Feature(_Record):
    """A node of an attribution graph: a latent of one model, shared by the circuits using it.

    model: id of the Model whose activations the node lives in.
    node_type: one of NODE_TYPES (token, feature, neuron, head, error, logit).
    layer: layer index (tokens 0; logits n_layers + 1, as in circuit-tracer's graph JSON).
    index: feature / neuron / head index within the layer, or the token id for token and logit.
    position: token position the node is at, or None when position-independent.
    transcoder: id or name of the transcoder the feature belongs to ("" for non-features).
    label: short human label, e.g. "cos(w_14 (a+b))" (annotation: not part of the id).
    description: longer interpretation (annotation).
    stats: JSON annotations: top activating examples, logit effects, activation histogram.
    """

    model: str = fld(_ID)
    node_type: str = fld(prim(check.choice, allowed=NODE_TYPES))
    layer: int = fld(_INT)
    index: int = fld(_INT)
    position: int | None = fld(prim(check.opt_integer, lo=0), default=None)
    transcoder: str = fld(_STR, default="")
    label: str = fld(_STR, default="")
    description: str = fld(_TEXT, default="")
    stats: dict[str, Any] = fld(_JSON, factory=dict)

    kind: ClassVar[str] = "feature"
    IDENTITY: ClassVar[tuple[str, ...]] = (
        "model",
        "node_type",
        "layer",
        "index",
        "position",
        "transcoder",
    )

    def _id(self, data: dict[str, Any]) -> str:
        return feature_id(data)


def feature_id(data: dict[str, Any]) -> str:
    """Id of a dumped Feature: hash of its identity fields only (memoised: circuits of one
    model share most of their features)."""
    return _feature_id(_identity(data))


_identity = operator.itemgetter(*Feature.IDENTITY)


@functools.lru_cache(maxsize=1 << 16)
def _feature_id(identity: tuple[Any, ...]) -> str:
    return content_hash({"kind": "feature", **dict(zip(Feature.IDENTITY, identity, strict=True))})


@dataclass
class Node:
    """A feature as used by one circuit (the HAS_FEATURE relationship and its properties).

    feature: the Feature.
    activation: its activation on the circuit's reference input(s), if recorded.
    influence: its influence on the output (circuit-tracer's pruning score), if recorded.
    """

    feature: Feature = fld(nested(Feature))
    activation: float | None = fld(_OPT_REAL, default=None)
    influence: float | None = fld(_OPT_REAL, default=None)


@dataclass
class Edge:
    """A weighted attribution between two of the circuit's features (ATTRIBUTES {weight}).

    source: Feature id of the upstream node (must be one of the circuit's nodes).
    target: Feature id of the downstream node (must be one of the circuit's nodes).
    weight: direct effect of source on target (activation x decoder, propagated linearly).
    """

    source: str = fld(_ID)
    target: str = fld(_ID)
    weight: float = fld(_REAL)


def _edges_fast(value: Any) -> list[dict[str, Any]]:
    """Fast path for a circuit's edge list (often thousands): plain Edge objects with string
    ends and finite float weights; anything else goes to the field-by-field validator."""
    if not isinstance(value, list):
        raise Fast
    out = []
    for e in value:
        if type(e) is not Edge:
            raise Fast
        s, t, w = e.source, e.target, e.weight
        if type(s) is not str or type(t) is not str:  # Circuit._check: both are node ids
            raise Fast
        if type(w) is not float:
            if isinstance(w, bool) or not isinstance(w, numbers.Real):
                raise Fast
            w = float(w)
        if not math.isfinite(w):
            raise Fast
        out.append({"source": s, "target": t, "weight": w})
    return out


def _text_ok(value: Any, max_len: int = LABEL_LEN) -> bool:
    if type(value) is not str or check.too_long(value, max_len):
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _real_ok(value: Any) -> bool:
    return type(value) is float and math.isfinite(value)


_NODE_TYPE_SET = frozenset(NODE_TYPES)


def _nodes_fast(value: Any) -> list[dict[str, Any]]:
    """Fast path for a circuit's node list: Node/Feature objects of plain, valid values."""
    if not isinstance(value, list):
        raise Fast
    out = []
    hex64 = check.HEX64_RE.match
    for n in value:
        if type(n) is not Node or type(n.feature) is not Feature:
            raise Fast
        f = n.feature
        a, i = n.activation, n.influence
        if not ((a is None or _real_ok(a)) and (i is None or _real_ok(i))):
            raise Fast
        if not (type(f.model) is str and hex64(f.model) and f.node_type in _NODE_TYPE_SET):
            raise Fast
        if not (type(f.layer) is int and type(f.index) is int):
            raise Fast
        if not (f.position is None or (type(f.position) is int and f.position >= 0)):
            raise Fast
        if not (_text_ok(f.transcoder) and _text_ok(f.label) and _text_ok(f.description, TEXT_LEN)):
            raise Fast
        if type(f.stats) is not dict:
            raise Fast
        stats = check.json_object(f.stats, "stats") if f.stats else {}
        feature = {
            "model": f.model,
            "node_type": f.node_type,
            "layer": f.layer,
            "index": f.index,
            "position": f.position,
            "transcoder": f.transcoder,
            "label": f.label,
            "description": f.description,
            "stats": stats,
        }
        out.append({"feature": feature, "activation": a, "influence": i})
    return out


@dataclass
class Port:
    """One input of a circuit's interface.

    name: argument name, e.g. "a".
    domain: value domain, e.g. "Z_113", "S_5", "grid[3x3]:Z_10"; circuits connect on equal domains.
    position: token position the input is read at (the first one for a multi-token value).
    encoding: how a value becomes input, e.g. "token" (value = token id) or "token+offset:10".
    positions: every token position of the value, in order (a grid's cells row-major); empty
        means just `position`.
    """

    name: str = fld(prim(check.name))
    domain: str = fld(prim(check.string, empty=False, max_len=200))
    position: int = fld(prim(check.integer, lo=0))
    encoding: str = fld(_STR, default="token")
    positions: list[int] = fld(listof(prim(check.integer, lo=0)), factory=list)

    def all_positions(self) -> list[int]:
        return list(self.positions) or [self.position]


@dataclass
class Output:
    """The output of a circuit's interface.

    domain: value domain of the result, e.g. "Z_113".
    position: token position the answer is read at (the first one for a multi-token value).
    decoding: how logits become a value, e.g. "argmax" (value = output token id).
    positions: every answer position, in order (a grid's cells row-major); empty means just
        `position`.
    """

    domain: str = fld(prim(check.string, empty=False, max_len=200))
    position: int = fld(prim(check.integer, lo=0))
    decoding: str = fld(_STR, default="argmax")
    positions: list[int] = fld(listof(prim(check.integer, lo=0)), factory=list)

    def all_positions(self) -> list[int]:
        return list(self.positions) or [self.position]


@dataclass
class Boundary:
    """Statistics of the latent representation where a circuit reads or writes.

    site: hook point name, e.g. "blocks.0.hook_resid_mid".
    dim: dimension of the representation at that site.
    stats: named statistics (mean_norm, std, effective_rank, ...), finite numbers.
    """

    site: str = fld(prim(check.string, empty=False))
    dim: int = fld(prim(check.integer, lo=1))
    stats: dict[str, float] = fld(_REALS, factory=dict)


@dataclass
class Interface:
    """How to call a circuit as a function.

    inputs: the input ports, in argument order (names unique).
    output: the output.
    reads: boundary statistics where the circuit reads the residual stream.
    writes: boundary statistics where it writes.
    signature: the symbolic signature it implements when verified, e.g.
        "add_mod_113(a: Z_113, b: Z_113) -> Z_113", else None.
    """

    inputs: list[Port] = fld(listof(nested(Port)))
    output: Output = fld(nested(Output))
    reads: list[Boundary] = fld(listof(nested(Boundary)), factory=list)
    writes: list[Boundary] = fld(listof(nested(Boundary)), factory=list)
    signature: str | None = fld(_OPT_STR, default=None)

    def _check(self, data: dict[str, Any], path: str) -> None:
        check.unique([p["name"] for p in data["inputs"]], f"{path}.inputs")


@dataclass
class Interpretation:
    """What a circuit does, in words.

    label: short name, e.g. "Fourier addition, k = {14, 35, 41}".
    description: the mechanism in a few sentences.
    method: how the interpretation was obtained, e.g. "fourier", "manual", "auto".
    """

    label: str = fld(_STR, default="")
    description: str = fld(_TEXT, default="")
    method: str = fld(_STR, default="")


@dataclass
class Example:
    """An activation example: an input and what the circuit (or one of its features) did on it.

    tokens: input token ids.
    text: the input rendered for people, e.g. "12 + 7 =".
    value: the activation (or output logit) observed.
    feature: Feature id when the example is for one feature, None for the whole circuit.
    """

    tokens: list[int] = fld(listof(_INT))
    text: str = fld(_STR, default="")
    value: float | None = fld(_OPT_REAL, default=None)
    feature: str | None = fld(_OPT_ID, default=None)


@dataclass
class Metrics:
    """Performance of a circuit. Faithfulness follows the usual definitions; `ablation` says
    what replaced the activations outside (sufficiency) or inside (necessity) the circuit.

    sufficiency: task metric with only the circuit active, as a fraction of the full model's.
    necessity: share of the full model's accuracy lost when the circuit is ablated,
        1 - ablated / full (high = necessary; the accuracy left is extra["necessity_accuracy"]).
    ablation: one of ABLATIONS (mean, zero, resample, none).
    accuracy: accuracy of the circuit alone on the task, in [0, 1].
    replacement_score: share of influence reaching the logits from tokens, not error nodes.
    completeness: influence-weighted share of node inputs not from error nodes.
    n_examples: number of inputs the metrics were measured on.
    extra: further named metrics (finite numbers), searchable like the ones above.
    """

    sufficiency: float | None = fld(_OPT_REAL, default=None)
    necessity: float | None = fld(_OPT_REAL, default=None)
    ablation: str = fld(prim(check.choice, allowed=ABLATIONS), default="mean")
    accuracy: float | None = fld(_UNIT, default=None)
    replacement_score: float | None = fld(_OPT_REAL, default=None)
    completeness: float | None = fld(_OPT_REAL, default=None)
    n_examples: int | None = fld(_OPT_NAT, default=None)
    extra: dict[str, float] = fld(_REALS, factory=dict)

    NAMED: ClassVar[tuple[str, ...]] = (
        "sufficiency",
        "necessity",
        "accuracy",
        "replacement_score",
        "completeness",
    )

    def _check(self, data: dict[str, Any], path: str) -> None:
        for key in data["extra"]:
            if key in self.NAMED or key in ("generality", "n_examples"):
                raise RecordError(f"{path}.extra.{key}", "clashes with a named metric")


def metric_values(metrics: dict[str, Any], tags: dict[str, Any]) -> dict[str, float]:
    """The searchable numbers of a dumped circuit: named metrics, extra metrics, generality."""
    out = {k: metrics[k] for k in Metrics.NAMED if metrics[k] is not None}
    out.update(metrics["extra"])
    if tags["generality"] is not None:
        out["generality"] = tags["generality"]
    return out


@dataclass
class Artifact:
    """What makes a circuit runnable: the files it is measured with and their content hashes.

    Paths are relative to the run directory (`metadata.source_run`), so a moved run still loads;
    the hashes say whether the files are the ones the circuit was measured with.

    weights_sha256: sha256 of the run's model.safetensors.
    transcoder: directory of the transcoder (transcoder.safetensors + transcoder.json).
    transcoder_sha256: sha256 of transcoder.safetensors.
    ablation_file: safetensors file of the ablation statistics (per-layer mean activations and
        mean reconstruction errors) the features outside the circuit are replaced with.
    ablation_sha256: sha256 of that file.
    n_features: transcoder features per layer (the circuit's features are its feature nodes).
    function: name of the registry function the circuit implements, when one was verified.
    """

    weights_sha256: str = fld(prim(check.string, empty=False, max_len=64))
    transcoder: str = fld(prim(check.string, empty=False, max_len=1000))
    transcoder_sha256: str = fld(prim(check.string, empty=False, max_len=64))
    ablation_file: str = fld(prim(check.string, empty=False, max_len=1000))
    ablation_sha256: str = fld(prim(check.string, empty=False, max_len=64))
    n_features: int = fld(prim(check.integer, lo=1))
    function: str | None = fld(_OPT_STR, default=None)

    def _check(self, data: dict[str, Any], path: str) -> None:
        for key in ("weights_sha256", "transcoder_sha256", "ablation_sha256"):
            if not check.HEX64_RE.match(data[key]):
                raise RecordError(f"{path}.{key}", "must be 64 lowercase hex digits")


@dataclass
class Tags:
    """Searchable classification of a circuit.

    priors: prior-alignment tags from PRIORS (Core_Number, Core_Geometry, Logic, Sequence,
        Task_Specific).
    complexity: complexity class, e.g. "low", "medium", "high" (free word), or None.
    generality: how widely the circuit applies, in [0, 1] (e.g. share of task variants it
        solves), or None.
    labels: free tags (letters, digits, '_').
    """

    priors: list[str] = fld(listof(prim(check.choice, allowed=PRIORS)), factory=list)
    complexity: str | None = fld(optional(prim(check.name)), default=None)
    generality: float | None = fld(_UNIT, default=None)
    labels: list[str] = fld(listof(prim(check.name)), factory=list)

    def _check(self, data: dict[str, Any], path: str) -> None:
        check.unique(data["priors"], f"{path}.priors")
        check.unique(data["labels"], f"{path}.labels")


@dataclass
class Task(_Record):
    """An algorithmic task. Its id is its spec.

    spec: the task spec, e.g. "add_mod_113" (see `circuitlab tasks`).
    family: task family, e.g. "modular".
    description: one line for people.
    d_vocab: input vocabulary size.
    d_vocab_out: output vocabulary size.
    n_ctx: input sequence length.
    n_examples: number of examples in the full dataset.
    params: family parameters as JSON (modulus, operation, grid shape...).
    metadata: provenance.
    """

    spec: str = fld(prim(check.string, empty=False, max_len=300, spaces=False))
    family: str = fld(_STR, default="")
    description: str = fld(_TEXT, default="")
    d_vocab: int | None = fld(_OPT_NAT, default=None)
    d_vocab_out: int | None = fld(_OPT_NAT, default=None)
    n_ctx: int | None = fld(_OPT_NAT, default=None)
    n_examples: int | None = fld(_OPT_NAT, default=None)
    params: dict[str, Any] = fld(_JSON, factory=dict)
    metadata: Metadata = fld(nested(Metadata), factory=Metadata)

    kind: ClassVar[str] = "task"

    def _id(self, data: dict[str, Any]) -> str:
        return data["spec"]


@dataclass
class Model(_Record):
    """A trained checkpoint.

    task: spec of the Task it was trained on (TRAINED_ON).
    weights_sha256: sha256 of its weights file (model.safetensors): which checkpoint this is.
    architecture: the model config as JSON (n_layers, d_model, n_heads, d_mlp, act_fn, ...).
    n_params: number of parameters (non-zero ones for pruned models are in `metrics`).
    attention: attention backend it was trained with, e.g. "sdpa", "einsum", "flash".
    pruning: fraction of weights pruned, in [0, 1], or None if not pruned.
    lora_rank: LoRA rank when it is a LoRA adaptation, else None.
    parent: id of the Model it was derived from (DERIVED_FROM), or None.
    derivation: how it was derived from `parent`: one of DERIVATIONS; required with a parent.
    training: training details as JSON (recipe, optimizer, seed, steps, grokking step).
    metrics: final metrics, e.g. {"train_acc": 1.0, "val_acc": 0.999, "val_loss": 0.01}.
    metadata: provenance; `source_run` is the run directory.
    """

    task: str = fld(prim(check.string, empty=False, max_len=300, spaces=False))
    weights_sha256: str = fld(prim(check.string, empty=False, max_len=64))
    architecture: dict[str, Any] = fld(_JSON, factory=dict)
    n_params: int | None = fld(_OPT_NAT, default=None)
    attention: str = fld(_STR, default="")
    pruning: float | None = fld(_UNIT, default=None)
    lora_rank: int | None = fld(prim(check.opt_integer, lo=1), default=None)
    parent: str | None = fld(_OPT_ID, default=None)
    derivation: str | None = fld(optional(prim(check.choice, allowed=DERIVATIONS)), default=None)
    training: dict[str, Any] = fld(_JSON, factory=dict)
    metrics: dict[str, float] = fld(_REALS, factory=dict)
    metadata: Metadata = fld(nested(Metadata), factory=Metadata)

    kind: ClassVar[str] = "model"

    def _check(self, data: dict[str, Any], path: str) -> None:
        if not check.HEX64_RE.match(data["weights_sha256"]):
            raise RecordError(f"{path}.weights_sha256", "must be 64 lowercase hex digits")
        if (data["parent"] is None) != (data["derivation"] is None):
            raise RecordError(f"{path}.derivation", "parent and derivation go together")


@dataclass
class Circuit(_Record):
    """A circuit extracted from a model: a weighted subgraph of features with an interface.

    task: spec of the Task the circuit computes (part of it).
    model: id of the Model it was extracted from (EXTRACTED_FROM).
    nodes: its features (HAS_FEATURE), each with activation and influence; features unique.
    edges: weighted attributions between its features (ATTRIBUTES); (source, target) unique.
    interface: how to call it (inputs, output, boundary statistics, signature), or None if not
        yet defined.
    interpretation: label, description and method.
    examples: activation examples.
    metrics: performance (faithfulness with the ablation used, accuracy, replacement score).
    tags: prior alignment, complexity, generality score, free labels.
    artifact: the files that make it runnable (transcoder, ablation statistics) with their
        hashes, or None for a circuit that is only a graph.
    metadata: provenance (package version, dates, source run, extraction config in extra).
    """

    task: str = fld(prim(check.string, empty=False, max_len=300, spaces=False))
    model: str = fld(_ID)
    nodes: list[Node] = fld(fast(listof(nested(Node)), _nodes_fast))
    edges: list[Edge] = fld(fast(listof(nested(Edge)), _edges_fast), factory=list)
    interface: Interface | None = fld(optional(nested(Interface)), default=None)
    interpretation: Interpretation = fld(nested(Interpretation), factory=Interpretation)
    examples: list[Example] = fld(listof(nested(Example)), factory=list)
    metrics: Metrics = fld(nested(Metrics), factory=Metrics)
    tags: Tags = fld(nested(Tags), factory=Tags)
    artifact: Artifact | None = fld(optional(nested(Artifact)), default=None)
    metadata: Metadata = fld(nested(Metadata), factory=Metadata)

    kind: ClassVar[str] = "circuit"

    def _check(self, data: dict[str, Any], path: str) -> None:
        ids: set[str] = set()
        for i, node in enumerate(data["nodes"]):
            feature = node["feature"]
            if feature["model"] != data["model"]:
                raise RecordError(
                    f"{path}.nodes[{i}].feature.model",
                    f"{feature['model']!r} is not the circuit's model {data['model']!r}",
                )
            fid = feature_id(feature)
            if fid in ids:
                raise RecordError(f"{path}.nodes[{i}].feature", f"duplicate feature {fid[:12]}")
            ids.add(fid)
        pairs: set[tuple[str, str]] = set()
        for i, edge in enumerate(data["edges"]):
            for end in ("source", "target"):
                if edge[end] not in ids:
                    raise RecordError(
                        f"{path}.edges[{i}].{end}",
                        f"{edge[end][:12]}... is not one of the circuit's nodes",
                    )
            pair = (edge["source"], edge["target"])
            if pair in pairs:
                raise RecordError(f"{path}.edges[{i}]", "duplicate edge (same source and target)")
            pairs.add(pair)
        for i, example in enumerate(data["examples"]):
            if example["feature"] is not None and example["feature"] not in ids:
                raise RecordError(
                    f"{path}.examples[{i}].feature", "is not one of the circuit's nodes"
                )

    def _id(self, data: dict[str, Any]) -> str:
        content = {k: v for k, v in data.items() if k != "metadata"}
        content["nodes"] = sorted(
            ({**n, "feature": feature_id(n["feature"])} for n in data["nodes"]),
            key=lambda n: n["feature"],
        )
        content["edges"] = sorted(data["edges"], key=lambda e: (e["source"], e["target"]))
        return content_hash({"kind": self.kind, **content})


@dataclass
class Slot:
    """One argument slot of a composite Function (COMPOSES {slot}).

    slot: where the inner function plugs in, e.g. "arg0" or "left".
    function: id of the inner Function.
    """

    slot: str = fld(prim(check.string, empty=False, max_len=200))
    function: str = fld(_ID)


@dataclass
class Function(_Record):
    """An entry of the symbolic registry.

    name: registry name, e.g. "add_mod".
    signature: typed signature, e.g. "(a: Z_n, b: Z_n) -> Z_n".
    expression: symbolic definition, e.g. "(a + b) % n".
    input_domains: domain of each argument, e.g. ["Z_113", "Z_113"].
    output_domain: domain of the result.
    description: one line for people.
    composes: inner functions when this is a composition (COMPOSES {slot}).
    properties: JSON facts (commutative, associative, identity element, arity...).
    metadata: provenance.
    """

    name: str = fld(prim(check.string, empty=False, max_len=300))
    signature: str = fld(_TEXT, default="")
    expression: str = fld(_TEXT, default="")
    input_domains: list[str] = fld(listof(_STR), factory=list)
    output_domain: str = fld(_STR, default="")
    description: str = fld(_TEXT, default="")
    composes: list[Slot] = fld(listof(nested(Slot)), factory=list)
    properties: dict[str, Any] = fld(_JSON, factory=dict)
    metadata: Metadata = fld(nested(Metadata), factory=Metadata)

    kind: ClassVar[str] = "function"

    def _check(self, data: dict[str, Any], path: str) -> None:
        check.unique([s["slot"] for s in data["composes"]], f"{path}.composes")


@dataclass
class Program(_Record):
    """A composition of circuits and functions that solves something.

    name: name of the program.
    body: the program itself as JSON (the compose package's serialised form).
    calls: ids of the Functions and Circuits it calls (CALLS), in order; unique.
    description: one line for people.
    metadata: provenance.
    """

    name: str = fld(prim(check.string, empty=False, max_len=300))
    body: dict[str, Any] = fld(_JSON, factory=dict)
    calls: list[str] = fld(listof(_ID), factory=list)
    description: str = fld(_TEXT, default="")
    metadata: Metadata = fld(nested(Metadata), factory=Metadata)

    kind: ClassVar[str] = "program"

    def _check(self, data: dict[str, Any], path: str) -> None:
        check.unique(data["calls"], f"{path}.calls")


@dataclass
class Implements(_Record):
    """(Circuit)-[:IMPLEMENTS {agreement}]->(Function): a circuit verified against a function.

    circuit: id of the Circuit.
    function: id of the Function.
    agreement: fraction of inputs where the circuit's output equals the function's, in [0, 1].
    n_examples: number of inputs compared.
    details: JSON details (mismatches, input mapping used).
    """

    circuit: str = fld(_ID)
    function: str = fld(_ID)
    agreement: float = fld(prim(check.real, lo=0.0, hi=1.0))
    n_examples: int | None = fld(_OPT_NAT, default=None)
    details: dict[str, Any] = fld(_JSON, factory=dict)

    kind: ClassVar[str] = "implements"

    def _id(self, data: dict[str, Any]) -> str:
        return content_hash(
            {"kind": self.kind, "circuit": data["circuit"], "function": data["function"]}
        )


Record = Task | Model | Circuit | Function | Program | Implements | Feature
RECORD_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Task, Model, Circuit, Feature, Function, Program, Implements)
}
KINDS = tuple(RECORD_TYPES)


def record_from_dict(data: Any, expect: str | None = None) -> Any:
    """Load any record from its `to_dict` form; refuses newer schemas, unknown kinds and fields."""
    if not isinstance(data, dict):
        raise RecordError("record", f"expected an object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in RECORD_TYPES:
        raise RecordError("kind", f"must be one of {', '.join(KINDS)}; got {kind!r}")
    if expect is not None and kind != expect:
        raise RecordError("kind", f"expected {expect!r}, got {kind!r}")
    schema = data.get("schema", SCHEMA_VERSION)
    if isinstance(schema, bool) or not isinstance(schema, int):
        raise RecordError(f"{kind}.schema", f"expected an integer, got {schema!r}")
    if schema > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{kind} record has schema version {schema}, newer than this circuitlab supports "
            f"({SCHEMA_VERSION}): upgrade circuitlab"
        )
    body = {k: v for k, v in data.items() if k not in ("kind", "schema", "id")}
    cls = RECORD_TYPES[kind]
    record = load(cls, body, kind)
    if kind == "feature":
        return record
    given = data.get("id")
    if given is not None and given != record.id:
        raise RecordError(
            f"{kind}.id", f"{given!r} does not match the record's content ({record.id})"
        )
    return record
