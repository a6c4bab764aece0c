"""Read sharded training checkpoints in place: ``torch.distributed.checkpoint`` (DCP) directories.

A DCP directory holds a ``.metadata`` file and ``*.distcp`` data files, usually one per rank. This is
what ``torch.distributed.checkpoint.save`` writes for FSDP2 / FSDP ``SHARDED_STATE_DICT`` models:
the HF Trainer and accelerate (``checkpoint-N/pytorch_model_fsdp_0/``), torchtitan
(``checkpoint/step-N/``), Megatron's ``torch_dist`` format, and anyone calling ``dcp.save``.
:class:`DcpCheckpoint` reads such a directory with the interface of every checkpoint here
(:class:`~prism_analysis.checkpoints.base.CheckpointBase`), so audits, trajectories and comparisons
stream it like safetensors; ``open_checkpoint(path)`` and ``Checkpoint(path)`` return one.

What is read, and how.

- ``.metadata`` is a Python pickle (DCP's ``FileSystemReader.read_metadata`` calls ``pickle.load``
  on it, which can run code). It is read once, with an unpickler that only builds DCP's own metadata
  classes, ``torch.Size``, dtypes, layouts and paths; any other object in it is refused.
- Each chunk of a tensor in a ``.distcp`` file is one ``torch.save`` of that chunk. A chunk is read
  with ``torch.load(weights_only=True)`` -- torch's restricted unpickler, which builds tensors and
  plain containers only -- from a view of exactly its byte range, as DCP itself reads it. Chunks
  in DCP's optional safetensors serialization, or written through stream transforms
  (compression), are refused with a one-line error.
- :meth:`DcpCheckpoint.get` allocates the full tensor and copies its chunks in one at a time (a
  tensor stored in one piece is returned as loaded): memory is one tensor plus one chunk, bounded by
  the largest tensor, and only the byte ranges of that tensor's chunks are read.
- Non-tensor entries (bytes: learning rates, step counters, RNG state) and everything that is not
  the model (optimizer state, schedulers, ``train_state``, ...) are skipped.

Names. DCP keeps the keys of the state dict that was saved, and writers wrap them. The rules below
turn each key into the model's own (Hugging Face) tensor name, in this order:

1. The model's entries. DCP records where each flattened key sat in the saved state dict
   (``planner_data``). A key at the top level is the model's, unless it starts with a training-state
   group (:data:`TRAINER_STATE_KEYS`: ``optimizer.``, ``lr_scheduler.``, ...); a key inside a
   ``"model"`` entry (accelerate and the HF Trainer save ``{"model": state_dict}``, the DCP tutorial
   ``{"app": {"model": ..., "optim": ...}}``) is the model's, with that wrapper removed; every other
   nested entry (``optimizer.state.<name>.exp_avg``, ...) is not.
2. Wrapper modules: the components ``_fsdp_wrapped_module``, ``_checkpoint_wrapped_module`` and
   ``_orig_mod`` (FSDP1, activation checkpointing, ``torch.compile``) are removed wherever they
   appear; torch inserts them, and no Hugging Face name contains them.
3. ``module.`` (DDP, DeepSpeed) and ``base_model.model.`` (PEFT) are removed when every name starts
   with one. Rules 2 and 3 are those of every reader (:mod:`prism_analysis.checkpoints.names`, one list).
4. Only when the directory does not record the saved paths (step 1 could not tell): a leading
   ``model.`` is removed when every name starts with it and one starts with ``model.model.`` or
   ``model.lm_head.`` -- the double prefix of ``{"model": state_dict}`` around a causal LM.
   A plain Hugging Face name such as ``model.layers.0.mlp.up_proj.weight`` is never changed by any rule.

Names that writers choose differently (torchtitan's ``tok_embeddings``/``attention.wq``, Megatron's
``decoder.layers.*`` with stacked layers and fused QKV) are model-specific conversions, not
wrappers: they are kept as stored, so such checkpoints align with each other, not with a Hugging
Face checkpoint.

Config. DCP stores no ``config.json``. The architecture (and ``tie_word_embeddings``) come from
``config=`` (a ``config.json`` path, a directory holding one, or a dict; ``prism audit --config``),
else from ``config.json`` in the DCP directory, else from its parent (``checkpoint-N/config.json``).
With a tied head (``tie_word_embeddings: true``) a stored ``lm_head.weight`` is left out and served
by the embedding, as ``save_pretrained`` writes it.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import PrismError, os_problem
from .base import EMBEDDING_SUFFIXES, CheckpointBase, TensorInfo, file_kind, one_line, read_json
from .names import WRAPPER_COMPONENTS as WRAPPER_COMPONENTS  # re-exported: the list is names.py's
from .names import strip_components, strip_prefixes

METADATA = ".metadata"
#: The first bytes of a torch.save archive (a zip file): every chunk FileSystemWriter writes by default.
ZIP_MAGIC = b"PK\x03\x04"
#: The DCP subdirectory of an HF Trainer / accelerate checkpoint saved with FSDP ``SHARDED_STATE_DICT``.
HF_TRAINER_DCP = "pytorch_model_fsdp_0"
#: Top-level keys of a training state that are not the model (rule 1, for keys saved at the top level).
TRAINER_STATE_KEYS = (
    "optimizer",
    "optim",
    "optimizers",
    "lr_scheduler",
    "lr_schedulers",
    "scheduler",
    "dataloader",
    "train_state",
    "rng_state",
    "extra_state",
)


# -- finding a DCP directory --------------------------------------------------------------------
def dcp_directory(path: str | os.PathLike) -> Path | None:
    """The DCP directory of ``path``, or None: ``path`` itself when it holds ``.metadata`` (and no
    safetensors), or its ``pytorch_model_fsdp_0/`` when it is an HF Trainer ``checkpoint-N``
    directory with no weights of its own."""
    try:
        p = Path(path)
        if not p.is_dir() or any(p.glob("*.safetensors")):
            return None
        if (p / METADATA).is_file():
            return p
        sub = p / HF_TRAINER_DCP
        if (sub / METADATA).is_file() and not any(p.glob("pytorch_model*.bin*")):
            return sub
    except (OSError, TypeError, ValueError):
        return None
    return None


def is_dcp_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a torch.distributed.checkpoint directory (or an HF Trainer checkpoint around one)."""
    return dcp_directory(path) is not None


# -- the metadata, unpickled safely ---------------------------------------------------------------
#: Everything a DCP ``.metadata`` pickle may build: module -> names.
METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},
    "pathlib": {"Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that builds only the classes of :data:`METADATA_GLOBALS` and torch dtypes."""

    def find_class(self, module: str, name: str):
        if name in METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def read_metadata(file: Path):
    """The ``Metadata`` object of a DCP ``.metadata`` file, unpickled with :class:`MetadataUnpickler`."""
    from torch.distributed.checkpoint.metadata import Metadata

    file_kind(file)
    try:
        with open(file, "rb") as f:
            metadata = MetadataUnpickler(f).load()
    except OSError as e:
        raise PrismError(f"cannot read DCP metadata ({os_problem(e)})", file) from None
    except Exception as e:  # pickle raises many types for corrupt or hostile input
        raise PrismError(f"corrupt or unsupported DCP metadata ({one_line(e)[:200]})", file) from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise PrismError("corrupt DCP metadata (not a torch.distributed.checkpoint Metadata)", file)
    if not isinstance(metadata.storage_data, dict):
        raise PrismError("DCP metadata has no storage map (not written by FileSystemWriter)", file)
    return metadata


# -- names ------------------------------------------------------------------------------------------
def model_names(keys: dict[str, tuple | None]) -> dict[str, str]:
    """DCP key -> the model's tensor name, for the keys that are model weights (rules 1-4 above).

    ``keys``: every tensor key with its path in the saved state dict (DCP's ``planner_data``), or
    None where the directory does not record it. Raises :class:`PrismError` when two keys would
    give one name.
    """
    names = {key: strip_components(own) for key, path in keys.items() if (own := _own_key(key, path)) is not None}
    names = strip_prefixes(names)  # rules 2 and 3: the wrappers of every reader
    paths_known = any(path for path in keys.values())
    if (
        not paths_known
        and names
        and all(n.startswith("model.") for n in names.values())
        and any(n.startswith(("model.model.", "model.lm_head.")) for n in names.values())
    ):
        names = {k: n.removeprefix("model.") for k, n in names.items()}
    seen: dict[str, str] = {}
    for key, name in names.items():
        if name in seen:
            raise PrismError(f"keys {seen[name]!r} and {key!r} both name the tensor {name!r}")
        seen[name] = key
    return names


def _own_key(key: str, path: tuple | None) -> str | None:
    """Rule 1: the model's own key of a DCP entry, or None when the entry is not the model."""
    if path and len(path) > 1:
        return str(path[-1]) if path[-2] == "model" else None
    if key.split(".", 1)[0] in TRAINER_STATE_KEYS:
        return None
    return key


# -- the checkpoint ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """One stored piece of a tensor: where it sits in the tensor and where its bytes are."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: Path
    start: int
    length: int


class DcpCheckpoint(CheckpointBase):
    """Lazy view of the model weights of a torch.distributed.checkpoint directory.

    ``path``: the DCP directory, or an HF Trainer ``checkpoint-N`` directory holding one in
    ``pytorch_model_fsdp_0/``. ``config``: see the module docstring. The interface is
    :class:`CheckpointBase`'s (``tensors``, ``aliases``, ``config``, ``names``, ``info``, ``get``, ...);
    ``TensorInfo.file`` is the data file of a tensor's first chunk (``start``/``end`` unused).
    """

    def __init__(self, path: str | os.PathLike, allow_pickle: bool = False, config=None):
        self.path = Path(path)
        self.allow_pickle = allow_pickle  # unused: DCP data is read with torch.load(weights_only=True)
        self.is_pickle = False
        self.directory = dcp_directory(self.path)
        if self.directory is None:
            file_kind(self.path)
            raise PrismError(f"not a torch.distributed.checkpoint directory (no {METADATA})", self.path)
        self.config = self._read_config(config)
        self.metadata_file = self.directory / METADATA
        metadata = read_metadata(self.metadata_file)
        try:
            self.tensors, self._chunks = self._index(metadata)
        except (AttributeError, TypeError, ValueError) as e:
            raise PrismError(f"corrupt DCP metadata ({one_line(e)[:200]})", self.metadata_file) from None
        if not self.tensors:
            raise PrismError("holds no model weights (only optimizer or other training state)", self.directory)
        self._drop_tied_head()
        self.aliases = self._tied_aliases()

    # -- opening -------------------------------------------------------------------------------
    def _read_config(self, config) -> dict | None:
        if isinstance(config, dict):
            return config
        if config is not None:
            file = Path(config)
            candidates = [file / "config.json" if file_kind(file) == "dir" else file]
        else:
            candidates = [self.directory / "config.json", self.directory.parent / "config.json"]
        for file in candidates:
            if file_kind(file, missing_ok=True) == "file":
                data = read_json(file, "config.json")
                if not isinstance(data, dict):
                    raise PrismError("config.json is not a JSON object", file)
                return data
            if config is not None:
                raise PrismError("no config.json here", file)
        return None

    def _index(self, metadata) -> tuple[dict[str, TensorInfo], dict[str, list[Chunk]]]:
        """TensorInfo and chunks of every model weight; checks that every chunk is stored."""
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        planner = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
        entries = {k: v for k, v in metadata.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}
        try:
            names = model_names({k: _as_path(planner.get(k)) for k in entries})
        except PrismError as e:
            raise PrismError(e.problem, self.metadata_file) from None
        storage = {(index.fqn, tuple(index.offset or ())): info for index, info in metadata.storage_data.items()}
        tensors, chunks, files = {}, {}, {}
        for key, name in names.items():
            entry = entries[key]
            dtype, shape = entry.properties.dtype, tuple(int(s) for s in entry.size)
            if not isinstance(dtype, torch.dtype):
                raise PrismError(f"tensor {key!r} has no torch dtype in the metadata", self.metadata_file)
            pieces = []
            for c in entry.chunks:
                offsets, sizes = tuple(int(o) for o in c.offsets), tuple(int(s) for s in c.sizes)
                info = storage.get((key, offsets))
                if info is None:
                    raise PrismError(
                        f"tensor {key!r}: no stored data for its chunk at {list(offsets)}", self.metadata_file
                    )
                files.setdefault(info.relative_path, key)
                pieces.append(Chunk(offsets, sizes, self._data_file(info, key), int(info.offset), int(info.length)))
            _check_cover(key, shape, pieces, self.metadata_file)
            tensors[name] = TensorInfo(name, str(pieces[0].file if pieces else self.metadata_file), shape, dtype)
            chunks[name] = pieces
        for relative, key in files.items():
            if file_kind(self.directory / relative, missing_ok=True) != "file":
                raise PrismError(
                    f"the metadata names data file {relative!r} (tensor {key!r}), which is missing", self.metadata_file
                )
        return tensors, chunks

    def _data_file(self, info, key: str) -> Path:
        relative = info.relative_path
        if not isinstance(relative, str) or not relative or Path(relative).name != relative or relative in (".", ".."):
            raise PrismError(
                f"tensor {key!r}: data file {relative!r} is not a file of this directory", self.metadata_file
            )
        if getattr(info, "transform_descriptors", None):
            raise PrismError(
                f"tensor {key!r} is stored through stream transforms {list(info.transform_descriptors)} "
                "(e.g. compression), which this reader does not undo",
                self.metadata_file,
            )
        return self.directory / relative

    def _drop_tied_head(self) -> None:
        """With ``tie_word_embeddings: true``, a stored head is the embedding: leave it to the alias."""
        tied = (self.config or {}).get("tie_word_embeddings") is True
        embeds = [n for n in self.tensors if n.endswith(EMBEDDING_SUFFIXES)]
        if tied and "lm_head.weight" in self.tensors and len(embeds) == 1:
            del self.tensors["lm_head.weight"], self._chunks["lm_head.weight"]

    # -- reading -------------------------------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` on the CPU in its stored dtype, assembled from its chunks."""
        info = self.info(name)
        pieces = self._chunks[info.name]
        if len(pieces) == 1 and pieces[0].sizes == info.shape:
            return self._load(info, pieces[0])
        out = torch.empty(info.shape, dtype=info.dtype)
        for piece in pieces:
            region = tuple(slice(o, o + s) for o, s in zip(piece.offsets, piece.sizes))
            out[region] = self._load(info, piece)
        return out

    def _load(self, info: TensorInfo, piece: Chunk) -> torch.Tensor:
        """One chunk, from exactly its byte range, with ``torch.load(weights_only=True)``."""
        try:
            with open(piece.file, "rb") as f:
                stream = FileRange(f, piece.start, piece.length)
                if stream.read(4) != ZIP_MAGIC:
                    raise PrismError(
                        f"a chunk of tensor {info.name!r} is not a torch.save archive (corrupt, or saved with "
                        "serialization_format=SAFETENSORS, which this reader does not read)",
                        piece.file,
                    )
                stream.seek(0)
                chunk = torch.load(stream, map_location="cpu", weights_only=True)
        except OSError as e:
            raise PrismError(f"cannot read tensor {info.name!r} ({os_problem(e)})", piece.file) from None
        except pickle.UnpicklingError:
            raise PrismError(
                f"a chunk of tensor {info.name!r} holds more than a tensor: torch.load(weights_only=True) "
                "refused to unpickle it",
                piece.file,
            ) from None
        except PrismError:
            raise
        except Exception as e:  # torch.load raises many types for corrupt or hostile data
            raise PrismError(f"cannot read a chunk of tensor {info.name!r} ({one_line(e)[:200]})", piece.file) from None
        if not torch.is_tensor(chunk) or tuple(chunk.shape) != piece.sizes or chunk.dtype != info.dtype:
            got = f"{chunk.dtype} {list(chunk.shape)}" if torch.is_tensor(chunk) else type(chunk).__name__
            raise PrismError(
                f"a chunk of tensor {info.name!r} holds {got}, expected {info.dtype} {list(piece.sizes)}", piece.file
            )
        return chunk


def _as_path(value) -> tuple | None:
    """A ``planner_data`` entry as a path tuple, or None when it is not one."""
    return tuple(value) if isinstance(value, (tuple, list)) and value else None


def _check_cover(key: str, shape: tuple[int, ...], pieces: list[Chunk], metadata_file: Path) -> None:
    """Every chunk lies inside the tensor and together they hold exactly its element count."""
    numel = 1
    for s in shape:
        numel *= s
    total = 0
    for p in pieces:
        if len(p.offsets) != len(shape) or any(o < 0 or o + s > d for o, s, d in zip(p.offsets, p.sizes, shape)):
            raise PrismError(f"tensor {key!r}: a chunk at {list(p.offsets)} lies outside its shape", metadata_file)
        n = 1
        for s in p.sizes:
            n *= s
        total += n
    if total != numel:
        raise PrismError(f"tensor {key!r}: its chunks hold {total} of its {numel} elements", metadata_file)


class FileRange(io.RawIOBase):
    """A read-only, seekable view of bytes ``[start, start + length)`` of an open binary file."""

    def __init__(self, f, start: int, length: int):
        super().__init__()
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = min(max(base + offset, 0), self._length)
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._length - self._pos)
        if n <= 0:
            return 0
        self._f.seek(self._start + self._pos)
        got = self._f.readinto(memoryview(buffer)[:n])
        self._pos += got
        return got
