"""A calibrated suite of representation-similarity measures, beside linear CKA.

For representations X (n x d1) and Y (n x d2) of the same n inputs (numpy or torch, any float
dtype; the work is in float64):

- :func:`mutual_knn` (Huh et al. 2024, "The Platonic Representation Hypothesis", platonic-rep
  ``metrics.mutual_knn``): with N_k^X(i) the k nearest neighbours of row i among the other rows by
  cosine similarity (rows L2-normalised, as platonic-rep's ``compute_score`` does by default),
  ``mean_i |N_k^X(i) & N_k^Y(i)| / k``. In [0, 1]; 1 for identical neighbourhoods.
- :func:`cknna` (Huh et al. 2024, platonic-rep ``metrics.cknna``): CKA restricted to mutual
  neighbours. With K = X^ X^^T, L = Y^ Y^^T (rows normalised), M_K(i, j) = 1 iff j is among the k
  largest K(i, .) (j != i), and HSIC_1 the unbiased HSIC of Song et al. 2012 (their Eq. 5,
  ``[sum(K~ o L~^T) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2 1'K~L~1 / (n-2)] / (n(n-3))``, K~ with a zero
  diagonal), ``s(K, L) = HSIC_1(M o K, M o L)`` with M = M_K o M_L, and
  ``cknna = s(K, L) / sqrt(s(K, K) s(L, L))`` (platonic-rep adds 1e-6 to the denominator; here a
  non-positive one gives NaN instead). The masked Grams are not symmetric, so Cauchy-Schwarz does
  not bound it: values slightly above 1 occur, in platonic-rep's code as here; nor is it exactly
  symmetric in X and Y (its 1'K~L~1 term), which this implementation keeps, as the reference does.
- :func:`procrustes_distance` (Williams et al. 2021, "Generalized shape metrics", angular form):
  X, Y centred and scaled to unit Frobenius norm, ``arccos(||X^T Y||_*)`` in radians, in
  [0, pi/2]; 0 iff Y is an orthogonal transform of X (up to translation and scale). A distance:
  lower is more similar. ``||X^T Y||_*`` is the optimum of the orthogonal Procrustes problem
  max_Q tr(Q^T X^T Y) (zero-padding the narrower side).
- :func:`svcca` (Raghu et al. 2017, SVCCA): each side centred and reduced to its top-k left
  singular vectors (the SVD step), then the mean of the canonical correlations between the two
  reduced representations (the CCA step). CCA is invariant to invertible maps of each side, so the
  correlations are the singular values of U_k^X^T U_k^Y.
- :func:`rsa` (Kriegeskorte et al. 2008, representational similarity analysis): the Spearman
  correlation of the condensed (i < j) dissimilarity matrices, dissimilarity = correlation distance
  ``1 - pearson(x_i, x_j)`` between rows; distances equal to 12 decimals share their average rank.
- ``cka``: linear CKA (:mod:`prism_analysis.representations.cka`, Eq. 4).

Calibration (:func:`similarity_table`): a permutation null per layer -- the rows of Y shuffled
(seeded, the same permutations for every layer and measure), which keeps each representation's
geometry and breaks the pairing. Reported beside each score: ``null_mean``, ``null_std``, the
p-value ``(1 + #{null at least as similar as observed}) / (1 + n_perm)`` (>= for similarities, <=
for the Procrustes distance) and the null-corrected score

    corrected = (score - null_mean) / (perfect - null_mean),

the share of the way from chance to a perfect score (perfect = 1, or 0 for the distance): 0 is
what any two unpaired representations of these shapes reach, 1 is perfect (Huh et al. and arXiv
2602.14486 show raw scores grow with width and depth; the null absorbs that). Intervals:
PRISM's protocol as for CKA (:func:`prism_analysis.representations.cka.bootstrap_cka`), the measure on random
subsets of ``sample_size`` rows, ``*_resample_mean``, ``*_resample_ci_low``, ``*_resample_ci_high``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import PARAM, PrismError
from .cka import layerwise_cka

F64 = torch.float64
DEFAULT_K = 10
DEFAULT_SVCCA_K = 10
DEFAULT_PERMUTATIONS = 100
#: RSA: correlation distances (in [0, 2]) equal to this many decimals are tied ranks.
TIE_DECIMALS = 12


# -- inputs -----------------------------------------------------------------------------------------
def _as64(x) -> torch.Tensor:
    t = x if torch.is_tensor(x) else torch.from_numpy(np.asarray(x))
    return t.to(F64)


def _pair(X, Y) -> tuple[torch.Tensor, torch.Tensor]:
    X, Y = _as64(X), _as64(Y)
    Y = Y.to(X.device)
    if X.dim() != 2 or Y.dim() != 2:
        raise ValueError(f"expected 2-D (n x d) inputs, got shapes {tuple(X.shape)} and {tuple(Y.shape)}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y need the same number of rows (inputs): {X.shape[0]} vs {Y.shape[0]}")
    return X, Y


def _centered(X: torch.Tensor) -> torch.Tensor:
    return X - X.mean(0, keepdim=True)


def _reduced(Xc: torch.Tensor) -> torch.Tensor:
    """Xc in n coordinates when it is wider than tall: R^T from Xc^T = Q R, so Xc = R^T Q^T with Q
    orthonormal; inner products between rows, and every orthogonally invariant measure, stay exact."""
    n, d = Xc.shape
    return torch.linalg.qr(Xc.mT).R.mT if d > n else Xc


def _check_k(k: int, n: int, what: str) -> None:
    if not 1 <= k < n:
        raise ValueError(f"{what} needs 1 <= k < n (rows): k={k}, n={n}")


# -- per-side preparation and pair scores -------------------------------------------------------
# Every measure is score(prep(X), prep(Y)). A row permutation P of Y acts on prep(Y) as P on its
# rows ("rows") or as P . P^T on an n x n matrix ("gram"), so the null reuses prep(Y).
def _prep_cka(X: torch.Tensor, **_) -> torch.Tensor:
    return _reduced(_centered(X))


def _score_cka(px: torch.Tensor, py: torch.Tensor, **_) -> float:
    return float(layerwise_cka(px[None], py[None])[0])


def _prep_procrustes(X: torch.Tensor, **_) -> torch.Tensor:
    Xc = _centered(X)
    norm = torch.linalg.matrix_norm(Xc)
    if not norm > 0:
        raise ValueError("Procrustes distance is undefined: a representation has no variance across rows")
    return _reduced(Xc / norm)


def _score_procrustes(px: torch.Tensor, py: torch.Tensor, **_) -> float:
    # rows permuted after centring: re-centring is a no-op (a permutation keeps the column means).
    # Below ~0.8 degrees the arccos of the nuclear norm loses digits; there the angle comes from the
    # residual r = ||X R - Y||_F of the optimal rotation R = U V^T: r^2 = 2 - 2 ||X^T Y||_*, so
    # angle = 2 arcsin(r / 2), exact to rounding.
    nuclear = float(torch.linalg.svdvals(px.mT @ py).sum())
    if nuclear < 0.9999:
        return math.acos(max(nuclear, 0.0))
    px, py = _pad(px, py.shape[1]), _pad(py, px.shape[1])
    U, _, Vh = torch.linalg.svd(px.mT @ py)
    r = float(torch.linalg.matrix_norm(px @ (U @ Vh) - py))
    return 2 * math.asin(min(r / 2, 1.0))


def _pad(p: torch.Tensor, width: int) -> torch.Tensor:
    """p with zero columns appended up to ``width`` (the narrower side of Procrustes, zero-padded)."""
    return torch.nn.functional.pad(p, (0, width - p.shape[1])) if p.shape[1] < width else p


def _prep_svcca(X: torch.Tensor, svcca_k: int = DEFAULT_SVCCA_K, **_) -> torch.Tensor:
    Xc = _centered(X)
    U, S, _ = torch.linalg.svd(_reduced(Xc), full_matrices=False)
    k = min(svcca_k, int((S[0] * 1e-12 < S).sum()) if S.numel() and S[0] > 0 else 0)
    if k < 1:
        raise ValueError("SVCCA is undefined: a representation has no variance across rows")
    return U[:, :k]


def _score_svcca(px: torch.Tensor, py: torch.Tensor, **_) -> float:
    k = min(px.shape[1], py.shape[1])
    return float(torch.linalg.svdvals(px.mT @ py)[:k].clamp(0, 1).mean())


def _cosine_gram(X: torch.Tensor) -> torch.Tensor:
    norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("a row is all zeros: its cosine neighbours are undefined")
    Xn = X / norms
    return Xn @ Xn.mT


def _prep_gram(X: torch.Tensor, **_) -> torch.Tensor:
    return _cosine_gram(X)


def _knn_mask(G: torch.Tensor, k: int) -> torch.Tensor:
    """M(i, j) = 1 iff j is one of the k largest G(i, .) other than i (float64 0/1, n x n)."""
    n = G.shape[0]
    _check_k(k, n, "k-nearest neighbours")
    Gm = G.clone()
    Gm.fill_diagonal_(-math.inf)
    idx = torch.topk(Gm, k, dim=1).indices
    return torch.zeros_like(G).scatter_(1, idx, 1.0)


def _score_mutual_knn(px: torch.Tensor, py: torch.Tensor, k: int = DEFAULT_K, **_) -> float:
    return float((_knn_mask(px, k) * _knn_mask(py, k)).sum(1).mean() / k)


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> float:
    """Song et al. 2012 Eq. 5, as platonic-rep writes it (the K~ o L~^T trace term keeps the
    transpose, which matters for the non-symmetric masked Gram matrices of CKNNA)."""
    n = K.shape[0]
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 rows; got {n}")
    Kt, Lt = K.clone(), L.clone()
    Kt.fill_diagonal_(0)
    Lt.fill_diagonal_(0)
    value = (
        (Kt * Lt.mT).sum()
        + Kt.sum() * Lt.sum() / ((n - 1) * (n - 2))
        - 2 * torch.dot(Kt.sum(0), Lt.sum(1)) / (n - 2)  # 1' K~ L~ 1
    )
    return float(value / (n * (n - 3)))


def _score_cknna(px: torch.Tensor, py: torch.Tensor, k: int = DEFAULT_K, **_) -> float:
    mx, my = _knn_mask(px, k), _knn_mask(py, k)

    def s(K, L, mask):
        return hsic_unbiased(mask * K, mask * L)

    kl, kk, ll = s(px, py, mx * my), s(px, px, mx), s(py, py, my)
    return kl / math.sqrt(kk * ll) if kk > 0 and ll > 0 else math.nan


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..m, ties given their average rank (as scipy.stats.rankdata's default)."""
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _prep_rsa(X: torch.Tensor, **_) -> torch.Tensor:
    """The ranks of the condensed correlation distances, as a symmetric n x n matrix."""
    n = X.shape[0]
    R = X - X.mean(1, keepdim=True)
    norms = torch.linalg.vector_norm(R, dim=1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("RSA's correlation distance is undefined: a row is constant")
    D = 1.0 - (R / norms) @ (R / norms).mT
    iu = torch.triu_indices(n, n, 1, device=X.device)
    # distances equal to 12 decimals are ties (equal distances must not be ranked by rounding noise)
    condensed = np.round(D[iu[0], iu[1]].cpu().numpy(), TIE_DECIMALS)
    ranks = torch.from_numpy(_average_ranks(condensed)).to(X.device)
    M = torch.zeros_like(D)
    M[iu[0], iu[1]] = ranks
    return M + M.mT


def _score_rsa(px: torch.Tensor, py: torch.Tensor, **_) -> float:
    n = px.shape[0]
    iu = torch.triu_indices(n, n, 1, device=px.device)
    a, b = px[iu[0], iu[1]], py[iu[0], iu[1]]
    a, b = a - a.mean(), b - b.mean()
    denom = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    return float(torch.dot(a, b) / denom) if denom > 0 else math.nan


@dataclass(frozen=True)
class Measure:
    """One measure: ``score(prep(X), prep(Y))``; ``kind`` says how a row permutation acts on prep(Y)."""

    prep: Callable
    score: Callable
    kind: str  # "rows" or "gram"
    perfect: float  # the score of identical inputs
    similarity: bool  # higher is more similar (False: a distance)
    min_rows: int


MEASURES: dict[str, Measure] = {
    "cka": Measure(_prep_cka, _score_cka, "rows", 1.0, True, 3),
    "mutual_knn": Measure(_prep_gram, _score_mutual_knn, "gram", 1.0, True, 3),
    "cknna": Measure(_prep_gram, _score_cknna, "gram", 1.0, True, 4),
    "procrustes": Measure(_prep_procrustes, _score_procrustes, "rows", 0.0, False, 2),
    "svcca": Measure(_prep_svcca, _score_svcca, "rows", 1.0, True, 2),
    "rsa": Measure(_prep_rsa, _score_rsa, "gram", 1.0, True, 3),
}


def check_measures(names) -> tuple[str, ...]:
    """``names`` (measures of :data:`MEASURES`, at least one) in the order of :data:`MEASURES`;
    an unknown or missing name is a :class:`~prism_analysis.errors.PrismError` about ``measures``."""
    names = tuple(names)
    unknown = [n for n in names if n not in MEASURES]
    if not names or unknown:
        raise PrismError(
            f"{PARAM}: unknown measure {', '.join(map(str, unknown)) or 'none given'}; "
            f"choose from {', '.join(MEASURES)}",
            param="measures",
        )
    return tuple(m for m in MEASURES if m in names)


def measure(name: str, X, Y, **params) -> float:
    """The measure ``name`` (a key of :data:`MEASURES`) of X and Y; ``params``: k, svcca_k."""
    if name not in MEASURES:
        raise ValueError(f"unknown measure {name!r}; choose from {', '.join(MEASURES)}")
    X, Y = _pair(X, Y)
    m = MEASURES[name]
    if X.shape[0] < m.min_rows:
        raise ValueError(f"{name} needs at least {m.min_rows} rows; got {X.shape[0]}")
    return m.score(m.prep(X, **params), m.prep(Y, **params), **params)


def mutual_knn(X, Y, k: int = DEFAULT_K) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024); see the module docstring."""
    return measure("mutual_knn", X, Y, k=k)


def cknna(X, Y, k: int = DEFAULT_K) -> float:
    """CKNNA, CKA over mutual k-nearest neighbours (Huh et al. 2024); see the module docstring."""
    return measure("cknna", X, Y, k=k)


def procrustes_distance(X, Y) -> float:
    """Angular Procrustes distance arccos(||X^T Y||_*) of centred, unit-norm X, Y (Williams 2021), radians."""
    return measure("procrustes", X, Y)


def svcca(X, Y, k: int = DEFAULT_SVCCA_K) -> float:
    """SVCCA (Raghu et al. 2017): mean canonical correlation of the top-k SVD subspaces."""
    return measure("svcca", X, Y, svcca_k=k)


def rsa(X, Y) -> float:
    """RSA: Spearman correlation of the condensed correlation-distance matrices of X and Y."""
    return measure("rsa", X, Y)


# -- calibration -------------------------------------------------------------------------------------
def _permuted(p: torch.Tensor, perm: torch.Tensor, kind: str) -> torch.Tensor:
    return p[perm] if kind == "rows" else p[perm][:, perm]


def permutation_null(name: str, X, Y, permutations, **params) -> tuple[float, np.ndarray]:
    """(score, null scores): the measure on (X, Y) and on (X, Y with rows permuted) for each
    permutation in ``permutations`` (index tensors or arrays of length n)."""
    X, Y = _pair(X, Y)
    m = MEASURES[name]
    px, py = m.prep(X, **params), m.prep(Y, **params)
    obs = m.score(px, py, **params)
    null = [m.score(px, _permuted(py, torch.as_tensor(p, device=py.device), m.kind), **params) for p in permutations]
    return obs, np.asarray(null, dtype=np.float64)


def calibrate(name: str, obs: float, null: np.ndarray) -> dict:
    """``null_mean``, ``null_std``, ``p_value`` and ``corrected`` of a score against its null."""
    m = MEASURES[name]
    null = null[~np.isnan(null)]
    if not len(null) or math.isnan(obs):
        return {"null_mean": math.nan, "null_std": math.nan, "p_value": math.nan, "corrected": math.nan}
    mean = float(null.mean())
    extreme = int((null >= obs).sum()) if m.similarity else int((null <= obs).sum())
    room = m.perfect - mean
    return {
        "null_mean": mean,
        "null_std": float(null.std(ddof=1)) if len(null) > 1 else 0.0,
        "p_value": (1 + extreme) / (1 + len(null)),
        "corrected": (obs - mean) / room if room != 0 else math.nan,
    }


#: Per-measure columns of :func:`similarity_table` (after the measure's own column).
SUFFIXES = (
    "null_mean",
    "null_std",
    "p_value",
    "corrected",
    "resample_mean",
    "resample_std",
    "resample_ci_low",
    "resample_ci_high",
)


def similarity_table(
    Xs,
    Ys,
    measures=tuple(MEASURES),
    k: int = DEFAULT_K,
    svcca_k: int = DEFAULT_SVCCA_K,
    permutations: int = DEFAULT_PERMUTATIONS,
    bootstrap: int = 20,
    sample_size: int | None = None,
    seed: int = 0,
    ci: float = 0.95,
    progress: bool = False,
) -> pd.DataFrame:
    """Every measure for matched layers ``Xs`` (L x n x d1) and ``Ys`` (L x n x d2), calibrated.

    One row per layer: ``layer``, ``n``, and per measure m the columns ``m`` (the score on all n
    rows) and ``m_<suffix>`` for each of :data:`SUFFIXES`: the permutation null (``permutations``
    shuffles of Y's rows, seeded by ``seed``, shared by all layers and measures) and PRISM's
    resampling protocol (``bootstrap`` random subsets of ``sample_size`` rows, default n // 2,
    without replacement; percentile interval at ``ci``).
    """
    from ..progress import progress_bar

    unknown = [m for m in measures if m not in MEASURES]
    if unknown:
        raise ValueError(f"unknown measure(s) {', '.join(unknown)}; choose from {', '.join(MEASURES)}")
    X, Y = _as64(Xs), _as64(Ys)
    if X.dim() == 2:
        X, Y = X[None], Y[None]
    Y = Y.to(X.device)
    if X.shape[:2] != Y.shape[:2]:
        raise ValueError(f"X and Y need the same layers and rows: {tuple(X.shape[:2])} vs {tuple(Y.shape[:2])}")
    n = X.shape[1]
    size = sample_size if sample_size is not None else n // 2
    params = {"k": k, "svcca_k": svcca_k}
    for name in measures:
        need = max(MEASURES[name].min_rows, k + 1 if name in ("mutual_knn", "cknna") else 0)
        if n < need or (bootstrap and size < need):
            raise ValueError(
                f"{name} needs at least {need} rows (k={k}); got {n} rows"
                + (f" and resamples of {size}" if bootstrap else "")
            )
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(permutations)]
    subsets = [np.sort(rng.choice(n, size=size, replace=False)) for _ in range(bootstrap if size < n else 0)]
    alpha = (1 - ci) / 2
    rows = []
    for layer in progress_bar(range(X.shape[0]), enabled=progress, desc="similarity", unit="layer"):
        row: dict = {"layer": layer, "n": n}
        for name in measures:
            obs, null = permutation_null(name, X[layer], Y[layer], perms, **params)
            row[name] = obs
            row |= {f"{name}_{key}": v for key, v in calibrate(name, obs, null).items()}
            draws = np.array([measure(name, X[layer][s], Y[layer][s], **params) for s in subsets])
            good = draws[~np.isnan(draws)] if len(draws) else draws
            row[f"{name}_resample_mean"] = float(good.mean()) if len(good) else math.nan
            row[f"{name}_resample_std"] = float(good.std(ddof=1)) if len(good) > 1 else math.nan
            row[f"{name}_resample_ci_low"] = float(np.quantile(good, alpha)) if len(good) else math.nan
            row[f"{name}_resample_ci_high"] = float(np.quantile(good, 1 - alpha)) if len(good) else math.nan
        rows.append(row)
    columns = ["layer", "n"] + [c for name in measures for c in (name, *(f"{name}_{s}" for s in SUFFIXES))]
    return pd.DataFrame(rows, columns=columns)


__all__ = [
    "MEASURES",
    "calibrate",
    "cknna",
    "measure",
    "mutual_knn",
    "permutation_null",
    "procrustes_distance",
    "rsa",
    "similarity_table",
    "svcca",
]
