"""circuitlab: grok small algorithmic transformers, extract their circuits, catalog, compose."""

import os

__version__ = "0.1.0"

# MKL picks its matmul kernels by memory alignment unless told not to, and a model's slice of a
# stacked tensor is not aligned the way a lone tensor is: without this, a model trained in a
# stack drifts from the same model trained alone by one ulp per step (seen for a p = 7 output
# layer, 14 x 128 @ 128 x 7). Strict conditional numerical reproducibility (MKL_CBWR) makes the
# result independent of alignment and thread count, at no measured cost. MKL reads it on its
# first call, so it must be set before any matmul; a user's own setting wins.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")


def __getattr__(name: str):
    # `circuitlab.Library` without importing torch for every `import circuitlab` (the CLI)
    if name == "Library":
        from circuitlab.compose import Library

        return Library
    raise AttributeError(f"module 'circuitlab' has no attribute {name!r}")
