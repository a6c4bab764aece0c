"""The parameters of a model being trained, by checkpoint name, and copies of them (references).

:func:`named_tensors` gives the parameters as a checkpoint of the run would name them (wrapper
prefixes removed, DDP's ``.module`` unwrapped, a DTensor's local shard); :class:`Snapshot` keeps a
copy -- in host RAM, on the device, or in a safetensors file read back through a memory map.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints.names import WRAPPER_COMPONENTS, strip_components
from ..errors import PrismError
from ..outputs import write_atomic

#: Wrapper prefixes stripped from parameter names: the one list of every reader (torch.compile,
#: FSDP1, activation checkpointing; :mod:`prism_analysis.checkpoints.names`).
WRAPPER_PREFIXES = tuple(f"{c}." for c in WRAPPER_COMPONENTS)


# -- parameters -----------------------------------------------------------------------------------
def _unwrap(model):
    """The module whose parameter names are the checkpoint's: DDP's ``.module``, or the model."""
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def clean_name(name: str) -> str:
    """A parameter name as a checkpoint stores it (wrapper prefixes removed)."""
    return strip_components(name)


def named_tensors(model) -> dict[str, torch.Tensor]:
    """Checkpoint name -> the detached parameter values this rank holds (a DTensor's local shard);
    tied parameters once, as ``named_parameters`` gives them."""
    out = {}
    for n, p in _unwrap(model).named_parameters():
        t = p.detach()
        out[clean_name(n)] = t.to_local() if hasattr(t, "to_local") else t
    return out


def _is_sharded(model) -> bool:
    return any(hasattr(p, "to_local") for p in _unwrap(model).parameters())


def _dist() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# -- reference snapshots --------------------------------------------------------------------------
class Snapshot:
    """A copy of the parameters: in host RAM (``cpu``), on their device (``device``), or only in a
    safetensors file read through a memory map (``disk``)."""

    def __init__(self, where: str, tensors: dict | None, path: Path | None):
        self.where, self.tensors, self.path = where, tensors, path
        self._file = None

    @classmethod
    def take(cls, tensors: dict[str, torch.Tensor], where: str, path: Path | None) -> Snapshot:
        """Copy ``tensors``; with ``path`` also save them there (safetensors, atomically)."""
        if path is not None:
            from safetensors.torch import save_file

            write_atomic(
                path, lambda tmp: save_file({n: t.to("cpu").contiguous() for n, t in tensors.items()}, str(tmp))
            )
        if where == "disk":
            if path is None:
                raise PrismError("reference='disk' needs an output directory (out=...)")
            return cls(where, None, path)
        copy = {n: (t.clone() if where == "device" else t.to("cpu", copy=True)) for n, t in tensors.items()}
        return cls(where, copy, path)

    @classmethod
    def load(cls, path: Path, where: str, device=None) -> Snapshot:
        """A snapshot that :meth:`take` saved."""
        if not path.is_file():
            raise PrismError("the reference snapshot of this tracked run is missing", path)
        if where == "disk":
            return cls(where, None, path)
        from safetensors.torch import load_file

        tensors = load_file(str(path), device="cpu")
        if where == "device" and device is not None:
            tensors = {n: t.to(device) for n, t in tensors.items()}
        return cls(where, tensors, path)

    def get(self, name: str, device) -> torch.Tensor:
        """Tensor ``name`` on ``device``."""
        if self.tensors is not None:
            return self.tensors[name].to(device, non_blocking=True)
        if self._file is None:
            from safetensors import safe_open

            self._file = safe_open(str(self.path), framework="pt")
        return self._file.get_tensor(name).to(device)

    def discard(self) -> None:
        """Free the copy (and delete its file, for a ``disk`` snapshot: this tracker wrote it)."""
        self.tensors, self._file = None, None
        if self.where == "disk" and self.path is not None:
            self.path.unlink(missing_ok=True)

    @property
    def nbytes(self) -> int:
        """Bytes this snapshot holds in memory (0 for ``disk``: the page cache holds what is read)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values()) if self.tensors else 0
