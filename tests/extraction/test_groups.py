"""Representation theory of S_n against ground truth built here from explicit representation
matrices (permutation matrices, the standard representation, their tensor powers), then a small
grokked s4_compose model trained here."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from circuitlab.extraction import group_fits as gf
from circuitlab.extraction import groups as gr
from circuitlab.tasks import get_task
from circuitlab.tasks.permutation import permutations, product_table

# --- ground truth from explicit matrices ------------------------------------------------------


def _perm_matrix(perm: np.ndarray) -> np.ndarray:
    n = len(perm)
    m = np.zeros((n, n))
    m[perm, np.arange(n)] = 1.0  # e_i -> e_perm[i]
    return m


def _standard_basis(n: int) -> np.ndarray:
    """(n, n-1) orthonormal basis of the vectors with zero sum."""
    u, _, _ = np.linalg.svd(np.eye(n) - 1.0 / n)
    return u[:, : n - 1]


def _standard_matrices(n: int) -> np.ndarray:
    """(n!, n-1, n-1): the standard representation of every token (permutation matrices
    restricted to the zero-sum subspace)."""
    v = _standard_basis(n)
    return np.stack([v.T @ _perm_matrix(p) @ v for p in permutations(n)])


def _swap(d: int) -> np.ndarray:
    s = np.zeros((d * d, d * d))
    for i, j in itertools.product(range(d), repeat=2):
        s[i * d + j, j * d + i] = 1.0
    return s


def _explicit_characters(n: int) -> dict[tuple[int, ...], np.ndarray]:
    """Characters over the tokens of every irrep that trivial, sign, the standard rep, its
    symmetric and alternating squares and their sign twists give (all of S3..S5, 8 of 11 of
    S6), each (n!,) float."""
    perms = permutations(n)
    std = _standard_matrices(n)
    sign = np.array([np.linalg.det(_perm_matrix(p)) for p in perms]).round()
    d = n - 1
    kron = np.stack([np.kron(a, a) for a in std])
    sym = np.einsum("gij,ji->g", kron, (np.eye(d * d) + _swap(d)) / 2)
    alt = np.einsum("gij,ji->g", kron, (np.eye(d * d) - _swap(d)) / 2)
    chi_std = np.einsum("gii->g", std)
    one = np.ones(len(perms))
    found: dict[tuple[int, ...], list[np.ndarray]] = {}

    def add(partition, chi):
        found.setdefault(tuple(partition), []).append(chi)

    add((n,), one)
    add((1,) * n, sign)
    add((n - 1, 1), chi_std)
    add((2,) + (1,) * (n - 2), chi_std * sign)
    add((n - 2, 1, 1) if n > 3 else (1, 1, 1), alt)
    if n >= 4:
        add((3,) + (1,) * (n - 3), alt * sign)
        add((n - 2, 2), sym - one - chi_std)
        add((2, 2) + (1,) * (n - 4), (sym - one - chi_std) * sign)
    out = {}
    for partition, chis in found.items():
        for chi in chis[1:]:  # two constructions of one irrep must agree
            np.testing.assert_allclose(chi, chis[0], atol=1e-9)
        out[partition] = chis[0]
    return out


def _entries(matrices: np.ndarray) -> np.ndarray:
    """(n!, d*d) the matrix entries of a representation as functions of the token."""
    return matrices.reshape(len(matrices), -1)


# --- characters -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_characters_match_explicit_representations(n):
    group = gr.symmetric_group(n)
    explicit = _explicit_characters(n)
    assert len(explicit) == {3: 3, 4: 5, 5: 7, 6: 8}[n]
    for partition, chi in explicit.items():
        # the explicit character is irreducible: <chi, chi> = 1
        assert np.dot(chi, chi) / group.order == pytest.approx(1.0)
        ours = group.character_on_tokens(group.irrep(gr.partition_name(partition)).index)
        np.testing.assert_allclose(ours, chi, atol=1e-9, err_msg=str(partition))
    # the standard character counts fixed points, minus one
    fixed = (permutations(n) == np.arange(n)).sum(1)
    np.testing.assert_array_equal(group.character_on_tokens(1), fixed - 1)


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_table_orthogonality_dimensions_and_classes(n):
    group = gr.symmetric_group(n)
    parts = gr.partitions(n)
    assert len(group.irreps) == {3: 3, 4: 5, 5: 7, 6: 11}[n] == len(set(parts))
    assert group.orthogonality_error() < 1e-12
    dims = [r.dimension for r in group.irreps]
    assert sum(d * d for d in dims) == math.factorial(n)
    assert dims == [gr.hook_dimension(p) for p in parts]
    # class sizes n! / z_mu with z_mu = prod i^m_i m_i!, and each token's class its cycle type
    for c, mu in enumerate(group.classes):
        z = math.prod(i ** mu.count(i) * math.factorial(mu.count(i)) for i in set(mu))
        assert group.class_sizes[c] == math.factorial(n) // z
    for token in (0, 1, group.order - 1):
        assert group.classes[group.class_of[token]] == gr.cycle_type(permutations(n)[token])
    assert group.irreps[0].label == "[" + str(n) + "]"
    assert all(group.irreps[r.twin].partition == gr.conjugate(r.partition) for r in group.irreps)


def test_names_and_sign_twists():
    group = gr.symmetric_group(5)
    twist = group.irrep("[2,1,1,1]")
    assert twist.is_twist and twist.label == "[4,1]⊗sign"
    assert group.irrep("[4,1]⊗sign") is twist
    assert twist.full_name == "[2,1,1,1] = [4,1]⊗sign (dim 4, standard⊗sign)"
    assert group.irrep("[3,1,1]").label == "[3,1,1]"  # self-conjugate: no twist
    assert group.irrep("[1,1,1,1,1]").full_name.endswith("(dim 1, sign)")
    with pytest.raises(gr.GroupError, match="no irrep"):
        group.irrep("[7]")
    with pytest.raises(gr.GroupError, match="n in 3..6"):
        gr.symmetric_group(7)


def test_murnaghan_nakayama_known_values():
    # S4: chi_[2,2] on a 4-cycle is 0, on a transposition 0, on (2,2) 2, on a 3-cycle -1
    assert [gr.character((2, 2), mu) for mu in [(4,), (2, 1, 1), (2, 2), (3, 1)]] == [0, 0, 2, -1]
    assert gr.character((3, 2, 1), (1,) * 6) == 16
    with pytest.raises(gr.GroupError):
        gr.character((2, 1), (2, 2))


# --- projectors and basis ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [4, 5])
def test_projectors_partition_functions_on_the_group(n):
    group = gr.symmetric_group(n)
    g = group.order
    projectors = [group.projector(i) for i in range(len(group.irreps))]
    np.testing.assert_allclose(sum(projectors), np.eye(g), atol=1e-10)
    table = product_table(n)
    left = np.zeros((g, g))
    left[table[3], np.arange(g)] = 1.0  # f -> f(h*y) for one h
    right = np.zeros((g, g))
    right[table[:, 5], np.arange(g)] = 1.0  # f -> f(y*h)
    for i, p in enumerate(projectors):
        d = group.irreps[i].dimension
        np.testing.assert_allclose(p, p.T, atol=1e-12)
        np.testing.assert_allclose(p @ p, p, atol=1e-10)
        assert np.trace(p) == pytest.approx(d * d)
        for j in range(i + 1, len(projectors)):
            np.testing.assert_allclose(p @ projectors[j], 0.0, atol=1e-10)
        np.testing.assert_allclose(p @ left, left @ p, atol=1e-10)
        np.testing.assert_allclose(p @ right, right @ p, atol=1e-10)
        q = group.basis[0][:, group.irrep_columns(i)].numpy()
        np.testing.assert_allclose(q @ q.T, p, atol=1e-10)
    q = group.basis[0].numpy()
    np.testing.assert_allclose(q.T @ q, np.eye(g), atol=1e-10)
    # the matrix entries of the explicit standard representation span its isotypic component
    entries = _entries(_standard_matrices(n))
    std = projectors[group.irrep(f"[{n - 1},1]").index]
    np.testing.assert_allclose(std @ entries, entries, atol=1e-10)
    assert np.linalg.matrix_rank(entries) == (n - 1) ** 2


def test_answer_basis_is_orthonormal_over_the_grid_and_in_the_irrep():
    group = gr.symmetric_group(4)
    answers = product_table(4).reshape(-1)
    b = gf.groups.answer_basis(group, (1, 4), answers).numpy()
    assert b.shape == (576, 9 + 1)
    np.testing.assert_allclose(b.T @ b, 24 * np.eye(10), atol=1e-9)
    single = gr.answer_basis(group, (1,), np.arange(24)).numpy()
    np.testing.assert_allclose(group.projector(1) @ single, single, atol=1e-10)
    with pytest.raises(gr.GroupError, match="at least one"):
        gr.answer_basis(group, (), answers)


# --- embeddings -------------------------------------------------------------------------------


def _planted(entries: list[tuple[np.ndarray, float]], d: int = 32, noise: float = 1e-4):
    gen = np.random.default_rng(0)
    rows = entries[0][0].shape[0]
    emb = noise * gen.standard_normal((rows, d))
    for functions, amplitude in entries:
        emb += amplitude * functions @ gen.standard_normal((functions.shape[1], d))
    return torch.from_numpy(emb)


def test_embedding_planted_in_one_irrep_is_found_there():
    group = gr.symmetric_group(5)
    std = _entries(_standard_matrices(5))
    sign = _explicit_characters(5)[(1,) * 5][:, None]
    keys = gr.key_irreps(_planted([(std * sign, 1.0)]), group)
    assert keys.names == ("[2,1,1,1]",) and keys.labels == ("[4,1]⊗sign",)
    assert keys.sparse and keys.power_fraction > 0.999 and keys.contrast > 1e4
    two = gr.key_irreps(_planted([(std, 1.0), (sign, 0.3)]), group)
    assert two.names == ("[4,1]", "[1,1,1,1,1]") and two.sparse
    data = json.dumps(two.to_dict(), allow_nan=False)
    assert '"names": ["[4,1]", "[1,1,1,1,1]"]' in data


def test_random_embedding_spreads_by_dimension_and_is_not_sparse():
    group = gr.symmetric_group(5)
    emb = torch.randn(120, 256, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    energy = gr.irrep_energy(emb, group)
    centred = emb - emb.mean(0)
    assert energy.sum() == pytest.approx(float(centred.pow(2).sum()))
    keys = gr.key_irreps(emb, group)
    expected = np.array([r.dimension**2 for r in group.irreps]) / 119.0
    expected[0] = 0.0
    np.testing.assert_allclose(keys.shares, expected, rtol=0.4)
    assert not keys.sparse and keys.contrast < gr.MIN_CONTRAST
    with pytest.raises(gr.GroupError, match="embedding"):
        gr.irrep_energy(emb[:100], group)


# --- units on G x G ---------------------------------------------------------------------------


def _grid(*units: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(units, -1))


def _answers(spec: str) -> np.ndarray:
    return gf.answer_table(get_task(spec))


def test_unit_irreps_of_hand_built_units():
    n, group = 4, gr.symmetric_group(4)
    table = product_table(n)
    gen = np.random.default_rng(1)
    std = _entries(_standard_matrices(n))  # (24, 9)
    sign = _explicit_characters(n)[(1,) * n]
    f, h = std @ gen.standard_normal(9), std @ gen.standard_normal(9)
    x = np.arange(24)[:, None].repeat(24, 1)
    y = x.T
    answer_unit = f[table]  # a function of x*y in the standard irrep
    both = f[x] + h[y]
    units = gr.unit_irreps(
        _grid(
            answer_unit,
            3.0 + sign[x],  # x alone, sign irrep, plus an offset
            both,
            answer_unit / np.linalg.norm(answer_unit) + sign[y] * sign[x] / 24.0,  # two irreps
            np.full((24, 24), 2.0),  # constant: dead
            np.maximum(both, 0.0),  # a ReLU neuron
        ),
        group,
    )
    std_i, sign_i = group.irrep("[3,1]").index, group.irrep("[1,1,1,1]").index
    assert units.dominant[:3].tolist() == [std_i, sign_i, std_i]
    torch.testing.assert_close(units.purity[:3], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(units.terms[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert units.terms[1, 0] == pytest.approx(1.0)
    assert units.terms[2, 0] + units.terms[2, 1] == pytest.approx(1.0)
    assert units.purity[3] == pytest.approx(0.5) and units.label(3) in (
        "mixed (closest [3,1], purity 0.50)",
        "mixed (closest [4]⊗sign, purity 0.50)",
    )
    assert units.dominant[4] == 0 and units.variance[4] == 0 and units.label(4) == "dead"
    assert units.dominant[5] == std_i and 0.5 < units.purity[5] < 1.0
    assert units.label(0) == "[3,1] (purity 1.00)"
    torch.testing.assert_close(units.terms.sum(1), units.purity)
    assert bool((units.explained.sum(1) <= 1 + 1e-9).all())
    torch.testing.assert_close(units.cells.sum((1, 2))[:4], torch.ones(4, dtype=torch.float64))
    relu_pure = float(units.purity[5]) >= gr.PURE_THRESHOLD
    assert units.pure_fraction() == pytest.approx((3 + relu_pure) / 5)  # of the 5 live units


def test_conjugation_units_use_the_cells_of_conj():
    group = gr.symmetric_group(4)
    conj = _answers("s4_conj")
    f = _entries(_standard_matrices(4)) @ np.random.default_rng(2).standard_normal(9)
    unit = _grid(f[conj])  # f(x y x^-1): standard in y, any irrep of std (x) std in x
    as_conj = gr.unit_irreps(unit, group, conj)
    assert as_conj.dominant[0] == 1 and as_conj.purity[0] == pytest.approx(1.0)
    as_compose = gr.unit_irreps(unit, group)  # the compose cells miss the x-harmonics
    assert as_compose.purity[0] < 0.9


def test_irrep_cells_follow_the_operation():
    group = gr.symmetric_group(5)
    k = len(group.irreps)
    compose = gr.irrep_cells(group, product_table(5))
    for i in range(1, k):
        assert set(zip(*np.nonzero(compose == i), strict=True)) == {(i, i), (i, 0), (0, i)}
    conj = gr.irrep_cells(group, _answers("s5_conj"))
    chars = group.characters.astype(float)
    sizes = group.class_sizes
    for tau in range(1, k):
        # sigma appears in tau (x) tau: <chi_sigma, chi_tau^2> > 0
        inside = {s for s in range(k) if (chars[s] * chars[tau] ** 2 * sizes).sum() > 0.5}
        owned = {s for s in range(k) if conj[s, tau] == tau}
        assert owned == inside | {0}
        assert conj[tau, 0] == tau
    with pytest.raises(gr.GroupError, match="answers"):
        gr.irrep_cells(group, np.zeros((3, 3)))


def test_chunked_cells_match_one_chunk(monkeypatch):
    group = gr.symmetric_group(4)
    grid = torch.randn(24, 24, 7, generator=torch.Generator().manual_seed(0))
    whole = gr.cell_energy(grid, group)
    monkeypatch.setattr(gr, "CHUNK_ELEMENTS", 24 * 24 * 2)  # 2 units per chunk
    chunked = gr.cell_energy(grid, group)
    torch.testing.assert_close(whole[0], chunked[0])
    torch.testing.assert_close(whole[1], chunked[1])
    with pytest.raises(gr.GroupError, match="grid"):
        gr.cell_energy(grid[:20], group)


def test_answer_irreps_are_the_keys_and_where_the_mean_per_answer_lies():
    group = gr.symmetric_group(4)
    answers = torch.from_numpy(np.array(group.table).reshape(-1)).long()  # compose: all x*y
    planted = (group.irrep("[3,1]").index, group.irrep("[2,2]").index)
    rng = np.random.default_rng(7)
    of_answer = gr.answer_basis(group, planted, answers) @ torch.from_numpy(
        rng.standard_normal((13, 40))
    )
    # plus a function of x alone, which averages out over the inputs with the same answer
    x_part = torch.from_numpy(rng.standard_normal((24, 40))).repeat_interleave(24, 0)
    sign = (group.irrep("[1,1,1,1]").index,)
    found = gr.answer_irreps(of_answer + x_part, answers, group, sign, 0.02)
    assert found.irreps == tuple(sorted(planted + sign))
    assert sum(found.shares[i] for i in planted) == pytest.approx(1.0)
    assert found.names == tuple(group.irreps[i].name for i in found.irreps)
    assert gr.answer_irreps(of_answer, answers, group, (), 0.02).irreps == tuple(sorted(planted))


def test_logit_fits_recover_planted_characters():
    group = gr.symmetric_group(4)
    std = _standard_matrices(4)
    sign = _explicit_characters(4)[(1,) * 4]
    answers = torch.from_numpy(np.random.default_rng(4).integers(0, 24, 50))
    # tr(rho(c*) rho(c)^T) = chi(c* c^-1) for the orthogonal standard rep and for sign
    chi_std = np.einsum("aij,cij->ac", std[answers.numpy()], std)
    chi_sign = sign[answers.numpy()][:, None] * sign[None, :]
    offset = np.random.default_rng(5).standard_normal((50, 1))
    logits = torch.from_numpy(2.0 * chi_std - 0.5 * chi_sign + offset)
    keys = (group.irrep("[3,1]").index, group.irrep("[1,1,1,1]").index)
    fit = gf.logit_character_fit(logits, answers, group, keys)
    assert fit.alphas == pytest.approx((2.0, -0.5)) and fit.explained == pytest.approx(1.0)
    assert gf.logit_irrep_share(logits, group, keys) == pytest.approx(1.0)
    assert gf.logit_irrep_share(logits, group, keys[:1]) < 0.99
    with pytest.raises(gf.GroupFitError, match="logits"):
        gf.logit_character_fit(logits[:, :20], answers, group, keys)


# --- a grokked s4_compose model, trained here -------------------------------------------------

# d_mlp 256 and Grokfast: with the plain `fast` recipe s4_compose (576 pairs) does not grok
# within 4,000 steps at 50-90% of the pairs; this setting grokked seeds 0-2 at steps 1,850-3,410.
GROK_RECIPE = dict(
    train_fraction=0.7,
    max_steps=5000,
    grokfast_lambda=2.0,
    model=dict(d_model=64, n_heads=2, d_head=32, d_mlp=256),
)


@pytest.fixture(scope="module")
def grokked(tmp_path_factory):
    from circuitlab.training import RunSpec, get_recipe, load_run, read_run, train_stack

    run_dir = tmp_path_factory.mktemp("groups") / "run"
    recipe = get_recipe("fast").replace(**GROK_RECIPE)
    threads = torch.get_num_threads()
    try:
        train_stack([RunSpec("s4_compose", recipe, 0, run_dir)], threads=1)
    finally:
        torch.set_num_threads(threads)
    info = read_run(run_dir)
    assert info.summary["final"]["val_acc"] >= 0.99, "the test model did not grok"
    _, model = load_run(run_dir)
    task = get_task("s4_compose")
    split = task.split(recipe.train_fraction, 0)
    return model, task, gf.analyze(model, task, train_index=split.train_index)


def _explicit_shares(emb: np.ndarray) -> dict[str, float]:
    """Energy shares of an S4 embedding in the spans of explicit matrix entries (trivial,
    sign, standard, standard (x) sign; [2,2] is the rest)."""
    std = _entries(_standard_matrices(4))
    sign = _explicit_characters(4)[(1,) * 4][:, None]
    centred = emb - emb.mean(0)
    total = float((centred**2).sum())
    shares = {}
    for name, functions in (("[1,1,1,1]", sign), ("[3,1]", std), ("[2,1,1]", std * sign)):
        q, _ = np.linalg.qr(functions)
        shares[name] = float(((q.T @ centred) ** 2).sum()) / total
    shares["[2,2]"] = 1.0 - sum(shares.values())
    return shares


def test_grokked_keys_agree_with_explicit_matrices(grokked):
    model, _, report = grokked
    keys = report.keys
    assert keys.sparse and keys.irreps
    emb = model.param("embed.W_E")[:24].detach().double().numpy()
    group = gr.symmetric_group(4)
    for name, share in _explicit_shares(emb).items():
        assert keys.shares[group.irrep(name).index] == pytest.approx(share, abs=1e-9)
    assert keys.power_fraction > report.random_share


def test_grokked_neurons_use_the_key_irreps(grokked):
    _, _, report = grokked
    assert set(report.keys.names) <= set(report.neuron_keys)
    key_weight = sum(report.neuron_logit_shares.get(k, 0.0) for k in report.keys.names)
    assert key_weight >= 0.9
    assert report.neuron_purity_quantiles["q50"] >= 0.85
    assert report.logit_key_share >= 0.9


def test_grokked_restricted_and_excluded_loss(grokked):
    _, _, report = grokked
    lo = report.losses
    assert lo is not None and lo.log_p == pytest.approx(math.log(24))
    assert lo.restricted < lo.full and lo.restricted_accuracy == 1.0
    # compose writes the answer in the irreps it reads x and y in
    assert report.answer.irreps == report.keys.irreps and report.answer.sparse
    assert lo.excluded > lo.log_p > lo.full_train


def test_grokked_label_description_and_json(grokked):
    _, _, report = grokked
    assert report.representation_algorithm
    assert report.label().startswith("representation")
    assert all(label in report.label() for label in report.keys.labels)
    text = report.description()
    assert "ln 4! = 3.18" in text and "24 permutations" in text
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["label"] == report.label() and data["keys"]["names"] == list(report.keys.names)
    assert set(report.timings) == {
        "key_irreps",
        "neuron_irreps",
        "restricted_excluded_loss",
        "logit_fit",
    }


def test_circuit_features_label_neurons_as_features(grokked):
    """MLP neurons as the 'features' of a one-layer transcoder (decoder = W_out): the circuit
    names the irreps the neuron analysis found, and labels are honest about purity."""
    model, task, report = grokked
    data = task.dataset()
    tokens = torch.from_numpy(data.inputs).long()
    name = "blocks.0.mlp.hook_post"
    post = gf.collect(model, tokens, [name])[name]  # (576, 1, 256)
    w_out = model.param("blocks.0.mlp.W_out")
    tc = SimpleNamespace(n_layers=1, n_targets=lambda layer: 1, decoder=lambda s, t: w_out)
    keep = [torch.ones(post.shape[-1], dtype=torch.bool)]
    labels, keys = gf.circuit_features(model, task, tc, tokens, keep, SimpleNamespace(acts=[post]))
    assert keys == report.neuron_keys
    assert len(labels) == post.shape[-1]
    for entry in labels.values():
        if entry["representation"] is not None:
            assert entry["purity"] >= gf.PURE_THRESHOLD
            assert entry["label"].endswith(f"(purity {entry['purity']:.2f})")
        else:
            assert entry["label"].startswith(("mixed (closest", "dead"))
        assert entry["logit_weight"] >= 0
    assert gf.circuit_features(model, get_task("add_mod_13"), tc, tokens, keep, None) == ({}, ())


def test_analyze_refuses_other_tasks(grokked):
    model, _, _ = grokked
    with pytest.raises(gf.GroupFitError, match="permutation task"):
        gf.analyze(model, get_task("add_mod_13"))
    with pytest.raises(gf.GroupFitError, match="does not fit task s3_compose"):
        gf.analyze(model, get_task("s3_compose"))
