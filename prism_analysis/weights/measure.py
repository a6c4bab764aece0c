"""The one loop of every weight analysis: stream aligned tensors, measure each, merge in order.

Audit, compare and trajectory all do the same thing: for every tensor name two checkpoints (or
more) share, read that tensor from each, feed some of them to streaming statistics part by part
(:func:`~prism_analysis.accumulator.part_stats`: fused q/k/v, experts), and later merge the parts by
layer, component, expert and in total (:func:`~prism_analysis.accumulator.group_stats`). They
differ only in *which* tensors feed *which* statistic, declared as :class:`Statistic`::

    audit       [Statistic("update", make_update, (0, 1))]                        A, B
    compare     overlap (0, 1, 2, 3), u1 (0, 1), u2 (2, 3)                         A1, B1, A2, B2
    trajectory  for each step t: update_t (0, t), overlap_t (0, t, 0, T)          theta_0 .. theta_T

:func:`measure_aligned` runs that loop once for all of them:

- under a launcher each rank takes a byte-balanced share of the names
  (:func:`prism_analysis.distributed.share`) and the results come back in the single-process order,
  so float64 sums merge in the same order whatever the number of processes;
- tensors are read ahead in the order the statistics first use them and each is released after the
  last statistic that uses it, so memory stays bounded by a few tensors (for a trajectory: theta_0,
  theta_T and one middle checkpoint's tensor, whatever the number of steps), never by the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import distributed
from ..accumulator import group_stats, part_stats
from ..checkpoints.stream import read_ahead


@dataclass(frozen=True)
class Statistic:
    """One streaming statistic of the loop: ``make()`` builds an empty accumulator, ``inputs`` are the
    indices of the checkpoints whose tensors its ``update`` takes, in that order."""

    key: str
    make: Callable[[], Any]
    inputs: tuple[int, ...]


@dataclass
class Measured:
    """What :func:`measure_aligned` returns.

    ``parts``: statistic key -> tensor name -> ``[(Part, accumulator), ...]`` (names in the order
    given); ``extras``: tensor name -> what ``per_tensor`` returned for it; ``run``: the record of a
    distributed run (world size, bytes per rank; empty in one process).
    """

    statistics: dict[str, Statistic]
    parts: dict[str, dict[str, list]] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    run: dict = field(default_factory=dict)

    def grouped(self, key: str) -> dict:
        """The parts of statistic ``key`` merged by layer, component, expert and in total."""
        return group_stats(self.parts[key], self.statistics[key].make)


def measure_aligned(
    ckpts: Sequence,
    names: list[str],
    statistics: Sequence[Statistic],
    *,
    device: torch.device | str = "cpu",
    config: dict | None = None,
    per_tensor: Callable[[str, list[torch.Tensor], dict], Any] | None = None,
    desc: str = "read",
    progress: bool = True,
    prefetch: int | None = None,
) -> Measured:
    """Measure every tensor ``names`` holds in the opened, aligned ``ckpts`` with ``statistics``.

    ``config`` (config.json of the first checkpoint by default) decides how a tensor splits into
    parts. ``per_tensor(name, tensors, parts)`` is called once per name with the tensors as read
    (stored dtype, on the CPU; ``None`` for a checkpoint no statistic uses) and that name's
    ``{key: parts}``; what it returns is kept in :attr:`Measured.extras` (the audit's tensors.csv
    rows). ``prefetch``: tensors read ahead (default: one name's worth).
    """
    statistics = list(statistics)
    config = ckpts[0].config if config is None else config
    order = list(dict.fromkeys(i for s in statistics for i in s.inputs))  # first use
    last_use = {i: max(k for k, s in enumerate(statistics) if i in s.inputs) for i in order}
    ahead = len(order) if prefetch is None else prefetch

    def measure(share: list[str]) -> dict:  # name -> ({key: parts}, extra)
        reads = read_ahead(((ckpts[i], n) for n in share for i in order), prefetch=ahead, desc=desc, progress=progress)
        out = {}
        for name in share:
            stored: dict[int, torch.Tensor] = {}  # as read, for per_tensor
            on_device: dict[int, torch.Tensor] = {}
            found = {}
            for k, stat in enumerate(statistics):
                for i in stat.inputs:
                    if i not in on_device:
                        stored[i] = next(reads)
                        on_device[i] = stored[i].to(device, non_blocking=True)
                found[stat.key] = part_stats(name, tuple(on_device[i] for i in stat.inputs), config, stat.make)
                if per_tensor is None:  # release what no later statistic uses
                    for i in set(stat.inputs):
                        if last_use[i] == k:
                            del on_device[i], stored[i]
            extra = per_tensor(name, [stored.get(i) for i in range(len(ckpts))], found) if per_tensor else None
            out[name] = (found, extra)
            del stored, on_device
        return out

    sizes = [sum(ckpts[i].info(n).nbytes for i in order) for n in names]
    measured, loads = distributed.share(names, sizes, measure)
    result = Measured({s.key: s for s in statistics}, run=distributed.run_record(loads))
    for s in statistics:
        result.parts[s.key] = {name: found[s.key] for name, (found, _) in measured.items()}
    result.extras = {name: extra for name, (_, extra) in measured.items()}
    return result
