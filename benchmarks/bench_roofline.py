"""Roofline benchmark (issue 19): how close a training step comes to this CPU's matmul peak, in
fp32 and bf16 (recipe field `precision`).

1. Peak: GFLOP/s of large square matmuls (fp32, and bf16 tensors straight to torch), with 1 and 2
   torch threads, the median of repeats after a warm-up.
2. One optimizer step of: the Nanda configuration (add_mod_113, recipe fast, full batch), a
   2-layer model (recipe deep, add_mod_113, full batch), 64 stacked tiny models (d_model 32,
   add_mod_59, batch 64), and one step of transcoder training (default config, on the
   activations of the Nanda-size model): FLOPs counted by torch's FlopCounterMode (matmuls and
   attention kernels; element-wise work is not counted), seconds per step (median after
   warm-up, 2 torch threads), achieved GFLOP/s and its fraction of the peak of the same
   precision at 2 threads, and the bf16 / fp32 speed-up.
3. Whole trainings: the default transcoder on the shared grokked model's activations (wall time
   and NMSE per precision), and `fast` on add_mod_113 for 5 seeds per precision (steps to 99%
   validation; each model's key frequencies against numpy's DFT of its embedding). The models
   go to benchmarks/runs/roofline/ and are reused; --quick skips this part.

    python benchmarks/bench_roofline.py            # ~5 minutes; run it on an idle machine
    python benchmarks/bench_roofline.py --quick    # tiny sizes, < 1 minute: a smoke test whose
                                                   # numbers mean nothing (written to a temp file)

Writes benchmarks/results/roofline.json (a --quick run: a file in the temp directory, unless
--out says otherwise). The load average at start and end is recorded: on a busy machine every
number here is meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _shared import independent_fourier_keys
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from circuitlab import _precision
from circuitlab.extraction import fourier_fits
from circuitlab.extraction.activations import mlp_activations, task_tokens
from circuitlab.extraction.transcoder import TranscoderConfig, evaluate, train_transcoder
from circuitlab.models import Transformer
from circuitlab.tasks import get_task
from circuitlab.training import RunSpec, get_recipe, load_run, read_run
from circuitlab.training.parallel import train_many
from circuitlab.training.trainer import _Stack, _stack_data

RESULTS = Path(__file__).parent / "results" / "roofline.json"
GROK_RUNS = Path(__file__).parent / "runs" / "roofline"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "circuitlab-roofline-quick.json"
console = Console()
PRECISIONS = ("fp32", "bf16")
STEP_THREADS = 2


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- 1. peak -------------------------------------------------------------------------------
def bench_peak(size: int, repeats: int, warmup: int) -> dict:
    """GFLOP/s of a size x size matmul per precision and thread count."""
    gen = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    out: dict = {"size": size}
    for precision in PRECISIONS:
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        a, b = a32.to(dtype), b32.to(dtype)
        out[precision] = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seconds = median_seconds(lambda a=a, b=b: a @ b, repeats, warmup)
            out[precision][str(threads)] = 2 * size**3 / seconds / 1e9
    return out


# --- 2. training steps ---------------------------------------------------------------------
def step_configs() -> dict[str, dict]:
    tiny = get_recipe("nanda").replace(
        name="tiny", batch_size=64, model=dict(d_model=32, n_heads=4, d_head=8, d_mlp=128)
    )
    return {
        "nanda": {"task": "add_mod_113", "recipe": get_recipe("fast"), "models": 1},
        "deep": {"task": "add_mod_113", "recipe": get_recipe("deep"), "models": 1},
        "tiny64": {"task": "add_mod_59", "recipe": tiny, "models": 64},
    }


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench_model_step(conf: dict, precision: str, repeats: int, warmup: int) -> dict:
    recipe = conf["recipe"].replace(precision=precision)
    specs = [
        RunSpec(conf["task"], recipe, seed, Path(f"/nonexistent/{seed}"))
        for seed in range(conf["models"])
    ]
    x, y, _, _ = _stack_data(specs)
    if recipe.batch_size and recipe.batch_size < x.shape[1]:
        x, y = x[:, : recipe.batch_size], y[:, : recipe.batch_size]
    stack = _Stack(specs, specs[0].model_config())

    def step() -> None:
        stack.step(x, y)

    flops = count_flops(step)
    torch.set_num_threads(STEP_THREADS)
    seconds = median_seconds(step, repeats, warmup)
    return {
        "precision_used": stack.precision_label,
        "batch": int(x.shape[1]),
        "n_params_per_model": stack.cfg.n_params,
        "flops": flops,
        "seconds": seconds,
        "gflops": flops / seconds / 1e9,
    }


def bench_transcoder_step(precision: str, repeats: int, warmup: int) -> dict:
    """One step of transcoder training (default config, no resampling) on the MLP activations
    of an untrained Nanda-size add_mod_113 model (training's cost does not depend on the
    weights). Seconds per step are the gaps between per-step callbacks (each also reads the
    step's loss statistics, a small extra)."""
    recipe = get_recipe("fast")
    spec = RunSpec("add_mod_113", recipe, 0, Path("/nonexistent"))
    model = Transformer(spec.model_config(), seed=0).eval()
    tokens, _ = task_tokens(get_task("add_mod_113"))
    acts = mlp_activations(model, tokens)
    cfg = TranscoderConfig(resample_every=0, precision=precision)
    with FlopCounterMode(display=False) as counter:
        train_transcoder(acts, cfg.replace(steps=1), threads=STEP_THREADS)
    stamps: list[float] = []
    _, log = train_transcoder(
        acts,
        cfg.replace(steps=warmup + repeats + 1),
        callback=lambda step, stats: stamps.append(time.perf_counter()),
        log_every=1,
        threads=STEP_THREADS,
    )
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][warmup:]
    seconds = statistics.median(gaps)
    flops = int(counter.get_total_flops())
    return {
        "precision_used": log.precision,
        "batch": cfg.batch_size,
        "n_features": cfg.n_features,
        "flops": flops,
        "seconds": seconds,
        "gflops": flops / seconds / 1e9,
    }


def add_ratios(entry: dict, peak: dict) -> None:
    for precision in PRECISIONS:
        run = entry[precision]
        top = peak[precision][str(STEP_THREADS)]
        run["peak_fraction"] = run["gflops"] / top if top else None
    entry["speedup_bf16_over_fp32"] = entry["fp32"]["seconds"] / entry["bf16"]["seconds"]


# --- 3. does bf16 training grok as fp32 does? -------------------------------------------------
def bench_grok(seeds: list[int], workers: int) -> dict:
    """`fast` on add_mod_113 per precision and seed, trained into benchmarks/runs/roofline/
    (reused when finished): steps to 99% validation, the median per precision, and whether each
    model's key frequencies equal numpy's DFT of its embedding."""
    task = get_task("add_mod_113")
    specs = {
        (precision, seed): RunSpec(
            "add_mod_113",
            get_recipe("fast").replace(precision=precision),
            seed,
            GROK_RUNS / f"fast-{precision}-seed{seed}",
        )
        for precision in PRECISIONS
        for seed in seeds
    }
    todo = [s for s in specs.values() if not (s.run_dir / "summary.json").is_file()]
    if todo:
        console.print(f"training {len(todo)} model(s) into {GROK_RUNS} ...")
        train_many(todo, workers=workers, resume=True, threads=1)
    out: dict = {p: {"runs": []} for p in PRECISIONS}
    for (precision, seed), spec in specs.items():
        info = read_run(spec.run_dir)
        _, model = load_run(spec.run_dir)
        split = task.split(info.recipe.train_fraction, seed)
        keys = list(
            fourier_fits.analyze(model, task, train_index=split.train_index).keys.frequencies
        )
        truth = independent_fourier_keys(model.param("embed.W_E").detach().numpy(), len(keys))
        out[precision]["runs"].append(
            {
                "seed": seed,
                "precision_used": info.summary.get("precision", precision),
                "grokked_at": info.summary.get("grokked_at"),
                "final_val_acc": info.summary["final"]["val_acc"],
                "keys": keys,
                "independent_keys": truth,
                "keys_match": sorted(keys) == truth,
            }
        )
    for precision in PRECISIONS:
        steps = [r["grokked_at"] for r in out[precision]["runs"]]
        out[precision]["grokked"] = sum(s is not None for s in steps)
        done = [s for s in steps if s is not None]
        out[precision]["median_steps"] = statistics.median(done) if done else None
        out[precision]["keys_match"] = sum(r["keys_match"] for r in out[precision]["runs"])
    fp32, bf16 = out["fp32"]["median_steps"], out["bf16"]["median_steps"]
    out["median_ratio_bf16_over_fp32"] = bf16 / fp32 if fp32 and bf16 else None
    return out


def bench_transcoder_training(threads: int) -> dict:
    """Whole transcoder trainings (default config) per precision on the shared grokked model's
    activations: wall time and the NMSE reached, measured the way extraction measures it."""
    from _shared import shared_run

    _, model = load_run(shared_run())
    tokens, _ = task_tokens(get_task("add_mod_113"))
    acts = mlp_activations(model, tokens)
    out: dict = {}
    for precision in PRECISIONS:
        start = time.perf_counter()
        tc, log = train_transcoder(acts, TranscoderConfig(precision=precision), threads=threads)
        seconds = time.perf_counter() - start
        nmse = evaluate(tc, model, tokens, acts=acts).nmse
        out[precision] = {"precision_used": log.precision, "seconds": seconds, "nmse": nmse}
    out["speedup_bf16_over_fp32"] = out["fp32"]["seconds"] / out["bf16"]["seconds"]
    out["nmse_relative_change"] = out["bf16"]["nmse"] / out["fp32"]["nmse"] - 1
    return out


# --- report ----------------------------------------------------------------------------------
def print_tables(res: dict) -> None:
    peak = res["peak"]
    table = Table(title=f"matmul peak ({peak['size']} x {peak['size']}), GFLOP/s")
    for col in ("precision", "1 thread", "2 threads"):
        table.add_column(col)
    for precision in PRECISIONS:
        table.add_row(precision, *(f"{peak[precision][t]:.1f}" for t in ("1", "2")))
    console.print(table)
    table = Table(title=f"one training step ({STEP_THREADS} torch threads)")
    for col in (
        "step",
        "precision",
        "MFLOP/step",
        "ms/step",
        "GFLOP/s",
        "of peak",
        "bf16 speed-up",
    ):
        table.add_column(col)
    for name, entry in res["steps"].items():
        for precision in PRECISIONS:
            run = entry[precision]
            used = run["precision_used"]
            table.add_row(
                name if precision == "fp32" else "",
                used,
                f"{run['flops'] / 1e6:,.1f}",
                f"{run['seconds'] * 1e3:.2f}",
                f"{run['gflops']:.1f}",
                f"{run['peak_fraction']:.1%}" if run["peak_fraction"] is not None else "-",
                f"{entry['speedup_bf16_over_fp32']:.2f}x" if precision == "bf16" else "",
            )
    console.print(table)
    if "transcoder_training" in res:
        tt = res["transcoder_training"]
        table = Table(title=f"transcoder training, default config ({STEP_THREADS} threads)")
        for col in ("precision", "seconds", "NMSE"):
            table.add_column(col)
        for precision in PRECISIONS:
            run = tt[precision]
            table.add_row(run["precision_used"], f"{run['seconds']:.1f}", f"{run['nmse']:.4f}")
        console.print(table)
        console.print(
            f"bf16 speed-up {tt['speedup_bf16_over_fp32']:.2f}x (target >= 2x), NMSE change "
            f"{tt['nmse_relative_change']:+.1%} (target within 10%)"
        )
    if "grok" in res:
        grok = res["grok"]
        table = Table(title="grokking add_mod_113 with fast: steps to 99% validation")
        for col in ("precision", "steps per seed", "median", "final val", "keys = DFT"):
            table.add_column(col)
        for precision in PRECISIONS:
            entry = grok[precision]
            table.add_row(
                precision,
                " ".join(str(r["grokked_at"]) for r in entry["runs"]),
                str(entry["median_steps"]),
                " ".join(f"{r['final_val_acc']:.3f}" for r in entry["runs"]),
                f"{entry['keys_match']}/{len(entry['runs'])}",
            )
        console.print(table)
        ratio = grok["median_ratio_bf16_over_fp32"]
        if ratio is not None:
            console.print(f"median steps bf16 / fp32 = {ratio:.2f} (target within 20%)")
    load = res["machine"]
    flags = ", ".join(load.get("bf16_cpu_flags", [])) or "none"
    console.print(f"CPU {load['cpu']}; bf16 flags: {flags}")
    console.print(
        f"load average {load['load_average_at_start'][0]:.1f} at the start, "
        f"{load['load_average_at_end'][0]:.1f} at the end (numbers from a busy machine mean "
        "nothing)"
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny peak matmuls and few repeats: a smoke test (< 1 minute), written to a temp "
        "file unless --out is given",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS})")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per measurement")
    parser.add_argument(
        "--grok-seeds", type=int, default=5, help="seeds trained per precision (default 5)"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes training them")
    args = parser.parse_args()
    out_path = args.out or (QUICK_RESULTS if args.quick else RESULTS)
    repeats = args.repeats or (3 if args.quick else 20)
    warmup = 1 if args.quick else 5
    peak_size = 256 if args.quick else 2048
    threads_before = torch.get_num_threads()
    load0 = os.getloadavg()
    start = time.perf_counter()

    res: dict = {"mode": "quick" if args.quick else "full"}
    console.print(f"[bold]peak[/]: {peak_size} x {peak_size} matmuls, 1 and 2 threads")
    res["peak"] = bench_peak(peak_size, repeats=repeats if args.quick else 10, warmup=warmup)
    res["steps"] = {}
    for name, conf in step_configs().items():
        console.print(f"[bold]step[/]: {name} ({conf['task']}, {conf['models']} model(s))")
        entry = {
            "task": conf["task"],
            "recipe": conf["recipe"].name,
            "models": conf["models"],
            **{p: bench_model_step(conf, p, repeats, warmup) for p in PRECISIONS},
        }
        add_ratios(entry, res["peak"])
        res["steps"][name] = entry
    console.print("[bold]step[/]: transcoder (default config, add_mod_113 activations)")
    entry = {
        "task": "add_mod_113",
        **{p: bench_transcoder_step(p, repeats, warmup) for p in PRECISIONS},
    }
    add_ratios(entry, res["peak"])
    res["steps"]["transcoder"] = entry
    if not args.quick:
        console.print("[bold]transcoder training[/]: default config, fp32 and bf16")
        res["transcoder_training"] = bench_transcoder_training(STEP_THREADS)
        seeds = list(range(args.grok_seeds))
        console.print(f"[bold]grokking[/]: fast on add_mod_113, seeds {seeds}, fp32 and bf16")
        res["grok"] = bench_grok(seeds, workers=args.workers)
    torch.set_num_threads(threads_before)

    res["machine"] = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "bf16": _precision.bf16_unsupported("cpu") or "native",
        # AMX tiles roughly double bf16's matmul peak over AVX512-BF16: say which this CPU has
        "bf16_cpu_flags": sorted(
            (_precision._cpu_flags() or set()) & {"avx512_bf16", "amx_bf16", "amx_tile"}
        ),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "load_average_at_start": load0,
        "load_average_at_end": os.getloadavg(),
    }
    res["settings"] = {
        "repeats": repeats,
        "warmup": warmup,
        "step_threads": STEP_THREADS,
        "peak_size": peak_size,
    }
    res["seconds"] = round(time.perf_counter() - start, 1)
    res["date"] = time.strftime("%Y-%m-%d %H:%M")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=2) + "\n")
    print_tables(res)
    console.print(f"wrote {out_path} in {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
