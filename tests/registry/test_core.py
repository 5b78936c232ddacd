"""Primitives, expressions, functions, the registry and the JSON store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from circuitlab.registry import (
    Const,
    Domain,
    Function,
    Input,
    JsonFileStore,
    Kind,
    Registry,
    RegistryError,
    Var,
    call,
    get_primitive,
)
from circuitlab.registry import expr as ex

X, Y = Var(0), Var(1)


def ev(e, *inputs, constants=None):
    return ex.evaluate(e, [np.asarray(i, dtype=np.float64) for i in inputs], constants or {})


def test_arithmetic_and_safe_elementary():
    a, b = np.array([3.0, -2.0, 5.0]), np.array([2.0, 4.0, 0.0])
    assert ev(call("SUB", X, Y), a, b).tolist() == [1.0, -6.0, 5.0]
    div = ev(call("DIV", X, Y), a, b)
    assert div[:2].tolist() == [1.5, -0.5] and np.isnan(div[2])
    assert ev(call("SQUARE", call("NEG", X)), a).tolist() == [9.0, 4.0, 25.0]
    log = ev(call("LOG", X), a)
    assert np.isnan(log[1]) and log[0] == np.log(3.0)
    assert np.isnan(ev(call("EXP", X), [1000.0])[0])  # overflow is undefined, not inf


def test_modular_arithmetic_matches_python():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 113, 200), rng.integers(1, 113, 200)
    for op, ref in [
        ("ADDMOD", lambda x, y: (x + y) % 113),
        ("SUBMOD", lambda x, y: (x - y) % 113),
        ("MULMOD", lambda x, y: (x * y) % 113),
        ("DIVMOD", lambda x, y: (x * pow(int(y), -1, 113)) % 113),
    ]:
        got = ev(call(op, X, Y, p=113), a, b)
        assert got.tolist() == [float(ref(int(x), int(y))) for x, y in zip(a, b, strict=True)], op
    assert np.isnan(ev(call("DIVMOD", X, Y, p=7), [3], [14])[0])
    with pytest.raises(RegistryError, match="modulus"):
        ev(call("MOD", X, p=1), [3])


def test_bitwise_logic_comparisons_cond():
    a, b = np.array([12, 5, 0, 1]), np.array([10, 3, 0, 1])
    assert ev(call("AND", X, Y), a, b).tolist() == [8, 1, 0, 1]
    assert ev(call("XOR", X, Y), a, b).tolist() == [6, 6, 0, 0]
    assert ev(call("BNOT", X), a).tolist() == [-13, -6, -1, -2]
    assert ev(call("NOT", call("AND", X, Y)), [0, 0, 1, 1], [0, 1, 0, 1]).tolist() == [1, 1, 1, 0]
    assert ev(call("LT", X, Y), a, b).tolist() == [0, 0, 0, 0]
    assert ev(call("COND", call("LE", X, Y), X, Y), [1, 5], [4, 2]).tolist() == [1, 2]
    assert get_primitive("NOT").out_kind((Kind.INT,)) is None  # logical not is for booleans only


def test_loop_is_bounded_iteration():
    loop = call("LOOP", X, Y, body=call("MUL", Var(0), Const("two")), bound=10)
    got = ev(loop, [0, 1, 3, 50], [1, 1, 1, 1], constants={"two": 2.0})
    assert got.tolist() == [1, 2, 8, 1024]  # 50 is clipped to the bound 10


def test_grid_primitives_match_hand_computed_grids():
    g = np.array([[[1, 2, 3], [4, 5, 6]]])  # one 2x3 grid
    run = lambda e: ex.evaluate(e, [g], {})  # noqa: E731
    assert run(call("ROT90", X))[0].tolist() == [[3, 6], [2, 5], [1, 4]]
    assert run(call("ROT270", X))[0].tolist() == [[4, 1], [5, 2], [6, 3]]
    assert run(call("MIRROR", X))[0].tolist() == [[3, 2, 1], [6, 5, 4]]
    assert run(call("FLIP", X))[0].tolist() == [[4, 5, 6], [1, 2, 3]]
    assert run(call("TRANSPOSE", X))[0].tolist() == [[1, 4], [2, 5], [3, 6]]
    assert run(call("ANTITRANSPOSE", X))[0].tolist() == [[6, 3], [5, 2], [4, 1]]
    assert run(call("RECOLOUR", X, k=7))[0].tolist() == [[2, 3, 4], [5, 6, 0]]
    assert run(call("REPLACE_COLOUR", X, src=5, dst=0))[0].tolist() == [[1, 2, 3], [4, 0, 6]]
    assert run(call("CROP", X, r=0, c=1, h=2, w=2))[0].tolist() == [[2, 3], [5, 6]]
    one = call("CROP", X, r=1, c=2, h=1, w=1)
    assert run(call("UPSCALE", one, k=2))[0].tolist() == [[6, 6]] * 2
    with pytest.raises(RegistryError, match="exceeds"):
        run(call("CROP", X, r=1, c=0, h=2, w=1))


def _energy_registry(reg: Registry) -> Registry:
    reg.register(
        Function.new(
            "KE",
            ["m", "v"],
            call("MUL", Const("c"), call("MUL", X, call("SQUARE", Y))),
            constants={"c": 0.5},
        )
    )
    reg.register(
        Function.new(
            "PE", ["m", "h"], call("MUL", Const("g"), call("MUL", X, Y)), constants={"g": 9.81}
        )
    )
    reg.register(
        Function.new(
            "TOTAL_E",
            ["m", "v", "h"],
            call("ADD", call("KE", X, Y, version=1), call("PE", X, Var(2), version=1)),
        )
    )
    return reg


def test_layers_names_and_versions():
    reg = _energy_registry(Registry())
    assert [(f.name, f.layer) for f in reg] == [("KE", 1), ("PE", 1), ("TOTAL_E", 2)]
    assert reg.call("TOTAL_E", 2.0, 3.0, 1.0).item() == pytest.approx(0.5 * 2 * 9 + 9.81 * 2)
    with pytest.raises(RegistryError, match="already exists"):
        reg.register(Function.new("KE", ["m"], X))
    with pytest.raises(RegistryError, match="primitive"):
        reg.register(Function.new("ADD", ["a"], X))
    with pytest.raises(RegistryError, match="identifier"):
        Function.new("bad name", ["a"], X)
    with pytest.raises(RegistryError, match="no function NOPE"):
        reg.register(Function.new("USES_NOPE", ["a"], call("NOPE", X, version=1)))
    v2 = reg.register(Function.new("KE", ["m", "v"], call("MUL", X, Y)), new_version=True)
    assert v2.version == 2 and reg.get("KE").version == 2
    assert reg.call("TOTAL_E", 2.0, 3.0, 1.0).item() == pytest.approx(9 + 19.62)  # pinned KE@1
    with pytest.raises(RegistryError, match="undefined constants"):
        Function.new("F", ["a"], call("ADD", X, Const("k")))


def test_json_store_round_trip_and_refuses_overwrite(tmp_path: Path):
    reg = _energy_registry(Registry(JsonFileStore(tmp_path)))
    again = Registry.open(tmp_path)
    assert [f.to_dict() for f in again] == [f.to_dict() for f in reg]
    with pytest.raises(RegistryError, match="already stored"):
        JsonFileStore(tmp_path).put(reg.get("KE"))
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary files left behind
    (tmp_path / "BROKEN@1.json").write_text("{not json")
    with pytest.raises(RegistryError, match="corrupt"):
        Registry.open(tmp_path).get("BROKEN")
    newer = reg.get("KE").to_dict() | {"schema": 99, "name": "NEWER"}
    (tmp_path / "NEWER@1.json").write_text(json.dumps(newer))
    with pytest.raises(RegistryError, match="newer"):
        Registry.open(tmp_path).get("NEWER")


def test_reload_in_fresh_process_is_bitwise_identical(tmp_path: Path):
    reg = _energy_registry(Registry(JsonFileStore(tmp_path)))
    rng = np.random.default_rng(1)
    m, v, h = rng.uniform(-100, 100, (3, 257))
    here = reg.call("TOTAL_E", m, v, h)
    np.save(tmp_path.parent / "inputs.npy", np.stack([m, v, h]))
    code = (
        "import sys, numpy as np\n"
        "from circuitlab.registry import Registry\n"
        f"x = np.load({str(tmp_path.parent / 'inputs.npy')!r})\n"
        f"out = Registry.open({str(tmp_path)!r}).call('TOTAL_E', *x)\n"
        "sys.stdout.write(' '.join(float(o).hex() for o in out))\n"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert there == [float(o).hex() for o in here]


def test_domains_and_inputs_round_trip():
    d = Domain.infer(np.array([1.0, 7.0, 3.0]))
    assert str(d) == "Z[1..7]" and Domain.from_dict(d.to_dict()) == d
    assert Domain.infer(np.array([0.0, 1.0])).kind is Kind.BOOL
    assert str(Domain(Kind.INT, modulus=113)) == "Z_113"
    grid = Domain.infer(np.zeros((4, 3, 3), dtype=int) + 2)
    assert grid.kind is Kind.GRID and grid.shape == (3, 3)
    assert Input.from_dict(Input("g", grid).to_dict()) == Input("g", grid)
    with pytest.raises(RegistryError, match="kind"):
        Domain.from_dict({"kind": "complex"})


def test_grid_primitives_equal_the_grid_tasks():
    from circuitlab.tasks.grid import GRID_OPS, sample_grids

    grids = sample_grids(3, 3, 4, size=200)
    ours = {
        "rot90": call("ROT90", X),
        "rot180": call("ROT180", X),
        "rot270": call("ROT270", X),
        "mirror": call("MIRROR", X),
        "flip": call("FLIP", X),
        "transpose": call("TRANSPOSE", X),
        "antitranspose": call("ANTITRANSPOSE", X),
        "recolour": call("RECOLOUR", X, k=4),
    }
    assert set(ours) == set(GRID_OPS)
    for op, (_, transform, _) in GRID_OPS.items():
        assert np.array_equal(ex.evaluate(ours[op], [grids], {}), transform(grids, 4)), op
