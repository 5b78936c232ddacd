"""Latent adapters: fitted in closed form, callable like any library function."""

import numpy as np
import pytest

from circuitlab.compose import CompositionError
from circuitlab.compose.stitch import LatentChain, final_states, fit_adapter, self_stitch


def test_latent_chain_runs_with_the_call_convention(lib):
    add, mul = lib["add_mod_11"], lib["mul_mod_11"]
    adapter = fit_adapter(add, mul, "b", site="probs")
    assert adapter.weight.shape == (11 + 1, mul.circuit.model.cfg.d_model)
    assert adapter.fit_inputs == 121 and 0 <= adapter.fit_error < 1
    chain = LatentChain(add, mul, adapter)
    assert [p.name for p in chain.params] == ["add_mod_11_a", "add_mod_11_b", "mul_mod_11_a"]
    a, b, c = (g.reshape(-1) for g in np.meshgrid(*(np.arange(11),) * 3, indexing="ij"))
    out = chain(a, b, c)
    assert out.shape == (1331,) and out.min() >= 0 and out.max() < 11
    # the port is filled by the latent vector: what the placeholder token was does not matter
    assert np.array_equal(chain(a[:50], b[:50], c[:50]), out[:50])
    assert final_states(add, a[:4], b[:4]).shape == (4, add.circuit.model.cfg.d_model)


def test_adapter_errors_and_the_self_stitch_identity(lib):
    add, mul = lib["add_mod_11"], lib["mul_mod_11"]
    with pytest.raises(CompositionError, match="no port 'z'"):
        fit_adapter(add, mul, "z")
    with pytest.raises(CompositionError, match="site must be one of"):
        fit_adapter(add, mul, "a", site="attn")
    check = self_stitch(add)
    assert check["relative_error"] < 0.05 and check["agreement"] == 1.0
