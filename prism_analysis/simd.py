"""Numba building blocks for loops the compiler vectorizes (SIMD), shared by the fused kernels of
:mod:`prism_analysis.weights.fused` and :mod:`prism_analysis.representations.divergence_kernel`.

- :func:`sum_add`: ``s + v`` marked reassociable (and nothing else), so a running float64 sum
  becomes interleaved partial sums (a fixed order for the compiled kernel; see
  :mod:`prism_analysis.weights.fused`).
- :func:`float_bits` / :func:`bits_float`: a float64's bits as int64 and back (register moves).
- :func:`exp_nonpositive`: ``exp(t)`` for ``t <= 0`` in float64 from multiplications, additions and
  integer bit operations only, so a loop over it vectorizes (the C library's ``exp`` is a call per
  element). Cody-Waite range reduction ``t = k ln2 + f``, ``|f| <= ln2 / 2``, with ``k`` rounded by
  the 1.5 * 2^52 trick; ``e^f`` by its Taylor polynomial of degree 13 (truncation error below
  5e-18 relative) in Horner form; ``2^k`` written into the exponent bits. Within a few ulp of
  ``math.exp`` (tested). Arguments below -708 give ``exp(-708)`` ~ 3e-308 instead of a smaller
  number: in a sum whose largest term is 1 (a softmax shifted by its maximum) that changes nothing.
  NaN in, NaN out.

Imported only by numba code, so importing it costs what importing numba costs. Numba's on-disk
cache of a kernel is keyed by its own file only: after editing this module, clear the
``__pycache__`` caches of the kernels that use it (or touch their files), or they keep the old code.
"""

from __future__ import annotations

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def sum_add(typingctx, s, v):  # pragma: no cover - compiled
    """``s + v`` marked reassociable (and nothing else: no FMA, no NaN/Inf assumptions), so that
    the compiler vectorizes a running sum into interleaved partial sums."""
    if s != types.float64 or v != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1], flags=("reassoc",))

    return types.float64(types.float64, types.float64), codegen


@intrinsic
def float_bits(typingctx, v):  # pragma: no cover - compiled
    """The bits of a float64 as int64: for v >= 0 they order as the values, so max is an integer max."""
    if v != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def bits_float(typingctx, i):  # pragma: no cover - compiled
    """Inverse of :func:`float_bits`."""
    if i != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


_LOG2E = 1.4426950408889634
#: ln 2 split in two (Cody-Waite): _LN2_HI has trailing zero bits, so k * _LN2_HI is exact for |k| < 2^11
_LN2_HI = 0.693145751953125
_LN2_LO = 1.4286068203094173e-06
#: 1.5 * 2^52: adding it rounds a float64 of magnitude < 2^51 to an integer held in the low bits
_ROUND = 6755399441055744.0
#: 1 / n! for n = 13 .. 2 (Horner's coefficients; the last two, 1 / 1! and 1 / 0!, are 1)
_C13, _C12, _C11, _C10 = 1 / 6227020800, 1 / 479001600, 1 / 39916800, 1 / 3628800
_C9, _C8, _C7, _C6 = 1 / 362880, 1 / 40320, 1 / 5040, 1 / 720
_C5, _C4, _C3, _C2 = 1 / 120, 1 / 24, 1 / 6, 1 / 2


@njit(inline="always", cache=True)
def exp_nonpositive(t):  # pragma: no cover - compiled
    """``exp(t)`` for float64 ``t <= 0`` (see the module docstring)."""
    t = t if t > -708.0 else (t if t != t else -708.0)  # NaN stays NaN
    kd = t * _LOG2E + _ROUND
    k = kd - _ROUND  # round(t / ln 2), exact
    f = (t - k * _LN2_HI) - k * _LN2_LO
    p = _C13
    p = p * f + _C12
    p = p * f + _C11
    p = p * f + _C10
    p = p * f + _C9
    p = p * f + _C8
    p = p * f + _C7
    p = p * f + _C6
    p = p * f + _C5
    p = p * f + _C4
    p = p * f + _C3
    p = p * f + _C2
    p = p * f + 1.0
    p = p * f + 1.0
    # 2^k: the low bits of kd's pattern hold k (mod 2^51); k + 1023 in [1, 1023] is the exponent
    return p * bits_float((float_bits(kd) + 1023) << 52)
