"""The README's "## Python" example runs as written, with a training budget fit for a test.

Every ```python block of that section is executed in order, in one namespace, in a temporary
working directory. The only change: `get_recipe` returns the requested recipe with a few steps,
so `train_stack` finishes in about a second instead of training to 100% validation accuracy.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import circuitlab.training
import circuitlab.training.recipe

README = Path(__file__).resolve().parent.parent / "README.md"
STEPS = 20


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of the README section headed `## {section}`."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {section}' section"
    blocks = re.findall(r"^```python\n(.*?)^```", match.group(1), re.M | re.S)
    assert blocks, f"README.md's '## {section}' section has no python block"
    return blocks


def test_python_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformer_lens")  # the example's last line exports to it
    real = circuitlab.training.recipe.get_recipe
    asked: list[str] = []

    def short_recipe(name: str):
        asked.append(name)
        return real(name).replace(max_steps=STEPS, eval_every=10, checkpoint_every=STEPS)

    monkeypatch.setattr(circuitlab.training, "get_recipe", short_recipe)
    monkeypatch.setattr(circuitlab.training.recipe, "get_recipe", short_recipe)
    monkeypatch.chdir(tmp_path)

    ns: dict = {"__name__": "readme_example"}
    for block in python_blocks("Python"):
        exec(compile(block, str(README), "exec"), ns)

    assert asked == ["fast"]
    assert ns["result"].steps == STEPS
    assert (tmp_path / "runs/a/model.safetensors").is_file()
    assert ns["info"].task == "add_mod_113"
    logits, cache, ablated = ns["logits"], ns["cache"], ns["ablated"]
    assert logits.shape == (8, 3, 113)  # run_with_cache computes every position
    assert "blocks.0.mlp.hook_post" in cache
    assert ns["pattern"] is cache["blocks.0.attn.hook_pattern"]
    assert ablated.shape == (8, 1, 113)  # forward: the answer position only
    assert not torch.allclose(ablated, logits[:, 2:])  # the hook changed the output
    tokens = torch.as_tensor(ns["task"].dataset().inputs[:8])
    with torch.no_grad():
        assert torch.allclose(ns["hooked"](tokens), logits, atol=1e-4)
