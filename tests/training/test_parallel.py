import pytest

from circuitlab.training import RunSpec, train_stack
from circuitlab.training.parallel import plan, resume_groups, train_many
from circuitlab.training.rundir import partial_path

from .test_trainer import Interrupt, assert_same_weights, recipe, weights


def test_runs_spread_over_worker_processes_equal_runs_alone(tmp_path):
    # Two spawned workers, each training a stack of two: every run lands in its own directory,
    # in the order asked, with the weights it gets when trained alone in this process.
    specs = [RunSpec("add_mod_13", recipe(max_steps=20), s, tmp_path / f"w{s}") for s in range(4)]
    events = []
    results = train_many(specs, workers=2, strategy="stack", on_event=events.append)
    assert [r.run_dir for r in results] == [s.run_dir for s in specs]
    assert {e[0] for e in events} <= {str(s.run_dir) for s in specs} and events
    for spec in specs[::3]:
        alone = tmp_path / f"alone{spec.seed}"
        train_stack([RunSpec(spec.task, spec.recipe, spec.seed, alone)])
        assert_same_weights(spec.run_dir, alone)


def test_auto_keeps_short_jobs_in_this_process_and_measures_the_stack(tmp_path):
    specs = [RunSpec("add_mod_13", recipe(max_steps=30), s, tmp_path / f"s{s}") for s in range(6)]
    specs.append(RunSpec("sub_mod_11", recipe(max_steps=30), 0, tmp_path / "other"))
    p = plan(specs, workers=2, strategy="auto")
    assert p.workers == 1  # seconds of work do not pay for starting processes
    assert 0 < p.measured["estimated_single_thread_s"] < 60
    assert "stack6_s_per_model_step" in p.measured
    # the lone sub_mod_11 run is looped; every run is in exactly one chunk
    assert sorted(str(s.run_dir) for chunk in p.chunks for s in chunk) == sorted(
        str(s.run_dir) for s in specs
    )
    assert [tmp_path / "other"] in [[s.run_dir for s in chunk] for chunk in p.chunks]
    alone = plan(specs[:1], workers=2, strategy="auto")
    assert alone.measured == {} and alone.workers == 1  # one run: nothing to decide


def test_forced_strategies_split_stacks_over_workers(tmp_path):
    specs = [RunSpec("add_mod_13", recipe(), s, tmp_path / f"s{s}") for s in range(5)]
    stacked = plan(specs, workers=2, strategy="stack")
    assert stacked.workers == 2 and sorted(len(c) for c in stacked.chunks) == [2, 3]
    looped = plan(specs, workers=2, strategy="loop")
    assert looped.measured == {} and all(len(c) == 1 for c in looped.chunks)


def test_resume_skips_finished_runs_continues_checkpoints_and_starts_the_rest(tmp_path):
    # A sweep cut off mid-way: one run finished, one checkpointed at step 20, one never began.
    r = recipe(checkpoint_every=10)
    specs = [RunSpec("add_mod_13", r, s, tmp_path / f"s{s}") for s in range(3)]
    train_stack(specs[:1])

    def stop_at_25(step, max_steps, rows):
        if step >= 25:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_stack(specs[1:2], progress=stop_at_25)
    partial_path(specs[2].run_dir).mkdir()  # a stale partial with no checkpoint
    finished_weights = weights(specs[0].run_dir)
    groups = resume_groups(specs)
    assert {k: [s.seed for s in v] for k, v in groups.items()} == {
        "finished": [0],
        "step 20": [1],
        "fresh": [2],
    }

    skipped = []
    results = train_many(specs, workers=1, resume=True, on_skip=skipped.append)
    assert skipped == specs[:1] and [res.seed for res in results] == [1, 2]
    assert weights(specs[0].run_dir).keys() == finished_weights.keys()  # left alone
    for spec in specs[1:]:
        alone = tmp_path / f"alone{spec.seed}"
        train_stack([RunSpec(spec.task, spec.recipe, spec.seed, alone)])
        assert_same_weights(spec.run_dir, alone)
