"""One definition of "changed", shared by UpdateStats and OverlapStats on both compute paths.

Rule (prism_analysis.metrics): an element changed at tau iff its stored bits differ and either A or
B is not finite, or |b - a| > tau |a| in float64. Checked against an independent numpy reference on
planted NaN/Inf/zero cases.
"""

import numpy as np
import pytest
import torch

from prism_analysis.weights.overlap import OverlapStats
from prism_analysis.weights.update import UpdateStats

NAN, INF = float("nan"), float("inf")
# (a, b) pairs that pin the rule down; expected changed at tau = 1%
CASES = [
    (1.0, 1.0, False),  # equal
    (1.0, 1.5, True),  # large move
    (1.0, 1.001, False),  # small move
    (0.0, 0.0, False),  # zero rule: 0 -> 0
    (0.0, -0.0, False),  # +0 -> -0
    (0.0, 1e-3, True),  # 0 -> nonzero
    (NAN, NAN, False),  # the same NaN bits: unchanged
    (NAN, 1.0, True),  # NaN -> number
    (1.0, NAN, True),  # number -> NaN
    (INF, INF, False),  # inf -> inf (bitwise equal)
    (1.0, INF, True),
    (INF, -INF, True),
    (-INF, 2.0, True),
]


def reference_changed(a: np.ndarray, b: np.ndarray, tau: float) -> np.ndarray:
    """Independent reference of the documented rule."""
    bits_equal = a.view(np.uint32) == b.view(np.uint32)
    finite = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore"):
        moved = np.abs(b.astype(np.float64) - a.astype(np.float64)) > tau * np.abs(a.astype(np.float64))
    return np.where(finite, moved, ~bits_equal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_both_accumulators_use_one_definition(compute_path, dtype):
    a = torch.tensor([c[0] for c in CASES], dtype=dtype)
    b = torch.tensor([c[1] for c in CASES], dtype=dtype)
    expected = np.array([c[2] for c in CASES])
    ref = reference_changed(a.float().numpy(), b.float().numpy(), 0.01)
    assert (ref == expected).all()
    u = UpdateStats(thresholds=(0.01,)).update(a, b)
    assert u.n_changed == [int(expected.sum())]
    # OverlapStats: update 1 is the planted pair, update 2 is "everything changed" (0 -> 1)
    o = OverlapStats(0.01).update(a, b, torch.zeros_like(a), torch.ones_like(a))
    assert o.n1 == int(expected.sum()) and o.n2 == len(CASES) and o.n12 == int(expected.sum())
    # and the other way round
    o2 = OverlapStats(0.01).update(torch.zeros_like(a), torch.ones_like(a), a, b)
    assert o2.n2 == int(expected.sum())
