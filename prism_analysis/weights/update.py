"""Update statistics of tensor pairs: size (normalized L2) and sparsity, PRISM metrics 1-2.

For the earlier tensor A and the later tensor B: normalized L2 (Eq. 1), the fraction changed at
every threshold of a sweep, the bitwise-equal fraction, max |B - A| and the count of non-finite
elements -- with the definitions of :mod:`prism_analysis.metrics`.

All thresholds of a sweep come from one pass per tensor. Large CPU tensors go through a fused
numba kernel (:mod:`prism_analysis.weights.fused`) that reads each element pair once; GPU tensors,
other dtypes and small tensors take the torch path, which gives the same counts and float64 sums.

:class:`UpdateStats` follows the update / compute / merge pattern of torchmetrics
(:mod:`prism_analysis.accumulator`): accumulate tensor pairs with :meth:`~UpdateStats.update`,
combine partial results (other tensors, other processes) with ``merge``, read the metrics with
:meth:`~UpdateStats.compute`::

    >>> import torch
    >>> from prism_analysis.weights.update import UpdateStats
    >>> a = torch.tensor([1.0, 2.0, 0.0, 4.0])
    >>> s = UpdateStats(thresholds=(0.01,)).update(a, torch.tensor([1.0, 2.5, 0.0, 4.0]))
    >>> round(s.compute()["normalized_l2"], 6), s.compute()["fraction_changed"]
    (0.109109, {'0.01': 0.25})
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..accumulator import Accumulator, state
from ..metrics import (
    DEFAULT_THRESHOLDS,
    bits_equal,
    changed_column,
    check_thresholds,
    normalized_l2,
    threshold_key,
)

#: Use the fused numba kernels for large CPU tensors (bf16/fp16/fp32). The torch path gives the same result.
USE_FUSED = True


#: Smaller tensors take the torch path: as fast there, and small models never import numba.
FUSED_MIN_NUMEL = 1 << 20

#: In a checkpoint that has a tensor of FUSED_MIN_NUMEL elements or more (so numba is imported
#: anyway), tensors from this size on take the fused kernel too: on the torch path a LLaMA's 256 K
#: element k/v projections cost ~20x more per element than on the kernel.
FUSED_SMALL_NUMEL = 1 << 16


def fused_min_numel_for(largest: int) -> int | None:
    """The smallest CPU tensor for the fused kernel in a checkpoint whose largest tensor has
    ``largest`` elements: :data:`FUSED_SMALL_NUMEL` once that is at least :data:`FUSED_MIN_NUMEL`
    (numba is imported anyway), else None (the default, :data:`FUSED_MIN_NUMEL`: small models
    never import numba). A function of the checkpoint alone, so an audit of the same pair gives
    the same bits every time."""
    return min(FUSED_MIN_NUMEL, FUSED_SMALL_NUMEL) if largest >= FUSED_MIN_NUMEL else None


FUSED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


#: Elements per chunk of element-wise work on the torch path: bounds temporaries for any tensor.
CHUNK = 1 << 22


#: Elements per partial sum of :func:`ordered_dot`.
SUM_BLOCK = 1 << 12


def as_float(t: torch.Tensor) -> torch.Tensor:
    """A float tensor holding exactly the values of ``t``: floats as they are, 8-bit floats as
    float32, integers and booleans as float64 (exact below 2^53)."""
    if t.is_floating_point():
        return t.float() if t.element_size() == 1 else t
    if t.is_complex():
        raise ValueError(f"complex tensors ({t.dtype}) have no update statistics")
    return t.double()


def promote(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` as floats (:func:`as_float`) in the wider of their two dtypes
    (``torch.promote_types``); exact, never a cast down.

    When the stored dtypes differ (float8 against float32 too, though both become float32), every NaN
    becomes the one canonical NaN, so NaN -> NaN is unchanged whatever the payloads: a cast keeps no
    payload the same on every device (CUDA's float16 -> float64 cast gives other NaN bits than the
    CPU's), and the counts must not depend on where they were computed.
    """
    mixed = a.dtype != b.dtype
    a, b = as_float(a), as_float(b)
    if not mixed:
        return a, b
    wide = torch.promote_types(a.dtype, b.dtype)
    return canonical_nan(a.to(wide)), canonical_nan(b.to(wide))


def canonical_nan(t: torch.Tensor) -> torch.Tensor:
    """``t`` with every NaN replaced by the quiet NaN ``float("nan")``; ``t`` itself where it holds no
    NaN (found by one sum, which a NaN turns into NaN: no mask unless the sum is not finite), else a copy."""
    if t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return t
    nan = t.isnan()
    return t.masked_fill(nan, math.nan) if bool(nan.any()) else t


@dataclass
class UpdateStats(Accumulator):
    """Streaming accumulator of the update statistics of any group of tensor pairs.

    States (merged exactly: sums add, the maximum takes the max): element count, float64 sums of
    A^2, B^2, A*B and (B-A)^2 over finite elements, bitwise-equal count, count of elements whose A
    and B dtypes match (bitwise equality is defined for those only), non-finite count, changed count
    per threshold, max |B - A|.

    A pair of different dtypes (a bf16 checkpoint against an fp32 one) is compared in the wider
    dtype (``torch.promote_types``), never cast down, and leaves ``fraction_equal`` to the tensors
    whose dtypes match. Normalized L2 is NaN when no element is finite (nothing to measure).

    ``unit_tau`` (one of ``thresholds``; the audit's ``units``): when a 2-D pair goes through the
    fused kernel with rows of whole sub-chunks (:func:`prism_analysis.weights.fused.rows_fit`), the
    same pass also gives every row's statistics at that threshold, left in ``unit_rows`` (a float64
    tensor; None otherwise) for the heads and neurons of :mod:`prism_analysis.weights.units`. Not
    a state: it belongs to the last pair updated, and merging ignores it.
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    #: smallest CPU tensor for the fused kernel (None: :data:`FUSED_MIN_NUMEL`; live tracking lowers it)
    fused_min_numel: int | None = None
    unit_tau: float | None = None
    numel: int = state(0)
    sum_sq_a: float = state(0.0)
    sum_sq_b: float = state(0.0)
    sum_ab: float = state(0.0)
    sum_sq_diff: float = state(0.0)
    n_equal: int = state(0)
    n_same_dtype: int = state(0)
    n_nonfinite: int = state(0)
    max_abs_diff: float = state(0.0, reduce="max")
    n_changed: list[int] = state([])

    def __post_init__(self):
        self.thresholds = check_thresholds(self.thresholds)
        if not self.n_changed:
            self.n_changed = [0] * len(self.thresholds)
        self.unit_rows = None

    def update(self, a: torch.Tensor, b: torch.Tensor) -> UpdateStats:
        """Add one tensor pair (same shape; any device). Different dtypes are compared in the wider one."""
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
        same_dtype = a.dtype == b.dtype
        a, b = promote(a, b)
        self.unit_rows = None
        if use_fused(a, b, min_numel=self.fused_min_numel):
            from . import fused

            if self.unit_tau in self.thresholds and fused.rows_fit(a.shape):
                ku = self.thresholds.index(self.unit_tau)
                sums, counts, self.unit_rows = fused.pair_and_row_stats(a, b, self.thresholds, ku)
            else:
                sums, counts = fused.pair_stats(a, b, self.thresholds)
        else:
            sums, counts = _torch_pair_stats(a.reshape(-1), b.reshape(-1), self.thresholds)
        return self.add(
            {
                "numel": a.numel(),
                "sum_sq_a": sums[0],
                "sum_sq_b": sums[1],
                "sum_ab": sums[2],
                "sum_sq_diff": sums[3],
                "max_abs_diff": sums[4],
                "n_equal": counts[0] if same_dtype else 0,
                "n_same_dtype": a.numel() if same_dtype else 0,
                "n_nonfinite": counts[1],
                "n_changed": counts[2:],
            }
        )

    def compute(self) -> dict:
        """The metrics: ``numel``, ``normalized_l2``, ``fraction_equal``, ``fraction_changed``
        (threshold key -> fraction), ``max_abs_diff``, ``nonfinite``, and the raw sums."""
        n = max(self.numel, 1)
        any_finite = self.numel > self.n_nonfinite
        return {
            "numel": self.numel,
            "normalized_l2": normalized_l2(self.sum_sq_diff, self.sum_sq_a) if any_finite else math.nan,
            "fraction_equal": self.n_equal / self.n_same_dtype if self.n_same_dtype else math.nan,
            "fraction_changed": {threshold_key(t): c / n for t, c in zip(self.thresholds, self.n_changed)},
            "max_abs_diff": self.max_abs_diff,
            "nonfinite": self.n_nonfinite,
            "sum_sq_a": self.sum_sq_a,
            "sum_sq_b": self.sum_sq_b,
            "sum_ab": self.sum_ab,
            "sum_sq_diff": self.sum_sq_diff,
        }

    def row(self) -> dict:
        """Flat dict for a table row: ``fraction_changed_<key>`` and ``n_changed_<key>`` columns."""
        m = self.compute()
        row = {k: v for k, v in m.items() if k != "fraction_changed"}
        row["n_equal"] = self.n_equal
        row["n_same_dtype"] = self.n_same_dtype
        for t, c in zip(self.thresholds, self.n_changed):
            row[changed_column(t)] = c / max(self.numel, 1)
            row[f"n_changed_{threshold_key(t)}"] = c
        return row


def use_fused(*tensors: torch.Tensor, min_numel: int | None = None) -> bool:
    """Whether the fused CPU kernels take these tensors: all on the CPU, of one float dtype they
    handle, and at least ``min_numel`` elements (default :data:`FUSED_MIN_NUMEL`; numba is imported
    only then)."""
    t0 = tensors[0]
    return (
        USE_FUSED
        and t0.numel() >= (FUSED_MIN_NUMEL if min_numel is None else min_numel)
        and t0.dtype in FUSED_DTYPES
        and all(t.device.type == "cpu" and t.dtype == t0.dtype for t in tensors)
    )


def ordered_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_i x_i y_i (a 0-d tensor) whose rounding does not depend on the number of threads.

    ``torch.dot`` on the CPU splits the sum among threads, so its last bits change with
    ``OMP_NUM_THREADS``; a distributed run (fewer threads per process) would then differ from a
    single process. Here the products are summed in blocks of :data:`SUM_BLOCK` (one thread per
    block, zeros padding the last) and the block sums are added in order: the same bits whatever
    the threading.
    """
    pad = (-x.numel()) % SUM_BLOCK
    prod = torch.nn.functional.pad(x * y, (0, pad))
    return prod.view(-1, SUM_BLOCK).sum(1).sum()


def _torch_pair_stats(a: torch.Tensor, b: torch.Tensor, thresholds) -> tuple[list[float], list[int]]:
    """Torch path (GPU, other dtypes, small tensors): the results of ``fused.pair_stats``.

    Works on float64 copies of each chunk, so every comparison is the exact float64 one of
    :func:`prism_analysis.metrics.changed_mask` (the tests check the two agree).
    """
    acc = torch.zeros(5, dtype=torch.float64, device=a.device)  # a2, b2, ab, d2, max|d|
    counts = torch.zeros(len(thresholds) + 2, dtype=torch.int64, device=a.device)
    for start in range(0, a.numel(), CHUNK):
        x, y = a[start : start + CHUNK], b[start : start + CHUNK]
        equal = bits_equal(x, y)
        x64, y64 = x.double(), y.double()
        finite = torch.isfinite(x64) & torch.isfinite(y64)
        counts[0] += equal.sum()
        counts[1] += (~finite).sum()
        fx, fy = torch.where(finite, x64, 0), torch.where(finite, y64, 0)
        d = fy - fx
        abs_d, abs_x = d.abs(), fx.abs()
        acc[0] += ordered_dot(fx, fx)
        acc[1] += ordered_dot(fy, fy)
        acc[2] += ordered_dot(fx, fy)
        acc[3] += ordered_dot(d, d)
        if d.numel():
            acc[4] = torch.maximum(acc[4], abs_d.max())
        # changed_mask(x64, y64, t, equal) for every t, with the threshold-free parts computed once:
        # a finite pair is changed iff |y - x| > t |x|; a non-finite one iff its bits differ
        nonfinite_changed = (~finite & ~equal).sum()
        for k, t in enumerate(thresholds):
            counts[2 + k] += (abs_d > t * abs_x).sum() + nonfinite_changed
    return acc.tolist(), counts.tolist()  # one device sync per tensor
