"""Representation theory of the symmetric group S_n, over the token order of the permutation
tasks (circuitlab/tasks/permutation.py), for interpreting models of `s{n}_{op}`.

Chughtai, Chan & Nanda 2023 ("A toy model of universality") show that networks trained on group
composition learn the "group composition via representations" (GCR) algorithm: embed x and y
as the matrices rho(x), rho(y) of a few irreducible representations rho, multiply them in the
MLP into rho(xy), and read the answer c as chi_rho(x y c^-1). The functions of one group
element that such a circuit uses are the matrix entries of rho, which span rho's isotypic
component of L^2(G) (dimension d_rho^2). This module is the pure math, no model:

1. The group: conjugacy classes are cycle types; `symmetric_group(n)` holds each token's class,
   the class sizes and the character table, computed by the Murnaghan-Nakayama rule on beta
   sets (`character`), never tabulated, and checked against the orthogonality relations.
2. Isotypic projectors on functions G -> R: P_rho = (d/|G|) sum_g chi(g) T_g, i.e.
   P_rho[x, y] = (d/|G|) chi(x y^-1), and one orthonormal basis of R^G adapted to them
   (`SymmetricGroup.basis`), so projecting is one matrix product.
3. Embeddings (|G|, D): the share of their centred energy in each irrep, and key irreps by the
   largest gap in energy per isotypic dimension (`key_irreps`).
4. Units (MLP neurons, transcoder features) as functions on G x G: energy in each cell
   Iso_sigma (x) Iso_tau of L^2(G x G), and the cells each irrep owns for the task's operation
   (`irrep_cells`, documented there), giving a dominant irrep and a purity per unit
   (`unit_irreps`).
5. Answer irreps: the irreps of the units' mean activation per answer c (`answer_irreps`), and
   answer directions: the basis of an irrep's isotypic component evaluated at the answer c
   (`answer_basis`), for the restricted and excluded loss in group_fits.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import torch

from circuitlab.extraction.fourier import (
    CHUNK_ELEMENTS,
    PURE_THRESHOLD,
    UnitFrequencies,
    mean_per_answer,
)
from circuitlab.tasks.permutation import (
    MAX_N,
    MIN_N,
    inverse_tokens,
    permutations,
    product_table,
)

# `key_irreps` calls an embedding sparse when its weakest key irrep has at least this many times
# the median energy per isotypic dimension of the other irreps (as fourier.MIN_CONTRAST).
# Measured: random Gaussian embeddings (S3-S5, d = 128, 200 seeds) at most 1.6; grokked
# s4_compose 9-43, s5_compose 74-110 (bench_groups.py); s4_conj models stuck at 27-57%
# validation 2-4, and grokked s4_conj models 1.6-2.9 (their embeddings are not sparse).
MIN_CONTRAST = 5.0
ORTHOGONALITY_TOL = 1e-9
# `cell_energy` works in float64 up to S5 and in float32 for S6 (shares good to ~1e-6 there):
# 2 |G|^3 multiply-adds per unit, 3.7e8 for S6, where float32 is twice as fast.
FLOAT64_MAX_ORDER = 120

Partition = tuple[int, ...]


class GroupError(ValueError):
    """Input the group analysis cannot use (n out of range, wrong shapes, a failed check)."""


# --- 1. partitions, cycle types and characters --------------------------------------------


@lru_cache(maxsize=16)
def partitions(n: int) -> tuple[Partition, ...]:
    """Partitions of n in reverse lexicographic order: (n,) first (the trivial irrep and the
    class of the n-cycles), (1,)*n last."""

    def below(rest: int, largest: int) -> list[Partition]:
        if rest == 0:
            return [()]
        return [
            (first, *tail)
            for first in range(min(rest, largest), 0, -1)
            for tail in below(rest - first, first)
        ]

    return tuple(below(n, n))


def conjugate(partition: Partition) -> Partition:
    """The transposed Young diagram; irrep lambda' = lambda (x) sign."""
    return tuple(sum(1 for part in partition if part > i) for i in range(partition[0]))


def hook_dimension(partition: Partition) -> int:
    """Dimension of the irrep by the hook length formula (independent of the character table,
    which gives it again as chi(identity))."""
    cols = conjugate(partition)
    hooks = math.prod(
        (row - j - 1) + (cols[j] - i - 1) + 1 for i, row in enumerate(partition) for j in range(row)
    )
    return math.factorial(sum(partition)) // hooks


def cycle_type(perm: np.ndarray | tuple[int, ...]) -> Partition:
    """Cycle lengths of a one-line permutation, largest first (its conjugacy class in S_n)."""
    seen, lengths = set(), []
    for start in range(len(perm)):
        length, i = 0, start
        while i not in seen:
            seen.add(i)
            i, length = int(perm[i]), length + 1
        if length:
            lengths.append(length)
    return tuple(sorted(lengths, reverse=True))


@lru_cache(maxsize=4096)
def character(irrep: Partition, cycles: Partition) -> int:
    """chi_irrep on the class of cycle type `cycles`, by the Murnaghan-Nakayama rule.

    On beta sets (first-column hook lengths lambda_i + l - 1 - i), removing a rim hook of length
    k moves one bead b to b - k (if free); its height is the number of beads strictly between.
    chi_lambda(mu) = sum over removals of the first cycle of (-1)^height chi_rest(mu minus it).
    """
    if sum(irrep) != sum(cycles):
        raise GroupError(f"partitions of different n: {irrep} and {cycles}")
    if not cycles:
        return 1
    k, rest = cycles[0], cycles[1:]
    length = len(irrep)
    beads = [part + length - 1 - i for i, part in enumerate(irrep)]
    taken = set(beads)
    total = 0
    for i, bead in enumerate(beads):
        target = bead - k
        if target < 0 or target in taken:
            continue
        height = sum(1 for other in beads if target < other < bead)
        moved = sorted([*beads[:i], target, *beads[i + 1 :]], reverse=True)
        smaller = tuple(b - (length - 1 - j) for j, b in enumerate(moved))
        total += (-1) ** height * character(tuple(p for p in smaller if p > 0), rest)
    return total


def partition_name(partition: Partition) -> str:
    return "[" + ",".join(map(str, partition)) + "]"


@dataclass(frozen=True)
class Irrep:
    """One irreducible representation of S_n.

    index: position in `partitions(n)` (0 = trivial); twin: the index of its sign twist
    (itself when the partition is self-conjugate). name: the partition, e.g. "[2,1,1,1]", the
    identifier used in data. label: what people call it, the sign twist of the larger partition
    where the partition is the smaller of the pair: "[4,1]⊗sign".
    """

    index: int
    partition: Partition
    dimension: int
    twin: int

    @property
    def name(self) -> str:
        return partition_name(self.partition)

    @property
    def is_twist(self) -> bool:
        """The irrep is (larger partition) (x) sign: its conjugate comes first in the order."""
        return conjugate(self.partition) > self.partition

    @property
    def label(self) -> str:
        if self.is_twist:
            return partition_name(conjugate(self.partition)) + "⊗sign"
        return self.name

    @property
    def full_name(self) -> str:
        """e.g. "[2,1,1,1] = [4,1]⊗sign (dim 4, standard⊗sign)"; trivial, sign and standard
        (and their twists) are named."""
        n = sum(self.partition)
        text = self.name + (f" = {self.label}" if self.is_twist else "")
        known = {(n,): "trivial", (1,) * n: "sign", (n - 1, 1): "standard"}
        extra = known.get(self.partition) or known.get(conjugate(self.partition))
        if extra == "standard" and self.is_twist:
            extra = "standard⊗sign"
        return text + f" (dim {self.dimension}" + (f", {extra})" if extra else ")")


# --- 2. the group, its projectors and an adapted basis ------------------------------------


@dataclass(frozen=True, eq=False)
class SymmetricGroup:
    """S_n over the task's tokens (token t = t-th permutation in lexicographic order).

    classes: the cycle types, in `partitions(n)` order (class c and irrep c share a partition).
    class_of: (|G|,) class index of each token; class_sizes: (k,).
    characters: (k irreps, k classes) int64, characters[i, c] = chi_i(class c).
    table / inverse: the product table (x first, then y) and inverse tokens of the task.
    """

    n: int
    order: int
    irreps: tuple[Irrep, ...]
    classes: tuple[Partition, ...]
    class_of: np.ndarray
    class_sizes: np.ndarray
    characters: np.ndarray
    table: np.ndarray
    inverse: np.ndarray

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.irreps)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(r.label for r in self.irreps)

    def irrep(self, key: int | str) -> Irrep:
        """An irrep by index, name ("[2,1,1,1]") or label ("[4,1]⊗sign")."""
        if isinstance(key, int):
            return self.irreps[key]
        for r in self.irreps:
            if key in (r.name, r.label):
                return r
        raise GroupError(f"S{self.n} has no irrep {key!r}; known: {', '.join(self.names)}")

    def character_on_tokens(self, irrep: int) -> np.ndarray:
        """(|G|,) chi_irrep(g) for every token g."""
        return self.characters[irrep][self.class_of].astype(np.float64)

    def orthogonality_error(self) -> float:
        """Largest deviation from the row relations sum_C |C| chi_i chi_j / |G| = delta_ij and
        the column relations sum_i chi_i(C) chi_i(D) = delta_CD |G| / |C| (scaled to 1)."""
        chars = self.characters.astype(np.float64)
        rows = (chars * self.class_sizes) @ chars.T / self.order
        cols = chars.T @ chars * self.class_sizes[:, None] / self.order
        eye = np.eye(len(self.irreps))
        return float(max(np.abs(rows - eye).max(), np.abs(cols - eye).max()))

    def projector(self, irrep: int) -> np.ndarray:
        """(|G|, |G|) P[x, y] = (d/|G|) chi(x y^-1): the orthogonal projector of R^G onto the
        irrep's isotypic component (the span of its matrix entries, dimension d^2). Class
        functions are conjugation invariant, so left and right translations give the same P."""
        d = self.irreps[irrep].dimension
        return d / self.order * self.characters[irrep][self.pair_class].astype(np.float64)

    @cached_property
    def pair_class(self) -> np.ndarray:
        """(|G|, |G|) class of x y^-1 (chi(x y^-1) = characters[:, pair_class[x, y]])."""
        return self.class_of[self.table[:, self.inverse]]

    @cached_property
    def basis(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, owner): Q (|G|, |G|) float64 orthonormal columns, column j in the isotypic
        component of irrep owner[j] (ascending, so each irrep's columns are contiguous).

        One symmetric eigenproblem: M = sum_i i P_i has eigenvalue i exactly on irrep i's
        component (the P_i are orthogonal projectors summing to the identity)."""
        weights = np.zeros(len(self.irreps))
        for i, r in enumerate(self.irreps):
            weights += i * r.dimension / self.order * self.characters[i]
        values, vectors = np.linalg.eigh(weights[self.pair_class])
        owner = np.rint(values).astype(np.int64)
        counts = np.bincount(owner, minlength=len(self.irreps))
        expected = [r.dimension**2 for r in self.irreps]
        if np.abs(values - owner).max() > 1e-6 or counts.tolist() != expected:
            raise GroupError(f"isotypic decomposition of S{self.n} failed: sizes {counts}")
        return torch.from_numpy(vectors), torch.from_numpy(owner)

    def irrep_columns(self, irrep: int) -> slice:
        """The columns of `basis` spanning the irrep's isotypic component."""
        lo = sum(r.dimension**2 for r in self.irreps[:irrep])
        return slice(lo, lo + self.irreps[irrep].dimension ** 2)


@lru_cache(maxsize=MAX_N + 1)
def symmetric_group(n: int) -> SymmetricGroup:
    """S_n with its classes over the task's token order and its character table (checked)."""
    if not MIN_N <= n <= MAX_N:
        raise GroupError(f"permutation tasks have n in {MIN_N}..{MAX_N}, got {n}")
    parts = partitions(n)
    class_index = {p: i for i, p in enumerate(parts)}
    class_of = np.array([class_index[cycle_type(p)] for p in permutations(n)], dtype=np.int64)
    chars = np.array([[character(lam, mu) for mu in parts] for lam in parts], dtype=np.int64)
    identity = class_index[(1,) * n]
    irreps = tuple(
        Irrep(i, lam, int(chars[i, identity]), class_index[conjugate(lam)])
        for i, lam in enumerate(parts)
    )
    for arr in (class_of, chars):
        arr.flags.writeable = False
    group = SymmetricGroup(
        n=n,
        order=math.factorial(n),
        irreps=irreps,
        classes=parts,
        class_of=class_of,
        class_sizes=np.bincount(class_of, minlength=len(parts)),
        characters=chars,
        table=product_table(n),
        inverse=inverse_tokens(n),
    )
    error = group.orthogonality_error()
    if error > ORTHOGONALITY_TOL:
        raise GroupError(f"character table of S{n} fails orthogonality (error {error:.2g})")
    return group


def _group_of_size(order: int) -> SymmetricGroup:
    for n in range(MIN_N, MAX_N + 1):
        if math.factorial(n) == order:
            return symmetric_group(n)
    raise GroupError(f"{order} rows: not the order of S_n for n in {MIN_N}..{MAX_N}")


# --- 3. embeddings: energy per irrep and key irreps ---------------------------------------


def irrep_energy(embedding: torch.Tensor | np.ndarray, group: SymmetricGroup) -> np.ndarray:
    """(k,) energy of the centred embedding (|G|, D) in each irrep's isotypic component
    (row i = token i); entry 0 (trivial) is 0 after centring. Shares: divide by the sum."""
    if torch.is_tensor(embedding):
        emb = embedding.detach()
    else:
        emb = torch.from_numpy(np.array(embedding, dtype=np.float64))  # a writable copy
    if emb.dim() != 2 or emb.shape[0] != group.order:
        raise GroupError(
            f"embedding must be (|G|={group.order}, d) over the group tokens, got "
            f"{tuple(emb.shape)}"
        )
    q, owner = group.basis
    x = emb.to(torch.float64)
    coef = q.T @ (x - x.mean(0, keepdim=True))
    energy = torch.zeros(len(group.irreps), dtype=torch.float64)
    energy.index_add_(0, owner, coef.pow(2).sum(1))
    energy[0] = 0.0  # rounding left over from the centring
    return energy.numpy()


@dataclass(frozen=True)
class KeyIrreps:
    """Key irreps of an embedding and the evidence for the cut.

    irreps: indices (ascending) into `SymmetricGroup.irreps`; names / labels the same irreps.
    shares: (k,) share of the centred embedding energy in each irrep (trivial 0).
    density: (k,) share / d^2, the energy per isotypic dimension (a random embedding spreads
        evenly over all |G|-1 non-trivial dimensions, so 1/(|G|-1) each).
    power_fraction: share of the energy in the key irreps.
    gap: density of the weakest key / of the strongest non-key (the knee the cut chose).
    contrast: density of the weakest key / median density of the non-key irreps.
    sparse: contrast >= MIN_CONTRAST; otherwise `irreps` is only the best cut.
    """

    irreps: tuple[int, ...]
    names: tuple[str, ...]
    labels: tuple[str, ...]
    shares: tuple[float, ...]
    density: tuple[float, ...]
    power_fraction: float
    gap: float
    contrast: float
    sparse: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("irreps", "names", "labels", "shares", "density"):
            out[name] = list(out[name])
        for name in ("gap", "contrast"):
            out[name] = None if math.isinf(out[name]) else out[name]
        return out


def key_irreps(
    embedding: torch.Tensor | np.ndarray,
    group: SymmetricGroup,
    *,
    max_keys: int | None = None,
    min_contrast: float = MIN_CONTRAST,
) -> KeyIrreps:
    """Key irreps of an embedding (|G|, D), by the largest gap in energy per isotypic dimension.

    The cut, as `fourier.key_frequencies`: sort the non-trivial irreps by density (energy / d^2)
    and keep the top m maximising density[m-1] / density[m] for m = 1..max_keys (default: all
    but one of the non-trivial irreps). Density, not raw energy, because isotypic components
    differ in size (1 to 36 dimensions in S5): by raw energy, noise favours the large ones. Not
    half the irreps as for Z_p's frequencies: S4 has 4 non-trivial irreps and grokked s4_compose
    models use 3 of them ([3,1], [2,2] and sign) as often as 1 or 2. The cut needs no absolute
    threshold; `contrast` and `sparse` say whether it found a real key set.
    """
    energy = irrep_energy(embedding, group)
    dims = np.array([r.dimension**2 for r in group.irreps], dtype=np.float64)
    total = float(energy.sum())
    shares = energy / total if total > 0 else np.zeros_like(energy)
    density = shares / dims
    candidates = np.arange(1, len(group.irreps))
    n = len(candidates)
    limit = max(1, n - 1) if max_keys is None else max(1, min(int(max_keys), n - 1))
    order = candidates[np.argsort(-density[candidates], kind="stable")]
    sorted_density = density[order]
    tiny = sorted_density[0] * 1e-300 + 1e-300
    ratios = sorted_density[:-1] / (sorted_density[1:] + tiny)
    m = int(np.argmax(ratios[:limit])) + 1
    keys = tuple(sorted(int(i) for i in order[:m]))
    contrast = float(sorted_density[m - 1] / (np.median(sorted_density[m:]) + tiny))
    return KeyIrreps(
        irreps=keys,
        names=tuple(group.irreps[i].name for i in keys),
        labels=tuple(group.irreps[i].label for i in keys),
        shares=tuple(float(s) for s in shares),
        density=tuple(float(s) for s in density),
        power_fraction=float(shares[list(keys)].sum()),
        gap=float(ratios[m - 1]),
        contrast=contrast,
        sparse=contrast >= min_contrast,
    )


# --- 4. units on G x G --------------------------------------------------------------------


def cell_energy(grid: torch.Tensor, group: SymmetricGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells (N, k, k), total (N,)): the energy of each unit of `grid` (|G|, |G|, N) over
    (x, y) in Iso_sigma (x) Iso_tau (rows sigma = irrep in x, columns tau = in y), its mean
    removed (cell [0, 0]), and the unit's total energy around its mean (|G|^2 * variance).
    The cells partition the energy: Q (x) Q is an orthonormal basis of R^(G x G)."""
    g = group.order
    if grid.dim() != 3 or grid.shape[0] != g or grid.shape[1] != g:
        raise GroupError(f"grid must be ({g}, {g}, n_units), got {tuple(grid.shape)}")
    dtype = torch.float64 if g <= FLOAT64_MAX_ORDER else torch.float32
    q, owner = group.basis
    q = q.to(dtype)
    k = len(group.irreps)
    onehot = torch.zeros(g, k, dtype=dtype)
    onehot[torch.arange(g), owner] = 1.0
    step = max(1, CHUNK_ELEMENTS // (g * g))  # units per chunk: each unit's cells are its own
    cells, totals = [], []
    for lo in range(0, grid.shape[2], step):
        x = grid[..., lo : lo + step].detach().to(dtype)
        units = x.shape[2]
        left = (q.T @ x.reshape(g, -1)).view(g, g, units)  # rows in the basis
        coef = (left.permute(0, 2, 1).reshape(-1, g) @ q).view(g, units, g)  # (a, n, b)
        energy = coef.pow(2)
        by_col = (energy.reshape(-1, g) @ onehot).view(g, units, k)
        cell = (onehot.T @ by_col.reshape(g, -1)).view(k, units, k).permute(1, 0, 2)
        cell = cell.to(torch.float64)  # a copy
        cell[:, 0, 0] = 0.0  # the mean
        cells.append(cell)
        totals.append(cell.sum((1, 2)))
    if not cells:
        return torch.zeros(0, k, k, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.cat(cells), torch.cat(totals)


def irrep_cells(group: SymmetricGroup, answers: np.ndarray) -> np.ndarray:
    """(k, k) int: the irrep owning each cell Iso_sigma (x) Iso_tau of L^2(G x G) for a task
    whose answer to (x, y) is answers[x, y]; -1 for cells no irrep owns.

    In the GCR algorithm a circuit of irrep rho reads rho(x) and rho(y) (cells (rho, trivial)
    and (trivial, rho): each input alone) and computes the answer's rho(c) (Chughtai et al.
    2023, section 4: rho(xy) = rho(x) rho(y)), so a neuron of that circuit lives in those cells
    plus the cells holding the functions f(c(x, y)) for f in Iso_rho. Those are found from the
    answer table, not derived by hand: for compose f(xy) lies in cell (rho, rho), the analogue
    of the a / b / product terms of one frequency in `fourier.unit_frequencies`; for conj
    f(x y x^-1) = tr(A rho(x) rho(y) rho(x)^-1) is rho in y but any irrep of rho (x) rho in x.
    One random f per irrep finds the cells (a cell every f misses has measure zero). Cells
    mixing irreps otherwise (harmonics of the ReLU, cross terms) belong to no irrep, so a unit's
    shares add up to at most 1. Two irreps claiming one cell is an error.
    """
    g, k = group.order, len(group.irreps)
    answers = np.asarray(answers)
    if answers.shape != (g, g):
        raise GroupError(f"answers must be ({g}, {g}) tokens of the answer, got {answers.shape}")
    q, _ = group.basis
    gen = torch.Generator().manual_seed(0)
    functions = []
    for i in range(1, k):
        cols = q[:, group.irrep_columns(i)]
        functions.append(cols @ torch.randn(cols.shape[1], dtype=torch.float64, generator=gen))
    index = torch.from_numpy(answers.astype(np.int64, copy=True))
    composed = torch.stack(functions, 1)[index]  # (g, g, k-1): f(c(x, y)) for each irrep
    cells, total = cell_energy(composed, group)
    owner = np.full((k, k), -1, dtype=np.int64)
    for i in range(1, k):
        claimed = (cells[i - 1] > 1e-9 * float(total[i - 1])).numpy()
        claimed[i, 0] = claimed[0, i] = True  # the inputs alone
        if (owner[claimed] >= 0).any():
            raise GroupError(f"irreps {owner[claimed].max()} and {i} claim the same cell")
        owner[claimed] = i
    return owner


@dataclass(frozen=True)
class UnitIrreps(UnitFrequencies):
    """Per-unit representation summary over the |G| x |G| grid of inputs (x, y); the fields of
    `UnitFrequencies` with irreps in place of frequencies (so `pure_fraction`,
    `dominant_counts` and `fourier_fits.frequency_shares` apply unchanged).

    explained: (N, k) share of each unit's variance in the cells irrep i owns (`irrep_cells`).
    dominant: (N,) the non-trivial irrep explaining most; 0 for a constant (dead) unit.
    purity: (N,) the dominant irrep's share; terms: (N, 3) of it, x alone, y alone, and the
    cells of both variables (for compose the product rho(x) rho(y)), columns TERMS.
    cells: (N, k, k) share of the variance in each cell (irrep in x, irrep in y).
    names: the group's irrep labels, for `label`.
    """

    TERMS = ("x", "y", "x,y")

    cells: torch.Tensor
    names: tuple[str, ...]

    def label(self, unit: int, min_purity: float = PURE_THRESHOLD, min_term: float = 0.0) -> str:
        """ "[4,1]⊗sign (purity 0.94)" for a unit at least `min_purity` explained by one irrep,
        "mixed (closest [4,1], purity 0.41)" below it, "dead" for a constant unit."""
        if float(self.variance[unit]) == 0:
            return "dead"
        name, purity = self.names[int(self.dominant[unit])], float(self.purity[unit])
        if purity < min_purity:
            return f"mixed (closest {name}, purity {purity:.2f})"
        return f"{name} (purity {purity:.2f})"


def unit_irreps(
    grid: torch.Tensor, group: SymmetricGroup, answers: np.ndarray | None = None
) -> UnitIrreps:
    """Dominant irrep and purity of every unit from its activations (|G|, |G|, N) over (x, y).

    answers: (|G|, |G|) answer tokens of the task (default: the product x*y, s{n}_compose);
    they decide which cells each irrep owns (`irrep_cells`)."""
    answers = group.table if answers is None else answers
    owner = torch.from_numpy(irrep_cells(group, answers))
    k = len(group.irreps)
    cells, total = cell_energy(grid, group)
    live = total > 1e-12 * max(float(total.max()) if len(total) else 0.0, 1e-300)
    safe = torch.where(live, total, torch.ones_like(total))
    shares = torch.where(live[:, None, None], cells / safe[:, None, None], 0.0)
    explained = torch.zeros(len(total), k, dtype=torch.float64)
    for i in range(1, k):
        explained[:, i] = shares[:, owner == i].sum(1)
    purity, best = explained[:, 1:].max(dim=1)  # never trivial: its only cell is the mean
    dominant = torch.where(live, best + 1, torch.zeros_like(best))
    rows = torch.arange(len(total))
    own = owner[None].eq(dominant[:, None, None]) & live[:, None, None]  # (N, k, k)
    x_alone = shares[rows, dominant, 0]
    y_alone = shares[rows, 0, dominant]
    joint = (shares * own).sum((1, 2)) - x_alone - y_alone
    terms = torch.stack([x_alone, y_alone, joint], 1)
    return UnitIrreps(
        explained=explained,
        dominant=dominant,
        purity=torch.where(live, purity, 0.0),
        terms=torch.where(live[:, None], terms, 0.0),
        variance=torch.where(live, total / group.order**2, 0.0),
        cells=shares,
        names=group.labels,
    )


# --- 5. answer directions -----------------------------------------------------------------


@dataclass(frozen=True)
class AnswerIrreps:
    """The irreps a last MLP writes the answer in, as `fourier_fits.restricted_frequencies` for
    Z_p: the embedding's key irreps and every irrep holding >= `min_share` of the energy of
    the units' mean activation per answer c (their projection onto functions of the answer,
    which is all the restricted loss keeps).

    irreps / names / labels: that set, ascending. shares: (k,) the answer energy per irrep.
    power_fraction: their share of it. sparse: whether the answer energy alone has a clear key
    set (`key_irreps`' contrast), e.g. False for conj, whose MLP writes x*y*x^-1 in every irrep.
    """

    irreps: tuple[int, ...]
    names: tuple[str, ...]
    labels: tuple[str, ...]
    shares: tuple[float, ...]
    power_fraction: float
    sparse: bool

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("irreps", "names", "labels", "shares"):
            out[name] = list(out[name])
        return out


def answer_irreps(
    acts: torch.Tensor,
    answers: torch.Tensor,
    group: SymmetricGroup,
    keys: tuple[int, ...],
    min_share: float,
) -> AnswerIrreps:
    """`AnswerIrreps` of units `acts` (n, N) over inputs whose answers are `answers` (n,)."""
    means = mean_per_answer(acts, answers, group.order)
    energy = irrep_energy(means, group)
    total = float(energy.sum())
    shares = energy / total if total > 0 else np.zeros_like(energy)
    chosen = set(keys) | {i for i in range(1, len(group.irreps)) if shares[i] >= min_share}
    irreps = tuple(sorted(chosen))
    return AnswerIrreps(
        irreps=irreps,
        names=tuple(group.irreps[i].name for i in irreps),
        labels=tuple(group.irreps[i].label for i in irreps),
        shares=tuple(float(v) for v in shares),
        power_fraction=float(shares[list(irreps)].sum()),
        sparse=key_irreps(means, group).sparse,
    )


def answer_basis(
    group: SymmetricGroup, irreps: tuple[int, ...], answers: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """(n, sum d^2) an orthonormal basis of the given irreps' isotypic components, evaluated at
    the answers c (n,): the directions a circuit of those irreps can write the answer in (for
    compose, entries of rho(xy)); the analogue of cos/sin(w_k c) in the Fourier analysis."""
    q, _ = group.basis
    cols = [q[:, group.irrep_columns(i)] for i in irreps]
    if not cols:
        raise GroupError("answer directions need at least one irrep")
    index = (
        answers.long()
        if torch.is_tensor(answers)
        else torch.as_tensor(np.array(answers, dtype=np.int64))  # a writable copy
    )
    return torch.cat(cols, 1)[index]
