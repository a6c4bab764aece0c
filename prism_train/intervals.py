"""95 % intervals for benchmark accuracies and for paired differences between two models.

- :func:`wilson`: the Wilson score interval of an accuracy k/n (Wilson 1927),

      centre = (p + z^2 / 2n) / (1 + z^2 / n),
      half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2),     p = k / n, z = 1.95996

  which, unlike the normal interval, stays inside [0, 1] and is not empty at k = 0 or k = n.
- :func:`paired_bootstrap`: the percentile bootstrap interval of a weighted difference of mean
  scores, A - B = sum_k w_k (mean(a_k) - mean(b_k)), where both models were scored on the *same*
  problems of each benchmark k. Problems are resampled with replacement within each benchmark
  (stratified), and the same resampled problems score both models, so the interval reflects only
  how the two models differ per problem, not how hard the drawn problems happen to be. With one
  benchmark and weight 1 it is the plain paired bootstrap of a difference of accuracies; with
  PRISM's macro weights (math_easy 1/6, math_hard 1/6, code 1/3, science 1/3) it is the paired
  interval of a macro-average difference.

Everything is computed in float64 from the per-problem 0/1 scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

Z95 = 1.959963984540054  # the 97.5 % quantile of the standard normal

#: PRISM's macro average mean(math average, code, science) as weights of the four benchmarks.
MACRO_WEIGHTS = {"math_easy": 1 / 6, "math_hard": 1 / 6, "code": 1 / 3, "science": 1 / 3}
MATH_WEIGHTS = {"math_easy": 1 / 2, "math_hard": 1 / 2}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) of ``k`` successes in ``n`` trials (n >= 1)."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1 (k={k}, n={n})")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # the bounds at k = 0 and k = n are exactly 0 and 1; computed, they round to +-1e-19 off
    lo = 0.0 if k == 0 else min(p, max(0.0, centre - half))
    hi = 1.0 if k == n else max(p, min(1.0, centre + half))
    return lo, hi


def paired_bootstrap(
    a: Mapping[str, Sequence[float]],
    b: Mapping[str, Sequence[float]],
    weights: Mapping[str, float],
    resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Paired, stratified percentile bootstrap of sum_k w_k (mean a_k - mean b_k).

    ``a`` and ``b``: benchmark -> per-problem scores of the two models on the same problems, in
    the same order. Returns ``{"diff", "lo", "hi", "excludes_zero", "resamples"}`` (``diff`` is the
    estimate on the problems themselves).
    """
    rng = np.random.default_rng(seed)
    diff = 0.0
    boot = np.zeros(resamples, dtype=np.float64)
    for k, w in weights.items():
        da, db = np.asarray(a[k], dtype=np.float64), np.asarray(b[k], dtype=np.float64)
        if da.shape != db.shape or da.ndim != 1 or len(da) == 0:
            raise ValueError(f"benchmark {k}: the two models must be scored on the same, non-empty problem list")
        d = da - db
        diff += w * d.mean()
        idx = rng.integers(0, len(d), size=(resamples, len(d)))
        boot += w * _resample_means(d, idx)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    return {
        "diff": float(diff),
        "lo": float(lo),
        "hi": float(hi),
        "excludes_zero": bool(lo > 0 or hi < 0),
        "resamples": resamples,
    }


def _resample_means(d: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``d[idx].mean(axis=1)``: the mean of each resample (row of ``idx``). Differences of 0/1
    scores are small integers, whose float64 sums are exact in any order: they are summed as int8
    gathers into int64 (bit-identical, ~15x faster on 10,000 x 1,000 resamples); other scores
    take numpy's float64 mean."""
    if len(d) and np.all(np.abs(d) <= 127) and np.all(d == np.rint(d)):
        return np.take(d.astype(np.int8), idx).sum(axis=1, dtype=np.int64) / len(d)
    return d[idx].mean(axis=1)
