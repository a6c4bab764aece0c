"""Checkpoints: open any form a user names, align two, stream their tensors (``checkpoints -> ...``).

- :mod:`~prism_analysis.checkpoints.base`         the view every reader gives: ``TensorInfo``, ``CheckpointBase``
- :mod:`~prism_analysis.checkpoints.local`        safetensors (and, if allowed, pickle) files, mapped per tensor
- :mod:`~prism_analysis.checkpoints.dcp`          torch.distributed.checkpoint directories, read in place
- :mod:`~prism_analysis.checkpoints.lora`         ``BASE+ADAPTER``: a PEFT LoRA adapter merged one tensor at a time
- :mod:`~prism_analysis.checkpoints.hub`          Hub references ``org/name@revision:sub`` through huggingface_hub
- :mod:`~prism_analysis.checkpoints.opening`      the one factory: ``open_checkpoint``, ``open_aligned``
- :mod:`~prism_analysis.checkpoints.align`        tensor names of two checkpoints matched up
- :mod:`~prism_analysis.checkpoints.stream`       aligned tensors one group at a time, with read-ahead
- :mod:`~prism_analysis.checkpoints.run_manifest` a training run's ``trajectory.json`` and its step order

Nothing here imports :mod:`prism_analysis.weights`, :mod:`~prism_analysis.representations` or
:mod:`~prism_analysis.tracking` (``tests/test_structure.py``).
"""

from .._lazy import exports

API = {
    "TensorInfo": "base",
    "CheckpointBase": "base",
    "label": "base",
    "is_checkpoint": "base",
    "Checkpoint": "local",
    "safetensors_dtypes": "local",
    "DcpCheckpoint": "dcp",
    "LoraCheckpoint": "lora",
    "open_checkpoint": "opening",
    "open_lora": "opening",
    "open_aligned": "opening",
    "Alignment": "align",
    "align": "align",
    "check_same_architecture": "align",
    "read_ahead": "stream",
    "stream_aligned": "stream",
}
__all__ = list(API)
__getattr__, __dir__ = exports(__name__, API)
