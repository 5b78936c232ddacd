"""Training under faults and bad input: locks, atomic checkpoints, torn files, validation."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuitlab._atomic import strict_json
from circuitlab.models import ModelConfig, ModelConfigError, Transformer
from circuitlab.models.transformer import CheckpointError
from circuitlab.training import (
    Recipe,
    RecipeError,
    RunDirError,
    RunSpec,
    read_metrics,
    read_run,
    train_stack,
)
from circuitlab.training.rundir import RunLock, partial_path, safe_name
from circuitlab.training.trainer import CHECKPOINT_FILE, checkpoint_meta, estimate_peak_bytes

SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)


def recipe(**changes) -> Recipe:
    base = Recipe(name="test", lr=3e-3, max_steps=40, eval_every=10, stop_val_acc=2.0, model=SMALL)
    return base.replace(**changes)


def same_weights(a, b) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("lr", "abc"),
        ("lr", math.inf),
        ("lr", math.nan),
        ("lr", 0),
        ("batch_size", 2.5),
        ("batch_size", "64"),
        ("stop_val_acc", "abc"),
        ("max_steps", True),
        ("train_fraction", 5),
        ("betas", (0.9,)),
        ("betas", "ab"),
        ("name", "x/../../escaped"),
    ],
)
def test_recipe_refuses_bad_values_by_name(field, value):
    with pytest.raises(RecipeError, match=field.split("_")[0]):
        recipe(**{field: value})


def test_recipe_keeps_integral_floats_as_ints():
    assert recipe(batch_size=64.0).batch_size == 64
    assert isinstance(recipe(batch_size=64.0).batch_size, int)


@pytest.mark.parametrize(
    "field,value",
    [("d_model", "abc"), ("d_model", 128.5), ("n_layers", 10**9), ("init_scale", math.nan)],
)
def test_model_config_refuses_bad_values(field, value):
    with pytest.raises(ModelConfigError, match=field):
        ModelConfig(**{field: value})


def test_checkpoint_header_is_checked_before_the_model_is_built(tmp_path):
    cfg = ModelConfig(d_vocab=14, d_vocab_out=13, d_model=16, n_heads=2, d_head=8, d_mlp=32)
    Transformer(cfg).save(tmp_path)
    huge = ModelConfig(d_vocab=14, d_vocab_out=13, d_model=16, n_heads=2, d_head=8, d_mlp=262_144)
    with pytest.raises(CheckpointError, match="shape"):
        Transformer.load(tmp_path / "model.safetensors", huge)  # would allocate if built first
    state = load_file(str(tmp_path / "model.safetensors"))
    save_file({k: v.long() for k, v in state.items()}, str(tmp_path / "int.safetensors"))
    with pytest.raises(CheckpointError, match="floating point"):
        Transformer.load(tmp_path / "int.safetensors", cfg)
    state["embed.W_E"][0, 0] = float("nan")
    save_file(state, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match="NaN"):
        Transformer.load(tmp_path / "nan.safetensors", cfg)


@pytest.mark.parametrize(
    "change",
    [
        {"task": 7},
        {"task": None},
        {"recipe": "fast"},
        {"seed": "abc"},
        {"model": {"d_model": "abc"}},
        {"model": {"n_layers": 10**9}},
    ],
)
def test_read_run_refuses_bad_config_json(tmp_path, change):
    run = tmp_path / "run"
    train_stack([RunSpec("add_mod_7", recipe(max_steps=2), 0, run)])
    config = json.loads((run / "config.json").read_text())
    for key, value in change.items():
        if isinstance(value, dict):
            config[key] |= value
        else:
            config[key] = value
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="config.json"):
        read_run(run)


def test_recipe_train_fraction_from_config_is_checked(tmp_path):
    run = tmp_path / "run"
    train_stack([RunSpec("add_mod_7", recipe(max_steps=2), 0, run)])
    config = json.loads((run / "config.json").read_text())
    config["recipe"]["train_fraction"] = 5
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="train_fraction"):
        read_run(run)


def test_json_written_by_training_is_strict(tmp_path):
    # train_fraction 1 leaves no validation set: its loss is NaN, written as null
    run = tmp_path / "run"
    train_stack([RunSpec("add_mod_7", recipe(max_steps=10, train_fraction=1.0), 0, run)])

    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    for name in ("summary.json", "config.json"):
        json.loads((run / name).read_text(), parse_constant=refuse)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line, parse_constant=refuse)
        assert row["val_loss"] is None
    assert strict_json({"a": [1.0, math.inf]}) == {"a": [1.0, None]}


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "x/../../escaped", "a\\b", "synth_mod_7[a/b+c]"])
def test_safe_name_is_one_component(name):
    safe = safe_name(name)
    assert "/" not in safe and "\\" not in safe and not safe.startswith(".")
    assert safe_name(name) != safe_name(name + "x")


def test_safe_name_bounds_length_and_keeps_names_distinct():
    a, b = safe_name("x" * 500 + "a"), safe_name("x" * 500 + "b")
    assert len(a.encode()) <= 160 and a != b


# --- locks, checkpoints, torn files -----------------------------------------------------------


def test_a_locked_run_is_refused_and_its_partial_kept(tmp_path):
    run = tmp_path / "run"
    spec = RunSpec("add_mod_7", recipe(max_steps=2), 0, run)
    partial_path(run).mkdir()
    (partial_path(run) / "marker").write_text("first writer's data")
    with RunLock(run), pytest.raises(RunDirError, match="another process"):
        train_stack([spec])
    assert (partial_path(run) / "marker").is_file()
    train_stack([spec])  # released: trains
    assert not RunLock(run).path.exists()


def test_lock_is_held_across_processes(tmp_path):
    run = tmp_path / "run"
    code = (
        "import sys, time; from pathlib import Path; "
        "from circuitlab.training.rundir import RunLock; "
        f"RunLock(Path({str(run)!r})).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
            RunLock(run).acquire()
        holder.kill()  # a killed holder releases its lock
        holder.wait()
        with RunLock(run):
            pass
    finally:
        holder.kill()


def test_checkpoint_is_one_file_with_its_step(tmp_path):
    spec = RunSpec("add_mod_7", recipe(max_steps=40, checkpoint_every=10), 0, tmp_path / "b")
    _checkpoint_then_stop(spec, at=20)
    meta = checkpoint_meta(spec.run_dir)
    assert meta["step"] == 20
    assert sorted(p.name for p in (partial_path(spec.run_dir) / "checkpoint").iterdir()) == [
        CHECKPOINT_FILE
    ]


def _checkpoint_then_stop(spec: RunSpec, at: int) -> None:
    """Train `spec` past its checkpoint at step `at`, then stop at the next evaluation as a kill
    would (leaving metrics rows past the checkpoint)."""

    class Killed(Exception):
        pass

    def progress(step, max_steps, rows):
        if step > at:
            raise Killed

    with pytest.raises(Killed):
        train_stack([spec], progress=progress)


def test_resume_after_a_torn_write_gives_the_same_weights(tmp_path):
    r = recipe(max_steps=40, checkpoint_every=10)
    ref = tmp_path / "ref"
    train_stack([RunSpec("add_mod_7", r, 0, ref)])
    spec = RunSpec("add_mod_7", r, 0, tmp_path / "run")
    _checkpoint_then_stop(spec, at=20)
    partial = partial_path(spec.run_dir)
    # a kill mid-checkpoint leaves a temporary file; a kill mid-log leaves half a line
    (partial / "checkpoint" / (CHECKPOINT_FILE + ".tmp")).write_bytes(b"\x00" * 100)
    with open(partial / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 30, "train_lo')
    train_stack([spec], resume=True)
    assert same_weights(ref, spec.run_dir)
    steps = [row["step"] for row in read_metrics(spec.run_dir)]
    assert steps == [row["step"] for row in read_metrics(ref)]


def test_a_torn_line_inside_the_metrics_is_an_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n{"st\n{"step": 10}\n')
    with pytest.raises(RunDirError, match="line 2"):
        read_metrics(tmp_path, torn_tail=True)


def test_damaged_checkpoint_says_what_to_delete(tmp_path):
    spec = RunSpec("add_mod_7", recipe(max_steps=40, checkpoint_every=10), 0, tmp_path / "run")
    _checkpoint_then_stop(spec, at=20)
    ckpt = partial_path(spec.run_dir) / "checkpoint" / CHECKPOINT_FILE
    ckpt.write_bytes(ckpt.read_bytes()[:50])
    with pytest.raises(RunDirError, match="start that run over"):
        train_stack([spec], resume=True)


# --- memory -----------------------------------------------------------------------------------


def test_memory_estimate_grows_with_the_task_and_refuses_past_the_limit(tmp_path, monkeypatch):
    from circuitlab._memory import MemoryBudgetError
    from circuitlab.training.parallel import train_many

    small = estimate_peak_bytes([RunSpec("add_mod_113", recipe(), 0, tmp_path / "a")])
    large = estimate_peak_bytes([RunSpec("add_mod_509", recipe(), 0, tmp_path / "b")])
    minibatch = estimate_peak_bytes(
        [RunSpec("add_mod_509", recipe(batch_size=256), 0, tmp_path / "b")]
    )
    assert small < large and minibatch < large
    monkeypatch.setenv("CIRCUITLAB_MEMORY_LIMIT", "100M")
    with pytest.raises(MemoryBudgetError, match="batch_size"):
        train_many([RunSpec("add_mod_7", recipe(), 0, tmp_path / "c")])
    assert not partial_path(tmp_path / "c").exists()


# --- processes: Ctrl-C, parent killed ---------------------------------------------------------


def _interruptible() -> None:
    """In the child: Ctrl-C as a terminal delivers it. A shell without job control starts
    background jobs (`make test &`, CI wrappers) with SIGINT ignored, which children inherit,
    and a process started so rightly ignores Ctrl-C; these tests are about the other case."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def circuitlab(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "circuitlab", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
        **kwargs,
    )


LONG = ["--task", "add_mod_7", "--set", "max_steps=200000", "--set", "stop_val_acc=2"]


def _wait_for_metrics(partials, rows: int = 3, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = [p / "metrics.jsonl" for p in partials]
        if all(f.is_file() and len(f.read_text().splitlines()) >= rows for f in files):
            return
        time.sleep(0.2)
    raise AssertionError(f"training did not start: {partials}")


def test_ctrl_c_checkpoints_and_says_how_to_resume(tmp_path):
    out = tmp_path / "runs"
    proc = circuitlab("train", *LONG, "--out", str(out), "--workers", "1")
    partial = out / "add_mod_7" / "fast-max_steps200000-stop_val_acc2-seed0.partial"
    _wait_for_metrics([partial])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    meta = checkpoint_meta(partial.with_name(partial.name.removesuffix(".partial")))
    assert meta is not None and meta["step"] > 0  # checkpointed where it stopped


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_with_a_killed_parent_and_the_sweep_resumes(tmp_path):
    out = tmp_path / "runs"
    args = [
        "train",
        "--task",
        "add_mod_7",
        "--seeds",
        "0-1",
        "--set",
        "max_steps=400",
        "--set",
        "stop_val_acc=2",
        "--set",
        "checkpoint_every=20",
        "--strategy",
        "loop",
        "--workers",
        "2",
        "--out",
        str(out),
    ]
    proc = circuitlab(*args)  # --strategy loop: two worker processes, however short the job
    name = "fast-max_steps400-stop_val_acc2-checkpoint_every20-seed"
    run_dirs = [out / "add_mod_7" / f"{name}{s}" for s in (0, 1)]
    _wait_for_metrics([partial_path(r) for r in run_dirs], rows=8)
    workers = [k for k in _children(proc.pid) if b"spawn_main" in _cmdline(k)]
    assert len(workers) >= 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "pool workers outlived their parent"
    resumed = subprocess.run(
        [sys.executable, "-m", "circuitlab", *args, "--resume"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    for run in run_dirs:
        steps = [row["step"] for row in read_metrics(run)]
        assert steps == list(range(0, 401, 10))
        assert read_run(run).summary["steps"] == 400


def test_a_worker_whose_parent_died_during_its_start_exits_at_once():
    # a spawned worker learns its parent's pid from the parent: if the process it finds as its
    # parent is another one (init, after the real parent was killed mid-start), it exits
    code = "from circuitlab.training.parallel import die_with_parent as d; d({}); print('alive')"
    gone = subprocess.run([sys.executable, "-c", code.format(1)], capture_output=True, text=True)
    assert gone.returncode == 1 and "alive" not in gone.stdout
    ours = subprocess.run(
        [sys.executable, "-c", code.format(os.getpid())], capture_output=True, text=True
    )
    assert ours.returncode == 0 and "alive" in ours.stdout


@pytest.mark.parametrize(
    "how, ok", [("prune", True), ("lora", True), ("finetune", True), ("distill", False)]
)
def test_a_parent_names_how_its_run_was_derived(how, ok):
    from circuitlab.training.rundir import RunDirError, check_parent

    parent = {"run": "runs/base", "weights_sha256": "0" * 64, "how": how, "method": {}}
    if ok:
        check_parent(parent)  # a continued run is derived by finetune, as the catalog says
    else:
        with pytest.raises(RunDirError, match="parent.how must be one of"):
            check_parent(parent)
