"""The Ray backend: runs trained as Ray tasks on a local 2-CPU cluster on loopback equal runs
trained locally, progress reaches the driver, a killed worker's task is retried and resumes
from its checkpoint, and a bad address or a missing extra is one line, fast."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from circuitlab.training import RunSpec, get_recipe, read_metrics, read_run, train_stack, trainer
from circuitlab.training import ray_backend as rb
from circuitlab.training.rundir import lock_path, partial_path
from circuitlab.training.trainer import TrainingInterrupted, request_stop

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="the ray extra is not installed"
)

SMALL = dict(d_model=32, n_heads=2, d_head=16, d_mlp=64)


def recipe(max_steps: int, every: int = 50, checkpoint: int = 100):
    return get_recipe("fast").replace(
        max_steps=max_steps,
        eval_every=every,
        checkpoint_every=checkpoint,
        stop_val_acc=2.0,  # never stop early: every run trains exactly max_steps
        model=SMALL,
    )


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance (2 CPUs) started the way `train_ray` starts one, shut down after
    the module; train_ray calls in between use it."""
    with rb.ray_session(None, num_cpus=2) as ray:
        yield ray


@pytest.mark.slow
def test_runs_equal_local_runs_and_report_progress(cluster, tmp_path, monkeypatch):
    # relative run directories: workers must write where the driver means, whatever their cwd
    monkeypatch.chdir(tmp_path)
    r = recipe(300)
    specs = [RunSpec("add_mod_13", r, s, Path("ray") / f"seed{s}") for s in range(4)]
    plans, events, done = [], [], []
    results = rb.train_ray(
        specs, strategy="stack", on_plan=plans.append, on_event=events.append, on_result=done.append
    )
    assert cluster.is_initialized()  # an existing connection is used and kept
    # one stack of four split into one task per CPU
    assert [len(c) for c in plans[0].chunks] == [2, 2] and plans[0].workers == 2
    assert [res.run_dir for res in results] == [s.run_dir for s in specs]
    assert sorted(str(res.run_dir) for res in done) == sorted(str(s.run_dir) for s in specs)
    # events arrive on the driver, named by each stack's first run (as given), up to the end
    heads = {str(c[0].run_dir.relative_to(tmp_path)) for c in plans[0].chunks}
    assert {e[0] for e in events} == heads
    for head in heads:
        steps = [e[1] for e in events if e[0] == head]
        assert steps == sorted(steps) and steps[-1] == 300
    assert all(e[2] == 300 and 0.0 <= e[3] <= 1.0 for e in events)
    for s in specs:
        assert read_run(s.run_dir).summary["steps"] == 300
        assert not partial_path(s.run_dir).exists() and not lock_path(s.run_dir).exists()
    # the same weights as each run trained alone in this process
    for s in specs[:2]:
        local = tmp_path / "local" / f"seed{s.seed}"
        train_stack([RunSpec("add_mod_13", r, s.seed, local)], threads=1)
        assert same(weights(local), weights(s.run_dir))
    assert not same(weights(specs[0].run_dir), weights(specs[1].run_dir))  # seeds differ


@pytest.mark.slow
def test_killed_worker_is_retried_and_resumes_to_the_same_weights(cluster, tmp_path):
    r = recipe(2000, every=50, checkpoint=200)
    spec = RunSpec("add_mod_13", r, 3, tmp_path / "ray" / "seed3")
    killed: list[tuple[int, int]] = []

    def kill_once(event) -> None:
        name, step, _, _ = event
        if not killed and step >= 600:
            pid = int(lock_path(Path(name)).read_text())  # the worker training it
            os.kill(pid, signal.SIGKILL)
            killed.append((pid, step))

    (res,) = rb.train_ray([spec], on_event=kill_once)
    assert killed, "the run ended before the kill"
    pid, step = killed[0]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    resumed = res.extra.get("resumed_from_step")
    # the driver hears of step `step` when the worker has evaluated it, possibly before that
    # step's own checkpoint is written (evaluation comes first): when killed, the worker was at
    # or past it, so its last checkpoint (every 200 steps) is at least the one before
    last_due = step // 200 * 200
    assert resumed is not None and resumed % 200 == 0 and last_due - 200 <= resumed < res.steps
    rows = read_metrics(spec.run_dir)
    assert [row["step"] for row in rows] == list(range(0, 2001, 50))  # no step twice, none lost
    local = tmp_path / "local" / "seed3"
    train_stack([RunSpec("add_mod_13", r, 3, local)], threads=1)
    assert same(weights(local), weights(spec.run_dir))


def test_a_retry_continues_what_the_killed_attempt_left(tmp_path):
    """The retry rules without Ray: the driver's snapshot tells this sweep's files from
    older ones."""
    r = recipe(400, every=50, checkpoint=100)
    a, b = (RunSpec("add_mod_7", r, s, tmp_path / f"seed{s}") for s in (0, 1))
    before = [rb._Stamp.of(a.run_dir), rb._Stamp.of(b.run_dir)]

    def stop_at_150(step, max_steps, rows):
        if step == 150:
            request_stop()

    try:
        with pytest.raises(TrainingInterrupted):  # a checkpoints at step 151 and stops
            train_stack([a], threads=1, progress=stop_at_150)
    finally:
        trainer._STOP.clear()
    train_stack([b], threads=1)  # finished by "the killed attempt"
    done, batches = rb._attempt_batches([a, b], before, resume=False)
    assert [d.run_dir for d in done] == [b.run_dir] and done[0].steps == 400
    assert batches == [([a], True)]
    # a first attempt (snapshot taken now) starts a stale checkpoint over unless resuming
    now = [rb._Stamp.of(a.run_dir)]
    assert rb._attempt_batches([a], now, resume=False) == ([], [([a], False)])
    assert rb._attempt_batches([a], now, resume=True) == ([], [([a], True)])


def test_lock_of_a_killed_holder_is_free(tmp_path):
    """What a retry relies on: the kernel drops a run's lock when its holder dies."""
    run = tmp_path / "run"
    code = (
        "import sys, time; from pathlib import Path; from circuitlab.training.rundir import "
        "RunLock; RunLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); "
        "time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(rb.RunBusyError):
            rb._wait_unlocked([RunSpec("add_mod_7", recipe(10), 0, run)], wait=0.3)
        holder.kill()
        holder.wait()
        rb._wait_unlocked([RunSpec("add_mod_7", recipe(10), 0, run)], wait=0.0)
    finally:
        holder.kill()


def test_bad_or_unreachable_addresses_fail_fast():
    for text in ("nonsense", "host:", ":80", "host:99999", "ray://host"):
        with pytest.raises(rb.RayBackendError, match="--address must be"):
            rb.check_address(text)
    start = time.monotonic()
    with pytest.raises(
        rb.RayBackendError, match="cannot reach a Ray cluster at ray://127.0.0.1:1: "
    ):
        rb.check_address("ray://127.0.0.1:1")
    # a port that accepts connections but is no Ray (gRPC) server
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with pytest.raises(rb.RayBackendError, match="cannot reach.*(timed out|not a Ray)"):
            rb.check_address(f"127.0.0.1:{port}", timeout=0.5)  # accepted, never answered
    assert time.monotonic() - start < 5


def test_local_instance_is_on_loopback_and_passes_the_address_check(cluster):
    address = cluster.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:")
    rb.check_address(address)


def cli(*args: str, prelude: str = "") -> tuple[subprocess.CompletedProcess, float]:
    code = (
        f"{prelude}import sys; from circuitlab.cli import main; sys.argv[0] = 'circuitlab'; main()"
    )
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    return res, time.monotonic() - start


def test_cli_unreachable_address_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    res, seconds = cli(
        "train", "--task", "add_mod_7", "--backend", "ray", "--address", "127.0.0.1:1",
        "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().count("\n") == 0 and "cannot reach a Ray cluster" in res.stderr
    assert not out.exists()
    assert seconds < 30  # a Python start and imports; ray.init alone would retry for minutes


def test_cli_without_the_extra_says_how_to_install(tmp_path):
    out = tmp_path / "out"
    res, _ = cli(
        "train", "--task", "add_mod_7", "--backend", "ray", "--out", str(out),
        prelude="import sys; sys.modules['ray'] = None; ",  # import ray fails
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and rb.INSTALL_HINT in res.stderr
    assert not out.exists()
    res, _ = cli("train", "--address", "auto", "--out", str(out))
    assert res.returncode == 2 and "--address needs --backend ray" in res.stderr


@pytest.mark.slow
def test_cli_trains_on_ray(cluster, tmp_path):
    from typer.testing import CliRunner

    from circuitlab.cli import app
    from circuitlab.cli.common import CliError

    out = tmp_path / "runs"
    args = ["train", "--task", "add_mod_7", "--seeds", "0-1", "--backend", "ray", "--out",
            str(out), "--set", "max_steps=30", "--set", "d_model=32", "--set", "n_heads=2",
            "--set", "d_head=16", "--set", "d_mlp=64"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 worker(s), 2 job(s)" in result.output
    for seed in (0, 1):
        run = out / "add_mod_7" / f"fast-max_steps30-d_model32-n_heads2-d_head16-d_mlp64-seed{seed}"
        assert read_run(run).summary["steps"] == 30
    # --resume: both finished, nothing submitted
    result = CliRunner().invoke(app, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert "nothing to train" in result.output
    # again without --resume: a worker's RunDirError reaches the user as the same one line
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, CliError)
    assert "already exists; pass --overwrite" in str(result.exception)
