"""Programs: traced or built, type-checked before running, stored, rendered, run from the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from circuitlab.compose import Call, CompositionError, Param, Program, ValueType


def test_traced_program_equals_calling_by_hand(lib):
    add, mul = lib["add_mod_11"], lib["mul_mod_11"]

    def muladd(a, b, c):
        return add(mul(a, b), c)

    program = Program.trace(muladd)
    assert program.signature() == "muladd(a: Z_11, b: Z_11, c: Z_11) -> Z_11"
    a, b, c = (g.reshape(-1) for g in np.meshgrid(*(np.arange(11),) * 3, indexing="ij"))
    assert np.array_equal(program(a, b, c), add(mul(a, b), c))
    value, trace = program.run(2, 3, 4, trace=True)
    assert [s.ref for s in trace.steps] == [mul.ref, add.ref]
    assert [s.node for s in trace.steps] == ["v1", "v2"] and value == add(mul(2, 3), 4)
    assert all(s.features and s.features[0] for s in trace.steps)  # both circuits' features
    text = program.to_python()
    assert "v1 = mul_mod_11(a, b)" in text and "return v2" in text
    # constants are part of the program
    plus_two = Program.trace(lambda x: add(x, 2), name="plus_two")
    assert plus_two(np.arange(3)).tolist() == add(np.arange(3), 2).tolist()


def test_stored_program_loads_back_and_calls_its_circuits(lib, small_catalog):
    add, mul = lib["add_mod_11"], lib["mul_mod_11"]
    program = Program.trace(lambda a, b, c: add(mul(a, b), c), name="muladd")
    pid = lib.save(program)
    record = lib.catalog.get(pid)
    assert record.calls == [mul.catalog_id, add.catalog_id]
    again = lib.program("muladd")
    assert again.to_dict() == program.to_dict()
    assert np.array_equal(again([1, 2], 3, 4), program([1, 2], 3, 4))
    lineage = lib.catalog.lineage(pid)
    assert mul.catalog_id in lineage.nodes


def test_type_mismatches_are_refused_before_running(lib):
    add = lib["add_mod_11"]
    addmod13 = lib.primitive("ADDMOD", p=13)
    rot = lib.primitive("ROT90")
    with pytest.raises(
        CompositionError, match=r"add_mod_11 \(v1: Z_11\) cannot flow into ADDMOD_13\.a \(Z_13\)"
    ):
        Program.trace(lambda a, b: addmod13(add(a, b), 0))
    with pytest.raises(CompositionError, match=r"cannot flow into add_mod_11\.a \(Z_11\)"):
        Program.trace(lambda g: add(rot(g), 1), g="grid[3x3]:Z_3")
    # an explicit program is checked the same way, and no function is called while checking
    calls = [Call("v1", add.ref, ("a", "a")), Call("v2", addmod13.ref, ("v1", "a"))]
    inputs = [Param("a", ValueType.parse("Z_11"))]
    functions = {add.ref: add, addmod13.ref: addmod13}
    with pytest.raises(CompositionError, match="cannot flow into ADDMOD_13"):
        Program.build("bad", inputs, calls, "v2", functions)


def test_cycles_and_unknown_names_are_refused(lib):
    add = lib["add_mod_11"]
    inputs = [Param("a", ValueType.parse("Z_11"))]
    cycle = [Call("v1", add.ref, ("a", "v2")), Call("v2", add.ref, ("v1", "a"))]
    with pytest.raises(CompositionError, match="cycle"):
        Program.build("loop", inputs, cycle, "v2", {add.ref: add})
    with pytest.raises(CompositionError, match="unknown function"):
        Program.build("p", inputs, [Call("v1", "function:NOPE@1", ("a", "a"))], "v1", {})
    with pytest.raises(CompositionError, match="not an input or an earlier call"):
        Program.build("p", inputs, [Call("v1", add.ref, ("a", "b"))], "v1", {add.ref: add})
    with pytest.raises(CompositionError, match="unknown function reference"):
        Program.from_dict(
            {
                "name": "p",
                "inputs": [],
                "calls": [{"id": "v1", "function": "x:y", "args": []}],
                "output": "v1",
            },
            lib,
        )


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "circuitlab", *args], capture_output=True, text=True, timeout=120
    )


def test_run_command(lib, small_catalog, tmp_path):
    url = small_catalog[0]
    add, mul = lib["add_mod_11"], lib["mul_mod_11"]
    program = Program.trace(lambda a, b, c: add(mul(a, b), c), name="muladd")
    path = tmp_path / "muladd.json"
    path.write_text(json.dumps(program.to_dict()))
    lib.save(program)
    for source in (str(path), "muladd"):
        res = _cli("run", source, "-i", "a=1,2", "-i", "b=3", "-i", "c=4", "-c", url, "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["output"] == program([1, 2], 3, 4).tolist()
    res = _cli("run", "muladd", "-i", "a=1", "-i", "b=3", "-i", "c=4", "-c", url, "--trace")
    assert res.returncode == 0 and "mul_mod_11" in res.stdout and "input 0:" in res.stdout
    for bad, message in (
        (["run", "muladd", "-i", "a=11", "-i", "b=3", "-i", "c=4"], "muladd.a: 11 is outside Z_11"),
        (["run", "muladd", "-i", "a=1"], "missing ['b', 'c']"),
        (["run", "nothing"], "no program 'nothing'"),
        (["run", "[/x]"], "no program '[/x]'"),  # user text is not read as rich markup
        (["run", str(tmp_path / "none.json")], "cannot read program"),
    ):
        res = _cli(*bad, "-c", url)
        assert res.returncode == 2 and message in res.stderr, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
