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
    again = discover(  # the same examples again: the function registered the first time
        (CASES["NAND"].X, CASES["NAND"].y),
        names=("a", "b"),
        name="NAND",
        registry=reg,
        register=True,
    )
    assert again.ref == "NAND@1" and len(list(tmp_path.glob("NAND@*.json"))) == 1
    with pytest.raises(RegistryError, match="already exists"):
        discover(
            (CASES["XOR"].X, CASES["XOR"].y),
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
    # without pair fits, which find SUB(OR(a, b), AND(a, b)): a plain formula of NAND's cost wins
    cfg = DiscoveryConfig(groups=("bitwise",), exclude=("XOR", "NOT", "BNOT"), pairs=False)
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
    from circuitlab.registry.bank import _keys

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


GRID_1_5 = np.array([(a, b) for a in range(1, 6) for b in range(1, 6)], dtype=float)


def test_a_plain_formula_wins_a_tie_with_a_registered_function():
    from circuitlab.registry.guide import load_guide
    from circuitlab.registry.proposer import UniformProposer

    reg = Registry()
    X = GRID_1_5
    area = discover((X, X[:, 0] * X[:, 1]), names=["w", "h"], name="AREA", registry=reg)
    reg.register(area)  # unrelated to forces, and as cheap as MUL(m, a)
    for proposer in (UniformProposer(), load_guide()):
        fn = discover(
            (X, X[:, 0] * X[:, 1]), names=["m", "a"], name="F", registry=reg, proposer=proposer
        )
        assert fn.render() == "MUL(m, a)" and not fn.uses(), proposer.name


def test_a_registered_function_still_wins_when_it_is_smaller():
    reg = Registry()
    for name in ("PE", "NAND"):
        c = CASES[name]
        discover((c.X, c.y), names=c.names, name=name, registry=reg, register=True)
    # PE(m, h) comes after MUL(m, h) at cost 3, but 9.81*MUL(m, h) is larger
    pe = discover((CASES["PE"].X, CASES["PE"].y), names=CASES["PE"].names, name="PE2", registry=reg)
    assert pe.render() == "PE(m, h)"
    # pair fits: XOR = NAND + OR - 1 is found, and so is the smaller plain OR - AND
    cfg = DiscoveryConfig(groups=("bitwise",), exclude=("XOR", "NOT", "BNOT"))
    c = CASES["XOR"]
    xor = discover((c.X, c.y), names=c.names, name="XOR_FN", registry=reg, config=cfg)
    assert xor.render() == "SUB(OR(a, b), AND(a, b))"


def test_registered_functions_are_used_only_inside_their_domains():
    from circuitlab.registry.ops import _function_op

    reg = Registry()
    ke = lambda X: 0.5 * X[:, 0] * X[:, 1] ** 2  # noqa: E731
    discover((GRID_1_5, ke(GRID_1_5)), names=["m", "v"], name="KE", registry=reg, register=True)
    inside = discover((GRID_1_5, ke(GRID_1_5)), names=["m", "v"], name="KIN", registry=reg)
    assert inside.render() == "KE(m, v)"  # m, v in Z[1..5]: reuse
    wide = np.array([(a, b) for a in range(1, 9) for b in range(1, 9)], dtype=float)
    outside = discover((wide, ke(wide)), names=["m", "v"], name="KIN", registry=reg)
    assert outside.render() == "MUL(0.5, MUL(m, SQUARE(v)))" and not outside.uses()
    op = _function_op(reg.get("KE"), reg)
    got = op.apply(np.array([[2.0, 6.0, 2.5, 2.0]]), np.array([[3.0, 3.0, 3.0, 0.0]]))
    assert got[0, 0] == 9.0 and np.isnan(got[0, 1:]).all()  # 6, 2.5 and 0 are outside Z[1..5]


def test_search_under_a_taken_name_writes_nothing_and_ignores_that_function():
    reg = Registry()
    X = GRID_1_5
    discover((X, X[:, 0] * X[:, 1]), names=["m", "v"], name="P", registry=reg, register=True)
    # a different function under the taken name: search (no registration) never refuses
    result = search((X, X[:, 0] + X[:, 1]), names=["m", "v"], name="P", registry=reg)
    assert result.function.render() == "ADD(m, v)" and reg.get("P").version == 1
    # the same function: found again from scratch, not as a call of P itself
    result = search((X, X[:, 0] * X[:, 1]), names=["m", "v"], name="P", registry=reg)
    assert result.function.render() == "MUL(m, v)" and not result.function.uses()
    assert reg.same_as(result.function).ref == "P@1" and len(reg.store.all()) == 1


def test_same_definition_is_what_a_function_computes_on_its_domain():
    from circuitlab.registry import Const, Domain, Function, Input, Kind, Var, call

    reg = Registry()
    X, y = GRID_1_5, 0.5 * GRID_1_5[:, 0] * GRID_1_5[:, 1] ** 2
    dom = Domain(Kind.INT, 1.0, 5.0)
    inputs = [Input("m", dom), Input("v", dom)]
    # written differently by hand: MUL(MUL(0.5, m), MUL(v, v)), same values on Z[1..5]^2
    expr = call("MUL", call("MUL", Const("c0"), Var(0)), call("MUL", Var(1), Var(1)))
    hand = reg.register(
        Function.new("KE", inputs, expr, output=Domain(Kind.REAL, 0.5, 62.5), constants={"c0": 0.5})
    )
    found = discover((X, y), names=["m", "v"], name="KE", registry=reg, register=True)
    assert found == hand and len(reg.store.all()) == 1
    # same expression but another declared output domain: a different definition, refused
    reg2 = Registry()
    reg2.register(Function.new("KE", inputs, expr, output=Domain(Kind.REAL), constants={"c0": 0.5}))
    with pytest.raises(RegistryError, match="differs from the one found"):
        discover((X, y), names=["m", "v"], name="KE", registry=reg2, register=True)
    assert len(reg2.store.all()) == 1
