"""Attention heads and MLP neurons of one tensor: where inside a matrix an update lands.

PRISM reports update size per component; this splits one tensor's update further, into the units
the computation is made of. Given a tensor's name, the config and the two versions ``a`` (earlier)
and ``b`` (later), :func:`unit_stats` returns one row per unit with float64 sums:

- **heads** (``kind="head"``) of ``attn_q``/``attn_k``/``attn_v``: the rows of head h,
  ``[h * head_dim, (h + 1) * head_dim)`` of a ``[out, in]`` Linear weight (and those entries of its
  bias). GQA-aware: k and v have ``num_key_value_heads`` heads of their own (kv head j serves query
  heads ``j * g .. (j + 1) * g - 1``, g = heads / kv_heads; the rows are not repeated per query head).
  ``attn_o``: the **columns** of head h (the output projection reads the concatenated heads); its
  bias belongs to no head and gives no rows.
- **neurons** (``kind="neuron"``) of the MLP: ``mlp_gate``/``mlp_up`` rows (and bias entries),
  ``mlp_down`` columns (its bias: no rows); a fused ``mlp_gate_up`` (Phi-3 ``gate_up_proj``,
  Granite ``input_linear``, transformers 5 expert stacks ``experts.gate_up_proj``) holds gate rows
  ``[0, I)`` then up rows ``[I, 2I)``, and neuron j is rows j and I + j together. MoE experts: every
  unit row carries its ``expert`` (from the name, or the slice of a stacked tensor).
- **fused q/k/v**: split first by :func:`prism_analysis.components.parts` (GPT-2 ``c_attn``: q|k|v
  column blocks; GPT-NeoX ``query_key_value``: rows laid out ``(heads, 3, head_dim)``; Phi-3
  ``qkv_proj``: q rows, then k, then v), then by head as above, so a head of a fused tensor gets the
  same rows as the unfused one. GPT-2's Conv1D weights are stored ``[in, out]``: its heads and
  neurons lie along the other dimension (``c_attn``/``c_fc`` columns, ``attn.c_proj``/``mlp.c_proj``
  rows).

Every element goes to at most one unit, and the units of a split tensor hold all of its elements
(biases of o/down aside). Tensors with no units (embeddings, norms, routers, Mamba, ...), and
tensors whose shape does not match the config's head geometry, give no rows -- never a guess.

Per unit: ``numel``, ``sum_sq_diff`` = sum (b - a)^2, ``sum_sq_a`` = sum a^2 (float64, non-finite
elements left out), ``n_changed_<tau>`` by the single "changed at tau" rule of
:mod:`prism_analysis.metrics` (``|b - a| > tau |a|``; a == 0 changed iff b != 0; non-finite changed
unless bitwise equal), ``n_equal`` (bitwise, in the stored dtype; for a pair of two dtypes: equal values,
or both NaN), ``n_nonfinite``.
:func:`unit_table` adds the units' rows up over tensors (weight + bias) and ranks them by normalized
L2 ``sqrt(sum_sq_diff / sum_sq_a)`` (Eq. 1 on the unit's elements).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import torch

from ..components import _positive_int, layer_index, parts
from ..metrics import DEFAULT_THRESHOLD, bits_equal, changed_mask, threshold_key

HEAD_COMPONENTS = ("attn_q", "attn_k", "attn_v", "attn_o")
NEURON_COMPONENTS = ("mlp_gate", "mlp_up", "mlp_gate_up", "mlp_down")
#: Rows per chunk of float64 work: the work arrays stay near this many elements.
CHUNK_ELEMENTS = 2**22

# GPT-2's Conv1D modules: weights stored [in, out]
_CONV1D = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")


def unit_columns(thresholds=(DEFAULT_THRESHOLD,)) -> list[str]:
    """Columns of :func:`unit_stats` rows."""
    base = ["name", "layer", "component", "expert", "kind", "unit", "numel", "sum_sq_diff", "sum_sq_a"]
    return base + ["n_equal", "n_nonfinite"] + [f"n_changed_{threshold_key(t)}" for t in thresholds]


def head_geometry(config: dict | None) -> tuple[int, int, int] | None:
    """``(heads, kv_heads, head_dim)`` from config.json (``num_attention_heads``/``n_head``,
    ``num_key_value_heads`` (default: heads), ``head_dim`` (default: hidden / heads)), or None."""
    config = config or {}
    heads = _positive_int(config, "num_attention_heads", "n_head")
    if heads is None:
        return None
    kv = _positive_int(config, "num_key_value_heads") or heads
    hidden = _positive_int(config, "hidden_size", "n_embd")
    head_dim = _positive_int(config, "head_dim") or (hidden // heads if hidden and hidden % heads == 0 else None)
    return (heads, kv, head_dim) if head_dim else None


def _layout(name: str, component: str, t: torch.Tensor, config: dict, geometry) -> tuple[str, int, int, int] | None:
    """``(kind, axis, n_units, div)`` of one part, or None when it has no units: index i along
    ``axis`` belongs to unit ``i // div`` (heads: div = head_dim; neurons: 1), modulo ``n_units``
    (a fused gate_up: neuron j is rows j and I + j)."""
    conv1d = config.get("model_type") == "gpt2" and bool(_CONV1D.search(name))
    if t.dim() == 1:
        if component in ("attn_o", "mlp_down"):
            return None  # a bias over the output features: no unit owns it
        axis = 0
    elif t.dim() == 2:
        axis = 1 if component in ("attn_o", "mlp_down") else 0
        if conv1d:
            axis = 1 - axis
    else:
        return None
    size = t.shape[axis]
    if component in HEAD_COMPONENTS:
        if geometry is None:
            return None
        heads, kv, head_dim = geometry
        n = kv if component in ("attn_k", "attn_v") else heads
        if size != n * head_dim:
            return None
        return "head", axis, n, head_dim
    if component in NEURON_COMPONENTS:
        if component == "mlp_gate_up":
            if size % 2:
                return None
            return "neuron", axis, size // 2, 1
        return "neuron", axis, size, 1
    return None


def unit_stats(
    name: str, a: torch.Tensor, b: torch.Tensor, config: dict | None = None, thresholds=(DEFAULT_THRESHOLD,)
):
    """One row (a dict of :func:`unit_columns`) per head or neuron of tensor ``name`` between
    versions ``a`` and ``b`` (same shape); ``[]`` for a tensor without units. See the module docstring.
    The rows of :func:`unit_frame`, as Python values (``None`` for no layer or expert)."""
    return unit_frame(name, a, b, config, thresholds).to_dict("records")


def unit_frame(
    name: str, a: torch.Tensor, b: torch.Tensor, config: dict | None = None, thresholds=(DEFAULT_THRESHOLD,)
) -> pd.DataFrame:
    """:func:`unit_stats` as a table: one row per head or neuron (columns of :func:`unit_columns`)."""
    return pd.DataFrame(unit_arrays(name, a, b, config, thresholds))


def unit_arrays(
    name: str,
    a: torch.Tensor,
    b: torch.Tensor,
    config: dict | None = None,
    thresholds=(DEFAULT_THRESHOLD,),
    fused_min_numel: int | None = None,
    row_stats: list | None = None,
) -> dict[str, np.ndarray]:
    """The columns of :func:`unit_frame` as numpy arrays (``name``, ``layer``, ``component``,
    ``expert``, ``kind``: object arrays; ``layer``/``expert`` None where there is none), built
    column by column: an MLP's thousands of neurons cost no Python loop per unit, and the audit
    joins the arrays of every tensor into one table at the end (:func:`join_arrays`).
    ``fused_min_numel``: as :class:`~prism_analysis.weights.update.UpdateStats`' (the audit passes
    :func:`~prism_analysis.weights.update.fused_min_numel_for` of the checkpoint). ``row_stats``:
    per part (in the order of :func:`prism_analysis.components.parts`), the per-row statistics the
    audit's own pass already gave (``UpdateStats.unit_rows``) or None; a part whose units are rows
    uses them instead of reading its tensors again."""
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ ({tuple(a.shape)} vs {tuple(b.shape)})")
    config = config or {}
    geometry = head_geometry(config)
    thresholds = tuple(float(t) for t in thresholds)
    parts_ = []
    for i, part in enumerate(parts(name, tuple(a.shape), config)):
        pa, pb = part.take(a), part.take(b)
        layout = _layout(name, part.component, pa, config, geometry)
        if layout is None:
            continue
        kind, axis, n_units, div = layout
        given = row_stats[i] if row_stats is not None and axis == 0 and len(thresholds) == 1 else None
        if given is not None and given.shape[0] == pa.shape[0]:
            stats = given  # the audit pass's own rows: this part is not read again
        else:
            stats = _row_stats(pa, pb, axis, thresholds, fused_min_numel)  # (size along axis, k) float64
        size = pa.shape[axis]
        if size == n_units:  # a neuron per index: the rows are the units
            summed = stats.numpy()
        else:  # heads (head_dim rows each), fused gate_up (rows j and I + j): add rows in order
            units = (torch.arange(size) // div) % n_units
            summed = torch.zeros((n_units, stats.shape[1]), dtype=torch.float64).index_add_(0, units, stats).numpy()
        counts = np.full(n_units, pa.numel() // n_units, dtype=np.int64)  # every unit has as many rows
        constant = {"name": name, "layer": layer_index(name), "component": part.component, "expert": part.expert}
        # np.repeat of a one-element object array: ~10x faster than np.full with dtype=object
        columns = {k: np.repeat(_one(v), n_units) for k, v in (constant | {"kind": kind}).items()}
        columns |= {
            "unit": np.arange(n_units, dtype=np.int64),
            "numel": counts,
            "sum_sq_diff": summed[:, 0],
            "sum_sq_a": summed[:, 1],
            "n_equal": summed[:, 2].astype(np.int64),
            "n_nonfinite": summed[:, 3].astype(np.int64),
        }
        columns |= {
            f"n_changed_{threshold_key(t)}": summed[:, 4 + i].astype(np.int64) for i, t in enumerate(thresholds)
        }
        parts_.append(columns)
    if not parts_:
        return {c: np.empty(0, dtype=object if c in _OBJECT_COLUMNS else np.float64) for c in unit_columns(thresholds)}
    return join_arrays(parts_)


#: the columns of :func:`unit_arrays` that hold Python objects (strings, ints or None)
_OBJECT_COLUMNS = ("name", "layer", "component", "expert", "kind")


def join_arrays(arrays: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Rows of several :func:`unit_arrays` (same columns) one after the other."""
    if len(arrays) == 1:
        return arrays[0]
    return {c: np.concatenate([a[c] for a in arrays]) for c in arrays[0]}


def _row_stats(a: torch.Tensor, b: torch.Tensor, axis: int, thresholds, fused_min_numel=None) -> torch.Tensor:
    """Per index along ``axis``: sum_sq_diff, sum_sq_a, n_equal, n_nonfinite, n_changed per tau
    (float64 on the CPU; counts exact below 2^53), computed in row chunks."""
    if _fused(a, b, axis, thresholds, fused_min_numel):
        from .fused import unit_row_stats

        return unit_row_stats(a, b, axis, thresholds[0])
    a2 = a.movedim(axis, 0).reshape(a.shape[axis], -1)
    b2 = b.movedim(axis, 0).reshape(b.shape[axis], -1)
    step = max(1, CHUNK_ELEMENTS // max(a2.shape[1], 1))
    out = []
    for r0 in range(0, a2.shape[0], step):
        ca, cb = a2[r0 : r0 + step], b2[r0 : r0 + step]
        x, y = ca.double(), cb.double()
        # across dtypes: equal values, and NaN -> NaN (as promote() rules for UpdateStats)
        equal = bits_equal(ca, cb) if ca.dtype == cb.dtype else (x == y) | (x.isnan() & y.isnan())
        finite = torch.isfinite(x) & torch.isfinite(y)
        d = torch.where(finite, y - x, 0.0)
        x0 = torch.where(finite, x, 0.0)
        cols = [(d * d).sum(1), (x0 * x0).sum(1), equal.sum(1).double(), (~finite).sum(1).double()]
        cols += [changed_mask(x, y, t, equal).sum(1).double() for t in thresholds]
        out.append(torch.stack(cols, 1).cpu())
    return torch.cat(out)


def _fused(a: torch.Tensor, b: torch.Tensor, axis: int, thresholds, fused_min_numel=None) -> bool:
    """Whether :func:`_row_stats` runs the fused CPU kernel
    (:func:`prism_analysis.weights.fused.unit_row_stats`): large 2-D CPU tensors of one dtype of
    bf16/fp16/fp32, C-contiguous, one threshold (the audit's); else the torch path, with the same
    counts and sums equal to ~1e-15 relative."""
    from .update import use_fused

    one_layout = a.dim() == 2 and axis in (0, 1) and a.is_contiguous() and b.is_contiguous()
    return len(thresholds) == 1 and one_layout and use_fused(a, b, min_numel=fused_min_numel)


def normalized_l2_of(sum_sq_diff: np.ndarray, sum_sq_a: np.ndarray) -> np.ndarray:
    """:func:`~prism_analysis.metrics.normalized_l2` (Eq. 1) of many units at once, element for
    element the same float64 values: ``sqrt(d) / sqrt(a)`` where a > 0, else 0 (d == 0) or inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.sqrt(sum_sq_diff) / np.sqrt(sum_sq_a)
    return np.where(sum_sq_a > 0, ratio, np.where(sum_sq_diff == 0, 0.0, np.inf))


def unit_table(rows, tau: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """The rows of :func:`unit_stats`, a table of :func:`unit_frame` rows, or the columns of
    :func:`unit_arrays` / :func:`join_arrays` (any number of tensors), added up per unit (layer,
    component, expert, kind, unit) in row order, with ``normalized_l2`` and ``fraction_changed_<tau>``;
    largest normalized L2 first (ties: layer, component, expert, unit; no layer or expert first).

    Grouped in numpy (one sort of the units' keys and a weighted ``bincount`` per column): an
    MLP's tens of thousands of neurons never go through pandas' group-by. The same table as
    pandas' group-by; its sums are the same bits for units with one or two rows (a weight, and
    its bias), the case of every checkpoint (pandas adds longer groups with Kahan summation)."""
    if isinstance(rows, dict):
        cols = rows
    else:
        df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        cols = {c: df[c].to_numpy() for c in df.columns}
    keys = ["layer", "component", "expert", "kind", "unit"]
    if not len(cols.get("unit", ())):
        return pd.DataFrame(columns=[*keys, "numel", "sum_sq_diff", "sum_sq_a", "normalized_l2"])
    # each key as sorted codes (no layer / expert: code 0, before every number), combined in key order
    codes, uniques = [], []
    for key in keys:
        code, unique = pd.factorize(cols[key], sort=True)  # None -> -1
        codes.append(code + 1)
        uniques.append(unique)
    group_key = np.ravel_multi_index(codes, [len(u) + 1 for u in uniques])
    groups, first, inverse = np.unique(group_key, return_index=True, return_inverse=True)
    out = {}
    for key, code, unique in zip(keys, codes, uniques):
        picked = code[first] - 1
        if key in ("layer", "expert"):
            has = picked >= 0
            values = np.zeros(len(picked), dtype=np.int64)
            values[has] = np.asarray(unique, dtype=np.int64)[picked[has]]
            out[key] = pd.array(values, dtype="Int64")
            out[key][~has] = pd.NA
        elif key == "unit":
            out[key] = np.asarray(unique)[picked]
        else:  # strings: the few unique values as pandas stores them (its inferred dtype), taken per row
            out[key] = pd.Series(np.asarray(unique, dtype=object)).array.take(picked)
    numeric = [c for c in cols if c not in (*keys, "name")]
    for c in numeric:
        values = np.asarray(cols[c])
        summed = np.bincount(inverse, weights=values.astype(np.float64), minlength=len(groups))
        out[c] = summed.astype(np.int64) if values.dtype.kind in "iu" else summed  # counts: exact below 2^53
    out["normalized_l2"] = normalized_l2_of(out["sum_sq_diff"], out["sum_sq_a"])
    changed = f"n_changed_{threshold_key(tau)}"
    if changed in out:
        out[f"fraction_changed_{threshold_key(tau)}"] = out[changed] / out["numel"]
    # largest first, ties in key order (a stable sort of the negated values; NaN, if any, last):
    # pandas' sort_values(ascending=False, kind="stable") order, on the arrays before the table
    order = np.argsort(-out["normalized_l2"], kind="stable")
    return pd.DataFrame({c: v[order] for c, v in out.items()})


def _one(value) -> np.ndarray:
    """A one-element object array holding ``value`` (a string, an int or None)."""
    out = np.empty(1, dtype=object)
    out[0] = value
    return out
