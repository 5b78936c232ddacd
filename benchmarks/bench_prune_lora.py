"""Pruning and LoRA on grokked add_mod_113 against issue 15's targets.

    python benchmarks/bench_prune_lora.py                      # every part, seeds 0-2
    python benchmarks/bench_prune_lora.py lora --seeds 0       # one part, one seed

Parts (each merges its results into benchmarks/results/prune_lora.json as it finishes):
 - magnitude: one-shot global magnitude pruning, and gradual magnitude pruning with masked
   fine-tuning (2 rounds per point, <= 300 fast-recipe steps per round, stopping at 100%
   validation); target 100% accuracy on all p^2 inputs at >= 95% of weight entries removed.
 - magnitude-principal: the same target with the weights first rewritten, exactly, in their
   principal and balanced basis (`--basis principal`): one-shot curve, then 95% and 97% with
   masked fine-tuning (<= 3,000 steps at lr 3e-4, stopping at 100% validation), and as control
   the trained basis at 95% with the same fine-tuning.
 - structured: MLP neurons removed by mean-ablation importance (no fine-tuning) against the
   number of key-frequency neurons of the Fourier analysis; attention heads one at a time.
 - tickets-sweep: `fast` grokking tickets (mask from the grokked model, weights rewound to
   init, same recipe and seed) at 20-80% sparsity and at 40% in 3 rounds, seeds 0-2: how the
   ticket sparsity (TICKET_SPARSITY, 30%) was chosen.
 - tickets-fast, tickets-nanda: tickets at TICKET_SPARSITY against the dense run, for `fast`
   (seeds given and held-out seeds 3, 4) and `nanda`; target <= 1/2 of the dense steps.
 - lora: add_mod_113 -> sub_mod_113 adapters (LORA_*: ranks 1/1/8/4 on W_Q/K/V/O and 3 on
   W_pos, scale 8, lr 8e-3, weight decay 0.3; up to 1,500 steps) against
   sub_mod_113 trained from scratch with `fast` (same seed); target >= 99% validation, <= 5%
   trainable, fewer steps; and a 600-step trial of add -> mul_mod_113.
 - compare: extract the parent, a pruned child and the sub adapter, and compare circuits.

Parents are trained into --work (reused when already there: the same recipe and seed give the
same weights, so the dense baseline is the parent run itself); finished sweeps and adapters are
read back instead of rerun, so an interrupted benchmark resumes. A summary table ends it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from circuitlab.training import RunSpec, get_recipe, read_run
from circuitlab.training.parallel import train_many

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "prune_lora.json"
TASK = "add_mod_113"
PARTS = (
    "magnitude",
    "magnitude-principal",
    "structured",
    "tickets-sweep",
    "tickets-fast",
    "tickets-nanda",
    "lora",
    "compare",
)
# Grokking tickets: Minegishi et al.'s released config is 40%; with `fast` it passed on 2 of 3
# seeds (seed 0's ticket hovered below 99% until step 260). The sweep part (seeds 0-2) found 20%
# and 30% within the target on all three; 30% is used, and checked on seeds 3 and 4, which
# took no part in choosing it.
TICKET_SPARSITY = 0.3
SWEEP_SPARSITIES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
HELD_OUT_SEEDS = (3, 4)
# LoRA add -> sub: subtraction must read a and b apart, and the add model's heads treat them
# alike (0.50/0.50). Rank 4 on the attention Q/K/V/O (4.5% of the parameters) plateaued at
# 94-95% on seeds 0 and 1 whatever the lr, weight decay or scale (README). What worked: the
# positional embedding as a target (rank 3, full: the positions are what tells a from b), a
# wider value map (rank 8 on W_V), rank 1 on W_Q and W_K, 4 on W_O, scale alpha/rank = 8, a
# constant lr of 8e-3 and weight decay 0.3 on the adapter: 9,353 parameters (4.1%). Found on
# seed 0 (trials in the README); seeds 1 and 2 then passed on their first run.
LORA_RANK = 4
LORA_ALPHA = 32.0
LORA_TARGETS = ("W_Q", "W_K", "W_V", "W_O", "W_pos")
LORA_RANKS = (("W_Q", 1), ("W_K", 1), ("W_V", 8), ("W_pos", 3))
LORA_LR = 8e-3
LORA_WEIGHT_DECAY = 0.3
LORA_STEPS = 1500


def parent(work: Path, task: str, recipe: str, seed: int) -> Path:
    run = work / "runs" / task / f"{recipe}-seed{seed}"
    while run.with_name(run.name + ".lock").exists():  # another process is training it
        time.sleep(10)
    if not (run / "summary.json").is_file():
        print(f"training {run}", flush=True)
        train_many(
            [RunSpec(task, get_recipe(recipe), seed, run)], workers=1, resume=True, threads=1
        )
    return run


def save(part: str, data: dict) -> None:
    """Merge one part's results into RESULTS (parts may run per seed, in parallel)."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "bench_prune_lora.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        results.setdefault(part, {}).update(data)
        results["machine"] = "2-core CPU shared with other jobs (load 8-11); 1 torch thread"
        tmp = RESULTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n")
        tmp.replace(RESULTS)


def sweep(run: Path, config, out: Path) -> list[dict]:
    """The curve of one pruning sweep, run unless its curve.json is already there (so an
    interrupted benchmark resumes sweep by sweep)."""
    from circuitlab.training.prune import prune, sweep_dir

    curve = sweep_dir(run, config, out) / "curve.json"
    if not curve.is_file():
        prune(run, config, out, overwrite=True)
    return json.loads(curve.read_text())["points"]


def magnitude(work: Path, seeds: list[int]) -> dict:
    from circuitlab.training.prune import PruneConfig

    out = {}
    for seed in seeds:
        run = parent(work, TASK, "fast", seed)
        start = time.perf_counter()
        one = sweep(
            run,
            PruneConfig("magnitude", (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)),
            work / "prune" / f"oneshot{seed}",
        )
        grad = sweep(
            run,
            PruneConfig("magnitude", (0.8, 0.9, 0.95, 0.97), finetune=300, rounds=2),
            work / "prune" / f"gradual{seed}",
        )
        perfect = [p["weight_sparsity"] for p in grad if p["acc_all"] == 1.0]
        out[f"seed{seed}"] = {
            "one_shot": [(p["sparsity"], p["acc_all"]) for p in one],
            "gradual": [
                {
                    "sparsity": p["sparsity"],
                    "weight_sparsity": p["weight_sparsity"],
                    "acc_all": p["acc_all"],
                    "finetune_steps_last_round": p["steps"],
                }
                for p in grad
            ],
            "max_sparsity_at_100pct": max(perfect, default=None),
            "wall_s": round(time.perf_counter() - start, 1),
        }
        print(seed, json.dumps(out[f"seed{seed}"]), flush=True)
        save("magnitude", {f"seed{seed}": out[f"seed{seed}"]})
    return out


def magnitude_principal(work: Path, seeds: list[int]) -> dict:
    """The principal basis one-shot, then fine-tuned (straight to 95% from the rewritten
    parent, then 97% from there), and the trained basis with the same fine-tuning as control."""
    from circuitlab.training.prune import PruneConfig

    out = {}
    tune = dict(finetune=3000, finetune_lr=3e-4)
    for seed in seeds:
        run = parent(work, TASK, "fast", seed)
        start = time.perf_counter()
        one = sweep(
            run,
            PruneConfig("magnitude", (0.5, 0.7, 0.8, 0.9, 0.95, 0.97), basis="principal"),
            work / "prune" / f"principal-oneshot{seed}",
        )
        tuned = sweep(
            run,
            PruneConfig("magnitude", (0.95, 0.97), basis="principal", **tune),
            work / "prune" / f"principal-ft{seed}",
        )
        control = sweep(
            run, PruneConfig("magnitude", (0.95,), **tune), work / "prune" / f"standard-ft{seed}"
        )
        perfect = [p["weight_sparsity"] for p in tuned if p["acc_all"] == 1.0]
        out[f"seed{seed}"] = {
            "one_shot": [(p["sparsity"], p["acc_all"]) for p in one],
            "finetuned": [
                {
                    "sparsity": p["sparsity"],
                    "weight_sparsity": p["weight_sparsity"],
                    "acc_all": p["acc_all"],
                    "finetune_steps": p["steps"],
                }
                for p in tuned
            ],
            "trained_basis_same_finetune": [
                {"sparsity": p["sparsity"], "acc_all": p["acc_all"], "finetune_steps": p["steps"]}
                for p in control
            ],
            "finetune": {"max_steps": tune["finetune"], "lr": tune["finetune_lr"]},
            "max_sparsity_at_100pct": max(perfect, default=None),
            "wall_s": round(time.perf_counter() - start, 1),
        }
        print(seed, json.dumps(out[f"seed{seed}"]), flush=True)
        save("magnitude-principal", {f"seed{seed}": out[f"seed{seed}"]})
    return out


def key_neurons(run: Path) -> dict:
    """Fourier analysis of the MLP: live neurons >= 85% explained by one key frequency."""
    from circuitlab.extraction.fourier import activation_grid, key_frequencies, unit_frequencies
    from circuitlab.tasks import get_task
    from circuitlab.training import load_run

    info, model = load_run(run)
    data = get_task(info.task).dataset()
    _, cache = model.run_with_cache(data.inputs, names="blocks.0.mlp.hook_post")
    acts = cache["blocks.0.mlp.hook_post"][:, -1]
    units = unit_frequencies(activation_grid(acts, data.inputs, 113))
    keys = key_frequencies(model.param("embed.W_E")[:113].detach()).frequencies
    live = units.variance > 0
    key = live & (units.purity >= 0.85) & torch.isin(units.dominant, torch.tensor(keys))
    return {"keys": list(keys), "live": int(live.sum()), "key_neurons": int(key.sum())}


def structured(work: Path, seeds: list[int]) -> dict:
    from circuitlab.training.prune import PruneConfig, prune

    out = {}
    for seed in seeds:
        run = parent(work, TASK, "fast", seed)
        fourier = key_neurons(run)
        kept = sorted({fourier["key_neurons"], 256, 192, 128, 96, 64}, reverse=True)
        sparsities = tuple(1 - k / 512 for k in kept)
        _, pts = prune(
            run,
            PruneConfig("neurons", sparsities),
            work / "prune" / f"neurons{seed}",
            overwrite=True,
        )
        _, tuned = prune(
            run,
            PruneConfig("neurons", sparsities[1:], finetune=100),
            work / "prune" / f"neurons-ft{seed}",
            overwrite=True,
        )
        _, heads = prune(
            run, PruneConfig("heads", (0.25, 0.5)), work / "prune" / f"heads{seed}", overwrite=True
        )
        curve = [{"kept": p.extra["units_kept"], "acc_all": p.acc_all} for p in pts]
        curve_ft = [
            {"kept": p.extra["units_kept"], "acc_all": p.acc_all, "steps": p.steps} for p in tuned
        ]
        out[f"seed{seed}"] = {
            "fourier": fourier,
            "neurons": curve,
            "neurons_finetuned_100": curve_ft,
            "fewest_neurons_at_100pct": min(
                (c["kept"] for c in curve if c["acc_all"] == 1.0), default=None
            ),
            "fewest_neurons_at_100pct_finetuned": min(
                (c["kept"] for c in curve_ft if c["acc_all"] == 1.0), default=None
            ),
            "heads": [{"removed": 4 - p.extra["units_kept"], "acc_all": p.acc_all} for p in heads],
        }
        print(seed, json.dumps(out[f"seed{seed}"]), flush=True)
    return out


def first_step(run: Path, threshold: float) -> int | None:
    """First logged step with validation accuracy >= threshold."""
    from circuitlab.training import read_metrics

    return next((r["step"] for r in read_metrics(run) if (r["val_acc"] or 0) >= threshold), None)


def ticket(work: Path, recipe: str, seed: int, sparsity: float, rounds: int = 1) -> dict:
    """A grokking ticket of the `recipe` parent of `seed` against its dense run (read back when
    its sweep is there: the sweep part and tickets-fast share the 30% tickets)."""
    from circuitlab.training.prune import PruneConfig

    run = parent(work, TASK, recipe, seed)
    dense = read_run(run).summary
    start = time.perf_counter()
    # budget: the dense run's grokking step (the target is half of it), 3x for `fast`'s short
    # runs; the recipes train on to 100% validation, which a ticket may hover just under for
    # thousands of steps
    budget = max(dense["grokked_at"] or dense["steps"], 100) * (3 if recipe == "fast" else 1)
    config = PruneConfig("lottery", (sparsity,), rounds=rounds, max_steps=budget)
    name = f"{seed}" if (sparsity, rounds) == (TICKET_SPARSITY, 1) else f"{seed}-s{sparsity}"
    name += f"-r{rounds}" if rounds > 1 else ""
    (p,) = sweep(run, config, work / "tickets" / recipe / name)
    return {
        "dense_grokked_at": dense["grokked_at"],
        "ticket_grokked_at": p["grokked_at"],
        "ratio": (
            None
            if p["grokked_at"] is None or not dense["grokked_at"]
            else p["grokked_at"] / dense["grokked_at"]
        ),
        "dense_val95_at": first_step(run, 0.95),
        "ticket_val95_at": first_step(Path(p["run"]), 0.95),
        "ticket_acc_all": p["acc_all"],
        "sparsity": sparsity,
        "rounds": rounds,
        "budget": budget,
        "wall_s": round(time.perf_counter() - start, 1),
    }


def tickets(work: Path, seeds: list[int], recipe: str) -> dict:
    """Tickets at TICKET_SPARSITY for `seeds` and, for `fast`, the held-out seeds."""
    extra = HELD_OUT_SEEDS if recipe == "fast" else ()
    out = {}
    for seed in [*seeds, *(s for s in extra if s not in seeds)]:
        out[f"seed{seed}"] = ticket(work, recipe, seed, TICKET_SPARSITY)
        out[f"seed{seed}"]["held_out"] = seed in extra
        print(recipe, seed, out[f"seed{seed}"], flush=True)
    return out


def ticket_sweep(work: Path, seeds: list[int]) -> dict:
    """`fast` tickets at every sparsity of SWEEP_SPARSITIES (one round) and at 40% in 3 rounds
    of iterative magnitude pruning: how TICKET_SPARSITY was chosen, on seeds 0-2 only."""
    out: dict = {}
    for seed in seeds:
        rows = [ticket(work, "fast", seed, s) for s in SWEEP_SPARSITIES]
        rows.append(ticket(work, "fast", seed, 0.4, rounds=3))
        out[f"seed{seed}"] = [
            {
                k: r[k]
                for k in ("sparsity", "rounds", "ticket_grokked_at", "ratio", "ticket_acc_all")
            }
            for r in rows
        ]
        print("sweep", seed, out[f"seed{seed}"], flush=True)
    return out


def grokked(work: Path, task: str, seed: int) -> dict:
    """A from-scratch `fast` run's first step at 99% validation, trained here if missing; read
    from its metrics so far when another process is still training it."""
    run = work / "runs" / task / f"fast-seed{seed}"
    partial = run.with_name(run.name + ".partial")
    if not (run / "summary.json").is_file() and partial.is_dir():
        from circuitlab.training import read_metrics

        rows = read_metrics(partial, torn_tail=True)
        return {
            "grokked_at": first_step(partial, 0.99),
            "finished": False,
            "steps_so_far": rows[-1]["step"],
            "val_acc_now": rows[-1]["val_acc"],
        }
    summary = read_run(parent(work, task, "fast", seed)).summary
    return {"grokked_at": summary["grokked_at"], "finished": True, "steps": summary["steps"]}


def adapted(base: Path, task: str, seed: int, out: Path, max_steps: int = LORA_STEPS) -> dict:
    """Summary of the LoRA run base -> task (trained unless already there)."""
    from circuitlab.training.lora import LORA_RECIPE, LoraSpec, adapt, default_dir

    run = default_dir(base, task, LORA_RANK, out)
    if not (run / "summary.json").is_file():
        recipe = LORA_RECIPE.replace(
            max_steps=max_steps, lr=LORA_LR, weight_decay=LORA_WEIGHT_DECAY
        )
        spec = LoraSpec(
            rank=LORA_RANK,
            alpha=LORA_ALPHA,
            targets=LORA_TARGETS,
            recipe=recipe,
            seed=seed,
            ranks=LORA_RANKS,
        )
        adapt(base, task, spec, out, overwrite=True)
    summary = read_run(run).summary
    return {
        "rank": LORA_RANK,
        "alpha": LORA_ALPHA,
        "targets": list(LORA_TARGETS),
        "ranks": dict(LORA_RANKS),
        "lr": LORA_LR,
        "weight_decay": LORA_WEIGHT_DECAY,
        "lora_grokked_at": summary["grokked_at"],
        "steps": summary["steps"],
        "val_acc": summary["final"]["val_acc"],
        "best_val_acc": max(r["val_acc"] for r in read_metrics_of(run)),
        **summary["lora"],
        "merge": summary["merge_check"],
        "run": str(run),
        "wall_s": summary["wall_time_s"],
    }


def read_metrics_of(run: Path) -> list[dict]:
    from circuitlab.training import read_metrics

    return read_metrics(run)


def lora(work: Path, seeds: list[int]) -> dict:
    out = {}
    for seed in seeds:
        base = parent(work, TASK, "fast", seed)
        result = adapted(base, "sub_mod_113", seed, work / "lora" / f"seed{seed}")
        result["scratch"] = grokked(work, "sub_mod_113", seed)
        out[f"seed{seed}"] = result
        print(seed, out[f"seed{seed}"], flush=True)
        save("lora", {f"seed{seed}": result})
    if 0 in seeds:
        # a short trial: the point is whether the add circuit helps at all
        result = adapted(
            parent(work, TASK, "fast", 0), "mul_mod_113", 0, work / "lora" / "mul", max_steps=600
        )
        result["scratch"] = grokked(work, "mul_mod_113", 0)
        out["mul_seed0"] = result
        print("mul", result, flush=True)
        save("lora", {"mul_seed0": result})
    return out


def compare_part(work: Path) -> dict:
    from circuitlab.extraction.pipeline import extract
    from circuitlab.training.compare import compare

    base = parent(work, TASK, "fast", 0)
    children = {
        "pruned": work / "prune" / "gradual0" / "fast-seed0-prune-magnitude" / "s0.9",
        "sub_adapter": work / "lora" / "seed0" / f"fast-seed0-lora-sub_mod_113-r{LORA_RANK}",
    }
    out = {}
    for run in (base, *children.values()):
        if run.is_dir() and not (run / "extraction" / "circuit.json").is_file():
            extract(run, None)
    for name, child in children.items():
        if child.is_dir():
            r = compare(base, child)
            r["feature_overlap"].pop("pairs", None)
            out[name] = r
            print(
                name,
                json.dumps(
                    {
                        k: r[k]
                        for k in (
                            "key_frequencies",
                            "circuit_frequencies",
                            "sufficiency",
                            "necessity",
                            "circuit_size",
                        )
                    }
                ),
                flush=True,
            )
    return out


def table() -> None:
    """The targets, one line each, from the results file."""
    r = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    rows = []
    for seed, m in sorted(r.get("magnitude", {}).items()):
        curve = ", ".join(f"{p['sparsity']:.0%}: {p['acc_all']:.2%}" for p in m["gradual"])
        rows.append(("magnitude 100% at >=95%", seed, curve))
    for seed, m in sorted(r.get("magnitude-principal", {}).items()):
        one = ", ".join(f"{s:.0%}: {a:.2%}" for s, a in m["one_shot"] if s >= 0.9)
        tuned = ", ".join(f"{p['sparsity']:.0%}: {p['acc_all']:.2%}" for p in m["finetuned"])
        control = ", ".join(
            f"{p['sparsity']:.0%}: {p['acc_all']:.2%}" for p in m["trained_basis_same_finetune"]
        )
        rows.append(
            (
                "principal basis, 100% >=95%",
                seed,
                f"one-shot {one}; fine-tuned {tuned}; trained basis, same fine-tuning {control}",
            )
        )
    for seed, m in sorted(r.get("structured", {}).items()):
        rows.append(
            (
                "neurons ~ Fourier count",
                seed,
                f"key neurons {m['fourier']['key_neurons']}: fewest at 100% "
                f"{m['fewest_neurons_at_100pct']} "
                f"(fine-tuned {m['fewest_neurons_at_100pct_finetuned']})",
            )
        )
    for seed, sweep in sorted(r.get("tickets-sweep", {}).items()):
        text = ", ".join(
            f"{t['sparsity']:.0%}{'x' + str(t['rounds']) if t['rounds'] > 1 else ''}: "
            + (f"{t['ratio']:.2f}" if t["ratio"] is not None else "never")
            for t in sweep
        )
        rows.append(("ticket sweep, ratio", seed, text))
    for part in ("tickets-fast", "tickets-nanda"):
        for seed, t in sorted(r.get(part, {}).items()):
            rows.append(
                (
                    f"{part} <= 1/2 steps",
                    seed + (" (held out)" if t.get("held_out") else ""),
                    f"{t['sparsity']:.0%}: 99% at {t['ticket_grokked_at']} vs dense "
                    f"{t['dense_grokked_at']}",
                )
            )
    for seed, m in sorted(r.get("lora", {}).items()):
        rows.append(
            (
                "lora >=99%, <=5%, faster",
                seed,
                f"best val {m['best_val_acc']:.2%} in {m['steps']} steps, "
                f"{m['trainable_fraction']:.1%} trainable; scratch 99% at "
                f"{m['scratch']['grokked_at']}; merge diff {m['merge']['max_abs_logit_diff']:.1e}",
            )
        )
    for target, seed, text in rows:
        print(f"{target:<26} {seed:<10} {text}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("parts", nargs="*", help=f"some of: {', '.join(PARTS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--work", type=Path, default=HERE / "runs" / "prune_lora")
    args = ap.parse_args()
    if set(args.parts) - set(PARTS):
        ap.error(f"unknown part(s) {sorted(set(args.parts) - set(PARTS))}; choose from {PARTS}")
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    for part in args.parts or PARTS:
        print(f"--- {part}", flush=True)
        if part == "magnitude":
            save(part, magnitude(args.work, seeds))
        elif part == "magnitude-principal":
            save(part, magnitude_principal(args.work, seeds))
        elif part == "structured":
            save(part, structured(args.work, seeds))
        elif part == "tickets-sweep":
            save(part, ticket_sweep(args.work, seeds))
        elif part.startswith("tickets-"):
            save(part, tickets(args.work, seeds, part.split("-", 1)[1]))
        elif part == "lora":
            save(part, lora(args.work, seeds))
        elif part == "compare":
            save(part, compare_part(args.work))
    table()


if __name__ == "__main__":
    sys.exit(main())
