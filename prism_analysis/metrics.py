"""PRISM's weight-update metrics, defined once (paper Eq. 1 and metric 2).

Let A be the earlier and B the later checkpoint, matched tensor by tensor, a and b two matched
elements (float64 values of the stored numbers: exact for every float dtype up to float64).

- **normalized L2** (Eq. 1): ``||W_B - W_A||_F / ||W_A||_F``. For a layer, a component or the whole
  model the same formula is applied to the concatenation of the group's tensors,
  ``sqrt(sum (b - a)^2) / sqrt(sum a^2)`` -- never a mean of per-tensor ratios.
- **changed at tau** (metric 2; "update sparsity" = 1 - fraction changed). An element is changed at
  tau iff

  * a and b are both finite and ``|b - a| > tau * |a|`` (a strict, exact float64 comparison: where
    a == 0 the element is changed iff b != 0, and +0 -> -0 is unchanged), or
  * a or b is NaN or +-Inf and their stored bits differ (a non-finite element is changed unless it
    is bitwise equal: NaN -> the same NaN is unchanged, NaN -> 1.0 is changed). A pair of two dtypes
    is compared in the wider one, where NaN -> any NaN is unchanged (a cast keeps no NaN payload the
    same on every device).

  Elements where a or b is not finite are counted as ``nonfinite`` and left out of every sum of
  squares (so they never turn an L2 into NaN).
- **bitwise equal**: the stored bits are identical. On bf16 checkpoints any tau below 2^-8 (0.39 %)
  *is* bitwise equality, since adjacent bf16 numbers are at least that far apart.

Every statistic of the package uses these rules: :class:`prism_analysis.weights.audit.UpdateStats`,
:class:`prism_analysis.weights.compare.OverlapStats`, both on the fused CPU kernels
(:mod:`prism_analysis.weights.fused`) and on the torch path (GPU, other dtypes) -- the tests check all four
against an independent reference.
"""

from __future__ import annotations

import math

#: PRISM's threshold sweep (Table 22): 0.1, 0.5, 1, 2, 5, 10 percent.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)
#: The threshold PRISM reports by default: 1 %.
DEFAULT_THRESHOLD = 0.01


def threshold_key(tau: float) -> str:
    """JSON/CSV key of a threshold: the fraction as ``repr(float)`` writes it, e.g. ``'0.01'``."""
    return repr(float(tau))


def changed_column(tau: float = DEFAULT_THRESHOLD) -> str:
    """Table column holding the fraction changed at ``tau``, e.g. ``'fraction_changed_0.01'``."""
    return f"fraction_changed_{threshold_key(tau)}"


def check_thresholds(thresholds) -> tuple[float, ...]:
    """Sorted thresholds as floats; raises ValueError for a negative, NaN or infinite one, or none."""
    values = tuple(sorted(float(t) for t in thresholds))
    if not values or any(not math.isfinite(t) or t < 0 for t in values):
        raise ValueError("thresholds must be finite, non-negative fractions, e.g. 0.01 for 1%")
    return values


def normalized_l2(sum_sq_diff: float, sum_sq_a: float) -> float:
    """``sqrt(sum_sq_diff) / sqrt(sum_sq_a)`` (Eq. 1); inf when A is all zeros and B is not.

    From the float64 sums over a tensor or a group of tensors (never a mean of per-tensor ratios)::

        >>> a, b = [3.0, 4.0], [3.0, 4.5]  # ||A|| = 5, ||B - A|| = 0.5
        >>> normalized_l2(sum((y - x) ** 2 for x, y in zip(a, b)), sum(x * x for x in a))
        0.1
        >>> normalized_l2(0.0, 0.0), normalized_l2(1.0, 0.0)
        (0.0, inf)
    """
    if sum_sq_a > 0:
        return math.sqrt(sum_sq_diff) / math.sqrt(sum_sq_a)
    return 0.0 if sum_sq_diff == 0 else math.inf


def bits_equal(a, b):
    """Mask of elements whose stored bits are identical (tensors of one dtype, any device)."""
    import torch

    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return a.view(view) == b.view(view)


def changed_mask(a, b, tau: float, equal):
    """The "changed at tau" mask (see the module docstring), on the torch path.

    ``a``, ``b``: the values in a float work dtype (float32 holds bf16/fp16 exactly, float64 the
    rest); ``equal``: :func:`bits_equal` of the stored tensors, which decides non-finite elements.

    The strict comparison, the zero rule (+0 -> -0 unchanged) and the non-finite rule::

        >>> import torch
        >>> nan = float("nan")
        >>> a = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, nan, nan])
        >>> b = torch.tensor([1.005, 1.02, -0.0, 1e-30, 0.0, nan, 1.0])
        >>> changed_mask(a, b, 0.01, bits_equal(a, b)).tolist()
        [False, True, False, True, False, False, True]

    On bf16 weights any tau below 2^-8 (0.39 %) is bitwise equality: the next bf16 number after 1.0
    is 1 + 2^-7, so the smallest possible move is already "changed" at tau = 2^-8::

        >>> one = torch.tensor([1.0], dtype=torch.bfloat16)
        >>> (torch.nextafter(one, torch.tensor([2.0], dtype=torch.bfloat16)) - one).item() == 2**-7
        True
    """
    import torch

    moved = (b - a).abs() > tau * a.abs()
    finite = torch.isfinite(a) & torch.isfinite(b)
    return torch.where(finite, moved, ~equal)


#: The representation-similarity measures of :mod:`prism_analysis.representations.similarity`, in
#: the order tables and figures list them (``prism cka --measure``).
SIMILARITY_MEASURES = ("cka", "mutual_knn", "cknna", "procrustes", "svcca", "rsa")
