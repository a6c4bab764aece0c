"""Fused CPU kernel of the output divergence between two models' logits, row by row (numba, SIMD).

Per row (one token position) of float32 logits ``x`` (model A) and ``y`` (model B) over the
vocabulary, in two passes over the row:

1. the maxima ``m_x``, ``m_y`` and their first indices (the top-1 tokens; float32 comparisons, exact);
2. in float64: ``e_x(v) = exp(x(v) - m_x)``, ``e_y(v) = exp(y(v) - m_y)`` (
   :func:`prism_analysis.simd.exp_nonpositive`, vectorized), and the four sums
   ``S_x = sum e_x``, ``S_y = sum e_y``, ``D_x = sum e_x (x - y)``, ``D_y = sum e_y (x - y)``.

Then ``lse_x = m_x + log S_x``, ``lse_y = m_y + log S_y``, ``c = lse_x - lse_y`` and

    KL(P_x || P_y) = D_x / S_x - c,        KL(P_y || P_x) = c - D_y / S_y,

each clamped at 0 (the form of :func:`prism_analysis.representations.model_diff._kl_pair`:
``sum_v P_x(v) (x(v) - y(v)) - (lse_x - lse_y)``; exactly 0 for equal rows). The float64 sums run in
reassociable partial sums (a fixed order for the compiled kernel, as in
:mod:`prism_analysis.weights.fused`); rows are independent, so the thread count and the rank
change no bit.

Why: the torch path makes about ten passes over float64 copies of the logits (softmax, maximum
and index, difference, two dot products) on one thread; this reads each float32 logit twice and
keeps everything in registers, on all cores -- ``benchmarks/diff.py``. A -inf logit (a token a
model rules out) has probability 0 and adds nothing to the sums, so a KL towards a model that rules
out a token the other allows is +inf, as it is. A NaN or +inf logit, or a row of -inf logits, has no
distribution: the row is reported in ``bad`` for the caller to refuse (the torch path refuses the
same rows).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from ..simd import exp_nonpositive, sum_add


@njit(parallel=True, cache=True, nogil=True)
def _kl_rows(xa, xb):  # pragma: no cover - compiled
    """Per row r of float32 ``xa``, ``xb`` (rows x V, C-contiguous): ``out[r] = [KL(a||b), KL(b||a),
    lse_a, lse_b]``, ``top[r] = [argmax a, argmax b]`` (first index), ``bad[r]``: a NaN, a +inf or a
    row of -inf logits (no distribution) in either model."""
    rows, V = xa.shape
    out = np.empty((rows, 4))
    top = np.zeros((rows, 2), dtype=np.int64)
    bad = np.zeros(rows, dtype=np.bool_)
    for r in prange(rows):
        a = xa[r]
        b = xb[r]
        ma = a[0]
        mb = b[0]
        ta = 0
        tb = 0
        nan = False
        for j in range(V):  # maxima and first indices; NaN never compares greater, so it is counted
            if a[j] > ma:
                ma = a[j]
                ta = j
            if b[j] > mb:
                mb = b[j]
                tb = j
            nan |= (a[j] != a[j]) | (b[j] != b[j])
        mad = np.float64(ma)
        mbd = np.float64(mb)
        if nan or not (math.isfinite(mad) and math.isfinite(mbd)):
            bad[r] = True
            out[r, :] = np.nan
            continue
        s_a = 0.0
        s_b = 0.0
        d_a = 0.0
        d_b = 0.0
        for j in range(V):  # vectorized: float64 exponentials and reassociable sums
            x = np.float64(a[j])
            y = np.float64(b[j])
            # a -inf logit has probability 0 and adds nothing (0 log 0 = 0), even where x - y is
            # infinite or NaN; the other model's KL then comes out +inf, as it is
            e_a = exp_nonpositive(x - mad) if x != -np.inf else 0.0
            e_b = exp_nonpositive(y - mbd) if y != -np.inf else 0.0
            d = x - y
            s_a = sum_add(s_a, e_a)
            s_b = sum_add(s_b, e_b)
            d_a = sum_add(d_a, e_a * d if e_a > 0.0 else 0.0)
            d_b = sum_add(d_b, e_b * d if e_b > 0.0 else 0.0)
        lse_a = mad + math.log(s_a)
        lse_b = mbd + math.log(s_b)
        c = lse_a - lse_b
        out[r, 0] = max(d_a / s_a - c, 0.0)
        out[r, 1] = max(c - d_b / s_b, 0.0)
        out[r, 2] = lse_a
        out[r, 3] = lse_b
        top[r, 0] = ta
        top[r, 1] = tb
    return out, top, bad


def kl_rows(xa: torch.Tensor, xb: torch.Tensor):
    """``(KL(P_a || P_b), KL(P_b || P_a), lse_a, lse_b, argmax_a, argmax_b, bad)`` per row of CPU
    logits ``xa``, ``xb`` (see the module docstring): float64 / int64 / bool torch tensors."""
    a = xa.float().contiguous().numpy()
    b = xb.float().contiguous().numpy()
    out, top, bad = _kl_rows(a, b)
    out, top = torch.from_numpy(out), torch.from_numpy(top)
    return out[:, 0], out[:, 1], out[:, 2], out[:, 3], top[:, 0], top[:, 1], torch.from_numpy(bad)
