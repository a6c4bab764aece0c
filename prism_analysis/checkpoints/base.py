"""What every checkpoint view shares: :class:`TensorInfo`, :class:`CheckpointBase` and file checks.

Two readers build on it: :mod:`prism_analysis.checkpoints.local` (Hugging Face safetensors and,
when allowed, pickle files) and :mod:`prism_analysis.checkpoints.dcp` (torch.distributed.checkpoint
directories). Everything above them -- alignment, streaming, the statistics -- sees only this
interface: ``tensors``, ``aliases``, ``config``, ``names``, ``info(name)`` and ``get(name)``.
"""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PrismError, os_problem

#: How input embeddings are named: the tensor a tied ``lm_head.weight`` is served by.
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "embeddings.weight", "wte.weight")


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, known from the header alone.

    ``start``/``end``: byte range in ``file`` (safetensors; -1 for pickle files and DCP directories,
    whose tensors are read from their chunks).
    """

    name: str
    file: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    start: int = -1
    end: int = -1

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class CheckpointBase:
    """Lazy view of one checkpoint's tensors, by name.

    Subclasses set ``path``, ``config`` (``config.json`` as a dict, or None), ``tensors`` (name ->
    :class:`TensorInfo`), ``aliases`` (names served by another tensor, e.g. a tied
    ``lm_head.weight`` -> ``model.embed_tokens.weight``), ``allow_pickle`` and ``is_pickle``, and
    implement :meth:`get`; readers that rename (wrapper prefixes) or fold (entries sharing a
    storage) record it in ``unwrapped``, ``renamed`` and ``folded``. Names are the model's
    (wrappers removed); ``TensorInfo.name`` keeps the name as stored.
    """

    path: Path
    config: dict | None
    tensors: dict[str, TensorInfo]
    aliases: dict[str, str]
    allow_pickle: bool = False
    is_pickle: bool = False
    #: wrappers removed from the stored names (``"_orig_mod"``, ``"module."``, ...: :mod:`.names`)
    unwrapped: tuple[str, ...] = ()
    #: stored name -> the model's name, for the names a wrapper changed
    renamed: dict[str, str] = {}  # noqa: RUF012 (read-only default; readers assign their own)
    #: name -> the name kept, for entries that share one storage with another (a pickled tied head)
    folded: dict[str, str] = {}  # noqa: RUF012

    def _tied_aliases(self) -> dict[str, str]:
        """``lm_head.weight`` -> the embedding's name when the head is tied to the embedding.

        Safetensors files leave a tied head out; ``pytorch_model.bin`` files keep a copy. The copy
        is dropped from :attr:`tensors` when the config says the weights are tied (transformers'
        default, when the key is absent), so a checkpoint counts the embedding once whatever its
        file format, and two checkpoints align the same way whichever of them stores the head.
        """
        embeds = [n for n in self.tensors if n.endswith(EMBEDDING_SUFFIXES)]
        if len(embeds) != 1:
            return {}
        tied = (self.config or {}).get("tie_word_embeddings", True if self.config is not None else None)
        if "lm_head.weight" in self.tensors:
            if tied is not True or self.tensors["lm_head.weight"].shape != self.tensors[embeds[0]].shape:
                return {}
            del self.tensors["lm_head.weight"]  # a stored copy of the tied embedding
        elif tied is False:
            return {}
        return {"lm_head.weight": embeds[0]}

    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def architecture(self) -> str | None:
        """``model_type`` from config.json (else ``architectures[0]``), None without a config."""
        cfg = self.config or {}
        archs = cfg.get("architectures") or [None]
        return cfg.get("model_type") or archs[0]

    def info(self, name: str) -> TensorInfo:
        return self.tensors[self.aliases.get(name, name)]

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` on the CPU, in its stored dtype."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, tensors={len(self.tensors)}, bytes={self.nbytes})"


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    return " ".join(str(e).split()) or type(e).__name__


def file_kind(p: Path, missing_ok: bool = False) -> str | None:
    """``"file"``, ``"dir"`` (or None when missing and ``missing_ok``); refuses special files."""
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        if missing_ok:
            return None
        raise PrismError("no such file or directory", p) from None
    except OSError as e:
        raise PrismError(f"cannot access ({os_problem(e)})", p) from None
    if stat.S_ISDIR(mode):
        return "dir"
    if not stat.S_ISREG(mode):
        raise PrismError("not a regular file (a pipe, device or socket cannot be a checkpoint)", p)
    return "file"


def read_json(path: Path, what: str):
    """The JSON value of ``path``; unreadable or invalid JSON is a :class:`PrismError` naming ``what``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PrismError(f"cannot read {what} ({os_problem(e)})", path) from None
    except ValueError as e:
        raise PrismError(f"{what} is not valid JSON ({one_line(e)})", path) from None


def label(ckpt) -> str:
    """How to name an opened checkpoint to the user: the reference they gave, else its path."""
    return getattr(ckpt, "source", None) or str(ckpt.path)


def is_checkpoint(obj) -> bool:
    """Whether ``obj`` is an opened checkpoint (a :class:`Checkpoint` or one with its interface)."""
    return hasattr(obj, "tensors") and hasattr(obj, "get") and hasattr(obj, "aliases")
