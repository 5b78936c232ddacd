"""Discovery acceptance: NSSR's experiments, the cases NSSR fails, reuse, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from circuitlab.registry import Registry, RegistryError
from circuitlab.registry.cases import Case, cases
from circuitlab.registry.discover import DiscoveryConfig, DiscoveryError, discover, search

CASES = cases(seed=0)


def _solve(case: Case, **kw):
    return search((case.X, case.y), names=case.names, name=case.name, **kw)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(CASES))
def test_acceptance_case_is_exact(name: str):
    case = CASES[name]
    result = _solve(case)
    fn = result.function
    assert result.status == "exact" and fn is not None and fn.status == "exact", result.message
    assert tuple(i.name for i in fn.inputs) == case.relevant  # junk and m_noisy are not inputs
    assert case.check(fn.evaluate), fn.render()  # equal to the truth on fresh inputs
    assert result.relevance == {c: c in case.relevant for c in case.names}


def test_square_extrapolates_from_one_to_seven():
    fn = _solve(CASES["SQUARE"]).function
    assert fn.evaluate(np.array([8.0, 9.0, 10.0])).tolist() == [64.0, 81.0, 100.0]


def test_additive_constants_keep_their_sign():
    fn = _solve(CASES["PRODUCT_PLUS_CONST"]).function
    assert fn.constant_dict == {"c0": 2.5}
    assert fn.evaluate(np.array([3.0]), np.array([-4.0])).item() == -9.5
    fn = _solve(CASES["AFFINE"]).function
    assert sorted(fn.constant_dict.values()) == [2.0, 3.0]
    assert fn.evaluate(np.array([-5.0])).item() == -13.0


@pytest.mark.parametrize("name", ["TOTAL_E_JUNK", "FORCE_JUNK", "SQUARE_SYMMETRIC"])
def test_answer_unchanged_when_junk_is_resampled(name: str):
    first = _solve(CASES[name]).function
    for seed in (11, 12):
        again = cases(seed=seed)[name]
        case = CASES[name]
        rng = np.random.default_rng(seed)
        X = case.X.copy()
        junk = [i for i, c in enumerate(case.names) if c not in case.relevant]
        X[:, junk] = rng.uniform(-100, 100, (len(X), len(junk)))
        assert again.names == case.names
        fn = search((X, case.y), names=case.names, name=name).function
        assert fn.render() == first.render() and fn.constants == first.constants


def test_nand_then_xor_posed_one_after_the_other(tmp_path):
    reg = Registry.open(tmp_path)
    nand = discover(
        (CASES["NAND"].X, CASES["NAND"].y),
        names=("a", "b"),
        name="NAND",
        registry=reg,
        register=True,
    )
    xor = discover(
        (CASES["XOR"].X, CASES["XOR"].y),
        names=("a", "b"),
        name="XOR_FN",
        registry=reg,
        register=True,
    )
    bits = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float).T
    assert reg.call("NAND", *bits).tolist() == [1, 1, 1, 0]
    assert reg.call("XOR_FN", *bits).tolist() == [0, 1, 1, 0]
    assert {f.name for f in Registry.open(tmp_path)} == {"NAND", "XOR_FN"}
    assert nand.version == xor.version == 1
    with pytest.raises(RegistryError, match="already exists"):
        discover(
            (CASES["NAND"].X, CASES["NAND"].y),
            names=("a", "b"),
            name="NAND",
            registry=reg,
            register=True,
        )


def test_xor_from_a_registered_nand_when_xor_is_not_a_primitive():
    reg = Registry()
    discover(
        (CASES["NAND"].X, CASES["NAND"].y),
        names=("a", "b"),
        name="NAND",
        registry=reg,
        register=True,
    )
    cfg = DiscoveryConfig(groups=("bitwise",), exclude=("XOR", "NOT", "BNOT"))
    xor = discover(
        (CASES["XOR"].X, CASES["XOR"].y),
        names=("a", "b"),
        name="XOR_FN",
        registry=reg,
        config=cfg,
        register=True,
    )
    assert "NAND" in {n for n, _ in xor.uses()} and xor.layer == 2
    bits = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float).T
    assert reg.call("XOR_FN", *bits).tolist() == [0, 1, 1, 0]


def test_registered_ke_and_pe_make_total_energy_ten_times_cheaper():
    reg = Registry()
    for name in ("KE", "PE"):
        discover(
            (CASES[name].X, CASES[name].y),
            names=CASES[name].names,
            name=name,
            registry=reg,
            register=True,
        )
    case = CASES["TOTAL_E_JUNK"]
    without = _solve(case)
    with_reg = _solve(case, registry=reg)
    fn = with_reg.function
    assert fn.render() == "ADD(KE(m, v), PE(m, h))"
    assert case.check(lambda *c: fn.evaluate(*c, resolve=reg.resolve))
    assert {n for n, _ in fn.uses()} == {"KE", "PE"}
    assert reg.register(fn).layer == 2
    assert with_reg.stats.evaluated * 10 <= without.stats.evaluated, (
        with_reg.stats.evaluated,
        without.stats.evaluated,
    )


def test_same_seed_same_function():
    a = _solve(CASES["KE_CORRELATED"]).function.to_dict()
    b = _solve(CASES["KE_CORRELATED"]).function.to_dict()
    for d in (a, b):
        d["provenance"].pop("created")
        d["provenance"]["search"].pop("seconds")
    assert a == b


def test_fresh_probes_are_checked_against_the_oracle():
    x = np.array([0.5, 1.0, 2.0, 3.0, 4.0, 5.5])
    y = x * 1.0
    # an oracle that disagrees with the examples off the training points: nothing is accepted
    with pytest.raises(DiscoveryError, match="nothing registered"):
        discover(
            (x[:, None], y),
            names=["x"],
            oracle=lambda v: np.where(np.isin(v, x), v, 0.0),
            config=DiscoveryConfig(max_cost=3),
        )
    fn = discover((x[:, None], y), names=["x"], oracle=lambda v: v)
    assert fn.render() == "x"


def test_noisy_data_gives_an_approximate_function_and_a_table():
    rng = np.random.default_rng(3)
    m, v = rng.uniform(1, 10, (2, 200))
    y = 0.5 * m * v**2 + rng.normal(0, 0.5, 200)
    with pytest.raises(DiscoveryError, match="approximate") as info:
        discover(
            (np.stack([m, v], 1), y),
            names=["m", "v"],
            config=DiscoveryConfig(max_cost=4, pairs=False),
        )
    assert info.value.result.status == "failed"
    result = search(
        (np.stack([m, v], 1), y), names=["m", "v"], config=DiscoveryConfig(approximate=True)
    )
    fn = result.function
    assert result.status == "approximate" and fn.status == "approximate"
    assert {i.name for i in fn.inputs} == {"m", "v"}
    assert abs(fn.evaluate(4.0, 6.0).item() - 72.0) < 1.0
    losses = [r.loss for r in result.table]
    assert losses == sorted(losses, reverse=True) and sum(r.chosen for r in result.table) == 1
    assert all(r.expression and r.sympy for r in result.table)


@pytest.mark.parametrize(
    "examples, names, match",
    [
        ([([1, 2], 3), ([1], 2), ([2, 2], 4)], None, "unequal"),
        ([([1, "a"], 3), ([1, 2], 3), ([2, 2], 4)], None, "numbers"),
        ([([1, 2], 3), ([2, 2], float("nan")), ([3, 2], 4), ([4, 2], 5)], None, "finite"),
        ([([1, 2], 3), ([2, 2], float("inf")), ([3, 2], 4), ([4, 2], 5)], None, "finite"),
        ([([1, 2, 3], 3), ([2, 2, 3], 4)], None, "fewer than the unknowns"),
        ([([1], 1), ([2], 4), ([3], 9)], ["a", "b"], "column names"),
        ([([1], 1), ([2], 4), ([3], 9)], ["not ok"], "identifier"),
    ],
)
def test_bad_input_is_a_clear_error(examples, names, match):
    with pytest.raises(RegistryError, match=match):
        discover(examples, names=names)


def test_name_clashes_refused_before_searching():
    reg = Registry()
    discover(([([x], x * x) for x in range(1, 8)]), name="SQ", registry=reg, register=True)
    with pytest.raises(RegistryError, match="already exists"):
        discover(([([x], x + 1) for x in range(1, 8)]), name="SQ", registry=reg, register=True)
    with pytest.raises(RegistryError, match="primitive"):
        discover(([([x], x + 1) for x in range(1, 8)]), name="ADD", registry=reg, register=True)
    assert [f.name for f in reg] == ["SQ"]


def test_failed_discovery_registers_nothing(tmp_path):
    reg = Registry.open(tmp_path)
    rng = np.random.default_rng(5)
    X, y = rng.uniform(-1, 1, (30, 2)), rng.uniform(-1, 1, 30)
    with pytest.raises(DiscoveryError, match="nothing registered"):
        discover(
            (X, y), name="NOISE", registry=reg, register=True, config=DiscoveryConfig(max_cost=4)
        )
    assert len(Registry.open(tmp_path)) == 0 and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "truth, expected",
    [
        (lambda x: 2 * np.exp(0.3 * x) + 1, "INC(MUL(2, EXP(MUL(0.3, x))))"),
        (lambda x: 3 * np.sin(2.5 * x), "MUL(3, SIN(MUL(2.5, x)))"),
        (lambda x: x**1.7, "POW(x, 1.7)"),
    ],
)
def test_constants_inside_nonlinear_functions(truth, expected):
    rng = np.random.default_rng(0)
    x, junk = rng.uniform(0.5, 4, 30), rng.uniform(-100, 100, 30)
    fn = discover((np.stack([x, junk], 1), truth(x)), names=["x", "j"])
    assert fn.render() == expected
    fresh = rng.uniform(0.5, 4, 20)
    assert np.allclose(fn.evaluate(fresh), truth(fresh), rtol=1e-9)


def test_observational_keys_separate_sign_flips_and_merge_rounding_noise():
    from circuitlab.registry.search import _keys

    rng = np.random.default_rng(0)
    v = rng.integers(-1, 2, (50_000, 12)).astype(np.float64)
    distinct = np.unique(v, axis=0)
    assert len(np.unique(_keys(distinct))) == len(distinct)  # e.g. x - y vs |x - y| on bits
    w = rng.uniform(-100, 100, (1000, 30))
    assert np.mean(_keys(w * (1 + 1e-14)) == _keys(w)) > 0.9  # float noise merges
    assert np.all(_keys(w * (1 + 1e-8)) != _keys(w))  # a difference above rtol does not


def test_simplification_is_verified_and_shrinks():
    fn = _solve(CASES["NAND_INT"]).function
    assert fn.render() == "BNOT(AND(a, b))"  # found as -AND(a, b) - 1, rewritten and checked


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("add_mod_23", "ADDMOD(a, b, p=23)"),
        ("sub_mod_23", "SUBMOD(a, b, p=23)"),
        ("mul_mod_23", "MULMOD(a, b, p=23)"),
        ("div_mod_23", "DIVMOD(a, b, p=23)"),
    ],
)
def test_names_what_a_modular_task_computes(spec: str, expected: str):
    from circuitlab.tasks import get_task

    data = get_task(spec).dataset()
    X, y = data.inputs[:, :2].astype(float), data.targets[:, 0].astype(float)
    assert discover((X, y), names=["a", "b"]).render() == expected
