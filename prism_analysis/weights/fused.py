"""Fused single-pass CPU kernel for the update statistics of one tensor pair (numba).

Why: element-wise torch on the CPU needs about ten passes over memory (dtype conversions,
difference, four float64 sums, ratio, bucketing, equality) and runs ~15x slower than reading the
checkpoint. This kernel reads each element pair once and does everything in registers, on all
cores (``numba.prange`` over 64K-element blocks, partial results per block, summed in float64).

Per element, with x = float64(a) and y = float64(b) (exact for bf16/fp16/fp32 inputs): bitwise
equality of the stored bits; if both are finite, float64 sums of x^2, y^2, x*y, (y-x)^2 and max |y-x|,
else a count of non-finite elements; and "changed at tau" for every threshold by :func:`_changed`,
the rule of :mod:`prism_analysis.metrics` (both kernels call it).

Used by :class:`prism_analysis.weights.audit.UpdateStats` and :class:`prism_analysis.weights.compare.OverlapStats`
for large CPU tensors of dtype bf16, fp16 and fp32 (``weights.use_fused``); their torch paths handle
GPU tensors, other dtypes and small tensors with the same results. This module (and numba) is
imported only when a tensor needs it, so commands on small models never pay numba's start-up.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

BLOCK = 1 << 16


@njit(inline="always", cache=True)
def _changed(finite, abs_diff, abs_x, eq, tau):  # pragma: no cover - compiled
    """The rule of metrics.py for one element: x and y both finite -> |y - x| > tau |x| (float64);
    otherwise -> their bits differ. The caller passes finite, |y - x|, |x| and bit equality."""
    return abs_diff > tau * abs_x if finite else not eq


@njit(inline="always", cache=True)
def _thresholds_changed(finite, abs_diff, abs_x, eq, thresholds):  # pragma: no cover - compiled
    """How many of the (ascending) thresholds an element is changed at, by :func:`_changed`.

    "Changed at tau" is monotone in tau (changed at a larger tau implies changed at every smaller
    one), so this count k says the element is changed at exactly the k smallest thresholds: one
    histogram increment per element instead of one counter per threshold.
    """
    k = 0
    for t in thresholds:
        k += _changed(finite, abs_diff, abs_x, eq, t)
    return k


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
        hist = np.zeros(K + 1, dtype=np.int64)  # hist[k]: elements changed at the k smallest thresholds
        for j in range(m):
            eq = a[lo + j] == b[lo + j]
            n_eq += eq
            x = np.float64(fa[j])
            y = np.float64(fb[j])
            finite = np.isfinite(x) and np.isfinite(y)
            d = y - x
            ad = abs(d)
            ax = abs(x)
            if finite:
                s_a2 += x * x
                s_b2 += y * y
                s_ab += x * y
                s_d2 += d * d
                mx = max(mx, ad)
            else:
                n_nf += 1
            hist[_thresholds_changed(finite, ad, ax, eq, thresholds)] += 1
        acc[blk, 0] = s_a2
        acc[blk, 1] = s_b2
        acc[blk, 2] = s_ab
        acc[blk, 3] = s_d2
        acc[blk, 4] = mx
        cnt[blk, 0] = n_eq
        cnt[blk, 1] = n_nf
        above = 0
        for t in range(K - 1, -1, -1):  # changed at threshold t: counted in hist[t + 1 ...]
            above += hist[t + 1]
            cnt[blk, 2 + t] = above
    return acc, cnt


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
            y1 = np.float64(f[1, j])
            x2 = np.float64(f[2, j])
            y2 = np.float64(f[3, j])
            d1 = y1 - x1
            d2 = y2 - x2
            if np.isfinite(d1) and np.isfinite(d2):
                dot += d1 * d2
                s1 += d1 * d1
                s2 += d2 * d2
            f1 = np.isfinite(x1) and np.isfinite(y1)
            f2 = np.isfinite(x2) and np.isfinite(y2)
            c1 = _changed(f1, abs(d1), abs(x1), u[0, j] == u[1, j], tau)
            c2 = _changed(f2, abs(d2), abs(x2), u[2, j] == u[3, j], tau)
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
    """``([<d1, d2>, |d1|^2, |d2|^2], [|M1|, |M2|, |M1 & M2|])`` for d_i = b_i - a_i and the
    changed-at-tau masks M_i, in one pass (all four tensors of one dtype, CPU)."""
    ts = [t.reshape(-1) for t in (a1, b1, a2, b2)]
    if ts[0].dtype == torch.float16:
        ts = [t.float() for t in ts]
    acc, cnt = _overlap_kernel(*[_bits(t) for t in ts], float(tau), ts[0].dtype == torch.bfloat16)
    return acc.sum(axis=0).tolist(), cnt.sum(axis=0).tolist()


def pair_stats(a: torch.Tensor, b: torch.Tensor, thresholds: tuple[float, ...]) -> tuple[list[float], list[int]]:
    """``([sum a^2, sum b^2, sum a*b, sum (b-a)^2, max|b-a|], [n_equal, n_nonfinite, n_changed per tau])``."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.dtype == torch.float16:  # fp16 -> fp32 is exact and injective: equal bits stay equal bits
        a, b = a.float(), b.float()
    # a tuple, not an array: the kernel is compiled (and cached on disk) per sweep length, which lets
    # numba unroll the threshold loop (20% faster than an array of thresholds)
    acc, cnt = _kernel(_bits(a), _bits(b), tuple(float(t) for t in thresholds), a.dtype == torch.bfloat16)
    sums = [*acc[:, :4].sum(axis=0).tolist(), float(acc[:, 4].max()) if len(acc) else 0.0]
    return sums, cnt.sum(axis=0).tolist()
