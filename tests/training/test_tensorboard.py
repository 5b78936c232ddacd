"""TensorBoard events mirror metrics.jsonl: the same steps and values, read back with
TensorBoard's own reader; torn lines wait, a cut-back file is mirrored again."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from circuitlab.training.tensorboard import TensorBoardMirror  # noqa: E402


def scalars(event_dir, tag):
    acc = EventAccumulator(str(event_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_train_with_tensorboard_mirrors_every_row(tmp_path):
    out = tmp_path / "runs"
    res = subprocess.run(
        [sys.executable, "-m", "circuitlab", "train", "--task", "add_mod_13",
         "--set", "max_steps=40", "--set", "eval_every=10", "--seeds", "0,1",
         "--out", str(out), "--workers", "1", "--tensorboard"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "tensorboard --logdir" in res.stdout
    runs = sorted((out / "add_mod_13").iterdir())
    assert len(runs) == 2
    for run in runs:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        events = out / "tensorboard" / "add_mod_13" / run.name
        got = scalars(events, "accuracy/val")
        assert [s for s, _ in got] == [r["step"] for r in rows]
        assert [v for _, v in got] == pytest.approx([r["val_acc"] for r in rows], rel=1e-6)
        assert scalars(events, "loss/train")[-1][1] == pytest.approx(rows[-1]["train_loss"])


def test_torn_lines_wait_and_cut_back_files_are_mirrored_again(tmp_path):
    run = tmp_path / "add_mod_7" / "r"
    partial = run.with_name("r.partial")
    partial.mkdir(parents=True)
    metrics = partial / "metrics.jsonl"
    row = lambda step, acc: json.dumps({"step": step, "val_acc": acc}) + "\n"  # noqa: E731
    metrics.write_text(row(0, 0.1) + row(10, 0.2) + '{"step": 20, "val')
    mirror = TensorBoardMirror(tmp_path / "tb", [run])
    assert mirror.poll() == 2  # the torn third line is not read yet
    with open(metrics, "a") as fh:
        fh.write('_acc": 0.3}\n')
    assert mirror.poll() == 1
    partial.rename(run)  # finalized: the same rows under the final name, none repeated
    assert mirror.poll() == 0
    (run / "metrics.jsonl").write_text(row(0, 0.1))  # a resume cut it back
    assert mirror.poll() == 1
    mirror.close()
    # a new mirror of the same run replaces the old events: exactly what the file holds
    again = TensorBoardMirror(tmp_path / "tb", [run])
    again.close()
    assert scalars(tmp_path / "tb" / "add_mod_7" / "r", "accuracy/val") == [(0, pytest.approx(0.1))]
