"""Latent chaining: feed circuit A's output representation into circuit B without decoding.

Token-level chaining decodes A's logits to a value and re-encodes it as B's input token. A
latent adapter instead maps A's residual stream at its answer position (after the last block,
with A running as its circuit) straight into B's token embedding at one input port, as in model
stitching (Bansal, Nakkiran & Barak 2021):

1. run A on every input of its domain; collect its output representation R at the answer
   position (the final residual, or the softmax of its logits) and the values v = A(x);
2. fit W (d_A + 1, d_B) in closed form by ridge-regularised least squares from [R, 1] to B's
   embedding rows W_E[v] (activation matching, not task loss: Balogh & Jelasity 2025 report
   that stitches fitted on the task loss can reach out-of-distribution representations);
3. at run time B's `hook_embed` at the port is replaced by [R, 1] W, every other input of B is
   encoded as usual, and B runs as its circuit.

Which representation matters. Grokked modular circuits carry the answer in a few Fourier
frequencies of their own (Nanda et al. 2023): A's final residual is, as a function of its
answer s, a combination of cos/sin(w_k s) for A's key frequencies k, and B's embedding of s
lives on B's key frequencies. When the two sets differ no linear map takes one to the other, so
a "resid" stitch fails between independently trained circuits however it is fitted (measured:
12% on add -> mul mod 31). The softmax of A's logits ("probs") is close to one-hot in s, from
which B's embedding is linear: that stitch reads A's representation without decoding it.

`LatentChain` is a library function like any other (same call convention), so its accuracy is
measured against token-level chaining on the same inputs. `self_stitch` is the sanity check:
an adapter fitted from a circuit's residual onto itself acts as the identity on the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from circuitlab.compose.functions import LibraryFunction
from circuitlab.compose.kinds import CircuitFunction
from circuitlab.compose.library import domain_inputs
from circuitlab.compose.types import CompositionError

DEFAULT_RIDGE = 1e-4
BATCH = 8192


@dataclass(frozen=True)
class LatentAdapter:
    """A linear map from A's final residual (plus a bias) into B's embedding at one port."""

    weight: Tensor  # (d_A + 1, d_B)
    port: str
    site: str  # resid | probs: which representation of A it reads
    fit_inputs: int
    fit_error: float  # ||[R,1] W - T|| / ||T|| on the fitting data

    def __call__(self, states: Tensor) -> Tensor:
        ones = torch.ones(len(states), 1, dtype=states.dtype)
        return torch.cat([states, ones], 1) @ self.weight


SITES = ("resid", "probs")


@torch.no_grad()
def final_states(fn: CircuitFunction, *args: np.ndarray, site: str = "resid") -> Tensor:
    """A's output representation at its first answer position, with A running as its circuit
    (or model, in model mode): "resid", the residual stream after the last block (N, d_model);
    "probs", the softmax of its answer logits (N, d_vocab_out)."""
    if site not in SITES:
        raise CompositionError(f"site must be one of {SITES}, got {site!r}")
    circuit = fn.circuit
    hook = f"blocks.{circuit.model.cfg.n_layers - 1}.hook_resid_post"
    tokens = circuit.encode(*args)
    out: list[Tensor] = []

    def save(x: Tensor, name: str) -> None:
        out.append(x[:, 0].detach())  # the last block computes only the answer positions

    for start in range(0, len(tokens), BATCH):
        batch = tokens[start : start + BATCH]
        if site == "probs":
            out.append(circuit.logits(batch, mode=fn.mode)[:, 0].float().softmax(-1))
            continue
        with circuit.model.hooks([(hook, save)]):
            circuit.logits(batch, mode=fn.mode)
    return torch.cat(out) if out else torch.zeros(0, circuit.model.cfg.d_model)


def _solve(x: Tensor, y: Tensor, ridge: float) -> Tensor:
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1).double()
    gram = x.T @ x
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    return torch.linalg.solve(gram, x.T @ y.double()).float()


def _domain_inputs(fn: LibraryFunction) -> list[np.ndarray]:
    args, exhaustive = domain_inputs(fn)
    if not exhaustive:
        raise CompositionError(f"{fn.name} has too many inputs to fit an adapter on all of them")
    return args


def fit_adapter(
    source: CircuitFunction,
    target: CircuitFunction,
    port: str,
    *,
    site: str = "resid",
    ridge: float = DEFAULT_RIDGE,
) -> LatentAdapter:
    """Fit the adapter from `source`'s output representation (`site`) into `target`'s embedding
    at `port`, on every input of the source's (finite, scalar) domain."""
    names = [p.name for p in target.params]
    if port not in names:
        raise CompositionError(f"{target.name} has no port {port!r} (ports: {names})")
    wanted = target.params[names.index(port)].type
    if not wanted.accepts(source.output):
        raise CompositionError(
            f"{source.name} output ({source.output}) cannot flow into {target.name}.{port} "
            f"({wanted})"
        )
    if any(p.type.is_grid for p in source.params) or source.output.is_grid:
        raise CompositionError("latent adapters are fitted on scalar circuits only")
    args = _domain_inputs(source)
    states = final_states(source, *args, site=site)
    values = torch.from_numpy(source(*args))
    embed = target.circuit.model.param("embed.W_E").detach()[values]
    weight = _solve(states, embed, ridge)
    fitted = torch.cat([states, torch.ones(len(states), 1)], 1) @ weight
    error = float((fitted - embed).norm() / embed.norm().clamp_min(1e-12))
    return LatentAdapter(weight, port, site, len(states), error)


class LatentChain(LibraryFunction):
    """`target(..., port=source(*source_args), ...)` with the value passed as a latent vector.
    Parameters: the source's, then the target's other ports."""

    kind = "latent"

    def __init__(
        self, source: CircuitFunction, target: CircuitFunction, adapter: LatentAdapter
    ) -> None:
        from circuitlab.compose.functions import Param

        rest = [p for p in target.params if p.name != adapter.port]
        params = tuple(Param(f"{source.name}_{p.name}", p.type) for p in source.params)
        params += tuple(Param(f"{target.name}_{p.name}", p.type) for p in rest)
        super().__init__(
            f"{target.name}∘{source.name}",
            f"latent:{source.ref}->{target.ref}#{adapter.port}",
            params,
            target.output,
        )
        self.source, self.target, self.adapter = source, target, adapter
        self._port_index = [p.name for p in target.params].index(adapter.port)
        self.chunk_size = BATCH

    @torch.no_grad()
    def evaluate(self, *args: np.ndarray) -> np.ndarray:
        n_src = self.source.arity
        src_args, rest = args[:n_src], list(args[n_src:])
        latent = self.adapter(final_states(self.source, *src_args, site=self.adapter.site))
        target_args = rest[: self._port_index] + [np.zeros(len(args[0]), np.int64)]
        target_args += rest[self._port_index :]
        circuit = self.target.circuit
        tokens = circuit.encode(*target_args)
        position = circuit.interface.inputs[self._port_index].all_positions()[0]

        def replace(x: Tensor, name: str) -> Tensor:
            x = x.clone()
            x[:, position] = latent
            return x

        with circuit.model.hooks([("hook_embed", replace)]):
            logits = circuit.logits(tokens, mode=self.target.mode, batch_size=len(tokens))
        return circuit.decode(logits)


@torch.no_grad()
def self_stitch(fn: CircuitFunction, ridge: float = DEFAULT_RIDGE) -> dict[str, float]:
    """Fit an adapter from a circuit's final residual onto itself: it should act as the identity
    on the data (`relative_error` ~ 0) and leave the circuit's answers unchanged (`agreement`)."""
    args = _domain_inputs(fn)
    states = final_states(fn, *args)
    weight = _solve(states, states, ridge)
    mapped = torch.cat([states, torch.ones(len(states), 1)], 1) @ weight
    model = fn.circuit.model
    w_u, b_u = model.param("unembed.W_U").detach(), model.param("unembed.b_U").detach()
    same = ((mapped @ w_u + b_u).argmax(-1) == (states @ w_u + b_u).argmax(-1)).float().mean()
    return {
        "relative_error": float((mapped - states).norm() / states.norm()),
        "agreement": float(same),
        "n_inputs": float(len(states)),
    }
