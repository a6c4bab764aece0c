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
List states (one entry per threshold) combine element-wise. Tensor states (a Gram matrix, a
layer-by-layer HSIC table) are declared with default ``None`` and set by the first update; they
combine with ``+`` and ``torch.maximum``. :meth:`Accumulator.all_reduce` combines one accumulator's
states across the processes of a ``torch.distributed`` group (float64, exact sums of counts), so
every statistic of the package is reduced across ranks the same way.

The contract every accumulator keeps (``tests/test_accumulators.py`` checks them all): updates
split in two accumulators and merged give the whole's ``compute()``; merging an :meth:`~Accumulator.empty`
accumulator changes nothing; an all-reduce over ranks equals the merge of the ranks' parts.
"""

from __future__ import annotations

from dataclasses import field, fields


def _max(x, y):
    if hasattr(x, "shape") and x.shape:  # a tensor state: element-wise
        import torch

        return torch.maximum(x, y)
    return max(x, y)


REDUCTIONS = {"sum": lambda x, y: x + y, "max": _max}


def state(default=0, reduce: str = "sum"):
    """A state field of an :class:`Accumulator` dataclass (``default`` a number, a list, or None for a
    tensor state that the first update sets)."""
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
        """Fields that are neither states nor a subclass's ``reference`` (e.g. a reference point)."""
        return [f.name for f in fields(cls) if "reduce" not in f.metadata and "reference" not in f.metadata]

    def empty(self) -> Accumulator:
        """A new accumulator with this one's settings and nothing accumulated (what may merge into it)."""
        return type(self)(**{name: getattr(self, name) for name in self.setting_names()})

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
            if theirs is None:  # a tensor state the other side never set
                continue
            if mine is None:
                setattr(self, f.name, theirs.clone() if hasattr(theirs, "clone") else theirs)
            elif isinstance(mine, list):
                if len(mine) != len(theirs):
                    raise ValueError(f"cannot merge {f.name}: {len(mine)} vs {len(theirs)} entries")
                setattr(self, f.name, [op(x, y) for x, y in zip(mine, theirs)])
            else:
                setattr(self, f.name, op(mine, theirs))
        return self

    def all_reduce(self) -> Accumulator:
        """Reduce this accumulator's states across all ranks in place (:func:`all_reduce`) and return it."""
        all_reduce([self])
        return self

    def merge(self, other: Accumulator) -> Accumulator:
        """Fold ``other`` (same type and settings) into this accumulator and return it."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for name in self.setting_names():
            if getattr(self, name) != getattr(other, name):
                raise ValueError(f"cannot merge statistics taken with different {name}")
        return self.add(other.states())


def part_stats(name: str, tensors, config: dict | None, make) -> list:
    """Statistics of tensor ``name`` part by part: ``[(part, make().update(*pieces)), ...]``.

    ``tensors`` are the tensors of one name that an accumulator's ``update`` takes (a pair for
    UpdateStats, four for OverlapStats); the parts are :func:`prism_analysis.components.parts` of
    the name, so a fused q/k/v projection counts under attn_q/k/v and a stack of experts per expert.
    ``config`` is config.json (or None), which says whether a fused projection can be split.
    """
    from .components import parts

    return [(p, make().update(*(p.take(t) for t in tensors))) for p in parts(name, tuple(tensors[0].shape), config)]


def merge_all(accumulators, make) -> Accumulator:
    """One accumulator holding all of ``accumulators`` (merged in order into ``make()``)."""
    out = make()
    for acc in accumulators:
        out.merge(acc)
    return out


def group_stats(per_tensor: dict[str, list], make) -> dict:
    """Merge per-part accumulators by decoder layer, by component, by expert and in total.

    ``per_tensor`` maps a tensor name to its :func:`part_stats`; ``make()`` builds an empty
    accumulator. Returns ``{"layers": {i: acc}, "components": {c: acc}, "experts": {(layer, expert):
    acc}, "total": acc}`` with layers in index order, components in
    :data:`~prism_analysis.components.COMPONENTS` order and experts by layer, then expert (empty
    for a model without experts). Parts are merged in the order given, so the float64 sums are
    reproducible; every part is in the total exactly once.
    """
    from .components import COMPONENTS, layer_index

    layers: dict = {}
    comps: dict = {}
    experts: dict = {}
    total = make()
    for name, pieces in per_tensor.items():
        layer = layer_index(name)
        for part, s in pieces:
            if layer is not None:
                layers.setdefault(layer, make()).merge(s)
            comps.setdefault(part.component, make()).merge(s)
            if part.expert is not None:
                experts.setdefault((layer, part.expert), make()).merge(s)
            total.merge(s)
    order = {c: i for i, c in enumerate(COMPONENTS)}
    return {
        "layers": dict(sorted(layers.items())),
        "components": dict(sorted(comps.items(), key=lambda kv: order.get(kv[0], len(order)))),
        "experts": dict(sorted(experts.items(), key=lambda kv: (kv[0][0] is None, kv[0][0] or 0, kv[0][1]))),
        "total": total,
    }


def all_reduce(accumulators: list[Accumulator]) -> None:
    """Reduce the states of ``accumulators`` (the same list, in the same order, on every rank) across
    the ranks of the default process group, in place: "sum" states add (float64; counts are exact
    below 2^53), "max" states take the maximum. Scalar and list states go in one collective per
    reduction kind, tensor states one collective each; every rank must hold the same tensor states
    (set by at least one update on every rank). Without an initialised process group this does nothing."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return

    for reduce, op in (("sum", dist.ReduceOp.SUM), ("max", dist.ReduceOp.MAX)):
        slots = []  # (accumulator, field name, list length or None)
        values = []
        for acc in accumulators:
            for f in fields(acc):
                if f.metadata.get("reduce") != reduce:
                    continue
                v = getattr(acc, f.name)
                if v is None:  # a tensor state unused by these settings (the same on every rank)
                    continue
                if isinstance(v, torch.Tensor):  # a tensor state: reduced as it is, in float64
                    if v.dtype != torch.float64:
                        raise TypeError(f"tensor state {f.name} must be float64 to be reduced exactly")
                    dist.all_reduce(v, op=op)
                    continue
                slots.append((acc, f.name, len(v) if isinstance(v, list) else None))
                values += v if isinstance(v, list) else [v]
        if not values:
            continue
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t, op=op)
        flat, i = t.tolist(), 0
        for acc, name, n in slots:
            size = 1 if n is None else n
            old, vals = getattr(acc, name), flat[i : i + size]
            i += size
            if isinstance(old[0] if n else old, int):
                vals = [int(v) for v in vals]
            setattr(acc, name, vals[0] if n is None else vals)
