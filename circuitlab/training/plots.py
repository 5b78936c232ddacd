"""Training curves as a PNG: loss (log scale), accuracy and weight norm against step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_curves(
    metrics: list[dict[str, Any]], path: Path, title: str = "", grokked_at: int | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> list[float]:  # null (no validation set) plots as a gap
        return [math.nan if m.get(key) is None else m[key] for m in metrics]

    steps = [m["step"] for m in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for split, style in (("train", "-"), ("val", "--")):
        axes[0].plot(steps, [max(v, 1e-8) for v in series(f"{split}_loss")], style, label=split)
        axes[1].plot(steps, series(f"{split}_acc"), style, label=split)
    axes[2].plot(steps, [m["weight_norm"] for m in metrics], color="tab:green")
    axes[0].set_yscale("log")
    for ax, label in zip(axes, ("loss", "accuracy", "weight norm"), strict=True):
        ax.set_xlabel("step")
        ax.set_title(label)
        if grokked_at is not None:
            ax.axvline(grokked_at, color="grey", lw=0.8, ls=":")
    axes[0].legend()
    if grokked_at is not None:
        axes[1].annotate(f"99% val at {grokked_at}", (grokked_at, 0.5), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
