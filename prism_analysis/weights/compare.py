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

from ..checkpoints.align import record as alignment_record
from ..checkpoints.opening import open_aligned
from ..devices import WEIGHTS_DEVICE, resolve_device
from ..metrics import DEFAULT_THRESHOLD, DEFAULT_THRESHOLDS, threshold_key
from ..outputs import atomic_output_dir, write_json
from .measure import Statistic, measure_aligned
from .overlap import OverlapStats
from .update import UpdateStats

#: The version of compare's outputs (summary.json keys, compare.csv columns); see CHANGELOG.md.
SCHEMA = "prism.compare/2"


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

    def new_update():
        return UpdateStats(thresholds)

    # each rank measures its share of the tensors; grouped in the order of al.common, as the audit
    m = measure_aligned(
        ckpts,
        al.common,
        [
            Statistic("overlap", lambda: OverlapStats(tau), (0, 1, 2, 3)),
            Statistic("u1", new_update, (0, 1)),
            Statistic("u2", new_update, (2, 3)),
        ],
        device=resolve_device(device, default=WEIGHTS_DEVICE),
        desc="compare",
        progress=progress,
    )
    g_ov, g1, g2 = m.grouped("overlap"), m.grouped("u1"), m.grouped("u2")
    key = threshold_key(tau)
    rows, summary = (
        [],
        {
            "schema": SCHEMA,
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
    summary |= alignment_record(ckpts, al, ["a1", "b1", "a2", "b2"])
    return Comparison(paths, tau, pd.DataFrame(rows), summary | m.run)
