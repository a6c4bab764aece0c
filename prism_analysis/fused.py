"""Fused single-pass CPU kernel for the update statistics of one tensor pair (numba).

Why: element-wise torch on the CPU needs about ten passes over memory (dtype conversions,
difference, four float64 sums, ratio, bucketing, equality) and runs ~15x slower than reading the
checkpoint. This kernel reads each element pair once and does everything in registers, on all
cores (``numba.prange`` over 64K-element blocks, partial results per block, summed in float64).

Per element, with x = float64(a) and y = float64(b) (exact for bf16/fp16/fp32 inputs):

- bitwise equality of the stored bits;
- if both finite: sums of x^2, y^2, x*y, (y-x)^2 and max |y-x| (float64), and for every
  threshold tau: changed iff ``|y - x| > tau * |x|`` -- an exact float64 comparison, which also
  gives PRISM's zero rule (x == 0: changed iff y != 0) with no special case;
- otherwise: counted non-finite, and changed at every threshold unless bitwise equal.

Used by :class:`prism_analysis.weights.UpdateStats` for CPU tensors of dtype bf16, fp16 and fp32;
the torch path in ``weights.py`` handles GPU tensors and other dtypes with the same semantics.
"""
from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit, prange
    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a dependency; this keeps the torch path usable
    AVAILABLE = False

BLOCK = 1 << 16
DTYPES = (torch.bfloat16, torch.float16, torch.float32)

if AVAILABLE:
    @njit(parallel=True, cache=True, nogil=True)
    def _kernel(a, b, thresholds, bf16):  # pragma: no cover - compiled
        n = a.size
        K = len(thresholds)
        nblocks = (n + BLOCK - 1) // BLOCK
        acc = np.zeros((nblocks, 5))
        cnt = np.zeros((nblocks, K + 2), dtype=np.int64)
        for blk in prange(nblocks):
            lo = blk * BLOCK
            hi = min(n, lo + BLOCK)
            m = hi - lo
            if bf16:  # bf16 bits are the top half of the float32 with the same value
                ua = np.empty(m, dtype=np.uint32)
                ub = np.empty(m, dtype=np.uint32)
                for j in range(m):
                    ua[j] = np.uint32(a[lo + j]) << 16
                    ub[j] = np.uint32(b[lo + j]) << 16
                fa = ua.view(np.float32)
                fb = ub.view(np.float32)
            else:
                fa = a[lo:hi].view(np.float32)
                fb = b[lo:hi].view(np.float32)
            s_a2 = 0.0
            s_b2 = 0.0
            s_ab = 0.0
            s_d2 = 0.0
            mx = 0.0
            n_eq = 0
            n_nf = 0
            changed = np.zeros(K, dtype=np.int64)
            for j in range(m):
                eq = a[lo + j] == b[lo + j]
                n_eq += eq
                x = np.float64(fa[j])
                y = np.float64(fb[j])
                if np.isfinite(x) and np.isfinite(y):
                    d = y - x
                    s_a2 += x * x
                    s_b2 += y * y
                    s_ab += x * y
                    s_d2 += d * d
                    ad = abs(d)
                    ax = abs(x)
                    mx = max(mx, ad)
                    for t in range(K):
                        changed[t] += ad > thresholds[t] * ax
                else:
                    n_nf += 1
                    if not eq:
                        for t in range(K):
                            changed[t] += 1
            acc[blk, 0] = s_a2
            acc[blk, 1] = s_b2
            acc[blk, 2] = s_ab
            acc[blk, 3] = s_d2
            acc[blk, 4] = mx
            cnt[blk, 0] = n_eq
            cnt[blk, 1] = n_nf
            for t in range(K):
                cnt[blk, 2 + t] = changed[t]
        return acc, cnt


def supports(a: torch.Tensor) -> bool:
    """Whether the fused kernel handles tensors like ``a`` (CPU, bf16/fp16/fp32)."""
    return AVAILABLE and a.device.type == "cpu" and a.dtype in DTYPES


def pair_stats(a: torch.Tensor, b: torch.Tensor, thresholds: tuple[float, ...]) -> tuple[list[float], list[int]]:
    """``([sum a^2, sum b^2, sum a*b, sum (b-a)^2, max|b-a|], [n_equal, n_nonfinite, n_changed per tau])``."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype == torch.float16:  # fp16 -> fp32 is exact and injective: equal bits stay equal bits
        a, b = a.float(), b.float()
    if a.dtype == torch.bfloat16:
        bits_a, bits_b, bf16 = a.view(torch.int16).numpy().view(np.uint16), b.view(torch.int16).numpy().view(np.uint16), True
    else:
        bits_a, bits_b, bf16 = a.view(torch.int32).numpy().view(np.uint32), b.view(torch.int32).numpy().view(np.uint32), False
    acc, cnt = _kernel(bits_a, bits_b, tuple(float(t) for t in thresholds), bf16)
    sums = acc[:, :4].sum(axis=0).tolist() + [float(acc[:, 4].max()) if len(acc) else 0.0]
    return sums, cnt.sum(axis=0).tolist()
