"""The audit of a checkpoint pair: size (normalized L2) and sparsity, PRISM metrics 1-3 (T12/T22/T23).

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

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..accumulator import merge_all
from ..checkpoints.align import full_tensor, record, stored_info
from ..checkpoints.base import label
from ..checkpoints.opening import open_aligned
from ..components import classify, expert_index
from ..devices import WEIGHTS_DEVICE, resolve_device
from ..errors import PARAM, PrismError
from ..metrics import (
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLDS,
    changed_column,
    check_thresholds,
    threshold_key,
)
from ..outputs import atomic_output_dir, write_json
from .measure import Statistic, measure_aligned
from .update import UpdateStats, as_float, fused_min_numel_for

#: The version of the audit's outputs (summary.json keys, tensors/layers/components/experts.csv
#: columns); raised with every change that is not an addition at the end (CHANGELOG.md).
SCHEMA = "prism.audit/2"
#: Why a tensor pair of different dtypes has no fraction_equal (summary.json, tensors.csv).
FRACTION_EQUAL_UNDEFINED = (
    "dtypes differ: bitwise equality is defined only between values of one dtype, so these tensors have "
    "fraction_equal null (empty in tensors.csv) and each group's fraction_equal counts only its elements of "
    "matching dtypes (fraction_equal_numel); their other statistics compare exactly, in the wider dtype"
)


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
    #: per attention head / MLP neuron (audit(units=...)): :func:`~prism_analysis.weights.units.unit_table`
    #: rows with ``head`` / ``neuron`` for the unit index and ``fraction_changed`` at tau; empty if not asked
    heads: pd.DataFrame = field(default_factory=pd.DataFrame)
    neurons: pd.DataFrame = field(default_factory=pd.DataFrame)
    #: neurons.csv keeps the top ``neurons_top`` by normalized L2 (None: all)
    neurons_top: int | None = 100
    #: what alignment did (:func:`prism_analysis.checkpoints.align.record`): names, folded, resized
    aligned: dict = field(default_factory=lambda: {"names": {}, "folded": {}, "resized": []})

    def summary(self) -> dict:
        """The ``summary.json`` record (T12/T22/T23 numbers for the whole model, components, layers,
        and experts by layer of a MoE model; names counted under ``other``)."""

        def brief(s: UpdateStats) -> dict:
            m = s.compute()
            out = {
                k: m[k]
                for k in ("numel", "normalized_l2", "fraction_equal", "fraction_changed", "max_abs_diff", "nonfinite")
            }
            out["fraction_equal_numel"] = s.n_same_dtype  # the elements fraction_equal is over
            return out

        def block(level: str) -> dict:  # key -> statistics, with the update geometry when taken
            spec = self.spectral.get(level, {})
            return {k: brief(s) | (spec[k].compute() if k in spec else {}) for k, s in self.stats[level].items()}

        experts: dict = {}  # layer -> expert -> statistics
        for (layer, expert), s in block("experts").items():
            experts.setdefault(str(layer), {})[str(expert)] = s
        total = brief(self.stats["total"]) | (self.spectral["total"].compute() if self.spectral else {})
        undefined = [c["name"] for c in self.cast]
        return {
            "schema": SCHEMA,
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
            "fraction_equal_undefined": {
                "tensors": undefined,
                "numel": int(self.tensors.set_index("name").loc[undefined, "numel"].sum()) if undefined else 0,
                "reason": FRACTION_EQUAL_UNDEFINED,
            },
            "names": self.aligned["names"],
            "folded": self.aligned["folded"],
            "resized": self.aligned["resized"],
        } | self.run

    def save(self, out: str | os.PathLike, figure: bool = True, drawer=None) -> None:
        """Write summary.json, tensors/layers/components.csv, experts.csv for a MoE model (and the
        F11 figure) atomically. The figures are drawn from the CSV files just written, by
        ``drawer`` (a :class:`~prism_analysis.figure_process.FigureProcess`) when given."""
        from ..figure_process import draw

        with atomic_output_dir(out, "audit", [self.a, self.b]) as tmp:
            write_json(tmp / "summary.json", self.summary())
            self.tensors.to_csv(tmp / "tensors.csv", index=False)
            self.layers.to_csv(tmp / "layers.csv", index=False)
            self.components.to_csv(tmp / "components.csv", index=False)
            if len(self.experts):
                self.experts.to_csv(tmp / "experts.csv", index=False)
            if len(self.heads):
                self.heads.to_csv(tmp / "heads.csv", index=False)
            if len(self.neurons):
                top = self.neurons if self.neurons_top is None else self.neurons.head(self.neurons_top)
                top.to_csv(tmp / "neurons.csv", index=False)
            if figure:
                draw(tmp, self.figures(), drawer)

    def figures(self) -> list:
        """The figures :meth:`save` draws, as :class:`~prism_analysis.figure_process.Plot` requests
        on the tables it writes: F11, the per-head heatmaps with ``--units heads``, the update
        geometry with ``--spectral``."""
        from ..figure_process import Plot

        title = {"title": f"{_short_name(self.a)} -> {_short_name(self.b)}"}
        by_layer = {"layers": "layers.csv", "components": "components.csv"}
        plots = [Plot("plot_audit", by_layer, "update_by_layer_and_component", title)]
        if len(self.heads):
            plots.append(Plot("plot_heads", {"heads": "heads.csv"}, "heads_by_layer", title))
        if self.spectral:
            plots.append(Plot("plot_spectral", by_layer, "geometry_by_layer_and_component", title))
        return plots

    def format(self, tau: float = DEFAULT_THRESHOLD) -> str:
        """A compact text summary in the style of PRISM Tables 12, 22 and 23
        (:func:`~prism_analysis.weights.report.format_audit`)."""
        from .report import format_audit

        return format_audit(self, tau)


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
    units: tuple[str, ...] = (),
    neurons_top: int | None = 100,
) -> Audit:
    """Update statistics of checkpoint ``b`` relative to ``a``, streamed one tensor pair at a time.

    ``a``/``b``: paths (model directory, ``.safetensors`` file, shard index, torch.distributed.checkpoint
    directory) or :class:`Checkpoint`. ``config``: config.json for DCP inputs, which carry none.
    ``device``: where the statistics run (default: the CPU, GPU or not: reading dominates, see
    :data:`prism_analysis.devices.WEIGHTS_DEVICE`; with ``spectral``, cuda where there is one);
    ``"cuda"`` gives the same numbers.
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
    units = _check_units(units)
    (ca, cb), al = open_aligned([a, b], allow_pickle, config, progress=progress)
    # which tensors take the fused kernel: decided by the checkpoint alone (see fused_min_numel_for)
    fused_min = fused_min_numel_for(max((stored_info(ca, n).numel for n in al.common), default=0))

    def per_tensor(name, tensors, parts):
        return _tensor_row(name, tensors, parts, (ca, cb))

    if units:
        from .units import unit_arrays

        kinds = [kind for kind, unit in _UNIT_KINDS.items() if unit in units]

        def per_tensor(name, tensors, parts):  # the row, and the columns of its heads and neurons
            rows = [acc.unit_rows for _, acc in parts["update"]]  # rows the audit's pass measured
            arrays = unit_arrays(name, *tensors, ca.config, (DEFAULT_THRESHOLD,), fused_min, rows)
            if len(kinds) < len(_UNIT_KINDS):
                keep = np.isin(arrays["kind"], kinds)
                arrays = {c: v[keep] for c, v in arrays.items()}
            return _tensor_row(name, tensors, parts, (ca, cb)), arrays

    unit_tau = DEFAULT_THRESHOLD if units and DEFAULT_THRESHOLD in check_thresholds(thresholds) else None

    def make_update():
        return UpdateStats(thresholds, fused_min_numel=fused_min, unit_tau=unit_tau)

    statistics = [Statistic("update", make_update, (0, 1))]
    if spectral:
        from .spectral import DEFAULT_K, SpectralStats

        # per part, as the statistics above: q, k, v of a fused projection, each expert
        statistics.append(Statistic("spectral", lambda: SpectralStats(k=spectral_k or DEFAULT_K), (0, 1)))
    m = measure_aligned(
        [ca, cb],
        al.common,
        statistics,
        # --spectral is decompositions, the work a GPU is for: cuda where there is one (not measured yet)
        device=resolve_device(device, default=None if spectral else WEIGHTS_DEVICE),
        per_tensor=per_tensor,
        desc="audit",
        progress=progress,
        prefetch=2 * max(prefetch, 1),
    )
    rows = [e[0] for e in m.extras.values()] if units else list(m.extras.values())
    unit_arrays_all = _unit_arrays([e[1] for e in m.extras.values()]) if units else None
    cast = [
        {"name": r["name"], "dtype_a": r["dtype"], "dtype_b": r["dtype_b"]} for r in rows if r["dtype"] != r["dtype_b"]
    ]
    groups = m.grouped("update")
    spectral_groups = m.grouped("spectral") if spectral else {}
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
        run=m.run,
        heads=_units_table(unit_arrays_all, "head") if "heads" in units else pd.DataFrame(),
        neurons=_units_table(unit_arrays_all, "neuron") if "neurons" in units else pd.DataFrame(),
        neurons_top=neurons_top,
        aligned=_aligned_record([ca, cb], al),
    )


#: unit kind of weights.units -> the name ``audit(units=...)`` takes
_UNIT_KINDS = {"head": "heads", "neuron": "neurons"}


def _check_units(units) -> tuple[str, ...]:
    units = tuple(units or ())
    unknown = [u for u in units if u not in _UNIT_KINDS.values()]
    if unknown:
        raise PrismError(
            f"{PARAM}: unknown {', '.join(map(str, unknown))}; choose heads, neurons or both", param="units"
        )
    return units


def _unit_arrays(arrays: list[dict]) -> dict | None:
    """The heads and neurons of every tensor (:func:`~prism_analysis.weights.units.unit_arrays`) as
    one set of columns (None: no tensor has units)."""
    from .units import join_arrays

    arrays = [a for a in arrays if len(a["unit"])]
    return join_arrays(arrays) if arrays else None


def _units_table(arrays: dict | None, kind: str) -> pd.DataFrame:
    """heads.csv / neurons.csv: :func:`~prism_analysis.weights.units.unit_table` of one kind, the unit
    index named ``head`` / ``neuron`` and ``fraction_changed`` at tau (1%)."""
    from .units import unit_table

    if arrays is not None:
        keep = arrays["kind"] == kind
        arrays = {c: v[keep] for c, v in arrays.items()}
    table = unit_table(arrays or {}, DEFAULT_THRESHOLD)
    table = table.drop(columns="kind").rename(columns={"unit": kind})
    key = changed_column(DEFAULT_THRESHOLD)
    if key in table:
        table.insert(table.columns.get_loc("normalized_l2") + 1, "fraction_changed", table[key])
    return table


def _aligned_record(ckpts, al) -> dict:
    """:func:`~prism_analysis.checkpoints.align.record` of the pair, each resized tensor with the
    rows only one side has: how many and their Frobenius norm (float64)."""
    rec = record(ckpts, al, ["a", "b"])
    for entry in rec["resized"]:
        r = entry["rows_compared"]
        for key, c in zip(("a", "b"), ckpts):
            extra = entry["rows"][key] - r
            entry[f"rows_only_in_{key}"] = extra
            norm = 0.0
            if extra:
                t = full_tensor(c, entry["name"])[r:]
                norm = float(torch.linalg.vector_norm(as_float(t).double()))
            entry[f"norm_only_in_{key}"] = norm
    return rec


def spectral_summary(a, b, k: int = 16, device=None, allow_pickle: bool = False, config=None):
    """The update geometry of checkpoint ``b`` against ``a`` by component, for a report: one row per
    component plus ``total``, with :data:`prism_analysis.weights.spectral.COLUMNS`, ``normalized_l2``,
    ``fraction_changed`` (share not bitwise equal, the exact counterpart of ``fraction_visible_bf16``).

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


def _tensor_row(name: str, tensors: list[torch.Tensor], parts: dict, ckpts=None) -> dict:
    """The tensors.csv row of one tensor pair: where it sits, its names and shapes as stored
    (``ckpts``: the pair, to look them up), and the statistics of all its parts (and of its update
    geometry, when measured). ``shape`` is the shape compared (the shared rows of a resized one)."""
    ta, tb = tensors
    pieces = parts["update"]
    s = merge_all((acc for _, acc in pieces), pieces[0][1].empty)  # the whole tensor's row
    layer, comp = classify(name)
    split = [part.component for part, _ in pieces if part.component != comp]  # fused q/k/v: q, k, v
    dtype_a, dtype_b = (str(t.dtype).replace("torch.", "") for t in (ta, tb))
    row = {
        "name": name,
        "layer": layer,
        "expert": expert_index(name),
        "component": comp,
        "split_into": " ".join(split),
        "shape": "x".join(map(str, ta.shape)),
        "dtype": dtype_a,
        "dtype_b": dtype_b,
    } | s.row()
    if ckpts is not None:
        ia, ib = (stored_info(c, name) for c in ckpts)
        row |= {
            "name_a": ia.name,
            "name_b": ib.name,
            "shape_a": "x".join(map(str, ia.shape)),
            "shape_b": "x".join(map(str, ib.shape)),
        }
    row["fraction_equal_note"] = "" if dtype_a == dtype_b else f"undefined: dtypes differ ({dtype_a} vs {dtype_b})"
    if "spectral" in parts:
        spec = parts["spectral"]
        row |= merge_all((acc for _, acc in spec), spec[0][1].empty).row()
    return row
