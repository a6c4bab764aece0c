"""Streaming statistics that merge exactly: the update / compute / merge pattern of torchmetrics.

A statistic is a dataclass whose fields are either *settings* (thresholds, tau: equal for any two
accumulators that may merge) or *states* declared with :func:`state` and the rule that combines two
partial results -- ``"sum"`` or ``"max"``, as torchmetrics' ``add_state(..., dist_reduce_fx=...)``.
With the rule declared once, one generic :meth:`Accumulator.merge` folds in another accumulator
(other tensors, another process) and :meth:`Accumulator.add` folds in the values of one update::

    @dataclass
    class Count(Accumulator):
        numel: int = state(0)
        biggest: float = state(0.0, reduce="max")

Sums of floats are Python floats (IEEE float64), so a merge in a fixed order is bit-reproducible.
List states (one entry per threshold) combine element-wise.
"""

from __future__ import annotations

from dataclasses import field, fields

REDUCTIONS = {"sum": lambda x, y: x + y, "max": max}


def state(default=0, reduce: str = "sum"):
    """A state field of an :class:`Accumulator` dataclass (``default`` a number or a list)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduce!r}; choose one of {', '.join(REDUCTIONS)}")
    meta = {"reduce": reduce}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


class Accumulator:
    """Base of dataclass statistics whose state fields are declared with :func:`state`."""

    @classmethod
    def state_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if "reduce" in f.metadata]

    @classmethod
    def setting_names(cls) -> list[str]:
        return [f.name for f in fields(cls) if "reduce" not in f.metadata]

    def states(self) -> dict:
        """The state fields and their values (what a cross-process reduction sends)."""
        return {name: getattr(self, name) for name in self.state_names()}

    def add(self, values: dict) -> Accumulator:
        """Fold in partial state ``values`` (name -> value) with each field's declared reduction."""
        for f in fields(self):
            if f.name not in values:
                continue
            op = REDUCTIONS[f.metadata["reduce"]]
            mine, theirs = getattr(self, f.name), values[f.name]
            if isinstance(mine, list):
                if len(mine) != len(theirs):
                    raise ValueError(f"cannot merge {f.name}: {len(mine)} vs {len(theirs)} entries")
                setattr(self, f.name, [op(x, y) for x, y in zip(mine, theirs)])
            else:
                setattr(self, f.name, op(mine, theirs))
        return self

    def merge(self, other: Accumulator) -> Accumulator:
        """Fold ``other`` (same type and settings) into this accumulator and return it."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for name in self.setting_names():
            if getattr(self, name) != getattr(other, name):
                raise ValueError(f"cannot merge statistics taken with different {name}")
        return self.add(other.states())


def group_stats(per_tensor: dict[str, Accumulator], make) -> dict:
    """Merge per-tensor accumulators by decoder layer, by component and in total.

    ``make()`` builds an empty accumulator. Returns ``{"layers": {i: acc}, "components": {c: acc},
    "total": acc}`` with layers in index order and components in :data:`~prism_analysis.components.COMPONENTS`
    order; tensors are merged in the order given, so the float64 sums are reproducible.
    """
    from .components import COMPONENTS, classify

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
