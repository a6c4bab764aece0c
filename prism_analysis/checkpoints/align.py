"""Match two checkpoints' tensors by name: :func:`align` and the checks behind :func:`open_aligned`.

Names are compared as the readers serve them (wrapper prefixes already stripped, a tied head
served by the embedding: :class:`~prism_analysis.checkpoints.base.CheckpointBase`). A shape
mismatch of a shared name, different architectures, or no name in common is a
:class:`~prism_analysis.errors.PrismError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import PrismError
from .base import CheckpointBase as Checkpoint
from .base import label


# -- alignment --------------------------------------------------------------------------------
@dataclass
class Alignment:
    """Names of two checkpoints matched up. ``common`` keeps A's order."""

    common: list[str]
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)  # names matched through a tied-embedding alias


def check_same_architecture(ckpts: list[Checkpoint]) -> None:
    """Raise when config.json files name different architectures."""
    first = ckpts[0]
    for other in ckpts[1:]:
        if first.architecture and other.architecture and first.architecture != other.architecture:
            raise PrismError(
                f"different architectures: {first.architecture} ({label(first)}) vs {other.architecture}", label(other)
            )


def align(a: Checkpoint, b: Checkpoint) -> Alignment:
    """Match tensors by name; a tied head on one side is matched to the other's stored head.

    Raises :class:`PrismError` for different architectures, mismatched shapes of a shared name,
    or no name in common.
    """
    check_same_architecture([a, b])
    names_a = set(a.tensors) | set(a.aliases)
    names_b = set(b.tensors) | set(b.aliases)
    common, tied = [], []
    for name in list(a.tensors) + [n for n in a.aliases if n in b.tensors]:
        if name not in names_b:
            continue
        if name in a.aliases and name in b.aliases:
            continue  # both heads tied: the embedding is compared once, as itself
        if name in a.aliases or name in b.aliases:
            tied.append(name)
        sa, sb = a.info(name).shape, b.info(name).shape
        if sa != sb:
            raise PrismError(f"tensor {name!r} has shape {list(sa)} here but {list(sb)} in {label(b)}", label(a))
        common.append(name)
    if not common:
        raise PrismError(f"no tensor names in common with {label(b)}", label(a))
    only_a = sorted(n for n in a.tensors if n not in names_b)
    only_b = sorted(n for n in b.tensors if n not in names_a)
    return Alignment(common, only_a, only_b, tied)


def _check_aligned(ckpts: list[Checkpoint]) -> Alignment:
    check_same_architecture(ckpts)
    al = align(ckpts[0], ckpts[1])
    for other in ckpts[2:]:
        for name in al.common:
            if name not in other.tensors and name not in other.aliases:
                raise PrismError(f"checkpoint lacks tensor {name!r}, which {label(ckpts[0])} has", label(other))
            if other.info(name).shape != ckpts[0].info(name).shape:
                raise PrismError(
                    f"tensor {name!r} has shape {list(other.info(name).shape)} here "
                    f"but {list(ckpts[0].info(name).shape)} in {label(ckpts[0])}",
                    label(other),
                )
    return al
