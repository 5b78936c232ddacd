"""Training benchmark (issue 3): steps and seconds to grok, step time vs TransformerLens,
many models at once. Writes benchmarks/results/training.json and prints the comparison.

    python benchmarks/bench_training.py            # everything (~40 min on 2 cores)
    python benchmarks/bench_training.py --only step,many
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from circuitlab.training import RunSpec, get_recipe, read_metrics, train_stack
from circuitlab.training.parallel import train_many
from circuitlab.training.trainer import _Stack, _stack_data

RESULTS = Path(__file__).parent / "results" / "training.json"
console = Console()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --- 1. steps and wall-clock to 99% validation accuracy ------------------------------------
def bench_grok(seeds: list[int], root: Path) -> dict:
    out: dict = {}
    # nanda is logged every 50 steps (its grokking step is ~5,000, so +-1%); fast every 10
    for name, max_steps, every in (("fast", 2000, 10), ("nanda", 12000, 50)):
        recipe = get_recipe(name).replace(
            stop_val_acc=0.99, max_steps=max_steps, checkpoint_every=10**6, eval_every=every
        )
        specs = [RunSpec("add_mod_113", recipe, s, root / name / f"seed{s}") for s in seeds]
        console.print(f"[bold]grok[/]: {name} recipe, seeds {seeds}, 2 single-thread workers")
        results = train_many(specs, workers=2, strategy="loop", overwrite=True)
        out[name] = {
            "steps_to_99": [r.grokked_at for r in results],
            "all_reached_99": all(r.grokked_at is not None for r in results),
            "median_steps": median([r.grokked_at for r in results]),
        }
    fast_median = out["fast"]["median_steps"]
    out["step_ratio_nanda_over_fast"] = (
        out["nanda"]["median_steps"] / fast_median if fast_median else None
    )
    return out


def bench_wall(seeds: list[int], root: Path) -> dict:
    """Seconds to 99% validation as a user gets them: one run alone, both threads."""
    recipe = get_recipe("fast").replace(stop_val_acc=0.99, max_steps=2000, checkpoint_every=10**6)
    seconds = []
    for s in seeds:
        run = root / "wall" / f"seed{s}"
        train_stack([RunSpec("add_mod_113", recipe, s, run)], overwrite=True, threads=2)
        rows = read_metrics(run)
        seconds.append(next((r["time_s"] for r in rows if r["val_acc"] >= 0.99), None))
    return {"seconds_to_99_two_threads": seconds, "median_seconds": median(seconds)}


# --- 2. time per optimizer step: circuitlab vs TransformerLens HookedTransformer ----------
def _ours_step_fn():
    spec = RunSpec("add_mod_113", get_recipe("nanda"), 0, Path("/nonexistent"))
    cfg = spec.model_config()
    x, y, _, _ = _stack_data([spec])
    stack = _Stack([spec], cfg)

    return lambda: stack.step(x, y)


def _tl_step_fn():
    warnings.simplefilter("ignore", DeprecationWarning)
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from circuitlab.tasks import get_task

    cfg = HookedTransformerConfig(
        n_layers=1,
        d_model=128,
        d_head=32,
        n_heads=4,
        d_mlp=512,
        d_vocab=114,
        d_vocab_out=113,
        n_ctx=3,
        act_fn="relu",
        normalization_type=None,
        device="cpu",
        seed=0,
    )
    model = HookedTransformer(cfg)
    split = get_task("add_mod_113").split(0.3, 0)
    x, y = torch.tensor(split.train.inputs), torch.tensor(split.train.targets[:, 0])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))

    def step():
        F.cross_entropy(model(x)[:, -1], y).backward()
        opt.step()
        opt.zero_grad()

    return step


def _time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step_times(threads: int, rounds: int = 5, steps: int = 10) -> dict:
    """Median s/step of both models, measured alternately so both see the same machine load."""
    torch.set_num_threads(threads)
    ours, tl = _ours_step_fn(), _tl_step_fn()
    for fn in (ours, tl):
        _time(fn, 3)
    o, t = [], []
    for _ in range(rounds):
        o.append(_time(ours, steps))
        t.append(_time(tl, steps))
    return {"circuitlab_s": statistics.median(o), "transformer_lens_s": statistics.median(t)}


def bench_step() -> dict:
    """Each thread count in a fresh process, so neither side inherits the other parts' heap."""
    out = {}
    for threads in (1, 2):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            times = pool.apply(_step_times, (threads,))
        times["speedup"] = times["transformer_lens_s"] / times["circuitlab_s"]
        out[f"threads{threads}"] = times
    return out


# --- 3. many models at once -----------------------------------------------------------------
def _model_steps_per_s(specs, stacked: bool, steps: int) -> float:
    """Throughput of training `specs` as one stack, or as a Python loop of single models."""
    groups = [specs] if stacked else [[s] for s in specs]
    states = []
    for group in groups:
        cfg = group[0].model_config()
        x, y, _, _ = _stack_data(group)
        batch = group[0].recipe.batch_size
        states.append((x[:, :batch], y[:, :batch], _Stack(group, cfg)))

    def one_round():
        for x, y, stack in states:
            stack.step(x, y)

    one_round()
    start = time.perf_counter()
    for _ in range(steps):
        one_round()
    return len(specs) * steps / (time.perf_counter() - start)


def bench_many(root: Path) -> dict:
    torch.set_num_threads(1)
    small = get_recipe("nanda").replace(
        name="small", batch_size=64, model=dict(d_model=32, n_heads=4, d_head=8, d_mlp=128)
    )
    specs = [RunSpec("add_mod_59", small, s, root / f"s{s}") for s in range(64)]
    loop = _model_steps_per_s(specs, stacked=False, steps=20)
    stack = _model_steps_per_s(specs, stacked=True, steps=20)
    out = {
        "small64": {
            "loop_model_steps_per_s": loop,
            "stack_model_steps_per_s": stack,
            "speedup": stack / loop,
        }
    }
    # Nanda's full-batch configuration, 4 models: a short job (60 steps, which `auto` keeps in
    # one process) three ways, and a long one (400 steps, which `auto` spreads over 2 workers)
    for name, steps, ways in (
        ("nanda4", 60, ("loop_1proc", "stack_1proc", "auto_2workers")),
        ("nanda4_long", 400, ("loop_1proc", "auto_2workers")),
    ):
        nanda = get_recipe("nanda").replace(
            max_steps=steps, eval_every=steps, stop_val_acc=2.0, checkpoint_every=10**6
        )
        specs = [RunSpec("add_mod_113", nanda, s, root / name / f"s{s}") for s in range(4)]
        out[name] = _time_strategies(specs, ways)
    return out


def _time_strategies(specs: list[RunSpec], ways: tuple[str, ...]) -> dict:
    """Wall seconds of `train_many` for each way ("<strategy>_<N>proc|workers"), the plan
    measurement included; the speedup is against the one-process loop."""
    timings = {}
    for label in ways:
        strategy, procs = label.split("_")
        torch.set_num_threads(2)
        chosen = {}
        start = time.perf_counter()
        train_many(
            specs,
            overwrite=True,
            workers=int(procs[0]),
            strategy=strategy,
            on_plan=lambda p, c=chosen: c.update(strategy=p.strategy, workers=p.workers),
        )
        timings[label] = {"seconds": time.perf_counter() - start, **chosen}
    base = timings["loop_1proc"]["seconds"]
    for t in timings.values():
        t["speedup_vs_loop"] = base / t["seconds"]
    return timings


def print_tables(res: dict) -> None:
    table = Table(title="circuitlab training benchmark (add_mod_113, 30% train)")
    for col in ("measure", "circuitlab", "baseline", "ratio", "target"):
        table.add_column(col)
    g = res.get("grok")
    if g:
        table.add_row(
            "median steps to 99% val (5 seeds)",
            str(g["fast"]["median_steps"]),
            f"nanda {g['nanda']['median_steps']}",
            f"{g['step_ratio_nanda_over_fast']:.1f}x",
            ">= 15x",
        )
        table.add_row(
            "seeds reaching 99%",
            str(g["fast"]["steps_to_99"]),
            str(g["nanda"]["steps_to_99"]),
            "",
            "all",
        )
    w = res.get("wall")
    if w:
        table.add_row(
            "median seconds to 99% (2 threads)", f"{w['median_seconds']:.1f}", "", "", "<= 30 s"
        )
    s = res.get("step")
    if s:
        for k, v in s.items():
            table.add_row(
                f"s/step, {k}",
                f"{v['circuitlab_s']:.4f}",
                f"TL {v['transformer_lens_s']:.4f}",
                f"{v['speedup']:.2f}x",
                ">= 3x",
            )
    m = res.get("many")
    if m:
        v = m["small64"]
        table.add_row(
            "64 small models, model-steps/s",
            f"{v['stack_model_steps_per_s']:.0f} (stack)",
            f"{v['loop_model_steps_per_s']:.0f} (loop)",
            f"{v['speedup']:.1f}x",
            ">= 4x",
        )
        for name, steps in (("nanda4", 60), ("nanda4_long", 400)):
            for k, v in m.get(name, {}).items():
                table.add_row(
                    f"4 Nanda models x{steps} steps: {k}",
                    f"{v['seconds']:.1f}s ({v['strategy']}, {v.get('workers', '?')} proc)",
                    f"loop {m[name]['loop_1proc']['seconds']:.1f}s",
                    f"{v['speedup_vs_loop']:.2f}x",
                    ">= 1x",
                )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="grok,wall,step,many", help="comma list of: grok, wall, step, many"
    )
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    res = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    res["machine"] = {
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "step" in parts:
            res["step"] = bench_step()
            RESULTS.write_text(json.dumps(res, indent=2))
        if "many" in parts:
            res["many"] = bench_many(root / "many")
            RESULTS.write_text(json.dumps(res, indent=2))
        if "wall" in parts:
            res["wall"] = bench_wall([int(s) for s in args.seeds.split(",")], root / "wall")
            RESULTS.write_text(json.dumps(res, indent=2))
        if "grok" in parts:
            res["grok"] = bench_grok([int(s) for s in args.seeds.split(",")], root / "grok")
            RESULTS.write_text(json.dumps(res, indent=2))
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.write_text(json.dumps(res, indent=2))
    print_tables(res)


if __name__ == "__main__":
    main()
