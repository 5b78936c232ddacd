"""Feature interpretation for any task: top activating inputs and output effects."""

from __future__ import annotations

import json

import pytest
import torch

from circuitlab.extraction import interpret as ip
from circuitlab.models import ModelConfig, Transformer
from circuitlab.tasks import get_task


def _model(task, **overrides) -> Transformer:
    sizes = {"d_model": 32, "n_heads": 2, "d_head": 16, "d_mlp": 64} | overrides
    return Transformer(ModelConfig.for_task(task, **sizes), seed=0).eval()


def test_render_input_by_family():
    assert ip.render_input(get_task("add_mod_7"), [3, 4, 7]) == "3 4 ="
    assert ip.render_input(get_task("s3_compose"), [0, 5, 6]) == "012 210 ="
    grid = get_task("grid_rot90_3x3")
    assert ip.render_input(grid, [0, 1, 2, 2, 1, 0, 0, 0, 1] + [3] * 9) == "012/210/001"


def test_top_activations_decode_the_right_inputs():
    task = get_task("add_mod_7")
    inputs = task.dataset().inputs
    a, b = (torch.from_numpy(inputs[:, i]).float() for i in (0, 1))
    acts = torch.stack([a, (a == 2) & (b == 5), torch.zeros_like(a)], dim=1).float()
    top = ip.top_activations(acts, inputs, task, positions=(2,), k=3)
    assert len(top[0]) == 3 and all(e.text.startswith("6 ") for e in top[0])
    assert all(e.value == 6.0 and e.position == 2 for e in top[0])
    assert [e.text for e in top[1]] == ["2 5 ="]  # fires once: only positive rows are kept
    assert top[2] == []  # never fires


def test_top_activations_over_positions():
    task = get_task("grid_mirror_3x3_c2")
    inputs = task.dataset().inputs
    acts = torch.zeros(len(inputs), 9, 1)
    acts[17, 4, 0] = 2.0
    acts[3, 8, 0] = 1.0
    top = ip.top_activations(acts, inputs, task, positions=tuple(range(9, 18)), k=5)[0]
    assert [(e.index, e.position, e.value) for e in top] == [(17, 13, 2.0), (3, 17, 1.0)]
    assert top[0].tokens == inputs[17].tolist()
    with pytest.raises(ip.InterpretError, match="positions"):
        ip.top_activations(acts, inputs, task, positions=(9,))


def test_output_effect_of_the_last_layer_is_the_unembedding_of_its_direction():
    """Without LayerNorm the logits are linear in the last MLP's output: writing d there changes
    the centred logits by exactly d @ W_U (centred)."""
    task = get_task("add_mod_7")
    model = _model(task)
    w_u = model.param("unembed.W_U").detach()  # (D, O)
    directions = torch.linalg.pinv(w_u)  # row j: d with d @ W_U = e_j
    directions = torch.cat(
        [directions, torch.randn(3, 32, generator=torch.Generator().manual_seed(0))]
    )
    tokens = torch.from_numpy(task.dataset().inputs[:20])
    scale = torch.linspace(0.5, 2.0, len(directions))
    effects = ip.output_effects(model, {0: directions}, tokens, scale=scale, chunk=4)
    expected = (directions * scale[:, None]) @ w_u
    expected = expected - expected.mean(1, keepdim=True)
    torch.testing.assert_close(effects, expected, atol=1e-4, rtol=1e-4)
    assert effects[:7].argmax(1).tolist() == list(range(7))


def test_output_effects_go_through_later_layers():
    """A direction written at layer 0 of a 2-layer LN model reaches the logits through layer 1
    and the final LayerNorm: the effect equals the logit change of the same patch done by hand."""
    task = get_task("s3_compose")
    model = _model(task, n_layers=2, normalization="LN")
    tokens = torch.from_numpy(task.dataset().inputs)
    direction = torch.randn(1, 32, generator=torch.Generator().manual_seed(1)) * 3
    effect = ip.output_effects(model, {0: direction}, tokens, positions=(0, 1, 2))[0]

    def patch(x, name):
        return x + direction[0]

    with torch.no_grad():
        base = model(tokens)
        with model.hooks([("blocks.0.hook_mlp_out", patch)]):
            patched = model(tokens)
    centred = lambda z: z - z.mean(-1, keepdim=True)  # noqa: E731
    expected = (centred(patched) - centred(base)).mean((0, 1))
    torch.testing.assert_close(effect, expected, atol=1e-5, rtol=1e-4)
    assert effect.abs().max() > 1e-3


def test_output_effects_refuse_bad_directions():
    task = get_task("add_mod_7")
    model = _model(task)
    tokens = torch.from_numpy(task.dataset().inputs[:4])
    with pytest.raises(ip.InterpretError, match="d_model=32"):
        ip.output_effects(model, {0: torch.zeros(2, 5)}, tokens)
    with pytest.raises(ip.InterpretError, match="target layer 3"):
        ip.output_effects(model, {3: torch.zeros(2, 32)}, tokens)
    with pytest.raises(ip.InterpretError, match="answer positions"):
        ip.output_effects(model, {0: torch.zeros(2, 32)}, tokens, positions=(0,))


def test_interpret_features_records_are_json():
    """Neurons of an untrained model as features: the records hold what was measured."""
    task = get_task("s3_compose")
    model = _model(task)
    inputs = task.dataset().inputs
    tokens = torch.from_numpy(inputs)
    _, cache = model.run_with_cache(tokens, names="blocks.0.mlp.hook_post", answers_only=True)
    acts = cache["blocks.0.mlp.hook_post"][:, 0]  # (N, F) at the answer position
    directions = {0: model.param("blocks.0.mlp.W_out").detach()}
    records = ip.interpret_features(model, task, acts, inputs, (2,), directions, k_tokens=3)
    assert len(records) == 64
    live = [r for r in records if r.firing_rate > 0]
    assert live, "an untrained ReLU MLP has live neurons"
    r = live[0]
    assert r.top_examples[0].value == pytest.approx(float(acts[:, r.index].max()))
    assert r.mean_active == pytest.approx(
        float(acts[:, r.index][acts[:, r.index] > 0].mean()), rel=1e-5
    )
    assert len(r.promotes) == 3 and r.promotes[0].value >= r.promotes[-1].value
    assert r.suppresses[0].value <= r.promotes[-1].value
    assert r.label.startswith(f'fires on "{r.top_examples[0].text}"; promotes ')
    data = json.loads(json.dumps(r.to_dict()))
    assert data["label"] == r.label and data["promotes"][0]["name"] in task.output_names()
    dead = [x for x in records if x.firing_rate == 0]
    assert all(x.label == "dead feature" and not x.promotes for x in dead)
