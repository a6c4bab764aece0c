"""Fused single-pass CPU kernels for the update statistics of tensor pairs (numba, SIMD).

Why: element-wise torch on the CPU needs about ten passes over memory (dtype conversions,
difference, four float64 sums, ratio, bucketing, equality) and runs ~15x slower than reading the
checkpoint. These kernels read each element once from memory, on all cores, in loops the compiler
vectorizes (AVX2: 4 float64 lanes per instruction).

Per element, with x = float64(a) and y = float64(b) (exact for bf16/fp16/fp32 inputs): bitwise
equality of the stored bits; if both are finite, float64 sums of x^2, y^2, x*y, (y-x)^2 and max |y-x|,
else a count of non-finite elements; and "changed at tau" for every threshold, the rule of
:mod:`prism_analysis.metrics` encoded once here by :func:`_rule_operands` and :func:`_changed`
(both kernels use them): ``changed <=> lhs > tau * rhs`` with ``(lhs, rhs) = (|y - x|, |x|)`` for a
finite pair and ``(0 if the bits are equal else 1, 0)`` otherwise (valid for finite tau >= 0).

How it vectorizes. Work is split into blocks of :data:`BLOCK` elements (one ``numba.prange`` task
each), a block into sub-chunks of :data:`SUB` elements. Per sub-chunk:

1. one element-wise loop, no branches and no data-dependent indexing: the stored bits are widened
   in registers (bf16 -> float32 is a 16-bit shift of the uint16 bits; fp16 a hardware
   conversion; then float32 -> float64), finiteness comes from the exponent bits, bit equality
   from the integers; it adds the float64 sums, the integer counts (equal, non-finite) and the
   maximum (as the integer order of the float64 bits of |y - x| >= 0), and writes the rule's
   (lhs, rhs) to a float64 scratch that stays in L1;
2. for the audit, short loops over that scratch count ``lhs > tau * rhs`` with one counter per
   threshold, :data:`GROUP` thresholds per loop (no histogram, no data-dependent index). The
   overlap kernel has one threshold and counts in step 1.

Counts are exact integers and maxima exact, in any order: bit-identical to the torch path.

Summation order of the float64 sums (fixed for a given build; the same on 1 or N threads and on
any rank). Each product is rounded to float64 on its own (no fused multiply-add). Within a
sub-chunk, the running sum starts at 0 and its additions are marked reassociable (and nothing
else) by :func:`_sum_add`, which lets LLVM's loop vectorizer keep W interleaved partial sums:
element j of the sub-chunk goes to partial j mod W, the partials are combined by a fixed tree at the
end of the loop, and the last m mod W elements are added one by one. W (vector width x unroll) is
chosen when numba compiles the kernel for the host CPU (4 on this AVX2 machine), so the order is
fixed for that compiled kernel (numba's on-disk cache is per CPU) and may round differently, by
~1e-16 relative, on another CPU family. Sub-chunk sums are added to the block's sum in order;
block sums are added by :func:`math.fsum` (correctly rounded, so in no particular order). Blocks
are fixed 64K-element slices of the tensor whatever the thread count, and a block's result does
not depend on which thread ran it, so ``numba.set_num_threads`` and distributed ranks do not change
a bit. The torch path groups its additions differently (4096-element blocks): its sums agree to
~1e-15 relative (the tests require 1e-13 of the sum of absolute terms against math.fsum).

Used by :class:`prism_analysis.weights.update.UpdateStats` and :class:`prism_analysis.weights.overlap.OverlapStats`
(trajectories, update comparisons) for large CPU tensors of dtype bf16, fp16 and fp32
(``update.use_fused``); their torch paths handle GPU tensors, other dtypes and small tensors with
the same counts. This module (and numba) is imported only when a tensor needs it, so commands on
small models never pay numba's start-up. Throughput against a streaming-sum bandwidth floor:
``benchmarks/audit.py --methods kernel``; against the previous scalar kernels:
``benchmarks/trajectory.py``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from ..simd import bits_float as _from_order_bits
from ..simd import float_bits as _order_bits
from ..simd import sum_add as _sum_add

#: Elements per parallel task; each task's partial results are combined after all have run.
BLOCK = 1 << 16
#: Elements per sub-chunk of a block: the rule's float64 operands (2 x 8 KB) stay in the L1 cache.
SUB = 1 << 10
#: Thresholds counted per pass over a sub-chunk's operands (a sweep is padded to a multiple of it).
GROUP = 3


@intrinsic
def _widen(typingctx, u):  # pragma: no cover - compiled
    """``(value, finite)`` of one stored element: its float64 value and whether it is finite
    (exponent bits not all set). The element is given by its bits, the integer type telling the
    format: uint16 bf16 (the top half of the float32 with the same value: a 16-bit shift), int16
    fp16 (a hardware half -> float conversion), uint32 float32. Register operations only, so loops
    vectorize; every conversion is exact."""
    if u not in (types.uint16, types.int16, types.uint32):
        return None

    def codegen(context, builder, signature, args):
        bits = args[0]
        if signature.args[0] == types.int16:  # fp16
            exp = ir.Constant(ir.IntType(16), 0x7C00)
            value = builder.fpext(builder.bitcast(bits, ir.HalfType()), ir.DoubleType())
        else:
            i32 = ir.IntType(32)
            if signature.args[0] == types.uint16:  # bf16
                bits = builder.shl(builder.zext(bits, i32), ir.Constant(i32, 16))
            exp = ir.Constant(i32, 0x7F800000)
            value = builder.fpext(builder.bitcast(bits, ir.FloatType()), ir.DoubleType())
        finite = builder.icmp_unsigned("!=", builder.and_(bits, exp), exp)
        return context.make_tuple(builder, signature.return_type, (value, finite))

    return types.Tuple((types.float64, types.boolean))(u), codegen


@njit(inline="always", cache=True)
def _rule_operands(finite, abs_diff, abs_x, eq):  # pragma: no cover - compiled
    """``(lhs, rhs)`` with "changed at tau" <=> ``lhs > tau * rhs`` (:func:`_changed`) for every
    finite tau >= 0: the rule of metrics.py. ``abs_diff``, ``abs_x``: |y - x| and |x| in float64
    after x and y are replaced by 0 where the pair is not finite; ``eq``: bitwise equality.
    A finite pair: ``(|y - x|, |x|)``; a pair with a NaN or Inf is changed iff its bits differ:
    ``(1, 0)`` (1 > 0) or ``(0, 0)`` (0 > 0 is false)."""
    return (abs_diff if finite else (0.0 if eq else 1.0)), abs_x


@njit(inline="always", cache=True)
def _changed(lhs, rhs, tau):  # pragma: no cover - compiled
    """Changed at ``tau``, from :func:`_rule_operands` (a strict, exact float64 comparison)."""
    return lhs > tau * rhs


@njit(cache=True, nogil=True)
def _pair_block(a, b, taus, acc, cnt, ops, ku, chunks):  # pragma: no cover - compiled
    """One block of :func:`_kernel` (``a``, ``b``: its stored bits): sums into ``acc`` (5), counts
    into ``cnt`` (2 + len(taus)); ``ops``: scratch for the rule's operands (2 x SUB float64).
    ``chunks`` (one row per sub-chunk, or none): each sub-chunk's ``[sum (b-a)^2, sum a^2, n_equal,
    n_nonfinite, n_changed at taus[ku]]``, the partials the sums above are made of."""
    n = a.size
    s_a2 = 0.0
    s_b2 = 0.0
    s_ab = 0.0
    s_d2 = 0.0
    mx = 0  # max |y - x| as ordered bits
    n_eq = 0
    n_nf = 0
    for start in range(0, n, SUB):
        m = min(SUB, n - start)
        sa = a[start : start + m]
        sb = b[start : start + m]
        eq0 = n_eq
        nf0 = n_nf
        c_a2 = 0.0
        c_b2 = 0.0
        c_ab = 0.0
        c_d2 = 0.0
        for j in range(m):  # element-wise: vectorized; integer sums and reassociable float sums
            x, fx = _widen(sa[j])
            y, fy = _widen(sb[j])
            eq = sa[j] == sb[j]
            finite = fx & fy
            x = x if finite else 0.0
            y = y if finite else 0.0
            d = y - x
            ad = abs(d)
            c_a2 = _sum_add(c_a2, x * x)
            c_b2 = _sum_add(c_b2, y * y)
            c_ab = _sum_add(c_ab, x * y)
            c_d2 = _sum_add(c_d2, d * d)
            mx = max(mx, _order_bits(ad))
            lhs, rhs = _rule_operands(finite, ad, abs(x), eq)
            ops[j] = lhs
            ops[SUB + j] = rhs
            n_eq += eq
            n_nf += not finite
        s_a2 += c_a2
        s_b2 += c_b2
        s_ab += c_ab
        s_d2 += c_d2
        for k in range(0, len(taus), GROUP):  # one counter per threshold, GROUP thresholds a pass
            t0 = taus[k]
            t1 = taus[k + 1]
            t2 = taus[k + 2]
            c0 = 0
            c1 = 0
            c2 = 0
            for j in range(m):
                lhs = ops[j]
                rhs = ops[SUB + j]
                c0 += _changed(lhs, rhs, t0)
                c1 += _changed(lhs, rhs, t1)
                c2 += _changed(lhs, rhs, t2)
            cnt[2 + k] += c0
            cnt[3 + k] += c1
            cnt[4 + k] += c2
            if chunks.shape[0] and k <= ku < k + GROUP:
                chunks[start // SUB, 4] = c0 if ku == k else (c1 if ku == k + 1 else c2)
        if chunks.shape[0]:
            chunks[start // SUB, 0] = c_d2
            chunks[start // SUB, 1] = c_a2
            chunks[start // SUB, 2] = n_eq - eq0
            chunks[start // SUB, 3] = n_nf - nf0
    acc[0] = s_a2
    acc[1] = s_b2
    acc[2] = s_ab
    acc[3] = s_d2
    acc[4] = _from_order_bits(mx)
    cnt[0] = n_eq
    cnt[1] = n_nf


@njit(parallel=True, cache=True, nogil=True)
def _kernel(a, b, taus, ku):  # pragma: no cover - compiled
    """Per block: ``acc[blk] = [sum a^2, sum b^2, sum a*b, sum (b-a)^2, max|b-a|]`` over finite
    pairs, ``cnt[blk] = [n_equal, n_nonfinite, n_changed per threshold]`` (``taus``: the sweep
    padded to a multiple of GROUP; the padding's counts are dropped). ``a``, ``b``: uint16 bf16
    bits or uint32 float32 bits. With ``ku >= 0``, also every sub-chunk's partials
    (:func:`_pair_block`; ``ku``: the threshold they count), else an empty array."""
    n = a.size
    nblocks = (n + BLOCK - 1) // BLOCK
    acc = np.zeros((nblocks, 5))
    cnt = np.zeros((nblocks, len(taus) + 2), dtype=np.int64)
    chunks = np.zeros(((n + SUB - 1) // SUB if ku >= 0 else 0, 5))
    per_block = BLOCK // SUB
    for blk in prange(nblocks):
        lo = blk * BLOCK
        hi = min(n, lo + BLOCK)
        mine = chunks[blk * per_block : (blk + 1) * per_block]
        _pair_block(a[lo:hi], b[lo:hi], taus, acc[blk], cnt[blk], np.empty(2 * SUB), ku, mine)
    return acc, cnt, chunks


@njit(cache=True, nogil=True)
def _overlap_block(a1, b1, a2, b2, tau, acc, cnt):  # pragma: no cover - compiled
    """One block of :func:`_overlap_kernel`: sums into ``acc`` (3), counts into ``cnt`` (3)."""
    n = a1.size
    s_dot = 0.0
    s_1 = 0.0
    s_2 = 0.0
    n1 = 0
    n2 = 0
    n12 = 0
    for start in range(0, n, SUB):
        m = min(SUB, n - start)
        p1 = a1[start : start + m]
        q1 = b1[start : start + m]
        p2 = a2[start : start + m]
        q2 = b2[start : start + m]
        c_dot = 0.0
        c_1 = 0.0
        c_2 = 0.0
        for j in range(m):  # element-wise: vectorized; integer sums and reassociable float sums
            x1, fx1 = _widen(p1[j])
            y1, fy1 = _widen(q1[j])
            x2, fx2 = _widen(p2[j])
            y2, fy2 = _widen(q2[j])
            f1 = fx1 & fy1
            f2 = fx2 & fy2
            x1 = x1 if f1 else 0.0  # 0 where the pair is not finite: d1 is then 0 too
            y1 = y1 if f1 else 0.0
            x2 = x2 if f2 else 0.0
            y2 = y2 if f2 else 0.0
            d1 = y1 - x1
            d2 = y2 - x2
            # the sums take elements where both d1 and d2 are finite (a float32 difference never
            # overflows in float64): d1 * d2 is already 0 elsewhere
            e1 = d1 if f2 else 0.0
            e2 = d2 if f1 else 0.0
            c_dot = _sum_add(c_dot, d1 * d2)
            c_1 = _sum_add(c_1, e1 * e1)
            c_2 = _sum_add(c_2, e2 * e2)
            l1, r1 = _rule_operands(f1, abs(d1), abs(x1), p1[j] == q1[j])
            l2, r2 = _rule_operands(f2, abs(d2), abs(x2), p2[j] == q2[j])
            m1 = _changed(l1, r1, tau)
            m2 = _changed(l2, r2, tau)
            n1 += m1
            n2 += m2
            n12 += m1 & m2
        s_dot += c_dot
        s_1 += c_1
        s_2 += c_2
    acc[0] = s_dot
    acc[1] = s_1
    acc[2] = s_2
    cnt[0] = n1
    cnt[1] = n2
    cnt[2] = n12


@njit(parallel=True, cache=True, nogil=True)
def _overlap_kernel(a1, b1, a2, b2, tau):  # pragma: no cover - compiled
    """Per block: ``acc[blk] = [<d1, d2>, |d1|^2, |d2|^2]`` over elements where d1 and d2 are
    finite, ``cnt[blk] = [|M1|, |M2|, |M1 & M2|]`` for the changed-at-tau masks. Inputs: uint16
    bf16 bits or uint32 float32 bits, all four of one dtype."""
    n = a1.size
    nblocks = (n + BLOCK - 1) // BLOCK
    acc = np.zeros((nblocks, 3))
    cnt = np.zeros((nblocks, 3), dtype=np.int64)
    for blk in prange(nblocks):
        lo = blk * BLOCK
        hi = min(n, lo + BLOCK)
        _overlap_block(a1[lo:hi], b1[lo:hi], a2[lo:hi], b2[lo:hi], tau, acc[blk], cnt[blk])
    return acc, cnt


def _bits(t: torch.Tensor):
    """The stored bits as a numpy array whose integer type tells the kernels the format (see
    :func:`_widen`): bf16 uint16, fp16 int16, float32 uint32. No copy."""
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.float16:
        return t.view(torch.int16).numpy()
    return t.view(torch.int32).numpy().view(np.uint32)


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not math.isfinite(tau) or tau < 0:  # the kernels' encoding of the rule needs 0 <= tau < inf
        raise ValueError(f"threshold must be a finite, non-negative fraction, got {tau}")
    return tau


def _fsum_columns(acc: np.ndarray) -> list[float]:
    """Column sums of the per-block partials, correctly rounded (so in no particular order)."""
    return [math.fsum(acc[:, i].tolist()) for i in range(acc.shape[1])]


def overlap_stats(a1, b1, a2, b2, tau: float) -> tuple[list[float], list[int]]:
    """``([<d1, d2>, |d1|^2, |d2|^2], [|M1|, |M2|, |M1 & M2|])`` for d_i = b_i - a_i and the
    changed-at-tau masks M_i, in one pass (all four tensors of one dtype, CPU)."""
    ts = [t.reshape(-1) for t in (a1, b1, a2, b2)]
    acc, cnt = _overlap_kernel(*[_bits(t) for t in ts], _check_tau(tau))
    return _fsum_columns(acc), cnt.sum(axis=0).tolist()


def pair_stats(a: torch.Tensor, b: torch.Tensor, thresholds: tuple[float, ...]) -> tuple[list[float], list[int]]:
    """``([sum a^2, sum b^2, sum a*b, sum (b-a)^2, max|b-a|], [n_equal, n_nonfinite, n_changed per tau])``."""
    sums, counts, _ = _pair(a, b, thresholds, -1)
    return sums, counts


def _pair(a, b, thresholds, ku: int):
    """:func:`pair_stats`, and with ``ku >= 0`` the sub-chunk partials at ``thresholds[ku]``."""
    a, b = a.reshape(-1), b.reshape(-1)
    taus = [_check_tau(t) for t in thresholds]
    k = len(taus)
    taus += [math.inf] * (-k % GROUP)  # padding: its counts are dropped
    # a tuple, not an array: the kernel is compiled (and cached on disk) per padded sweep length
    acc, cnt, chunks = _kernel(_bits(a), _bits(b), tuple(taus), ku)
    sums = [*_fsum_columns(acc[:, :4]), float(acc[:, 4].max()) if len(acc) else 0.0]
    return sums, cnt[:, : 2 + k].sum(axis=0).tolist(), chunks


def rows_fit(shape) -> bool:
    """Whether :func:`pair_and_row_stats` gives the row statistics of a tensor of this shape: 2-D,
    rows a whole number of sub-chunks (every sub-chunk then lies in one row)."""
    return len(shape) == 2 and shape[1] > 0 and shape[1] % SUB == 0


def pair_and_row_stats(a: torch.Tensor, b: torch.Tensor, thresholds: tuple[float, ...], ku: int):
    """:func:`pair_stats` of 2-D ``a``, ``b`` (:func:`rows_fit`), and from the same pass the
    statistics of every row at ``thresholds[ku]``, as :func:`unit_row_stats` with ``axis=0`` gives
    them (a float64 tensor, rows x ``[sum_sq_diff, sum_sq_a, n_equal, n_nonfinite, n_changed]``):
    the row's sub-chunk partials added in order, so its sums differ from :func:`unit_row_stats`'
    by rounding only (~1e-16 relative) and its counts not at all. The tensor's own sums are the
    bits :func:`pair_stats` gives: the partials are recorded, not reordered."""
    sums, counts, chunks = _pair(a, b, thresholds, ku)
    rows, cols = a.shape
    per_row = chunks.reshape(rows, cols // SUB, 5)
    out = per_row[:, 0, :].copy()
    for j in range(1, per_row.shape[1]):  # in order, left to right
        out += per_row[:, j, :]
    return sums, counts, torch.from_numpy(out)


@njit(inline="always", cache=True)
def _unit_element(u, v, tau):  # pragma: no cover - compiled
    """One element pair of the unit kernels, from its stored bits: ``(d^2, x^2, equal, not finite,
    changed at tau)``, with x, y zeroed where the pair is not finite (as :func:`_pair_block`)."""
    x, fx = _widen(u)
    y, fy = _widen(v)
    eq = u == v
    finite = fx & fy
    x = x if finite else 0.0
    y = y if finite else 0.0
    d = y - x
    lhs, rhs = _rule_operands(finite, abs(d), abs(x), eq)
    return d * d, x * x, eq, not finite, _changed(lhs, rhs, tau)


@njit(parallel=True, cache=True, nogil=True)
def _rows_kernel(a, b, tau):  # pragma: no cover - compiled
    """Per row r of 2-D stored bits ``a``, ``b`` (rows x cols): ``acc[r] = [sum (b-a)^2, sum a^2]``
    over finite pairs, ``cnt[r] = [n_equal, n_nonfinite, n_changed at tau]``. One task per row; a
    row's sums run left to right in reassociable partial sums (fixed for the compiled kernel, as
    :func:`_pair_block`'s), so the thread count changes no bit."""
    rows, cols = a.shape
    acc = np.zeros((rows, 2))
    cnt = np.zeros((rows, 3), dtype=np.int64)
    for r in prange(rows):
        s_d2 = 0.0
        s_a2 = 0.0
        n_eq = 0
        n_nf = 0
        n_ch = 0
        for j in range(cols):
            d2, x2, eq, nf, ch = _unit_element(a[r, j], b[r, j], tau)
            s_d2 = _sum_add(s_d2, d2)
            s_a2 = _sum_add(s_a2, x2)
            n_ch += ch
            n_eq += eq
            n_nf += nf
        acc[r, 0] = s_d2
        acc[r, 1] = s_a2
        cnt[r, 0] = n_eq
        cnt[r, 1] = n_nf
        cnt[r, 2] = n_ch
    return acc, cnt


#: Columns per task of :func:`_cols_kernel`: at most this many (wide strips of a row keep the
#: hardware prefetcher streaming; the accumulators, 5 x 1024, stay in L1/L2), at least MIN_COLS,
#: and as many tasks as threads where the matrix is wide enough.
COLS = 1024
MIN_COLS = 256


def _cols_width(cols: int) -> int:
    """Columns per task of :func:`_cols_kernel` for a matrix of ``cols`` columns (any width gives the
    same bits: every column's sum runs top to bottom whatever the blocks)."""
    import numba

    return max(MIN_COLS, min(COLS, -(-cols // max(numba.get_num_threads(), 1))))


@njit(parallel=True, cache=True, nogil=True)
def _cols_kernel(a, b, tau, width):  # pragma: no cover - compiled
    """:func:`_rows_kernel` per column instead of per row, on the same (rows x cols) layout: one task
    per block of ``width`` columns (:func:`_cols_width`), which walks the rows top to bottom adding each row's
    elements to the block's per-column accumulators (vectorized across columns; each column's sum
    runs top to bottom, so the thread count changes no bit). Four rows are added per pass over the
    accumulators (loaded and stored once for four rows, in the same top-to-bottom order)."""
    rows, cols = a.shape
    acc = np.zeros((cols, 2))
    cnt = np.zeros((cols, 3), dtype=np.int64)
    nblocks = (cols + width - 1) // width
    for blk in prange(nblocks):
        lo = blk * width
        w = min(width, cols - lo)
        s_d2 = np.zeros(w)
        s_a2 = np.zeros(w)
        n_eq = np.zeros(w, dtype=np.int64)
        n_nf = np.zeros(w, dtype=np.int64)
        n_ch = np.zeros(w, dtype=np.int64)
        top = rows - rows % 4
        for r in range(0, top, 4):  # four rows per pass: the accumulators are loaded and stored once
            a0, a1, a2, a3 = a[r, lo : lo + w], a[r + 1, lo : lo + w], a[r + 2, lo : lo + w], a[r + 3, lo : lo + w]
            b0, b1, b2, b3 = b[r, lo : lo + w], b[r + 1, lo : lo + w], b[r + 2, lo : lo + w], b[r + 3, lo : lo + w]
            for j in range(w):
                d0, x0, e0, f0, c0 = _unit_element(a0[j], b0[j], tau)
                d1, x1, e1, f1, c1 = _unit_element(a1[j], b1[j], tau)
                d2, x2, e2, f2, c2 = _unit_element(a2[j], b2[j], tau)
                d3, x3, e3, f3, c3 = _unit_element(a3[j], b3[j], tau)
                s_d2[j] = s_d2[j] + d0 + d1 + d2 + d3  # left to right: still top to bottom
                s_a2[j] = s_a2[j] + x0 + x1 + x2 + x3
                n_ch[j] += c0 + c1 + c2 + c3
                n_eq[j] += e0 + e1 + e2 + e3
                n_nf[j] += f0 + f1 + f2 + f3
        for r in range(top, rows):
            ra = a[r, lo : lo + w]
            rb = b[r, lo : lo + w]
            for j in range(w):
                d2, x2, eq, nf, ch = _unit_element(ra[j], rb[j], tau)
                s_d2[j] += d2
                s_a2[j] += x2
                n_ch[j] += ch
                n_eq[j] += eq
                n_nf[j] += nf
        for j in range(w):
            acc[lo + j, 0] = s_d2[j]
            acc[lo + j, 1] = s_a2[j]
            cnt[lo + j, 0] = n_eq[j]
            cnt[lo + j, 1] = n_nf[j]
            cnt[lo + j, 2] = n_ch[j]
    return acc, cnt


def unit_row_stats(a: torch.Tensor, b: torch.Tensor, axis: int, tau: float) -> torch.Tensor:
    """Per index along ``axis`` of 2-D CPU tensors ``a``, ``b`` (one dtype of bf16/fp16/fp32,
    C-contiguous): ``[sum_sq_diff, sum_sq_a, n_equal, n_nonfinite, n_changed at tau]`` as a float64
    tensor (counts exact below 2^53), in one pass -- the columns of
    :func:`prism_analysis.weights.units._row_stats` for one threshold."""
    if axis == 0:
        acc, cnt = _rows_kernel(_bits(a), _bits(b), _check_tau(tau))
    else:
        acc, cnt = _cols_kernel(_bits(a), _bits(b), _check_tau(tau), _cols_width(a.shape[1]))
    return torch.cat([torch.from_numpy(acc), torch.from_numpy(cnt).double()], dim=1)
