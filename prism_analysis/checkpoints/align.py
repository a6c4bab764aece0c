"""Match two checkpoints' tensors by name: :func:`align` and the checks behind :func:`open_aligned`.

Names are compared as the readers serve them (wrapper prefixes already stripped, a tied head
served by the embedding: :class:`~prism_analysis.checkpoints.base.CheckpointBase`). Beyond equal
names, two differences of real checkpoint pairs are matched, never guessed:

- *a backbone against a causal LM*: a model saved as its backbone (``LlamaModel``: names without
  ``model.``, no ``lm_head``) against one saved as ``LlamaForCausalLM``. When every name one side
  lacks is found on the other side under one single-component prefix (``model.``, ``transformer.``,
  ...) and no name of the first side starts with that prefix, those names are matched under the
  prefixed name. Two candidate prefixes (or both sides wanting one) is an error, not a choice;
- *a resized vocabulary*: an embedding or LM head (component ``embed`` / ``lm_head``) whose row
  count differs and whose other dimensions agree (``resize_token_embeddings``, grown or shrunk).
  The shared leading rows are compared (``Alignment.rows``); the others are reported
  (``Alignment.resized``).

Any other shape mismatch of a shared name, different architectures, or no name in common is a
:class:`~prism_analysis.errors.PrismError`.

:func:`~prism_analysis.checkpoints.opening.open_aligned` serves each checkpoint that needs it
through an :class:`AlignedView`: the checkpoint under the aligned names, each resized tensor cut to
its shared rows. Every pipeline that streams the views (``measure_aligned``: audit, compare,
trajectory) measures exactly the shared rows without knowing about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import PrismError
from .base import CheckpointBase as Checkpoint
from .base import label
from .names import resizable


# -- alignment --------------------------------------------------------------------------------
@dataclass
class Alignment:
    """Names of two (or more) checkpoints matched up. ``common`` keeps A's order.

    ``rows``: name -> the leading rows compared, for tensors whose row count differs (a resized
    vocabulary); ``resized``: name -> the row count in each checkpoint (in the order opened);
    ``served``: per checkpoint, aligned name -> that checkpoint's name, where they differ;
    ``prefixes``: per checkpoint, the prefix its names were matched under (a backbone), or None.
    """

    common: list[str]
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)
    tied: list[str] = field(default_factory=list)  # names matched through a tied-embedding alias
    rows: dict[str, int] = field(default_factory=dict)
    resized: dict[str, list[int]] = field(default_factory=dict)
    served: list[dict[str, str]] = field(default_factory=list)
    prefixes: list[str | None] = field(default_factory=list)


def check_same_architecture(ckpts: list[Checkpoint]) -> None:
    """Raise when config.json files name different architectures."""
    first = ckpts[0]
    for other in ckpts[1:]:
        if first.architecture and other.architecture and first.architecture != other.architecture:
            raise PrismError(
                f"different architectures: {first.architecture} ({label(first)}) vs {other.architecture}", label(other)
            )


def _own_names(c: Checkpoint) -> list[str]:
    return list(c.tensors) + [n for n in c.aliases if n not in c.tensors]


def backbone_prefix(bare: list[str], full: list[str]) -> str | None:
    """The prefix under which the names ``bare`` lacks are found in ``full`` (a backbone saved
    without its wrapper vs the causal LM: ``layers.0.x`` vs ``model.layers.0.x``), or None.

    A prefix is one name component (``model.``, ``transformer.``); it counts only when no name of
    ``bare`` starts with it. Two candidates raise :class:`PrismError`: which is meant is a guess.
    """
    full_set = set(full)
    missing = [n for n in bare if n not in full_set]
    if not missing:
        return None
    under: dict[str, list[str]] = {}  # name without its first component -> that component + "."
    for y in full:
        head, dot, rest = y.partition(".")
        if dot and rest:
            under.setdefault(rest, []).append(head + ".")
    taken = {b.partition(".")[0] + "." for b in bare}  # prefixes the bare side's own names start with
    found: dict[str, int] = {}
    for n in missing:
        for p in under.get(n, ()):
            if p not in taken:
                found[p] = found.get(p, 0) + 1
    if len(found) > 1:
        raise PrismError(
            "ambiguous tensor names: they match under several prefixes "
            f"({', '.join(repr(p) for p in sorted(found))}); rename one checkpoint's tensors"
        )
    return next(iter(found), None)


def _serve(c: Checkpoint, prefix: str | None, other: set[str]) -> dict[str, str]:
    """Aligned name -> ``c``'s name: ``prefix + name`` for the names found so in ``other``."""
    if prefix is None:
        return {}
    own = set(_own_names(c))
    return {prefix + n: n for n in own if n not in other and prefix + n in other}


def _shape(c: Checkpoint, served: dict[str, str], name: str) -> tuple:
    return tuple(c.info(served.get(name, name)).shape)


def _shape_error(name: str, sa, sb, here: Checkpoint, there: Checkpoint) -> PrismError:
    return PrismError(f"tensor {name!r} has shape {list(sa)} here but {list(sb)} in {label(there)}", label(here))


def align(a: Checkpoint, b: Checkpoint) -> Alignment:
    """Match tensors by name; a tied head on one side is matched to the other's stored head, a
    backbone's names to a causal LM's, a resized embedding or head by its shared rows.

    Raises :class:`PrismError` for different architectures, mismatched shapes of a shared name
    (other than a resized vocabulary), ambiguous names, or no name in common.
    """
    from ..components import classify

    check_same_architecture([a, b])
    own_a, own_b = _own_names(a), _own_names(b)
    pa, pb = backbone_prefix(own_a, own_b), backbone_prefix(own_b, own_a)
    if pa and pb:
        raise PrismError(f"ambiguous tensor names: each checkpoint lacks a prefix of the other ({pa!r}, {pb!r})")
    serve_a, serve_b = _serve(a, pa, set(own_b)), _serve(b, pb, set(own_a))
    back_a = {v: k for k, v in serve_a.items()}  # a's name -> aligned name
    back_b = {v: k for k, v in serve_b.items()}
    tensors_a = [back_a.get(n, n) for n in a.tensors]
    aliases_a = {back_a.get(n, n): n for n in a.aliases}
    names_b = {back_b.get(n, n) for n in own_b}
    stored_b = {back_b.get(n, n) for n in b.tensors}
    aliases_b = {back_b.get(n, n) for n in b.aliases}
    common, tied, rows, resized = [], [], {}, {}
    for name in tensors_a + [n for n in aliases_a if n in stored_b]:
        if name not in names_b:
            continue
        if name in aliases_a and name in aliases_b:
            continue  # both heads tied: the embedding is compared once, as itself
        if name in aliases_a or name in aliases_b:
            tied.append(name)
        sa, sb = _shape(a, serve_a, name), _shape(b, serve_b, name)
        if sa != sb:
            if not resizable(classify(name)[1], sa, sb):
                raise _shape_error(name, sa, sb, a, b)
            rows[name] = min(sa[0], sb[0])
            resized[name] = [sa[0], sb[0]]
        common.append(name)
    if not common:
        raise PrismError(f"no tensor names in common with {label(b)}", label(a))
    all_a = set(tensors_a) | set(aliases_a)
    only_a = sorted(n for n in tensors_a if n not in names_b)
    only_b = sorted(n for n in stored_b if n not in all_a)
    return Alignment(common, only_a, only_b, tied, rows, resized, [serve_a, serve_b], [pa, pb])


def _check_aligned(ckpts: list[Checkpoint]) -> Alignment:
    """:func:`align` of the first two, then every further checkpoint checked to hold each common name
    with a shape that is the first's or differs by a resized vocabulary (rows: the least of all)."""
    from ..components import classify

    check_same_architecture(ckpts)
    al = align(ckpts[0], ckpts[1])
    aligned = set(al.common)
    for other in ckpts[2:]:
        prefix = backbone_prefix(_own_names(other), sorted(aligned))
        served = _serve(other, prefix, aligned)
        have = set(_own_names(other))
        for name in al.common:
            if served.get(name, name) not in have:
                raise PrismError(f"checkpoint lacks tensor {name!r}, which {label(ckpts[0])} has", label(other))
            s0, so = _shape(ckpts[0], al.served[0], name), _shape(other, served, name)
            if so != s0:
                if not resizable(classify(name)[1], so, s0):
                    raise _shape_error(name, so, s0, other, ckpts[0])
                al.rows[name] = 0  # counted below, over all checkpoints
        al.served.append(served)
        al.prefixes.append(prefix)
    for name in al.rows:
        counts = [_shape(c, sv, name)[0] for c, sv in zip(ckpts, al.served)]
        al.rows[name], al.resized[name] = min(counts), counts
    return al


# -- the views the pipelines stream ------------------------------------------------------------
class AlignedView(Checkpoint):
    """A checkpoint as an :class:`Alignment` serves it: its tensors under the aligned names, and each
    resized tensor (:attr:`Alignment.rows`) cut to the rows the checkpoints share.

    The interface is :class:`~prism_analysis.checkpoints.base.CheckpointBase`'s; ``base`` is the
    checkpoint, :meth:`full` a tensor with all its rows, :meth:`stored_name` the name in ``base``.
    """

    def __init__(self, base, served: dict[str, str], rows: dict[str, int]):
        self.base = base
        self.path, self.config = base.path, base.config
        self.source = label(base)
        self.allow_pickle, self.is_pickle = base.allow_pickle, base.is_pickle
        self.unwrapped = getattr(base, "unwrapped", ())
        self.renamed = getattr(base, "renamed", {})
        self.folded = getattr(base, "folded", {})
        self._served = served  # aligned -> base name
        back = {v: k for k, v in served.items()}
        self.tensors = {}
        for n, info in base.tensors.items():
            aligned = back.get(n, n)
            r = rows.get(aligned)
            self.tensors[aligned] = (
                info if r is None or r == info.shape[0] else replace(info, shape=(r, *info.shape[1:]))
            )
        self.aliases = {back.get(k, k): back.get(v, v) for k, v in base.aliases.items()}
        self._alias_rows = rows

    def stored_name(self, name: str) -> str:
        """The name ``base`` serves the aligned ``name`` under."""
        return self._served.get(name, name)

    def info(self, name: str):
        target = self.aliases.get(name, name)
        info = self.tensors[target]
        r = self._alias_rows.get(name)
        if r is not None and r != info.shape[0]:
            info = replace(info, shape=(r, *info.shape[1:]))
        return info

    def full(self, name: str):
        """Tensor ``name`` with all its rows, as ``base`` stores it."""
        return self.base.get(self.stored_name(name))

    def get(self, name: str):
        t = self.full(name)
        r = self.info(name).shape[0] if t.dim() else None
        return t if r is None or r == t.shape[0] else t[:r]


def views(ckpts: list, al: Alignment) -> list:
    """Each checkpoint, or its :class:`AlignedView` where names are served otherwise or rows cut."""
    out = []
    for c, served in zip(ckpts, al.served):
        cut = {n: r for n, r in al.rows.items() if _shape(c, served, n)[0] != r}
        out.append(AlignedView(c, served, cut) if served or cut else c)
    return out


# -- what was matched, for the outputs ----------------------------------------------------------
def stored_info(c, name: str):
    """The TensorInfo of aligned ``name`` as ``c``'s files hold it (all rows, the stored name)."""
    if isinstance(c, AlignedView):
        return c.base.info(c.stored_name(name))
    return c.info(name)


def full_tensor(c, name: str):
    """Tensor ``name`` of ``c`` with all its rows (an :class:`AlignedView` cuts resized ones)."""
    return c.full(name) if isinstance(c, AlignedView) else c.get(name)


def record(ckpts: list, al: Alignment, keys: list[str]) -> dict:
    """What alignment did, for ``summary.json``: ``names`` (per checkpoint: the wrappers removed,
    the prefix its names were matched under, how many compared tensors are stored under another
    name, LoRA modules merged from a PEFT model saved without merging), ``folded`` (per checkpoint:
    entries that shared one storage, name -> the name kept) and ``resized`` (tensors whose rows
    differ: the row count of each checkpoint and the rows compared)."""
    from ..components import classify

    tied = set(al.tied)
    names, folded = {}, {}
    for key, c, prefix in zip(keys, ckpts, al.prefixes):
        base = c.base if isinstance(c, AlignedView) else c
        names[key] = {
            "wrappers_removed": list(getattr(c, "unwrapped", ())),
            "matched_under_prefix": prefix,
            "tensors_renamed": sum(1 for n in al.common if n not in tied and stored_info(c, n).name != n),
            "lora_merged": list(getattr(base, "merged_lora", [])),
        }
        folded[key] = dict(getattr(c, "folded", {}))
    resized = [
        {"name": n, "component": classify(n)[1], "rows": dict(zip(keys, counts)), "rows_compared": al.rows[n]}
        for n, counts in al.resized.items()
    ]
    return {"names": names, "folded": folded, "resized": resized}
