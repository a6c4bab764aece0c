"""The one way to open a checkpoint: :func:`open_checkpoint` (and :func:`open_aligned` for several).

Every form a user can name goes through :func:`open_checkpoint`, which picks the reader:

- a local safetensors (or, when allowed, pickle) checkpoint -> :class:`~prism_analysis.checkpoints.local.Checkpoint`;
- a torch.distributed.checkpoint directory -> :class:`~prism_analysis.checkpoints.dcp.DcpCheckpoint`;
- ``BASE+ADAPTER`` -> :class:`~prism_analysis.checkpoints.lora.LoraCheckpoint`;
- a Hub reference ``org/name@revision:sub`` -> downloaded (:mod:`~prism_analysis.checkpoints.hub`), then local.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import PrismError
from ..references import ADAPTER_CONFIG, split_reference
from .align import Alignment, _check_aligned, views
from .base import CheckpointBase, TensorInfo, is_checkpoint
from .base import file_kind as _kind
from .base import read_json as _read_json
from .dcp import DcpCheckpoint, is_dcp_checkpoint
from .local import Checkpoint, safetensors_dtypes
from .lora import LoraCheckpoint, adapter_weights_file


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

    Opening reads the headers only; each tensor is memory-mapped when it is read::

        >>> import tempfile, torch
        >>> from safetensors.torch import save_file
        >>> path = tempfile.mkdtemp() + "/model.safetensors"
        >>> save_file({"model.embed_tokens.weight": torch.ones(8, 4), "lm_head.weight": torch.zeros(8, 4)}, path)
        >>> ckpt = open_checkpoint(path, progress=False)
        >>> ckpt.names, ckpt.info("lm_head.weight").shape
        (['lm_head.weight', 'model.embed_tokens.weight'], (8, 4))
        >>> ckpt.get("model.embed_tokens.weight").sum().item()
        32.0
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
        return _merged(Checkpoint(ref, allow_pickle=allow_pickle))
    local = hub.fetch(ref, tokenizer=tokenizer, allow_pickle=allow_pickle, progress=progress)
    return _merged(Checkpoint(local, allow_pickle=allow_pickle, source=str(ref)))


class _SavedFactors:
    """The LoRA factors a PEFT model saved without merging holds, named as an adapter file names them
    (``base_model.model.<module>.lora_A.weight``), read from that checkpoint: what
    :class:`~prism_analysis.checkpoints.lora.LoraCheckpoint` merges."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt, self.path, self.allow_pickle = ckpt, ckpt.path, ckpt.allow_pickle
        self._stored = {f"base_model.model.{module}.{part}": s for s, (module, part) in ckpt.lora.items()}
        self.tensors = {k: ckpt._lora_infos[s] for k, s in self._stored.items()}

    def info(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def get(self, name: str):
        return self.ckpt.read(self.tensors[name])


def _merged(ckpt: Checkpoint):
    """``ckpt`` as it is, or -- a PEFT model saved without merging, which holds LoRA factors -- with
    the factors merged one tensor at a time, scaled by the ``adapter_config.json`` beside it; without
    one (or with several adapters) a one-line error says what to do."""
    if not getattr(ckpt, "lora", None):
        return ckpt
    where = ckpt.path if ckpt.path.is_dir() else ckpt.path.parent
    example = next(iter(ckpt.lora))
    if len(ckpt.lora_adapters) > 1:
        raise PrismError(
            f"a PEFT model saved without merging, with the LoRA factors of {len(ckpt.lora_adapters)} adapters "
            f"({', '.join(ckpt.lora_adapters)}): merge them first (merge_and_unload()) and save the merged model",
            ckpt.path,
        )
    if _kind(where / ADAPTER_CONFIG, missing_ok=True) != "file":
        raise PrismError(
            f"a PEFT model saved without merging: it holds LoRA factors ({example!r}) and no {ADAPTER_CONFIG} "
            "to scale them; save it merged (merge_and_unload()), or put the adapter's adapter_config.json beside "
            "it, or save the adapter alone (save_pretrained) and name BASE+ADAPTER",
            ckpt.path,
        )
    merged = LoraCheckpoint(ckpt, where, _read_json(where / ADAPTER_CONFIG, ADAPTER_CONFIG), _SavedFactors(ckpt))
    merged.path, merged.source = ckpt.path, getattr(ckpt, "source", None)
    merged.unwrapped, merged.renamed, merged.folded = ckpt.unwrapped, ckpt.renamed, ckpt.folded
    merged.merged_lora = sorted({module for module, _ in ckpt.lora.values()})
    return merged


def open_lora(base, adapter_dir: str | os.PathLike, allow_pickle: bool = False) -> LoraCheckpoint:
    """``base`` (a path or an opened checkpoint) with the PEFT LoRA adapter in ``adapter_dir`` merged,
    one tensor at a time (:mod:`prism_analysis.checkpoints.lora`): its ``adapter_config.json`` and
    ``adapter_model.safetensors`` (``adapter_model.bin`` only with ``allow_pickle``)."""
    adapter_dir = Path(adapter_dir)
    config = adapter_dir / ADAPTER_CONFIG
    if _kind(config, missing_ok=True) != "file":
        raise PrismError(f"not a PEFT adapter directory (no {ADAPTER_CONFIG})", adapter_dir)
    adapter_config = _read_json(config, ADAPTER_CONFIG)
    weights = Checkpoint(adapter_weights_file(adapter_dir), allow_pickle=allow_pickle, as_stored=True)
    return LoraCheckpoint(open_checkpoint(base, allow_pickle), adapter_dir, adapter_config, weights)


def open_aligned(
    sources: Iterable, allow_pickle: bool = False, config=None, progress: bool = True
) -> tuple[list[Checkpoint], Alignment]:
    """Open checkpoints (paths or Hub references), check that they match, and align them.

    The names compared are those of the first two aligned (:func:`align`); every further checkpoint
    must hold each of them with the same shape (or a resized vocabulary), else :class:`PrismError`
    names the missing tensor. A checkpoint whose names are matched otherwise (a backbone against a
    causal LM) or whose embedding or head is cut to shared rows is returned as an
    :class:`~prism_analysis.checkpoints.align.AlignedView` serving the aligned names and rows.
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
    al = _check_aligned(ckpts)
    return views(ckpts, al), al


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
