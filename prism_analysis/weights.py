"""Update statistics of a checkpoint pair: size (normalized L2) and sparsity, PRISM metrics 1-3.

For the earlier checkpoint A and the later checkpoint B, matched tensor by tensor:

- normalized L2 (paper Eq. 1):  ``||W_B - W_A||_F / ||W_A||_F``. For a layer, a component or the
  whole model the same formula is applied to the concatenation of the group's tensors,
  ``sqrt(sum (B - A)^2) / sqrt(sum A^2)`` -- never a mean of per-tensor ratios.
- fraction changed at threshold tau: the share of elements with ``|w_B - w_A| > tau * |w_A|``.
  Update sparsity = 1 - fraction changed. Rule for ``w_A == 0``: the element counts as changed
  iff ``w_B != 0`` (so +0 -> -0 is unchanged). Elements where A or B is NaN/Inf are counted in
  ``nonfinite``; they are left out of the L2 sums and count as changed unless bitwise equal.
- fraction equal: the share of elements bitwise equal in the stored dtype (what the earlier RL
  sparsity literature measures). On bf16 every tau below 2^-8 (0.39 %) is bitwise equality.

All thresholds of a sweep come from one pass per tensor. On the CPU a fused numba kernel
(:mod:`prism_analysis.fused`) reads each element pair once and compares it against every
threshold in registers. On a GPU (and for other dtypes) the torch path buckets the relative change
``|d| / |a|`` against the sorted thresholds (``torch.bucketize``), and the bucket counts give
every "changed" count at once. Sums are accumulated in float64 on both paths.

:class:`UpdateStats` follows the update / compute / merge pattern of torchmetrics: accumulate
tensor pairs with :meth:`~UpdateStats.update`, combine partial results (other tensors, other
processes) with :meth:`~UpdateStats.merge`, read the metrics with :meth:`~UpdateStats.compute`.
:func:`audit` runs it over two checkpoints and returns an :class:`Audit` of pandas tables.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import fused
from .checkpoint import align, default_device, iter_pairs, open_checkpoint
from .components import COMPONENTS, classify
from .outputs import atomic_output_dir, write_json

#: PRISM's threshold sweep (Table 22): 0.1, 0.5, 1, 2, 5, 10 percent.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1)
#: The threshold PRISM reports by default.
DEFAULT_THRESHOLD = 0.01
#: Use the fused numba kernel for CPU tensors (bf16/fp16/fp32). The torch path gives the same result.
USE_FUSED = True
#: Elements per chunk of element-wise work: bounds temporaries to a few x 64 MiB for any tensor.
CHUNK = 1 << 23

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def threshold_key(tau: float) -> str:
    """JSON/CSV key of a threshold: the fraction as ``repr(float)`` writes it, e.g. ``'0.01'``."""
    return repr(float(tau))


@dataclass
class UpdateStats:
    """Streaming accumulator of the update statistics of any group of tensor pairs.

    State (all additive, so :meth:`merge` is exact): element count, float64 sums of A^2, B^2,
    A*B and (B-A)^2, bitwise-equal count, changed count per threshold, non-finite count,
    max |B - A|.
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    numel: int = 0
    sum_sq_a: float = 0.0
    sum_sq_b: float = 0.0
    sum_ab: float = 0.0
    sum_sq_diff: float = 0.0
    n_equal: int = 0
    n_nonfinite: int = 0
    max_abs_diff: float = 0.0
    n_changed: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.thresholds = tuple(sorted(float(t) for t in self.thresholds))
        if any(t < 0 or math.isnan(t) for t in self.thresholds):
            raise ValueError("thresholds must be non-negative fractions, e.g. 0.01 for 1%")
        if not self.n_changed:
            self.n_changed = [0] * len(self.thresholds)

    # -- update ----------------------------------------------------------------------------
    def update(self, a: torch.Tensor, b: torch.Tensor) -> UpdateStats:
        """Add one tensor pair (same shape; any device). B is cast to A's dtype if they differ."""
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.dtype != b.dtype:
            b = b.to(a.dtype)
        if USE_FUSED and fused.supports(a):
            sums, counts = fused.pair_stats(a, b, self.thresholds)
        else:
            sums, counts = _torch_pair_stats(a, b, self.thresholds)
        self.numel += a.numel()
        self.sum_sq_a += sums[0]
        self.sum_sq_b += sums[1]
        self.sum_ab += sums[2]
        self.sum_sq_diff += sums[3]
        self.max_abs_diff = max(self.max_abs_diff, sums[4])
        self.n_equal += counts[0]
        self.n_nonfinite += counts[1]
        self.n_changed = [x + y for x, y in zip(self.n_changed, counts[2:])]
        return self

    # -- merge / compute ---------------------------------------------------------------------
    def merge(self, other: UpdateStats) -> UpdateStats:
        """Fold ``other`` (same thresholds) into this accumulator and return it."""
        if other.thresholds != self.thresholds:
            raise ValueError("cannot merge statistics taken at different thresholds")
        self.numel += other.numel
        self.sum_sq_a += other.sum_sq_a
        self.sum_sq_b += other.sum_sq_b
        self.sum_ab += other.sum_ab
        self.sum_sq_diff += other.sum_sq_diff
        self.n_equal += other.n_equal
        self.n_nonfinite += other.n_nonfinite
        self.max_abs_diff = max(self.max_abs_diff, other.max_abs_diff)
        self.n_changed = [x + y for x, y in zip(self.n_changed, other.n_changed)]
        return self

    def compute(self) -> dict:
        """The metrics: ``numel``, ``normalized_l2``, ``fraction_equal``, ``fraction_changed``
        (threshold key -> fraction), ``max_abs_diff``, ``nonfinite``, and the raw sums."""
        n = max(self.numel, 1)
        return {
            "numel": self.numel,
            "normalized_l2": normalized_l2(self.sum_sq_diff, self.sum_sq_a),
            "fraction_equal": self.n_equal / n,
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
        for t, c in zip(self.thresholds, self.n_changed):
            row[f"fraction_changed_{threshold_key(t)}"] = c / max(self.numel, 1)
            row[f"n_changed_{threshold_key(t)}"] = c
        return row


def normalized_l2(sum_sq_diff: float, sum_sq_a: float) -> float:
    """``sqrt(sum_sq_diff) / sqrt(sum_sq_a)`` (Eq. 1); inf when A is all zeros and B is not."""
    if sum_sq_a > 0:
        return math.sqrt(sum_sq_diff) / math.sqrt(sum_sq_a)
    return 0.0 if sum_sq_diff == 0 else math.inf


def _torch_pair_stats(a: torch.Tensor, b: torch.Tensor, thresholds) -> tuple[list[float], list[int]]:
    """Torch path (GPU, or dtypes the fused CPU kernel lacks): same result as ``fused.pair_stats``."""
    a, b = a.reshape(-1), b.reshape(-1)
    work = torch.float32 if a.dtype in (torch.bfloat16, torch.float16) else torch.float64
    bounds = torch.tensor(thresholds, dtype=work, device=a.device)
    acc = torch.zeros(5, dtype=torch.float64, device=a.device)  # a2, b2, ab, d2, max|d|
    counts = torch.zeros(len(thresholds) + 3, dtype=torch.int64, device=a.device)
    for start in range(0, a.numel(), CHUNK):
        _update_chunk(a[start : start + CHUNK], b[start : start + CHUNK], work, bounds, acc, counts)
    acc, counts = acc.tolist(), counts.tolist()  # one device sync per tensor
    hist = counts[2:]  # buckets (<= t0], (t0, t1], ..., (t_last, inf)
    return acc, counts[:2] + [sum(hist[k + 1 :]) for k in range(len(thresholds))]


def _update_chunk(a, b, work, bounds, acc, counts):
    """Element-wise statistics of one flat chunk, added into ``acc`` (float64) and ``counts``."""
    iview = _INT_VIEW[a.element_size()]
    equal = a.view(iview) == b.view(iview)
    counts[0] += equal.sum()
    a_w, b_w = a.to(work), b.to(work)
    finite = torch.isfinite(a_w) & torch.isfinite(b_w)
    all_finite = bool(finite.all())
    if not all_finite:
        counts[1] += (~finite).sum()
        a_w = torch.where(finite, a_w, 0)
        b_w = torch.where(finite, b_w, 0)
    d = b_w - a_w
    a64, b64, d64 = (a_w, b_w, d) if work == torch.float64 else (a_w.double(), b_w.double(), d.double())
    acc[0] += torch.dot(a64, a64)
    acc[1] += torch.dot(b64, b64)
    acc[2] += torch.dot(a64, b64)
    acc[3] += torch.dot(d64, d64)
    del a64, b64, d64
    d.abs_()
    if d.numel():
        acc[4] = torch.maximum(acc[4], d.max().to(torch.float64))
    rel = d.div_(a_w.abs())  # |d| / |a|: inf where a == 0 != d, nan where 0 / 0
    zero = rel != rel  # nan: 0/0 -> unchanged
    rel.masked_fill_(zero, 0.0)
    if not all_finite:  # non-finite pairs: changed unless bitwise equal
        rel.masked_fill_(~finite & ~equal, math.inf)
        rel.masked_fill_(~finite & equal, 0.0)
    bucket = torch.bucketize(rel, bounds)  # i: bounds[i-1] < rel <= bounds[i]
    counts[2:] += torch.bincount(bucket, minlength=bounds.numel() + 1)


# -- the audit of a checkpoint pair -------------------------------------------------------------
@dataclass
class Audit:
    """Result of :func:`audit`: pandas tables at four levels plus what did not align.

    ``tensors`` one row per tensor; ``layers`` per decoder-block index; ``components`` per
    component; ``total`` a one-row table. Every table has ``numel``, ``normalized_l2``,
    ``fraction_equal``, ``fraction_changed_<tau>`` and the raw sums it was computed from.
    """

    a: str
    b: str
    thresholds: tuple[float, ...]
    tensors: pd.DataFrame
    layers: pd.DataFrame
    components: pd.DataFrame
    total: pd.DataFrame
    only_in_a: list[str]
    only_in_b: list[str]
    tied: list[str]
    stats: dict = field(repr=False, default_factory=dict)  # group -> UpdateStats

    def summary(self) -> dict:
        """The ``summary.json`` record (T12/T22/T23 numbers for the whole model, components, layers)."""

        def brief(s: UpdateStats) -> dict:
            m = s.compute()
            return {
                k: m[k]
                for k in ("numel", "normalized_l2", "fraction_equal", "fraction_changed", "max_abs_diff", "nonfinite")
            }

        return {
            "a": self.a,
            "b": self.b,
            "thresholds": [threshold_key(t) for t in self.thresholds],
            "total": brief(self.stats["total"]),
            "components": {c: brief(s) for c, s in self.stats["components"].items()},
            "layers": {str(i): brief(s) for i, s in self.stats["layers"].items()},
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "tied": self.tied,
        }

    def save(self, out: str | os.PathLike, figure: bool = True) -> None:
        """Write summary.json, tensors/layers/components.csv (and the F11 figure) atomically."""
        with atomic_output_dir(out) as tmp:
            write_json(tmp / "summary.json", self.summary())
            self.tensors.to_csv(tmp / "tensors.csv", index=False)
            self.layers.to_csv(tmp / "layers.csv", index=False)
            self.components.to_csv(tmp / "components.csv", index=False)
            if figure:
                from .figures import plot_audit

                plot_audit(
                    self.layers,
                    self.components,
                    tmp / "update_by_layer_and_component",
                    title=f"{_short_name(self.a)} -> {_short_name(self.b)}",
                )

    def format(self, tau: float = DEFAULT_THRESHOLD) -> str:
        """A compact text summary in the style of PRISM Tables 12, 22 and 23."""
        total = self.stats["total"].compute()
        key = threshold_key(tau)
        lines = [
            f"A: {self.a}",
            f"B: {self.b}",
            f"tensors compared: {len(self.tensors)}   elements: {total['numel']:,}"
            + (f"   non-finite: {total['nonfinite']:,}" if total["nonfinite"] else ""),
            f"normalized L2 (Eq. 1): {total['normalized_l2']:.6g}   "
            f"bitwise equal: {100 * total['fraction_equal']:.2f}%",
            "",
            "threshold sweep (T22)   " + "  ".join(f"{100 * t:>6g}%" for t in self.thresholds),
            "  % changed             " + "  ".join(f"{100 * v:>7.2f}" for v in total["fraction_changed"].values()),
            "  % unchanged           "
            + "  ".join(f"{100 - 100 * v:>7.2f}" for v in total["fraction_changed"].values()),
            "",
            f"{'component (T23)':<16}{'numel':>14}{'norm L2':>12}{'% changed@' + format(100 * tau, 'g') + '%':>16}{'% equal':>10}",
        ]
        for comp, s in self.stats["components"].items():
            m = s.compute()
            lines.append(
                f"{comp:<16}{m['numel']:>14,}{m['normalized_l2']:>12.4g}"
                f"{100 * m['fraction_changed'].get(key, float('nan')):>16.2f}{100 * m['fraction_equal']:>10.2f}"
            )
        if self.only_in_a or self.only_in_b:
            lines += [
                "",
                f"only in A: {len(self.only_in_a)} tensors {self.only_in_a[:5]}",
                f"only in B: {len(self.only_in_b)} tensors {self.only_in_b[:5]}",
            ]
        return "\n".join(lines)


def _short_name(p: str) -> str:
    return os.path.basename(os.path.normpath(p)) or p


def _table(groups: dict, key_name: str) -> pd.DataFrame:
    rows = [{key_name: k, **s.row()} for k, s in groups.items()]
    return pd.DataFrame(rows)


def group_stats(per_tensor: dict, make) -> dict:
    """Aggregate per-tensor accumulators (anything with ``merge``; ``make()`` builds an empty one)
    to ``{"layers": {i: ..}, "components": {c: ..}, "total": ..}``."""
    layers: dict = {}
    comps: dict = {}
    total = make()
    for name, s in per_tensor.items():
        layer, comp = classify(name)
        if layer is not None:
            layers.setdefault(layer, make()).merge(s)
        comps.setdefault(comp, make()).merge(s)
        total.merge(s)
    order = {c: i for i, c in enumerate(COMPONENTS)}
    return {
        "layers": dict(sorted(layers.items())),
        "components": dict(sorted(comps.items(), key=lambda kv: order.get(kv[0], len(order)))),
        "total": total,
    }


def audit(
    a,
    b,
    thresholds=DEFAULT_THRESHOLDS,
    device: str | torch.device | None = None,
    progress: bool = True,
    allow_pickle: bool = False,
    prefetch: int = 1,
) -> Audit:
    """Update statistics of checkpoint ``b`` relative to ``a``, streamed one tensor pair at a time.

    ``a``/``b``: paths (model directory, ``.safetensors`` file, shard index) or :class:`Checkpoint`.
    ``device``: where the statistics run (default: cuda when available, else cpu).
    Peak memory is ``prefetch + 1`` tensor pairs (the current one and those read ahead), whatever
    the checkpoint size.
    """
    ca, cb = open_checkpoint(a, allow_pickle), open_checkpoint(b, allow_pickle)
    al = align(ca, cb)
    dev = torch.device(device) if device is not None else default_device()
    per_tensor: dict[str, UpdateStats] = {}
    rows = []
    total_bytes = sum(ca.info(n).nbytes + cb.info(n).nbytes for n in al.common)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="audit", disable=not progress, leave=False) as bar:
        for name, ta, tb in iter_pairs(ca, cb, al.common, prefetch=prefetch):
            if not (ta.is_floating_point() and tb.is_floating_point()):
                ta, tb = ta.double(), tb.double()
            s = UpdateStats(thresholds).update(ta.to(dev, non_blocking=True), tb.to(dev, non_blocking=True))
            per_tensor[name] = s
            layer, comp = classify(name)
            rows.append(
                {
                    "name": name,
                    "layer": layer,
                    "component": comp,
                    "shape": "x".join(map(str, ta.shape)),
                    "dtype": str(ta.dtype).replace("torch.", ""),
                    **s.row(),
                }
            )
            bar.update(ta.nbytes + tb.nbytes)
            del ta, tb
    groups = group_stats(per_tensor, lambda: UpdateStats(thresholds))
    tensors = pd.DataFrame(rows)
    tensors["layer"] = tensors["layer"].astype("Int64")
    total = _table({"total": groups["total"]}, "group")
    return Audit(
        a=str(ca.path),
        b=str(cb.path),
        thresholds=tuple(sorted(thresholds)),
        tensors=tensors,
        layers=_table(groups["layers"], "layer"),
        components=_table(groups["components"], "component"),
        total=total,
        only_in_a=al.only_in_a,
        only_in_b=al.only_in_b,
        tied=al.tied,
        stats=groups,
    )
