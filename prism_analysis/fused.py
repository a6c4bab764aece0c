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


if AVAILABLE:

    @njit(parallel=True, cache=True, nogil=True)
    def _overlap_kernel(a1, b1, a2, b2, tau, bf16):  # pragma: no cover - compiled
        n = a1.size
        nblocks = (n + BLOCK - 1) // BLOCK
        acc = np.zeros((nblocks, 3))
        cnt = np.zeros((nblocks, 3), dtype=np.int64)
        for blk in prange(nblocks):
            lo = blk * BLOCK
            hi = min(n, lo + BLOCK)
            m = hi - lo
            u = np.empty((4, m), dtype=np.uint32)
            if bf16:
                for j in range(m):
                    u[0, j] = np.uint32(a1[lo + j]) << 16
                    u[1, j] = np.uint32(b1[lo + j]) << 16
                    u[2, j] = np.uint32(a2[lo + j]) << 16
                    u[3, j] = np.uint32(b2[lo + j]) << 16
            else:
                for j in range(m):
                    u[0, j] = a1[lo + j]
                    u[1, j] = b1[lo + j]
                    u[2, j] = a2[lo + j]
                    u[3, j] = b2[lo + j]
            f = u.view(np.float32)
            dot = 0.0
            s1 = 0.0
            s2 = 0.0
            n1 = 0
            n2 = 0
            n12 = 0
            for j in range(m):
                x1 = np.float64(f[0, j])
                x2 = np.float64(f[2, j])
                d1 = np.float64(f[1, j]) - x1
                d2 = np.float64(f[3, j]) - x2
                if np.isfinite(d1) and np.isfinite(d2):
                    dot += d1 * d2
                    s1 += d1 * d1
                    s2 += d2 * d2
                c1 = abs(d1) > tau * abs(x1)
                c2 = abs(d2) > tau * abs(x2)
                n1 += c1
                n2 += c2
                n12 += c1 and c2
            acc[blk, 0] = dot
            acc[blk, 1] = s1
            acc[blk, 2] = s2
            cnt[blk, 0] = n1
            cnt[blk, 1] = n2
            cnt[blk, 2] = n12
        return acc, cnt


def _bits(t: torch.Tensor):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.view(torch.int32).numpy().view(np.uint32)


def overlap_stats(a1, b1, a2, b2, tau: float) -> tuple[list[float], list[int]]:
    """``([<d1, d2>, |d1|^2, |d2|^2], [|M1|, |M2|, |M1 & M2|])`` for d_i = b_i - a_i and masks
    M_i = |d_i| > tau |a_i|, in one pass (all four tensors of one dtype, CPU)."""
    ts = [t.reshape(-1) for t in (a1, b1, a2, b2)]
    if ts[0].dtype == torch.float16:
        ts = [t.float() for t in ts]
    acc, cnt = _overlap_kernel(*[_bits(t) for t in ts], float(tau), ts[0].dtype == torch.bfloat16)
    return acc.sum(axis=0).tolist(), cnt.sum(axis=0).tolist()


def supports(a: torch.Tensor) -> bool:
    """Whether the fused kernel handles tensors like ``a`` (CPU, bf16/fp16/fp32)."""
    return AVAILABLE and a.device.type == "cpu" and a.dtype in DTYPES


def pair_stats(a: torch.Tensor, b: torch.Tensor, thresholds: tuple[float, ...]) -> tuple[list[float], list[int]]:
    """``([sum a^2, sum b^2, sum a*b, sum (b-a)^2, max|b-a|], [n_equal, n_nonfinite, n_changed per tau])``."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype == torch.float16:  # fp16 -> fp32 is exact and injective: equal bits stay equal bits
        a, b = a.float(), b.float()
    acc, cnt = _kernel(_bits(a), _bits(b), tuple(float(t) for t in thresholds), a.dtype == torch.bfloat16)
    sums = acc[:, :4].sum(axis=0).tolist() + [float(acc[:, 4].max()) if len(acc) else 0.0]
    return sums, cnt.sum(axis=0).tolist()
