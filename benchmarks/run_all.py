"""Every benchmark in turn (`make bench`): each writes its JSON into benchmarks/results/ and
prints its own comparison table; this prints how each ended and how long it took.

    python benchmarks/run_all.py                    # everything (well over an hour on 2 cores)
    python benchmarks/run_all.py catalog registry   # some of them

The extraction-side benchmarks share one grokked model (benchmarks/_shared.py), trained first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name -> extra arguments; cheapest first so a failure shows early
BENCHMARKS: dict[str, list[str]] = {
    "registry": [],
    "solver": [],
    "catalog": [],
    "extraction": [],
    "compose": [],
    "explorer": [],
    "memory": [],
    "interpret": [],
    "groups": [],
    "cellmap": [],
    "transcoder": [],
    "attribution": ["--train", "256"],
    "faults": [],
    "tasks": [],
    "training": [],
    "roofline": [],
    "ray": [],
    "prune_lora": [],
    "tune": [],
    "recipes": [],
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help=f"some of: {', '.join(BENCHMARKS)}")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    ended = []
    for name in args.names or BENCHMARKS:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        script = HERE / f"bench_{name}.py"
        code = subprocess.call([sys.executable, str(script), *BENCHMARKS[name]])
        ended.append((name, code, time.perf_counter() - start))
    print("\nbenchmark     exit  minutes")
    for name, code, seconds in ended:
        print(f"{name:<13} {code:>4}  {seconds / 60:7.1f}")
    sys.exit(max(code for _, code, _ in ended))


if __name__ == "__main__":
    main()
