"""Fourier analysis: exact hand-built cases, then a small grokked add_mod_p model trained here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from circuitlab.extraction import fourier as fo
from circuitlab.extraction import fourier_fits as ff
from circuitlab.tasks import get_task

P = 23


def _wave(k: int, x: torch.Tensor, p: int, fn=torch.cos) -> torch.Tensor:
    return fn(2 * math.pi * k * x.to(torch.float64) / p)


def _planted_embedding(
    p: int, keys: dict[int, float], d: int = 32, noise: float = 1e-3, seed: int = 0
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.arange(p)
    emb = noise * torch.randn(p, d, generator=gen, dtype=torch.float64)
    for k, amp in keys.items():
        u, v = torch.randn(2, d, generator=gen, dtype=torch.float64)
        emb += amp * (_wave(k, x, p)[:, None] * u + _wave(k, x, p, torch.sin)[:, None] * v)
    return emb


def test_basis_is_orthonormal_and_named():
    basis, names = fo.fourier_basis(P)
    assert basis.shape == (P, P)
    assert torch.allclose(basis @ basis.T, torch.eye(P, dtype=basis.dtype), atol=1e-12)
    assert names[:3] == ["const", "cos 1", "sin 1"] and names[-1] == f"sin {(P - 1) // 2}"


def test_even_basis_ends_with_the_nyquist_cosine():
    # Z_(p-1), the discrete-log coordinates, has even order: cos(pi x) alone closes the basis
    basis, names = fo.fourier_basis(10)
    assert torch.allclose(basis @ basis.T, torch.eye(10, dtype=basis.dtype), atol=1e-12)
    assert names[-1] == "cos 5" and fo.frequency_rows(10)[-1] == [9]
    assert len(fo.frequency_rows(10)) == fo.n_frequencies(10) == 5
    with pytest.raises(fo.FourierError, match="n >= 2"):
        fo.fourier_basis(1)


@pytest.mark.parametrize(
    "planted",
    [{3: 1.0, 7: 1.0, 10: 1.0}, {2: 3.0, 9: 1.0}, {5: 1.0}, {1: 1.0, 4: 0.5, 6: 2.0, 11: 1.0}],
)
def test_planted_frequencies_are_found_exactly(planted):
    keys = fo.key_frequencies(_planted_embedding(P, planted))
    assert keys.frequencies == tuple(sorted(planted))
    assert keys.sparse and keys.gap > 100 and keys.contrast > 1e4
    assert keys.power_fraction > 0.99


def test_norms_agree_with_an_independent_numpy_fft():
    emb = _planted_embedding(P, {4: 1.0, 8: 2.0}, noise=0.3)
    ours = fo.frequency_norms(emb).numpy()
    spectrum = np.fft.rfft(emb.numpy(), axis=0)[1:]  # (K, D): frequencies 1..(p-1)/2
    theirs = np.sqrt((np.abs(spectrum) ** 2).sum(1))
    # rfft of a real signal: |X_k|^2 = (p/2) (|cos coef|^2 + |sin coef|^2) in the unit basis
    np.testing.assert_allclose(ours, theirs / math.sqrt(P / 2), rtol=1e-10)


def test_dense_embedding_is_reported_as_not_sparse():
    emb = torch.randn(P, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    keys = fo.key_frequencies(emb)
    assert not keys.sparse
    assert keys.contrast < fo.MIN_CONTRAST
    assert 1 <= len(keys.frequencies) <= (P - 1) // 4


def test_key_frequencies_refuses_bad_shapes():
    with pytest.raises(fo.FourierError, match="embedding"):
        fo.frequency_norms(torch.zeros(P))


def _grid_of(*units: torch.Tensor) -> torch.Tensor:
    return torch.stack(units, dim=-1)


def test_unit_frequencies_of_hand_built_units():
    a = torch.arange(P).view(P, 1).expand(P, P)
    b = torch.arange(P).view(1, P).expand(P, P)
    units = fo.unit_frequencies(
        _grid_of(
            _wave(5, a + b, P),  # cos(w5 (a+b)): the sum term
            2.0 + _wave(7, a, P, torch.sin),  # sin(w7 a) plus an offset (the mean is ignored)
            _wave(3, a, P) * _wave(3, b, P, torch.sin) + 0.1,  # a product term of k = 3
            _wave(2, a, P) + _wave(9, b, P),  # two frequencies, equal power
            torch.full((P, P), 4.0, dtype=torch.float64),  # constant: dead
            torch.relu(_wave(6, a + b, P)),  # a ReLU neuron: mostly k = 6, some harmonics
        )
    )
    assert units.dominant.tolist()[:3] == [5, 7, 3]
    torch.testing.assert_close(units.purity[:3], torch.ones(3, dtype=torch.float64))
    assert units.sum_share[0] == pytest.approx(1.0) and units.sum_share[1] == pytest.approx(0.0)
    assert units.dominant[3] in (2, 9) and units.purity[3] == pytest.approx(0.5)
    assert units.explained[3, 1] == pytest.approx(0.5) and units.explained[3, 8] == pytest.approx(
        0.5
    )
    assert units.dominant[4] == 0 and units.purity[4] == 0 and units.variance[4] == 0
    assert units.dominant[5] == 6 and 0.5 < units.purity[5] < 1.0
    # the terms of the dominant frequency add up to the purity, and name the unit
    torch.testing.assert_close(units.terms.sum(1), units.purity)
    assert units.terms[2, 2] == pytest.approx(0.5) and units.terms[2, 3] == pytest.approx(0.5)
    labels = [units.label(j) for j in range(6)]
    assert labels[0] == "w_5 [1.00]: a+b 1.00" and labels[1] == "w_7 [1.00]: a 1.00"
    assert labels[2] == "w_3 [1.00]: a+b 0.50, a-b 0.50"
    assert labels[3] in ("w_2 [0.50]: a 0.50", "w_9 [0.50]: b 0.50") and labels[4] == "dead"
    assert labels[5].startswith("w_6 [") and "a+b" in labels[5]
    diff = fo.unit_frequencies(_grid_of(_wave(4, a - b, P, torch.sin)))
    assert diff.label(0) == "w_4 [1.00]: a-b 1.00"
    mixed = fo.unit_frequencies(_grid_of(_wave(2, a, P) + _wave(9, b, P) + _wave(4, a + b, P)))
    assert mixed.label(0).startswith("mixed frequencies")
    # shares partition at most the variance
    assert bool((units.explained.sum(1) <= 1 + 1e-9).all())
    counts = units.dominant_counts()  # live units only; unit 3 ties between 2 and 9
    assert sum(counts.values()) == 5 and {3, 5, 6, 7} <= set(counts)
    shares = fo.frequency_shares(units)
    assert shares[5] == pytest.approx(1 / 5) and sum(shares.values()) == pytest.approx(1.0)
    weights = torch.tensor([3.0, 1.0, 0.0, 0.0, 100.0, 0.0])  # the dead unit's weight is ignored
    weighted = fo.frequency_shares(units, weights)
    assert weighted[5] == 0.75 and weighted[7] == 0.25
    assert sum(weighted.values()) == pytest.approx(1.0)
    assert units.pure_fraction(0.99) == pytest.approx(3 / 5)  # of the 5 live units
    assert units.pure_fraction(0.99, keys=(5, 7)) == pytest.approx(2 / 5)


def test_keys_by_share_and_f1():
    assert fo.keys_by_share({0: 40, 3: 50, 7: 9, 9: 1}, min_share=0.05) == (3, 7)
    assert fo.keys_by_share({3: 0.5, 7: 0.49, 9: 0.01}) == (3, 7)
    assert fo.keys_by_share({}) == ()
    assert fo.key_f1((3, 7), (3, 7)) == 1.0
    assert fo.key_f1((3, 7, 9), (3, 7)) == pytest.approx(0.8)
    assert fo.key_f1((), (1,)) == 0.0


def test_activation_grid_reorders_and_checks_coverage():
    data = get_task(f"add_mod_{P}").dataset()
    acts = torch.from_numpy(data.inputs[:, :2].astype(np.float64))  # unit 0 = a, unit 1 = b
    order = np.random.default_rng(0).permutation(len(data))
    grid = fo.activation_grid(acts[order], data.inputs[order], P)
    assert grid[4, 9].tolist() == [4.0, 9.0]
    with pytest.raises(fo.FourierError, match="every pair"):
        fo.activation_grid(acts[1:], data.inputs[1:], P)
    with pytest.raises(fo.FourierError, match="n_inputs"):
        fo.activation_grid(acts[:, 0], data.inputs, P)


def test_logit_fit_recovers_planted_alphas():
    data = get_task(f"add_mod_{P}").dataset()
    answers = torch.from_numpy(data.targets[:, 0])
    c = torch.arange(P)
    diff = answers[:, None] - c[None, :]
    alphas = {3: 2.0, 8: -1.5, 10: 0.75}
    logits = sum(a * _wave(k, diff, P) for k, a in alphas.items())
    logits = logits + torch.randn(len(answers), 1, dtype=torch.float64)  # per-input shifts
    fit = ff.logit_fourier_fit(logits, answers, tuple(alphas))
    assert fit.explained == pytest.approx(1.0)
    assert fit.alphas == pytest.approx(tuple(alphas.values()))
    noisy = logits + torch.randn(logits.shape, generator=torch.Generator().manual_seed(0)) * 2
    assert ff.logit_fourier_fit(noisy, answers, tuple(alphas)).explained < 0.9
    assert ff.logit_fourier_fit(logits, answers, (3,)).explained < 1.0


def test_logit_weights_scale_with_spread_and_direct_effect():
    acts = torch.tensor([[0.0, 1.0, 5.0], [2.0, 1.0, 5.0]])  # stds 1, 0, 0
    writes = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    w_u = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    weights = fo.logit_weights(acts, writes, w_u)
    torch.testing.assert_close(weights, torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64))


def test_projection_keeps_key_directions_and_removes_the_rest():
    data = get_task(f"add_mod_{P}").dataset()
    answers = torch.from_numpy(data.targets[:, 0])
    a = torch.from_numpy(data.inputs[:, 0])
    inside = _wave(4, answers, P, torch.sin)
    outside = _wave(4, a, P)  # depends on a alone: orthogonal to every function of a+b
    acts = torch.stack([inside + 1.0, outside], dim=1)
    proj = ff.project_onto(acts, ff.answer_directions(answers, P, (4, 6)))
    torch.testing.assert_close(proj[:, 0], inside)
    torch.testing.assert_close(proj[:, 1], torch.zeros_like(outside), atol=1e-9, rtol=0)


def test_answer_frequencies_carry_relu_harmonics_and_nothing_off_the_answer():
    # A ReLU of cos(w_3 c) carries 3, 6, 9, ... of the answer c = a+b; a wave of a-b carries
    # nothing about it. The spectrum equals numpy's DFT of the mean activation per answer.
    data = get_task(f"add_mod_{P}").dataset()
    answers = torch.from_numpy(data.targets[:, 0])
    a, b = (torch.from_numpy(data.inputs[:, i]) for i in (0, 1))
    relu = torch.relu(_wave(3, answers, P))
    off = _wave(5, a - b, P)
    found = ff.answer_frequencies(torch.stack([relu, off], dim=1), answers, P)
    means = np.stack([relu.numpy()[answers.numpy() == c].mean() for c in range(P)])
    power = np.abs(np.fft.rfft(means)[1:]) ** 2
    norms = np.array(found.norms) ** 2
    np.testing.assert_allclose(norms / norms.sum(), power / power.sum(), rtol=1e-9, atol=1e-12)
    shares = {k + 1: float(v) for k, v in enumerate(norms)}
    carried = fo.keys_by_share(shares)
    assert 3 in carried and 6 in carried and 5 not in carried
    assert fo.harmonic_of(6, (3,), P) == "2x3"
    assert fo.harmonic_of(P - 9, (3,), P) == "3x3"  # 9 folded: cos(w_9) = cos(w_(P-9))
    assert fo.harmonic_of(7, (3,), P) is None


def test_chunked_computations_match_one_chunk(monkeypatch):
    """Units, projections, logit weights and the logit fit go by chunks of rows or columns to
    bound memory on large p; the chunking does not change what they compute."""
    data = get_task(f"add_mod_{P}").dataset()
    answers = torch.from_numpy(data.targets[:, 0])
    gen = torch.Generator().manual_seed(3)
    acts = torch.randn(len(answers), 7, generator=gen, dtype=torch.float64)
    logits = torch.randn(len(answers), P, generator=gen, dtype=torch.float64)
    writes, w_u = torch.randn(7, 4, generator=gen), torch.randn(4, 5, generator=gen)

    def run():
        grid = fo.activation_grid(acts, data.inputs, P)
        units = fo.unit_frequencies(grid)
        proj = ff.project_onto(acts, ff.answer_directions(answers, P, (4, 6)))
        fit = ff.logit_fourier_fit(logits, answers, (2, 5))
        return units, proj, fo.logit_weights(acts, writes, w_u), fit

    whole = run()
    for module in (fo, ff):
        monkeypatch.setattr(module, "CHUNK_ELEMENTS", 2 * P * P)  # several chunks of each
    chunked = run()
    for name in ("explained", "dominant", "purity", "terms", "variance"):
        torch.testing.assert_close(getattr(chunked[0], name), getattr(whole[0], name))
    torch.testing.assert_close(chunked[1], whole[1])
    torch.testing.assert_close(chunked[2], whole[2])
    assert chunked[3].alphas == pytest.approx(whole[3].alphas, rel=1e-9)
    assert chunked[3].explained == pytest.approx(whole[3].explained, rel=1e-9)


# --- a grokked model, trained here ----------------------------------------------------------

GROK_P = 31


@pytest.fixture(scope="module")
def grokked(tmp_path_factory):
    from circuitlab.training import RunSpec, get_recipe, load_run, read_run, train_stack

    run_dir = tmp_path_factory.mktemp("fourier") / "run"
    recipe = get_recipe("fast").replace(train_fraction=0.5, max_steps=1500)
    threads = torch.get_num_threads()
    try:  # one thread: this tiny model trains slower on two contended ones
        train_stack([RunSpec(f"add_mod_{GROK_P}", recipe, 0, run_dir)], threads=1)
    finally:
        torch.set_num_threads(threads)
    info = read_run(run_dir)
    assert info.summary["final"]["val_acc"] >= 0.99, "the test model did not grok"
    _, model = load_run(run_dir)
    task = get_task(info.task)
    split = task.split(recipe.train_fraction, 0)
    return model, task, ff.analyze(model, task, train_index=split.train_index)


def test_grokked_model_has_a_small_sparse_key_set(grokked):
    model, task, report = grokked
    keys = report.keys
    assert keys.sparse
    assert 1 <= len(keys.frequencies) <= 6  # of 15
    # the keys are the top frequencies of an independent numpy DFT of the number embeddings
    emb = model.param("embed.W_E")[:GROK_P].detach().double().numpy()
    spectrum = np.sqrt((np.abs(np.fft.rfft(emb, axis=0)[1:]) ** 2).sum(1))
    top = np.argsort(-spectrum)[: len(keys.frequencies)] + 1
    assert set(top.tolist()) == set(keys.frequencies)


def test_grokked_neurons_are_mostly_pure_in_the_key_frequencies(grokked):
    _, _, report = grokked
    live = sum(report.neuron_dominant_counts.values())
    in_keys = sum(
        n for k, n in report.neuron_dominant_counts.items() if k in report.keys.frequencies
    )
    assert in_keys / live >= 0.9
    assert report.neuron_purity_quantiles["q50"] >= 0.8
    # the neurons that move the logits use exactly the key frequencies of the embedding
    assert report.neuron_keys == report.keys.frequencies


def test_grokked_restricted_and_excluded_loss(grokked):
    _, _, report = grokked
    lo = report.losses
    assert lo is not None
    # the key directions of the last MLP alone carry the answer ...
    assert lo.restricted <= lo.full and lo.restricted_accuracy == 1.0
    # ... and the model cannot fit even its training set without them
    assert lo.excluded > lo.log_p > lo.full_train
    assert lo.excluded_accuracy < 0.5


def test_grokked_logits_and_label(grokked):
    _, _, report = grokked
    assert report.logits.explained >= 0.75
    assert report.fourier_algorithm
    freqs = ", ".join(str(k) for k in report.keys.frequencies)
    assert report.label().startswith(f"Fourier multiplication, frequencies {{{freqs}}}")
    # the restricted loss keeps the keys, and any answer frequency beyond them is named
    assert set(report.keys.frequencies) <= set(report.restricted_keys)
    for extra in report.extra_answer_keys:
        assert str(extra) in report.label() and str(extra) in report.description()
    text = report.description()
    assert f"{len(report.keys.frequencies)} key frequencies" in text and "ln p" in text
    assert "cos(w_k (a+b-c))" in text and report.formula == "a+b"
    data = report.to_dict()
    assert data["label"] == report.label() and data["keys"]["frequencies"] == list(
        report.keys.frequencies
    )
    assert set(report.timings) == {
        "key_frequencies",
        "neuron_frequencies",
        "restricted_excluded_loss",
        "logit_fit",
    }


def test_analyze_refuses_non_modular_tasks(grokked):
    model, _, _ = grokked
    with pytest.raises(fo.FourierError, match="modular task"):
        ff.analyze(model, get_task("s3_compose"))
    with pytest.raises(fo.FourierError, match="does not fit task add_mod_13"):
        ff.analyze(model, get_task("add_mod_13"))


# --- multiplicative tasks: the discrete-log coordinates ---------------------------------------


def _independent_primitive_root(p: int) -> int:
    """The smallest g whose powers reach every nonzero residue (by enumeration)."""
    return next(g for g in range(2, p) if len({pow(g, i, p) for i in range(p - 1)}) == p - 1)


@pytest.mark.parametrize("p", [7, 23, 31, 97, 113])
def test_discrete_log_coordinates(p):
    coords = fo.Coordinates.discrete_log(p)
    g = _independent_primitive_root(p)
    assert coords.generator == g and coords.n == p - 1
    residues = torch.arange(p)
    logs = coords.of(residues)
    assert int(logs[0]) == -1  # 0 has no logarithm
    for t in range(1, p):
        assert pow(g, int(logs[t]), p) == t


def test_log_planted_embedding_is_found_in_log_coordinates_only():
    # an embedding that is a wave in log(t): flat in token order, one frequency in log order
    p, k = 31, 4
    coords = fo.Coordinates.discrete_log(p)
    logs = coords.of(torch.arange(1, p)).to(torch.float64)
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 16, generator=gen, dtype=torch.float64)
    emb = torch.zeros(p, 16, dtype=torch.float64)
    w = 2 * math.pi * k / (p - 1)
    emb[1:] = torch.cos(w * logs)[:, None] * u + torch.sin(w * logs)[:, None] * v
    emb += 1e-3 * torch.randn(p, 16, generator=gen, dtype=torch.float64)
    in_logs = fo.key_frequencies(emb[list(coords.tokens)])
    assert in_logs.frequencies == (k,) and in_logs.sparse
    assert not fo.key_frequencies(emb).sparse


@pytest.fixture(scope="module")
def grokked_mul(tmp_path_factory):
    from circuitlab.training import RunSpec, get_recipe, load_run, train_stack

    run_dir = tmp_path_factory.mktemp("fourier_mul") / "run"
    recipe = get_recipe("fast").replace(max_steps=3000)  # groks mul_mod_31 near step 1,750
    threads = torch.get_num_threads()
    try:
        (result,) = train_stack([RunSpec("mul_mod_31", recipe, 0, run_dir)], threads=1)
    finally:
        torch.set_num_threads(threads)
    assert result.grokked_at is not None, "the test model did not grok"
    _, model = load_run(run_dir)
    task = get_task("mul_mod_31")
    split = task.split(recipe.train_fraction, 0)
    return model, task, ff.analyze(model, task, train_index=split.train_index)


def test_grokked_mul_is_fourier_in_discrete_logs(grokked_mul):
    model, task, report = grokked_mul
    p = task.p
    # ground truth computed here: re-index the embedding by g^i and take numpy's DFT
    g = _independent_primitive_root(p)
    emb = model.param("embed.W_E").detach().double().numpy()[[pow(g, i, p) for i in range(p - 1)]]
    power = (np.abs(np.fft.rfft(emb - emb.mean(0), axis=0)) ** 2).sum(1)[1:]
    top = sorted((np.argsort(power)[::-1][: len(report.keys.frequencies)] + 1).tolist())
    assert report.coordinates.basis == "discrete_log" and report.coordinates.generator == g
    assert fo.key_f1(report.keys.frequencies, tuple(top)) == 1.0 and report.keys.sparse
    losses = report.losses
    assert losses.restricted < losses.full and losses.excluded > losses.log_p
    assert "discrete-log" in report.label() and "log c" in report.description()
    assert report.apart["inputs"] == 2 * p - 1  # a = 0 or b = 0
    # in token order the same embedding has no clear key set (the old, wrong reading)
    additive = ff.analyze(model, task, coords=fo.Coordinates.additive(p))
    assert not additive.fourier_algorithm
