"""Composition benchmark (issue 11): circuits called and chained as functions.

    python benchmarks/bench_compose.py          # trains and extracts what is missing (~6 min)

Models live in runs/compose/ (trained on first use, `fast` recipe, seed 0; mod-31 tasks with
half the pairs for training) and their circuits in runs/compose/catalog.db. Measures:

1. (a*b + c) mod 31 composed from the mul_mod_31 and add_mod_31 circuits on all 29,791 inputs,
   against the symbolic reference, beside a model trained directly on synth_mod_31[a*b+c]
   (its number comes from benchmarks/results/tasks.json, written by bench_tasks.py);
2. the same composition mod 113 on all 1,442,897 inputs: agreement, time, and the program
   runner's overhead over calling the same circuits by hand;
3. mirror(rot90(x)) on every 3x3 grid of 3 colours from the grid circuits;
4. type mismatches refused before running; the trace of one call;
5. latent chaining add -> mul (mod 31 and 113) against token-level chaining on all inputs,
   and a circuit stitched to itself.
Writes benchmarks/results/compose.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "runs" / "compose"
CATALOG = ROOT / "catalog.db"
RESULTS = REPO / "benchmarks" / "results"
# task -> recipe overrides
RUNS = {
    "add_mod_31": {"train_fraction": 0.5},
    "mul_mod_31": {"train_fraction": 0.5},
    "add_mod_113": {},
    "mul_mod_113": {},
    "grid_rot90_3x3": {},
    "grid_mirror_3x3": {},
}


def run_dir(task: str) -> Path:
    over = RUNS[task]
    name = "fast" + "".join(f"-{k}{v}" for k, v in over.items()) + "-seed0"
    return ROOT / task / name


def ensure_circuits(say) -> None:
    """Train and extract whatever is missing (the CLI's own code paths)."""
    from circuitlab.extraction import extract
    from circuitlab.training import RunSpec, get_recipe
    from circuitlab.training.parallel import train_many

    for task, over in RUNS.items():
        run = run_dir(task)
        if not (run / "summary.json").is_file():
            say(f"training {task} into {run}")
            spec = RunSpec(task, get_recipe("fast").replace(**over), 0, run)
            train_many([spec], workers=1, resume=True)
        if not (run / "extraction" / "circuit.json").is_file():
            say(f"extracting {run}")
            extract(run, str(CATALOG))


def timed(fn, *args, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - start)
    return out, best


def all_triples(p: int) -> list[np.ndarray]:
    return [g.reshape(-1) for g in np.meshgrid(*(np.arange(p),) * 3, indexing="ij")]


def modular(lib, p: int) -> dict:
    from circuitlab.compose import Program

    add, mul = lib[f"add_mod_{p}"], lib[f"mul_mod_{p}"]
    program = Program.trace(lambda a, b, c: add(mul(a, b), c), name=f"muladd_{p}")
    a, b, c = all_triples(p)
    truth = (a * b + c) % p
    out, t_program = timed(program, a, b, c)
    _, t_hand = timed(lambda: add(mul(a, b), c))
    model_add, model_mul = (
        lib.circuit(add.catalog_id, "model"),
        lib.circuit(mul.catalog_id, "model"),
    )
    full = model_add(model_mul(a, b), c)
    pairs = [g.reshape(-1) for g in np.meshgrid(np.arange(p), np.arange(p), indexing="ij")]
    return {
        "inputs": int(len(a)),
        "agreement": float(np.mean(out == truth)),
        "agreement_full_models": float(np.mean(full == truth)),
        "add_circuit_accuracy": float(np.mean(add(*pairs) == (pairs[0] + pairs[1]) % p)),
        "mul_circuit_accuracy": float(np.mean(mul(*pairs) == (pairs[0] * pairs[1]) % p)),
        "program_seconds": t_program,
        "by_hand_seconds": t_hand,
        "overhead": t_program / t_hand,
        "program": program.to_python(),
        "program_id": lib.save(program),
    }


def grids(lib) -> dict:
    from circuitlab.compose import Program
    from circuitlab.tasks.grid import sample_grids

    rot, mirror = lib["grid_rot90_3x3"], lib["grid_mirror_3x3"]
    program = Program.trace(lambda g: mirror(rot(g)), name="mirror_rot90_3x3")
    x = sample_grids(3, 3, 3)
    truth = np.flip(np.rot90(x, 1, axes=(1, 2)), axis=2)
    out, seconds = timed(program, x, repeat=1)
    exact = (out == truth).reshape(len(x), -1).all(1)
    rot_m, mirror_m = lib.circuit(rot.catalog_id, "model"), lib.circuit(mirror.catalog_id, "model")
    models = Program.trace(lambda g: mirror_m(rot_m(g)), name="mirror_rot90_models")(x)

    def grid_exact(fn, want):
        return float((fn(x) == want).reshape(len(x), -1).all(1).mean())

    return {
        "inputs": int(len(x)),
        "agreement": float(exact.mean()),
        "agreement_models": float((models == truth).reshape(len(x), -1).all(1).mean()),
        "rot90_circuit_grid_accuracy": grid_exact(rot, np.rot90(x, 1, axes=(1, 2))),
        "mirror_circuit_grid_accuracy": grid_exact(mirror, x[:, :, ::-1]),
        "mirror_circuit_cell_accuracy": mirror.circuit.record.metrics.accuracy,
        "seconds": seconds,
        "circuits": {
            "rot90_features": rot.circuit.n_features,
            "mirror_features": mirror.circuit.n_features,
        },
        "program": program.to_python(),
    }


def refusals(lib) -> dict:
    from circuitlab.compose import CompositionError, Program

    add113, mul31, rot = lib["add_mod_113"], lib["mul_mod_31"], lib["grid_rot90_3x3"]
    out = {}
    for name, fn, types in (
        ("Z_113 into Z_31", lambda a, b: mul31(add113(a, b), 1), {}),
        ("grid into number", lambda g: add113(rot(g), 1), {}),
    ):
        try:
            Program.trace(fn, **types)
            out[name] = "accepted (wrong)"
        except CompositionError as exc:
            out[name] = f"refused: {exc}"
    return out


def latent(lib, p: int) -> dict:
    from circuitlab.compose.stitch import LatentChain, fit_adapter, self_stitch

    add, mul = lib[f"add_mod_{p}"], lib[f"mul_mod_{p}"]
    a, b, c = all_triples(p)
    truth = ((a + b) * c) % p
    token = mul(add(a, b), c)
    out = {"inputs": int(len(a)), "token_level_accuracy": float(np.mean(token == truth))}
    for site in ("resid", "probs"):
        start = time.perf_counter()
        adapter = fit_adapter(add, mul, "a", site=site)
        chained = LatentChain(add, mul, adapter)(a, b, c)
        out[site] = {
            "accuracy": float(np.mean(chained == truth)),
            "agreement_with_token_level": float(np.mean(chained == token)),
            "fit_error": adapter.fit_error,
            "seconds": time.perf_counter() - start,
        }
    out["self_stitch"] = self_stitch(add)
    return out


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    from circuitlab.compose import Library

    console = Console()
    ensure_circuits(lambda m: console.print(m))
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M")}
    with Library(str(CATALOG)) as lib:
        results["mod31"] = modular(lib, 31)
        results["mod113"] = modular(lib, 113)
        results["grid"] = grids(lib)
        results["refusals"] = refusals(lib)
        value, trace = lib.program(results["mod113"]["program_id"]).run(37, 75, 12, trace=True)
        results["trace"] = {"value": int(value), "text": trace.to_text()}
        results["latent31"] = latent(lib, 31)
        results["latent113"] = latent(lib, 113)
    tasks = RESULTS / "tasks.json"
    if tasks.is_file():
        rows = json.loads(tasks.read_text())["runs"]
        results["direct_synth_mod_31"] = next(
            (r for r in rows if r.get("task") == "synth_mod_31[a*b+c]"), None
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compose.json").write_text(json.dumps(results, indent=2) + "\n")

    table = Table(title="composition (issue 11)")
    for col in ("measure", "circuitlab", "baseline / target"):
        table.add_column(col)
    m31, m113, g = results["mod31"], results["mod113"], results["grid"]
    direct = results.get("direct_synth_mod_31") or {}
    table.add_row(
        "(a*b+c) mod 31, all 29,791 inputs",
        f"{m31['agreement']:.4f} composed circuits",
        f"model trained on synth_mod_31[a*b+c]: {direct.get('best_val_acc', 'n/a')} (bench_tasks)",
    )
    table.add_row(
        "(a*b+c) mod 113, all 1,442,897 inputs",
        f"{m113['agreement']:.4f} in {m113['program_seconds']:.2f} s",
        f"circuits alone: add {m113['add_circuit_accuracy']:.4f}, mul "
        f"{m113['mul_circuit_accuracy']:.4f}; <= 30 s",
    )
    table.add_row(
        "program runner over calling by hand",
        f"{m113['overhead']:.2f}x ({m113['by_hand_seconds']:.2f} s by hand)",
        "<= 1.5x",
    )
    table.add_row(
        "mirror(rot90(x)), all 19,683 3x3 grids",
        f"circuits {g['agreement']:.4f}, models {g['agreement_models']:.4f}",
        f"exact (mirror circuit: {g['mirror_circuit_cell_accuracy']:.4f} of cells, "
        f"{g['mirror_circuit_grid_accuracy']:.4f} of grids)",
    )
    for p in (31, 113):
        lat = results[f"latent{p}"]
        table.add_row(
            f"latent add->mul mod {p} (probs / resid)",
            f"{lat['probs']['accuracy']:.4f} / {lat['resid']['accuracy']:.4f}",
            f"token-level {lat['token_level_accuracy']:.4f} (within 1 point)",
        )
    table.add_row(
        "self-stitch (relative error, agreement)",
        f"{results['latent113']['self_stitch']['relative_error']:.4f}, "
        f"{results['latent113']['self_stitch']['agreement']:.4f}",
        "~0, 1",
    )
    console.print(table)
    for name, verdict in results["refusals"].items():
        console.print(f"{name}: {verdict}")
    console.print(results["trace"]["text"], highlight=False)


if __name__ == "__main__":
    main()
