"""A circuit as one loadable, runnable artifact.

The catalog's `Circuit` record is the one serialised form of a circuit: extraction writes it to
`RUN/extraction/circuit.json` and puts the same record into the catalog. Its `artifact` part
names the files the circuit was measured with (transcoder, ablation statistics) by path and
sha256, beside the model's weights hash, so `Circuit.load` can rebuild exactly the model that
was measured:

1. read the record (from circuit.json, or from the catalog by id);
2. find the run directory (beside circuit.json, or the record's `metadata.source_run`);
3. check model.safetensors, the transcoder and the ablation statistics against their hashes
   (a missing or changed file is an error naming the file and both hashes);
4. load them; the circuit's features are the record's feature nodes.

Running it (`logits`, mode "circuit") is the replacement model with only the circuit's features,
the rest replaced exactly as extraction measured sufficiency (mean or zero ablation, including
the mean reconstruction error); mode "model" runs the full model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from circuitlab.catalog import records as rec
from circuitlab.extraction.circuit import AblationStats
from circuitlab.training.rundir import sha256_file  # re-exported: the artifact's file hashes

CIRCUIT_FILE = "circuit.json"
ABLATION_FILE = "ablation.safetensors"
OUT_DIR = "extraction"
MODES = ("circuit", "model")
_GRID = re.compile(r"grid\[(\d+)x(\d+)\]")


class CircuitLoadError(ValueError):
    """A circuit that cannot be loaded or run: unknown id, missing or changed files."""


def _verified(path: Path, expected: str, what: str, circuit_id: str) -> Path:
    if not path.is_file():
        raise CircuitLoadError(
            f"{what} {path} is missing: circuit {circuit_id[:12]} was measured with it "
            f"(sha256 {expected[:12]}...)"
        )
    found = sha256_file(path)
    if found != expected:
        raise CircuitLoadError(
            f"{what} {path} has changed since circuit {circuit_id[:12]} was extracted: "
            f"sha256 was {expected[:12]}..., is now {found[:12]}...; extract it again"
        )
    return path


def _read_record(path: Path) -> rec.Circuit:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CircuitLoadError(f"cannot read {path}: {exc}") from None
    try:
        return rec.record_from_dict(data, expect="circuit")
    except rec.RecordError as exc:
        raise CircuitLoadError(
            f"{path} is not a circuit record ({exc}); circuits extracted before circuitlab "
            "wrote runnable circuits must be extracted again"
        ) from None


def circuit_record(source: str | Path) -> rec.Circuit:
    """The record of a circuit.json, an extraction directory or a run directory, runnable or
    not (a circuit selected under resample ablation has no ablation statistics to run with,
    but its features and transcoder are there)."""
    return _read_record(_circuit_file(Path(source)))


def feature_mask(record: rec.Circuit, n_layers: int, n_features: int) -> list[Tensor]:
    """The circuit's features as one (n_features,) bool mask per layer."""
    keep = torch.zeros(n_layers, n_features, dtype=torch.bool)
    for n in record.nodes:
        if n.feature.node_type == "feature":
            keep[n.feature.layer, n.feature.index] = True
    return list(keep.unbind(0))


def _circuit_file(path: Path) -> Path:
    """circuit.json given itself, an extraction directory or a run directory."""
    for candidate in (path, path / CIRCUIT_FILE, path / OUT_DIR / CIRCUIT_FILE):
        if candidate.is_file():
            return candidate
    raise CircuitLoadError(f"no {CIRCUIT_FILE} at {path} (nor in {path / OUT_DIR})")


def encode_tokens(
    template: np.ndarray, positions: list[list[int]], values: tuple[np.ndarray, ...]
) -> np.ndarray:
    """(N, n_ctx) token sequences: `template` everywhere, each value at its port's positions
    (a scalar port one position, a grid port its cells row-major)."""
    n = len(values[0])
    tokens = np.broadcast_to(template, (n, len(template))).copy()
    for where, value in zip(positions, values, strict=True):
        tokens[:, where] = np.asarray(value).reshape(n, len(where))
    return tokens


def decode_argmax(logits: Tensor, domain: str) -> np.ndarray:
    """Argmax at the answer positions: (N,) for one answer, (N, H, W) for a grid domain."""
    out = logits.argmax(-1).cpu().numpy().astype(np.int64)
    m = _GRID.match(domain)
    if m:
        return out.reshape(len(out), int(m[1]), int(m[2]))
    return out[:, 0] if out.shape[1] == 1 else out


class Circuit:
    """A runnable circuit: its catalog record with the model, transcoder and ablation statistics
    it was measured with. Build with `Circuit.load`."""

    def __init__(
        self,
        record: rec.Circuit,
        run_dir: Path,
        model: Any,
        transcoder: Any,
        stats: AblationStats,
        task: Any,
    ) -> None:
        self.record = record
        self.run_dir = run_dir
        self.model = model
        self.transcoder = transcoder
        self.stats = stats
        self.task = task
        self.labels = {  # (layer, index) -> label of each of the circuit's features
            (n.feature.layer, n.feature.index): n.feature.label
            for n in record.nodes
            if n.feature.node_type == "feature"
        }
        self.keep = feature_mask(record, transcoder.n_layers, transcoder.n_features)
        # the tokens at positions no port writes (`=`, query tokens), from the task's data
        self._template = task.dataset().inputs[0].copy()

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def load(cls, source: str | Path | rec.Circuit, catalog: Any = None) -> Circuit:
        """A circuit from a circuit.json, an extraction or run directory, a catalog record, or a
        catalog id (prefix) with `catalog` (a Catalog or a catalog URL)."""
        if isinstance(source, rec.Circuit):
            record, run_dir = source, None
        elif Path(source).exists():
            path = _circuit_file(Path(source))
            record, run_dir = circuit_record(path), path.parent.parent
        elif catalog is not None:
            record, run_dir = cls._from_catalog(str(source), catalog), None
        else:
            raise CircuitLoadError(
                f"{source} is neither a circuit file nor a directory; to load a catalog id, "
                "pass the catalog"
            )
        if record.artifact is None:
            raise CircuitLoadError(
                f"circuit {record.id[:12]} has no runnable artifact (transcoder and ablation "
                "statistics); extract its run again"
            )
        if run_dir is None:
            if not record.metadata.source_run:
                raise CircuitLoadError(f"circuit {record.id[:12]} names no run directory")
            run_dir = Path(record.metadata.source_run)
        return cls._assemble(record, run_dir)

    @staticmethod
    def _from_catalog(circuit_id: str, catalog: Any) -> rec.Circuit:
        from circuitlab.catalog import CatalogError, open_catalog

        own = not hasattr(catalog, "get")
        try:
            cat = open_catalog(catalog, create=False) if own else catalog
        except CatalogError as exc:
            raise CircuitLoadError(f"catalog {catalog}: {exc}") from None
        try:
            record = cat.get(circuit_id)
        except CatalogError as exc:
            raise CircuitLoadError(f"no circuit {circuit_id!r} in {cat.url}: {exc}") from None
        finally:
            if own:
                cat.close()
        if not isinstance(record, rec.Circuit):
            raise CircuitLoadError(f"{circuit_id!r} in {cat.url} is a {record.kind}, not a circuit")
        return record

    @classmethod
    def _assemble(cls, record: rec.Circuit, run_dir: Path) -> Circuit:
        from circuitlab.extraction.transcoder import Transcoder, TranscoderError
        from circuitlab.models import CheckpointError
        from circuitlab.tasks import TaskError, get_task
        from circuitlab.training import RunDirError, load_run

        art = record.artifact
        cid = record.id
        if not run_dir.is_dir():
            raise CircuitLoadError(
                f"run directory {run_dir} of circuit {cid[:12]} is missing "
                f"(model sha256 {art.weights_sha256[:12]}...)"
            )
        _verified(run_dir / "model.safetensors", art.weights_sha256, "model weights", cid)
        tc_dir = run_dir / art.transcoder
        _verified(tc_dir / "transcoder.safetensors", art.transcoder_sha256, "transcoder", cid)
        ablation = _verified(
            run_dir / art.ablation_file, art.ablation_sha256, "ablation statistics", cid
        )
        try:
            _, model = load_run(run_dir)
            transcoder = Transcoder.load(tc_dir)
            task = get_task(record.task)
        except (RunDirError, CheckpointError, TranscoderError, TaskError) as exc:
            raise CircuitLoadError(f"circuit {cid[:12]}: {exc}") from None
        model.eval()
        return cls(record, run_dir, model, transcoder, AblationStats.load(ablation), task)

    @staticmethod
    def write(record: rec.Circuit, directory: Path) -> Path:
        """Write the record as `directory/circuit.json` (the files it names must be there)."""
        path = directory / CIRCUIT_FILE
        path.write_text(json.dumps(record.to_dict(), indent=1) + "\n")
        return path

    # -- views ----------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def interface(self) -> rec.Interface:
        return self.record.interface

    @property
    def n_features(self) -> int:
        return int(sum(int(k.sum()) for k in self.keep))

    def __repr__(self) -> str:
        sig = self.interface.signature if self.interface else None
        return (
            f"Circuit({self.id[:12]}, task={self.record.task}, {self.n_features} features, "
            f"{sig or 'no verified signature'})"
        )

    # -- values <-> tokens ---------------------------------------------------------------------

    def encode(self, *values: np.ndarray) -> Tensor:
        """Token sequences (N, n_ctx) for port values: each port's values (N,) or grids
        (N, H, W), already checked against the port's domain."""
        positions = [port.all_positions() for port in self.interface.inputs]
        return torch.from_numpy(encode_tokens(self._template, positions, values))

    def decode(self, logits: Tensor) -> np.ndarray:
        """Argmax outputs: (N,) for a single answer, (N, H, W) for a grid domain."""
        return decode_argmax(logits, self.interface.output.domain)

    # -- running --------------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, tokens: Tensor, mode: str = "circuit", batch_size: int = 8192) -> Tensor:
        """(N, Q, O) logits at the answer positions of the circuit (or the whole model)."""
        if mode not in MODES:
            raise CircuitLoadError(f"mode must be one of {MODES}, got {mode!r}")
        out = []
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start : start + batch_size]
            if mode == "model":
                out.append(self.model(batch))
            else:
                with self.stats.hooks(self.model, self.transcoder, self.keep):
                    out.append(self.model(batch))
        return torch.cat(out)

    @torch.no_grad()
    def feature_activations(self, tokens: Tensor) -> list[Tensor]:
        """Per layer (N, S_l, F): the circuit's feature activations when it runs on `tokens`
        (zero outside the circuit; the last layer at the answer positions only)."""
        acts: dict[int, Tensor] = {}

        def read(x: Tensor, name: str) -> None:
            layer = int(name.split(".")[1])
            acts[layer] = self.transcoder.encode(layer, x) * self.keep[layer].to(x.dtype)

        with (
            self.stats.hooks(self.model, self.transcoder, self.keep),
            self.model.hooks([(lambda n: n.endswith("hook_mlp_in"), read)]),
        ):
            self.model(tokens)
        return [acts[t] for t in range(self.transcoder.n_layers)]
