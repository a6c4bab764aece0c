"""Front-loading over a checkpoint trajectory: PRISM metric 4, figure 16.

For checkpoints theta_0, ..., theta_T (e.g. every few RL steps), per component and for the whole
model, at every saved step t:

- C(t) = ||theta_t - theta_0|| / ||theta_0||, the cumulative normalized L2 (Eq. 1 against theta_0);
- the fraction of weights changed vs theta_0 at every threshold of the sweep;
- cosine(theta_t - theta_0, theta_T - theta_0): is the early update already pointing where the
  run ends up?
- the share of the final changed set (at tau, vs theta_0) that is already changed at t.

Summaries: t50 and t80 = the first saved step with C(t) >= 50% / 80% of C(T).

Each checkpoint is read once for the whole analysis: tensors are streamed name by name across the
sequence (theta_0 and theta_T stay loaded for the current name; the others pass one at a time).

Inputs: a directory holding a ``trajectory.json`` manifest (written by ``prism train`` / ``prism rl``:
``{"parent": ..., "steps": [{"step": int, "path": "<relative dir>"}, ...]}``; without a step 0
the parent is theta_0), or a directory of step directories (``step_000020``, ``checkpoint-20``,
``global_step20``, ...), or an explicit list of checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .accumulator import group_stats
from .checkpoint_reader import open_aligned, read_ahead
from .compare import OverlapStats
from .devices import resolve_device
from .errors import PrismError
from .metrics import DEFAULT_THRESHOLD, DEFAULT_THRESHOLDS, changed_column
from .outputs import atomic_output_dir, write_json
from .run_manifest import discover
from .weights import UpdateStats


def first_step_reaching(steps: list[int], values: list[float], fraction: float) -> int | None:
    """First step whose value is >= ``fraction`` of the last value (t50: 0.5, t80: 0.8)."""
    if not values or not math.isfinite(values[-1]):
        return None
    target = fraction * values[-1]
    for s, v in zip(steps, values):
        if v >= target:
            return s
    return steps[-1]


@dataclass
class Trajectory:
    """Result of :func:`analyse_trajectory`: tidy table (step, component, metric, value) + summary."""

    name: str
    steps: list[int]
    paths: list[str]
    tau: float
    table: pd.DataFrame
    source: str | None = None  # the run directory, when there is one

    def series(self, component: str, metric: str) -> list[float]:
        t = self.table
        sel = t[(t["component"] == component) & (t["metric"] == metric)].sort_values("step")
        return sel["value"].tolist()

    def format(self) -> str:
        """t50, t80 and the final L2 and % changed of every component, as a small text table."""
        s = self.summary()
        lines = [
            f"{self.name}: steps {s['steps'][0]}..{s['steps'][-1]} ({len(s['steps'])} checkpoints)",
            f"  {'component':<16}{'t50':>7}{'t80':>7}{'final L2':>12}{'final %chg':>12}",
        ]
        for comp, b in [("total", s["total"]), *s["components"].items()]:
            lines.append(
                f"  {comp:<16}{b['t50']!s:>7}{b['t80']!s:>7}{b['final_normalized_l2']:>12.4g}"
                f"{100 * b['final_fraction_changed']:>12.2f}"
            )
        return "\n".join(lines)

    def summary(self) -> dict:
        key = changed_column(self.tau)

        def block(comp):
            c = self.series(comp, "normalized_l2")
            f = self.series(comp, key)
            return {
                "t50": first_step_reaching(self.steps, c, 0.5),
                "t80": first_step_reaching(self.steps, c, 0.8),
                "final_normalized_l2": c[-1],
                "final_fraction_changed": f[-1],
            }

        comps = [c for c in self.table["component"].unique() if c != "total"]
        return {
            "name": self.name,
            "steps": self.steps,
            "paths": self.paths,
            "tau": self.tau,
            "total": block("total"),
            "components": {c: block(c) for c in comps},
        }


def analyse_trajectory(
    source,
    thresholds=DEFAULT_THRESHOLDS,
    tau: float = DEFAULT_THRESHOLD,
    device=None,
    progress: bool = True,
    allow_pickle: bool = False,
    name: str | None = None,
    config=None,
) -> Trajectory:
    """Front-loading statistics of every checkpoint of ``source`` against the first and the last.

    ``config``: config.json for torch.distributed.checkpoint steps, which carry none.
    """
    entries = discover(source)
    steps = [s for s, _ in entries]
    if len(set(steps)) != len(steps):
        raise PrismError(f"duplicate steps in the trajectory: {steps}", entries[0][1])
    paths = [p for _, p in entries]
    # the names compared are those theta_0 and theta_T share; every middle checkpoint must have them
    opened, al = open_aligned([paths[0], paths[-1], *paths[1:-1]], allow_pickle, config)
    ckpts = [opened[0], *opened[2:], opened[1]]
    thresholds = tuple(sorted(set(thresholds) | {tau}))
    dev = resolve_device(device)
    T = len(ckpts) - 1
    upd = [{} for _ in ckpts]  # step index -> tensor name -> UpdateStats(theta_0, theta_t)
    ovl = [{} for _ in ckpts]  # step index -> tensor name -> OverlapStats(t vs T)
    # per tensor name: theta_0 and theta_T first (they stay loaded), then the middle checkpoints
    order = [0, T, *range(1, T)]
    tensors = read_ahead(((ckpts[i], n) for n in al.common for i in order), desc="trajectory", progress=progress)
    for tensor_name in al.common:
        first, last = next(tensors).to(dev), next(tensors).to(dev)
        for i in order:
            theta = first if i == 0 else last if i == T else next(tensors).to(dev)
            upd[i][tensor_name] = UpdateStats(thresholds).update(first, theta)
            ovl[i][tensor_name] = OverlapStats(tau).update(first, theta, first, last)
            del theta
        del first, last
    rows = []
    for i, step in enumerate(steps):
        gu = group_stats(upd[i], lambda: UpdateStats(thresholds))
        go = group_stats(ovl[i], lambda: OverlapStats(tau))
        for comp, u, o in [("total", gu["total"], go["total"])] + [
            (c, gu["components"][c], go["components"][c]) for c in gu["components"]
        ]:
            m, mo = u.compute(), o.compute()
            rows.append((step, comp, "normalized_l2", m["normalized_l2"]))
            for k, v in m["fraction_changed"].items():
                rows.append((step, comp, changed_column(float(k)), v))
            rows.append((step, comp, "fraction_equal", m["fraction_equal"]))
            rows.append((step, comp, "cosine_to_final", mo["cosine"]))
            rows.append((step, comp, "share_of_final_changed", mo["overlap_1_in_2"]))
    table = pd.DataFrame(rows, columns=["step", "component", "metric", "value"])
    single = source[0] if isinstance(source, (list, tuple)) and len(source) == 1 else source
    source_dir = None if isinstance(single, (list, tuple)) else str(single)
    if name is None:
        name = Path(source_dir).name if source_dir else "trajectory"
    return Trajectory(name, steps, [str(p) for p in paths], tau, table, source_dir)


def save_trajectory(out, main: Trajectory, compare: Trajectory | None = None) -> None:
    """Write trajectory.csv, summary.json and the F16 figure (and the compared run) atomically."""
    from .figures import plot_trajectory

    runs = [main] + ([compare] if compare is not None else [])
    inputs = [p for t in runs for p in t.paths] + [t.source for t in runs]
    with atomic_output_dir(out, "trajectory", inputs) as tmp:
        main.table.to_csv(tmp / "trajectory.csv", index=False)
        summary = main.summary()
        if compare is not None:
            compare.table.to_csv(tmp / "trajectory_compare.csv", index=False)
            summary["compare"] = compare.summary()
        write_json(tmp / "summary.json", summary)
        plot_trajectory(
            main.table,
            tmp / "trajectory",
            tau=main.tau,
            label=main.name,
            compare=None if compare is None else compare.table,
            compare_label=None if compare is None else compare.name,
        )
