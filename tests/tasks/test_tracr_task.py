"""tracr_PROGRAM tasks: answers are RASP's own, and tracr's compiled model imports as a run
that answers all of them and that extraction takes (bidirectional, several answer positions)."""

import subprocess
import sys

import pytest

from circuitlab.tasks import TaskError, get_task

pytest.importorskip("tracr")


def test_answers_are_what_rasp_evaluates():
    from tracr.rasp import rasp

    from circuitlab.tasks.tracr import compiled

    task = get_task("tracr_sort")
    data = task.dataset()
    assert task.n_ctx == 5 and task.answer_positions == (1, 2, 3, 4)
    assert len(data) == 3**4 and data.targets.shape == (81, 4)
    names = task.token_names()
    program = compiled("sort").program
    for row, answer in zip(data.inputs[:20], data.targets[:20], strict=True):
        assert names[row[0]] == "BOS"
        seq = [int(names[t]) for t in row[1:]]
        expected = rasp.evaluate(program, seq)
        assert [int(task.output_names()[a]) for a in answer] == expected == sorted(seq)


def test_numerical_and_unknown_programs_are_refused():
    with pytest.raises(TaskError, match="outputs a number"):
        get_task("tracr_frac_prevs")
    with pytest.raises(TaskError, match="unknown tracr program"):
        get_task("tracr_nope")


def test_import_then_extract(tmp_path):
    from circuitlab.extraction.pipeline import ExtractConfig, extract
    from circuitlab.extraction.transcoder import TranscoderConfig
    from circuitlab.training import read_run

    out = tmp_path / "reverse"
    res = subprocess.run(
        [sys.executable, "-m", "circuitlab", "import", "tracr:reverse", "--task",
         "tracr_reverse", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    info = read_run(out)
    assert info.summary["acc_all"] == 1.0 and info.model_config.causal is False
    small = ExtractConfig(transcoder=TranscoderConfig(n_features=32, steps=60, batch_size=64))
    result = extract(out, None, small, write_catalog=False)
    assert result.summary["circuit"]["full_accuracy"] == 1.0
