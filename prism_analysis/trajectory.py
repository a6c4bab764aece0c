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

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, align, check_same_architecture, default_device
from .compare import OverlapStats
from .errors import PrismError
from .outputs import atomic_output_dir, write_json
from .weights import DEFAULT_THRESHOLD, DEFAULT_THRESHOLDS, UpdateStats, group_stats, threshold_key

MANIFEST = "trajectory.json"
_STEP_DIR = re.compile(r"^(?:step|checkpoint|ckpt|global_step|iter)[-_]?(\d+)$")


def discover(source) -> list[tuple[int, Path]]:
    """``[(step, checkpoint path), ...]`` sorted by step, from a manifest, a run directory or a list."""
    if isinstance(source, (list, tuple)):
        if len(source) == 1:
            return discover(source[0])
        out = []
        for i, p in enumerate(source):
            m = _STEP_DIR.match(Path(p).name)
            out.append((int(m.group(1)) if m else i, Path(p)))
        return sorted(out, key=lambda x: x[0])
    root = Path(source)
    if not root.exists():
        raise PrismError("no such file or directory", root)
    manifest = root if root.is_file() else root / MANIFEST
    if manifest.is_file():
        return _from_manifest(manifest)
    steps = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir():
            steps.append((int(m.group(1)), child))
    if len(steps) < 2:
        raise PrismError(f"no {MANIFEST} and fewer than two step directories (step_N, checkpoint-N, ...)", root)
    return sorted(steps)


def _from_manifest(manifest: Path) -> list[tuple[int, Path]]:
    try:
        data = json.loads(manifest.read_text())
        entries = [(int(s["step"]), manifest.parent / s["path"]) for s in data["steps"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrismError(f"not a valid trajectory manifest ({e})", manifest) from None
    for step, path in entries:
        if not path.exists():
            raise PrismError(f"step {step} is listed but its checkpoint {path} is missing", manifest)
    entries.sort(key=lambda x: x[0])
    parent = data.get("parent")
    if entries and entries[0][0] != 0 and parent:
        p = Path(parent) if Path(parent).is_absolute() else manifest.parent / parent
        if p.exists():
            entries.insert(0, (0, p))
    if len(entries) < 2:
        raise PrismError("a trajectory needs at least two checkpoints", manifest)
    return entries


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

    def series(self, component: str, metric: str) -> list[float]:
        t = self.table
        sel = t[(t["component"] == component) & (t["metric"] == metric)].sort_values("step")
        return sel["value"].tolist()

    def summary(self) -> dict:
        key = f"fraction_changed_{threshold_key(self.tau)}"

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
) -> Trajectory:
    """Front-loading statistics of every checkpoint of ``source`` against the first and the last."""
    entries = discover(source)
    steps = [s for s, _ in entries]
    if len(set(steps)) != len(steps):
        raise PrismError(f"duplicate steps in the trajectory: {steps}", entries[0][1])
    ckpts = [Checkpoint(p, allow_pickle=allow_pickle) for _, p in entries]
    check_same_architecture(ckpts)
    names = align(ckpts[0], ckpts[-1]).common
    for c in ckpts[1:-1]:
        have = set(align(ckpts[0], c).common)
        missing = [n for n in names if n not in have]
        if missing:
            raise PrismError(f"checkpoint lacks tensor {missing[0]!r} present in the first and last", c.path)
    thresholds = tuple(sorted(set(thresholds) | {tau}))
    dev = torch.device(device) if device is not None else default_device()
    T = len(ckpts) - 1
    upd = [dict() for _ in ckpts]  # step index -> name -> UpdateStats(theta_0, theta_t)
    ovl = [dict() for _ in ckpts]  # step index -> name -> OverlapStats(t vs T)
    total = sum(c.info(n).nbytes for c in ckpts for n in names)
    with tqdm(total=total, unit="B", unit_scale=True, desc="trajectory", disable=not progress, leave=False) as bar:
        for name in names:
            # theta_0 and theta_T for this name stay loaded; the middle checkpoints stream past once
            first, last = ckpts[0].get(name).to(dev), ckpts[-1].get(name).to(dev)
            bar.update(first.nbytes + last.nbytes)
            for i in range(T + 1):
                if i == 0:
                    theta = first
                elif i == T:
                    theta = last
                else:
                    theta = ckpts[i].get(name).to(dev)
                    bar.update(theta.nbytes)
                upd[i][name] = UpdateStats(thresholds).update(first, theta)
                ovl[i][name] = OverlapStats(tau).update(first, theta, first, last)
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
                rows.append((step, comp, f"fraction_changed_{k}", v))
            rows.append((step, comp, "fraction_equal", m["fraction_equal"]))
            rows.append((step, comp, "cosine_to_final", mo["cosine"]))
            rows.append((step, comp, "share_of_final_changed", mo["overlap_1_in_2"]))
    table = pd.DataFrame(rows, columns=["step", "component", "metric", "value"])
    label = name or (Path(source).name if not isinstance(source, (list, tuple)) else "trajectory")
    return Trajectory(label, steps, [str(p) for _, p in entries], tau, table)


def save_trajectory(out, main: Trajectory, compare: Trajectory | None = None) -> None:
    """Write trajectory.csv, summary.json and the F16 figure (and the compared run) atomically."""
    from .figures import plot_trajectory

    with atomic_output_dir(out) as tmp:
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
