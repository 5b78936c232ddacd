"""Task synthesis: accepted compositions compute the right thing; ill-posed ones are refused."""

from __future__ import annotations

import itertools

import pytest

from circuitlab.tasks import TaskError, get_task, synthesize


def _table(spec: str) -> dict[tuple[int, ...], int]:
    data = get_task(spec).dataset()
    rows = zip(data.inputs.tolist(), data.targets[:, 0].tolist(), strict=True)
    return {tuple(row[:-1]): c for row, c in rows}


def test_three_operand_example() -> None:
    p = 7
    task = get_task("synth_mod_7[a*b+c]")
    assert (task.n_ctx, task.answer_positions, task.d_vocab, task.d_vocab_out) == (4, (3,), 8, 7)
    assert (task.dataset().inputs[:, 3] == p).all()
    expected = {(a, b, c): (a * b + c) % p for a, b, c in itertools.product(range(p), repeat=3)}
    assert _table("synth_mod_7[a*b+c]") == expected


@pytest.mark.parametrize(
    ("expr", "reference"),
    [
        ("add(mul(a,b),c)", lambda a, b, c, p: (a * b + c) % p),
        ("x2y2(a, b+c)", lambda a, b, c, p: (a**2 + (b + c) ** 2) % p),
        ("a^3 - 2*b*c", lambda a, b, c, p: (a**3 - 2 * b * c) % p),
        ("(a-b)**2*c", lambda a, b, c, p: ((a - b) ** 2 * c) % p),
        ("-a + 3*b - c", lambda a, b, c, p: (-a + 3 * b - c) % p),
    ],
)
def test_expressions_match_python(expr: str, reference) -> None:
    p = 11
    expected = {
        (a, b, c): reference(a, b, c, p) for a, b, c in itertools.product(range(p), repeat=3)
    }
    assert _table(f"synth_mod_{p}[{expr}]") == expected


def test_division_drops_zero_divisors() -> None:
    p = 7
    got = _table("synth_mod_7[(a+b)/c]")
    expected = {
        (a, b, c): (a + b) * pow(c, -1, p) % p
        for a, b, c in itertools.product(range(p), repeat=3)
        if c != 0
    }
    assert got == expected
    got = _table("synth_mod_7[div(a, b-1)]")  # inside a registered op too
    assert all(b != 1 for _, b in got) and len(got) == 7 * 6


def test_two_operands_and_spec_normalisation() -> None:
    task = synthesize(" a * a + b ", 5)
    assert task.spec == "synth_mod_5[a*a+b]" and task.n_ctx == 3
    assert get_task(task.spec).spec == task.spec
    assert task.operands == ("a", "b")


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("a*0+3", "constant 3"),
        ("a-a+b-b", "constant 0"),
        ("a+b-b", "equals the operand a"),
        ("c*1 + 0*a*b", "equals the operand c"),
        ("a*c", "does not use the operand b"),
        ("c", "does not use the operand a, b"),
        ("a*b + 0*c", "does not depend on the operand c"),
        ("a*b + c - c", "does not depend on the operand c"),
        ("5", "uses no operand"),
        ("a/(b-b)", "undefined on every input"),
    ],
)
def test_ill_posed_compositions_are_rejected(expr: str, reason: str) -> None:
    with pytest.raises(TaskError, match=f"ill-posed: .*({reason})"):
        get_task(f"synth_mod_7[{expr}]")


def test_fermat_power_is_not_constant() -> None:
    """a^(p-1) is 1 except at a = 0, so it is a (nearly constant but) valid function of a."""
    assert _table("synth_mod_7[a^6]") == {(a,): (0 if a == 0 else 1) for a in range(7)}
    with pytest.raises(TaskError, match="constant 1"):
        get_task("synth_mod_7[(a+1)^0*b^0]")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synth_mod_8[a*b]", "p must be a prime"),
        ("synth_mod_131[a*b+c]", "p must be at most 127"),
        ("synth_mod_7[a+d]", "unknown name 'd'"),
        ("synth_mod_7[a % b]", "not allowed"),
        ("synth_mod_7[a**b]", "exponents must be integer constants"),
        ("synth_mod_7[a**-1]", "exponents must be integer constants"),
        ("synth_mod_7[a*1.5]", "not an integer"),
        ("synth_mod_7[pow(a,b)]", "unknown operation 'pow'"),
        ("synth_mod_7[add(a)]", "takes exactly two arguments"),
        ("synth_mod_7[__import__('os').system('true')]", "not allowed|unknown operation"),
        ("synth_mod_7[lambda: a]", "not allowed"),
        ("synth_mod_7[a+]", "cannot parse"),
        ("synth_mod_7[]", "empty"),
        ("synth_mod_7", "synthesis specs look like synth_mod_97"),
        ("synth_add", "synthesis specs look like"),
    ],
)
def test_bad_synthesis_specs(spec: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        get_task(spec)
