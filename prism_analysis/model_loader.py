"""Load a causal language model and its tokenizer from a checkpoint, for analysis and training alike.

Safetensors only unless the caller allows pickle (then ``torch.load(weights_only=True)`` inside
transformers); ``trust_remote_code`` stays off unless asked for. The checkpoint's files are checked
first by :class:`~prism_analysis.checkpoint_reader.Checkpoint`, so a bad file gives the same
one-line error as every other command.
"""

from __future__ import annotations

import os

import torch

from .checkpoint_reader import Checkpoint
from .dcp_reader import is_dcp_checkpoint
from .devices import resolve_device
from .errors import PrismError
from .hub import resolve

DTYPES = ("float32", "bfloat16", "float16")


def load_model(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    tokenizer: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
):
    """``(model, tokenizer)`` from a checkpoint (a local path or a Hub reference, downloaded with its
    tokenizer files first), the model in eval mode on ``device``.

    ``dtype``: ``"float32"``, ``"bfloat16"``, ``"float16"`` or None (the checkpoint's).
    Raises :class:`PrismError` naming the checkpoint when it cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if dtype is not None and dtype not in DTYPES:
        raise PrismError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not progress:
        hf_logging.disable_progress_bar()
    path = resolve(path, tokenizer=True, allow_pickle=allow_pickle, progress=progress)
    if tokenizer is not None:
        tokenizer = resolve(tokenizer, tokenizer=True, progress=progress)
    if is_dcp_checkpoint(path):
        raise PrismError(
            "a torch.distributed.checkpoint directory: this command runs the model and needs a Hugging Face "
            "checkpoint (safetensors); audit, trajectory, compare and interpolate read DCP directories",
            path,
        )
    Checkpoint(path, allow_pickle=allow_pickle)  # validates files with a one-line error first
    dev = resolve_device(device)
    torch_dtype = getattr(torch, dtype) if dtype else "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle
        )
    except Exception as e:  # transformers raises many types (OSError, ValueError, KeyError, ...)
        raise PrismError(f"cannot load model: {' '.join(str(e).split())[:300]}", path) from None
    try:
        tok = AutoTokenizer.from_pretrained(tokenizer or path, trust_remote_code=trust_remote_code)
    except Exception:
        raise PrismError("no loadable tokenizer here; pass --tokenizer PATH", tokenizer or path) from None
    return model.to(dev).eval(), tok
