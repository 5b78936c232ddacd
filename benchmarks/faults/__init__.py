"""Modules of the fault-injection benchmark (`python benchmarks/bench_faults.py`).

- `harness.py`: running commands (timeouts, memory cap, another user), killing them, finding
  stray processes, judging stderr, comparing runs and catalogs, recording cases.
- `fixtures.py`: what many cases share, made once per benchmark run (reference runs, a
  reference extraction, a synthetic catalog export, local Bolt servers).
- `issue12.py`: every numbered item of issue 12 as a scenario.
- `kills.py`: random kill -9 of training, extraction and catalog puts, with integrity checks.
- `fuzz.py`: seeded fuzzing of `--set`, config.json and `discover` CSV inputs.
"""
