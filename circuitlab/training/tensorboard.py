"""TensorBoard event files mirrored from runs' metrics.jsonl (the `tensorboard` extra).

metrics.jsonl stays the source of truth: the trainer writes only it, in whichever process
trains the run (a stack here, a worker process, another machine). The mirror runs where the
command was typed and copies each run's new rows into `LOGDIR/<task>/<run name>/` as scalars
(`loss/train`, `accuracy/val`, `weight_norm`, `lr`, ...), so `tensorboard --logdir LOGDIR` shows
every run of a sweep side by side while it trains. A run is mirrored from its first row each
time a mirror starts (older event files of that run are replaced), so a resumed run, whose
metrics.jsonl was cut back to its checkpoint, shows exactly what the file holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from circuitlab.training import rundir

# metrics.jsonl key -> TensorBoard tag (grouped into sections by the part before the "/")
TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "weight_norm": "weights/norm",
    "lr": "optimizer/lr",
}


class TensorBoardError(RuntimeError):
    """TensorBoard logging was asked for but the `tensorboard` package is missing."""


def _writer_class() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TensorBoardError(
            "--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'"
        ) from None
    return SummaryWriter


class TensorBoardMirror:
    """Copies the rows of `run_dirs`' metrics.jsonl into event files under `logdir`; call
    `poll()` as often as you like (it reads only what was appended) and `close()` at the end."""

    def __init__(self, logdir: str | Path, run_dirs: Sequence[str | Path]) -> None:
        self.logdir = Path(logdir)
        self._writer_cls = _writer_class()
        self._runs = [Path(r) for r in run_dirs]
        self._writers: dict[Path, Any] = {}
        self._offsets: dict[Path, int] = {}  # run -> bytes of its metrics.jsonl mirrored

    def event_dir(self, run_dir: Path) -> Path:
        return self.logdir / run_dir.parent.name / run_dir.name

    def _writer(self, run_dir: Path) -> Any:
        if run_dir not in self._writers:
            target = self.event_dir(run_dir)
            if target.is_dir():  # an earlier mirror's events: rewritten from the first row
                for old in target.glob("events.out.tfevents.*"):
                    old.unlink()
            self._writers[run_dir] = self._writer_cls(log_dir=str(target))
        return self._writers[run_dir]

    def poll(self) -> int:
        """Mirror every row appended since the last call; returns how many were written."""
        written = 0
        for run_dir in self._runs:
            source = next(
                (
                    p / "metrics.jsonl"
                    for p in (run_dir, rundir.partial_path(run_dir))
                    if (p / "metrics.jsonl").is_file()
                ),
                None,
            )
            if source is None:
                continue
            # finalizing renames the run's directory: same file, same offset
            offset = self._offsets.get(run_dir, 0)
            if offset > source.stat().st_size:  # cut back (a resume): mirror it again
                offset = 0
            with open(source, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a torn last line waits for its end
            self._offsets[run_dir] = offset + len(complete)
            for line in complete.splitlines():
                if line.strip():
                    written += self._write(run_dir, json.loads(line))
        return written

    def _write(self, run_dir: Path, row: dict[str, Any]) -> int:
        writer = self._writer(run_dir)
        step = int(row["step"])
        for key, tag in TAGS.items():
            value = row.get(key)
            if isinstance(value, int | float):
                writer.add_scalar(tag, value, step)
        return 1

    def close(self) -> None:
        self.poll()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
