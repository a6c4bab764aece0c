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

from .. import distributed
from ..accumulator import group_stats
from ..checkpoints.align import record
from ..checkpoints.hub import HubReference
from ..checkpoints.opening import open_aligned
from ..checkpoints.run_manifest import discover
from ..devices import WEIGHTS_DEVICE, resolve_device
from ..errors import PARAM, PrismError
from ..metrics import DEFAULT_THRESHOLD, DEFAULT_THRESHOLDS, changed_column
from ..outputs import atomic_output_dir, write_json
from .measure import Statistic, measure_aligned
from .overlap import OverlapStats
from .update import UpdateStats

#: Columns of the tidy trajectory table (``prism trajectory`` and live tracking write the same).
COLUMNS = ["step", "component", "metric", "value"]
#: The version of trajectory's outputs (summary.json keys, trajectory.csv columns; live tracking
#: writes the same); see CHANGELOG.md.
SCHEMA = "prism.trajectory/2"


def by_component(groups: dict) -> list:
    """``[("total", acc), (component, acc), ...]`` of :func:`~prism_analysis.accumulator.group_stats`."""
    return [("total", groups["total"]), *groups["components"].items()]


def update_rows(step: int, component: str, stats: UpdateStats, prefix: str = "") -> list[tuple]:
    """Tidy rows of one step and component from UpdateStats vs the reference: ``normalized_l2``,
    ``fraction_changed_<tau>`` for every threshold and ``fraction_equal`` (names prefixed with
    ``prefix``, e.g. ``"k1_"`` for the k-step sparsity of live tracking)."""
    m = stats.compute()
    rows = [(step, component, prefix + "normalized_l2", m["normalized_l2"])]
    rows += [(step, component, prefix + changed_column(float(k)), v) for k, v in m["fraction_changed"].items()]
    rows.append((step, component, prefix + "fraction_equal", m["fraction_equal"]))
    return rows


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
    disk: dict | None = None  # with --evict: bytes per checkpoint, the peak held at once, what was evicted
    run: dict | None = None  # a distributed run: world_size, bytes_per_rank
    #: what alignment did (:func:`prism_analysis.checkpoints.align.record`; keys: step indices)
    aligned: dict | None = None

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
        return (
            {
                "schema": SCHEMA,
                "name": self.name,
                "steps": self.steps,
                "paths": self.paths,
                "tau": self.tau,
                "total": block("total"),
                "components": {c: block(c) for c in comps},
            }
            | (self.aligned or {"names": {}, "folded": {}, "resized": []})
            | ({"disk": self.disk} if self.disk else {})
            | (self.run or {})
        )


def analyse_trajectory(
    source,
    thresholds=DEFAULT_THRESHOLDS,
    tau: float = DEFAULT_THRESHOLD,
    device=None,
    progress: bool = True,
    allow_pickle: bool = False,
    name: str | None = None,
    evict: bool = False,
    config=None,
) -> Trajectory:
    """Front-loading statistics of every checkpoint of ``source`` against the first and the last.

    ``source``: a run directory or manifest, or a list of checkpoints in order (paths or Hub
    references). ``evict``: for a trajectory of Hub revisions or folders, fetch one checkpoint at a
    time and drop it from the Hub cache after use, unless it is the first or the last or was cached
    before (peak disk: three checkpoints, recorded in ``Trajectory.disk``). ``config``: config.json
    for torch.distributed.checkpoint steps, which carry none.
    """
    entries = discover(source)
    steps = [s for s, _ in entries]
    if len(set(steps)) != len(steps):
        raise PrismError(f"duplicate steps in the trajectory: {steps}", str(entries[0][1]))
    refs = [p for _, p in entries]
    thresholds = tuple(sorted(set(thresholds) | {tau}))
    stats = _StepStats(thresholds, tau, resolve_device(device, default=WEIGHTS_DEVICE), progress)
    stats.steps = steps
    if evict:
        if distributed.world_size() > 1:
            raise PrismError(
                f"{PARAM} fetches one checkpoint at a time for one process; run it without a launcher", param="evict"
            )
        disk, run = _one_checkpoint_at_a_time(refs, stats, allow_pickle, config), {}
    else:
        disk, run = None, _each_file_once(refs, stats, allow_pickle, config)
    rows = []
    for i, step in enumerate(steps):
        gu = group_stats(stats.update[i], stats.new_update)
        go = group_stats(stats.overlap[i], stats.new_overlap)
        for comp, u in by_component(gu):
            rows += update_rows(step, comp, u)
            mo = (go["total"] if comp == "total" else go["components"][comp]).compute()
            rows.append((step, comp, "cosine_to_final", mo["cosine"]))
            rows.append((step, comp, "share_of_final_changed", mo["overlap_1_in_2"]))
    table = pd.DataFrame(rows, columns=COLUMNS)
    single = source[0] if isinstance(source, (list, tuple)) and len(source) == 1 else source
    source_dir = None if isinstance(single, (list, tuple)) else str(single)
    if name is None:
        hub_refs = [r for r in refs if isinstance(r, HubReference)]
        name = Path(source_dir).name if source_dir else hub_refs[0].repo_id if hub_refs else "trajectory"
    return Trajectory(name, steps, [str(p) for p in refs], tau, table, source_dir, disk, run, stats.aligned)


class _StepStats:
    """Per step index and tensor name, by part (fused q/k/v, experts): UpdateStats(theta_0, theta_t)
    and OverlapStats(t vs T), filled by :func:`measure_aligned` passes over the checkpoints."""

    def __init__(self, thresholds, tau, device, progress: bool):
        self.thresholds, self.tau, self.device, self.progress = thresholds, tau, device, progress
        self.update: dict[int, dict] = {}
        self.overlap: dict[int, dict] = {}
        self.steps: list[int] = []
        self.aligned: dict | None = None

    def record(self, ckpts, al, order: list[int]) -> None:
        """What alignment did, keyed by step (``order``: the step index of each of ``ckpts``); steps
        recorded before keep their record (a middle checkpoint is aligned to theta_0 and theta_T
        again, one at a time, with ``--evict``)."""
        keys = [str(self.steps[i]) for i in order]
        rec = record(ckpts, al, keys)
        agg = self.aligned or {"names": {}, "folded": {}, "resized": []}
        for part in ("names", "folded"):
            for k, v in rec[part].items():
                agg[part].setdefault(k, v)
        entries = {e["name"]: e for e in agg["resized"]}
        for e in rec["resized"]:
            if e["name"] not in entries:
                entries[e["name"]] = e
                continue
            old = entries[e["name"]]
            for k, v in e["rows"].items():
                old["rows"].setdefault(k, v)
            old["rows_compared"] = min(old["rows_compared"], e["rows_compared"])
        in_order = [str(s) for s in self.steps]
        for e in entries.values():
            e["rows"] = {k: e["rows"][k] for k in in_order if k in e["rows"]}
        agg["resized"] = list(entries.values())
        for part in ("names", "folded"):
            agg[part] = {k: agg[part][k] for k in in_order if k in agg[part]}
        self.aligned = agg

    def new_update(self) -> UpdateStats:
        return UpdateStats(self.thresholds)

    def new_overlap(self) -> OverlapStats:
        return OverlapStats(self.tau)

    def measure(self, ckpts, names: list[str], steps: dict[int, int], desc: str) -> dict:
        """One pass over ``ckpts`` (the first is theta_0, the last theta_T): for every ``steps`` item
        (step index -> the checkpoint holding theta_t, in the order to read them) the statistics of
        that step, stored under its index. Returns the record of a distributed run."""
        last = len(ckpts) - 1
        statistics = []
        for i, c in steps.items():
            statistics.append(Statistic(f"update_{i}", self.new_update, (0, c)))
            statistics.append(Statistic(f"overlap_{i}", self.new_overlap, (0, c, 0, last)))
        m = measure_aligned(ckpts, names, statistics, device=self.device, desc=desc, progress=self.progress, prefetch=2)
        for i in steps:
            self.update[i], self.overlap[i] = m.parts[f"update_{i}"], m.parts[f"overlap_{i}"]
        return m.run


def _each_file_once(refs, stats: _StepStats, allow_pickle: bool, config=None) -> dict:
    """Tensor by tensor across all checkpoints: theta_0 and theta_T of a name stay loaded while the
    middle checkpoints stream past, so each file is read once (every checkpoint must be local or
    downloaded first).

    Under a launcher, each rank takes a byte-balanced share of the tensor names (a name's bytes
    summed over all checkpoints, :func:`prism_analysis.distributed.share`) and the statistics are
    stored in the single-process order. Returns the record of a distributed run (empty otherwise).
    """
    # the names compared are those theta_0 and theta_T share; every middle checkpoint must have them
    opened, al = open_aligned([refs[0], refs[-1], *refs[1:-1]], allow_pickle, config, progress=stats.progress)
    ckpts = [opened[0], *opened[2:], opened[1]]
    T = len(ckpts) - 1
    stats.record(opened, al, [0, T, *range(1, T)])
    return stats.measure(ckpts, al.common, {i: i for i in [0, T, *range(1, T)]}, "trajectory")


def _one_checkpoint_at_a_time(refs, stats: _StepStats, allow_pickle: bool, config=None) -> dict:
    """Checkpoint by checkpoint: theta_0 and theta_T are fetched once and kept; each middle one is
    fetched, compared with both, and evicted from the Hub cache when this call downloaded it.
    Returns the disk record: bytes of each checkpoint, the peak held at once, what was evicted."""
    from ..checkpoints import hub

    fresh = {i: isinstance(r, HubReference) and not hub.is_cached(r) for i, r in enumerate(refs)}
    (first, last), al = open_aligned([refs[0], refs[-1]], allow_pickle, config, progress=stats.progress)
    T = len(refs) - 1
    stats.record([first, last], al, [0, T])
    sizes = {0: first.nbytes, T: last.nbytes}
    peak, evicted = first.nbytes + last.nbytes, []
    stats.measure([first, last], al.common, {0: 0, T: 1}, "theta_0, theta_T")
    for i in range(1, T):
        (_, _, mid), al_i = open_aligned([first, last, refs[i]], allow_pickle, config, progress=stats.progress)
        stats.record([first, last, mid], al_i, [0, T, i])
        sizes[i] = mid.nbytes
        peak = max(peak, first.nbytes + last.nbytes + mid.nbytes)
        stats.measure([first, mid, last], al.common, {i: 1}, f"step {i}")
        if fresh[i]:
            hub.evict(refs[i])
            evicted.append(str(refs[i]))
    return {"evict": True, "checkpoint_bytes": [sizes[i] for i in range(T + 1)], "peak_bytes": peak, "evicted": evicted}


def save_trajectory(out, main: Trajectory, compare: Trajectory | None = None) -> None:
    """Write trajectory.csv, summary.json and the F16 figure (and the compared run) atomically."""
    from ..figures import plot_trajectory

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
