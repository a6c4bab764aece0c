"""Local Hugging Face checkpoints, read lazily: :class:`Checkpoint`.

A :class:`Checkpoint` is a read-only view of the tensors of

- a model directory with ``model.safetensors``, sharded with ``model.safetensors.index.json``, or
  loose ``*.safetensors`` files;
- a single ``.safetensors`` file (or a shard index file);
- (only with ``allow_pickle=True``) ``pytorch_model.bin`` files, loaded with
  ``torch.load(weights_only=True, mmap=True)``. Pickle is refused by default: it can run code.

Open checkpoints with :func:`~prism_analysis.checkpoints.opening.open_checkpoint`, which also reads
torch.distributed.checkpoint directories, ``BASE+ADAPTER`` and Hub references; ``Checkpoint(path)``
reads local safetensors and pickle files only.

Time and memory. Each file's header is validated (by safetensors) and parsed once, on open, so the
cost of reading grows linearly with the number of tensors. :meth:`Checkpoint.get` then maps just
that tensor's bytes (``mmap`` of its page-aligned range, copy-on-write): the mapping lives exactly as
long as the returned tensor, so the resident set is bounded by the tensors alive at once (the
current group plus a bounded read-ahead), never by the checkpoint size.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
from pathlib import Path

import torch

from ..components import classify
from ..errors import PARAM, PrismError, os_problem
from .base import CheckpointBase, TensorInfo
from .base import file_kind as _kind
from .base import one_line as _one_line
from .base import read_json as _read_json
from .dcp import is_dcp_checkpoint
from .names import Unwrapped, unwrap

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

    Names are the model's: wrapper prefixes removed (:mod:`~prism_analysis.checkpoints.names`;
    ``as_stored=True`` keeps them as stored, for a PEFT adapter file), entries of a pickle that share
    one storage folded into one (``folded``, served through ``aliases``).

    Attributes: ``path`` (the local files), ``source`` (what the user named: the path, or a Hub
    reference such as ``org/name@step1000``), ``tensors`` (name -> :class:`TensorInfo`), ``config``
    (``config.json`` as a dict, or None), ``aliases`` (names served by another tensor, e.g. a tied
    ``lm_head.weight`` -> ``model.embed_tokens.weight``).
    """

    header_only = False

    def __init__(
        self, path: str | os.PathLike, allow_pickle: bool = False, source: str | None = None, as_stored: bool = False
    ):
        self.as_stored = as_stored  # names exactly as stored (a PEFT adapter file), no wrapper removed
        self.path = Path(path)
        self.source = source or str(path)
        self.allow_pickle = allow_pickle
        self.config = _read_config(self.path)
        self.is_pickle = False
        files = self._weight_files()
        raw: dict[str, TensorInfo] = {}
        shared: list[list[str]] = []
        for file in files:
            for info in _pickle_infos(file) if self.is_pickle else _safetensors_infos(file):
                if info.name in raw:
                    raise PrismError(f"tensor {info.name!r} appears in two shards", file)
                raw[info.name] = info
            if self.is_pickle:
                shared += _shared_storage(file)
        if not raw:
            raise PrismError("checkpoint holds no tensors", self.path)
        self._name(raw, shared)

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
        if not infos:
            raise PrismError("checkpoint holds no tensors", source)
        self._name({i.name: i for i in infos}, [])
        return self

    def _name(self, raw: dict[str, TensorInfo], shared: list[list[str]]) -> None:
        """Set ``tensors`` (by the model's names: wrappers removed, :mod:`.names`), ``aliases`` (entries
        of one storage folded into one, a tied head), and the record of both; LoRA factors of a PEFT
        model saved without merging are kept apart in ``lora`` (merged by ``open_checkpoint``)."""
        try:
            u = Unwrapped(names={s: s for s in raw}) if getattr(self, "as_stored", False) else unwrap(list(raw))
        except PrismError as e:
            raise PrismError(e.problem, self.path) from None
        self.unwrapped, self.renamed, self.dropped = tuple(u.removed), u.renamed, u.dropped
        self.lora = {s: u.lora[s] for s in u.lora}
        self.lora_adapters = u.adapters
        self._lora_infos = {s: raw[s] for s in u.lora}
        self.tensors = {u.names[s]: info for s, info in raw.items() if s in u.names}
        if not self.tensors:
            raise PrismError("checkpoint holds no model weights (only LoRA factors)", self.path)
        folded = {}
        for group in shared:
            names = [u.names[s] for s in group if s in u.names]
            if len(names) < 2:
                continue
            keep = next((n for n in names if classify(n)[1] != "lm_head"), names[0])
            for n in names:
                if n != keep:
                    folded[n] = keep
                    del self.tensors[n]
        self.folded = folded
        self.aliases = folded | self._tied_aliases()

    # -- opening -----------------------------------------------------------------------------
    def _weight_files(self) -> list[Path]:
        p = self.path
        kind = _kind(p)
        if kind == "dir" and is_dcp_checkpoint(p):
            raise PrismError("a torch.distributed.checkpoint directory: open it with open_checkpoint()", p)
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
                f"or pass {PARAM} to load it with torch.load(weights_only=True)",
                files[0],
                param="allow_pickle",
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
        return self.read(info)

    def read(self, info: TensorInfo) -> torch.Tensor:
        """The tensor ``info`` describes (by its stored name), as :meth:`get` returns it."""
        try:
            if self.is_pickle:
                return _pickle_state(info.file)[info.name]
            return _map_tensor(info)
        except OSError as e:
            raise PrismError(f"cannot read tensor {info.name!r} ({os_problem(e)})", info.file) from None


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


def _shared_storage(file: Path) -> list[list[str]]:
    """Groups of stored names of one pickle file that are one tensor: entries that view the same
    storage at the same offset with the same shape, strides and dtype (``torch.save`` of a model with
    tied weights keeps one storage; ``save_pretrained`` writes such a tensor once)."""
    groups: dict[tuple, list[str]] = {}
    for k, v in _pickle_state(str(file)).items():
        if torch.is_tensor(v) and v.numel():
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride(), v.dtype)
            groups.setdefault(key, []).append(k)
    return [g for g in groups.values() if len(g) > 1]


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
