"""The geometry of an update, per 2-D weight tensor: its spectrum, the rotation of the principal
subspaces, its alignment with them, and what bf16 storage would show of it.

For a matched pair W_A (earlier), W_B (later) of m x n matrices and the update dW = W_B - W_A, all
in float64 on the tensors' device (the GPU when the audit runs there):

- **effective rank** (Roy & Vetterli 2007): with s_1 >= ... >= s_r the singular values of dW and
  p_i = s_i / sum_j s_j (normalised by the *sum* of singular values, not of their squares),
  ``erank = exp(-sum_i p_i log p_i)`` (0 log 0 = 0). A rank-r update with equal singular values has
  erank exactly r; it lies in [1, min(m, n)].
- **stable rank**: ``||dW||_F^2 / ||dW||_2^2 = sum s_i^2 / s_1^2``, in [1, rank].
- **top-k energy** (``topk_energy``): ``sum_{i<=k} s_i^2 / ||dW||_F^2``, the share of the update's
  Frobenius energy in its own k leading directions.
- **principal angles** between the top-k left singular subspaces of W_A and W_B (U_k^A, U_k^B), and
  between the top-k right ones (V_k^A, V_k^B): theta_1 <= ... <= theta_k with cos theta_i the
  singular values of U_k^A^T U_k^B (Bjorck & Golub 1973). Small angles are taken from their sines
  (singular values of U_k^B - U_k^A U_k^A^T U_k^B), so they are accurate to rounding, not to the
  square root of it. ``max_principal_angle_deg`` is the largest of the 2k angles (left and right),
  ``mean_principal_angle_deg`` their mean, in degrees. "The Path Not Taken" (Zhu et al., arXiv
  2511.08567) reports this rotation as a few degrees for RL against tens of degrees for SFT.
- **principal alignment**: the share of dW's Frobenius energy inside W_A's top-k principal block,

      principal_alignment = ||U_k U_k^T dW V_k V_k^T||_F^2 / ||dW||_F^2,   U_k, V_k of W_A.

  Two-sided, not left-only: W_A's rank-k principal part U_k S_k V_k^T lives in span(U_k) x span(V_k),
  and "The Path Not Taken" argues that RL leaves exactly that part (the principal weights of the
  rank-k approximation) alone while SFT rewrites it; the two-sided projection is the part of dW that
  changes the rank-k approximation's own coordinates, the left-only one would also count energy
  that only reaches the principal output directions from non-principal inputs. A random
  (isotropic) update has expected alignment k^2 / (m n), so values near that are "off-principal";
  an update written in the principal block has alignment 1.
- **fraction visible in bf16** (``fraction_visible_bf16``, float32 pairs only, else NaN): the share
  of elements with ``bf16(w_B) != bf16(w_A)`` bit for bit, rounding as ``tensor.to(torch.bfloat16)``
  does (round to nearest, ties to even). Next to the exact share changed (1 - fraction_equal) it
  shows how much of an update a bf16 checkpoint would hide (RL's Razor, arXiv 2509.04259).

Large matrices (min(m, n) above :data:`FULL_SVD_MAX`, or more than :data:`FULL_SVD_MAX_NUMEL`
elements: a large vocabulary's embedding) take a randomized SVD (Halko, Martinsson &
Tropp 2011, Alg. 4.4: Gaussian sketch of ``rank + OVERSAMPLE`` columns, ``POWER_ITERS`` power
iterations re-orthonormalised by QR, seeded; the sketch and all but the last iteration in float32,
the last iteration and the singular values in float64: :func:`randomized_svd`) for the top
:data:`RANDOMIZED_RANK` singular triplets
of W_A, W_B and dW, of which the subspaces keep the top k. There the effective rank is an
estimate: the top RANDOMIZED_RANK singular values and, for the rest, the exact residual energy
||dW||_F^2 - sum_kept s_i^2 spread over equal values no larger than the smallest value kept
(:func:`effective_rank`); exact when the update's rank is at most RANDOMIZED_RANK, too high when
its tail decays steeply (measured: 6% high for Gaussian noise, 15% for a steeply decaying tail).
The stable rank and the energy share use the exact Frobenius norm. tests/test_spectral.py bounds
the randomized error against the full SVD.

:class:`SpectralStats` accumulates these per-tensor values over any group of tensors (update /
compute / merge, :mod:`prism_analysis.accumulator`): the geometric columns as parameter-weighted
means over the group's 2-D tensors (weight = numel; a tensor where a value is undefined, e.g. an
unchanged one for effective rank, is left out of that mean), ``fraction_visible_bf16`` as the pooled
share over the group's float32 elements. Its states are sums, so partial results from other ranks
merge exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..accumulator import Accumulator, state

F64 = torch.float64
#: Principal subspaces compared (k) unless told otherwise.
DEFAULT_K = 16
#: Matrices whose smaller side is above this take the randomized SVD.
FULL_SVD_MAX = 1024
#: ... and so do matrices with more elements than this (the full SVD's U would be m x n in float64).
FULL_SVD_MAX_NUMEL = 1 << 24
#: Singular triplets the randomized SVD keeps for the spectrum of dW (at least k).
RANDOMIZED_RANK = 128
OVERSAMPLE = 10
POWER_ITERS = 4
#: Elements per chunk of the bf16 visibility count (bounds its temporaries).
CHUNK = 1 << 22

#: The per-tensor columns, in table order (each a parameter-weighted mean for a group).
GEOMETRY = (
    "effective_rank",
    "stable_rank",
    "topk_energy",
    "max_principal_angle_deg",
    "mean_principal_angle_deg",
    "principal_alignment",
)
COLUMNS = (*GEOMETRY, "fraction_visible_bf16")


# -- singular value decompositions ------------------------------------------------------------
def randomized_svd(
    W: torch.Tensor, rank: int, oversample: int = OVERSAMPLE, power_iters: int = POWER_ITERS, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-``rank`` singular triplets (U, S, V with W ~ U diag(S) V^T) of ``W`` by randomized
    subspace iteration (Halko et al. 2011, Alg. 4.4), in W's dtype and device, seeded.

    Mixed precision: a float64 ``W`` is rounded to float32 once, and the Gaussian sketch and the
    ``power_iters`` power iterations run on that copy (float32 GEMMs and QRs, twice as fast); one
    more iteration runs on ``W`` itself in float64 and gives the Rayleigh-Ritz step for free: with
    ``P = orth(W^T Q)`` and ``W P = Q' R``, ``Q'^T W P = R``, so the SVD of the small ``R`` gives S
    and the two subspaces (a two-sided projection ``Q' Q'^T W P P^T``). That is 2q + 3 products
    with W, one more than the float64 algorithm's 2q + 2 (q iterations, then ``svd(Q^T W)``), so it
    is at least as accurate (tested); the float32 iterations only have to find the subspace: the
    float64 iteration multiplies every error of it, rounding included, by (s_{w+1} / s_i)^2, and the
    singular values come from W, not from its float32 copy.

    Error: the sketch of ``w = rank + oversample`` columns after q power iterations captures the
    top singular directions up to a factor (s_{w+1} / s_i)^(2q+1) of the spectrum's decay, plus
    float32 rounding (~1e-7) damped by the last, float64 iteration.
    """
    m, n = W.shape
    width = min(rank + oversample, m, n)
    gen = torch.Generator(device=W.device).manual_seed(seed)
    low = W.float() if W.dtype == torch.float64 else W  # the sketching copy
    omega = torch.randn(n, width, dtype=low.dtype, device=W.device, generator=gen)
    Q = torch.linalg.qr(low @ omega).Q
    for _ in range(power_iters):
        Q = torch.linalg.qr(low.mT @ Q).Q
        Q = torch.linalg.qr(low @ Q).Q
    del low
    # the last iteration in W's own precision, and Rayleigh-Ritz on both sides at no extra product:
    # P = orth(W^T Q), W P = Q' R, so Q'^T W P = R and W ~ Q' R P^T, whose SVD is that of R (w x w)
    P = torch.linalg.qr(W.mT @ Q.to(W.dtype)).Q
    Q, R = torch.linalg.qr(W @ P)
    Ur, S, Vrh = torch.linalg.svd(R)
    r = min(rank, width)
    return (Q @ Ur)[:, :r], S[:r], (P @ Vrh.mT)[:, :r]


def top_svd(W: torch.Tensor, rank: int, method: str = "auto", full_max: int = FULL_SVD_MAX):
    """(U, S, V, method): the top-``rank`` singular triplets of ``W`` (all of them for the full SVD,
    S complete). ``method``: ``full``, ``randomized`` or ``auto`` (randomized when min(m, n) >
    ``full_max`` or m n > :data:`FULL_SVD_MAX_NUMEL`)."""
    if method == "auto":
        method = "randomized" if min(W.shape) > full_max or W.numel() > FULL_SVD_MAX_NUMEL else "full"
    if method == "full":
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return U, S, Vh.mT, method
    if method != "randomized":
        raise ValueError(f"unknown SVD method {method!r}; choose auto, full or randomized")
    U, S, V = randomized_svd(W, rank)
    return U, S, V, method


# -- the measures, from singular values and subspaces -------------------------------------------
def effective_rank(s: torch.Tensor, tail_energy: float = 0.0, tail_count: int = 0) -> float:
    """exp of the entropy of p_i = s_i / sum_j s_j (Roy & Vetterli 2007); NaN when all s are 0.

    ``tail_energy``, ``tail_count``: singular values not in ``s`` (a truncated spectrum), known by
    their total energy sum s_i^2 and their count. They are completed as equal values t =
    min(s_min, sqrt(tail_energy / tail_count)), as many (c = tail_energy / t^2, possibly fractional)
    as carry that energy: the largest-entropy tail with the exact energy whose values stay below
    the smallest value kept."""
    s = s.to(F64).clamp_min(0)
    total = float(s.sum())
    t = c = 0.0
    if tail_energy > 0 and tail_count > 0:
        t = math.sqrt(tail_energy / tail_count)
        if s.numel():
            t = min(t, float(s[-1]))
        c = tail_energy / t**2 if t > 0 else 0.0
    total += c * t
    if not total > 0:
        return math.nan
    p = s / total
    p = p[p > 0]
    h = float(-(p * p.log()).sum())
    if c > 0:
        h -= c * (t / total) * math.log(t / total)
    return math.exp(h)


def stable_rank(frob_sq: float, s1: float) -> float:
    """||dW||_F^2 / ||dW||_2^2; NaN for a zero matrix."""
    return frob_sq / s1**2 if s1 > 0 else math.nan


def principal_angles(Q1: torch.Tensor, Q2: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between span(Q1) and span(Q2), orthonormal columns.

    cos theta = singular values of Q1^T Q2; sin theta = singular values of Q2 - Q1 Q1^T Q2. Angles
    whose cosine is above 1/sqrt(2) come from the sine (accurate for tiny angles), the others from
    the cosine (Bjorck & Golub 1973; the split scipy.linalg.subspace_angles also makes).
    """
    Q1, Q2 = Q1.to(F64), Q2.to(F64)
    if Q1.shape[1] < Q2.shape[1]:
        Q1, Q2 = Q2, Q1
    C = Q1.mT @ Q2
    cos = torch.linalg.svdvals(C).clamp(0, 1)  # descending: angles ascending
    sin = torch.linalg.svdvals(Q2 - Q1 @ C).clamp(0, 1)  # descending: angles descending
    k = cos.numel()
    sin = sin[:k].flip(0) if sin.numel() >= k else torch.cat([sin.new_zeros(k - sin.numel()), sin.flip(0)])
    return torch.where(cos**2 >= 0.5, torch.arcsin(sin), torch.arccos(cos))


def principal_alignment(dW: torch.Tensor, U: torch.Tensor, V: torch.Tensor, frob_sq: float) -> float:
    """||U U^T dW V V^T||_F^2 / ||dW||_F^2 = ||U^T dW V||_F^2 / ||dW||_F^2 (U, V orthonormal)."""
    if not frob_sq > 0:
        return math.nan
    return float(torch.linalg.matrix_norm(U.mT @ dW @ V) ** 2 / frob_sq)


def fraction_visible_bf16(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int]:
    """(elements with bf16(b) != bf16(a) bit for bit, elements compared) for float32 tensors;
    (0, 0) for any other dtype pair (the question is about float32 checkpoints)."""
    if a.dtype != torch.float32 or b.dtype != torch.float32:
        return 0, 0
    a, b = a.reshape(-1), b.reshape(-1)
    visible = torch.zeros((), dtype=torch.int64, device=a.device)
    for start in range(0, a.numel(), CHUNK):
        x = a[start : start + CHUNK].to(torch.bfloat16).view(torch.int16)
        y = b[start : start + CHUNK].to(torch.bfloat16).view(torch.int16)
        visible += (x != y).sum()
    return int(visible), a.numel()


def update_geometry(
    a: torch.Tensor,
    b: torch.Tensor,
    k: int = DEFAULT_K,
    method: str = "auto",
    full_max: int = FULL_SVD_MAX,
    rank: int = RANDOMIZED_RANK,
) -> dict:
    """The geometry of the update ``b - a`` of one 2-D tensor pair: :data:`GEOMETRY` values plus
    ``svd`` (full / randomized) and ``k`` (the k used: at most min(m, n)). Non-finite inputs give
    NaN values. The work is in float64 on the tensors' device."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"update geometry needs two 2-D tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    A, B = a.to(F64), b.to(F64)
    k = max(1, min(k, *A.shape))
    nan = dict.fromkeys(GEOMETRY, math.nan)
    if not (bool(torch.isfinite(A).all()) and bool(torch.isfinite(B).all())):
        return {**nan, "svd": "", "k": k}
    dW = B - A
    frob_sq = float(torch.linalg.matrix_norm(dW) ** 2)
    rank = max(rank, k)  # the randomized path sketches ``rank`` directions: the top k come out accurate
    Ua, _, Va, how = top_svd(A, rank, method, full_max)
    Ub, _, Vb, _ = top_svd(B, rank, how)
    if frob_sq > 0:
        S = torch.linalg.svdvals(dW) if how == "full" else randomized_svd(dW, rank)[1]
        rest = frob_sq - float((S**2).sum())  # below 1e-12 of the total: rounding of the difference
        tail = (rest if rest > 1e-12 * frob_sq else 0.0), min(dW.shape) - S.numel()
        erank, srank = effective_rank(S, *tail), stable_rank(frob_sq, float(S[0]))
        energy = float((S[:k] ** 2).sum()) / frob_sq
    else:
        erank = srank = energy = math.nan
    angles = torch.cat([principal_angles(Ua[:, :k], Ub[:, :k]), principal_angles(Va[:, :k], Vb[:, :k])]).rad2deg()
    return {
        "effective_rank": erank,
        "stable_rank": srank,
        "topk_energy": min(energy, 1.0),
        "max_principal_angle_deg": float(angles.max()),
        "mean_principal_angle_deg": float(angles.mean()),
        "principal_alignment": principal_alignment(dW, Ua[:, :k], Va[:, :k], frob_sq),
        "svd": how,
        "k": k,
    }


# -- the accumulator of a group of tensors ---------------------------------------------------------
@dataclass
class SpectralStats(Accumulator):
    """Update geometry of any group of tensor pairs: parameter-weighted means of the per-tensor
    :data:`GEOMETRY` values over 2-D tensors (``sums[i] / weights[i]``, weight = numel, undefined
    values left out) and the pooled ``fraction_visible_bf16`` over float32 elements.

    Settings: ``k``, ``method``, ``full_max``. States (all sums, so they merge exactly across
    tensors and processes): ``sums``, ``weights`` (one entry per :data:`GEOMETRY` column),
    ``n_visible``, ``n_fp32``. Tensors that are not 2-D (norms, biases) add only to the bf16 count.
    """

    k: int = DEFAULT_K
    method: str = "auto"
    full_max: int = FULL_SVD_MAX
    sums: list[float] = state([])
    weights: list[int] = state([])
    n_visible: int = state(0)
    n_fp32: int = state(0)

    def __post_init__(self):
        if not self.sums:
            self.sums = [0.0] * len(GEOMETRY)
            self.weights = [0] * len(GEOMETRY)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> SpectralStats:
        """Add one tensor pair (same shape, any device)."""
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
        visible, fp32 = fraction_visible_bf16(a, b)
        values = {"n_visible": visible, "n_fp32": fp32}
        if a.dim() == 2 and a.numel() and a.is_floating_point() and b.is_floating_point():
            g = update_geometry(a, b, self.k, self.method, self.full_max)
            defined = [not math.isnan(g[c]) for c in GEOMETRY]
            values["sums"] = [g[c] * a.numel() if d else 0.0 for c, d in zip(GEOMETRY, defined)]
            values["weights"] = [a.numel() if d else 0 for d in defined]
        return self.add(values)

    def compute(self) -> dict:
        """The :data:`COLUMNS` values of the group (NaN where no tensor defines one)."""
        out = {c: s / w if w else math.nan for c, s, w in zip(GEOMETRY, self.sums, self.weights)}
        out["fraction_visible_bf16"] = self.n_visible / self.n_fp32 if self.n_fp32 else math.nan
        return out

    def row(self) -> dict:
        return self.compute()


# -- bf16 visibility ------------------------------------------------------------------------------
@dataclass
class Bf16Visibility(Accumulator):
    """Elements whose change a bfloat16 checkpoint would show, ``bf16(b) != bf16(a)`` bitwise
    (:func:`prism_analysis.weights.spectral.fraction_visible_bf16`; float32 tensors only)."""

    numel: int = state(0)
    n_visible: int = state(0)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> Bf16Visibility:
        from ..weights.spectral import fraction_visible_bf16

        visible, numel = fraction_visible_bf16(a, b)
        return self.add({"numel": numel, "n_visible": visible})

    def compute(self) -> float:
        return self.n_visible / self.numel if self.numel else math.nan
