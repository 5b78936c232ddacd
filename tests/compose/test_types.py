import numpy as np
import pytest
import torch

from circuitlab.compose import CompositionError, DomainError, ValueType
from circuitlab.registry import Domain, Kind


@pytest.mark.parametrize(
    "text", ["Z_113", "S_5", "grid[3x3]:Z_3", "Z[0..9]", "Z", "R", "B", "tokens[114]"]
)
def test_parse_round_trips(text):
    assert str(ValueType.parse(text)) == text


def test_registry_domains_read_as_the_same_types():
    assert ValueType.from_registry(Domain(Kind.INT, modulus=31)) == ValueType.parse("Z_31")
    grid = Domain(Kind.GRID, shape=(3, 3), colours=3)
    assert ValueType.from_registry(grid) == ValueType.parse("grid[3x3]:Z_3")
    assert ValueType.parse("Grid[3x3, 3 colours]") == ValueType.parse("grid[3x3]:Z_3")


def test_accepts_is_value_inclusion():
    z31, z97 = ValueType.parse("Z_31"), ValueType.parse("Z_97")
    assert z31.accepts(z31) and not z97.accepts(z31) and not z31.accepts(z97)
    assert ValueType.parse("Z").accepts(z31) and ValueType.parse("R").accepts(z31)
    assert ValueType.parse("Z[0..40]").accepts(z31) and not ValueType.parse("Z[0..20]").accepts(z31)
    grid = ValueType.parse("grid[3x3]:Z_3")
    assert not z31.accepts(grid) and not grid.accepts(z31)
    assert ValueType("grid").accepts(grid) and not grid.accepts(ValueType.parse("grid[4x4]:Z_3"))


def test_check_converts_and_names_bad_values():
    z = ValueType.parse("Z_7")
    assert z.check(torch.tensor([1, 2]), "f.a").dtype == np.int64
    assert z.check(3.0, "f.a") == 3
    with pytest.raises(DomainError, match=r"f\.a: 7 is outside Z_7 \(values 0\.\.6\)"):
        z.check([1, 7], "f.a")
    with pytest.raises(DomainError, match="not an integer"):
        z.check(2.5, "f.a")
    grid = ValueType.parse("grid[2x2]:Z_3")
    with pytest.raises(DomainError, match="shape"):
        grid.check(np.zeros((3, 3), int), "g")
    with pytest.raises(DomainError, match="outside"):
        grid.check([[0, 1], [2, 3]], "g")
    with pytest.raises(CompositionError, match="unknown domain"):
        ValueType.parse("Q_5")
