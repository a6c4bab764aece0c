"""Open Hugging Face checkpoints and stream aligned tensor pairs, one pair at a time.

A :class:`Checkpoint` is a lazy, read-only view of the tensors of

- a model directory with ``model.safetensors``, or sharded with ``model.safetensors.index.json``;
- a single ``.safetensors`` file;
- (only with ``allow_pickle=True``) ``pytorch_model.bin`` files, loaded with
  ``torch.load(weights_only=True, mmap=True)``. Pickle is refused by default: it can run code.

Memory. Every tensor is read through its own short-lived ``safetensors.safe_open`` handle. The
tensor that comes back is backed by a memory map that lives exactly as long as the tensor, so the
resident set is bounded by the tensors alive at once (the current pair plus a bounded prefetch),
never by the checkpoint size. (One long-lived handle would keep every page it ever touched mapped.)

:func:`iter_pairs` streams ``(name, tensor_a, tensor_b)`` for the aligned names of two checkpoints,
reading the next pairs in a background thread while the caller computes on the current one.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .errors import PrismError

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, known from the header alone."""

    name: str
    file: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


class Checkpoint:
    """Lazy view of one checkpoint's tensors. Headers are read on open; data on :meth:`get`.

    Attributes: ``path``, ``tensors`` (name -> :class:`TensorInfo`), ``config`` (``config.json``
    as a dict, or None), ``aliases`` (names served by another tensor, e.g. a tied
    ``lm_head.weight`` -> ``model.embed_tokens.weight``).
    """

    def __init__(self, path: str | os.PathLike, allow_pickle: bool = False):
        self.path = Path(path)
        self.allow_pickle = allow_pickle
        self.config = _read_config(self.path)
        self.is_pickle = False
        files = self._weight_files()
        self.tensors: dict[str, TensorInfo] = {}
        for file in files:
            for info in _pickle_infos(file) if self.is_pickle else _safetensors_infos(file):
                if info.name in self.tensors:
                    raise PrismError(f"tensor {info.name!r} appears in two shards", file)
                self.tensors[info.name] = info
        if not self.tensors:
            raise PrismError("checkpoint holds no tensors", self.path)
        self.aliases = self._tied_aliases()

    # -- opening -----------------------------------------------------------------------------
    def _weight_files(self) -> list[Path]:
        p = self.path
        if not p.exists():
            raise PrismError("no such file or directory", p)
        if p.is_file():
            if p.suffix == ".safetensors":
                return [p]
            if p.suffix in (".bin", ".pt", ".pth"):
                return self._pickle_files([p])
            if p.name == SAFETENSORS_INDEX:
                return _index_files(p)
            raise PrismError("not a checkpoint: expected a .safetensors file or a model directory", p)
        if (p / SAFETENSORS_INDEX).is_file():
            return _index_files(p / SAFETENSORS_INDEX)
        if (p / SAFETENSORS_SINGLE).is_file():
            return [p / SAFETENSORS_SINGLE]
        loose = sorted(p.glob("*.safetensors"))
        if loose:
            return loose
        if (p / PICKLE_INDEX).is_file():
            return self._pickle_files(_index_files(p / PICKLE_INDEX))
        if (p / PICKLE_SINGLE).is_file():
            return self._pickle_files([p / PICKLE_SINGLE])
        raise PrismError("no model.safetensors, model.safetensors.index.json or *.safetensors found", p)

    def _pickle_files(self, files: list[Path]) -> list[Path]:
        if not self.allow_pickle:
            raise PrismError(
                "refusing to unpickle a .bin checkpoint (it can run code); convert it to safetensors "
                "(load with transformers and save_pretrained(..., safe_serialization=True)) "
                "or pass --allow-pickle to load it with torch.load(weights_only=True)",
                files[0],
            )
        self.is_pickle = True
        return files

    def _tied_aliases(self) -> dict[str, str]:
        """``lm_head.weight`` -> embedding name when the head is tied and not stored."""
        if "lm_head.weight" in self.tensors:
            return {}
        tied = (self.config or {}).get("tie_word_embeddings")
        embeds = [n for n in self.tensors if n.endswith(("embed_tokens.weight", "embeddings.weight", "wte.weight"))]
        if tied is not False and len(embeds) == 1:
            return {"lm_head.weight": embeds[0]}
        return {}

    # -- reading -----------------------------------------------------------------------------
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
        """The tensor ``name`` on the CPU, in its stored dtype (zero-copy where the format allows)."""
        info = self.info(name)
        try:
            if self.is_pickle:
                state = torch.load(info.file, map_location="cpu", weights_only=True, mmap=True)
                return state[info.name]
            with safe_open(info.file, framework="pt", device="cpu") as f:
                return f.get_tensor(info.name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise PrismError(f"cannot read tensor {info.name!r}: {_one_line(e)}", info.file) from None

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, tensors={len(self.tensors)}, bytes={self.nbytes})"


def open_checkpoint(path: str | os.PathLike | Checkpoint, allow_pickle: bool = False) -> Checkpoint:
    """A :class:`Checkpoint` for ``path`` (passed through when it already is one)."""
    return path if isinstance(path, Checkpoint) else Checkpoint(path, allow_pickle=allow_pickle)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _read_config(path: Path) -> dict | None:
    cfg = (path if path.is_dir() else path.parent) / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise PrismError(f"unreadable config.json: {_one_line(e)}", cfg) from None


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrismError(f"not a valid shard index ({_one_line(e)})", index) from None
    files = []
    for shard in dict.fromkeys(weight_map.values()):
        f = index.parent / shard
        if not f.is_file():
            raise PrismError(f"the index names shard {shard!r}, which is missing", index)
        files.append(f)
    if not files:
        raise PrismError("the shard index names no tensors", index)
    return files


def _safetensors_infos(file: Path) -> list[TensorInfo]:
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            out = []
            for name in f.keys():
                sl = f.get_slice(name)
                dtype = _ST_DTYPES.get(sl.get_dtype())
                if dtype is None:
                    raise PrismError(f"tensor {name!r} has unsupported dtype {sl.get_dtype()}", file)
                out.append(TensorInfo(name, str(file), tuple(sl.get_shape()), dtype))
            return out
    except SafetensorError as e:
        raise PrismError(f"corrupt or truncated safetensors file ({_one_line(e)})", file) from None
    except OSError as e:
        raise PrismError(f"cannot read file ({_one_line(e)})", file) from None


def _pickle_infos(file: Path) -> list[TensorInfo]:
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for bad pickles
        raise PrismError(f"cannot load pickle checkpoint ({_one_line(e)})", file) from None
    return [TensorInfo(k, str(file), tuple(v.shape), v.dtype) for k, v in state.items() if torch.is_tensor(v)]


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
                f"different architectures: {first.architecture} ({first.path}) vs {other.architecture}", other.path
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
            raise PrismError(f"tensor {name!r} has shape {list(sa)} here but {list(sb)} in {b.path}", a.path)
        common.append(name)
    if not common:
        raise PrismError(f"no tensor names in common with {b.path}", a.path)
    only_a = sorted(n for n in a.tensors if n not in names_b)
    only_b = sorted(n for n in b.tensors if n not in names_a)
    return Alignment(common, only_a, only_b, tied)


# -- streaming --------------------------------------------------------------------------------
def _fault_in(t: torch.Tensor) -> torch.Tensor:
    """Touch one byte per page so a memory-mapped tensor is read from disk now (in a worker thread)."""
    if t.numel() and t.is_contiguous():
        t.reshape(-1).view(torch.uint8)[::4096].sum()
    return t


def iter_tensors(
    ckpts: list[Checkpoint], names: list[str], prefetch: int = 1
) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """Yield ``(name, [tensor of each checkpoint])`` for every name, in order.

    A background thread reads ``prefetch`` names ahead (reading releases the GIL), so I/O overlaps
    with whatever the caller computes on the current group. At most ``prefetch + 1`` tensor groups
    are alive at once: memory is bounded by the largest tensors, not by the checkpoint.
    """

    def load(name):
        return name, [_fault_in(c.get(name)) for c in ckpts]

    it = iter(names)
    with futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prism-read") as pool:
        pending: collections.deque = collections.deque()

        def fill(limit: int) -> None:
            while len(pending) < limit and (name := next(it, None)) is not None:
                pending.append(pool.submit(load, name))

        fill(1)
        while pending:
            result = pending.popleft().result()
            fill(max(prefetch, 0))  # reads in flight while the caller works on `result`
            yield result
            del result


def iter_pairs(
    a: Checkpoint, b: Checkpoint, names: list[str], prefetch: int = 1
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Yield ``(name, tensor_a, tensor_b)`` for aligned names; see :func:`iter_tensors`."""
    for name, (ta, tb) in iter_tensors([a, b], names, prefetch=prefetch):
        yield name, ta, tb


def default_device() -> torch.device:
    """cuda when available, else cpu."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
