"""Two updates side by side: PRISM Eq. 2 (direction), T23/F26 (where), T13/F12 (MC vs MCS).

For updates U1 = B1 - A1 and U2 = B2 - A2 of the same architecture (e.g. base->RL and mid->RL, or
base->MC and base->MCS), per component and for the whole model:

- cosine(U1, U2) = <U1, U2> / (||U1|| ||U2||)                                    (Eq. 2)
- normalized L2 of each, ||Ui|| / ||Ai|| (Eq. 1), and their ratio;
- fraction changed of each at tau (|d| > tau |a|) and the difference in percentage points;
- changed masks M1, M2 at tau: Jaccard |M1 & M2| / |M1 | M2|, the Jaccard expected by chance for
  independent masks of the same densities, their ratio, and the one-sided overlaps
  |M1 & M2| / |M1| and |M1 & M2| / |M2|.

The chance overlap is computed tensor by tensor and summed (E|M1 & M2| = sum_t n_t p1_t p2_t), so a
group mixing dense and sparse tensors is not credited with overlap it gets from density alone. A
tensor that :func:`prism_analysis.components.parts` splits (fused q/k/v, a stack of experts) counts
part by part, so components are grouped exactly as the audit groups them.
Sums are float64; :class:`OverlapStats` follows update / compute / merge like
:class:`prism_analysis.weights.audit.UpdateStats`, which supplies the per-update L2 and fractions.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import pandas as pd
import torch

from .. import distributed
from ..accumulator import Accumulator, group_stats, part_stats, state
from ..checkpoints.opening import open_aligned
from ..checkpoints.stream import stream_aligned
from ..devices import resolve_device
from ..metrics import DEFAULT_THRESHOLD, DEFAULT_THRESHOLDS, bits_equal, changed_mask, threshold_key
from ..outputs import atomic_output_dir, write_json
from .audit import CHUNK, UpdateStats, as_float, ordered_dot, promote, use_fused


@dataclass
class OverlapStats(Accumulator):
    """Streaming statistics of two updates d1 = b1 - a1 and d2 = b2 - a2 over tensor pairs.

    Changed masks M1, M2 follow :mod:`prism_analysis.metrics` (the rule UpdateStats uses); the sums
    leave out elements where d1 or d2 is not finite.
    """

    tau: float = DEFAULT_THRESHOLD
    numel: int = state(0)
    dot: float = state(0.0)  # <d1, d2>
    sq1: float = state(0.0)  # ||d1||^2
    sq2: float = state(0.0)  # ||d2||^2
    n1: int = state(0)  # |M1|
    n2: int = state(0)  # |M2|
    n12: int = state(0)  # |M1 & M2|
    expected_n12: float = state(0.0)  # sum over tensors of n_t p1_t p2_t

    def update(self, a1, b1, a2, b2) -> OverlapStats:
        """Add one tensor of each update (all four of one shape; a pair of different dtypes is
        compared in the wider one, as UpdateStats does)."""
        a1, b1, a2, b2 = (as_float(t).reshape(-1) for t in (a1, b1, a2, b2))
        a1, b1 = promote(a1, b1)
        a2, b2 = promote(a2, b2)
        n = a1.numel()
        if use_fused(a1, b1, a2, b2):
            from . import fused

            acc, cnt = fused.overlap_stats(a1, b1, a2, b2, self.tau)
        else:
            acc, cnt = _torch_overlap(a1, b1, a2, b2, self.tau)
        return self.add(
            {
                "numel": n,
                "dot": acc[0],
                "sq1": acc[1],
                "sq2": acc[2],
                "n1": cnt[0],
                "n2": cnt[1],
                "n12": cnt[2],
                "expected_n12": cnt[0] * cnt[1] / n if n else 0.0,
            }
        )

    def compute(self) -> dict:
        union = self.n1 + self.n2 - self.n12
        exp_union = self.n1 + self.n2 - self.expected_n12
        jac = self.n12 / union if union else math.nan
        chance = self.expected_n12 / exp_union if exp_union else math.nan
        return {
            "cosine": self.dot / math.sqrt(self.sq1 * self.sq2) if self.sq1 > 0 and self.sq2 > 0 else math.nan,
            "jaccard": jac,
            "jaccard_chance": chance,
            "jaccard_over_chance": jac / chance if chance and not math.isnan(chance) else math.nan,
            "overlap_1_in_2": self.n12 / self.n2 if self.n2 else math.nan,  # share of M2 also in M1
            "overlap_2_in_1": self.n12 / self.n1 if self.n1 else math.nan,  # share of M1 also in M2
        }


def _torch_overlap(a1, b1, a2, b2, tau: float) -> tuple[list[float], list[int]]:
    """Torch path (GPU, other dtypes, small tensors): the results of ``fused.overlap_stats``."""
    acc = torch.zeros(3, dtype=torch.float64, device=a1.device)
    cnt = torch.zeros(3, dtype=torch.int64, device=a1.device)
    for s in range(0, a1.numel(), CHUNK):
        x1, y1, x2, y2 = (t[s : s + CHUNK] for t in (a1, b1, a2, b2))
        m1 = changed_mask(x1.double(), y1.double(), tau, bits_equal(x1, y1))
        m2 = changed_mask(x2.double(), y2.double(), tau, bits_equal(x2, y2))
        d1, d2 = y1.double() - x1.double(), y2.double() - x2.double()
        ok = torch.isfinite(d1) & torch.isfinite(d2)
        d1, d2 = torch.where(ok, d1, 0), torch.where(ok, d2, 0)
        acc[0] += ordered_dot(d1, d2)
        acc[1] += ordered_dot(d1, d1)
        acc[2] += ordered_dot(d2, d2)
        cnt[0] += m1.sum()
        cnt[1] += m2.sum()
        cnt[2] += (m1 & m2).sum()
    return acc.tolist(), cnt.tolist()


@dataclass
class Comparison:
    """Result of :func:`compare_updates`: a tidy table and the summary record."""

    paths: dict
    tau: float
    table: pd.DataFrame  # one row per group ("total" and each component)
    summary_dict: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return self.summary_dict

    def save(self, out: str | os.PathLike) -> None:
        from ..figures import plot_compare

        inputs = [self.paths[k] for k in ("a1", "b1", "a2", "b2")]
        with atomic_output_dir(out, "compare", inputs) as tmp:
            self.table.to_csv(tmp / "compare.csv", index=False)
            write_json(tmp / "summary.json", self.summary_dict)
            plot_compare(
                self.table,
                tmp / "compare_components",
                tau=self.tau,
                labels=(self.paths["label_1"], self.paths["label_2"]),
            )

    def format(self) -> str:
        t = self.table
        lines = [
            f"U1 = {self.paths['b1']} - {self.paths['a1']}",
            f"U2 = {self.paths['b2']} - {self.paths['a2']}",
            f"threshold tau = {100 * self.tau:g}%",
            "",
            f"{'group':<16}{'cosine':>9}{'L2 U1':>11}{'L2 U2':>11}{'%chg U1':>9}{'%chg U2':>9}"
            f"{'Jaccard':>9}{'chance':>9}",
        ]
        for _, r in t.iterrows():
            lines.append(
                f"{r['group']:<16}{r['cosine']:>9.4f}{r['normalized_l2_1']:>11.4g}{r['normalized_l2_2']:>11.4g}"
                f"{100 * r['fraction_changed_1']:>9.2f}{100 * r['fraction_changed_2']:>9.2f}"
                f"{r['jaccard']:>9.4f}{r['jaccard_chance']:>9.4f}"
            )
        return "\n".join(lines)


def compare_updates(
    a1,
    b1,
    a2,
    b2,
    tau: float = DEFAULT_THRESHOLD,
    thresholds=DEFAULT_THRESHOLDS,
    device=None,
    progress: bool = True,
    allow_pickle: bool = False,
    labels: tuple[str, str] = ("U1", "U2"),
) -> Comparison:
    """Compare U1 = b1 - a1 with U2 = b2 - a2, streaming the four checkpoints tensor by tensor."""
    ckpts, al = open_aligned([a1, b1, a2, b2], allow_pickle, progress=progress)
    thresholds = tuple(sorted(set(thresholds) | {tau}))
    dev = resolve_device(device)
    config = ckpts[0].config

    def new_overlap():
        return OverlapStats(tau)

    def new_update():
        return UpdateStats(thresholds)

    def measure(names: list[str]) -> dict:  # name -> [(part, statistics)] of the overlap, U1 and U2
        out = {}
        for name, ts in stream_aligned(ckpts, names, desc="compare", progress=progress):
            x1, y1, x2, y2 = (t.to(dev) for t in ts)
            out[name] = (
                part_stats(name, (x1, y1, x2, y2), config, new_overlap),
                part_stats(name, (x1, y1), config, new_update),
                part_stats(name, (x2, y2), config, new_update),
            )
        return out

    # each rank measures its share of the tensors; grouped below in the order of al.common, as the audit
    sizes = [sum(c.info(n).nbytes for c in ckpts) for n in al.common]
    measured, loads = distributed.share(al.common, sizes, measure)
    ov, s1, s2 = ({name: m[k] for name, m in measured.items()} for k in range(3))
    g_ov = group_stats(ov, new_overlap)
    g1 = group_stats(s1, new_update)
    g2 = group_stats(s2, new_update)
    key = threshold_key(tau)
    rows, summary = (
        [],
        {
            "a1": str(a1),
            "b1": str(b1),
            "a2": str(a2),
            "b2": str(b2),
            "tau": tau,
            "labels": list(labels),
            "components": {},
        },
    )

    def record(group, o, u1, u2):
        m1, m2, mo = u1.compute(), u2.compute(), o.compute()
        rec = {
            "cosine": mo["cosine"],
            "normalized_l2_1": m1["normalized_l2"],
            "normalized_l2_2": m2["normalized_l2"],
            "l2_ratio_1_over_2": (m1["normalized_l2"] / m2["normalized_l2"]) if m2["normalized_l2"] else math.nan,
            "fraction_changed_1": m1["fraction_changed"][key],
            "fraction_changed_2": m2["fraction_changed"][key],
            "fraction_changed_diff_pp": 100 * (m1["fraction_changed"][key] - m2["fraction_changed"][key]),
            "jaccard": mo["jaccard"],
            "jaccard_chance": mo["jaccard_chance"],
            "jaccard_over_chance": mo["jaccard_over_chance"],
            "overlap_1_in_2": mo["overlap_1_in_2"],
            "overlap_2_in_1": mo["overlap_2_in_1"],
            "numel": m1["numel"],
            "fraction_changed_sweep_1": m1["fraction_changed"],
            "fraction_changed_sweep_2": m2["fraction_changed"],
        }
        rows.append({"group": group, **{k: v for k, v in rec.items() if not k.startswith("fraction_changed_sweep")}})
        return rec

    summary["total"] = record("total", g_ov["total"], g1["total"], g2["total"])
    for comp in g_ov["components"]:
        summary["components"][comp] = record(
            comp, g_ov["components"][comp], g1["components"][comp], g2["components"][comp]
        )
    paths = {"a1": str(a1), "b1": str(b1), "a2": str(a2), "b2": str(b2), "label_1": labels[0], "label_2": labels[1]}
    return Comparison(paths, tau, pd.DataFrame(rows), summary | distributed.run_record(loads))
