"""Read Hugging Face checkpoints lazily and stream aligned tensors, one group at a time.

A :class:`Checkpoint` is a read-only view of the tensors of

- a model directory with ``model.safetensors``, sharded with ``model.safetensors.index.json``, or
  loose ``*.safetensors`` files;
- a single ``.safetensors`` file (or a shard index file);
- (only with ``allow_pickle=True``) ``pytorch_model.bin`` files, loaded with
  ``torch.load(weights_only=True, mmap=True)``. Pickle is refused by default: it can run code.

A torch.distributed.checkpoint (DCP) directory -- sharded training checkpoints, an HF Trainer
``checkpoint-N/pytorch_model_fsdp_0/`` -- opens as a :class:`~prism_analysis.checkpoints.dcp.DcpCheckpoint`,
from :func:`open_checkpoint` and from ``Checkpoint(path)`` alike.

Time and memory. Each file's header is validated (by safetensors) and parsed once, on open, so the
cost of reading grows linearly with the number of tensors. :meth:`Checkpoint.get` then maps just
that tensor's bytes (``mmap`` of its page-aligned range, copy-on-write): the mapping lives exactly as
long as the returned tensor, so the resident set is bounded by the tensors alive at once (the
current group plus a bounded read-ahead), never by the checkpoint size.

:func:`open_aligned` opens several checkpoints, checks that they match, and returns the tensor
names to compare; :func:`stream_aligned` yields the aligned tensors name by name, with a byte
progress bar, while a background thread reads ahead.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import functools
import json
import mmap
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import PrismError, os_problem
from ..progress import progress_bar
from .base import CheckpointBase, TensorInfo
from .base import file_kind as _kind
from .base import one_line as _one_line
from .base import read_json as _read_json
from .dcp import DcpCheckpoint, is_dcp_checkpoint
from .lora import ADAPTER_CONFIG, LoraCheckpoint, adapter_weights_file, split_reference

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
#: safetensors refuses headers larger than this; so do we, before reading one.
MAX_HEADER_BYTES = 100_000_000


@functools.lru_cache(maxsize=1)
def safetensors_dtypes() -> dict[str, torch.dtype]:
    """safetensors' dtype names -> torch dtypes, taken from safetensors itself: every torch dtype is
    serialised (empty) with ``safetensors.torch.save`` and the name it writes is read back."""
    from safetensors.torch import save

    table = {}
    for value in vars(torch).values():
        if not isinstance(value, torch.dtype) or value in table.values():
            continue
        if str(value).startswith("torch.q") or value == torch.complex32:  # quantized / experimental: skip
            continue
        try:
            blob = save({"x": torch.empty(0, dtype=value)})
        except Exception:  # a torch dtype safetensors cannot store
            continue
        n = int.from_bytes(blob[:8], "little")
        table[json.loads(blob[8 : 8 + n])["x"]["dtype"]] = value
    return table


class Checkpoint(CheckpointBase):
    """Lazy view of one checkpoint's tensors. Headers are read on open; data on :meth:`get`.

    Attributes: ``path`` (the local files), ``source`` (what the user named: the path, or a Hub
    reference such as ``org/name@step1000``), ``tensors`` (name -> :class:`TensorInfo`), ``config``
    (``config.json`` as a dict, or None), ``aliases`` (names served by another tensor, e.g. a tied
    ``lm_head.weight`` -> ``model.embed_tokens.weight``).
    """

    header_only = False

    def __new__(cls, path: str | os.PathLike | None = None, *args, **kwargs):
        """``Checkpoint(path)`` of a torch.distributed.checkpoint directory routes through
        :func:`open_checkpoint` and gives a ``DcpCheckpoint``."""
        if cls is Checkpoint and path is not None and is_dcp_checkpoint(path):
            return open_checkpoint(path, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike, allow_pickle: bool = False, source: str | None = None):
        self.path = Path(path)
        self.source = source or str(path)
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

    @classmethod
    def from_header(cls, source: str, config: dict | None, infos: list[TensorInfo]) -> Checkpoint:
        """A checkpoint known from its headers alone (names, shapes, dtypes; e.g. read remotely from
        the Hub): enough to check that two checkpoints match, with no data to :meth:`get`."""
        self = cls.__new__(cls)
        self.path, self.source, self.config, self.allow_pickle, self.is_pickle = (
            Path(source),
            source,
            config,
            False,
            False,
        )
        self.header_only = True
        self.tensors = {i.name: i for i in infos}
        if not self.tensors:
            raise PrismError("checkpoint holds no tensors", source)
        self.aliases = self._tied_aliases()
        return self

    # -- opening -----------------------------------------------------------------------------
    def _weight_files(self) -> list[Path]:
        p = self.path
        kind = _kind(p)
        if kind == "file":
            if p.suffix == ".safetensors":
                return [p]
            if p.suffix in PICKLE_SUFFIXES:
                return self._pickle_files([p])
            if p.name == SAFETENSORS_INDEX:
                return _index_files(p)
            raise PrismError("not a checkpoint: expected a .safetensors file or a model directory", p)
        if _kind(p / SAFETENSORS_INDEX, missing_ok=True) == "file":
            return _index_files(p / SAFETENSORS_INDEX)
        if _kind(p / SAFETENSORS_SINGLE, missing_ok=True) == "file":
            return [p / SAFETENSORS_SINGLE]
        try:
            loose = sorted(f for f in p.glob("*.safetensors") if not f.name.startswith("."))
        except OSError as e:
            raise PrismError(f"cannot list directory ({os_problem(e)})", p) from None
        if loose:
            return loose
        if _kind(p / PICKLE_INDEX, missing_ok=True) == "file":
            return self._pickle_files(_index_files(p / PICKLE_INDEX))
        if _kind(p / PICKLE_SINGLE, missing_ok=True) == "file":
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

    # -- reading -----------------------------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` on the CPU, in its stored dtype, zero-copy from a private memory map
        of just its bytes (safetensors) that lives as long as the tensor."""
        info = self.info(name)
        if self.header_only:
            raise PrismError(f"only the headers of this checkpoint are known, not tensor {name!r}", self.source)
        try:
            if self.is_pickle:
                return _pickle_state(info.file)[info.name]
            return _map_tensor(info)
        except OSError as e:
            raise PrismError(f"cannot read tensor {info.name!r} ({os_problem(e)})", info.file) from None


def label(ckpt) -> str:
    """How to name an opened checkpoint to the user: the reference they gave, else its path."""
    return getattr(ckpt, "source", None) or str(ckpt.path)


def is_checkpoint(obj) -> bool:
    """Whether ``obj`` is an opened checkpoint (a :class:`Checkpoint` or one with its interface)."""
    return hasattr(obj, "tensors") and hasattr(obj, "get") and hasattr(obj, "aliases")


def open_checkpoint(
    source, allow_pickle: bool = False, config=None, tokenizer: bool = False, progress: bool = True
) -> CheckpointBase:
    """The checkpoint ``source`` names, opened (an opened checkpoint passes through):

    - a local path (it wins whenever it exists);
    - a Hub reference (``org/name@revision:sub``, see :mod:`prism_analysis.checkpoints.hub`), downloaded to the
      Hub cache first (``tokenizer``: with the tokenizer files, for commands that run the model);
    - ``BASE+ADAPTER``: a base (a path or Hub reference) with a PEFT LoRA adapter (a directory or a
      Hub reference) merged one tensor at a time (:func:`open_lora`);
    - a torch.distributed.checkpoint directory, read in place as a
      :class:`~prism_analysis.checkpoints.dcp.DcpCheckpoint` whose architecture comes from ``config`` (a
      config.json path) when given.
    """
    if is_checkpoint(source):
        return source
    from . import hub

    if not isinstance(source, hub.HubReference) and (
        (pair := split_reference(source)) is not None or (pair := hub.split_adapter_reference(source)) is not None
    ):
        base, adapter = pair
        if not Path(adapter).exists():
            adapter = hub.fetch_adapter(hub.parse_reference(adapter), allow_pickle=allow_pickle, progress=progress)
        return open_lora(open_checkpoint(base, allow_pickle, config, tokenizer, progress), adapter, allow_pickle)
    ref = hub.parse_reference(source)
    if isinstance(ref, Path):
        if is_dcp_checkpoint(ref):
            return DcpCheckpoint(ref, allow_pickle=allow_pickle, config=config)
        return Checkpoint(ref, allow_pickle=allow_pickle)
    local = hub.fetch(ref, tokenizer=tokenizer, allow_pickle=allow_pickle, progress=progress)
    return Checkpoint(local, allow_pickle=allow_pickle, source=str(ref))


def open_lora(base, adapter_dir: str | os.PathLike, allow_pickle: bool = False) -> LoraCheckpoint:
    """``base`` (a path or an opened checkpoint) with the PEFT LoRA adapter in ``adapter_dir`` merged,
    one tensor at a time (:mod:`prism_analysis.checkpoints.lora`): its ``adapter_config.json`` and
    ``adapter_model.safetensors`` (``adapter_model.bin`` only with ``allow_pickle``)."""
    adapter_dir = Path(adapter_dir)
    config = adapter_dir / ADAPTER_CONFIG
    if _kind(config, missing_ok=True) != "file":
        raise PrismError(f"not a PEFT adapter directory (no {ADAPTER_CONFIG})", adapter_dir)
    adapter_config = _read_json(config, ADAPTER_CONFIG)
    weights = Checkpoint(adapter_weights_file(adapter_dir), allow_pickle=allow_pickle)
    return LoraCheckpoint(open_checkpoint(base, allow_pickle), adapter_dir, adapter_config, weights)


def _read_config(path: Path) -> dict | None:
    cfg = (path if path.is_dir() else path.parent) / "config.json"
    if _kind(cfg, missing_ok=True) is None:
        return None
    data = _read_json(cfg, "config.json")
    if not isinstance(data, dict):
        raise PrismError("config.json is not a JSON object", cfg)
    return data


def _index_files(index: Path) -> list[Path]:
    data = _read_json(index, "shard index")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise PrismError("not a valid shard index (no 'weight_map' object of tensor -> file)", index)
    files = []
    for shard in dict.fromkeys(weight_map.values()):
        f = index.parent / shard
        if _kind(f, missing_ok=True) != "file":
            raise PrismError(f"the index names shard {shard!r}, which is missing", index)
        files.append(f)
    if not files:
        raise PrismError("the shard index names no tensors", index)
    return files


def _safetensors_infos(file: Path) -> list[TensorInfo]:
    """Every tensor of one safetensors file, from its header: validated by safetensors, parsed once."""
    from safetensors import SafetensorError, safe_open

    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(MAX_HEADER_BYTES, size - 8):
                raise PrismError("corrupt or truncated safetensors file (header size out of range)", file)
            header = f.read(n)
        with safe_open(file, framework="pt", device="cpu"):
            pass  # safetensors' own validation: offsets, dtypes, sizes
        entries = json.loads(header)
    except SafetensorError as e:
        raise PrismError(f"corrupt or truncated safetensors file ({_one_line(e)})", file) from None
    except OSError as e:
        raise PrismError(f"cannot read file ({os_problem(e)})", file) from None
    except ValueError as e:
        raise PrismError(f"corrupt safetensors header ({_one_line(e)})", file) from None
    dtypes = safetensors_dtypes()
    base = 8 + n
    out = []
    for name, e in entries.items():
        if name == "__metadata__":
            continue
        dtype = dtypes.get(e["dtype"])
        if dtype is None:
            raise PrismError(f"tensor {name!r} has dtype {e['dtype']}, which this torch cannot hold", file)
        start, end = e["data_offsets"]
        out.append(TensorInfo(name, str(file), tuple(e["shape"]), dtype, base + start, base + end))
    return out


def _map_tensor(info: TensorInfo) -> torch.Tensor:
    """Map ``info``'s bytes (page-aligned range, private copy-on-write) and view them as a tensor."""
    length = info.end - info.start
    if length == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    lo = info.start - info.start % mmap.ALLOCATIONGRANULARITY
    with open(info.file, "rb") as f:
        mapped = mmap.mmap(f.fileno(), info.end - lo, offset=lo, access=mmap.ACCESS_COPY)
    raw = torch.frombuffer(mapped, dtype=torch.uint8, count=length, offset=info.start - lo)
    if (info.start - lo) % info.dtype.itemsize:  # an unaligned tensor (old writers): copy it
        raw = raw.clone()
    return raw.view(info.dtype).reshape(info.shape)


def _pickle_infos(file: Path) -> list[TensorInfo]:
    state = _pickle_state(str(file))
    return [TensorInfo(k, str(file), tuple(v.shape), v.dtype) for k, v in state.items() if torch.is_tensor(v)]


@functools.lru_cache(maxsize=1)
def _pickle_state(file: str) -> dict:
    """One pickle file's state dict (memory-mapped, ``weights_only``); the last file stays open."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for bad or malicious pickles
        raise PrismError(f"cannot load pickle checkpoint ({_one_line(e)[:300]})", file) from None
    if not isinstance(state, dict):
        raise PrismError("pickle checkpoint does not hold a state dict", file)
    return state


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


def open_aligned(
    sources: Iterable, allow_pickle: bool = False, config=None, progress: bool = True
) -> tuple[list[Checkpoint], Alignment]:
    """Open checkpoints (paths or Hub references), check that they match, and align them.

    The names compared are those of the first two aligned (:func:`align`); every further checkpoint
    must hold each of them with the same shape, else :class:`PrismError` names the missing tensor.
    Hub references are checked first from their safetensors headers on the Hub, so a mismatched
    pair fails before anything large is downloaded. ``config``: the config.json of
    torch.distributed.checkpoint inputs (:func:`open_checkpoint`).
    """
    from . import hub

    sources = [_reference(s) for s in sources]
    if any(isinstance(s, hub.HubReference) for s in sources):
        headers = [_remote_checkpoint(s) if isinstance(s, hub.HubReference) else s for s in sources]
        if all(h is not None for h in headers):
            _check_aligned([open_checkpoint(h, allow_pickle, config) for h in headers])
    ckpts = [open_checkpoint(s, allow_pickle, config, progress=progress) for s in sources]
    return ckpts, _check_aligned(ckpts)


def _reference(source):
    """An opened checkpoint as it is; a path or Hub reference parsed; anything else (``BASE+ADAPTER``)
    left for :func:`open_checkpoint` to read."""
    from . import hub

    if is_checkpoint(source):
        return source
    try:
        return hub.parse_reference(source)
    except PrismError:
        return source


def _remote_checkpoint(ref) -> Checkpoint | None:
    """A header-only checkpoint of a Hub reference (see :func:`prism_analysis.checkpoints.hub.remote_header`)."""
    from . import hub

    header = hub.remote_header(ref)
    if header is None:
        return None
    config, tensors = header
    dtypes = safetensors_dtypes()
    infos = [TensorInfo(name, file, shape, dtypes.get(dtype)) for name, file, shape, dtype in tensors]
    return Checkpoint.from_header(str(ref), config, infos)


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


# -- streaming --------------------------------------------------------------------------------
def _fault_in(t: torch.Tensor) -> torch.Tensor:
    """Touch one byte per page so a memory-mapped tensor is read from disk now (in a worker thread)."""
    if t.numel() and t.is_contiguous():
        t.reshape(-1).view(torch.uint8)[::4096].sum()
    return t


def read_ahead(
    reads: Iterable[tuple[Checkpoint, str]], prefetch: int = 2, desc: str = "read", progress: bool = True
) -> Iterator[torch.Tensor]:
    """Yield the tensor of every ``(checkpoint, name)`` read, in order, with a byte progress bar.

    A background thread reads ``prefetch`` tensors ahead (reading releases the GIL), so I/O overlaps
    with whatever the caller computes. At most ``prefetch + 1`` of these tensors are alive at once,
    plus those the caller keeps: memory is bounded by the largest tensors, not by the checkpoint.
    """
    reads = list(reads)
    total = sum(c.info(n).nbytes for c, n in reads)
    it = iter(reads)
    with (
        progress_bar(total=total, unit="B", unit_scale=True, desc=desc, enabled=progress) as bar,
        futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="prism-read") as pool,
    ):
        pending: collections.deque = collections.deque()

        def fill(limit: int) -> None:
            while len(pending) < limit and (item := next(it, None)) is not None:
                pending.append(pool.submit(lambda c, n: _fault_in(c.get(n)), *item))

        fill(1)
        while pending:
            tensor = pending.popleft().result()
            fill(max(prefetch, 0))  # reads in flight while the caller works on `tensor`
            bar.update(tensor.nbytes)
            yield tensor
            del tensor


def stream_aligned(
    ckpts: list[Checkpoint], names: list[str], desc: str = "read", progress: bool = True, prefetch: int = 1
) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """Yield ``(name, [the tensor of each checkpoint])`` for every name, reading ahead.

    At most ``prefetch + 1`` groups are alive at once (the current one and those read ahead).
    """
    k = len(ckpts)
    tensors = read_ahead(
        ((c, n) for n in names for c in ckpts), prefetch=k * max(prefetch, 1), desc=desc, progress=progress
    )
    for name in names:
        yield name, [next(tensors) for _ in range(k)]
