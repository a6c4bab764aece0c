"""Update statistics of a checkpoint pair: size (normalized L2) and sparsity, PRISM metrics 1-3.

For the earlier checkpoint A and the later checkpoint B, matched tensor by tensor: normalized L2
(Eq. 1), the fraction changed at every threshold of a sweep, the bitwise-equal fraction, max |B - A|
and the count of non-finite elements -- with the definitions of :mod:`prism_analysis.metrics`.

All thresholds of a sweep come from one pass per tensor. Large CPU tensors go through a fused
numba kernel (:mod:`prism_analysis.weights.fused`) that reads each element pair once; GPU tensors, other
dtypes and small tensors take the torch path, which gives the same counts and float64 sums.

:class:`UpdateStats` follows the update / compute / merge pattern of torchmetrics
(:mod:`prism_analysis.accumulator`): accumulate tensor pairs with :meth:`~UpdateStats.update`,
combine partial results (other tensors, other processes) with ``merge``, read the metrics with
:meth:`~UpdateStats.compute`. :func:`audit` runs it over two checkpoints and returns an
:class:`Audit` of pandas tables.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import pandas as pd
import torch

from .. import distributed
from ..accumulator import Accumulator, group_stats, merge_all, part_stats, state
from ..checkpoints.base import label
from ..checkpoints.opening import open_aligned
from ..checkpoints.stream import stream_aligned
from ..components import classify, expert_index
from ..devices import resolve_device
from ..metrics import (
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLDS,
    bits_equal,
    changed_column,
    check_thresholds,
    normalized_l2,
    threshold_key,
)
from ..outputs import atomic_output_dir, write_json

#: Use the fused numba kernels for large CPU tensors (bf16/fp16/fp32). The torch path gives the same result.
USE_FUSED = True
#: Smaller tensors take the torch path: as fast there, and small models never import numba.
FUSED_MIN_NUMEL = 1 << 20
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
    """Both tensors in the wider of their two dtypes (``torch.promote_types``); exact, never a cast down."""
    if a.dtype == b.dtype:
        return a, b
    wide = torch.promote_types(a.dtype, b.dtype)
    return a.to(wide), b.to(wide)


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
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    #: smallest CPU tensor for the fused kernel (None: :data:`FUSED_MIN_NUMEL`; live tracking lowers it)
    fused_min_numel: int | None = None
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

    def update(self, a: torch.Tensor, b: torch.Tensor) -> UpdateStats:
        """Add one tensor pair (same shape; any device). Different dtypes are compared in the wider one."""
        if a.shape != b.shape:
            raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
        same_dtype = a.dtype == b.dtype
        a, b = promote(as_float(a), as_float(b))
        a, b = a.reshape(-1), b.reshape(-1)
        if use_fused(a, b, min_numel=self.fused_min_numel):
            from . import fused

            sums, counts = fused.pair_stats(a, b, self.thresholds)
        else:
            sums, counts = _torch_pair_stats(a, b, self.thresholds)
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


# -- the audit of a checkpoint pair -------------------------------------------------------------
@dataclass
class Audit:
    """Result of :func:`audit`: pandas tables at four levels plus what did not align.

    ``tensors`` one row per tensor (its ``layer``, ``expert`` when the name has one, ``component``,
    and ``split_into`` the components a fused q/k/v projection is split into); ``layers`` per
    decoder-block index; ``components`` per component; ``total`` a one-row table; ``experts`` per
    (layer, expert) of a MoE model (empty without experts). Every table has ``numel``,
    ``normalized_l2``, ``fraction_equal``, ``fraction_changed_<tau>`` and the raw sums it was
    computed from. ``unclassified``: names no component rule knows (counted under ``other``).
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
    spectral: dict = field(repr=False, default_factory=dict)  # group -> SpectralStats (audit(spectral=True))
    cast: list[dict] = field(default_factory=list)  # tensors whose dtypes differ: name, dtype_a, dtype_b
    experts: pd.DataFrame = field(default_factory=pd.DataFrame)
    unclassified: list[str] = field(default_factory=list)
    run: dict = field(default_factory=dict)  # a distributed run: world_size, bytes_per_rank

    def summary(self) -> dict:
        """The ``summary.json`` record (T12/T22/T23 numbers for the whole model, components, layers,
        and experts by layer of a MoE model; names counted under ``other``)."""

        def brief(s: UpdateStats) -> dict:
            m = s.compute()
            return {
                k: m[k]
                for k in ("numel", "normalized_l2", "fraction_equal", "fraction_changed", "max_abs_diff", "nonfinite")
            }

        def block(level: str) -> dict:  # key -> statistics, with the update geometry when taken
            spec = self.spectral.get(level, {})
            return {k: brief(s) | (spec[k].compute() if k in spec else {}) for k, s in self.stats[level].items()}

        experts: dict = {}  # layer -> expert -> statistics
        for (layer, expert), s in block("experts").items():
            experts.setdefault(str(layer), {})[str(expert)] = s
        total = brief(self.stats["total"]) | (self.spectral["total"].compute() if self.spectral else {})
        return {
            "a": self.a,
            "b": self.b,
            "thresholds": [threshold_key(t) for t in self.thresholds],
            "total": total,
            "components": block("components"),
            "layers": {str(i): s for i, s in block("layers").items()},
            "experts": experts,
            "unclassified": self.unclassified,
            "only_in_a": self.only_in_a,
            "only_in_b": self.only_in_b,
            "tied": self.tied,
            "cast": self.cast,
        } | self.run

    def save(self, out: str | os.PathLike, figure: bool = True) -> None:
        """Write summary.json, tensors/layers/components.csv, experts.csv for a MoE model (and the
        F11 figure) atomically."""
        with atomic_output_dir(out, "audit", [self.a, self.b]) as tmp:
            write_json(tmp / "summary.json", self.summary())
            self.tensors.to_csv(tmp / "tensors.csv", index=False)
            self.layers.to_csv(tmp / "layers.csv", index=False)
            self.components.to_csv(tmp / "components.csv", index=False)
            if len(self.experts):
                self.experts.to_csv(tmp / "experts.csv", index=False)
            if figure:
                from ..figures import plot_audit

                plot_audit(
                    self.layers,
                    self.components,
                    tmp / "update_by_layer_and_component",
                    title=f"{_short_name(self.a)} -> {_short_name(self.b)}",
                )
                if self.spectral:
                    from ..figures import plot_spectral

                    plot_spectral(
                        self.layers,
                        self.components,
                        tmp / "geometry_by_layer_and_component",
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
            f"{'component (T23)':<16}{'numel':>14}{'norm L2':>12}{f'% changed@{100 * tau:g}%':>16}{'% equal':>10}",
        ]
        for comp, s in self.stats["components"].items():
            m = s.compute()
            lines.append(
                f"{comp:<16}{m['numel']:>14,}{m['normalized_l2']:>12.4g}"
                f"{100 * m['fraction_changed'].get(key, float('nan')):>16.2f}{100 * m['fraction_equal']:>10.2f}"
            )
        if self.spectral:
            lines += ["", *self._format_spectral()]
        if total["nonfinite"]:
            lines += [
                "",
                f"note: {total['nonfinite']:,} elements are NaN or Inf in A or B: left out of the L2 sums, "
                "counted as changed unless bitwise equal",
            ]
        if self.cast:
            kinds = sorted({f"{c['dtype_a']} vs {c['dtype_b']}" for c in self.cast})
            lines += [
                "",
                f"note: {len(self.cast)} tensors differ in dtype ({', '.join(kinds)}): compared in the wider dtype; "
                "'bitwise equal' covers the tensors whose dtypes match",
            ]
        if self.unclassified:
            lines += [
                "",
                f"note: {len(self.unclassified)} tensors match no component rule and count under 'other': "
                f"{self.unclassified[:5]}",
            ]
        if self.only_in_a or self.only_in_b:
            lines += [
                "",
                f"only in A: {len(self.only_in_a)} tensors {self.only_in_a[:5]}",
                f"only in B: {len(self.only_in_b)} tensors {self.only_in_b[:5]}",
            ]
        return "\n".join(lines)

    def _format_spectral(self) -> list[str]:
        """The update-geometry block of :meth:`format` (parameter-weighted means over 2-D tensors)."""
        head = ["erank", "stable", "max angle", "mean angle", "align", "bf16 vis"]
        cols = ["effective_rank", "stable_rank", "max_principal_angle_deg", "mean_principal_angle_deg"]
        cols += ["principal_alignment", "fraction_visible_bf16"]
        lines = [
            "update geometry (parameter-weighted means; angles in degrees; bf16 vis = % visible in bf16)",
            f"{'component':<16}" + "".join(f"{h:>11}" for h in head),
        ]
        groups = [*self.spectral["components"].items(), ("total", self.spectral["total"])]
        for name, acc in groups:
            m = acc.compute()
            values = [m[c] * (100 if c == "fraction_visible_bf16" else 1) for c in cols]
            lines.append(f"{name:<16}" + "".join(f"{v:>11.4g}" for v in values))
        return lines


def _short_name(p: str) -> str:
    return os.path.basename(os.path.normpath(p)) or p


def _table(groups: dict, key_name: str, extra: dict | None = None) -> pd.DataFrame:
    """One row per group; ``extra``: more statistics by the same keys (the update geometry)."""
    extra = extra or {}
    rows = [{key_name: k, **s.row(), **(extra[k].row() if k in extra else {})} for k, s in groups.items()]
    return pd.DataFrame(rows)


def _extra(groups: dict, level: str, key) -> dict:
    return groups[level][key].row() if groups and key in groups[level] else {}


def audit(
    a,
    b,
    thresholds=DEFAULT_THRESHOLDS,
    device: str | torch.device | None = None,
    progress: bool = True,
    allow_pickle: bool = False,
    prefetch: int = 1,
    config=None,
    spectral: bool = False,
    spectral_k: int | None = None,
) -> Audit:
    """Update statistics of checkpoint ``b`` relative to ``a``, streamed one tensor pair at a time.

    ``a``/``b``: paths (model directory, ``.safetensors`` file, shard index, torch.distributed.checkpoint
    directory) or :class:`Checkpoint`. ``config``: config.json for DCP inputs, which carry none.
    ``device``: where the statistics run (default: cuda when available, else cpu).
    Peak memory is ``prefetch + 1`` tensor pairs (the current one and those read ahead), whatever
    the checkpoint size.
    ``spectral``: also the update geometry of every 2-D tensor (:mod:`prism_analysis.weights.spectral`, top
    ``spectral_k`` principal subspaces), computed alongside in the same pass, as extra columns of
    every table (its accumulators are in ``Audit.spectral``).

    Two tiny checkpoints, one row of one matrix moved by 0.5::

        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> d = tempfile.mkdtemp()
        >>> a = {"model.embed_tokens.weight": torch.ones(8, 4), "model.layers.0.mlp.up_proj.weight": torch.ones(4, 4)}
        >>> b = {k: v.clone() for k, v in a.items()}
        >>> b["model.layers.0.mlp.up_proj.weight"][0] += 0.5
        >>> save_file(a, f"{d}/a.safetensors"); save_file(b, f"{d}/b.safetensors")
        >>> res = audit(f"{d}/a.safetensors", f"{d}/b.safetensors", progress=False)
        >>> total = res.summary()["total"]
        >>> round(total["normalized_l2"], 4), total["fraction_changed"]["0.01"] == 4 / 48
        (0.1443, True)
        >>> print(res.components[["component", "normalized_l2"]].to_string(index=False))
        component  normalized_l2
            embed           0.00
           mlp_up           0.25
    """
    (ca, cb), al = open_aligned([a, b], allow_pickle, config, progress=progress)
    dev = resolve_device(device)

    def make():
        return UpdateStats(thresholds)

    if spectral:
        from .spectral import DEFAULT_K, SpectralStats

        def make_spectral():
            return SpectralStats(k=spectral_k or DEFAULT_K)

    def measure(names: list[str]) -> dict:  # name -> ([(part, UpdateStats)], row, dtypes, [(part, SpectralStats)])
        out = {}
        for name, (ta, tb) in stream_aligned([ca, cb], names, desc="audit", progress=progress, prefetch=prefetch):
            pair = (ta.to(dev, non_blocking=True), tb.to(dev, non_blocking=True))
            pieces = part_stats(name, pair, ca.config, make)
            row, spec = _tensor_row(name, ta, tb, pieces, make), []
            if spectral:  # per part, as the statistics above: q, k, v of a fused projection, each expert
                spec = part_stats(name, pair, ca.config, make_spectral)
                row |= merge_all((acc for _, acc in spec), make_spectral).row()
            out[name] = (pieces, row, (str(ta.dtype), str(tb.dtype)), spec)
            del ta, tb, pair
        return out

    # each rank measures its share of the tensors; all are merged below in the order of al.common
    measured, loads = distributed.share(al.common, [ca.info(n).nbytes + cb.info(n).nbytes for n in al.common], measure)
    per_tensor = {name: m[0] for name, m in measured.items()}
    per_spectral = {name: m[3] for name, m in measured.items()}
    rows = [m[1] for m in measured.values()]
    cast = [
        {"name": name, "dtype_a": da.replace("torch.", ""), "dtype_b": db.replace("torch.", "")}
        for name, (_, _, (da, db), _) in measured.items()
        if da != db
    ]
    groups = group_stats(per_tensor, make)
    spectral_groups = group_stats(per_spectral, make_spectral) if spectral else {}
    tensors = pd.DataFrame(rows)
    tensors["layer"] = tensors["layer"].astype("Int64")
    tensors["expert"] = tensors["expert"].astype("Int64")
    experts = pd.DataFrame(
        [
            {"layer": layer, "expert": expert, **s.row(), **_extra(spectral_groups, "experts", (layer, expert))}
            for (layer, expert), s in groups["experts"].items()
        ]
    )
    total = _table({"total": groups["total"]}, "group", {"total": spectral_groups["total"]} if spectral else None)
    return Audit(
        a=label(ca),
        b=label(cb),
        thresholds=check_thresholds(thresholds),
        tensors=tensors,
        layers=_table(groups["layers"], "layer", spectral_groups.get("layers")),
        components=_table(groups["components"], "component", spectral_groups.get("components")),
        total=total,
        only_in_a=al.only_in_a,
        only_in_b=al.only_in_b,
        tied=al.tied,
        stats=groups,
        spectral=spectral_groups,
        cast=cast,
        experts=experts,
        unclassified=[r["name"] for r in rows if r["component"] == "other"],
        run=distributed.run_record(loads),
    )


def spectral_summary(a, b, k: int = 16, device=None, allow_pickle: bool = False, config=None):
    """The update geometry of checkpoint ``b`` against ``a`` by component, for a report: one row per
    component plus ``total``, with :data:`prism_analysis.weights.spectral.COLUMNS`, ``normalized_l2``, ``fraction_changed``
    (share not bitwise equal, the exact counterpart of ``fraction_visible_bf16``).

    Runs :func:`audit` with ``spectral=True`` (any checkpoint form, streamed); the columns are those of
    :mod:`prism_analysis.weights.spectral`.
    """
    from .spectral import COLUMNS

    res = audit(
        a, b, device=device, progress=False, allow_pickle=allow_pickle, config=config, spectral=True, spectral_k=k
    )
    keep = ["component", "normalized_l2", "fraction_equal", *COLUMNS]
    total = res.total.rename(columns={"group": "component"})
    table = pd.concat([res.components[keep], total[keep]])
    table["fraction_changed"] = 1 - table.pop("fraction_equal")
    return table.reset_index(drop=True)


def _tensor_row(name: str, ta: torch.Tensor, tb: torch.Tensor, pieces: list, make) -> dict:
    """The tensors.csv row of one tensor pair: where it sits and the statistics of all its parts."""
    s = merge_all((acc for _, acc in pieces), make)  # the whole tensor's row
    layer, comp = classify(name)
    split = [part.component for part, _ in pieces if part.component != comp]  # fused q/k/v: q, k, v
    dtype_a, dtype_b = (str(t.dtype).replace("torch.", "") for t in (ta, tb))
    return {
        "name": name,
        "layer": layer,
        "expert": expert_index(name),
        "component": comp,
        "split_into": " ".join(split),
        "shape": "x".join(map(str, ta.shape)),
        "dtype": dtype_a,
        "dtype_b": dtype_b,
    } | s.row()
