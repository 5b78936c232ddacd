"""Fourier analysis of modular-arithmetic models (Nanda et al. 2023, "Progress measures for
grokking via mechanistic interpretability", sections 4-5).

A grokked model of (a op b) mod p embeds numbers as cos/sin of a few key frequencies w_k = 2 pi
k / p, multiplies them (trig identities) into cos/sin(w_k (a+b)) in attention and the MLP, and
reads the answer as sum_k alpha_k cos(w_k (a+b-c)). The measurements, in the order `analyze`
runs them:

1. Basis: the orthonormal Fourier basis of functions on Z_p: a constant, then cos(w_k x) and
   sin(w_k x) for k = 1..(p-1)/2 (`fourier_basis`).
2. Key frequencies, from the embedding alone: the norm of each frequency's cos/sin components in
   the DFT of W_E over the p number tokens, cut at the largest gap in log power
   (`key_frequencies`; the cut is documented there).
3. Units: for any matrix of activations over all p*p inputs (MLP neurons or transcoder features),
   each unit's dominant frequency and purity: the share of its variance (around its mean) that
   frequency k's terms in the 2-D basis of (a, b) explain (`unit_frequencies`).
4. Restricted and excluded loss (Nanda et al.'s definitions): the projection of the last
   MLP's answer-position activations onto cos/sin(w_k c) for the key frequencies (c the correct
   answer, i.e. cos/sin(w_k (a+b)) for addition). Restricted logits: the mean logits plus what
   that projection writes through the rest of the model (paths around the MLP keep only their
   mean); excluded: the model with the projection removed from the activations; patched at
   `blocks.{L-1}.mlp.hook_post` (`fourier_losses`, `fourier_fits.patched_losses`).
5. Logits: the share of (per-input and per-output centred) logit variance explained by
   sum_k alpha_k cos(w_k (c* - c)) over the key frequencies, c* the correct answer
   (`logit_fourier_fit`).
6. A label and description built from these numbers (`FourierReport.label`).

Everything here is a pure function of tensors; steps 4-6 and `analyze`, which run the model,
are in fourier_fits.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from circuitlab.extraction.fourier_fits import FourierLosses, LogitFit

# `key_frequencies` calls an embedding sparse when its weakest key frequency has at least this
# many times the median power of the other frequencies. Measured: a random embedding gives ~1.2,
# grokked add_mod_p models 8-100 (p = 113, fast recipe: 99), and models that grok within ~100
# steps on 70-80% of the pairs, whose embeddings still spread over 4-7 frequencies, ~4.
MIN_CONTRAST = 5.0
PURE_THRESHOLD = 0.85  # Nanda et al.: ~85% of neurons are > 85% explained by one frequency
# A frequency is a key of a set of units (neurons, features) when the units it dominates hold at
# least this share of their total weight. Grokked p = 113, neurons weighted by how much they move
# the logits: 7-37% for each embedding key, 0.4% for the next frequency (17, which 5% of the
# neurons are dominated by, counted unweighted).
KEY_SHARE = 0.02
# A ReLU neuron of key frequency k also carries 2k, 3k, 4k, and the logits may use them: the
# restricted loss keeps such a harmonic of a key when it holds at least this share of the last
# MLP's answer power (a grokked sub mod 113: the keys {4, 6, 14, 21} and 2x4 made a restricted
# loss of 8e-3 against a full 6e-4; adding the harmonics above 0.1%, 42 = 2x21, 12 = 3x4,
# 50 = 3x21, 28 = 2x14 and 16 = 4x4, 4e-4)
HARMONIC_SHARE = 0.001
# float64 elements per temporary when a computation over all p*p inputs goes by chunks (8 MiB)
CHUNK_ELEMENTS = 1 << 20


class FourierError(ValueError):
    """Input that the Fourier analysis cannot use (p not odd, incomplete grid, shape mismatch)."""


# --- 0. coordinates: which cyclic group the numbers live on ---------------------------------

# Operations that are addition in the discrete-log coordinates: with a = g^i and b = g^j for a
# primitive root g, a*b = g^(i+j) and a/b = g^(i-j), so the nonzero residues form Z_(p-1) and a
# model can run the Fourier algorithm there (mul_mod_97: three frequencies hold 85% of the
# embedding's energy in log order, a flat spectrum in token order).
LOG_FORMULAS = {"mul": "log a+log b", "div": "log a-log b"}
ADDITIVE_OPS = ("add", "sub")


def primitive_root(p: int) -> int:
    """The smallest generator of the multiplicative group mod the prime p."""
    if p == 2:
        return 1
    order = p - 1
    factors = {q for q in range(2, order + 1) if order % q == 0 and all(q % r for r in range(2, q))}
    for g in range(2, p):
        if all(pow(g, order // q, p) != 1 for q in factors):
            return g
    raise FourierError(f"{p} has no primitive root (not a prime?)")


@dataclass(frozen=True)
class Coordinates:
    """Where the p number tokens sit on the cyclic group Z_n the analysis runs over.

    basis: "additive" (n = p, token t at t) or "discrete_log" (n = p - 1, token g^i at i; token
        0 has no coordinate and is reported apart).
    generator: g for the discrete-log basis.
    tokens: tokens[i] is the residue at coordinate i.
    """

    basis: str
    p: int
    generator: int | None
    tokens: tuple[int, ...]

    @classmethod
    def additive(cls, p: int) -> Coordinates:
        return cls("additive", p, None, tuple(range(p)))

    @classmethod
    def discrete_log(cls, p: int) -> Coordinates:
        g = primitive_root(p)
        return cls("discrete_log", p, g, tuple(pow(g, i, p) for i in range(p - 1)))

    @property
    def n(self) -> int:
        return len(self.tokens)

    def of(self, residues: torch.Tensor) -> torch.Tensor:
        """Coordinates of residues (any shape), -1 for a residue that has none (0 in logs)."""
        table = torch.full((self.p,), -1, dtype=torch.long)
        table[torch.tensor(self.tokens, dtype=torch.long)] = torch.arange(self.n)
        return table[residues.long()]

    def describe(self) -> str:
        if self.basis == "additive":
            return f"Z_{self.p}"
        return f"the discrete-log basis of Z_{self.p}* (generator {self.generator}, 0 apart)"

    def to_dict(self) -> dict[str, Any]:
        return {"basis": self.basis, "p": self.p, "n": self.n, "generator": self.generator}


# --- 1. basis ------------------------------------------------------------------------------


def n_frequencies(n: int) -> int:
    """Number of non-constant frequencies of Z_n: (n-1)/2 for odd n, n/2 for even n (the last
    being the Nyquist frequency n/2, a cosine alone)."""
    return n // 2


def frequency_rows(n: int) -> list[list[int]]:
    """Rows of `fourier_basis(n)` holding each frequency k = 1..n//2: [cos, sin], or [cos] for
    the Nyquist frequency of an even n."""
    rows = [[2 * k - 1, 2 * k] for k in range(1, (n - 1) // 2 + 1)]
    if n % 2 == 0:
        rows.append([n - 1])
    return rows


def fourier_basis(n: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, list[str]]:
    """Orthonormal Fourier basis of R^n as rows (n, n), and their names.

    Row 0 is the constant 1/sqrt(n); rows 2k-1 and 2k are cos(w_k x) and sin(w_k x) scaled to unit
    norm, for k = 1..(n-1)/2, w_k = 2 pi k / n; an even n (Z_(p-1), the discrete-log
    coordinates) adds the Nyquist row cos(pi x) last. The rows span R^n exactly.
    """
    if n < 2:
        raise FourierError(f"the Fourier basis of Z_n needs n >= 2, got {n}")
    x = torch.arange(n, dtype=dtype)
    rows, names = [torch.ones(n, dtype=dtype)], ["const"]
    for k in range(1, (n - 1) // 2 + 1):
        w = 2 * math.pi * k / n
        rows += [torch.cos(w * x), torch.sin(w * x)]
        names += [f"cos {k}", f"sin {k}"]
    if n % 2 == 0:
        rows.append(torch.cos(math.pi * x))
        names.append(f"cos {n // 2}")
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True), names


# --- 2. key frequencies from the embedding --------------------------------------------------


@dataclass(frozen=True)
class KeyFrequencies:
    """Key frequencies of an embedding and the evidence for the cut.

    frequencies: the key k (1-based, ascending).
    norms: (p-1)/2 norms, entry k-1 = sqrt(|cos_k . W_E|^2 + |sin_k . W_E|^2).
    power_fraction: share of the embedding's non-constant power in the key frequencies.
    gap: power of the weakest key / power of the strongest non-key (the knee the cut chose).
    contrast: power of the weakest key / median power of the non-keys (how far the keys stand
        out of the bulk).
    sparse: contrast >= `MIN_CONTRAST`; otherwise the embedding has no clear key set and
        `frequencies` is only the best cut.
    """

    frequencies: tuple[int, ...]
    norms: tuple[float, ...]
    power_fraction: float
    gap: float
    contrast: float
    sparse: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frequencies"], out["norms"] = list(self.frequencies), list(self.norms)
        for name in ("gap", "contrast"):
            out[name] = None if math.isinf(out[name]) else out[name]
        return out


def frequency_norms(embedding: torch.Tensor) -> torch.Tensor:
    """(n, D) embedding of the numbers in coordinate order -> (n//2,) norm of each frequency's
    cos/sin components (the rows of the DFT along the coordinate axis)."""
    if embedding.dim() != 2:
        raise FourierError(f"embedding must be (n, d_model), got shape {tuple(embedding.shape)}")
    n = embedding.shape[0]
    basis, _ = fourier_basis(n)
    power = (basis @ embedding.detach().to(torch.float64)).pow(2).sum(-1)  # (n,) per basis row
    return torch.stack([power[r].sum() for r in frequency_rows(n)]).sqrt()


def mean_per_answer(acts: torch.Tensor, answers: torch.Tensor, n: int) -> torch.Tensor:
    """(n, N) float64 mean activation of units `acts` (inputs, N) over the inputs of each answer
    value 0..n-1 (`answers` (inputs,)); 0 for a value no input has. Where every answer occurs
    equally often, the units' projection onto functions of the answer."""
    index = answers.long()
    sums = torch.zeros(n, acts.shape[1], dtype=torch.float64)
    step = max(1, CHUNK_ELEMENTS // max(acts.shape[1], 1))  # rows per float64 copy
    for lo in range(0, acts.shape[0], step):
        sums.index_add_(0, index[lo : lo + step], acts[lo : lo + step].to(torch.float64))
    counts = torch.bincount(index, minlength=n).clamp(min=1).to(torch.float64)
    return sums / counts[:, None]


def key_frequencies(
    embedding: torch.Tensor, *, max_keys: int | None = None, min_contrast: float = MIN_CONTRAST
) -> KeyFrequencies:
    """Key frequencies of an embedding (p, D) over the number tokens, by the largest power gap.

    The cut: sort the frequencies' power (squared norms) in decreasing order and keep the top m,
    where m maximises power[m-1] / power[m] among m = 1..max_keys (default: half the
    frequencies, since keys are by definition a minority). This is the knee of the sorted power
    spectrum on a log scale; it needs no threshold on absolute size, so it works for any weight
    norm. Whether the result is a real key set is reported, not hidden, by `contrast` (weakest
    key over the median of the rest) and `sparse` (contrast >= min_contrast): a dense embedding
    still returns its best cut. Frequencies the embedding carries only weakly (a model stopped
    right after grokking) can fall on either side of the knee; `FourierReport.neuron_keys` gives
    the frequencies the MLP neurons use to move the logits, as an independent check.
    """
    norms = frequency_norms(embedding)
    n = len(norms)
    limit = max(1, n // 2) if max_keys is None else max(1, min(int(max_keys), n))
    power = norms.pow(2)
    order = torch.argsort(power, descending=True)
    sorted_power = power[order]
    tiny = sorted_power[0] * 1e-300 + 1e-300  # keeps ratios finite for exact zeros
    if n == 1:
        m, gap, contrast = 1, math.inf, math.inf
    else:
        ratios = sorted_power[:-1] / (sorted_power[1:] + tiny)
        m = int(torch.argmax(ratios[:limit])) + 1
        gap = float(ratios[m - 1])
        contrast = float(sorted_power[m - 1] / (sorted_power[m:].median() + tiny))
    keys = sorted(int(k) + 1 for k in order[:m])
    total = float(power.sum())
    fraction = float(sorted_power[:m].sum()) / total if total > 0 else 0.0
    return KeyFrequencies(
        frequencies=tuple(keys),
        norms=tuple(float(x) for x in norms),
        power_fraction=fraction,
        gap=gap,
        contrast=contrast,
        sparse=contrast >= min_contrast,
    )


# --- 3. units: dominant frequency and purity --------------------------------------------------


@dataclass(frozen=True)
class UnitFrequencies:
    """Per-unit (neuron or feature) Fourier summary over the p x p grid of inputs (a, b).

    explained: (N, K) share of each unit's variance explained by frequency k's 8 terms:
        cos/sin(w_k a), cos/sin(w_k b) and the 4 products cos/sin(w_k a) cos/sin(w_k b) (which
        span cos/sin(w_k (a+b)) and cos/sin(w_k (a-b))); a Nyquist frequency has 3 terms, its
        product cos(pi a) cos(pi b) = cos(pi (a+b)) counted as a+b.
    dominant: (N,) the k (1-based) explaining most; 0 for a constant (dead) unit.
    purity: (N,) the share explained by the dominant frequency; 0 for a constant unit.
    terms: (N, 4) shares of the dominant frequency's terms, columns TERMS: w a alone, w b alone,
        cos/sin(w (a+b)), cos/sin(w (a-b)); they add up to `purity`.
    variance: (N,) variance of each unit over the grid (exactly 0 for constant units).
    """

    TERMS = ("a", "b", "a+b", "a-b")

    explained: torch.Tensor
    dominant: torch.Tensor
    purity: torch.Tensor
    terms: torch.Tensor
    variance: torch.Tensor

    @property
    def sum_share(self) -> torch.Tensor:
        """(N,) share explained by cos/sin(w_dominant (a+b)) alone."""
        return self.terms[:, 2]

    def label(self, unit: int, min_purity: float = 0.5, min_term: float = 0.1) -> str:
        """A short label such as "w_21 [0.96]: a 0.38, b 0.38, a+b 0.14": the dominant
        frequency, the unit's purity and the terms holding >= `min_term` of its variance;
        "dead" or "mixed frequencies" when there is no dominant frequency."""
        if float(self.variance[unit]) == 0:
            return "dead"
        k, purity = int(self.dominant[unit]), float(self.purity[unit])
        if purity < min_purity:
            return f"mixed frequencies (best w_{k} [{purity:.2f}])"
        shares = self.terms[unit].tolist()
        terms = [f"{t} {v:.2f}" for t, v in zip(self.TERMS, shares, strict=True) if v >= min_term]
        return f"w_{k} [{purity:.2f}]: " + ", ".join(terms)

    def dominant_counts(self) -> dict[int, int]:
        """Dominant frequency -> number of live units it dominates (ascending k)."""
        ks = self.dominant[self.variance > 0].tolist()
        return {int(k): ks.count(k) for k in sorted(set(ks))}

    def pure_fraction(
        self, threshold: float = PURE_THRESHOLD, keys: tuple[int, ...] | None = None
    ) -> float:
        """Share of live units at least `threshold` explained by one frequency (a key one when
        `keys` is given)."""
        live = self.variance > 0
        if not bool(live.any()):
            return 0.0
        pure = self.purity >= threshold
        if keys is not None:
            pure &= torch.isin(self.dominant, torch.tensor(keys, dtype=self.dominant.dtype))
        return float((pure & live).sum()) / float(live.sum())


def activation_grid(
    acts: torch.Tensor,
    inputs: torch.Tensor | np.ndarray,
    p: int,
    positions: tuple[int, int] = (0, 1),
    coords: Coordinates | None = None,
) -> torch.Tensor:
    """Scatter activations (n, N) of inputs (n, S) into an (m, m, N) grid indexed by the
    coordinates of the tokens at `positions` (a, b): the residues themselves (m = p) unless
    `coords` says otherwise (inputs with a token that has no coordinate are left out). Every
    pair of coordinates must appear exactly once."""
    coords = coords or Coordinates.additive(p)
    tokens = torch.as_tensor(np.asarray(inputs), dtype=torch.long)
    if acts.dim() != 2 or acts.shape[0] != tokens.shape[0]:
        raise FourierError(
            f"acts must be (n_inputs, n_units) with n_inputs = {tokens.shape[0]}, "
            f"got {tuple(acts.shape)}"
        )
    a, b = tokens[:, positions[0]], tokens[:, positions[1]]
    if (a.min() < 0) or (b.min() < 0) or (a.max() >= p) or (b.max() >= p):
        raise FourierError(f"input tokens at positions {positions} must be residues 0..{p - 1}")
    a, b, m = coords.of(a), coords.of(b), coords.n
    inside = (a >= 0) & (b >= 0)
    flat = (a * m + b)[inside]
    if len(flat) != m * m or len(torch.unique(flat)) != m * m:
        raise FourierError(
            f"the Fourier analysis over {coords.describe()} needs every pair of its {m} "
            f"numbers exactly once ({m * m} inputs), got {len(flat)} inputs covering "
            f"{len(torch.unique(flat))} pairs"
        )
    grid = torch.empty(m * m, acts.shape[1], dtype=acts.dtype)
    grid[flat] = acts.detach()[inside]
    return grid.view(m, m, -1)


def unit_frequencies(grid: torch.Tensor) -> UnitFrequencies:
    """Dominant frequency and purity of every unit from its activations (p, p, N) over (a, b).

    The activations are expanded in the 2-D basis B (a) x B (b) (orthonormal, so squared
    coefficients partition the variance); the constant term is dropped and frequency k collects
    its 2 terms in a, 2 in b and 4 products. Cross-frequency products (k1 != k2) belong to no
    frequency, so a unit's shares sum to at most 1.
    """
    if grid.dim() != 3 or grid.shape[0] != grid.shape[1]:
        raise FourierError(f"grid must be (p, p, n_units), got shape {tuple(grid.shape)}")
    p = grid.shape[0]
    basis, _ = fourier_basis(p)
    step = max(1, CHUNK_ELEMENTS // (p * p))  # units per chunk: each unit's terms are its own
    parts = [_unit_energy(grid[..., lo : lo + step], basis) for lo in range(0, grid.shape[2], step)]
    term_energy = torch.cat([t for t, _ in parts])  # (N, K, 4)
    total = torch.cat([s for _, s in parts])  # (N,) = p^2 * variance
    explained_energy = term_energy.sum(-1)  # (N, K)
    live = total > 1e-12 * max(float(total.max()), 1e-300)
    safe = torch.where(live, total, torch.ones_like(total))
    explained = torch.where(live[:, None], explained_energy / safe[:, None], 0.0)
    purity, best = explained.max(dim=1)
    dominant = torch.where(live, best + 1, torch.zeros_like(best))
    terms = term_energy[torch.arange(len(best)), best] / safe[:, None]  # (N, 4)
    return UnitFrequencies(
        explained=explained,
        dominant=dominant,
        purity=torch.where(live, purity, 0.0),
        terms=torch.where(live[:, None], terms, 0.0),
        variance=torch.where(live, total / (p * p), 0.0),
    )


def _unit_energy(grid: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(energy of each frequency's 4 term groups (N, K, 4), total non-constant energy (N,)) of
    the units of `grid` (p, p, N)."""
    p = grid.shape[0]
    x = grid.detach().to(torch.float64)
    coef = torch.einsum("ia,abn,jb->ijn", basis, x, basis)  # (p, p, N)
    energy = coef.pow(2)
    energy[0, 0] = 0.0  # the mean
    total = energy.sum((0, 1))
    per_k = []
    for r in frequency_rows(p):
        if len(r) == 1:  # Nyquist: cos(pi a) cos(pi b) = cos(pi (a+b)) = cos(pi (a-b))
            zero = energy[r[0], r[0]] * 0
            ends = [energy[r[0], 0], energy[0, r[0]], energy[r[0], r[0]], zero]
            per_k.append(torch.stack(ends, dim=1))
            continue
        # cos(w(a+b)) = cc - ss, sin(w(a+b)) = sc + cs, cos(w(a-b)) = cc + ss and
        # sin(w(a-b)) = sc - cs: an orthonormal basis of the 4 products after dividing by sqrt 2
        cc, cs, sc, ss = coef[r[0], r[0]], coef[r[0], r[1]], coef[r[1], r[0]], coef[r[1], r[1]]
        per_k.append(
            torch.stack(
                [
                    energy[r, 0].sum(0),  # cos/sin(w a) alone
                    energy[0, r].sum(0),  # cos/sin(w b) alone
                    ((cc - ss).pow(2) + (sc + cs).pow(2)) / 2,
                    ((cc + ss).pow(2) + (sc - cs).pow(2)) / 2,
                ],
                dim=1,
            )
        )
    return torch.stack(per_k, dim=1), total


# --- the report and its label ----------------------------------------------------------


@dataclass
class FourierReport:
    """Everything `analyze` measured on one modular model, and the words built from it."""

    p: int
    formula: str  # the answer c* in the analysis' coordinates, e.g. "a+b", "log a+log b"
    coordinates: Coordinates
    keys: KeyFrequencies
    # what the last MLP carries about the answer (its mean activation per answer, by frequency)
    answer_keys: KeyFrequencies
    restricted_keys: tuple[int, ...]  # the restricted loss keeps these: keys + sparse answer keys
    neuron_pure_fraction: float  # live MLP neurons >= PURE_THRESHOLD explained by a key freq
    neuron_purity_quantiles: dict[str, float]  # purity at q10, q25, q50, q75, q90
    neuron_dominant_counts: dict[int, int]  # dominant frequency -> live neurons
    neuron_logit_shares: dict[int, float]  # frequency -> share of the neurons' logit weight
    neuron_keys: tuple[int, ...]  # frequencies with >= KEY_SHARE of it (see `logit_weights`)
    losses: FourierLosses | None
    logits: LogitFit
    apart: dict[str, float] = field(default_factory=dict)  # inputs outside the coordinates
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def fourier_algorithm(self) -> bool:
        """The measurements support the Fourier-multiplication mechanism: a sparse key set in the
        embedding, logits mostly sum_k alpha_k cos(w_k (a+b-c)), and (when measured) the key
        directions of the last MLP alone answer >= 99% of inputs correctly. Neuron purity is
        described, not required: small-p models grok with fewer, less pure neurons."""
        restricted_ok = self.losses is None or self.losses.restricted_accuracy >= 0.99
        return self.keys.sparse and self.logits.explained >= 0.5 and restricted_ok

    @property
    def _c(self) -> str:
        return "log c" if self.coordinates.basis == "discrete_log" else "c"

    @property
    def extra_answer_keys(self) -> tuple[int, ...]:
        """Frequencies the restricted loss keeps beyond the embedding's keys."""
        return tuple(k for k in self.restricted_keys if k not in self.keys.frequencies)

    def _extra_words(self) -> str:
        """ "40 = 2x20, 7" for the extra answer frequencies, naming the harmonics."""
        words = []
        for f in self.extra_answer_keys:
            h = harmonic_of(f, self.keys.frequencies, self.coordinates.n)
            words.append(f"{f} = {h}" if h else str(f))
        return ", ".join(words)

    def label(self) -> str:
        freqs = "{" + ", ".join(str(k) for k in self.keys.frequencies) + "}"
        where = ""
        if self.coordinates.basis == "discrete_log":
            where = f" in discrete-log coordinates (g = {self.coordinates.generator})"
        if self.fourier_algorithm:
            extra = f"; answer also {{{self._extra_words()}}}" if self.extra_answer_keys else ""
            return f"Fourier multiplication{where}, frequencies {freqs}{extra}"
        return f"no clear Fourier circuit{where} (best embedding frequencies {freqs})"

    def description(self) -> str:
        k = self.keys
        coords = self.coordinates
        parts = [
            f"Analysed over {coords.describe()}: frequencies k mean w_k = 2 pi k / {coords.n}.",
            f"Embedding: {len(k.frequencies)} key frequencies hold {k.power_fraction:.0%} of the "
            f"non-constant power of W_E (weakest key / median other = {k.contrast:.1f}x).",
            f"MLP: {self.neuron_pure_fraction:.0%} of live neurons are >= {PURE_THRESHOLD:.0%} "
            f"explained by one key frequency (median purity "
            f"{self.neuron_purity_quantiles.get('q50', 0.0):.2f}); the neurons that move the "
            f"logits cluster on frequencies {{{', '.join(str(f) for f in self.neuron_keys)}}}.",
            f"Logits: sum_k alpha_k cos(w_k ({self.formula}-{self._c})) explains "
            f"{self.logits.explained:.0%} of the logit variance.",
        ]
        if self.extra_answer_keys:
            parts.append(
                f"Beyond the keys, the last MLP carries the answer at {{{self._extra_words()}}} "
                f"({self.answer_keys.power_fraction:.0%} of its answer power is in "
                f"{{{', '.join(str(k) for k in self.answer_keys.frequencies)}}})."
            )
        if self.losses is not None:
            lo = self.losses
            parts.append(
                f"Loss: full {lo.full:.3g}, restricted to frequencies "
                f"{{{', '.join(str(k) for k in self.restricted_keys)}}} {lo.restricted:.3g}, "
                f"excluding them (train) {lo.excluded:.3g} vs ln p = {lo.log_p:.3g}."
            )
        if self.apart:
            parts.append(
                f"The {int(self.apart['inputs']):,} inputs with a 0 operand have no logarithm and "
                f"were left out; the model answers {self.apart['accuracy']:.1%} of them."
            )
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "p": self.p,
            "formula": self.formula,
            "coordinates": self.coordinates.to_dict(),
            "apart": dict(self.apart),
            "label": self.label(),
            "description": self.description(),
            "fourier_algorithm": self.fourier_algorithm,
            "keys": self.keys.to_dict(),
            "answer_keys": self.answer_keys.to_dict(),
            "restricted_keys": list(self.restricted_keys),
            "neuron_pure_fraction": self.neuron_pure_fraction,
            "neuron_purity_quantiles": dict(self.neuron_purity_quantiles),
            "neuron_dominant_counts": {str(k): v for k, v in self.neuron_dominant_counts.items()},
            "neuron_logit_shares": {str(k): v for k, v in self.neuron_logit_shares.items()},
            "neuron_keys": list(self.neuron_keys),
            "neuron_key_f1": key_f1(self.neuron_keys, self.keys.frequencies),
            "losses": None if self.losses is None else self.losses.to_dict(),
            "logits": self.logits.to_dict(),
            "timings": dict(self.timings),
        }


def logit_weights(acts: torch.Tensor, writes: torch.Tensor, w_u: torch.Tensor) -> torch.Tensor:
    """(N,) how much each unit moves the logits: the std of its activations (n, N) over the
    inputs times the norm of its direct logit effect writes (N, D) @ W_U (D, O). The direct path
    only (later layers and a final LayerNorm are ignored): a weight for ranking, not an effect."""
    direct = (writes.detach().double() @ w_u.detach().double()).norm(dim=1)
    step = max(1, CHUNK_ELEMENTS // max(acts.shape[0], 1))  # columns per float64 copy
    spread = [
        acts[:, lo : lo + step].detach().double().std(0, correction=0)
        for lo in range(0, acts.shape[1], step)
    ]
    return (torch.cat(spread) if spread else direct.new_zeros(0)) * direct


def frequency_shares(
    units: UnitFrequencies, weights: torch.Tensor | None = None
) -> dict[int, float]:
    """Dominant frequency -> share of the live units' total weight (weights (N,); None counts
    units)."""
    live = units.variance > 0
    w = torch.ones(len(live), dtype=torch.float64) if weights is None else weights.double()
    w = torch.where(live, w, 0.0)
    total = float(w.sum())
    if total <= 0:
        return {}
    ks = sorted(set(units.dominant[live].tolist()))
    return {int(k): float(w[units.dominant == k].sum()) / total for k in ks}


def keys_by_share(shares: dict[int, float], min_share: float = KEY_SHARE) -> tuple[int, ...]:
    """Frequencies holding at least `min_share` of the total in `shares` (counts or weights)."""
    total = sum(shares.values())
    if total <= 0:
        return ()
    return tuple(sorted(k for k, v in shares.items() if k > 0 and v >= min_share * total))


def harmonic_of(f: int, keys: tuple[int, ...], n: int, max_multiple: int = 4) -> str | None:
    """ "2x20" when frequency f is m * k (folded into 1..n/2) for a key k and m in 2..max_multiple
    (the smallest such m), else None."""
    for m in range(2, max_multiple + 1):
        for k in keys:
            if (m * k) % n in (f, n - f):
                return f"{m}x{k}"
    return None


def key_f1(found: tuple[int, ...], reference: tuple[int, ...]) -> float:
    """F1 of a set of frequencies against a reference set (1.0 when equal, 0 when disjoint)."""
    a, b = set(found), set(reference)
    if not a and not b:
        return 1.0
    return 2 * len(a & b) / (len(a) + len(b))


def modulus_of(task: Any) -> int:
    """p of a two-operand modular task (`a b =` with numbers 0..p-1), else a FourierError."""
    p = getattr(task, "p", None)
    if p is None or getattr(task, "n_ctx", None) != 3 or task.d_vocab_out != p:
        raise FourierError(
            f"Fourier analysis needs a two-operand modular task such as add_mod_113, "
            f"got {getattr(task, 'spec', task)!r}"
        )
    return int(p)
